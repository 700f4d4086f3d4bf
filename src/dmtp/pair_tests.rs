//! Client and server sessions wired together in memory, as rustls' `do_handshake` moves bytes
//! between two sans-I/O peers: full transfers, look-ups and every failure code, in both command
//! syntaxes (a shim rewrites the client's lines into the draft syntax) and with the bytes moved
//! in pieces of 1, 2, 3, 7 and 64 bytes. The glue's answers (signet chains, store results) are
//! scripted here; that the real glue gives them is the integration tests' to show.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::client::{
    ClientConfig, ClientError, ClientEvent, ClientOutput, ClientSession, Delivery, Job, JobId,
    Lookup, Step, VrfyStatus,
};
use super::codec::{
    Command, Domain, HistRange, ReplyCode, SignetName, TxId, parse_dual_mode_starttls,
};
use super::server::{
    Limits, LookupFailure, Output, Policy, ServedDomain, ServerSession, Transfer, TransferRefusal,
};
use super::test_signets;
use crate::dime::{Fingerprint, Signet};

const SPLITS: &[usize] = &[usize::MAX, 1, 2, 3, 7, 64];
const MAX_SIZE: u64 = 4096;

fn domain(s: &str) -> Domain {
    Domain::parse(s).expect("test domain")
}

struct World {
    org_chain: Vec<Signet>,
    user_chain: Vec<Signet>,
}

impl World {
    fn new() -> World {
        World {
            org_chain: vec![
                test_signets::org("dest.example", 1),
                test_signets::org("dest.example", 2),
            ],
            user_chain: vec![
                test_signets::user("bob@dest.example", 11, 2),
                test_signets::user("bob@dest.example", 12, 2),
            ],
        }
    }

    fn org_fp(&self) -> Fingerprint {
        self.org_chain[1].crypto_fingerprint()
    }

    fn policy(&self) -> Policy {
        Policy {
            hostname: "dx.dest.example".to_owned(),
            served: vec![ServedDomain {
                domain: domain("dest.example"),
                org_fingerprints: vec![self.org_fp()],
            }],
        }
    }

    fn chains(&self) -> HashMap<String, Vec<Signet>> {
        HashMap::from([
            ("dest.example".to_owned(), self.org_chain.clone()),
            ("bob@dest.example".to_owned(), self.user_chain.clone()),
        ])
    }

    fn delivery(&self, message: Vec<u8>) -> Delivery {
        Delivery {
            origin: domain("origin.example"),
            origin_fingerprint: Fingerprint::of(b"origin org signet"),
            destination: domain("dest.example"),
            destination_fingerprint: Some(self.org_fp()),
            ret: None,
            data_type: None,
            message,
        }
    }
}

/// The draft parser's syntax (DIME.md §10.2, `commands.c`) for a command the client wrote.
fn draft_syntax(line: &[u8]) -> Vec<u8> {
    let Ok(command) = Command::parse(line) else {
        return line.to_vec();
    };
    let name_arg = |name: &SignetName| match name {
        SignetName::Org(d) => format!("DOMAIN=<{d}>"),
        SignetName::User(m) => format!("USER=<{m}>"),
    };
    let text = match &command {
        Command::Ehlo { domain } => format!("EHLO HOST=<{domain}>"),
        Command::Mail {
            origin,
            fingerprint: Some(fp),
            size: Some(size),
            ..
        } => format!("MAIL FROM=<{origin}> FINGERPRINT=[{fp}] SIZE={size}"),
        Command::Rcpt {
            destination,
            fingerprint: Some(fp),
        } => format!("RCPT TO=<{destination}> FINGERPRINT=[{fp}]"),
        Command::Sgnt {
            name,
            fingerprint: Some(fp),
        } => format!("SGNT {} FINGERPRINT=[{fp}]", name_arg(name)),
        Command::Sgnt { name, .. } => format!("SGNT {}", name_arg(name)),
        Command::Vrfy { name, fingerprint } => {
            format!("VRFY {} FINGERPRINT=[{fingerprint}]", name_arg(name))
        }
        Command::Hist { name, range } => match range {
            HistRange::All => format!("HIST {}", name_arg(name)),
            HistRange::From(a) => format!("HIST {} START=[{a}]", name_arg(name)),
            HistRange::Between(a, b) => format!("HIST {} START=[{a}] STOP=[{b}]", name_arg(name)),
        },
        // Verbs without arguments read the same in both syntaxes.
        other => return other.to_line(),
    };
    assert_ne!(
        text.as_bytes(),
        &line[..line.len() - 2],
        "draft differs from canonical"
    );
    let rewritten = format!("{text}\r\n").into_bytes();
    // Both syntaxes mean the same command.
    assert_eq!(Command::parse(&rewritten), Ok(command));
    rewritten
}

