//! The client side of one outbound SMTP/LMTP connection as a sans-I/O state machine: greeting,
//! EHLO/LHLO (HELO fallback), STARTTLS per [`TlsPolicy`], then mail transactions (RSET between
//! them) and QUIT.
//!
//! The glue (`session.rs`) writes what [`Output::Send`] holds, writes the dot-stuffed message on
//! [`Output::SendMessage`] (the session never holds it, and asks for it only after a `354`),
//! upgrades the socket on [`Output::StartTls`], feeds server bytes in any split to
//! [`ClientSession::handle_input`] and sleeps until [`ClientSession::poll_timeout`]. Every
//! decision is taken here from typed reply codes; reply text is only carried into outcomes for
//! the log and the DSN.
//!
//! Rules, each with a replay test below:
//!
//! - A non-2xx greeting, EHLO/LHLO or STARTTLS reply is a [`HopFailure`] that is never permanent
//!   (a 5xx there refuses the session, not this message, as Postfix's `smtp_skip_5xx_greeting`).
//!   An SMTP server that answers EHLO with a 5xx other than 554 gets HELO and no extension is
//!   assumed. LMTP has no HELO.
//! - `TlsPolicy::Required` with no STARTTLS offered is a typed failure (4.7.4) before any mail
//!   command. After `220` to STARTTLS, bytes already received are discarded (RFC 3207 §6) and
//!   EHLO is asked again (§4.2). A failed opportunistic STARTTLS says `retry_without_tls`.
//! - With PIPELINING (RFC 2920) MAIL FROM and every RCPT TO go in one write and the replies are
//!   matched in order; DATA follows once every RCPT has its reply, so DATA is never sent for a
//!   transaction without an accepted recipient. Without it, one command at a time.
//! - A refused MAIL FROM is a hop failure (the next MX is tried); refused recipients keep their
//!   own reply; a 421 or a lost connection before the message is a hop failure when nobody was
//!   refused yet, otherwise the refusals stand and the rest is deferred. After `354` a lost
//!   connection defers every recipient still unanswered: a duplicate is possible, a loss is not.
//! - LMTP: one end-of-data reply per accepted recipient, in RCPT order (RFC 2033 §4.2).
//! - The DSN parameters are sent only when the server offers DSN (see `wire.rs`), and the
//!   success [`Handoff`] follows from that.

use super::reply::{Reply, ReplyError, ReplyParser};
use super::wire::{self, Capabilities, Unsendable};
use super::{EnhancedStatus, Handoff, Outcome, Reason, RemoteReply, Stage, TlsPolicy};
use crate::envelope::{Envelope, Recipient};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long QUIT may wait for its reply: it is only a courtesy.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who the session talks to, as outcomes name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// For a DSN's `Remote-MTA: dns; <host>`: the MX or relay host name, or a backend's IP.
    pub host: String,
    /// Precisely, for the log: `host[ip]:port`.
    pub mta: String,
}

/// Reply timeouts (RFC 5321 §4.5.3.2 gives the usual minimums). Connecting is the glue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The greeting.
    pub greeting: Duration,
    /// Each command reply, and the TLS handshake.
    pub command: Duration,
    /// Sending the message and each end-of-data reply.
    pub data: Duration,
}

/// What one session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The next hop.
    pub peer: Peer,
    /// Our EHLO/LHLO argument.
    pub helo_name: String,
    /// LMTP (RFC 2033): LHLO and one reply per recipient after the data.
    pub lmtp: bool,
    /// The STARTTLS policy.
    pub tls: TlsPolicy,
    /// `false` on the plain-text retry after a failed opportunistic STARTTLS.
    pub try_tls: bool,
    /// A relay hop (MX or smarthost): messages with REQUIRETLS go only over TLS to a server
    /// offering REQUIRETLS (RFC 8689). `false` for the backend, the final delivery.
    pub relay: bool,
    /// Reply timeouts.
    pub timeouts: Timeouts,
}

