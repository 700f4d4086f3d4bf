//! Finding and reaching other DIME organizations, and their signets (DIME.md §9, §10.4).
//!
//! `_dx.<domain>` comes from the validating resolver with its DNSSEC verdict (a bogus answer is
//! an error that is never read as "no DIME"). The DX hosts are tried in the order
//! [`targets`] gives: the record's `dx=` hosts with TLS from the first byte on port 26, then the
//! domain's MX hosts in dual mode on port 25, then the domain itself on 26 (`[dmtp]
//! connect_port` and `dual_mode_port` move those ports for tests). Each connection checks the
//! certificate by [`crate::dmtp::trust`] and runs a [`ClientSession`] through
//! [`connection::run`].
//!
//! The signet resolver: an org signet is fetched with `SGNT <domain>` from the domain's DX and
//! must validate to at least the full level under a POK of the record (§9.5); a user signet with
//! `SGNT <mailbox>` from the same DX must validate under that org signet. Both are cached
//! ([`cache`]): fresh entries answer from memory, stale ones are re-checked with `VRFY`, failures
//! back off exponentially. Found signets are written through to the store
//! ([`Discovery::with_store`], [`crate::store::StoredSignet`]) and warmed from it at start, so a
//! restart asks no DX again for what it knew; backoffs are not persisted (the store module says
//! why).
//!
//! A domain in the static DX map (`[[dmtp.static]]`, [`StaticDx`]) takes its record and its one
//! DX address from there instead of DNS. The map is the operator's configuration, so its record
//! is trusted as a DNSSEC-secure answer would be: a matching `tls=` pin suffices.

pub mod cache;
pub mod connection;
pub mod pool;

use crate::dime::{DxRecord, Fingerprint, Level, Signet, SignetKind};
use crate::dmtp::client::{
    ClientConfig, ClientError, ClientEvent, ClientSession, Job, JobId, Lookup,
};
use crate::dmtp::codec::{Domain, SignetName};
use crate::dmtp::trust::{DxCertVerifier, Refusal, Trust};
use crate::resolve::{ResolveError, Resolver, Verdict};
use cache::{CacheAnswer, CachePolicy, SignetCache};
use connection::{ConnectError, Connection, Transport};
use pool::{Lifetime, PoolPolicy, SessionPool};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How discovery connects.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// DMTP with TLS from the first byte (26).
    pub connect_port: u16,
    /// Dual mode on an SMTP port (25).
    pub dual_mode_port: u16,
    /// Roots for DX certificates that are not pinned under DNSSEC (Web roots + `ca_file`).
    pub roots: Arc<RootCertStore>,
    /// TCP connect and TLS handshake limit.
    pub connect_timeout: Duration,
    /// Reply limit in DMTP sessions.
    pub reply_timeout: Duration,
    /// Signet cache lifetimes.
    pub cache: CachePolicy,
    /// Domains found without DNS, by lower-case domain name.
    pub statics: BTreeMap<String, StaticDx>,
    /// Idle DMTP sessions kept for the next transaction to the same destination.
    pub pool: PoolPolicy,
    /// Most DMTP sessions open at once to one destination; a delivery beyond waits for one to
    /// come free (and reuses it) rather than connecting.
    pub max_sessions_per_destination: usize,
}

/// A domain's `_dx` record and DX address from the configuration (`[[dmtp.static]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticDx {
    /// The record, as if published.
    pub record: DxRecord,
    /// The DX: TLS from the first byte; the certificate is checked against the record's pins
    /// under the name of its first `dx=` host (the domain itself without one).
    pub address: SocketAddr,
}

impl StaticDx {
    /// The one place to try for `domain`, and its address.
    fn place(&self, domain: &str) -> (Target, IpAddr) {
        let host = self.record.dx.first().map_or(domain, String::as_str);
        let target = Target {
            host: host.to_ascii_lowercase(),
            port: self.address.port(),
            transport: Transport::Tls,
        };
        (target, self.address.ip())
    }
}

impl DiscoverySettings {
    /// Ports 26/25, the Web roots, 30 s to connect, 2 min per reply.
    pub fn new(roots: Arc<RootCertStore>) -> DiscoverySettings {
        DiscoverySettings {
            connect_port: 26,
            dual_mode_port: 25,
            roots,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(120),
            cache: CachePolicy::default(),
            statics: BTreeMap::new(),
            pool: PoolPolicy::default(),
            max_sessions_per_destination: 20,
        }
    }
}

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (certificate name).
    pub host: String,
    /// The port.
    pub port: u16,
    /// TLS from the first byte, or dual mode.
    pub transport: Transport,
}

/// DIME.md §9.3 as the issue orders it: `dx=` hosts on the DMTP port, then the MX hosts in dual
/// mode, then the domain itself on the DMTP port; each place once.
pub fn targets(
    domain: &str,
    record: &DxRecord,
    mx_hosts: &[String],
    settings: &DiscoverySettings,
) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut push = |host: &str, port, transport| {
        let t = Target {
            host: host.to_ascii_lowercase(),
            port,
            transport,
        };
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for h in &record.dx {
        push(h, settings.connect_port, Transport::Tls);
    }
    for h in mx_hosts.iter().take(3) {
        push(h, settings.dual_mode_port, Transport::DualMode);
    }
    push(domain, settings.connect_port, Transport::Tls);
    out
}