/// Two sessions and the scripted glue between them.
struct Pair {
    client: ClientSession,
    server: Option<ServerSession>,
    now: Instant,
    split: usize,
    draft: bool,
    chains: HashMap<String, Vec<Signet>>,
    lookup_failure: Option<LookupFailure>,
    store: Vec<Result<TxId, TransferRefusal>>,
    stored: Vec<Transfer>,
    events: Vec<ClientEvent>,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    client_closed: bool,
    server_closed: bool,
    store_pending: bool,
    /// Bytes the client wrote, for the draft rewriting (which works on whole lines).
    line: Vec<u8>,
    in_body: usize,
}

impl Pair {
    fn new(world: &World, split: usize, draft: bool) -> Pair {
        let now = Instant::now();
        let config = ClientConfig::new(domain("origin.example"));
        let limits = Limits {
            max_message_size: MAX_SIZE,
            ..Limits::default()
        };
        Pair {
            client: ClientSession::new(config, now),
            server: Some(ServerSession::new(world.policy(), limits, now)),
            now,
            split,
            draft,
            chains: world.chains(),
            lookup_failure: None,
            store: Vec::new(),
            stored: Vec::new(),
            events: Vec::new(),
            to_server: Vec::new(),
            to_client: Vec::new(),
            client_closed: false,
            server_closed: false,
            store_pending: false,
            line: Vec::new(),
            in_body: 0,
        }
    }

    fn submit(&mut self, job: Job) -> JobId {
        let id = self.client.submit(self.now, job).expect("session open");
        self.pump();
        id
    }

    /// Moves client bytes to the server, rewriting command lines when `draft` is set.
    fn client_wrote(&mut self, bytes: Vec<u8>) {
        if !self.draft || self.in_body > 0 {
            self.in_body = self.in_body.saturating_sub(bytes.len());
            self.to_server.extend_from_slice(&bytes);
            return;
        }
        self.line.extend_from_slice(&bytes);
        if self.line.ends_with(b"\r\n") {
            let line = std::mem::take(&mut self.line);
            self.to_server.extend_from_slice(&draft_syntax(&line));
        }
    }

    fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(output) = self.client.poll_output() {
                progress = true;
                match output {
                    ClientOutput::Send(bytes) => {
                        assert!(!self.client_closed, "client wrote after Close");
                        // The message is the only Send that is not one command line.
                        if !bytes.ends_with(b"\r\n")
                            || bytes.len() > 512
                            || self.client.step() == Step::Message
                        {
                            self.in_body = 0;
                            self.to_server.extend_from_slice(&bytes);
                        } else {
                            self.client_wrote(bytes);
                        }
                    }
                    ClientOutput::Event(event) => self.events.push(event),
                    ClientOutput::StartTls => panic!("StartTls on a port-26 session"),
                    ClientOutput::Close => self.client_closed = true,
                }
            }
            if let Some(server) = self.server.as_mut() {
                while let Some(output) = server.poll_output() {
                    progress = true;
                    match output {
                        Output::Reply(bytes) => {
                            // Never a reply (let alone a 2xx) while the message awaits the store.
                            assert!(!self.store_pending, "reply before the store answered");
                            assert!(!self.server_closed, "server wrote after Close");
                            self.to_client.extend_from_slice(&bytes);
                        }
                        Output::LookupSignet(lookup) => {
                            let answer = match self.lookup_failure {
                                Some(failure) => Err(failure),
                                None => Ok(self
                                    .chains
                                    .get(&lookup.name.to_string())
                                    .cloned()
                                    .unwrap_or_default()),
                            };
                            server.handle_signet_answer(answer);
                        }
                        Output::VerifyAndStore(transfer) => {
                            self.store_pending = true;
                            self.stored.push(transfer);
                        }
                        Output::Close => self.server_closed = true,
                    }
                }
                if self.store_pending && !self.store.is_empty() {
                    self.store_pending = false;
                    let result = self.store.remove(0);
                    server.handle_stored(result);
                    progress = true;
                }
                if !self.to_server.is_empty() && !self.server_closed {
                    let n = self.split.min(self.to_server.len());
                    let chunk: Vec<u8> = self.to_server.drain(..n).collect();
                    server.handle_input(self.now, &chunk);
                    progress = true;
                }
            }
            if !self.to_client.is_empty() && !self.client_closed {
                let n = self.split.min(self.to_client.len());
                let chunk: Vec<u8> = self.to_client.drain(..n).collect();
                self.client.handle_input(self.now, &chunk);
                progress = true;
            }
            if self.server_closed && self.to_client.is_empty() && !self.client_closed {
                self.client.handle_closed();
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }
}

fn for_every_split(mut test: impl FnMut(usize, bool)) {
    for draft in [false, true] {
        for &split in SPLITS {
            test(split, draft);
        }
    }
}

#[test]
fn full_transfer_then_quit() {
    let world = World::new();
    // Binary, with everything SMTP framing would choke on.
    let message: Vec<u8> = (0..=255u8).chain(*b"\r\n.\r\n\n.\nDATA\r\n").collect();
    for_every_split(|split, draft| {
        let mut pair = Pair::new(&world, split, draft);
        pair.pump();
        assert_eq!(pair.take_events(), [ClientEvent::Ready], "split {split}");
        pair.store
            .push(Ok(TxId::parse("00000000000000a1").expect("txid")));
        let job = pair.submit(Job::Deliver(world.delivery(message.clone())));
        let stored = pair.stored[0].clone();
        assert_eq!(stored.body, message);
        assert_eq!(stored.origin, domain("origin.example"));
        assert_eq!(stored.destination_fingerprint, Some(world.org_fp()));
        assert_eq!(
            pair.take_events(),
            [ClientEvent::Delivered {
                job,
                txid: Some(TxId::parse("00000000000000a1").expect("txid")),
                commit: stored.commit.clone(),
            }],
            "split {split} draft {draft}"
        );
        pair.client.quit(pair.now);
        pair.pump();
        assert!(pair.client_closed && pair.server_closed);
        assert!(pair.take_events().is_empty());
    });
}

#[test]
fn nothing_is_answered_before_the_store() {
    let world = World::new();
    let mut pair = Pair::new(&world, 7, false);
    pair.submit(Job::Deliver(world.delivery(b"sealed".to_vec())));
    // The server holds the message; the store has not answered: no event, the client waits.
    assert!(pair.store_pending);
    assert_eq!(pair.take_events(), [ClientEvent::Ready]);
    assert_eq!(pair.client.step(), Step::Message);
    assert!(pair.client.poll_timeout().is_some());
    pair.store.push(Ok(TxId::parse("x1").expect("txid")));
    pair.pump();
    assert!(matches!(
        pair.take_events().as_slice(),
        [ClientEvent::Delivered { .. }]
    ));
}