/// Which wait a deadline ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The greeting.
    Greeting,
    /// A command reply or the TLS handshake.
    Command,
    /// The message and its end-of-data replies.
    Data,
    /// The reply to QUIT.
    Quit,
}

/// When [`ClientSession::handle_timeout`] is due, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// What is being waited for.
    pub kind: TimerKind,
    /// The instant it times out.
    pub at: Instant,
}

/// A failure of the next hop as a whole: nothing was decided for any recipient, so another
/// address or MX may be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopFailure {
    /// How far the session got; the furthest failure is the one reported.
    pub stage: Stage,
    /// The reply or our own finding.
    pub reason: Reason,
    /// The enhanced status for the DSN.
    pub status: EnhancedStatus,
    /// Only a refusal from MAIL FROM on (or a message no hop can take) is permanent.
    pub permanent: bool,
    /// STARTTLS failed under the opportunistic policy: a new connection without TLS may work.
    pub retry_without_tls: bool,
}

impl HopFailure {
    fn local(peer: &Peer, stage: Stage, status: EnhancedStatus, text: String) -> HopFailure {
        HopFailure {
            stage,
            permanent: status.class == 5,
            reason: Reason::Local {
                host: Some(peer.host.clone()),
                text,
            },
            status,
            retry_without_tls: false,
        }
    }

    fn reply(peer: &Peer, stage: Stage, reply: &Reply) -> HopFailure {
        let reply = RemoteReply::from_reply(peer, stage, reply);
        HopFailure {
            stage,
            // A 5xx before MAIL FROM refuses the session, not this message: skip the host and,
            // if no other takes the mail, defer rather than bounce on a server's bad day.
            permanent: reply.code >= 500 && stage >= Stage::MailFrom,
            status: reply.status_or_default(),
            reason: Reason::Reply(reply),
            retry_without_tls: false,
        }
    }

    /// The connection broke (closed, I/O error, timeout, garbage) while waiting at `stage`.
    fn lost(peer: &Peer, stage: Stage, detail: &str) -> HopFailure {
        let status = match stage {
            Stage::Connect => EnhancedStatus::new(4, 4, 1),
            Stage::StartTls => EnhancedStatus::new(4, 7, 5),
            _ => EnhancedStatus::new(4, 4, 2),
        };
        HopFailure::local(
            peer,
            stage,
            status,
            format!("{} {}: {detail}", stage.doing(), peer.mta),
        )
    }
}

/// How one transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionResult {
    /// Nothing was decided for any recipient: try the next address or MX.
    HopFailed {
        /// Why.
        failure: HopFailure,
        /// The connection may carry another transaction (after RSET).
        reusable: bool,
    },
    /// One outcome per recipient, in the order given.
    Done {
        /// The outcomes.
        outcomes: Vec<Outcome>,
        /// The connection may carry another transaction (after RSET).
        reusable: bool,
    },
}

/// What the glue must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes (one command, or a pipelined group).
    Send(Vec<u8>),
    /// `354` arrived: write the dot-stuffed message with its end-of-data line.
    SendMessage,
    /// `220` to STARTTLS arrived: run the TLS handshake, then call
    /// [`ClientSession::handle_tls_established`] or [`ClientSession::handle_tls_failed`].
    StartTls,
    /// Greeted (and encrypted if so decided), or RSET answered: a transaction may start.
    Ready,
    /// The session could not be opened; a `Close` follows (after QUIT when the peer is sane).
    Failed(HopFailure),
    /// A transaction ended.
    Finished(TransactionResult),
    /// Close the connection; nothing more will be output.
    Close,
}

/// [`ClientSession::start_transaction`] or [`ClientSession::reset`] outside [`Output::Ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SMTP client session is not ready for a new command")]
pub struct NotReady;

/// The reply the front of the pipeline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    EndOfData,
}