/// Why discovery failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// The domain publishes no `_dx` record: it does not speak DIME.
    #[error("{domain} publishes no _dx record")]
    NoRecord {
        /// The domain.
        domain: String,
    },
    /// DNS failed (temporary, permanent or bogus: see [`ResolveError`]).
    #[error("{0}")]
    Dns(Arc<ResolveError>),
    /// No DX host could be reached or trusted.
    #[error("no DX host of {domain} could be used: {}", attempts.join("; "))]
    Unreachable {
        /// The domain.
        domain: String,
        /// One line per place tried.
        attempts: Vec<String>,
    },
    /// The DX answered, and refused.
    #[error("{host}: {error}")]
    Refused {
        /// The DX host.
        host: String,
        /// The refusal.
        error: ClientError,
    },
    /// The signet the DX served does not validate as required.
    #[error("{name}: signet refused: {reason}")]
    InvalidSignet {
        /// Whose.
        name: String,
        /// Why.
        reason: String,
    },
    /// A recent look-up of this name failed; not asked again yet.
    #[error("{name}: {error} (cached; next try in {retry_in_secs}s)")]
    Backoff {
        /// Whose.
        name: String,
        /// The failure remembered.
        error: String,
        /// Seconds until the next try.
        retry_in_secs: u64,
        /// Whether that failure was permanent.
        permanent: bool,
    },
}

impl DiscoveryError {
    /// `true` when trying again later cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            DiscoveryError::NoRecord { .. } | DiscoveryError::InvalidSignet { .. } => true,
            DiscoveryError::Dns(e) => e.is_permanent(),
            DiscoveryError::Refused { error, .. } => error.is_permanent(),
            DiscoveryError::Backoff { permanent, .. } => *permanent,
            DiscoveryError::Unreachable { .. } => false,
        }
    }

    /// `true` for a DNSSEC-bogus answer.
    pub fn is_bogus(&self) -> bool {
        matches!(self, DiscoveryError::Dns(e) if e.is_bogus())
    }

    /// The metric label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryError::NoRecord { .. } => "no_record",
            DiscoveryError::Dns(e) if e.is_bogus() => "bogus",
            DiscoveryError::Dns(_) => "dns",
            DiscoveryError::Unreachable { .. } => "unreachable",
            DiscoveryError::Refused { .. } => "refused",
            DiscoveryError::InvalidSignet { .. } => "invalid_signet",
            DiscoveryError::Backoff { .. } => "backoff",
        }
    }
}

/// Where a session ran and why its certificate was trusted.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The DX host name.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// TLS from the first byte or dual mode.
    pub transport: Transport,
    /// The certificate verdict.
    pub trust: Trust,
    /// The `_dx` record's DNSSEC verdict.
    pub record_verdict: Verdict,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabel {
    how: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    kind: &'static str,
    result: &'static str,
}

/// Discovery metrics.
#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    lookups: Family<ResultLabel, Counter>,
    cache_hits: Counter,
    latency: Family<ResultLabel, Histogram, fn() -> Histogram>,
    sessions: Family<SessionLabel, Counter>,
    retries: Counter,
}

impl DiscoveryMetrics {
    /// Registers `dimegate_signet_lookups_total{kind,result}`,
    /// `dimegate_signet_cache_hits_total` and `dimegate_signet_lookup_seconds{kind,result}`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> DiscoveryMetrics {
        let m = DiscoveryMetrics::unregistered();
        registry.register(
            "dimegate_signet_lookups",
            "Signet look-ups that went to the network, by signet kind and result",
            m.lookups.clone(),
        );
        registry.register(
            "dimegate_signet_cache_hits",
            "Signet look-ups answered from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "dimegate_signet_lookup_seconds",
            "Time of signet look-ups that went to the network",
            m.latency.clone(),
        );
        registry.register(
            "dimegate_dmtp_client_sessions",
            "Batches of DMTP jobs (transfers, look-ups) by session: new (connected for them) or reused (an idle pooled session)",
            m.sessions.clone(),
        );
        registry.register(
            "dimegate_dmtp_client_pool_retries",
            "Pooled DMTP sessions found dead before their jobs were done, whose jobs went again on a new session",
            m.retries.clone(),
        );
        m
    }
}

impl DiscoveryMetrics {
    /// Metrics that no registry reads (command-line tools).
    pub fn unregistered() -> DiscoveryMetrics {
        DiscoveryMetrics {
            lookups: Family::default(),
            cache_hits: Counter::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 30.0])
            }),
            sessions: Family::default(),
            retries: Counter::default(),
        }
    }
}

