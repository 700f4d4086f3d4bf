//! The signet cache's policy, sans-I/O: what a look-up may answer from memory, when a found
//! signet must be re-checked (`VRFY`), and how long a failure is remembered (exponential backoff),
//! all from an explicit `now`.

use crate::dime::Signet;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Cache lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// A found signet is served without asking for this long; then it is re-checked with `VRFY`.
    pub fresh_for: Duration,
    /// The first failure is remembered this long; each further one doubles it ...
    pub backoff_base: Duration,
    /// ... up to this.
    pub backoff_max: Duration,
    /// Most names kept; the stalest entry goes first when full.
    pub max_entries: usize,
    /// A signet kept in the store and not confirmed for this long is dropped at start and
    /// fetched afresh (`SGNT`) rather than re-checked (`VRFY`).
    pub keep_for: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            fresh_for: Duration::from_secs(3600),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            max_entries: 10_000,
            keep_for: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Found {
        signet: Box<Signet>,
        checked: Instant,
    },
    Failed {
        failures: u32,
        retry_at: Instant,
        error: String,
        permanent: bool,
    },
}

/// What the cache can say about a name.
#[derive(Debug, Clone)]
pub enum CacheAnswer {
    /// Fresh: use it.
    Hit(Signet),
    /// Found before but not checked recently: ask `VRFY` with its fingerprint.
    Stale(Signet),
    /// A recent look-up failed; do not ask again before `retry_at`.
    Backoff {
        /// When a look-up may be tried again.
        retry_at: Instant,
        /// What failed.
        error: String,
        /// Whether that failure was permanent.
        permanent: bool,
    },
    /// Nothing known.
    Miss,
}

/// Signets by name (`domain` or `local@domain`), positive and negative.
#[derive(Debug, Default)]
pub struct SignetCache {
    policy: CachePolicy,
    entries: HashMap<String, Entry>,
}

impl SignetCache {
    /// An empty cache.
    pub fn new(policy: CachePolicy) -> SignetCache {
        SignetCache {
            policy,
            entries: HashMap::new(),
        }
    }

    /// What is known about `name` at `now`.
    pub fn get(&self, name: &str, now: Instant) -> CacheAnswer {
        match self.entries.get(name) {
            None => CacheAnswer::Miss,
            Some(Entry::Found { signet, checked }) => {
                if now.saturating_duration_since(*checked) < self.policy.fresh_for {
                    CacheAnswer::Hit((**signet).clone())
                } else {
                    CacheAnswer::Stale((**signet).clone())
                }
            }
            Some(Entry::Failed {
                retry_at,
                error,
                permanent,
                ..
            }) => {
                if now < *retry_at {
                    CacheAnswer::Backoff {
                        retry_at: *retry_at,
                        error: error.clone(),
                        permanent: *permanent,
                    }
                } else {
                    CacheAnswer::Miss
                }
            }
        }
    }

    /// A look-up (or `VRFY`) confirmed `signet` at `now`.
    pub fn found(&mut self, name: &str, signet: Signet, now: Instant) {
        self.make_room(name);
        self.entries.insert(
            name.to_owned(),
            Entry::Found {
                signet: Box::new(signet),
                checked: now,
            },
        );
    }

    /// A look-up failed at `now`; returns when it may be tried again. It replaces what was
    /// cached: a signet its DX no longer vouches for is not served from memory either.
    pub fn failed(&mut self, name: &str, error: String, permanent: bool, now: Instant) -> Instant {
        let failures = match self.entries.get(name) {
            Some(Entry::Failed { failures, .. }) => failures.saturating_add(1),
            _ => 1,
        };
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        let wait = self
            .policy
            .backoff_base
            .saturating_mul(factor)
            .min(self.policy.backoff_max);
        let retry_at = now + wait;
        self.make_room(name);
        self.entries.insert(
            name.to_owned(),
            Entry::Failed {
                failures,
                retry_at,
                error,
                permanent,
            },
        );
        retry_at
    }

