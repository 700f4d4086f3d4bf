//! Tokio glue for the DMTP listener (port 26, TLS from the first byte): it moves bytes between
//! a TLS stream and a [`ServerSession`] and performs what the session asks for, from the served
//! identities ([`crate::identity`]), the signet resolver ([`crate::discovery`]) and the queue
//! store. Every protocol decision is the session's.
//!
//! Before a transfer gets its `2xx OK [txid]`, [`verify_and_store`] checks, in this order: the
//! origin's org signet is found and validated through its `_dx` record and its fingerprint is
//! MAIL's (575, or 470/570 when it cannot be had); the message parses and our destination keyslot
//! opens with the destination org key (451 / 576); the destination chunk names MAIL's origin
//! and fingerprint and the origin's signatures verify (578); the recipient is hosted here (510);
//! then the message is appended to the queue with its fsync, within `[queue] max_messages`
//! (431 when the queue is full, 452 when the disk is, 451 on other failures). A refused or
//! interrupted transfer leaves nothing behind: the store is written only at the end, in one
//! commit.
//!
//! The append is [`Store::append_dmtp`](crate::store::Store::append_dmtp): a transfer whose
//! bytes (from the same origin) were stored before is the origin retrying one whose `2xx` it
//! never heard (the sender keeps each sealed copy until it settles, so retries are
//! byte-identical); it is answered `2xx OK [first txid]` and not queued again.
//!
//! A transfer whose origin is one of our own domains is a *submission* from one of our DIME
//! authors and takes the checks of [`submission`] instead.

mod submission;

use super::codec::{SignetName, TxId};
use super::server::{
    Limits, LookupFailure, Output, Policy, ServedDomain, ServerSession, SignetLookup, Transfer,
    TransferRefusal,
};
use crate::dime::Signet;
use crate::dime::message::{self, Actor, OpenError, Party};
use crate::discovery::Discovery;
use crate::envelope::{DimeArrival, Envelope, Recipient};
use crate::identity::{IdentityError, Keystore, OrgIdentity};
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

/// What DMTP sessions need.
pub struct DmtpContext {
    /// Our organizations.
    pub orgs: Vec<OrgIdentity>,
    /// Hosted users.
    pub keystore: Keystore,
    /// Finds origin org signets.
    pub discovery: Arc<Discovery>,
    /// The queue.
    pub store: Store,
    /// Banner and EHLO name.
    pub hostname: String,
    /// Session limits.
    pub limits: Limits,
    /// `[queue] max_messages` (enforced in the store's commit) and the queue gauge SMTP
    /// ingress shares, so both listeners count against one limit.
    pub pressure: Arc<crate::smtp::pressure::PressureGauge>,
    /// Wakes the queue runner when a transfer is stored, as SMTP ingress does: without it a
    /// DMTP arrival would wait for the runner's next poll.
    pub queued: Arc<tokio::sync::Notify>,
}

impl DmtpContext {
    fn policy(&self) -> Policy {
        Policy {
            hostname: self.hostname.clone(),
            served: self
                .orgs
                .iter()
                .filter_map(|o| {
                    Some(ServedDomain {
                        domain: super::codec::Domain::parse(&o.domain).ok()?,
                        org_fingerprints: vec![o.signet.crypto_fingerprint()],
                    })
                })
                .collect(),
        }
    }

    fn org(&self, domain: &str) -> Option<&OrgIdentity> {
        self.orgs.iter().find(|o| o.domain == domain)
    }

    /// Every signet of `name`, oldest first: an org's signet, or a hosted user's generations.
    fn signets(&self, lookup: &SignetLookup) -> Result<Vec<Signet>, LookupFailure> {
        match &lookup.name {
            SignetName::Org(d) => self
                .org(d.as_str())
                .map(|o| vec![o.signet.clone()])
                .ok_or(LookupFailure::UnknownName),
            SignetName::User(m) => match self.keystore.user(&m.to_string()) {
                Ok(u) => Ok(u.generations.into_iter().map(|g| g.signet).collect()),
                Err(IdentityError::UnknownUser(_) | IdentityError::NotServed(_)) => {
                    Err(LookupFailure::UnknownName)
                }
                Err(e) => {
                    warn!(error = %e, "DMTP signet look-up failed");
                    Err(LookupFailure::Unavailable)
                }
            },
        }
    }
}