/// The DX finder and signet resolver.
pub struct Discovery {
    resolver: Resolver,
    settings: DiscoverySettings,
    ehlo: Domain,
    cache: Mutex<SignetCache>,
    metrics: DiscoveryMetrics,
    /// Where found signets are kept across restarts.
    store: Option<crate::store::Store>,
    /// Idle sessions by destination domain.
    pool: Arc<Mutex<PoolCell>>,
    /// Session slots by destination domain ([`DiscoverySettings::max_sessions_per_destination`]).
    slots: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// A session and what it was trusted under, in or out of the pool.
struct Pooled {
    conn: Connection,
    record: DxRecord,
    verdict: Verdict,
    contact: Contact,
    lifetime: Lifetime,
}

/// The pool and whether a task is closing its expired sessions.
struct PoolCell {
    pool: SessionPool<Pooled>,
    reaper: bool,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A signet and how it was found.
#[derive(Debug, Clone)]
pub struct Found {
    /// The validated signet.
    pub signet: Signet,
    /// The session that served it; `None` when it came from the cache.
    pub contact: Option<Contact>,
}

impl Discovery {
    /// A resolver for our organization `ehlo` (the name sent in `EHLO`).
    pub fn new(
        resolver: Resolver,
        settings: DiscoverySettings,
        ehlo: Domain,
        metrics: DiscoveryMetrics,
    ) -> Discovery {
        let settings_pool = settings.pool;
        Discovery {
            resolver,
            cache: Mutex::new(SignetCache::new(settings.cache)),
            settings,
            ehlo,
            metrics,
            store: None,
            pool: Arc::new(Mutex::new(PoolCell {
                pool: SessionPool::new(settings_pool),
                reaper: false,
            })),
            slots: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Writes found signets through to `store` and warms the cache from what it kept (stale or
    /// expired ones as [`SignetCache::restore`] says; expired ones are deleted). Blocking: call
    /// it at start, before the listeners. A store that cannot be read leaves the cache empty.
    pub fn with_store(mut self, store: crate::store::Store) -> Discovery {
        let now_unix = crate::time::UnixTime::now().0;
        let now = Instant::now();
        let policy = self.settings.cache;
        match store.signets(policy.max_entries) {
            Ok(kept) => {
                let (mut warmed, mut dropped) = (0usize, 0usize);
                for s in kept {
                    let age = Duration::from_secs(now_unix.saturating_sub(s.confirmed_unix));
                    let restored = Signet::parse(&s.signet)
                        .is_ok_and(|signet| self.cache().restore(&s.name, signet, age, now));
                    if restored {
                        warmed += 1;
                    } else {
                        dropped += 1;
                        if let Err(e) = store.remove_signet(&s.name) {
                            tracing::warn!(name = %s.name, error = %e, "could not drop an expired cached signet");
                        }
                    }
                }
                tracing::info!(warmed, dropped, "signet cache warmed from the store");
            }
            Err(e) => tracing::warn!(error = %e, "signet cache: the store could not be read"),
        }
        self.store = Some(store);
        self
    }

    /// Keeps the cache's change in the store (off the async threads: a redb commit fsyncs).
    /// Best effort: a failure costs a network look-up after the next restart, nothing else.
    async fn persist(&self, name: &str, found: Option<&Signet>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let name = name.to_owned();
        let bytes = found.map(|s| s.as_bytes().to_vec());
        let now_unix = crate::time::UnixTime::now().0;
        let result = tokio::task::spawn_blocking(move || match bytes {
            Some(b) => store.put_signet(&name, &b, now_unix),
            None => store.remove_signet(&name),
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "signet cache: store write failed"),
            Err(e) => tracing::warn!(error = %e, "signet cache: store write did not run"),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SignetCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `_dx` record of `domain` with its verdict; no record is [`DiscoveryError::NoRecord`].
    /// A domain of the static map answers from there, as secure.
    pub async fn record(&self, domain: &str) -> Result<(DxRecord, Verdict), DiscoveryError> {
        if let Some(s) = self.static_dx(domain) {
            return Ok((s.record.clone(), Verdict::Secure));
        }
        match self.resolver.dx(domain).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(DiscoveryError::NoRecord {
                domain: domain.to_owned(),
            }),
            Err(e) => Err(DiscoveryError::Dns(Arc::new(e))),
        }
    }

    /// The addresses of a DX host (bogus answers are errors).
    pub async fn addresses(&self, host: &str) -> Result<Vec<std::net::IpAddr>, DiscoveryError> {
        self.resolver
            .addresses(host)
            .await
            .map_err(|e| DiscoveryError::Dns(Arc::new(e)))
    }

    /// The places to try for `domain` in order (§9.3): [`targets`] over the record and, when
    /// the record names no DX, the domain's MX hosts. A failing MX look-up is one attempt less,
    /// not a failure of the whole look-up; a bogus one is an error.
    pub async fn targets_of(
        &self,
        domain: &str,
        record: &DxRecord,
    ) -> Result<Vec<Target>, DiscoveryError> {
        let mx: Vec<String> = match self.resolver.mx(domain).await {
            Ok((answer, _)) => answer.hosts().iter().map(|h| h.host.clone()).collect(),
            Err(e) if e.is_bogus() => return Err(DiscoveryError::Dns(Arc::new(e))),
            Err(_) => Vec::new(),
        };
        Ok(targets(domain, record, &mx, &self.settings))
    }

    fn static_dx(&self, domain: &str) -> Option<&StaticDx> {
        self.settings
            .statics
            .get(domain.trim_end_matches('.').to_ascii_lowercase().as_str())
    }

    /// Runs `jobs` in one session with the first DX of `domain` that can be reached and trusted,
    /// and returns their events (jobs numbered from 1 in the order given) and where they ran. A
    /// domain of the static map has one place, its configured address.
    ///
    /// An idle session to `domain` that was trusted under the same `record` and `verdict` is
    /// reused when the pool holds one ([`pool`]); a new one goes back to the pool after its
    /// jobs. A pooled session that turns out dead costs no job: the jobs it had not begun to
    /// transfer (all but one whose message was sent and not yet answered) go once more, on a
    /// new session.
    pub async fn run(
        &self,
        domain: &str,
        record: &DxRecord,
        verdict: Verdict,
        jobs: Vec<Job>,
    ) -> Result<(Vec<ClientEvent>, Contact), DiscoveryError> {
        let key = domain.trim_end_matches('.').to_ascii_lowercase();
        let _slot = self.slot(&key).acquire_owned().await;
        let Some(mut pooled) = self.take_pooled(&key, record, verdict) else {
            return self.run_new(domain, &key, record, verdict, jobs).await;
        };
        self.metrics
            .sessions
            .get_or_create(&SessionLabel { how: "reused" })
            .inc();
        let events = match pooled.conn.run_jobs(jobs.clone()).await {
            Ok(events) => events,
            // Only a dual-mode STARTTLS fails so, and a pooled session is past it: no job ran.
            Err(e) => session_lost(&e, jobs.len()),
        };
        let again = unfinished(&events);
        if again.is_empty() {
            let contact = pooled.contact.clone();
            self.put_back(&key, pooled);
            return Ok((events, contact));
        }
        self.metrics.retries.inc();
        tracing::info!(%domain, addr = %pooled.contact.addr, jobs = again.len(), "pooled DMTP session was closed; sending again on a new one");
        let retry: Vec<Job> = again
            .iter()
            .filter_map(|&n| jobs.get(position(n)?).cloned())
            .collect();
        match self.run_new(domain, &key, record, verdict, retry).await {
            Ok((fresh, contact)) => {
                let mut merged: Vec<ClientEvent> = events
                    .into_iter()
                    .filter(|e| match e.job() {
                        Some(job) => !again.contains(&job),
                        None => false,
                    })
                    .collect();
                for mut e in fresh {
                    if let Some(slot) = job_slot(&mut e) {
                        // The new session numbered the retried jobs from 1, in order.
                        match position(*slot).and_then(|i| again.get(i)) {
                            Some(&original) => *slot = original,
                            None => continue,
                        }
                    }
                    merged.push(e);
                }
                Ok((merged, contact))
            }
            // The pooled session's failures stand: those jobs are for later.
            Err(_) => Ok((events, pooled.contact)),
        }
    }

    /// [`Discovery::run`] on a new session, trying each place in turn.
    async fn run_new(
        &self,
        domain: &str,
        key: &str,
        record: &DxRecord,
        verdict: Verdict,
        jobs: Vec<Job>,
    ) -> Result<(Vec<ClientEvent>, Contact), DiscoveryError> {
        let (places, configured_ip) = match self.static_dx(domain) {
            Some(s) => {
                let (target, ip) = s.place(domain);
                (vec![target], Some(ip))
            }
            None => (self.targets_of(domain, record).await?, None),
        };
        let mut attempts = Vec::new();
        for target in places {
            let resolved = match configured_ip {
                Some(ip) => Ok(vec![ip]),
                None => self.resolver.addresses(&target.host).await,
            };
            let addrs = match resolved {
                Ok(a) => a,
                Err(e) if e.is_bogus() => return Err(DiscoveryError::Dns(Arc::new(e))),
                Err(e) => {
                    attempts.push(format!("{}: {e}", target.host));
                    continue;
                }
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, target.port);
                match self
                    .attempt(domain, record, verdict, &target, addr, &jobs)
                    .await
                {
                    Ok((events, pooled)) => {
                        let contact = pooled.contact.clone();
                        self.put_back(key, pooled);
                        return Ok((events, contact));
                    }
                    Err(line) => attempts.push(line),
                }
            }
        }
        Err(DiscoveryError::Unreachable {
            domain: domain.to_owned(),
            attempts,
        })
    }

    /// Runs `jobs` at one given place (`dimegate dmtp --server`), with the certificate checked
    /// against `record` as [`Discovery::run`] would, on a session of its own.
    pub async fn run_at(
        &self,
        domain: &str,
        record: &DxRecord,
        verdict: Verdict,
        target: &Target,
        addr: SocketAddr,
        jobs: Vec<Job>,
    ) -> Result<(Vec<ClientEvent>, Contact), DiscoveryError> {
        match self
            .attempt(domain, record, verdict, target, addr, &jobs)
            .await
        {
            Ok((events, pooled)) => {
                if pooled.conn.is_reusable() {
                    pooled.conn.quit().await;
                }
                Ok((events, pooled.contact))
            }
            Err(line) => Err(DiscoveryError::Unreachable {
                domain: domain.to_owned(),
                attempts: vec![line],
            }),
        }
    }

    /// The session slots of destination `key`.
    fn slot(&self, key: &str) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > 4096 {
            // Forget destinations nobody is sending to, so the map does not grow with each.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let limit = self.settings.max_sessions_per_destination.max(1);
        Arc::clone(
            slots
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit))),
        )
    }

