//! Per-client rate limits on ingress, sans-I/O: new connections per second per client, and AUTH
//! failures per client with an exponential back-off against password guessing. Time comes in as
//! an argument; the glue (`smtp/server.rs`) holds the tables behind a mutex and answers for them
//! (`421 4.7.0` at connect, `454 4.7.0` to AUTH).
//!
//! A client is its IPv4 address, or the /64 of its IPv6 address (one host usually holds a whole
//! /64, so counting single IPv6 addresses would let it rotate past any limit). Memory is bounded:
//! entries that no longer constrain anything are dropped, and past [`MAX_TRACKED`] clients a new
//! one is not tracked (it is let through: the global connection cap still holds).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Most clients one table tracks at once.
pub const MAX_TRACKED: usize = 65_536;

/// The limits, from `[smtp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// New connections per second per client, with bursts up to the same number; 0: no limit.
    pub connections_per_second: u32,
    /// AUTH failures per client tolerated before the back-off starts; 0: no limit.
    pub auth_failures: u32,
    /// The first back-off; it doubles with each further failure.
    pub auth_backoff: Duration,
    /// The longest back-off; also how long a client's failures are remembered.
    pub auth_backoff_max: Duration,
    /// Clients never limited (default: loopback, like Postfix's `smtpd_client_event_limit_exceptions`).
    pub exempt: Vec<IpNet>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            connections_per_second: 20,
            auth_failures: 5,
            auth_backoff: Duration::from_secs(30),
            auth_backoff_max: Duration::from_secs(15 * 60),
            exempt: vec![
                IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("a valid prefix")),
                IpNet::V6(Ipv6Net::from(Ipv6Addr::LOCALHOST)),
            ],
        }
    }
}

impl RateLimits {
    fn is_exempt(&self, ip: IpAddr) -> bool {
        crate::config::networks_contain(&self.exempt, ip)
    }
}

/// The table key for a client address.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
        v4 => v4,
    }
}

/// New connections per second per client: a token bucket kept as one "theoretical arrival
/// time" per client (the generic cell rate algorithm), so a burst of `rate` is allowed and then
/// one connection each `1/rate` seconds.
#[derive(Debug)]
pub struct ConnectionRate {
    limits: RateLimits,
    next_free: HashMap<IpAddr, Instant>,
}

impl ConnectionRate {
    /// An empty table.
    pub fn new(limits: RateLimits) -> ConnectionRate {
        ConnectionRate {
            limits,
            next_free: HashMap::new(),
        }
    }

    /// Counts a connection from `ip` at `now`; false when it is over the rate (`421 4.7.0`).
    /// A refused attempt does not use up the allowance.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.limits.connections_per_second;
        if rate == 0 || self.limits.is_exempt(ip) {
            return true;
        }
        let interval = Duration::from_secs(1) / rate;
        let burst = Duration::from_secs(1).saturating_sub(interval);
        let key = client_key(ip);
        if !self.next_free.contains_key(&key) && self.next_free.len() >= MAX_TRACKED {
            self.next_free.retain(|_, t| *t > now);
            if self.next_free.len() >= MAX_TRACKED {
                return true;
            }
        }
        let tat = self.next_free.get(&key).map_or(now, |t| (*t).max(now));
        if tat.saturating_duration_since(now) > burst {
            return false;
        }
        self.next_free.insert(key, tat + interval);
        true
    }

    /// Clients tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.next_free.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// AUTH failures per client. After `auth_failures` failures each further one blocks the client
/// for `auth_backoff`, doubled per failure up to `auth_backoff_max`; while blocked its attempts
/// are answered without checking the password, so guessing costs the guesser time, not us CPU.
#[derive(Debug)]
pub struct AuthFailures {
    limits: RateLimits,
    clients: HashMap<IpAddr, Failures>,
}

impl AuthFailures {
    /// An empty table.
    pub fn new(limits: RateLimits) -> AuthFailures {
        AuthFailures {
            limits,
            clients: HashMap::new(),
        }
    }

