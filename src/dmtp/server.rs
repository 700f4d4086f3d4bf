//! The DMTP server session (DIME.md §10): a sans-I/O state machine in the shape of
//! [`crate::smtp::Session`].
//!
//! The glue feeds socket bytes with [`ServerSession::handle_input`] in any split, drains
//! [`ServerSession::poll_output`] after every `handle_*` call, performs what an [`Output`] asks
//! (write a reply, look a signet up, verify and store a message, close) and reports the outcome
//! back; it sleeps until [`ServerSession::poll_timeout`] and then calls
//! [`ServerSession::handle_timeout`]. The session owns no socket, clock, file or RNG.
//!
//! Defined answers (each has a test in `server/tests.rs`):
//!
//! - Lines end in CRLF and hold at most 512 bytes; anything else gets `500` and is not executed.
//!   Unknown verbs get `500`, bad arguments `501`, commands out of order `503`, `STATS` `502`.
//! - `SGNT`/`VRFY`/`HIST` work in any state between commands, before `EHLO` too (libdime's
//!   resolver sends `SGNT` right after the banner). A name outside the served domains gets `510`
//!   without asking the glue. The glue answers with the name's whole chain of custody, oldest
//!   first; the session picks the answer: an unknown name `510`, a fingerprint not in the chain
//!   `586` (user) or `576` (org), a store failure `476`.
//! - `MAIL` needs `EHLO`/`HELO`, the origin's org-signet fingerprint and `SIZE`; a `SIZE` over
//!   [`Limits::max_message_size`] gets `552` before any byte of the message is read. One `RCPT`
//!   per transaction, for a served domain (`510` otherwise); its fingerprint, when given, must be
//!   one of that domain's org signets (`576`).
//! - `DATA` gets `354 CONTINUE [hash]` ([`crate::dmtp::codec::commit_hash`]); then exactly
//!   `SIZE` octets and CRLF are read as the message, binary, with no dot-stuffing. Octets not
//!   followed by CRLF get `451` (the framing is lost; the session goes on reading commands).
//! - The message gets no reply until [`ServerSession::handle_stored`]: `2xx OK [txid]` only after
//!   the glue verified it and made it durable. Input that arrives while the glue works is held
//!   (at most [`HELD_INPUT_MAX`] bytes); beyond that the answer is followed by `421` and close.
//! - Timeouts: [`Limits::command_timeout`] while waiting for a command, [`Limits::data_timeout`]
//!   between bytes of a message; on expiry `421` and close. No timer runs while the glue works;
//!   after its answer the timer restarts from the last `now` the session was given.
//! - After [`Limits::max_errors`] error replies: `421` and close.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::mem;
use std::time::{Duration, Instant};

use super::codec::{
    COMMAND_LINE_MAX, Command, CommandError, DataType, Domain, HistRange, Reply, ReplyCode,
    ReturnType, SignetName, TxId, commit_hash,
};
use crate::dime::{Fingerprint, Signet};

/// Most input held while the glue answers a look-up or a store request.
pub const HELD_INPUT_MAX: usize = 64 * 1024;

/// A domain this server is the DIME organisation for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDomain {
    /// The domain.
    pub domain: Domain,
    /// Crypto fingerprints of its org signets that senders may seal to (the current one first;
    /// older ones while they are still honoured after a rotation).
    pub org_fingerprints: Vec<Fingerprint>,
}

/// What this server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Our host name, in the banner and the EHLO reply.
    pub hostname: String,
    /// The organisations we serve.
    pub served: Vec<ServedDomain>,
}

/// Size, error and time limits of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `SIZE` accepted, in octets.
    pub max_message_size: u64,
    /// After this many error replies the session says `421` and closes.
    pub max_errors: usize,
    /// How long to wait for the next command (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
    pub command_timeout: Duration,
    /// How long to wait for the next bytes of a message (RFC 5321 §4.5.3.2.5: 3 minutes).
    pub data_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }
}