    /// An idle session to `key` trusted under `record` and `verdict` whose peer has not
    /// closed it; the others it meets are closed.
    fn take_pooled(&self, key: &str, record: &DxRecord, verdict: Verdict) -> Option<Pooled> {
        loop {
            let (found, close) = {
                let mut cell = lock(&self.pool);
                cell.pool.checkout(key, Instant::now(), |p| {
                    p.verdict == verdict && p.record == *record
                })
            };
            close_all(close);
            let (pooled, lifetime) = found?;
            if pooled.conn.peer_gone() {
                continue;
            }
            return Some(Pooled { lifetime, ..pooled });
        }
    }

    /// Keeps `pooled` for the next batch to `key` when it can take one; closes it otherwise.
    fn put_back(&self, key: &str, pooled: Pooled) {
        if !pooled.conn.is_reusable() {
            return; // closed, or in no state for more: dropping it closes the socket
        }
        let lifetime = pooled.lifetime;
        let (close, start_reaper) = {
            let mut cell = lock(&self.pool);
            let close = cell.pool.checkin(key, pooled, lifetime, Instant::now());
            let start = !cell.reaper && !cell.pool.is_empty();
            if start {
                cell.reaper = true;
            }
            (close, start)
        };
        close_all(close);
        if start_reaper {
            tokio::spawn(reap(Arc::clone(&self.pool)));
        }
    }

