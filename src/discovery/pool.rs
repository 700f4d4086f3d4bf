//! The DMTP session pool's policy, sans-I/O: which idle, established session to a destination
//! may carry the next transaction, and when an idle one must be closed instead (idle too long,
//! open too long, too many idle ones), all from an explicit `now`.
//!
//! A session is taken out while it works ([`SessionPool::checkout`]) and put back when it is
//! between transactions again ([`SessionPool::checkin`]), so one session never carries two
//! transactions at once and concurrent deliveries to one destination each get their own. The
//! pool holds only idle sessions; what it hands back for closing, the caller closes (`QUIT`).
//! Which sessions fit a delivery (the same `_dx` record and DNSSEC verdict the certificate was
//! checked under) is the caller's predicate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Pool limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// An idle session is closed after this long (well under a server's 5 min command timeout).
    pub idle_timeout: Duration,
    /// A session is not reused once it has been open this long: it is closed, and the next
    /// transaction connects (and checks the certificate) afresh.
    pub max_age: Duration,
    /// Transactions (and look-ups) one session carries at most.
    pub max_uses: u32,
    /// Idle sessions kept per destination; one more put back closes the oldest.
    pub max_idle_per_destination: usize,
    /// Idle sessions kept in all.
    pub max_idle: usize,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            idle_timeout: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            max_uses: 1000,
            max_idle_per_destination: 20,
            max_idle: 256,
        }
    }
}

impl PoolPolicy {
    /// No pooling: every session is closed after its jobs.
    pub fn disabled() -> PoolPolicy {
        PoolPolicy {
            max_idle_per_destination: 0,
            max_idle: 0,
            ..PoolPolicy::default()
        }
    }
}

/// A session's history, kept with it in and out of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// When it was established.
    pub opened: Instant,
    /// Batches of jobs it carried.
    pub uses: u32,
}

impl Lifetime {
    /// A session established at `now`, not used yet.
    pub fn new(now: Instant) -> Lifetime {
        Lifetime {
            opened: now,
            uses: 0,
        }
    }
}

#[derive(Debug)]
struct Idle<S> {
    session: S,
    lifetime: Lifetime,
    since: Instant,
}

/// Idle sessions by destination (lower-case domain).
#[derive(Debug)]
pub struct SessionPool<S> {
    policy: PoolPolicy,
    idle: HashMap<String, Vec<Idle<S>>>,
    count: usize,
}

impl<S> SessionPool<S> {
    /// An empty pool.
    pub fn new(policy: PoolPolicy) -> SessionPool<S> {
        SessionPool {
            policy,
            idle: HashMap::new(),
            count: 0,
        }
    }

    /// The limits.
    pub fn policy(&self) -> PoolPolicy {
        self.policy
    }

    /// Idle sessions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No idle session held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The most recently returned idle session for `destination` that `fits`, with its
    /// lifetime (its use counted), and the sessions to close: those that expired, and for this
    /// destination those that do not fit (the record or its verdict changed since).
    pub fn checkout(
        &mut self,
        destination: &str,
        now: Instant,
        fits: impl Fn(&S) -> bool,
    ) -> (Option<(S, Lifetime)>, Vec<S>) {
        let mut close = self.expire(now);
        let mut found = None;
        if let Some(list) = self.idle.get_mut(destination) {
            // Newest first: the least likely to have been closed by the peer.
            while let Some(entry) = list.pop() {
                self.count -= 1;
                if fits(&entry.session) {
                    let mut lifetime = entry.lifetime;
                    lifetime.uses += 1;
                    found = Some((entry.session, lifetime));
                    break;
                }
                close.push(entry.session);
            }
            if list.is_empty() {
                self.idle.remove(destination);
            }
        }
        (found, close)
    }

    /// Puts `session` back as idle at `now`. Returns the sessions to close: `session` itself
    /// when it is too old or used up, or the oldest idle ones over the limits.
    pub fn checkin(
        &mut self,
        destination: &str,
        session: S,
        lifetime: Lifetime,
        now: Instant,
    ) -> Vec<S> {
        let mut close = self.expire(now);
        let worn = now.saturating_duration_since(lifetime.opened) >= self.policy.max_age
            || lifetime.uses >= self.policy.max_uses;
        if worn || self.policy.max_idle_per_destination == 0 || self.policy.max_idle == 0 {
            close.push(session);
            return close;
        }
        let list = self.idle.entry(destination.to_owned()).or_default();
        list.push(Idle {
            session,
            lifetime,
            since: now,
        });
        self.count += 1;
        if list.len() > self.policy.max_idle_per_destination {
            close.push(list.remove(0).session);
            self.count -= 1;
        }
        while self.count > self.policy.max_idle {
            match self.oldest() {
                Some(key) => {
                    if let Some(list) = self.idle.get_mut(&key) {
                        close.push(list.remove(0).session);
                        self.count -= 1;
                        if list.is_empty() {
                            self.idle.remove(&key);
                        }
                    }
                }
                None => break,
            }
        }
        close
    }

    /// Removes and returns every session idle past the timeout or open past the age limit.
    pub fn expire(&mut self, now: Instant) -> Vec<S> {
        let policy = self.policy;
        let mut close = Vec::new();
        self.idle.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                let e = &list[i];
                let stale = now.saturating_duration_since(e.since) >= policy.idle_timeout
                    || now.saturating_duration_since(e.lifetime.opened) >= policy.max_age;
                if stale {
                    close.push(list.remove(i).session);
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        self.count -= close.len();
        close
    }

    /// When the next idle session expires, if any is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle
            .values()
            .flatten()
            .map(|e| {
                (e.since + self.policy.idle_timeout).min(e.lifetime.opened + self.policy.max_age)
            })
            .min()
    }