/// Accepts DMTP connections until `shutdown`; each session runs on `tracker`.
pub async fn run_listener(
    listener: TcpListener,
    tls: TlsAcceptor,
    ctx: Arc<DmtpContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "DMTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, ctx, shutdown) = (tls.clone(), ctx.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                // One line per connection: who asked us, for the operator and for peers'
                // tests that prove a cache hit asked nobody.
                info!("DMTP connection accepted");
                if let Err(e) = serve_connection(tcp, tls, ctx, shutdown).await {
                    info!(error = %e, "DMTP session ended");
                }
            }
            .instrument(info_span!("dmtp", %peer)),
        );
    }
}

async fn serve_connection(
    tcp: TcpStream,
    tls: TlsAcceptor,
    ctx: Arc<DmtpContext>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let peer = tcp.peer_addr()?;
    let handshake = tokio::time::timeout(ctx.limits.command_timeout, tls.accept(tcp));
    let mut stream = match handshake.await {
        Ok(s) => s?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let mut session = ServerSession::new(ctx.policy(), ctx.limits.clone(), Instant::now());
    drive(&mut stream, &mut session, &ctx, peer, shutdown).await
}

/// Runs a DMTP session on an SMTP connection that asked for dual mode and has finished its TLS
/// handshake with the DMTP certificate (DIME.md §10.1): it opens with `250 OK DMTPv1`. Not
/// cancel-safe (see [`drive`]).
pub async fn serve_dual_mode<S>(
    stream: &mut S,
    ctx: &DmtpContext,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session =
        ServerSession::after_dual_mode_upgrade(ctx.policy(), ctx.limits.clone(), Instant::now());
    drive(stream, &mut session, ctx, peer, shutdown).await
}

/// Runs `session` on an established TLS stream (port 26, or an SMTP connection after the
/// dual-mode upgrade). Cancel-safe only at the granularity of the whole session.
pub async fn drive<S>(
    stream: &mut S,
    session: &mut ServerSession,
    ctx: &DmtpContext,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut shutting_down = false;
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Reply(bytes) => stream.write_all(&bytes).await?,
                Output::LookupSignet(lookup) => session.handle_signet_answer(ctx.signets(&lookup)),
                Output::VerifyAndStore(transfer) => {
                    stream.flush().await?;
                    // Not raced against shutdown: the store commit must finish or not start.
                    let result = verify_and_store(ctx, transfer, peer).await;
                    session.handle_stored(result);
                }
                Output::Close => {
                    stream.flush().await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
        }
        stream.flush().await?;
        if session.is_closed() {
            return Ok(());
        }
        let deadline = session.poll_timeout();
        let woke = tokio::select! {
            r = stream.read(&mut buf) => Wake::Read(r),
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => Wake::Timeout,
            () = shutdown.cancelled(), if !shutting_down => Wake::Shutdown,
        };
        match woke {
            Wake::Read(Ok(0)) => return Ok(()),
            Wake::Read(Ok(n)) => session.handle_input(Instant::now(), &buf[..n]),
            Wake::Read(Err(e)) => return Err(e),
            Wake::Timeout => session.handle_timeout(Instant::now()),
            Wake::Shutdown => {
                shutting_down = true;
                session.handle_shutdown();
            }
        }
    }
}

enum Wake {
    Read(std::io::Result<usize>),
    Timeout,
    Shutdown,
}

/// The largest transfer checked on the session's own task rather than on the blocking pool: its
/// checks take well under a millisecond.
const CHECK_IN_PLACE_MAX: usize = 64 * 1024;