/// A signet look-up for `SGNT`, `VRFY` or `HIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignetLookup {
    /// Whose signets; its domain is one we serve.
    pub name: SignetName,
    /// The fingerprint the client named (for logs; the answer is the whole chain regardless).
    pub fingerprint: Option<Fingerprint>,
}

/// Why a look-up found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// No such user (or organisation) here: `510`.
    UnknownName,
    /// The store failed: `476`, try later.
    Unavailable,
}

/// A received message for the glue to verify and store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The origin organisation (`MAIL FROM`).
    pub origin: Domain,
    /// The origin's org-signet fingerprint from `MAIL`: the signet the glue resolves must have it.
    pub origin_fingerprint: Fingerprint,
    /// The destination organisation (`RCPT TO`), one we serve.
    pub destination: Domain,
    /// The destination org-signet fingerprint from `RCPT`, if given (already checked against
    /// [`ServedDomain::org_fingerprints`]).
    pub destination_fingerprint: Option<Fingerprint>,
    /// `RETURN=` from `MAIL`.
    pub ret: Option<ReturnType>,
    /// `DATA=` from `MAIL`.
    pub data_type: Option<DataType>,
    /// The hash sent in `354 CONTINUE [hash]`.
    pub commit: String,
    /// The message, exactly `SIZE` octets.
    pub body: Vec<u8>,
}

/// Why the glue did not store a message; each maps to one code of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefusal {
    /// The origin's org signet does not validate, or its fingerprint is not MAIL's: `575`.
    #[error("invalid origin signet")]
    InvalidOriginSignet,
    /// The origin's signatures on the message do not verify: `578`.
    #[error("invalid origin signature")]
    InvalidOriginSignature,
    /// The origin's org signet could not be fetched now (DNS or DMTP failure): `470`.
    #[error("origin signet temporarily unavailable")]
    OriginSignetUnavailable,
    /// The origin has no org signet (no `_dx` record, or its DX says it has none): `570`.
    #[error("origin signet unavailable")]
    OriginSignetMissing,
    /// Our destination keyslot does not open with our org key: `576`.
    #[error("wrong destination signet")]
    WrongDestinationSignet,
    /// The mailbox named in the destination chunk is not hosted here: `510`.
    #[error("invalid recipient")]
    InvalidRecipient,
    /// The message does not parse as D/MIME: `451` (the table's "data corrupted").
    #[error("message corrupted")]
    Corrupted,
    /// Over a size limit the glue enforces: `552`.
    #[error("message too large")]
    TooLarge,
    /// Disk full: `452`.
    #[error("insufficient storage")]
    StoreFull,
    /// The queue holds `[queue] max_messages`: `431`, the table's temporary "destination limits
    /// exceeded" (the sender keeps the message and retries).
    #[error("queue full")]
    QueueFull,
    /// Any other storage failure: `451`.
    #[error("store failed")]
    StoreFailed,
}

impl TransferRefusal {
    /// The reply code this refusal is answered with.
    pub fn reply_code(self) -> ReplyCode {
        match self {
            TransferRefusal::InvalidOriginSignet => ReplyCode::InvalidOriginSignet,
            TransferRefusal::InvalidOriginSignature => ReplyCode::InvalidOriginSignature,
            TransferRefusal::OriginSignetUnavailable => ReplyCode::OriginSignetUnavailable,
            TransferRefusal::OriginSignetMissing => ReplyCode::OriginSignetMissing,
            TransferRefusal::WrongDestinationSignet => ReplyCode::InvalidDestinationSignet,
            TransferRefusal::InvalidRecipient => ReplyCode::InvalidRecipient,
            TransferRefusal::Corrupted | TransferRefusal::StoreFailed => ReplyCode::DataCorrupted,
            TransferRefusal::TooLarge => ReplyCode::TooLarge,
            TransferRefusal::StoreFull => ReplyCode::InsufficientStorage,
            TransferRefusal::QueueFull => ReplyCode::DestinationLimits,
        }
    }

