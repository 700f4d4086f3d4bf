//! MTA-STS (RFC 8461) as values: the `_mta-sts` TXT record, the policy file, MX pattern matching
//! and the in-memory policy cache. Sans-I/O and table-tested; the HTTPS fetch is `sts_fetch.rs`.
//!
//! The cache lives in memory only (a restart refetches each policy on first use, which RFC 8461
//! §5 allows: the cache protects against downgrades between fetches, and a fresh fetch is itself
//! authenticated by WebPKI). It is bounded ([`MAX_CACHED`]) and entries expire at `max_age`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The policy file's largest accepted size (RFC 8461 §3.3: 64 KiB "SHOULD" be enough).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The most policies kept in memory.
pub const MAX_CACHED: usize = 10_000;

/// After a failed fetch, the same record id is not fetched again for this long: a broken
/// policy server gets one request per interval, not one per message.
pub const FETCH_BACKOFF: Duration = Duration::from_secs(300);

/// A `_mta-sts` TXT record (RFC 8461 §3.1) that parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy id: 1 to 32 letters and digits; a change means "fetch again".
    pub id: String,
}

/// Why a `_mta-sts` record or a policy file is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsParseError {
    /// The record does not start with `v=STSv1`.
    #[error("the record does not start with v=STSv1")]
    NotStsV1,
    /// No `id` field, or an id that is not 1-32 letters and digits.
    #[error("the record has no valid id (1 to 32 letters and digits)")]
    BadId,
    /// Not exactly one `v=STSv1` record at `_mta-sts` (RFC 8461 §3.1).
    #[error("{0} MTA-STS records where exactly one is expected")]
    RecordCount(usize),
    /// The policy file is not UTF-8 text.
    #[error("the policy is not UTF-8 text")]
    NotText,
    /// The policy file is larger than [`MAX_POLICY_BYTES`].
    #[error("the policy is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    /// A line without `key: value`.
    #[error("policy line {0}: not \"key: value\"")]
    BadLine(usize),
    /// `version` missing or not `STSv1`.
    #[error("the policy has no \"version: STSv1\"")]
    BadVersion,
    /// `mode` missing or not `enforce`, `testing` or `none`.
    #[error("the policy has no valid mode (enforce, testing or none)")]
    BadMode,
    /// `max_age` missing, not a number, or above [`MAX_AGE_LIMIT`].
    #[error("the policy has no valid max_age (0 to {MAX_AGE_LIMIT} seconds)")]
    BadMaxAge,
    /// A mode other than `none` without any `mx` line, or an `mx` that is not a host pattern.
    #[error("the policy has no valid mx patterns")]
    BadMx,
    /// A key given twice where one is expected.
    #[error("the policy repeats {0:?}")]
    Repeated(&'static str),
}

/// Parses one TXT record: `v=STSv1; id=...;` with optional whitespace and unknown fields.
pub fn parse_record(text: &str) -> Result<StsRecord, StsParseError> {
    let mut fields = text.split(';').map(str::trim);
    let first = fields.next().unwrap_or_default();
    if first != "v=STSv1" {
        return Err(StsParseError::NotStsV1);
    }
    let mut id = None;
    for field in fields {
        if let Some(value) = field.strip_prefix("id=") {
            if id.is_some() {
                return Err(StsParseError::BadId);
            }
            id = Some(value);
        }
    }
    let id = id.ok_or(StsParseError::BadId)?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StsParseError::BadId);
    }
    Ok(StsRecord { id: id.to_owned() })
}

/// The record among all TXT records at `_mta-sts.<domain>`: those not starting with `v=STSv1`
/// are ignored; exactly one must remain (RFC 8461 §3.1).
pub fn select_record(texts: &[String]) -> Result<StsRecord, StsParseError> {
    let candidates: Vec<&String> = texts
        .iter()
        .filter(|t| t.trim_start().starts_with("v=STSv1"))
        .collect();
    match candidates.as_slice() {
        [one] => parse_record(one),
        [] => Err(StsParseError::NotStsV1),
        more => Err(StsParseError::RecordCount(more.len())),
    }
}

/// What the policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deliver only to matching MX hosts over WebPKI-verified TLS.
    Enforce,
    /// Report failures (TLS-RPT) but deliver as without a policy.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    /// The policy file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `max_age`, capped at [`MAX_AGE_LIMIT`].
    pub max_age: Duration,
    /// `mx` patterns, lower case, without trailing dot; `*.example.net` matches one label.
    pub mx: Vec<String>,
}

impl Policy {
    /// Whether `host` (an MX host name) is allowed by one of the patterns (RFC 8461 §4.1): equal,
    /// or `*.rest` where the host is one label followed by `.rest`. Case-insensitive.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| mx_matches(pattern, &host))
    }

    /// The policy lines as TLS-RPT's `policy-string` wants them (RFC 8460 §4.4).
    pub fn policy_strings(&self) -> Vec<String> {
        let mut lines = vec![
            "version: STSv1".to_owned(),
            format!("mode: {}", self.mode.as_str()),
        ];
        lines.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", self.max_age.as_secs()));
        lines
    }
}