/// The checks of the module documentation, then the durable append.
pub async fn verify_and_store(
    ctx: &DmtpContext,
    t: Transfer,
    peer: SocketAddr,
) -> Result<TxId, TransferRefusal> {
    let origin_name = t.origin.as_str().to_owned();
    // Our own domain as origin: one of our authors submitting (see `submission`).
    if let Some(org) = ctx.org(&origin_name) {
        return submission::accept(ctx, org, t, peer).await;
    }
    let org = ctx
        .org(t.destination.as_str())
        .ok_or(TransferRefusal::WrongDestinationSignet)?;
    let origin = match ctx.discovery.org_signet(&origin_name).await {
        Ok(found) => found.signet,
        Err(e) => {
            warn!(origin = %origin_name, error = %e, "origin org signet not available");
            return Err(match &e {
                crate::discovery::DiscoveryError::NoRecord { .. } => {
                    TransferRefusal::OriginSignetMissing
                }
                crate::discovery::DiscoveryError::InvalidSignet { .. } => {
                    TransferRefusal::InvalidOriginSignet
                }
                _ if e.is_permanent() && !e.is_bogus() => TransferRefusal::OriginSignetMissing,
                _ => TransferRefusal::OriginSignetUnavailable,
            });
        }
    };
    if origin.crypto_fingerprint() != t.origin_fingerprint {
        warn!(origin = %origin_name, "origin signet fingerprint differs from MAIL's");
        return Err(TransferRefusal::InvalidOriginSignet);
    }
    let mut origin_party = Party::from_signet(&origin);
    origin_party.name = origin_name.clone();
    // The keyslot's ECDH, the decryption and the signature checks over the whole message take
    // a core for a while: for a large message on the blocking pool, so that the runtime's
    // workers keep moving other sessions' bytes meanwhile. A small one (most mail) takes about
    // as long as the hop to another thread and back costs, so it is checked in place.
    let secret = org.key.encryption_secret().clone();
    let keystore = ctx.keystore.clone();
    let body_len = t.body.len();
    let body = t.body;
    let origin_for_key = origin_name.clone();
    let check = move || {
        // The de-duplication key hashes the whole message too: here, and only once it passed.
        let checked = check_transfer(&body, &secret, &origin_party, &keystore).map(|c| {
            let key = crate::store::DedupKey::for_transfer(&origin_for_key, &body);
            (c, key)
        });
        (checked, body)
    };
    let (checked, body) = if body_len <= CHECK_IN_PLACE_MAX {
        check()
    } else {
        tokio::task::spawn_blocking(check).await.map_err(|e| {
            warn!(error = %e, "DMTP verification task failed");
            TransferRefusal::StoreFailed
        })?
    };
    let (
        Checked {
            recipient,
            recipient_fingerprint,
            origin_fingerprint,
        },
        key,
    ) = checked?;
    let arrival_unix = crate::time::UnixTime::now().0;
    let env = Envelope {
        // DSNs for DIME arrivals go back sealed to the author (the bridge's work); the null
        // sender keeps the SMTP DSN path from mailing the origin domain in the clear.
        sender: String::new(),
        recipients: vec![Recipient {
            address: recipient.clone(),
            notify: None,
            orcpt: None,
        }],
        dsn_ret: None,
        dsn_envid: None,
        body_8bit: true,
        smtputf8: false,
        helo: origin_name.clone(),
        client: peer,
        tls: Some("DMTPv1".into()),
        auth_user: None,
        arrival_unix,
        require_tls: false,
        dime: Some(Box::new(DimeArrival {
            origin: origin_name.clone(),
            origin_fingerprint: origin_fingerprint.clone(),
            recipient_fingerprint,
        })),
    };
    // The destination's view of the transfer, for operators (and `dimegate demo`).
    let sealed_size = body.len();
    // fsync before 2xx: after this the origin may drop its copy.
    let size = sealed_size as u64;
    match ctx
        .store
        .append_dmtp(env, body, ctx.pressure.max_messages(), key)
        .await
    {
        Ok(crate::store::Appended::Seen(queue_id)) => {
            info!(%queue_id, origin = %origin_name, recipient = %recipient, sealed_size, "DMTP transfer already queued: a retry, answered with its first txid");
            TxId::parse(&queue_id.to_string()).map_err(|_| TransferRefusal::StoreFailed)
        }
        Ok(crate::store::Appended::Stored(queue_id)) => {
            ctx.pressure.note_stored(size);
            ctx.queued.notify_one();
            info!(%queue_id, origin = %origin_name, recipient = %recipient, %origin_fingerprint, sealed_size, "DMTP message stored");
            // The queue id is the transaction id the sender logs: one name on both sides.
            TxId::parse(&queue_id.to_string()).map_err(|_| TransferRefusal::StoreFailed)
        }
        Err(crate::store::AppendError::TooManyMessages { max }) => {
            warn!(
                max,
                "DMTP transfer refused: the queue holds [queue] max_messages"
            );
            Err(TransferRefusal::QueueFull)
        }
        Err(e) if e.is_full() => Err(TransferRefusal::StoreFull),
        Err(e) => {
            warn!(error = %e, "DMTP store failed");
            Err(TransferRefusal::StoreFailed)
        }
    }
}