    /// One new session at `addr`; `Err` is the line for [`DiscoveryError::Unreachable`].
    async fn attempt(
        &self,
        domain: &str,
        record: &DxRecord,
        verdict: Verdict,
        target: &Target,
        addr: SocketAddr,
        jobs: &[Job],
    ) -> Result<(Vec<ClientEvent>, Pooled), String> {
        let Ok(name) = ServerName::try_from(target.host.clone()) else {
            return Err(format!("{}: not a TLS server name", target.host));
        };
        let verifier = DxCertVerifier::new(record.clone(), verdict, self.settings.roots.clone())
            .map(Arc::new)
            .map_err(|e| format!("{addr}: {e}"))?;
        let connector =
            connection::connector(verifier.clone()).map_err(|e| format!("{addr}: {e}"))?;
        let mut config = ClientConfig::new(self.ehlo.clone());
        config.reply_timeout = self.settings.reply_timeout;
        let now = Instant::now();
        let session = match target.transport {
            Transport::Tls => ClientSession::new(config, now),
            Transport::DualMode => match Domain::parse(&target.host) {
                Ok(host) => ClientSession::new_dual_mode(config, host, now),
                Err(_) => return Err(format!("{}: not a DX host name", target.host)),
            },
        };
        let timeout = self.settings.connect_timeout;
        let result = async {
            let mut conn =
                Connection::open(addr, target.transport, name, connector, session, timeout).await?;
            let events = conn.run_jobs(jobs.to_vec()).await?;
            Ok::<_, ConnectError>((conn, events))
        }
        .await;
        let refusal: Option<Refusal> = verifier.verdict().and_then(Result::err);
        match result {
            Ok((conn, events)) => {
                self.metrics
                    .sessions
                    .get_or_create(&SessionLabel { how: "new" })
                    .inc();
                // A session that failed before any job ran (banner, EHLO) is a place that did
                // not work: try the next.
                if let Some(ClientEvent::Failed { job: None, error }) = events
                    .iter()
                    .find(|e| matches!(e, ClientEvent::Failed { job: None, .. }))
                    && !events.iter().any(|e| {
                        matches!(
                            e,
                            ClientEvent::Signet { .. }
                                | ClientEvent::Verified { .. }
                                | ClientEvent::History { .. }
                                | ClientEvent::Delivered { .. }
                        )
                    })
                    && !error.is_permanent()
                {
                    return Err(format!("{addr} ({}): {error}", target.host));
                }
                let Some(Ok(trust)) = verifier.verdict() else {
                    return Err(format!("{addr}: no certificate verdict"));
                };
                let contact = Contact {
                    host: target.host.clone(),
                    addr,
                    transport: target.transport,
                    trust,
                    record_verdict: verdict,
                };
                Ok((
                    events,
                    Pooled {
                        conn,
                        record: record.clone(),
                        verdict,
                        contact,
                        lifetime: Lifetime::new(now),
                    },
                ))
            }
            Err(e) => {
                let why = match (&e, refusal) {
                    (ConnectError::Tls { .. }, Some(r)) => r.to_string(),
                    _ => e.to_string(),
                };
                tracing::info!(%domain, host = %target.host, %addr, reason = %why, "DX not usable");
                Err(format!("{addr} ({}): {why}", target.host))
            }
        }
    }

