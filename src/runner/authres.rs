//! How the legacy sender of a message about to be wrapped authenticated, as an
//! `Authentication-Results` value (RFC 8601) that the bridge seals into the message's headers, so
//! the DIME recipient sees it under the origin's signature: SPF (RFC 7208) for the client address,
//! HELO and MAIL FROM, DKIM (RFC 6376) signatures in the message, DMARC (RFC 7489) for its From
//! domain, all through mail-auth with our resolver; or `auth=pass` for an authenticated
//! submission, for which SPF says nothing.
//!
//! The checks run after the `250`, when the message is wrapped (DESIGN.md §1: work after the 250
//! is retried on a schedule); a DNS failure is a `temperror` result in the header, not a delay.
//!
//! The records they read (SPF and DMARC TXT, MX, A, AAAA, PTR) are kept, parsed, for their TTL
//! ([`DnsCache`], bounded): a relay wraps mail from the same few senders over and over, and
//! without it every message paid for its own queries, their DNSSEC validation and the parse.
//! mail-auth keeps only answers that exist, so for a message that carries no DKIM signature,
//! whose results follow from the envelope and the From domain alone, the whole value is kept
//! too, for [`RESULTS_TTL`]: senders without SPF or DMARC records would otherwise be asked
//! about on every message.

use crate::envelope::Envelope;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, MX, MessageAuthenticator, Parameters, RecordSet,
    ResolverCache, Txt,
};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The sender checks, with their resolver.
#[derive(Clone)]
pub struct SenderChecks {
    authenticator: MessageAuthenticator,
    hostname: String,
    caches: Arc<Caches>,
}

/// Entries per record type: enough for the senders a relay sees in a TTL.
const CACHE_ENTRIES: usize = 4096;

/// How long the results for one envelope and From domain (no DKIM) are reused: short beside
/// the TTLs SPF and DMARC records have in practice, so a change shows within it.
const RESULTS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// What the results of a message without DKIM signatures depend on: client address, HELO,
/// MAIL FROM, From.
type ResultsKey = (IpAddr, String, String, String);

/// Parsed DNS answers by type, as mail-auth asks for them.
#[derive(Default)]
struct Caches {
    txt: DnsCache<Box<str>, Txt>,
    mx: DnsCache<Box<str>, RecordSet<MX>>,
    ipv4: DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: DnsCache<IpAddr, RecordSet<Box<str>>>,
    results: DnsCache<ResultsKey, String>,
}

/// mail-auth's parameters `P` with [`Caches`] attached.
type Cached<'a, P> = Parameters<
    'a,
    P,
    DnsCache<Box<str>, Txt>,
    DnsCache<Box<str>, RecordSet<MX>>,
    DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    DnsCache<IpAddr, RecordSet<Box<str>>>,
>;

impl Caches {
    /// `params` with every cache attached.
    fn attach<P>(&self, params: P) -> Cached<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }
}

/// Answers until the time their TTL gives, at most [`CACHE_ENTRIES`]: when full, the expired
/// go, and if none had, everything does (a burst of new names costs queries, never memory).
struct DnsCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for DnsCache<K, V> {
    fn default() -> Self {
        DnsCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for DnsCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, valid_until));
    }
}

impl std::fmt::Debug for SenderChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderChecks")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl SenderChecks {
    /// Checks that ask `resolver`'s servers and name `hostname` as the authserv-id.
    pub fn new(resolver: &crate::resolve::Resolver, hostname: String) -> SenderChecks {
        SenderChecks {
            authenticator: MessageAuthenticator(resolver.hickory()),
            hostname,
            caches: Arc::default(),
        }
    }

    /// The `Authentication-Results` value for `message` as received with `envelope`: one line
    /// (the bridge refuses header values with line breaks, so mail-auth's folding is undone).
    pub async fn results(&self, envelope: &Envelope, message: &[u8]) -> String {
        let mut results = AuthenticationResults::new(&self.hostname);
        if let Some(user) = &envelope.auth_user {
            // RFC 8601 §2.7.4: the submission's SMTP AUTH identity.
            let user: String = user.chars().filter(|c| c.is_ascii_graphic()).collect();
            return format!("{}; auth=pass smtp.auth={user}", self.hostname);
        }
        let ip = envelope.client.ip();
        let helo = envelope.helo.as_str();
        let parsed = AuthenticatedMessage::parse(message);
        let key: Option<ResultsKey> = match &parsed {
            Some(p) if !p.dkim_headers.is_empty() || p.has_dkim_errors => None,
            _ => Some((
                ip,
                helo.to_owned(),
                envelope.sender.clone(),
                parsed.as_ref().map_or("", |p| p.from()).to_owned(),
            )),
        };
        if let Some(hit) = key.as_ref().and_then(|k| self.caches.results.get(k)) {
            return hit;
        }
        let spf = self
            .authenticator
            .verify_spf(self.caches.attach(SpfParameters::verify_mail_from(
                ip,
                helo,
                &self.hostname,
                &envelope.sender,
            )))
            .await;
        results = results.with_spf_mailfrom_result(&spf, ip, &envelope.sender, helo);
        if let Some(parsed) = &parsed {
            let dkim = self
                .authenticator
                .verify_dkim(self.caches.attach(parsed))
                .await;
            let mail_from_domain = envelope.sender.rsplit_once('@').map_or(helo, |(_, d)| d);
            let dmarc = self
                .authenticator
                .verify_dmarc(self.caches.attach(DmarcParameters::new(
                    parsed,
                    &dkim,
                    mail_from_domain,
                    &spf,
                )))
                .await;
            results = results
                .with_dkim_results(&dkim, parsed.from())
                .with_dmarc_result(&dmarc);
        }
        let value = unfold(&results.to_string());
        if let Some(key) = key {
            self.caches
                .results
                .insert(key, value.clone(), Instant::now() + RESULTS_TTL);
        }
        value
    }
}

/// One line: folding whitespace (CRLF followed by blanks) becomes one space, and any other
/// control character goes.
fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.chars() {
        if c == '\r' || c == '\n' || c == '\t' {
            pending_space = true;
            continue;
        }
        if c.is_control() {
            continue;
        }
        if pending_space {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{CACHE_ENTRIES, DnsCache, unfold};
    use mail_auth::ResolverCache;
    use std::time::{Duration, Instant};

    #[test]
    fn the_dns_cache_keeps_answers_for_their_ttl_and_stays_bounded() {
        let cache: DnsCache<Box<str>, u32> = DnsCache::default();
        let later = Instant::now() + Duration::from_secs(60);
        cache.insert("a.test".into(), 1, later);
        cache.insert("gone.test".into(), 2, Instant::now());
        assert_eq!(cache.get("a.test"), Some(1));
        assert_eq!(cache.get("gone.test"), None);
        for i in 0..3 * CACHE_ENTRIES {
            cache.insert(format!("{i}.test").into(), 3, later);
            assert!(cache.entries.lock().unwrap().len() <= CACHE_ENTRIES);
        }
        assert_eq!(cache.remove("0.test"), None);
    }

    #[test]
    fn folded_results_become_one_line() {
        assert_eq!(
            unfold("mx.a.test;\r\n\tspf=none smtp.mailfrom=a@b;\r\n\tdkim=none"),
            "mx.a.test; spf=none smtp.mailfrom=a@b; dkim=none"
        );
        assert_eq!(unfold("a\u{7}b"), "ab");
    }
}