fn mx_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == host,
    }
}

fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a policy file body (RFC 8461 §3.2): `key: value` lines ended by LF or CRLF, unknown
/// keys ignored, `version`, `mode` and `max_age` required, `mx` required unless the mode is
/// `none`.
pub fn parse_policy(body: &[u8]) -> Result<Policy, StsParseError> {
    if body.len() > MAX_POLICY_BYTES {
        return Err(StsParseError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| StsParseError::NotText)?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (number, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or(StsParseError::BadLine(number + 1))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" if version.is_some() => return Err(StsParseError::Repeated("version")),
            "version" => version = Some(value),
            "mode" => {
                let parsed = match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(StsParseError::BadMode),
                };
                if mode.replace(parsed).is_some() {
                    return Err(StsParseError::Repeated("mode"));
                }
            }
            "max_age" => {
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(StsParseError::BadMaxAge);
                }
                let seconds: u64 = value.parse().map_err(|_| StsParseError::BadMaxAge)?;
                if seconds > MAX_AGE_LIMIT {
                    return Err(StsParseError::BadMaxAge);
                }
                if max_age.replace(seconds).is_some() {
                    return Err(StsParseError::Repeated("max_age"));
                }
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_pattern(&pattern) {
                    return Err(StsParseError::BadMx);
                }
                if !mx.contains(&pattern) {
                    mx.push(pattern);
                }
            }
            _ => {}
        }
    }
    if version != Some("STSv1") {
        return Err(StsParseError::BadVersion);
    }
    let mode = mode.ok_or(StsParseError::BadMode)?;
    let max_age = max_age.ok_or(StsParseError::BadMaxAge)?;
    if mode != Mode::None && mx.is_empty() {
        return Err(StsParseError::BadMx);
    }
    Ok(Policy {
        mode,
        max_age: Duration::from_secs(max_age),
        mx,
    })
}

/// A cached policy with the record id it was fetched under.
#[derive(Debug, Clone)]
struct Cached {
    id: String,
    policy: Arc<Policy>,
    expires: Instant,
}

/// Policies by recipient domain, each valid until its `max_age` (RFC 8461 §5.1). Cheap to
/// share; the lock is never held across an await.
#[derive(Debug, Default)]
pub struct PolicyCache {
    entries: Mutex<HashMap<String, Cached>>,
    /// Domain -> (record id, no new fetch before).
    failed: Mutex<HashMap<String, (String, Instant)>>,
}

impl PolicyCache {
    /// The unexpired policy of `domain` and the id it was fetched under.
    pub fn get(&self, domain: &str, now: Instant) -> Option<(String, Arc<Policy>)> {
        let entries = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries
            .get(domain)
            .filter(|c| now < c.expires)
            .map(|c| (c.id.clone(), c.policy.clone()))
    }