/// What [`check_transfer`] learnt from a message that passed.
struct Checked {
    /// The hosted recipient named in the destination chunk, lower case.
    recipient: String,
    /// Its signet fingerprint, as the destination chunk gives it.
    recipient_fingerprint: String,
    /// The origin's crypto fingerprint (MAIL's, which the signatures verified against).
    origin_fingerprint: String,
}

/// The CPU-bound checks, in the module documentation's order: the message parses and our
/// destination keyslot opens with `secret` (576 / 451), the destination chunk names `origin`
/// and its fingerprint, the origin's signatures verify against its signet (578), and the
/// recipient is hosted here (510).
fn check_transfer(
    body: &[u8],
    secret: &k256::SecretKey,
    origin: &Party,
    keystore: &Keystore,
) -> Result<Checked, TransferRefusal> {
    let report = message::inspect(
        body,
        Actor::Destination,
        secret,
        std::slice::from_ref(origin),
    )
    .map_err(|e| match e {
        OpenError::KeyslotMismatch { .. } | OpenError::BadPadding { .. } => {
            TransferRefusal::WrongDestinationSignet
        }
        _ => TransferRefusal::Corrupted,
    })?;
    let envelope = report
        .destination_envelope
        .as_ref()
        .ok_or(TransferRefusal::WrongDestinationSignet)?;
    if !envelope.origin.eq_ignore_ascii_case(&origin.name)
        || envelope.origin_fingerprint != origin.fingerprint
    {
        return Err(TransferRefusal::InvalidOriginSignature);
    }
    if let Err(e) = report.check() {
        warn!(origin = %origin.name, error = %e, "origin signature refused");
        return Err(TransferRefusal::InvalidOriginSignature);
    }
    let recipient = envelope.recipient.to_ascii_lowercase();
    // Only whether the recipient is hosted: its metadata, not every signet generation.
    match keystore.user_mode(&recipient) {
        Ok(_) => {}
        Err(
            IdentityError::UnknownUser(_)
            | IdentityError::NotServed(_)
            | IdentityError::BadAddress(_),
        ) => {
            return Err(TransferRefusal::InvalidRecipient);
        }
        Err(e) => {
            warn!(error = %e, "hosted-user look-up failed");
            return Err(TransferRefusal::StoreFailed);
        }
    }
    Ok(Checked {
        recipient,
        recipient_fingerprint: envelope.recipient_fingerprint.clone(),
        origin_fingerprint: origin.fingerprint.clone(),
    })
}