    fn reply_text(self) -> &'static str {
        match self {
            TransferRefusal::InvalidOriginSignet => "invalid origin signet",
            TransferRefusal::InvalidOriginSignature => "invalid origin signature",
            TransferRefusal::OriginSignetUnavailable => {
                "origin signet temporarily unavailable, try again later"
            }
            TransferRefusal::OriginSignetMissing => "origin signet unavailable",
            TransferRefusal::WrongDestinationSignet => {
                "message is not sealed to our destination signet"
            }
            TransferRefusal::InvalidRecipient => "invalid recipient",
            TransferRefusal::Corrupted => "data corrupted: not a D/MIME message",
            TransferRefusal::TooLarge => "message too large",
            TransferRefusal::StoreFull => "insufficient storage, try again later",
            TransferRefusal::QueueFull => {
                "destination limits exceeded: queue full, try again later"
            }
            TransferRefusal::StoreFailed => "local error in processing, try again later",
        }
    }
}

/// What the glue must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes (one or more replies).
    Reply(Vec<u8>),
    /// Fetch every signet of this name, oldest first, then call
    /// [`ServerSession::handle_signet_answer`].
    LookupSignet(SignetLookup),
    /// Verify the message (it parses, our destination keyslot opens, the origin's signatures
    /// verify under the origin org signet whose fingerprint is `origin_fingerprint`) and store it
    /// durably, then call [`ServerSession::handle_stored`]. No reply to it is sent before.
    VerifyAndStore(Transfer),
    /// Flush the replies already output and close the connection.
    Close,
}

/// `MAIL` and (once given) `RCPT` of the transaction in progress.
#[derive(Debug, Clone)]
struct Txn {
    mail: Command,
    origin: Domain,
    origin_fingerprint: Fingerprint,
    size: u64,
    ret: Option<ReturnType>,
    data_type: Option<DataType>,
}

#[derive(Debug, Clone)]
struct Rcpt {
    command: Command,
    destination: Domain,
    fingerprint: Option<Fingerprint>,
}

/// A look-up the session waits for.
#[derive(Debug, Clone)]
enum Query {
    Sgnt(Option<Fingerprint>),
    Vrfy(Fingerprint),
    Hist(HistRange),
}

/// The phase of the session; each variant holds what that phase needs.
#[derive(Debug)]
enum State {
    /// Banner sent, no EHLO/HELO yet.
    Connected,
    /// EHLO/HELO seen, no transaction.
    Ready,
    /// MAIL accepted.
    Mail(Txn),
    /// RCPT accepted.
    Rcpt(Txn, Rcpt),
    /// Reading the message: `need` octets in all (SIZE + CRLF).
    Body {
        txn: Txn,
        rcpt: Rcpt,
        commit: String,
        body: Vec<u8>,
        need: usize,
    },
    /// Waiting for [`ServerSession::handle_signet_answer`]; then back to `resume`.
    LookingUp {
        name: SignetName,
        query: Query,
        resume: Box<State>,
    },
    /// Waiting for [`ServerSession::handle_stored`].
    Storing,
    /// `Output::Close` was emitted.
    Closed,
}

impl State {
    fn reads_lines(&self) -> bool {
        matches!(
            self,
            State::Connected | State::Ready | State::Mail(_) | State::Rcpt(..)
        )
    }
}

/// One DMTP server session. See the module documentation for the defined answers.
pub struct ServerSession {
    policy: Policy,
    limits: Limits,
    state: State,
    now: Instant,
    deadline: Option<Instant>,
    errors: usize,
    shutdown: bool,
    /// The command line being assembled (at most [`COMMAND_LINE_MAX`] bytes).
    line: Vec<u8>,
    /// The current line went over the limit; discarding to its LF.
    line_overflow: bool,
    held: Vec<u8>,
    held_overflow: bool,
    replies: Vec<u8>,
    out: VecDeque<Output>,
}