#[test]
fn signet_lookups() {
    let world = World::new();
    let (org, users) = (&world.org_chain, &world.user_chain);
    let bob = SignetName::User(super::codec::Mailbox::parse("bob@dest.example").expect("mailbox"));
    let dest = SignetName::Org(domain("dest.example"));
    for_every_split(|split, draft| {
        let mut pair = Pair::new(&world, split, draft);
        pair.pump();
        pair.take_events();
        let jobs = [
            pair.submit(Job::Lookup(Lookup::Sgnt {
                name: dest.clone(),
                fingerprint: None,
            })),
            pair.submit(Job::Lookup(Lookup::Sgnt {
                name: bob.clone(),
                fingerprint: Some(users[0].crypto_fingerprint()),
            })),
            pair.submit(Job::Lookup(Lookup::Vrfy {
                name: dest.clone(),
                fingerprint: org[1].crypto_fingerprint(),
            })),
            pair.submit(Job::Lookup(Lookup::Vrfy {
                name: bob.clone(),
                fingerprint: users[0].crypto_fingerprint(),
            })),
            pair.submit(Job::Lookup(Lookup::Hist {
                name: bob.clone(),
                range: HistRange::All,
            })),
        ];
        assert_eq!(
            pair.take_events(),
            [
                ClientEvent::Signet {
                    job: jobs[0],
                    signet: org[1].as_bytes().to_vec()
                },
                ClientEvent::Signet {
                    job: jobs[1],
                    signet: users[0].as_bytes().to_vec()
                },
                ClientEvent::Verified {
                    job: jobs[2],
                    status: VrfyStatus::Current
                },
                ClientEvent::Verified {
                    job: jobs[3],
                    status: VrfyStatus::Update(users[1].crypto_fingerprint()),
                },
                ClientEvent::History {
                    job: jobs[4],
                    signets: users.iter().map(|s| s.as_bytes().to_vec()).collect(),
                },
            ],
            "split {split} draft {draft}"
        );
    });
}

/// The failure a job ended with.
fn failure(events: &[ClientEvent], job: JobId) -> ClientError {
    events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Failed {
                job: Some(j),
                error,
            } if *j == job => Some(error.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("job {job:?} did not fail: {events:?}"))
}

#[test]
fn every_store_refusal_reaches_the_client_typed() {
    let world = World::new();
    let rows = [
        (
            TransferRefusal::InvalidOriginSignet,
            ReplyCode::InvalidOriginSignet,
            true,
        ),
        (
            TransferRefusal::InvalidOriginSignature,
            ReplyCode::InvalidOriginSignature,
            true,
        ),
        (
            TransferRefusal::OriginSignetUnavailable,
            ReplyCode::OriginSignetUnavailable,
            false,
        ),
        (
            TransferRefusal::OriginSignetMissing,
            ReplyCode::OriginSignetMissing,
            true,
        ),
        (
            TransferRefusal::WrongDestinationSignet,
            ReplyCode::InvalidDestinationSignet,
            true,
        ),
        (
            TransferRefusal::InvalidRecipient,
            ReplyCode::InvalidRecipient,
            true,
        ),
        (TransferRefusal::Corrupted, ReplyCode::DataCorrupted, false),
        (TransferRefusal::TooLarge, ReplyCode::TooLarge, true),
        (
            TransferRefusal::StoreFull,
            ReplyCode::InsufficientStorage,
            false,
        ),
        (
            TransferRefusal::StoreFailed,
            ReplyCode::DataCorrupted,
            false,
        ),
    ];
    for (refusal, code, permanent) in rows {
        for &split in &[usize::MAX, 3] {
            let mut pair = Pair::new(&world, split, false);
            pair.store.push(Err(refusal));
            pair.store.push(Ok(TxId::parse("2").expect("txid")));
            let first = pair.submit(Job::Deliver(world.delivery(b"one".to_vec())));
            let second = pair.submit(Job::Deliver(world.delivery(b"two".to_vec())));
            let events = pair.take_events();
            let error = failure(&events, first);
            assert_eq!(error.code(), Some(code), "{refusal:?}");
            assert!(matches!(
                error,
                ClientError::Refused {
                    step: Step::Message,
                    ..
                }
            ));
            assert_eq!(error.is_permanent(), permanent, "{refusal:?}");
            // The session goes on: the next message is delivered.
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, ClientEvent::Delivered { job, .. } if *job == second))
            );
        }
    }
}