    /// May `ip` try a password at `now`? False while it is backing off (`454 4.7.0`).
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limits.auth_failures == 0 || self.limits.is_exempt(ip) {
            return true;
        }
        self.clients
            .get(&client_key(ip))
            .and_then(|f| f.blocked_until)
            .is_none_or(|until| now >= until)
    }

    /// A failed attempt from `ip` at `now`; returns the back-off it starts, if any.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.limits.auth_failures == 0 || self.limits.is_exempt(ip) {
            return None;
        }
        let memory = self.limits.auth_backoff_max;
        let key = client_key(ip);
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_TRACKED {
            self.clients
                .retain(|_, f| now.saturating_duration_since(f.last) < memory);
            if self.clients.len() >= MAX_TRACKED {
                return None;
            }
        }
        let entry = self.clients.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        // Failures long ago are forgotten: a user who mistyped yesterday starts afresh.
        if now.saturating_duration_since(entry.last) >= memory {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let over = entry.count.checked_sub(self.limits.auth_failures)?;
        if over == 0 {
            return None;
        }
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        let backoff = self
            .limits
            .auth_backoff
            .saturating_mul(factor)
            .min(self.limits.auth_backoff_max);
        entry.blocked_until = now.checked_add(backoff);
        Some(backoff)
    }

    /// A successful AUTH from `ip`: its failures are forgotten.
    pub fn record_success(&mut self, ip: IpAddr) {
        self.clients.remove(&client_key(ip));
    }

    /// Clients tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits {
            connections_per_second: 4,
            auth_failures: 3,
            auth_backoff: Duration::from_secs(10),
            auth_backoff_max: Duration::from_secs(60),
            exempt: vec!["192.0.2.0/28".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connection_rate_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut rate = ConnectionRate::new(limits());
        let a = ip("198.51.100.1");
        // (time in ms, admitted?)
        let table: &[(u64, bool)] = &[
            (0, true),
            (0, true),
            (0, true),
            (0, true),
            (0, false),
            (100, false),
            (250, true),
            (260, false),
            (500, true),
            (2000, true),
            (2000, true),
            (2000, true),
            (2000, true),
            (2000, false),
        ];
        for (i, &(at, expected)) in table.iter().enumerate() {
            assert_eq!(rate.admit(a, ms(at)), expected, "row {i} at {at} ms");
        }
        // Another client has its own allowance.
        assert!(rate.admit(ip("198.51.100.2"), ms(2000)));
    }

    #[test]
    fn connection_rate_keys_ipv6_by_64_and_exempts_listed_networks() {
        let t0 = Instant::now();
        let mut rate = ConnectionRate::new(limits());
        for i in 0..4 {
            assert!(rate.admit(ip(&format!("2001:db8:1:2::{i}")), t0));
        }
        assert!(!rate.admit(ip("2001:db8:1:2:ffff::9"), t0), "same /64");
        assert!(rate.admit(ip("2001:db8:1:3::1"), t0), "another /64");
        // IPv4-mapped IPv6 is the IPv4 client.
        for _ in 0..4 {
            assert!(rate.admit(ip("198.51.100.7"), t0));
        }
        assert!(!rate.admit(ip("::ffff:198.51.100.7"), t0));
        for _ in 0..100 {
            assert!(rate.admit(ip("192.0.2.3"), t0), "exempt");
        }
        assert_eq!(rate.tracked(), 3);
    }

    #[test]
    fn connection_rate_zero_is_off() {
        let mut rate = ConnectionRate::new(RateLimits {
            connections_per_second: 0,
            ..limits()
        });
        let t0 = Instant::now();
        assert!((0..1000).all(|_| rate.admit(ip("198.51.100.1"), t0)));
        assert_eq!(rate.tracked(), 0);
    }

    #[test]
    fn connection_rate_table_stays_bounded() {
        let t0 = Instant::now();
        let mut rate = ConnectionRate::new(limits());
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            assert!(rate.admit(a, t0));
        }
        assert_eq!(rate.tracked(), MAX_TRACKED);
        // Once the entries have lapsed they make room again.
        assert!(rate.admit(ip("198.51.100.1"), t0 + Duration::from_secs(2)));
        assert_eq!(rate.tracked(), 1);
    }

    #[test]
    fn auth_failures_back_off_exponentially_up_to_the_cap() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut auth = AuthFailures::new(limits());
        let a = ip("198.51.100.1");
        // (time in s, back-off started by this failure)
        let table: &[(u64, Option<u64>)] = &[
            (0, None),
            (1, None),
            (2, None),
            (3, Some(10)),
            (13, Some(20)),
            (33, Some(40)),
            (73, Some(60)),
            (133, None), // 60 s after the last failure: forgotten, counting starts again
        ];
        let mut blocked = false;
        for (i, &(at, backoff)) in table.iter().enumerate() {
            let just_before = s(at) - Duration::from_millis(1);
            assert_eq!(
                auth.allows(a, just_before),
                !blocked,
                "row {i}: before {at}s"
            );
            assert!(auth.allows(a, s(at)), "row {i}: allowed at {at}s");
            assert_eq!(
                auth.record_failure(a, s(at)),
                backoff.map(Duration::from_secs),
                "row {i} at {at}s"
            );
            blocked = backoff.is_some();
        }
        let b = ip("198.51.100.2");
        for at in 0..4 {
            auth.record_failure(b, s(at));
        }
        assert!(!auth.allows(b, s(12)));
        assert!(auth.allows(b, s(13)), "the back-off ends");
        auth.record_success(b);
        assert!(auth.allows(b, s(13)));
        assert_eq!(auth.record_failure(b, s(14)), None, "success forgets");
    }

    #[test]
    fn auth_exempt_and_off() {
        let t0 = Instant::now();
        let mut auth = AuthFailures::new(limits());
        for _ in 0..10 {
            assert_eq!(auth.record_failure(ip("192.0.2.1"), t0), None);
        }
        assert!(auth.allows(ip("192.0.2.1"), t0));
        let mut off = AuthFailures::new(RateLimits {
            auth_failures: 0,
            ..limits()
        });
        for _ in 0..10 {
            assert_eq!(off.record_failure(ip("198.51.100.1"), t0), None);
        }
        assert!(off.allows(ip("198.51.100.1"), t0));
        assert_eq!(auth.tracked() + off.tracked(), 0);
    }
}