impl ServerSession {
    /// A session on a DMTP connection (TLS from the first byte, port 26); the banner
    /// `220 <host> DMTPv1 …` is the first output.
    pub fn new(policy: Policy, limits: Limits, now: Instant) -> ServerSession {
        let banner = format!("{} DMTPv1 dimegate ready", policy.hostname);
        let mut session = ServerSession::idle(policy, limits, now);
        session.reply(Reply::new(ReplyCode::Ready, banner));
        session.finish_step();
        session
    }

    /// A session on an SMTP connection that asked `STARTTLS <host> MODE=DMTPv1` (see
    /// [`crate::dmtp::codec::parse_dual_mode_starttls`]) once its TLS handshake is done: the
    /// first output is `250 OK DMTPv1` (DIME.md §10.1), then DMTP as on port 26.
    pub fn after_dual_mode_upgrade(policy: Policy, limits: Limits, now: Instant) -> ServerSession {
        let mut session = ServerSession::idle(policy, limits, now);
        session.reply(Reply::new(ReplyCode::Ok, "OK DMTPv1"));
        session.finish_step();
        session
    }

    fn idle(policy: Policy, limits: Limits, now: Instant) -> ServerSession {
        ServerSession {
            policy,
            limits,
            state: State::Connected,
            now,
            deadline: None,
            errors: 0,
            shutdown: false,
            line: Vec::new(),
            line_overflow: false,
            held: Vec::new(),
            held_overflow: false,
            replies: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// Feeds bytes read from the socket at `now`, in any split.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.now = now;
        self.process(bytes);
        self.finish_step();
    }

    /// The next thing the glue must do, if any. Drain after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`ServerSession::handle_timeout`] is due, if a timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The clock reached `now`: if the timer expired, `421` and close.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.deadline.is_some_and(|d| now >= d) {
            let text = match self.state {
                State::Body { .. } => "timeout while reading the message, closing",
                _ => "timeout waiting for a command, closing",
            };
            self.reply(Reply::new(ReplyCode::Terminating, text));
            self.close();
            self.finish_step();
        }
        // A check before the deadline changes nothing: the timer runs from the last input.
    }

    /// The answer to [`Output::LookupSignet`]: every signet of the name, oldest first (the
    /// chain of custody), or why there is none. Ignored unless a look-up is pending.
    pub fn handle_signet_answer(&mut self, answer: Result<Vec<Signet>, LookupFailure>) {
        if !matches!(self.state, State::LookingUp { .. }) {
            return;
        }
        let State::LookingUp {
            name,
            query,
            resume,
        } = mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        self.state = *resume;
        let reply = match answer {
            Err(LookupFailure::Unavailable) => Reply::new(
                ReplyCode::SignetUnavailable,
                "signet temporarily unavailable, try again later",
            ),
            Err(LookupFailure::UnknownName) => unknown_name(&name),
            Ok(chain) if chain.is_empty() => unknown_name(&name),
            Ok(chain) => signet_reply(&name, &query, &chain),
        };
        self.answer(reply);
        self.resume();
    }

    /// The answer to [`Output::VerifyAndStore`]. Only now may the message get its `2xx`.
    /// Ignored unless a store request is pending.
    pub fn handle_stored(&mut self, result: Result<TxId, TransferRefusal>) {
        if !matches!(self.state, State::Storing) {
            return;
        }
        self.state = State::Ready;
        match result {
            // The glue stored it durably: from here the sender may drop its copy.
            Ok(txid) => self.reply(Reply::new(ReplyCode::Ok, format!("OK [{txid}]"))),
            Err(refusal) => self.reply(Reply::new(refusal.reply_code(), refusal.reply_text())),
        }
        self.resume();
    }

    /// The server is going down: `421` at once between commands, else at the next command
    /// boundary (after the glue's pending answer, after the message being read).
    pub fn handle_shutdown(&mut self) {
        self.shutdown = true;
        self.process(&[]);
        self.finish_step();
    }

    /// False while the glue's answer is pending: stop reading the socket until it comes.
    pub fn wants_input(&self) -> bool {
        !matches!(
            self.state,
            State::LookingUp { .. } | State::Storing | State::Closed
        )
    }

    /// True once [`Output::Close`] has been emitted.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Bytes buffered: line, held input and message. At most about
    /// `max_message_size + 2 + 512 + HELD_INPUT_MAX` plus unread output.
    pub fn buffered_len(&self) -> usize {
        let body = match &self.state {
            State::Body { body, .. } => body.len(),
            _ => 0,
        };
        self.line.len() + self.held.len() + body
    }

    // ---- input ----

    fn process(&mut self, mut input: &[u8]) {
        loop {
            if self.shutdown && self.state.reads_lines() {
                let text = format!("{} shutting down", self.policy.hostname);
                self.reply(Reply::new(ReplyCode::Terminating, text));
                self.close();
                return;
            }
            if input.is_empty() {
                return;
            }
            match self.state {
                State::Closed => return,
                State::LookingUp { .. } | State::Storing => {
                    self.hold(input);
                    return;
                }
                State::Body { .. } => self.ingest_body(&mut input),
                _ => {
                    if let Some(line) = self.frame_line(&mut input) {
                        self.handle_line(&line);
                        self.line = line;
                        self.line.clear();
                    }
                }
            }
        }
    }

    fn hold(&mut self, input: &[u8]) {
        if self.held.len() + input.len() > HELD_INPUT_MAX {
            self.held_overflow = true;
        } else {
            self.held.extend_from_slice(input);
        }
    }

    fn resume(&mut self) {
        if mem::take(&mut self.held_overflow) {
            self.held.clear();
            self.reply(Reply::new(
                ReplyCode::Terminating,
                "too much pipelined input",
            ));
            self.close();
        } else {
            let held = mem::take(&mut self.held);
            self.process(&held);
        }
        self.finish_step();
    }

    /// A complete line (LF included) taken from `self.line`, or `None` when more input is
    /// needed. An over-long line is skipped to its LF and answered here.
    fn frame_line(&mut self, input: &mut &[u8]) -> Option<Vec<u8>> {
        let Some(at) = input.iter().position(|&b| b == b'\n') else {
            if !self.line_overflow {
                if self.line.len() + input.len() > COMMAND_LINE_MAX {
                    self.line_overflow = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(input);
                }
            }
            *input = &[];
            return None;
        };
        let (chunk, rest) = input.split_at(at + 1);
        *input = rest;
        let too_long =
            mem::take(&mut self.line_overflow) || self.line.len() + chunk.len() > COMMAND_LINE_MAX;
        if too_long {
            self.line.clear();
            self.error(Reply::new(
                ReplyCode::CommandSyntax,
                format!("line too long (at most {COMMAND_LINE_MAX} bytes)"),
            ));
            return None;
        }
        self.line.extend_from_slice(chunk);
        Some(mem::take(&mut self.line))
    }

    fn handle_line(&mut self, line: &[u8]) {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(err) => return self.command_error(&err),
        };
        match command {
            Command::Ehlo { .. } => self.handle_helo(true),
            Command::Helo { .. } => self.handle_helo(false),
            Command::Mode => self.reply(Reply::new(ReplyCode::Ok, "OK DMTPv1")),
            Command::Noop => self.reply(Reply::new(ReplyCode::Ok, "OK")),
            Command::Rset => {
                if !matches!(self.state, State::Connected) {
                    self.state = State::Ready;
                }
                self.reply(Reply::new(ReplyCode::Ok, "OK"));
            }
            Command::Help => self.reply(Reply::multi(
                ReplyCode::Help,
                vec![
                    "Commands: EHLO HELO MODE MAIL RCPT DATA SGNT VRFY HIST NOOP RSET HELP QUIT"
                        .to_owned(),
                    "OK".to_owned(),
                ],
            )),
            Command::Quit => {
                self.reply(Reply::new(ReplyCode::Closing, "BYE"));
                self.close();
            }
            Command::Stats => {
                self.error(Reply::new(ReplyCode::CommandDisabled, "STATS is disabled"))
            }
            ref mail @ Command::Mail { .. } => self.handle_mail(mail.clone()),
            ref rcpt @ Command::Rcpt { .. } => self.handle_rcpt(rcpt.clone()),
            Command::Data => self.handle_data(),
            Command::Sgnt { name, fingerprint } => {
                self.start_lookup(name, fingerprint, Query::Sgnt(fingerprint))
            }
            Command::Vrfy { name, fingerprint } => {
                self.start_lookup(name, Some(fingerprint), Query::Vrfy(fingerprint))
            }
            Command::Hist { name, range } => {
                let fingerprint = match &range {
                    HistRange::All => None,
                    HistRange::From(start) | HistRange::Between(start, _) => Some(*start),
                };
                self.start_lookup(name, fingerprint, Query::Hist(range))
            }
        }
    }

    fn command_error(&mut self, err: &CommandError) {
        self.error(Reply::new(err.reply_code(), err.to_string()));
    }

    fn handle_helo(&mut self, extended: bool) {
        self.state = State::Ready;
        let host = self.policy.hostname.clone();
        if extended {
            let size = format!("SIZE {}", self.limits.max_message_size);
            self.reply(Reply::multi(
                ReplyCode::Ok,
                vec![format!("{host} DMTPv1"), size, "OK".to_owned()],
            ));
        } else {
            self.reply(Reply::new(ReplyCode::Ok, host));
        }
    }

    fn handle_mail(&mut self, mail: Command) {
        match self.state {
            State::Connected => {
                return self.sequence_error("send EHLO or HELO first");
            }
            State::Ready => {}
            _ => return self.sequence_error("a transaction is already in progress"),
        }
        let Command::Mail {
            origin,
            fingerprint,
            size,
            ret,
            data,
        } = mail.clone()
        else {
            return;
        };
        let Some(origin_fingerprint) = fingerprint else {
            return self.error(Reply::new(
                ReplyCode::ArgumentSyntax,
                "MAIL needs the origin signet fingerprint: MAIL FROM: <domain> [fp] SIZE=n",
            ));
        };
        let Some(size) = size else {
            return self.error(Reply::new(
                ReplyCode::ArgumentSyntax,
                "MAIL needs SIZE=n: the message is length-delimited",
            ));
        };
        if size == 0 {
            return self.error(Reply::new(
                ReplyCode::ArgumentSyntax,
                "SIZE must be at least 1",
            ));
        }
        if size > self.limits.max_message_size {
            let text = format!(
                "message size exceeds the limit of {} octets",
                self.limits.max_message_size
            );
            return self.error(Reply::new(ReplyCode::TooLarge, text));
        }
        self.state = State::Mail(Txn {
            mail,
            origin,
            origin_fingerprint,
            size,
            ret,
            data_type: data,
        });
        self.reply(Reply::new(ReplyCode::Ok, "OK"));
    }

    fn handle_rcpt(&mut self, rcpt: Command) {
        match self.state {
            State::Connected => return self.sequence_error("send EHLO or HELO first"),
            State::Ready => return self.sequence_error("need MAIL before RCPT"),
            State::Rcpt(..) => {
                return self
                    .sequence_error("one RCPT per transaction: one destination per message");
            }
            _ => {}
        }
        let Command::Rcpt {
            destination,
            fingerprint,
        } = rcpt.clone()
        else {
            return;
        };
        let Some(served) = self.served(&destination) else {
            return self.error(Reply::new(
                ReplyCode::InvalidRecipient,
                format!("{destination} is not a domain served here"),
            ));
        };
        if let Some(fp) = fingerprint
            && !served.org_fingerprints.contains(&fp)
        {
            return self.error(Reply::new(
                ReplyCode::InvalidDestinationSignet,
                format!("[{fp}] is not a current org signet of {destination}"),
            ));
        }
        if let State::Mail(txn) = mem::replace(&mut self.state, State::Closed) {
            self.state = State::Rcpt(
                txn,
                Rcpt {
                    command: rcpt,
                    destination,
                    fingerprint,
                },
            );
        }
        self.reply(Reply::new(ReplyCode::Ok, "OK"));
    }

    fn handle_data(&mut self) {
        match mem::replace(&mut self.state, State::Closed) {
            State::Rcpt(txn, rcpt) => {
                let commit = commit_hash(&txn.mail, &rcpt.command);
                // SIZE <= max_message_size, checked at MAIL; the allocation grows with the
                // octets actually received.
                let need = usize::try_from(txn.size)
                    .unwrap_or(usize::MAX)
                    .saturating_add(2);
                self.reply(Reply::new(
                    ReplyCode::StartMessage,
                    format!("CONTINUE [{commit}]"),
                ));
                self.state = State::Body {
                    txn,
                    rcpt,
                    commit,
                    body: Vec::new(),
                    need,
                };
            }
            other => {
                let text = match other {
                    State::Connected => "send EHLO or HELO first",
                    State::Mail(_) => "need RCPT before DATA",
                    _ => "need MAIL before DATA",
                };
                self.state = other;
                self.sequence_error(text);
            }
        }
    }

    fn start_lookup(&mut self, name: SignetName, fingerprint: Option<Fingerprint>, query: Query) {
        if self.served(name.domain()).is_none() {
            return self.error(Reply::new(
                ReplyCode::InvalidRecipient,
                format!("{} is not a domain served here", name.domain()),
            ));
        }
        let resume = Box::new(mem::replace(&mut self.state, State::Closed));
        self.state = State::LookingUp {
            name: name.clone(),
            query,
            resume,
        };
        self.emit(Output::LookupSignet(SignetLookup { name, fingerprint }));
    }

    fn served(&self, domain: &Domain) -> Option<&ServedDomain> {
        self.policy.served.iter().find(|s| &s.domain == domain)
    }

    fn ingest_body(&mut self, input: &mut &[u8]) {
        let State::Body {
            txn,
            rcpt,
            commit,
            mut body,
            need,
        } = mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let take = (need - body.len()).min(input.len());
        body.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if body.len() < need {
            self.state = State::Body {
                txn,
                rcpt,
                commit,
                body,
                need,
            };
            return;
        }
        if !body.ends_with(b"\r\n") {
            self.state = State::Ready;
            return self.error(Reply::new(
                ReplyCode::DataCorrupted,
                "data corrupted: the message must be followed by CRLF",
            ));
        }
        body.truncate(need - 2);
        // No reply now: the 2xx waits for handle_stored, after the glue's verification and fsync.
        self.state = State::Storing;
        self.emit(Output::VerifyAndStore(Transfer {
            origin: txn.origin,
            origin_fingerprint: txn.origin_fingerprint,
            destination: rcpt.destination,
            destination_fingerprint: rcpt.fingerprint,
            ret: txn.ret,
            data_type: txn.data_type,
            commit,
            body,
        }));
    }

    // ---- output ----

    fn reply(&mut self, reply: Reply) {
        self.replies.extend_from_slice(&reply.to_bytes());
    }

    /// A reply to a look-up: errors count like any other.
    fn answer(&mut self, reply: Reply) {
        if reply.code().class() == super::codec::ReplyClass::Permanent {
            self.error(reply);
        } else {
            self.reply(reply);
        }
    }

    fn sequence_error(&mut self, text: &str) {
        self.error(Reply::new(ReplyCode::BadSequence, text));
    }

    /// An error reply; the `max_errors`-th one also ends the session.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.limits.max_errors && !matches!(self.state, State::Closed) {
            self.reply(Reply::new(
                ReplyCode::Terminating,
                "too many errors, closing",
            ));
            self.close();
        }
    }

    fn close(&mut self) {
        self.held.clear();
        self.state = State::Closed;
        self.emit(Output::Close);
    }

    fn emit(&mut self, output: Output) {
        self.flush_replies();
        self.out.push_back(output);
    }

    fn flush_replies(&mut self) {
        if !self.replies.is_empty() {
            self.out
                .push_back(Output::Reply(mem::take(&mut self.replies)));
        }
    }

    /// End of a `handle_*` call: hand out replies and re-arm the timer for the new state.
    fn finish_step(&mut self) {
        self.flush_replies();
        self.deadline = match self.state {
            State::Body { .. } => Some(self.now + self.limits.data_timeout),
            State::LookingUp { .. } | State::Storing | State::Closed => None,
            _ => Some(self.now + self.limits.command_timeout),
        };
    }
}