#[test]
fn refusals_before_the_message() {
    let world = World::new();
    for_every_split(|split, draft| {
        let mut pair = Pair::new(&world, split, draft);
        pair.store.push(Ok(TxId::parse("3").expect("txid")));
        // 552 at MAIL: too large, refused before any octet is sent.
        let too_big = pair.submit(Job::Deliver(world.delivery(vec![0; MAX_SIZE as usize + 1])));
        // 576 at RCPT: sealed to a signet that is not ours.
        let mut stale = world.delivery(b"m".to_vec());
        stale.destination_fingerprint = Some(world.org_chain[0].crypto_fingerprint());
        let wrong_dest = pair.submit(Job::Deliver(stale));
        // 510 at RCPT: not a domain served here.
        let mut elsewhere = world.delivery(b"m".to_vec());
        elsewhere.destination = domain("other.example");
        let not_served = pair.submit(Job::Deliver(elsewhere));
        let ok = pair.submit(Job::Deliver(world.delivery(b"fine".to_vec())));
        let events = pair.take_events();
        let e = failure(&events, too_big);
        assert!(
            matches!(
                e,
                ClientError::Refused {
                    step: Step::Mail,
                    code: ReplyCode::TooLarge,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_permanent());
        let e = failure(&events, wrong_dest);
        assert!(
            matches!(
                e,
                ClientError::Refused {
                    step: Step::Rcpt,
                    code: ReplyCode::InvalidDestinationSignet,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = failure(&events, not_served);
        assert!(
            matches!(
                e,
                ClientError::Refused {
                    step: Step::Rcpt,
                    code: ReplyCode::InvalidRecipient,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::Delivered { job, .. } if *job == ok))
        );
        assert_eq!(
            pair.stored.len(),
            1,
            "only the good message reached the store"
        );
        assert_eq!(pair.stored[0].body, b"fine");
    });
}

#[test]
fn lookup_failures() {
    let world = World::new();
    let bob = SignetName::User(super::codec::Mailbox::parse("bob@dest.example").expect("mailbox"));
    let nobody =
        SignetName::User(super::codec::Mailbox::parse("nobody@dest.example").expect("mailbox"));
    let unknown = Fingerprint::of(b"unknown");
    for_every_split(|split, draft| {
        let mut pair = Pair::new(&world, split, draft);
        let rows = [
            (
                Lookup::Sgnt {
                    name: nobody.clone(),
                    fingerprint: None,
                },
                ReplyCode::InvalidRecipient,
            ),
            (
                Lookup::Sgnt {
                    name: bob.clone(),
                    fingerprint: Some(unknown),
                },
                ReplyCode::InvalidRecipientSignet,
            ),
            (
                Lookup::Vrfy {
                    name: SignetName::Org(domain("dest.example")),
                    fingerprint: unknown,
                },
                ReplyCode::InvalidDestinationSignet,
            ),
            (
                Lookup::Hist {
                    name: bob.clone(),
                    range: HistRange::From(unknown),
                },
                ReplyCode::InvalidRecipientSignet,
            ),
            (
                Lookup::Sgnt {
                    name: SignetName::Org(domain("other.example")),
                    fingerprint: None,
                },
                ReplyCode::InvalidRecipient,
            ),
        ];
        for (lookup, code) in rows {
            let job = pair.submit(Job::Lookup(lookup));
            let events = pair.take_events();
            assert_eq!(failure(&events, job).code(), Some(code), "split {split}");
        }
        pair.lookup_failure = Some(LookupFailure::Unavailable);
        let job = pair.submit(Job::Lookup(Lookup::Sgnt {
            name: bob.clone(),
            fingerprint: None,
        }));
        let error = failure(&pair.take_events(), job);
        assert_eq!(error.code(), Some(ReplyCode::SignetUnavailable));
        assert!(!error.is_permanent());
    });
}

#[test]
fn client_times_out_when_the_store_never_answers() {
    let world = World::new();
    let mut pair = Pair::new(&world, usize::MAX, false);
    let job = pair.submit(Job::Deliver(world.delivery(b"m".to_vec())));
    let deadline = pair
        .client
        .poll_timeout()
        .expect("waiting for the final reply");
    assert!(deadline >= pair.now + Duration::from_secs(600));
    pair.client
        .handle_timeout(deadline - Duration::from_secs(1));
    assert!(pair.client.poll_output().is_none());
    pair.client.handle_timeout(deadline);
    pair.pump();
    let error = failure(&pair.take_events(), job);
    assert_eq!(
        error,
        ClientError::Timeout {
            step: Step::Message
        }
    );
    assert!(!error.is_permanent());
    assert!(pair.client_closed);
}

#[test]
fn server_shutdown_fails_queued_jobs_as_temporary() {
    let world = World::new();
    let mut pair = Pair::new(&world, 2, false);
    pair.pump();
    pair.take_events();
    pair.server.as_mut().expect("server").handle_shutdown();
    let job = pair.submit(Job::Deliver(world.delivery(b"m".to_vec())));
    let events = pair.take_events();
    let error = failure(&events, job);
    assert_eq!(error.code(), Some(ReplyCode::Terminating));
    assert!(!error.is_permanent());
    assert!(pair.client_closed && pair.server_closed);
    assert!(pair.stored.is_empty());
}

#[test]
fn connection_lost_mid_message_is_temporary() {
    let world = World::new();
    let mut pair = Pair::new(&world, usize::MAX, false);
    let job = pair.submit(Job::Deliver(world.delivery(b"m".to_vec())));
    pair.client.handle_closed();
    pair.pump();
    let error = failure(&pair.take_events(), job);
    assert_eq!(
        error,
        ClientError::ConnectionClosed {
            step: Step::Message
        }
    );
    assert!(!error.is_permanent());
}

/// Dual mode: an SMTP listener (played here by the pure parsing function and two canned
/// replies) upgrades to a DMTP server session; the client runs the whole §10.1 sequence.
#[test]
fn dual_mode_from_smtp_to_dmtp() {
    let world = World::new();
    for &split in SPLITS {
        let now = Instant::now();
        let config = ClientConfig::new(domain("origin.example"));
        let mut client = ClientSession::new_dual_mode(config, domain("dx.dest.example"), now);
        let mut outputs = Vec::new();
        let feed = |client: &mut ClientSession, bytes: &[u8], outputs: &mut Vec<ClientOutput>| {
            for chunk in bytes.chunks(split.min(bytes.len()).max(1)) {
                client.handle_input(now, chunk);
                outputs.extend(std::iter::from_fn(|| client.poll_output()));
            }
        };
        feed(&mut client, b"220 mx.dest.example ESMTP\r\n", &mut outputs);
        let [ClientOutput::Send(line)] = outputs.as_slice() else {
            panic!("{outputs:?}");
        };
        assert_eq!(
            parse_dual_mode_starttls(line),
            Some(Ok(domain("dx.dest.example")))
        );
        outputs.clear();
        // Bytes before the handshake (an injection attempt) are not read.
        feed(
            &mut client,
            b"220 2.0.0 Ready\r\n250 OK DMTPv1\r\n",
            &mut outputs,
        );
        assert_eq!(outputs, [ClientOutput::StartTls]);
        client.handle_tls_established(now);
        let limits = Limits::default();
        let server = ServerSession::after_dual_mode_upgrade(world.policy(), limits, now);
        // From here the two sessions talk as on port 26.
        let mut pair = Pair::new(&world, split, false);
        pair.client = client;
        pair.server = Some(server);
        pair.store.push(Ok(TxId::parse("d1").expect("txid")));
        let job = pair.submit(Job::Deliver(world.delivery(b"over dual mode".to_vec())));
        let events = pair.take_events();
        assert_eq!(events[0], ClientEvent::Ready, "split {split}");
        assert!(matches!(&events[1], ClientEvent::Delivered { job: j, .. } if *j == job));
        assert_eq!(pair.stored[0].body, b"over dual mode");
    }
}