    /// Stores a freshly fetched policy (a `max_age` of 0 is used once and not kept).
    pub fn put(&self, domain: &str, id: String, policy: Arc<Policy>, now: Instant) {
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        if entries.len() >= MAX_CACHED && !entries.contains_key(domain) {
            entries.retain(|_, c| now < c.expires);
            if entries.len() >= MAX_CACHED {
                // Still full of live policies: forget the one closest to expiry.
                if let Some(victim) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&victim);
                }
            }
        }
        let expires = now + policy.max_age;
        entries.insert(
            domain.to_owned(),
            Cached {
                id,
                policy,
                expires,
            },
        );
    }

    /// Whether a fetch for `id` of `domain` failed less than [`FETCH_BACKOFF`] ago.
    pub fn fetch_backing_off(&self, domain: &str, id: &str, now: Instant) -> bool {
        let failed = match self.failed.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        failed
            .get(domain)
            .is_some_and(|(failed_id, until)| failed_id == id && now < *until)
    }

    /// Notes a failed fetch of `id` for `domain`.
    pub fn fetch_failed(&self, domain: &str, id: &str, now: Instant) {
        let mut failed = match self.failed.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if failed.len() >= MAX_CACHED {
            failed.retain(|_, (_, until)| now < *until);
            if failed.len() >= MAX_CACHED {
                failed.clear();
            }
        }
        failed.insert(domain.to_owned(), (id.to_owned(), now + FETCH_BACKOFF));
    }

    /// Number of cached policies (expired ones included until swept).
    pub fn len(&self) -> usize {
        match self.entries.lock() {
            Ok(e) => e.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// `true` when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_table() {
        for (text, want) in [
            ("v=STSv1; id=20160831085700Z;", Ok("20160831085700Z")),
            ("v=STSv1;id=abc", Ok("abc")),
            ("v=STSv1; id=abc; ext=1", Ok("abc")),
            ("v=STSv1 ; id=abc ;", Ok("abc")),
            ("v=STSv2; id=abc", Err(StsParseError::NotStsV1)),
            ("id=abc; v=STSv1", Err(StsParseError::NotStsV1)),
            ("v=STSv1;", Err(StsParseError::BadId)),
            ("v=STSv1; id=", Err(StsParseError::BadId)),
            ("v=STSv1; id=a-b", Err(StsParseError::BadId)),
            (
                "v=STSv1; id=012345678901234567890123456789012",
                Err(StsParseError::BadId),
            ),
            ("v=STSv1; id=a; id=b", Err(StsParseError::BadId)),
        ] {
            assert_eq!(
                parse_record(text).map(|r| r.id),
                want.map(str::to_owned),
                "{text:?}"
            );
        }
    }

    #[test]
    fn record_selection() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            select_record(&s(&["v=spf1 -all", "v=STSv1; id=a"]))
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(
            select_record(&s(&["v=STSv1; id=a", "v=STSv1; id=b"])),
            Err(StsParseError::RecordCount(2))
        );
        assert_eq!(
            select_record(&s(&["v=spf1 -all"])),
            Err(StsParseError::NotStsV1)
        );
    }

    #[test]
    fn policies_table() {
        let ok = parse_policy(
            b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\n\
              max_age: 604800\r\nfuture: x\r\n",
        )
        .unwrap();
        assert_eq!(ok.mode, Mode::Enforce);
        assert_eq!(ok.max_age, Duration::from_secs(604_800));
        assert_eq!(ok.mx, ["mail.example.com", "*.example.net"]);
        // LF line ends and mode none without mx.
        let none = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(none.mode, Mode::None);
        for (body, want) in [
            (
                &b"mode: enforce\nmx: a.b\nmax_age: 1\n"[..],
                StsParseError::BadVersion,
            ),
            (
                b"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                StsParseError::BadVersion,
            ),
            (
                b"version: STSv1\nmx: a.b\nmax_age: 1\n",
                StsParseError::BadMode,
            ),
            (
                b"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                StsParseError::BadMode,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\n",
                StsParseError::BadMaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                StsParseError::BadMaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
                StsParseError::BadMaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 99999999999999999999\n",
                StsParseError::BadMaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmax_age: 1\n",
                StsParseError::BadMx,
            ),
            (
                b"version: STSv1\nmode: testing\nmx: a b\nmax_age: 1\n",
                StsParseError::BadMx,
            ),
            (
                b"version: STSv1\nmode: testing\nmx: *.\nmax_age: 1\n",
                StsParseError::BadMx,
            ),
            (
                b"version: STSv1\nmode: testing\nmx: a.b\nmax_age: 1\njunk\n",
                StsParseError::BadLine(5),
            ),
            (
                b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                StsParseError::Repeated("mode"),
            ),
            (b"version: STSv1\xff\n", StsParseError::NotText),
        ] {
            assert_eq!(
                parse_policy(body),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_policy(&vec![b'#'; MAX_POLICY_BYTES + 1]),
            Err(StsParseError::TooLarge)
        );
    }

    #[test]
    fn mx_patterns_table() {
        let policy = Policy {
            mode: Mode::Enforce,
            max_age: Duration::from_secs(1),
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
        };
        for (host, want) in [
            ("mail.example.com", true),
            ("MAIL.Example.COM.", true),
            ("mx.mail.example.com", false),
            ("example.com", false),
            ("mx1.example.net", true),
            ("example.net", false),
            ("a.b.example.net", false),
            (".example.net", false),
            ("mx1example.net", false),
        ] {
            assert_eq!(policy.matches(host), want, "{host}");
        }
    }

    #[test]
    fn cache_expires_at_max_age_and_stays_bounded() {
        let cache = PolicyCache::default();
        let now = Instant::now();
        let policy = |secs| {
            Arc::new(Policy {
                mode: Mode::Enforce,
                max_age: Duration::from_secs(secs),
                mx: vec!["a.b".into()],
            })
        };
        cache.put("example.com", "id1".into(), policy(60), now);
        assert_eq!(cache.get("example.com", now).unwrap().0, "id1");
        assert!(
            cache
                .get("example.com", now + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            cache
                .get("example.com", now + Duration::from_secs(60))
                .is_none()
        );
        assert!(!cache.fetch_backing_off("bad.com", "1", now));
        cache.fetch_failed("bad.com", "1", now);
        assert!(cache.fetch_backing_off("bad.com", "1", now + Duration::from_secs(299)));
        assert!(
            !cache.fetch_backing_off("bad.com", "2", now),
            "a new id is fetched"
        );
        assert!(!cache.fetch_backing_off("bad.com", "1", now + FETCH_BACKOFF));
        cache.put("zero.com", "id".into(), policy(0), now);
        assert!(cache.get("zero.com", now).is_none());
        for i in 0..MAX_CACHED + 10 {
            cache.put(&format!("d{i}.com"), "x".into(), policy(100), now);
        }
        assert!(cache.len() <= MAX_CACHED);
    }
}