    /// The org signet of `domain`, valid to at least the full level under a POK of its record.
    pub async fn org_signet(&self, domain: &str) -> Result<Found, DiscoveryError> {
        self.cached_lookup(domain, SignetKind::Org, |record, signet| {
            let v = record
                .validate_org_signet(signet)
                .map_err(|e| e.to_string())?;
            if v.level < Level::Full {
                return Err(format!("validates only to the {} level", v.level));
            }
            if signet
                .identifier()
                .is_some_and(|id| !id.eq_ignore_ascii_case(domain))
            {
                return Err(format!("names {:?}", signet.identifier()));
            }
            Ok(())
        })
        .await
    }

    /// The user signet of `address`, valid to at least the full level under its org signet.
    pub async fn user_signet(&self, address: &str) -> Result<Found, DiscoveryError> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .ok_or_else(|| DiscoveryError::InvalidSignet {
                name: address.to_owned(),
                reason: "not an address".into(),
            })?;
        let org = self.org_signet(&domain).await?.signet;
        self.cached_lookup(address, SignetKind::User, |_, signet| {
            let v = signet.validate(Some(&org)).map_err(|e| e.to_string())?;
            if v.level < Level::Full {
                return Err(format!("validates only to the {} level", v.level));
            }
            if signet
                .identifier()
                .is_some_and(|id| !id.eq_ignore_ascii_case(address))
            {
                return Err(format!("names {:?}", signet.identifier()));
            }
            Ok(())
        })
        .await
    }

    async fn cached_lookup(
        &self,
        name: &str,
        kind: SignetKind,
        check: impl Fn(&DxRecord, &Signet) -> Result<(), String>,
    ) -> Result<Found, DiscoveryError> {
        let key = name.to_ascii_lowercase();
        let kind_label = if kind == SignetKind::Org {
            "org"
        } else {
            "user"
        };
        let now = Instant::now();
        let held = match self.cache().get(&key, now) {
            CacheAnswer::Hit(signet) => {
                self.metrics.cache_hits.inc();
                return Ok(Found {
                    signet,
                    contact: None,
                });
            }
            CacheAnswer::Backoff {
                retry_at,
                error,
                permanent,
            } => {
                self.metrics.cache_hits.inc();
                return Err(DiscoveryError::Backoff {
                    name: key,
                    error,
                    retry_in_secs: retry_at.saturating_duration_since(now).as_secs(),
                    permanent,
                });
            }
            CacheAnswer::Stale(signet) => Some(signet),
            CacheAnswer::Miss => None,
        };
        let started = Instant::now();
        let had_signet = held.is_some();
        let result = self.network_lookup(&key, held, &check).await;
        let label = ResultLabel {
            kind: kind_label,
            result: match &result {
                Ok(_) => "found",
                Err(e) => e.kind(),
            },
        };
        self.metrics.lookups.get_or_create(&label).inc();
        self.metrics
            .latency
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(found) => {
                self.cache()
                    .found(&key, found.signet.clone(), Instant::now());
                self.persist(&key, Some(&found.signet)).await;
            }
            Err(e) => {
                self.cache()
                    .failed(&key, e.to_string(), e.is_permanent(), Instant::now());
                // The memory no longer serves it (see SignetCache::failed); nor may a restart.
                if had_signet {
                    self.persist(&key, None).await;
                }
            }
        }
        result
    }