impl Expect {
    fn stage(self) -> Stage {
        match self {
            Expect::Mail => Stage::MailFrom,
            Expect::Rcpt(_) => Stage::RcptTo,
            Expect::Data => Stage::Data,
            Expect::EndOfData => Stage::EndOfData,
        }
    }
}

/// One mail transaction in flight.
#[derive(Debug)]
struct Transaction {
    outcomes: Vec<Option<Outcome>>,
    /// RCPT TO lines; `None` for a recipient refused before sending (its outcome is set).
    rcpt_commands: Vec<Option<String>>,
    /// Without pipelining: the next RCPT TO to send.
    next_rcpt: usize,
    /// Replies still owed, in order.
    pending: VecDeque<Expect>,
    accepted: Vec<usize>,
    any_refused: bool,
    /// Pipelined MAIL FROM was refused: the RCPT replies are read and ignored, then this fails.
    mail_refused: Option<HopFailure>,
    /// End-of-data replies read so far.
    end_replies: usize,
    /// A 421 among the end-of-data replies.
    closing: bool,
}

/// The phase of the session; each variant holds what that phase needs.
#[derive(Debug)]
enum State {
    Greeting,
    /// EHLO/LHLO (or, when `helo`, HELO) sent.
    Hello {
        helo: bool,
        after_tls: bool,
    },
    StartTls,
    /// Waiting for the glue's handshake; input is discarded.
    TlsHandshake,
    Ready,
    Resetting,
    Transaction(Box<Transaction>),
    Quitting,
    Closed,
}

/// One outbound SMTP/LMTP connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    state: State,
    parser: ReplyParser,
    caps: Capabilities,
    deadline: Option<Deadline>,
    output: VecDeque<Output>,
    /// `Output::Close` was emitted (the state may be a placeholder mid-transition).
    closed: bool,
    /// The TLS handshake succeeded on this connection.
    encrypted: bool,
}

impl ClientSession {
    /// A session on a freshly connected socket, waiting for the greeting.
    pub fn new(config: SessionConfig, now: Instant) -> ClientSession {
        let at = now + config.timeouts.greeting;
        ClientSession {
            config,
            state: State::Greeting,
            parser: ReplyParser::default(),
            caps: Capabilities::default(),
            deadline: Some(Deadline {
                kind: TimerKind::Greeting,
                at,
            }),
            output: VecDeque::new(),
            closed: false,
            encrypted: false,
        }
    }