    /// Warms the cache with a signet the store kept, confirmed `age` before `now`: fresh if
    /// `age` is within `fresh_for`, stale (re-checked by `VRFY`) after that; `false` (not
    /// taken) once it is older than `keep_for`.
    pub fn restore(&mut self, name: &str, signet: Signet, age: Duration, now: Instant) -> bool {
        if age > self.policy.keep_for {
            return false;
        }
        // An age beyond what Instant can go back (just after boot) counts as stale.
        let checked = now
            .checked_sub(age)
            .or_else(|| now.checked_sub(self.policy.fresh_for))
            .unwrap_or(now);
        self.found(name, signet, checked);
        true
    }

    /// Names cached, for metrics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, incoming: &str) {
        if self.entries.len() < self.policy.max_entries || self.entries.contains_key(incoming) {
            return;
        }
        let stalest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| match e {
                Entry::Found { checked, .. } => *checked,
                Entry::Failed { retry_at, .. } => *retry_at,
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = stalest {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_entries_are_fresh_stale_or_expired_by_age() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let mut c = SignetCache::new(policy());
        assert!(c.restore("fresh.test", signet(), Duration::from_secs(99), now));
        assert!(matches!(c.get("fresh.test", now), CacheAnswer::Hit(_)));
        assert!(c.restore("stale.test", signet(), Duration::from_secs(101), now));
        assert!(matches!(c.get("stale.test", now), CacheAnswer::Stale(_)));
        assert!(!c.restore("old.test", signet(), Duration::from_secs(1001), now));
        assert!(matches!(c.get("old.test", now), CacheAnswer::Miss));
    }

    fn signet() -> Signet {
        let v = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/dime-vectors/d2-magma-dime/org-signet.bin"
        );
        Signet::parse(&std::fs::read(v).unwrap()).unwrap()
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            fresh_for: Duration::from_secs(100),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(35),
            max_entries: 2,
            keep_for: Duration::from_secs(1000),
        }
    }

    #[test]
    fn found_signets_are_fresh_then_stale() {
        let t0 = Instant::now();
        let mut c = SignetCache::new(policy());
        assert!(matches!(c.get("a.test", t0), CacheAnswer::Miss));
        c.found("a.test", signet(), t0);
        assert!(matches!(
            c.get("a.test", t0 + Duration::from_secs(99)),
            CacheAnswer::Hit(_)
        ));
        assert!(matches!(
            c.get("a.test", t0 + Duration::from_secs(100)),
            CacheAnswer::Stale(_)
        ));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let t0 = Instant::now();
        let mut c = SignetCache::new(policy());
        let waits: Vec<u64> = (0..4)
            .map(|_| {
                c.failed("b.test", "down".into(), false, t0)
                    .duration_since(t0)
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 35, 35]);
        match c.get("b.test", t0 + Duration::from_secs(34)) {
            CacheAnswer::Backoff {
                error, permanent, ..
            } => {
                assert_eq!(error, "down");
                assert!(!permanent);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.get("b.test", t0 + Duration::from_secs(35)),
            CacheAnswer::Miss
        ));
        // Success resets the count.
        c.found("b.test", signet(), t0);
        assert_eq!(
            c.failed("b.test", "x".into(), true, t0)
                .duration_since(t0)
                .as_secs(),
            10
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        let mut c = SignetCache::new(policy());
        c.found("old.test", signet(), t0);
        c.found("mid.test", signet(), t0 + Duration::from_secs(1));
        c.found("new.test", signet(), t0 + Duration::from_secs(2));
        assert_eq!(c.len(), 2);
        assert!(matches!(c.get("old.test", t0), CacheAnswer::Miss));
        // Replacing an entry does not evict another.
        c.found("mid.test", signet(), t0 + Duration::from_secs(3));
        assert_eq!(c.len(), 2);
        assert!(matches!(c.get("new.test", t0), CacheAnswer::Hit(_)));
    }
}