    async fn network_lookup(
        &self,
        name: &str,
        held: Option<Signet>,
        check: &impl Fn(&DxRecord, &Signet) -> Result<(), String>,
    ) -> Result<Found, DiscoveryError> {
        let signet_name = SignetName::parse(name).map_err(|e| DiscoveryError::InvalidSignet {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        let domain = signet_name.domain().as_str().to_owned();
        let (record, verdict) = self.record(&domain).await?;
        // A stale signet is re-checked with VRFY; the current one is fetched when it changed.
        let lookup = match &held {
            Some(s) => Lookup::Vrfy {
                name: signet_name.clone(),
                fingerprint: s.crypto_fingerprint(),
            },
            None => Lookup::Sgnt {
                name: signet_name.clone(),
                fingerprint: None,
            },
        };
        let (events, contact) = self
            .run(&domain, &record, verdict, vec![Job::Lookup(lookup)])
            .await?;
        let bytes = match first_result(events, &contact)? {
            LookupResult::Signet(b) => b,
            LookupResult::Current => {
                let signet = held.ok_or_else(|| DiscoveryError::InvalidSignet {
                    name: name.to_owned(),
                    reason: "VRFY without a signet".into(),
                })?;
                return Ok(Found {
                    signet,
                    contact: Some(contact),
                });
            }
            LookupResult::Update(fp) => {
                let (events, contact) = self
                    .run(
                        &domain,
                        &record,
                        verdict,
                        vec![Job::Lookup(Lookup::Sgnt {
                            name: signet_name,
                            fingerprint: Some(fp),
                        })],
                    )
                    .await?;
                match first_result(events, &contact)? {
                    LookupResult::Signet(b) => b,
                    _ => {
                        return Err(DiscoveryError::InvalidSignet {
                            name: name.to_owned(),
                            reason: "SGNT answered without a signet".into(),
                        });
                    }
                }
            }
        };
        let signet = Signet::parse(&bytes).map_err(|e| DiscoveryError::InvalidSignet {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        check(&record, &signet).map_err(|reason| DiscoveryError::InvalidSignet {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Found {
            signet,
            contact: Some(contact),
        })
    }
}

enum LookupResult {
    Signet(Vec<u8>),
    Current,
    Update(Fingerprint),
}

fn first_result(
    events: Vec<ClientEvent>,
    contact: &Contact,
) -> Result<LookupResult, DiscoveryError> {
    use crate::dmtp::client::VrfyStatus;
    for e in events {
        match e {
            ClientEvent::Signet { signet, .. } => return Ok(LookupResult::Signet(signet)),
            ClientEvent::Verified { status, .. } => {
                return Ok(match status {
                    VrfyStatus::Current => LookupResult::Current,
                    VrfyStatus::Update(fp) => LookupResult::Update(fp),
                });
            }
            ClientEvent::Failed { error, .. } => {
                return Err(DiscoveryError::Refused {
                    host: contact.host.clone(),
                    error,
                });
            }
            _ => {}
        }
    }
    Err(DiscoveryError::Refused {
        host: contact.host.clone(),
        error: ClientError::SessionEnded,
    })
}

/// The mailbox form the DMTP codec wants, for callers that hold a plain address.
pub fn signet_name(name: &str) -> Option<SignetName> {
    SignetName::parse(name).ok()
}

fn lock(pool: &Mutex<PoolCell>) -> std::sync::MutexGuard<'_, PoolCell> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends sessions the pool gave up, off the caller's path.
fn close_all(sessions: Vec<Pooled>) {
    for p in sessions {
        if p.conn.peer_gone() {
            continue; // dropping closes the socket; nobody listens for a QUIT
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.conn.quit()).await;
        });
    }
}

/// Closes idle sessions as they expire; ends when the pool is empty (the next put-back starts
/// another).
async fn reap(pool: Arc<Mutex<PoolCell>>) {
    loop {
        let next = {
            let mut cell = lock(&pool);
            match cell.pool.poll_timeout() {
                Some(t) => t,
                None => {
                    cell.reaper = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next.into()).await;
        let expired = lock(&pool).pool.expire(Instant::now());
        close_all(expired);
    }
}

fn job_slot(e: &mut ClientEvent) -> Option<&mut JobId> {
    match e {
        ClientEvent::Delivered { job, .. }
        | ClientEvent::Signet { job, .. }
        | ClientEvent::Verified { job, .. }
        | ClientEvent::History { job, .. }
        | ClientEvent::Failed { job: Some(job), .. } => Some(job),
        ClientEvent::Ready | ClientEvent::Failed { job: None, .. } => None,
    }
}

/// The index in a batch of the job numbered `n` (from 1).
fn position(n: JobId) -> Option<usize> {
    usize::try_from(n.0).ok()?.checked_sub(1)
}

/// The events of a session lost before any of its `n` jobs began.
fn session_lost(e: &ConnectError, n: usize) -> Vec<ClientEvent> {
    tracing::info!(error = %e, "pooled DMTP session lost");
    let error = ClientError::ConnectionClosed {
        step: crate::dmtp::client::Step::Idle,
    };
    let mut events = vec![ClientEvent::Failed {
        job: None,
        error: error.clone(),
    }];
    events.extend((1..=n as u64).map(|i| ClientEvent::Failed {
        job: Some(JobId(i)),
        error: error.clone(),
    }));
    events
}

/// The jobs of a batch that failed only because its session did, and that may go again: every
/// one but a transfer whose message was sent and not answered (the peer may have stored it).
/// The session's own failure comes first, then the job in flight, then those queued behind it
/// ([`ClientEvent::Failed`]).
fn unfinished(events: &[ClientEvent]) -> Vec<JobId> {
    use crate::dmtp::client::Step;
    let Some(at) = events
        .iter()
        .position(|e| matches!(e, ClientEvent::Failed { job: None, .. }))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in events[at + 1..].iter().enumerate() {
        if let ClientEvent::Failed {
            job: Some(job),
            error,
        } = e
        {
            if i == 0 && error.step() == Some(Step::Message) {
                continue;
            }
            out.push(*job);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_dx_then_mx_then_domain_order() {
        let settings = DiscoverySettings::new(Arc::new(RootCertStore::empty()));
        let record = DxRecord {
            dx: vec!["dx1.b.test".into(), "DX2.b.test".into()],
            ..Default::default()
        };
        let mx: Vec<String> = ["mx1.b.test", "mx2.b.test", "mx3.b.test", "mx4.b.test"]
            .into_iter()
            .map(String::from)
            .collect();
        let got: Vec<(String, u16, Transport)> = targets("b.test", &record, &mx, &settings)
            .into_iter()
            .map(|t| (t.host, t.port, t.transport))
            .collect();
        let want: Vec<(String, u16, Transport)> = vec![
            ("dx1.b.test".into(), 26, Transport::Tls),
            ("dx2.b.test".into(), 26, Transport::Tls),
            ("mx1.b.test".into(), 25, Transport::DualMode),
            ("mx2.b.test".into(), 25, Transport::DualMode),
            ("mx3.b.test".into(), 25, Transport::DualMode),
            ("b.test".into(), 26, Transport::Tls),
        ];
        assert_eq!(got, want);
        // No dx=, the domain is also its MX: each place once.
        let got = targets(
            "b.test",
            &DxRecord::default(),
            &["b.test".into()],
            &settings,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].transport, Transport::DualMode);
        assert_eq!(got[1].transport, Transport::Tls);
    }

    #[tokio::test]
    async fn a_static_domain_is_found_without_dns() {
        let mut settings = DiscoverySettings::new(Arc::new(RootCertStore::empty()));
        let record = DxRecord {
            dx: vec!["DX.South.test".into()],
            ..Default::default()
        };
        let address: SocketAddr = "127.0.0.1:2626".parse().unwrap();
        settings.statics.insert(
            "south.test".into(),
            StaticDx {
                record: record.clone(),
                address,
            },
        );
        // A DNS server nobody answers on: any question to it would fail, not hang.
        let resolver = Resolver::with_servers(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        let d = Discovery::new(
            resolver,
            settings,
            Domain::parse("north.test").unwrap(),
            DiscoveryMetrics::unregistered(),
        );
        let (got, verdict) = d.record("SOUTH.test.").await.unwrap();
        assert_eq!(got, record);
        assert_eq!(verdict, Verdict::Secure);
        let (target, ip) = d.static_dx("south.test").unwrap().place("south.test");
        assert_eq!(
            (target.host.as_str(), target.port, target.transport, ip),
            ("dx.south.test", 2626, Transport::Tls, address.ip())
        );
        // Without dx= the certificate name is the domain's.
        let bare = StaticDx {
            record: DxRecord::default(),
            address,
        };
        assert_eq!(bare.place("south.test").0.host, "south.test");
        assert!(d.static_dx("other.test").is_none());
    }

    #[test]
    fn a_dead_pooled_session_resends_all_but_an_unanswered_message() {
        use crate::dmtp::client::Step;
        let closed = |step| ClientError::ConnectionClosed { step };
        let failed = |job: Option<u64>, step| ClientEvent::Failed {
            job: job.map(JobId),
            error: closed(step),
        };
        // Dead before MAIL was answered: every job goes again.
        let events = vec![
            failed(None, Step::Mail),
            failed(Some(1), Step::Mail),
            failed(Some(2), Step::Mail),
        ];
        assert_eq!(unfinished(&events), vec![JobId(1), JobId(2)]);
        // The first was delivered; the second's message was sent and not answered: only the
        // third, which never began, goes again (the second is deferred: B may have stored it).
        let events = vec![
            ClientEvent::Delivered {
                job: JobId(1),
                txid: None,
                commit: "h".into(),
            },
            failed(None, Step::Message),
            failed(Some(2), Step::Message),
            failed(Some(3), Step::Message),
        ];
        assert_eq!(unfinished(&events), vec![JobId(3)]);
        // A job refused on its own merits stands; a healthy session resends nothing.
        let refused = ClientEvent::Failed {
            job: Some(JobId(1)),
            error: ClientError::SessionEnded,
        };
        assert!(unfinished(std::slice::from_ref(&refused)).is_empty());
        assert_eq!(
            unfinished(&[
                refused,
                failed(None, Step::Reset),
                failed(Some(2), Step::Reset)
            ]),
            vec![JobId(2)]
        );
        // A session lost before anything ran.
        let lost = session_lost(
            &ConnectError::Io {
                addr: "127.0.0.1:1".parse().unwrap(),
                source: std::io::ErrorKind::BrokenPipe.into(),
            },
            2,
        );
        assert_eq!(unfinished(&lost), vec![JobId(1), JobId(2)]);
    }

    #[test]
    fn permanence_and_labels() {
        let e = DiscoveryError::NoRecord {
            domain: "x.test".into(),
        };
        assert!(e.is_permanent());
        assert_eq!(e.kind(), "no_record");
        let e = DiscoveryError::Unreachable {
            domain: "x.test".into(),
            attempts: vec![],
        };
        assert!(!e.is_permanent());
        assert!(!e.is_bogus());
    }
}