    /// Server bytes, in any split. `now` starts the timer of whatever is sent in answer.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        let mut input = bytes;
        while !input.is_empty() {
            // RFC 3207 §6: nothing received before the handshake may count after it.
            if self.closed || matches!(self.state, State::TlsHandshake) {
                return;
            }
            match self.parser.feed(&mut input) {
                None => return,
                Some(Ok(reply)) => self.on_reply(reply, now),
                Some(Err(error)) => self.on_broken(&garbage(&error), false),
            }
        }
    }

    /// The TLS handshake the session asked for succeeded: EHLO again, forgetting what the
    /// server announced in plain text (RFC 3207 §4.2).
    pub fn handle_tls_established(&mut self, now: Instant) {
        if matches!(self.state, State::TlsHandshake) {
            self.parser.reset();
            self.caps = Capabilities::default();
            self.encrypted = true;
            self.send_hello(false, true, now);
        }
    }

    /// The TLS handshake failed (`error` says how, for the log and the DSN).
    pub fn handle_tls_failed(&mut self, error: &str) {
        if matches!(self.state, State::TlsHandshake) {
            let mut failure = HopFailure::local(
                &self.config.peer,
                Stage::StartTls,
                EnhancedStatus::new(4, 7, 5),
                format!("TLS handshake with {}: {error}", self.config.peer.mta),
            );
            failure.retry_without_tls = self.config.tls == TlsPolicy::Opportunistic;
            self.output.push_back(Output::Failed(failure));
            self.close();
        }
    }

    /// The peer closed the connection (`error` is `None`) or the socket failed.
    pub fn handle_closed(&mut self, error: Option<&str>) {
        self.on_broken(error.unwrap_or("connection closed by the peer"), false);
    }

    /// Time passed; acts only when the current deadline is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d.at) {
            self.on_broken("timed out", true);
        }
    }

    /// Starts a mail transaction for `recipients` (SMTP semantics of RFC 5321 §3.3), only after
    /// [`Output::Ready`]. The message is `message_len` bytes before dot-stuffing (for SIZE).
    pub fn start_transaction(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        message_len: usize,
        now: Instant,
    ) -> Result<(), NotReady> {
        if !matches!(self.state, State::Ready) {
            return Err(NotReady);
        }
        let unsendable = wire::check_capabilities(envelope, recipients, &self.caps, message_len)
            .and_then(|()| {
                if self.config.relay {
                    wire::check_requiretls(envelope, &self.caps, self.encrypted)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| wire::mail_from_command(envelope, recipients, &self.caps, message_len));
        let mail = match unsendable {
            Ok(mail) => mail,
            Err(unsendable) => {
                let result = self.unsendable_result(unsendable, recipients.len());
                self.output.push_back(Output::Finished(result));
                return Ok(());
            }
        };
        let mut outcomes = vec![None; recipients.len()];
        let mut any_refused = false;
        let rcpt_commands = recipients
            .iter()
            .enumerate()
            .map(
                |(index, recipient)| match wire::rcpt_to_command(recipient, &self.caps) {
                    Ok(command) => Some(command),
                    Err(unsendable) => {
                        outcomes[index] = Some(Outcome::Failed {
                            reason: Reason::Local {
                                host: Some(self.config.peer.host.clone()),
                                text: unsendable.text,
                            },
                            status: Some(unsendable.status),
                        });
                        any_refused = true;
                        None
                    }
                },
            )
            .collect();
        let mut transaction = Box::new(Transaction {
            outcomes,
            rcpt_commands,
            next_rcpt: 0,
            pending: VecDeque::from([Expect::Mail]),
            accepted: Vec::new(),
            any_refused,
            mail_refused: None,
            end_replies: 0,
            closing: false,
        });
        let mut bytes = mail.into_bytes();
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL and RCPT may be grouped; DATA only ends a group, and waiting
            // for the RCPT replies first means DATA is never sent without a recipient.
            for (index, command) in transaction.rcpt_commands.iter().enumerate() {
                if let Some(command) = command {
                    bytes.extend_from_slice(command.as_bytes());
                    transaction.pending.push_back(Expect::Rcpt(index));
                }
            }
            transaction.next_rcpt = transaction.rcpt_commands.len();
        }
        self.send(bytes, TimerKind::Command, now);
        self.state = State::Transaction(transaction);
        Ok(())
    }

    /// RSET before reusing an idle connection: [`Output::Ready`] when the peer answers 2xx,
    /// otherwise [`Output::Close`].
    pub fn reset(&mut self, now: Instant) -> Result<(), NotReady> {
        if !matches!(self.state, State::Ready) {
            return Err(NotReady);
        }
        self.send(b"RSET\r\n".to_vec(), TimerKind::Command, now);
        self.state = State::Resetting;
        Ok(())
    }

    /// QUIT, then [`Output::Close`] on its reply, on a lost connection or after
    /// [`QUIT_TIMEOUT`]. Closes at once when the session is mid-command.
    pub fn quit(&mut self, now: Instant) {
        match self.state {
            State::Ready => self.send_quit(now),
            State::Closed | State::Quitting => {}
            _ => self.close(),
        }
    }

    /// The next thing for the glue to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front()
    }

    /// The current deadline; `None` while idle (ready) or closed.
    pub fn poll_timeout(&self) -> Option<Deadline> {
        self.deadline
    }

    /// `Output::Close` has been emitted.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes of server input held (bounded by the reply parser's limits).
    pub fn buffered_len(&self) -> usize {
        self.parser.buffered_len()
    }

    /// What the server announced in its last EHLO/LHLO (nothing after HELO).
    pub(crate) fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn send(&mut self, bytes: Vec<u8>, kind: TimerKind, now: Instant) {
        let after = match kind {
            TimerKind::Greeting => self.config.timeouts.greeting,
            TimerKind::Command => self.config.timeouts.command,
            TimerKind::Data => self.config.timeouts.data,
            TimerKind::Quit => QUIT_TIMEOUT,
        };
        self.arm(kind, after, now);
        self.output.push_back(Output::Send(bytes));
    }

    fn arm(&mut self, kind: TimerKind, after: Duration, now: Instant) {
        self.deadline = Some(Deadline {
            kind,
            at: now + after,
        });
    }

    fn send_hello(&mut self, helo: bool, after_tls: bool, now: Instant) {
        let verb = match (helo, self.config.lmtp) {
            (true, _) => "HELO",
            (false, true) => "LHLO",
            (false, false) => "EHLO",
        };
        let command = format!("{verb} {}\r\n", self.config.helo_name);
        self.send(command.into_bytes(), TimerKind::Command, now);
        self.state = State::Hello { helo, after_tls };
    }

    fn send_quit(&mut self, now: Instant) {
        self.send(b"QUIT\r\n".to_vec(), TimerKind::Quit, now);
        self.state = State::Quitting;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        if !self.closed {
            self.closed = true;
            self.deadline = None;
            self.parser.reset();
            self.output.push_back(Output::Close);
        }
    }

    fn become_ready(&mut self) {
        self.state = State::Ready;
        self.deadline = None;
        self.output.push_back(Output::Ready);
    }

    /// Opening failed; QUIT (at `now`) unless the peer already said it is closing (421) or the
    /// connection is broken.
    fn fail_open(&mut self, failure: HopFailure, quit_at: Option<Instant>) {
        self.output.push_back(Output::Failed(failure));
        match quit_at {
            Some(now) => self.send_quit(now),
            None => self.close(),
        }
    }

    fn on_reply(&mut self, reply: Reply, now: Instant) {
        let peer = &self.config.peer;
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting => {
                if reply.class() == 2 {
                    self.send_hello(false, false, now);
                } else {
                    let failure = HopFailure::reply(peer, Stage::Greeting, &reply);
                    self.fail_open(failure, (reply.code != 421).then_some(now));
                }
            }
            State::Hello { helo, after_tls } => {
                if reply.class() == 2 {
                    self.caps = if helo {
                        Capabilities::default()
                    } else {
                        Capabilities::from_ehlo(&reply)
                    };
                    self.after_hello(after_tls, now);
                } else if !helo && !self.config.lmtp && reply.class() == 5 && reply.code != 554 {
                    // RFC 5321 §3.2: a server that does not know EHLO still knows HELO.
                    self.send_hello(true, after_tls, now);
                } else {
                    let failure = HopFailure::reply(peer, Stage::Hello, &reply);
                    self.fail_open(failure, (reply.code != 421).then_some(now));
                }
            }
            State::StartTls => {
                if reply.code == 220 {
                    self.state = State::TlsHandshake;
                    self.parser.reset();
                    self.arm(TimerKind::Command, self.config.timeouts.command, now);
                    self.output.push_back(Output::StartTls);
                } else {
                    let mut failure = HopFailure::reply(peer, Stage::StartTls, &reply);
                    failure.retry_without_tls = self.config.tls == TlsPolicy::Opportunistic;
                    self.fail_open(failure, (reply.code != 421).then_some(now));
                }
            }
            State::Resetting => {
                if reply.class() == 2 {
                    self.become_ready();
                } else {
                    self.close();
                }
            }
            State::Transaction(transaction) => self.on_transaction_reply(transaction, reply, now),
            // A reply nobody asked for: the replies can no longer be matched to commands.
            State::Ready | State::TlsHandshake => self.close(),
            State::Quitting | State::Closed => self.close(),
        }
    }

    fn after_hello(&mut self, after_tls: bool, now: Instant) {
        let starttls = !after_tls
            && match self.config.tls {
                TlsPolicy::Disabled => false,
                TlsPolicy::Opportunistic => self.config.try_tls && self.caps.starttls,
                TlsPolicy::Required => {
                    if !self.caps.starttls {
                        let failure = HopFailure::local(
                            &self.config.peer,
                            Stage::StartTls,
                            EnhancedStatus::new(4, 7, 4),
                            format!(
                                "TLS is required, but {} does not offer STARTTLS",
                                self.config.peer.mta
                            ),
                        );
                        self.fail_open(failure, Some(now));
                        return;
                    }
                    true
                }
            };
        if starttls {
            self.send(b"STARTTLS\r\n".to_vec(), TimerKind::Command, now);
            self.state = State::StartTls;
        } else {
            self.become_ready();
        }
    }

    fn on_transaction_reply(&mut self, mut t: Box<Transaction>, reply: Reply, now: Instant) {
        let Some(expect) = t.pending.pop_front() else {
            // Unreachable: a transaction with nothing pending has ended. Keep it total.
            self.lose(t, "a reply nobody asked for", false);
            return;
        };
        let kind = if expect == Expect::EndOfData {
            TimerKind::Data
        } else {
            TimerKind::Command
        };
        let after = if kind == TimerKind::Data {
            self.config.timeouts.data
        } else {
            self.config.timeouts.command
        };
        self.arm(kind, after, now);
        let peer = &self.config.peer;
        match expect {
            Expect::Mail => {
                if reply.class() != 2 {
                    let failure = HopFailure::reply(peer, Stage::MailFrom, &reply);
                    if reply.code == 421 || t.pending.is_empty() {
                        let reusable = reply.code != 421;
                        self.finish(TransactionResult::HopFailed { failure, reusable });
                        return;
                    }
                    t.mail_refused = Some(failure);
                }
            }
            Expect::Rcpt(index) => {
                if let Some(failure) = &t.mail_refused {
                    if reply.code == 421 || t.pending.is_empty() {
                        let failure = failure.clone();
                        let reusable = reply.code != 421;
                        self.finish(TransactionResult::HopFailed { failure, reusable });
                        return;
                    }
                } else if reply.code == 421 {
                    let failure = HopFailure::reply(peer, Stage::RcptTo, &reply);
                    self.session_lost(t, failure);
                    return;
                } else if reply.class() == 2 {
                    t.accepted.push(index);
                } else {
                    let outcome =
                        Outcome::from_reply(RemoteReply::from_reply(peer, Stage::RcptTo, &reply));
                    if let Some(slot) = t.outcomes.get_mut(index) {
                        *slot = Some(outcome);
                    }
                    t.any_refused = true;
                }
            }
            Expect::Data => {
                if reply.code == 354 {
                    let replies = if self.config.lmtp {
                        t.accepted.len()
                    } else {
                        1
                    };
                    t.pending
                        .extend(std::iter::repeat_n(Expect::EndOfData, replies));
                    self.arm(TimerKind::Data, self.config.timeouts.data, now);
                    self.output.push_back(Output::SendMessage);
                    self.state = State::Transaction(t);
                    return;
                }
                if reply.code == 421 {
                    let failure = HopFailure::reply(peer, Stage::Data, &reply);
                    self.session_lost(t, failure);
                    return;
                }
                let remote = RemoteReply::from_reply(peer, Stage::Data, &reply);
                // 4xx/5xx refuse the message; anything else where 354 belongs is a server
                // that lost track of the conversation: defer, and do not reuse it.
                let confused = !matches!(reply.class(), 4 | 5);
                let outcome = if confused {
                    Outcome::Deferred {
                        reason: Reason::Reply(remote),
                        status: Some(EnhancedStatus::new(4, 5, 0)),
                    }
                } else {
                    Outcome::from_reply(remote)
                };
                for &index in &t.accepted {
                    t.outcomes[index] = Some(outcome.clone());
                }
                let outcomes = filled(t.outcomes);
                self.finish(TransactionResult::Done {
                    outcomes,
                    reusable: !confused,
                });
                return;
            }
            Expect::EndOfData => {
                let position = t.end_replies;
                t.end_replies += 1;
                t.closing |= reply.code == 421;
                let mut outcome =
                    Outcome::from_reply(RemoteReply::from_reply(peer, Stage::EndOfData, &reply));
                if let Outcome::Delivered { handoff, .. } = &mut outcome {
                    *handoff = if self.caps.dsn {
                        Handoff::PassedOn
                    } else if self.config.lmtp {
                        Handoff::Delivered
                    } else {
                        Handoff::Relayed
                    };
                }
                // SMTP: one reply for all; LMTP: one per accepted recipient, in RCPT order.
                let targets: Vec<usize> = if self.config.lmtp {
                    t.accepted.get(position).copied().into_iter().collect()
                } else {
                    t.accepted.clone()
                };
                for index in targets {
                    t.outcomes[index] = Some(outcome.clone());
                }
                if t.pending.is_empty() {
                    let reusable = !t.closing;
                    let outcomes = filled(t.outcomes);
                    self.finish(TransactionResult::Done { outcomes, reusable });
                } else {
                    self.state = State::Transaction(t);
                }
                return;
            }
        }
        // MAIL or RCPT answered: more envelope replies to come, the next RCPT, or DATA.
        if !t.pending.is_empty() {
            self.state = State::Transaction(t);
            return;
        }
        if t.mail_refused.is_none() {
            while t.next_rcpt < t.rcpt_commands.len() {
                let index = t.next_rcpt;
                t.next_rcpt += 1;
                if let Some(command) = &t.rcpt_commands[index] {
                    let bytes = command.clone().into_bytes();
                    t.pending.push_back(Expect::Rcpt(index));
                    self.send(bytes, TimerKind::Command, now);
                    self.state = State::Transaction(t);
                    return;
                }
            }
        }
        if t.accepted.is_empty() {
            // Nothing to send; the connection stays usable (RSET at reuse clears the MAIL).
            let outcomes = filled(t.outcomes);
            self.finish(TransactionResult::Done {
                outcomes,
                reusable: true,
            });
            return;
        }
        t.pending.push_back(Expect::Data);
        self.send(b"DATA\r\n".to_vec(), TimerKind::Command, now);
        self.state = State::Transaction(t);
    }

    /// Emits a transaction's result; the session is ready again when reusable, closed otherwise.
    fn finish(&mut self, result: TransactionResult) {
        let reusable = match &result {
            TransactionResult::HopFailed { reusable, .. }
            | TransactionResult::Done { reusable, .. } => *reusable,
        };
        self.output.push_back(Output::Finished(result));
        if reusable {
            self.state = State::Ready;
            self.deadline = None;
        } else {
            self.close();
        }
    }

    /// The connection broke (closed, I/O error, timeout, unparseable reply) in whatever state.
    fn on_broken(&mut self, detail: &str, timed_out: bool) {
        let peer = &self.config.peer;
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting => {
                let failure = HopFailure::lost(peer, Stage::Greeting, detail);
                self.fail_open(failure, None);
            }
            State::Hello { .. } => {
                let failure = HopFailure::lost(peer, Stage::Hello, detail);
                self.fail_open(failure, None);
            }
            State::StartTls | State::TlsHandshake => {
                let mut failure = HopFailure::lost(peer, Stage::StartTls, detail);
                failure.retry_without_tls = self.config.tls == TlsPolicy::Opportunistic;
                self.fail_open(failure, None);
            }
            State::Transaction(transaction) => self.lose(transaction, detail, timed_out),
            State::Ready | State::Resetting | State::Quitting | State::Closed => self.close(),
        }
    }

    /// The connection broke during a transaction, `detail` says how. A closing server flushes
    /// the replies it owes first, so a lost connection names the first command left unanswered.
    /// A timeout names the last command sent: a pipelining server may hold all replies of a
    /// group until it has processed the group (RFC 2920 §3.2), so the slow one is not known,
    /// and this is what Postfix names too.
    fn lose(&mut self, t: Box<Transaction>, detail: &str, timed_out: bool) {
        let waited_for = if timed_out {
            t.pending.back()
        } else {
            t.pending.front()
        };
        let stage = waited_for.map_or(Stage::MailFrom, |e| e.stage());
        if stage == Stage::EndOfData {
            // From the first message byte on, "lost" means "status unknown": defer, and accept
            // the risk of a duplicate over the risk of a loss.
            let reason = Reason::Local {
                host: Some(self.config.peer.host.clone()),
                text: format!(
                    "lost the session with {} while sending the message or waiting for the \
                     end-of-data reply ({detail}); it may or may not have been delivered",
                    self.config.peer.mta
                ),
            };
            let mut outcomes = t.outcomes;
            for &index in &t.accepted {
                if outcomes[index].is_none() {
                    outcomes[index] = Some(Outcome::Deferred {
                        reason: reason.clone(),
                        status: Some(EnhancedStatus::new(4, 4, 2)),
                    });
                }
            }
            self.finish(TransactionResult::Done {
                outcomes: filled(outcomes),
                reusable: false,
            });
            return;
        }
        let failure = HopFailure::lost(&self.config.peer, stage, detail);
        self.session_lost(t, failure);
    }

    /// The session died (421, or broken) before the message was sent. If no recipient has been
    /// refused yet, nothing has been decided: the hop failed. Otherwise the refusals stand and
    /// everybody else is deferred with this reason.
    fn session_lost(&mut self, t: Box<Transaction>, failure: HopFailure) {
        if let Some(mail) = t.mail_refused {
            self.finish(TransactionResult::HopFailed {
                failure: mail,
                reusable: false,
            });
            return;
        }
        if !t.any_refused {
            self.finish(TransactionResult::HopFailed {
                failure,
                reusable: false,
            });
            return;
        }
        let outcomes = t
            .outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Deferred {
                    reason: failure.reason.clone(),
                    status: Some(EnhancedStatus {
                        class: 4,
                        ..failure.status
                    }),
                })
            })
            .collect();
        self.finish(TransactionResult::Done {
            outcomes,
            reusable: false,
        });
    }

    /// A check before MAIL FROM failed: hop-specific reasons let the next hop try; others fail
    /// every recipient now. The connection stays ready.
    fn unsendable_result(&self, unsendable: Unsendable, count: usize) -> TransactionResult {
        let reason = Reason::Local {
            host: Some(self.config.peer.host.clone()),
            text: unsendable.text,
        };
        if unsendable.hop_specific {
            TransactionResult::HopFailed {
                failure: HopFailure {
                    stage: Stage::MailFrom,
                    reason,
                    status: unsendable.status,
                    permanent: unsendable.status.class == 5,
                    retry_without_tls: false,
                },
                reusable: true,
            }
        } else {
            TransactionResult::Done {
                outcomes: (0..count)
                    .map(|_| Outcome::Failed {
                        reason: reason.clone(),
                        status: Some(unsendable.status),
                    })
                    .collect(),
                reusable: true,
            }
        }
    }
}

/// The words for a reply the parser refused.
fn garbage(error: &ReplyError) -> String {
    format!("unusable reply: {error}")
}

/// Every slot is filled by the time a transaction ends; this keeps it total without a panic.
fn filled(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::Deferred {
                reason: Reason::Local {
                    host: None,
                    text: "internal: no outcome recorded for this recipient".into(),
                },
                status: Some(EnhancedStatus::new(4, 3, 0)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