fn unknown_name(name: &SignetName) -> Reply {
    Reply::new(ReplyCode::InvalidRecipient, format!("no signet for {name}"))
}

/// The reply to SGNT/VRFY/HIST from the name's chain (oldest first, not empty).
fn signet_reply(name: &SignetName, query: &Query, chain: &[Signet]) -> Reply {
    let (transfer, current, bad_fp) = if name.is_user() {
        (
            ReplyCode::UserSignet,
            ReplyCode::UserSignetCurrent,
            ReplyCode::InvalidRecipientSignet,
        )
    } else {
        (
            ReplyCode::OrgSignet,
            ReplyCode::OrgSignetCurrent,
            ReplyCode::InvalidDestinationSignet,
        )
    };
    let position = |fp: &Fingerprint| chain.iter().position(|s| s.crypto_fingerprint() == *fp);
    let not_found = |fp: &Fingerprint| Reply::new(bad_fp, format!("{name} has no signet [{fp}]"));
    let last = chain.len() - 1;
    let too_large = || {
        Reply::new(
            ReplyCode::DataCorrupted,
            "signet too large for one reply line",
        )
    };
    match query {
        Query::Sgnt(fingerprint) => {
            let index = match fingerprint {
                None => last,
                Some(fp) => match position(fp) {
                    Some(index) => index,
                    None => return not_found(fp),
                },
            };
            let line = format!("OK [{}]", chain[index].to_base64_line());
            Reply::exact(transfer, vec![line]).unwrap_or_else(|_| too_large())
        }
        Query::Vrfy(fp) => match position(fp) {
            Some(index) if index == last => Reply::new(current, "CURRENT"),
            Some(_) => Reply::new(
                transfer,
                format!("UPDATE {}", chain[last].crypto_fingerprint()),
            ),
            None => not_found(fp),
        },
        Query::Hist(range) => {
            let (start, end) = match range {
                HistRange::All => (0, last),
                HistRange::From(start) => match position(start) {
                    Some(index) => (index, last),
                    None => return not_found(start),
                },
                HistRange::Between(start, end) => match (position(start), position(end)) {
                    (None, _) => return not_found(start),
                    (_, None) => return not_found(end),
                    (Some(s), Some(e)) if e < s => {
                        return Reply::new(
                            ReplyCode::ArgumentSyntax,
                            "the end of the range is older than its start",
                        );
                    }
                    (Some(s), Some(e)) => (s, e),
                },
            };
            let mut lines: Vec<String> = chain[start..=end]
                .iter()
                .map(|s| format!("[{}]", s.to_base64_line()))
                .collect();
            lines.push("OK".to_owned());
            Reply::exact(ReplyCode::History, lines).unwrap_or_else(|_| too_large())
        }
    }
}