    /// Removes and returns every idle session (shutdown).
    pub fn drain(&mut self) -> Vec<S> {
        self.count = 0;
        self.idle
            .drain()
            .flat_map(|(_, l)| l)
            .map(|e| e.session)
            .collect()
    }

    /// The destination whose oldest idle session has been idle longest.
    fn oldest(&self) -> Option<String> {
        self.idle
            .iter()
            .filter_map(|(k, l)| l.first().map(|e| (e.since, k)))
            .min()
            .map(|(_, k)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PoolPolicy {
        PoolPolicy {
            idle_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(100),
            max_uses: 3,
            max_idle_per_destination: 2,
            max_idle: 3,
        }
    }

    #[test]
    fn a_returned_session_is_reused_newest_first_and_counts_its_uses() {
        let t0 = Instant::now();
        let mut pool = SessionPool::new(policy());
        assert!(pool.checkin("b.test", 1, Lifetime::new(t0), t0).is_empty());
        assert!(pool.checkin("b.test", 2, Lifetime::new(t0), t0).is_empty());
        assert_eq!(pool.len(), 2);
        let (got, close) = pool.checkout("b.test", t0, |_| true);
        assert!(close.is_empty());
        let (s, life) = got.unwrap();
        assert_eq!((s, life.uses), (2, 1));
        // Taken out: a concurrent delivery gets the other one, then none.
        assert_eq!(pool.checkout("b.test", t0, |_| true).0.unwrap().0, 1);
        assert!(pool.checkout("b.test", t0, |_| true).0.is_none());
        // Other destinations are not mixed up.
        assert!(pool.checkin("c.test", 3, Lifetime::new(t0), t0).is_empty());
        assert!(pool.checkout("b.test", t0, |_| true).0.is_none());
        assert!(!pool.is_empty() && pool.len() == 1);
    }

    #[test]
    fn a_session_that_does_not_fit_is_closed_not_reused() {
        let t0 = Instant::now();
        let mut pool = SessionPool::new(policy());
        pool.checkin("b.test", 1, Lifetime::new(t0), t0);
        pool.checkin("b.test", 2, Lifetime::new(t0), t0);
        let (got, close) = pool.checkout("b.test", t0, |s| *s == 1);
        assert_eq!(got.map(|(s, _)| s), Some(1));
        assert_eq!(close, vec![2]);
        assert!(pool.is_empty());
    }

    #[test]
    fn idle_and_old_sessions_expire() {
        let t0 = Instant::now();
        let mut pool = SessionPool::new(policy());
        pool.checkin("b.test", 1, Lifetime::new(t0), t0);
        assert_eq!(pool.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        let (got, close) = pool.checkout("b.test", t0 + Duration::from_secs(10), |_| true);
        assert!(got.is_none());
        assert_eq!(close, vec![1]);
        // Open too long: not put back at all, even when just used.
        let old = Lifetime::new(t0);
        let at = t0 + Duration::from_secs(100);
        assert_eq!(pool.checkin("b.test", 2, old, at), vec![2]);
        // Idle-refreshed but aging: expires by age while idle.
        pool.checkin("b.test", 3, old, t0 + Duration::from_secs(95));
        assert_eq!(pool.poll_timeout(), Some(t0 + Duration::from_secs(100)));
        assert_eq!(pool.expire(t0 + Duration::from_secs(100)), vec![3]);
        assert!(pool.is_empty());
        assert_eq!(pool.poll_timeout(), None);
    }

    #[test]
    fn used_up_sessions_are_closed() {
        let t0 = Instant::now();
        let mut pool = SessionPool::new(policy());
        let mut life = Lifetime::new(t0);
        pool.checkin("b.test", 7, life, t0);
        for _ in 0..2 {
            let (got, _) = pool.checkout("b.test", t0, |_| true);
            let (s, l) = got.unwrap();
            life = l;
            assert!(pool.checkin("b.test", s, life, t0).is_empty());
        }
        let (got, _) = pool.checkout("b.test", t0, |_| true);
        let (s, l) = got.unwrap();
        assert_eq!(l.uses, 3);
        assert_eq!(pool.checkin("b.test", s, l, t0), vec![7]);
    }

    #[test]
    fn limits_close_the_oldest_idle_sessions() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut pool = SessionPool::new(policy());
        pool.checkin("b.test", 1, Lifetime::new(t0), t0);
        pool.checkin("b.test", 2, Lifetime::new(t0), t0 + s);
        // Per destination: 2.
        assert_eq!(
            pool.checkin("b.test", 3, Lifetime::new(t0), t0 + 2 * s),
            vec![1]
        );
        pool.checkin("c.test", 4, Lifetime::new(t0), t0 + 3 * s);
        // In all: 3; b.test's 2 has been idle longest.
        assert_eq!(
            pool.checkin("d.test", 5, Lifetime::new(t0), t0 + 4 * s),
            vec![2]
        );
        assert_eq!(pool.len(), 3);
        let mut all = pool.drain();
        all.sort();
        assert_eq!(all, vec![3, 4, 5]);
        assert!(pool.is_empty());
        // Disabled: nothing is kept.
        let mut off = SessionPool::new(PoolPolicy::disabled());
        assert_eq!(off.checkin("b.test", 9, Lifetime::new(t0), t0), vec![9]);
    }
}
