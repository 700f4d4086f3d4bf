//! The SMTP server session: a sans-I/O state machine over smtp-proto's parser and receivers.
//!
//! The glue (`smtp/server.rs`) feeds socket bytes with [`Session::handle_input`] in any split, drains
//! [`Session::poll_output`] after every `handle_*` call, performs what an [`Output`] asks for
//! (write, TLS upgrade, credential check, durable enqueue, close) and reports the outcome back. The
//! session owns no socket, clock, file or RNG, so every rule below is a table test.
//!
//! Defined answers for the edge cases (each has a test in `session/tests.rs`):
//!
//! - A command line must end in CRLF. A bare LF ending it, or a CR anywhere else in it, gets
//!   `500 5.5.2` and the line is not executed: smtp-proto tolerates both, and a parser that reads
//!   lines differently from the next hop is how SMTP smuggling starts.
//! - DATA ends only at CRLF.CRLF. A message holding a bare LF or a bare CR is read to its end and then
//!   refused with `550 5.6.0`, so `<LF>.<LF>` style smuggling never reaches the queue. NUL bytes are
//!   refused the same way, for DATA and BDAT alike.
//! - `BODY=BINARYMIME` gets `555 5.5.4`: it is not advertised (RFC 3030 §3), because a binary
//!   body could leave only over a next hop that takes BINARYMIME, and delivery sends DATA.
//! - A message over `max_message_size` is consumed to its end without buffering past the limit and
//!   refused with `552 5.3.4`; for BDAT the chunk that crosses the limit gets `552 5.3.4` and later
//!   chunks of that message are consumed and get the same answer, until `LAST`.
//! - Addresses: bytes that are not UTF-8 get `553 5.6.7` even with SMTPUTF8 (in a MAIL/RCPT
//!   parameter: `501 5.5.4`; in any other command: `500 5.5.2`); non-ASCII without SMTPUTF8 on
//!   MAIL FROM gets `553 5.6.7`; control characters or a missing domain get `501 5.1.7` (sender) or
//!   `501 5.1.3` (recipient), as does a domain with a trailing dot. Address literals
//!   (`user@[192.0.2.1]`) are not parsed by smtp-proto and get `501 5.1.3`. `RCPT
//!   TO:<Postmaster>` (RFC 5321 §4.5.1) is accepted as `postmaster@` the first served domain;
//!   `RCPT TO:<>` and `MAIL FROM:<postmaster>` are refused. ENVID and ORCPT that decode to control
//!   characters get `501 5.5.4` (they are written into DSNs).
//! - SASL: a bare LF, bare CR or over-long line inside an AUTH exchange ends the exchange with the
//!   line error; `*` ends it with `501 5.0.0`. PLAIN with an authorization identity other than the
//!   user fails as bad credentials (`535 5.7.8`) without asking the glue.
//! - MAIL parameters we do not advertise (BY, HOLDFOR/HOLDUNTIL, MTRK, TRANSID, SOLICIT,
//!   MT-PRIORITY, CONPERM; RCPT RRVS, CONNEG) get `555 5.5.4`; `AUTH=` on MAIL is ignored.
//!   REQUIRETLS (RFC 8689) is advertised and accepted only inside TLS (outside it is one more
//!   unadvertised parameter, `555 5.5.4`) and recorded in the envelope for delivery to honour.
//! - `NOTIFY=NEVER` combined with another keyword gets `501 5.5.4` (RFC 3461 §4.1: NEVER alone).
//! - Recipients beyond `max_recipients` get `452 4.5.3` and the session goes on: the client sends
//!   them in a later transaction (RFC 5321 §4.5.3.1.10). The first `recipient_overshoot` of them
//!   in a session are not counted as errors (as Postfix's `smtpd_recipient_overshoot_limit`).
//! - Back-pressure (queue full, disk low), told by [`Session::handle_pressure`], is answered at
//!   MAIL FROM with `452 4.3.1`; not counted as a client error.
//! - Relay: a served domain is open to anyone, other domains need authentication or a relay-allowed
//!   client address; `554 5.7.1 Relay access denied` otherwise. For served domains an
//!   unauthenticated client may not use routing characters (`%`, `!`, quoted `@`) in the local part.
//! - The arrival time is the `now_unix` given to [`Session::new`], or the last
//!   [`Session::set_now_unix`], read when the message ends.
//! - Input that arrives while an `Authenticate` or `Enqueue` answer is pending is held (at most
//!   [`HELD_INPUT_MAX`] bytes) and processed after the answer; beyond that the session answers the
//!   pending result, then `421 4.7.0` and closes. Input after STARTTLS and before
//!   [`Session::handle_tls_established`] is discarded (the STARTTLS injection defence, RFC 3207 §6).
//!   `handle_tls_established` right after `new`, before any input, means implicit TLS (port 465).
//! - Every 4xx/5xx answer to a client command counts as an error (store failures, back-pressure
//!   and the tolerated excess recipients do not); the `max_errors`-th is followed by
//!   `421 4.7.0 Too many errors` and `Close`.
//! - Timers are the session's (RFC 5321 §4.5.3.2): [`Session::poll_timeout`] says when to call
//!   [`Session::handle_timeout`]. Client silence over `idle_timeout` while the session waits for
//!   it, or a session over `session_timeout`, gets `421 4.4.2` and `Close`. After
//!   [`Session::handle_shutdown`] a session inside a message may finish until one fixed deadline
//!   (`shutdown_grace` after the shutdown began, never pushed back by input), then gets
//!   `421 4.3.0`. Every [`Output::Close`] carries its [`CloseReason`].

mod address;
mod auth;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME,
    MAIL_BY_NOTIFY, MAIL_BY_RETURN, MAIL_BY_TRACE, MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom, RCPT_CONNEG, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE,
    RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, RCPT_RRVS_CONTINUE, RCPT_RRVS_REJECT, RcptTo, Request,
};

use crate::envelope::{DsnReturn, Envelope, Notify, QueueId, Recipient};
use crate::queue::Pressure;
use address::AddressProblem;

const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size";

/// Longest `AUTH` command or SASL response line, CRLF included (RFC 4954 §4: 12288 octets).
const AUTH_LINE_MAX: usize = 12288;

/// Most input held while the glue answers `Authenticate` or `Enqueue`. The glue stops reading
/// while [`Session::wants_input`] is false, so only the rest of one read lands here.
pub const HELD_INPUT_MAX: usize = 256 * 1024;

/// Size and count limits of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body accepted, in bytes after dot-unstuffing; advertised as `SIZE`.
    pub max_message_size: usize,
    /// Most recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// After this many error replies the session says `421 4.7.0` and closes.
    pub max_errors: usize,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_line: usize,
    /// Recipients over `max_recipients` per session that get `452 4.5.3` without counting as
    /// errors (Postfix's `smtpd_recipient_overshoot_limit`, 1000).
    pub recipient_overshoot: usize,
    /// Longest client silence while the session waits for it (RFC 5321 §4.5.3.2: at least 5
    /// minutes between commands); then `421 4.4.2`.
    pub idle_timeout: Duration,
    /// Longest session from greeting to close; then `421 4.4.2`.
    pub session_timeout: Duration,
    /// After [`Session::handle_shutdown`], how long a session inside a message may go on.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            max_line: 512,
            recipient_overshoot: 1000,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What this server offers to this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Our name in the greeting and in EHLO/HELO replies.
    pub hostname: String,
    /// Domains we accept mail for from anyone, lower-case.
    pub served_domains: Vec<String>,
    /// The client address is in a `[relay]` network: it may send to any domain.
    pub relay_allowed: bool,
    /// The glue has a certificate: STARTTLS is offered.
    pub tls_available: bool,
    /// Users are configured: AUTH is offered (under TLS only).
    pub auth_available: bool,
    /// A DMTP server stands behind this listener: the greeting carries `DMTPv1` and
    /// `STARTTLS <host> MODE=DMTPv1` hands the connection over to DMTP (DIME.md §10.1).
    pub dmtp_dual_mode: bool,
}

/// What the glue must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes (one or more replies; pipelined replies come batched).
    Send(Vec<u8>),
    /// `220 2.0.0 Ready to start TLS` has been sent: upgrade the socket, then call
    /// [`Session::handle_tls_established`].
    StartTls,
    /// Verify these credentials, then call [`Session::handle_auth_result`].
    Authenticate {
        /// The user name as the client gave it.
        username: String,
        /// The password as the client gave it.
        password: String,
    },
    /// Store this message durably, then call [`Session::handle_stored`]. No `250` for it is sent
    /// before that call.
    Enqueue {
        /// Sender, recipients and connection facts.
        envelope: Envelope,
        /// The message as received (dot-unstuffed, CRLF line ends).
        body: Vec<u8>,
    },
    /// The last reply has been queued before this: flush it and close the connection.
    Close(CloseReason),
    /// `STARTTLS <host> MODE=DMTPv1` was answered `220` (DIME.md §10.1): flush, run the TLS
    /// handshake with the DMTP certificate and run a DMTP server session on the connection
    /// (`dmtp::ServerSession::after_dual_mode_upgrade`). This SMTP session is over: it emits
    /// nothing more and [`Session::is_closed`] is true.
    UpgradeToDmtp {
        /// The DX host name the client asked for.
        host: crate::dmtp::codec::Domain,
    },
}

/// Why the session ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said QUIT.
    Quit,
    /// `max_errors` error replies: `421 4.7.0 Too many errors`.
    TooManyErrors,
    /// More pipelined input than [`HELD_INPUT_MAX`] while an answer was pending.
    TooMuchPipelinedInput,
    /// The client was silent for `idle_timeout`.
    IdleTimeout,
    /// The session lasted `session_timeout`.
    SessionTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// The `outcome` label of the session metric.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::TooManyErrors => "too_many_errors",
            CloseReason::TooMuchPipelinedInput => "pipelining_overflow",
            CloseReason::IdleTimeout => "timeout",
            CloseReason::SessionTimeout => "session_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The answer to [`Output::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// The credentials are good: this user is now authenticated.
    Authenticated(String),
    /// Bad user name or password: `535 5.7.8`.
    Invalid,
    /// The client's address is backing off after too many failures; the credentials were not
    /// checked: `454 4.7.0` (RFC 4954 §6, temporary authentication failure).
    Throttled,
}

/// Why the glue could not store a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Disk full or queue over its limit: `452 4.3.1`.
    Full,
    /// Any other storage error: `451 4.3.0`.
    Failed,
}

/// Sender and recipients of the mail transaction in progress.
struct Transaction {
    sender: String,
    recipients: Vec<Recipient>,
    dsn_ret: Option<DsnReturn>,
    dsn_envid: Option<String>,
    body_8bit: bool,
    smtputf8: bool,
    /// `REQUIRETLS` on MAIL FROM (RFC 8689 §4.1: the message must be tagged).
    require_tls: bool,
}

/// Consuming a DATA or BDAT payload that will be refused.
struct Skip {
    rx: DummyDataReceiver,
    reply: &'static str,
    /// False for BDAT chunks after the one that already counted the error.
    counts_as_error: bool,
    next: Box<State>,
}

/// The phase of the session; each variant holds exactly what that phase needs.
enum State {
    /// Greeted, waiting for EHLO/HELO.
    Connected,
    /// EHLO/HELO seen, no transaction.
    Ready,
    /// MAIL FROM accepted, no recipient yet.
    Mail(Transaction),
    /// At least one recipient accepted.
    Rcpt(Transaction),
    /// Between BDAT chunks: body so far.
    Chunking(Transaction, Vec<u8>),
    /// A BDAT chunk of this message was refused; later chunks are consumed and get this reply.
    BdatRefused(&'static str),
    /// Inside DATA.
    Data(Transaction, DataReceiver, Vec<u8>),
    /// Inside one BDAT chunk.
    Bdat(Transaction, BdatReceiver, Vec<u8>),
    /// Consuming a payload to be refused.
    Skip(Skip),
    /// SASL exchange waiting for a client line.
    Auth(auth::Step),
    /// Waiting for [`Session::handle_auth_result`].
    Authenticating,
    /// Waiting for [`Session::handle_stored`].
    Storing,
    /// Waiting for [`Session::handle_tls_established`].
    TlsHandshake,
    /// `Output::Close` was emitted.
    Closed,
    /// `Output::UpgradeToDmtp` was emitted: the connection belongs to DMTP now.
    HandedOver,
}

impl State {
    /// States that read command lines (or SASL lines).
    fn reads_lines(&self) -> bool {
        matches!(
            self,
            State::Connected
                | State::Ready
                | State::Mail(_)
                | State::Rcpt(_)
                | State::Chunking(..)
                | State::BdatRefused(_)
                | State::Auth(_)
        )
    }
}

/// Outcome of framing one command line.
enum Line {
    /// More input needed.
    Incomplete,
    /// `self.line` holds a complete line, LF included.
    Complete,
    /// The line exceeded its limit; it has been skipped up to and including its LF.
    TooLong,
}

/// One SMTP server session. See the module documentation for the defined edge-case answers.
pub struct Session {
    policy: Policy,
    limits: Limits,
    client: SocketAddr,
    now_unix: u64,
    state: State,
    helo: Option<String>,
    tls: Option<String>,
    auth_user: Option<String>,
    errors: usize,
    /// Recipients refused for `max_recipients` so far in this session.
    excess_recipients: usize,
    shutdown: bool,
    /// Back-pressure as last told by the glue.
    pressure: Option<Pressure>,
    /// The latest time the glue gave.
    now: Instant,
    /// When the session started waiting for the client.
    idle_since: Instant,
    session_deadline: Option<Instant>,
    /// Fixed when the shutdown began; input does not move it.
    shutdown_deadline: Option<Instant>,
    /// Some client input has been processed (implicit TLS is only possible before that).
    seen_input: bool,
    /// The command line being assembled (bounded by the line limit).
    line: Vec<u8>,
    /// The current line went over its limit; discarding up to the next LF.
    line_overflow: bool,
    /// Input received while waiting for the glue (bounded by [`HELD_INPUT_MAX`]).
    held: Vec<u8>,
    held_overflow: bool,
    /// Replies not yet handed out, so that pipelined replies leave in one write.
    replies: Vec<u8>,
    out: VecDeque<Output>,
}

impl Session {
    /// A new session for `client`, starting at `now`; the `220` greeting is the first output.
    pub fn new(
        policy: Policy,
        limits: Limits,
        client: SocketAddr,
        now: Instant,
        now_unix: u64,
    ) -> Session {
        let session_deadline = now.checked_add(limits.session_timeout);
        let mut session = Session {
            policy,
            limits,
            client,
            now_unix,
            state: State::Connected,
            helo: None,
            tls: None,
            auth_user: None,
            errors: 0,
            excess_recipients: 0,
            shutdown: false,
            pressure: None,
            now,
            idle_since: now,
            session_deadline,
            shutdown_deadline: None,
            seen_input: false,
            line: Vec::new(),
            line_overflow: false,
            held: Vec::new(),
            held_overflow: false,
            replies: Vec::new(),
            out: VecDeque::new(),
        };
        // libdime's dual-mode client wants the token `DMTPv1` in the SMTP greeting (§10.1).
        let greeting = if session.policy.dmtp_dual_mode {
            format!("220 {} ESMTP DMTPv1 dimegate", session.policy.hostname)
        } else {
            format!("220 {} ESMTP dimegate", session.policy.hostname)
        };
        session.reply(&greeting);
        session.flush_replies();
        session
    }

    /// Sets the time used as `arrival_unix` for messages that end after this call. Optional: without
    /// it the time given to [`Session::new`] is used.
    pub fn set_now_unix(&mut self, now_unix: u64) {
        self.now_unix = now_unix;
    }

    /// Feeds bytes read from the socket at `now`, in any split.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.tick(now);
        self.idle_since = self.now;
        self.seen_input |= !bytes.is_empty();
        self.process(bytes);
        self.flush_replies();
    }

    /// Back-pressure now: `Some` makes the next MAIL FROM get `452 4.3.1`. The glue tells it
    /// from values a background task keeps fresh, so no MAIL FROM waits for a disk.
    pub fn handle_pressure(&mut self, pressure: Option<Pressure>) {
        self.pressure = pressure;
    }

    /// When the glue must call [`Session::handle_timeout`] at the latest; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed | State::HandedOver) {
            return None;
        }
        let idle = self
            .waits_for_client()
            .then(|| self.idle_since.checked_add(self.limits.idle_timeout))
            .flatten();
        [self.session_deadline, idle, self.shutdown_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time has passed: closes the session with `421` if one of its deadlines is reached.
    /// Ignored while an answer from the glue is pending (its work decides, not the clock).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        if !self.waits_for_client() {
            return;
        }
        let reached = |deadline: Option<Instant>| deadline.is_some_and(|d| self.now >= d);
        if reached(self.shutdown_deadline) {
            self.close_for_shutdown();
        } else if reached(self.session_deadline) {
            let reply = format!(
                "421 4.4.2 {} Session time limit exceeded, closing connection",
                self.policy.hostname
            );
            self.reply(&reply);
            self.close(CloseReason::SessionTimeout);
        } else if reached(self.idle_since.checked_add(self.limits.idle_timeout)) {
            let reply = format!(
                "421 4.4.2 {} Timeout, closing connection",
                self.policy.hostname
            );
            self.reply(&reply);
            self.close(CloseReason::IdleTimeout);
        }
        self.flush_replies();
    }

    /// The clock never goes back for the session, whatever the glue passes.
    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Waiting for client bytes, not for the glue (and not closed).
    fn waits_for_client(&self) -> bool {
        self.wants_input() && !matches!(self.state, State::Closed)
    }

    /// The next thing the glue must do, if any. Drain after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The TLS handshake after [`Output::StartTls`] succeeded. The session starts afresh (RFC 3207
    /// §4.2): the client must EHLO again. Also accepted right after [`Session::new`], before any
    /// input, for implicit TLS (port 465, RFC 8314). Ignored otherwise: a session that has read
    /// plaintext commands must not later be marked as encrypted.
    pub fn handle_tls_established(&mut self, now: Instant, tls_info: String) {
        let implicit = matches!(self.state, State::Connected) && !self.seen_input;
        if !matches!(self.state, State::TlsHandshake) && !implicit {
            return;
        }
        self.tick(now);
        self.idle_since = self.now;
        self.tls = Some(tls_info);
        self.helo = None;
        self.line.clear();
        self.line_overflow = false;
        self.held.clear();
        self.state = State::Connected;
        self.process(&[]);
        self.flush_replies();
    }

    /// The answer to [`Output::Authenticate`], at `now`. Ignored unless an answer was asked for.
    pub fn handle_auth_result(&mut self, now: Instant, result: AuthResult) {
        if !matches!(self.state, State::Authenticating) {
            return;
        }
        self.tick(now);
        self.idle_since = self.now;
        self.state = State::Ready;
        match result {
            AuthResult::Authenticated(user) => {
                self.auth_user = Some(user);
                self.reply("235 2.7.0 Authentication successful");
            }
            AuthResult::Invalid => self.error("535 5.7.8 Authentication credentials invalid"),
            AuthResult::Throttled => {
                self.error("454 4.7.0 Too many authentication failures, try again later")
            }
        }
        self.resume();
    }

    /// The answer to [`Output::Enqueue`]. Only now may the message get its `250`. Ignored unless an
    /// answer was asked for.
    pub fn handle_stored(&mut self, now: Instant, result: Result<QueueId, StoreFailure>) {
        if !matches!(self.state, State::Storing) {
            return;
        }
        self.tick(now);
        self.idle_since = self.now;
        self.state = State::Ready;
        match result {
            Ok(id) => self.reply(&format!("250 2.0.0 Ok: queued as {id}")),
            Err(StoreFailure::Full) => self.reply("452 4.3.1 Insufficient system storage"),
            Err(StoreFailure::Failed) => {
                self.reply("451 4.3.0 Local error in processing, try again later")
            }
        }
        self.resume();
    }

    /// The server began going down at `now`. Between commands the client gets `421 4.3.0` at
    /// once; inside a message, or while an answer from the glue is pending, at the next command
    /// boundary or at `now + shutdown_grace`, whichever comes first. Only the first call counts.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.tick(now);
        if !self.shutdown {
            self.shutdown = true;
            // A grace too long for the clock means none: the server's own wait still ends it.
            self.shutdown_deadline = self.now.checked_add(self.limits.shutdown_grace);
        }
        self.process(&[]);
        self.flush_replies();
    }

    /// False while an answer from the glue is pending or the session is closed: stop reading.
    pub fn wants_input(&self) -> bool {
        !matches!(
            self.state,
            State::Authenticating
                | State::Storing
                | State::TlsHandshake
                | State::Closed
                | State::HandedOver
        )
    }

    /// True once [`Output::Close`] or [`Output::UpgradeToDmtp`] has been emitted.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::HandedOver)
    }

    /// Bytes the session buffers: line, held input and message body. Bounded by roughly
    /// `max_message_size + 2 + 12288 + HELD_INPUT_MAX` plus unread output; for metrics and fuzzing.
    pub fn buffered_len(&self) -> usize {
        let body = match &self.state {
            State::Chunking(_, body) | State::Data(_, _, body) | State::Bdat(_, _, body) => {
                body.len()
            }
            _ => 0,
        };
        self.line.len() + self.held.len() + body
    }

    // ---- input loop ----

    fn process(&mut self, mut input: &[u8]) {
        loop {
            // Between commands a shutdown closes at once; inside a message it waits until here.
            if self.shutdown && self.state.reads_lines() {
                self.close_for_shutdown();
                return;
            }
            if input.is_empty() {
                return;
            }
            match self.state {
                // After STARTTLS nothing sent in plaintext may be read as if it came over TLS.
                State::Closed | State::TlsHandshake | State::HandedOver => return,
                State::Authenticating | State::Storing => {
                    self.hold(input);
                    return;
                }
                State::Data(..) | State::Bdat(..) | State::Skip(_) => {
                    self.ingest_payload(&mut input)
                }
                _ => match self.frame_line(&mut input) {
                    Line::Incomplete => return,
                    Line::TooLong => {
                        self.abandon_sasl();
                        self.error("500 5.5.2 Line too long");
                    }
                    Line::Complete => {
                        let line = mem::take(&mut self.line);
                        self.handle_line(&line);
                        self.recycle_line(line);
                    }
                },
            }
        }
    }

    /// A malformed line in the middle of a SASL exchange ends the exchange.
    fn abandon_sasl(&mut self) {
        if matches!(self.state, State::Auth(_)) {
            self.state = State::Ready;
        }
    }

    fn hold(&mut self, input: &[u8]) {
        if self.held.len() + input.len() > HELD_INPUT_MAX {
            self.held_overflow = true;
            return;
        }
        self.held.extend_from_slice(input);
    }

    /// After the glue answered: close if asked to, else go on with what the client pipelined.
    fn resume(&mut self) {
        if self.held_overflow {
            self.held.clear();
            self.held_overflow = false;
            self.reply("421 4.7.0 Too much pipelined input");
            self.close(CloseReason::TooMuchPipelinedInput);
        } else {
            let held = mem::take(&mut self.held);
            self.process(&held);
        }
        self.flush_replies();
    }

    fn line_limit(&self, start: &[u8]) -> usize {
        let is_auth = matches!(self.state, State::Auth(_))
            || start.len() >= 5 && start[..5].eq_ignore_ascii_case(b"AUTH ");
        if is_auth {
            self.limits.max_line.max(AUTH_LINE_MAX)
        } else {
            self.limits.max_line
        }
    }

    /// Moves input into `self.line` up to and including the next LF, keeping at most the line limit.
    fn frame_line(&mut self, input: &mut &[u8]) -> Line {
        let Some(pos) = input.iter().position(|&b| b == b'\n') else {
            if !self.line_overflow {
                let start = verb_prefix(&self.line, input);
                if self.line.len() + input.len() > self.line_limit(&start) {
                    self.line_overflow = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(input);
                }
            }
            *input = &[];
            return Line::Incomplete;
        };
        let (chunk, rest) = input.split_at(pos + 1);
        *input = rest;
        if mem::take(&mut self.line_overflow) {
            self.line.clear();
            return Line::TooLong;
        }
        let start = verb_prefix(&self.line, chunk);
        if self.line.len() + chunk.len() > self.line_limit(&start) {
            self.line.clear();
            return Line::TooLong;
        }
        self.line.extend_from_slice(chunk);
        Line::Complete
    }

    /// Gives the line buffer back for reuse; wiped because AUTH lines carry credentials.
    fn recycle_line(&mut self, mut line: Vec<u8>) {
        line.fill(0);
        line.clear();
        self.line = line;
    }

    fn handle_line(&mut self, line: &[u8]) {
        let Some(body) = line.strip_suffix(b"\r\n") else {
            self.abandon_sasl();
            self.error("500 5.5.2 Bare LF in command line; lines must end with CRLF");
            return;
        };
        if body.contains(&b'\r') {
            self.abandon_sasl();
            self.error("500 5.5.2 Bare CR in command line");
            return;
        }
        if matches!(self.state, State::Auth(_)) {
            self.handle_sasl_line(body);
            return;
        }
        // Before smtp-proto, which would read the DMTP arguments as a syntax error.
        if let Some(dual) = crate::dmtp::codec::parse_dual_mode_starttls(body) {
            return self.handle_dual_mode_starttls(dual);
        }
        let line_is_utf8 = std::str::from_utf8(line).is_ok();
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(err) => {
                self.parse_error(err);
                return;
            }
        };
        match request {
            // smtp-proto decodes lossily: invalid bytes in the path show as U+FFFD (553 5.6.7 from
            // the address checks); invalid bytes elsewhere are in the parameters.
            Request::Mail { from } if line_is_utf8 || from.address.contains('\u{fffd}') => {
                self.handle_mail(from, line, line_is_utf8)
            }
            Request::Rcpt { to } if line_is_utf8 || to.address.contains('\u{fffd}') => {
                self.handle_rcpt(to, line, line_is_utf8)
            }
            Request::Mail { .. } | Request::Rcpt { .. } => {
                self.error("501 5.5.4 Parameters are not valid UTF-8")
            }
            _ if !line_is_utf8 => self.error("500 5.5.2 Invalid characters in command"),
            Request::Ehlo { host } => self.handle_helo(&host, true),
            Request::Helo { host } => self.handle_helo(&host, false),
            Request::Data => self.handle_data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.handle_bdat(chunk_size, is_last),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.handle_auth(mechanism, initial_response.as_bytes()),
            Request::StartTls => self.handle_starttls(),
            Request::Rset => {
                if !matches!(self.state, State::Connected) {
                    self.state = State::Ready;
                }
                self.reply("250 2.0.0 Ok");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 Ok"),
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                self.close(CloseReason::Quit);
            }
            Request::Vrfy { .. } => {
                self.reply("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
            }
            Request::Help { .. } => self.reply(
                "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            ),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error("502 5.5.1 Command not implemented"),
        }
    }

    fn parse_error(&mut self, err: ParseError) {
        let reply = match err {
            ParseError::UnknownCommand => "500 5.5.1 Unknown command".to_owned(),
            ParseError::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".to_owned(),
            ParseError::InvalidRecipientAddress => {
                "501 5.1.3 Bad recipient address syntax".to_owned()
            }
            ParseError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
            ParseError::InvalidParameter { param } => {
                format!("501 5.5.4 Invalid {param} parameter")
            }
            ParseError::UnsupportedParameter { param } => {
                // The parameter name comes from the client: keep it printable and short.
                let param: String = param
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(32)
                    .collect();
                format!("555 5.5.4 Unsupported parameter {param}")
            }
            // A complete line never needs more data; anything else is a syntax error.
            _ => "501 5.5.4 Syntax error".to_owned(),
        };
        self.error(&reply);
    }

    // ---- verbs ----

    fn handle_helo(&mut self, host: &str, extended: bool) {
        if !self.state_allows_helo() {
            self.error("503 5.5.1 Bad sequence of commands");
            return;
        }
        // The name ends up in Received: headers.
        if host.chars().any(|c| c.is_control()) {
            self.error("501 5.5.4 Invalid domain name");
            return;
        }
        self.helo = Some(host.to_owned());
        self.state = State::Ready;
        if extended {
            let reply = self.ehlo_reply();
            self.replies.extend_from_slice(reply.as_bytes());
        } else {
            let reply = format!("250 {}", self.policy.hostname);
            self.reply(&reply);
        }
    }

    fn state_allows_helo(&self) -> bool {
        // EHLO inside a BDAT sequence would silently drop chunks the client thinks were taken.
        !matches!(self.state, State::Chunking(..) | State::BdatRefused(_))
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![
            self.policy.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.limits.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.policy.tls_available && self.tls.is_none() {
            lines.push("STARTTLS".to_owned());
        }
        if self.policy.auth_available && self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        // RFC 8689 §4.1: a REQUIRETLS message may only arrive over TLS, so offer it only there.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".to_owned());
        }
        lines.push("CHUNKING".to_owned());
        lines.push("DSN".to_owned());
        let last = lines.len() - 1;
        let mut reply = String::new();
        for (i, line) in lines.iter().enumerate() {
            reply.push_str(if i == last { "250 " } else { "250-" });
            reply.push_str(line);
            reply.push_str("\r\n");
        }
        reply
    }

    fn handle_mail(&mut self, from: MailFrom<std::borrow::Cow<'_, str>>, line: &[u8], utf8: bool) {
        match self.state {
            State::Connected => return self.error("503 5.5.1 Send EHLO or HELO first"),
            State::Ready => {}
            _ => return self.error("503 5.5.1 Nested MAIL command"),
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = from.address.into_owned();
        if sender.is_empty() {
            // `<postmaster>` parses as empty too, but is not a valid reverse path.
            if address::raw_path(line).is_some_and(|p| !p.is_empty()) {
                return self.error("501 5.1.7 Sender address needs a domain");
            }
        } else if let Err(problem) = address::check_mailbox(&sender, utf8, smtputf8) {
            return self.address_error(problem, "5.1.7", "Sender");
        }
        if from.size > self.limits.max_message_size {
            return self.error(TOO_BIG);
        }
        let require_tls = from.flags & MAIL_REQUIRETLS != 0;
        let mut unsupported = MAIL_CONPERM | MAIL_BY_NOTIFY | MAIL_BY_RETURN | MAIL_BY_TRACE;
        if self.tls.is_none() {
            unsupported |= MAIL_REQUIRETLS;
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error("555 5.5.4 BODY=BINARYMIME is not supported");
        }
        if from.flags & unsupported != 0
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mtrk.is_some()
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mt_priority != 0
        {
            return self.error("555 5.5.4 Unsupported MAIL parameter");
        }
        let dsn_envid = from.env_id.map(|e| e.into_owned());
        // ENVID is xtext-decoded by the parser: a decoded CR/LF would break the DSN we write.
        if dsn_envid
            .as_deref()
            .is_some_and(|e| e.chars().any(|c| c.is_control()))
        {
            return self.error("501 5.5.4 Invalid ENVID parameter");
        }
        let dsn_envid = dsn_envid.map(|e| address::xtext(&e));
        let dsn_ret = if from.flags & MAIL_RET_FULL != 0 {
            Some(DsnReturn::Full)
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some(DsnReturn::Headers)
        } else {
            None
        };
        // Last, so that a malformed command still gets its own answer. Not a client error.
        if let Some(pressure) = self.pressure {
            self.reply(&pressure.reply());
            return;
        }
        self.state = State::Mail(Transaction {
            sender,
            recipients: Vec::new(),
            dsn_ret,
            dsn_envid,
            body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8,
            require_tls,
        });
        self.reply("250 2.1.0 Ok");
    }

    fn address_error(&mut self, problem: AddressProblem, code: &str, who: &str) {
        let reply = match problem {
            AddressProblem::NotUtf8 => "553 5.6.7 Address is not valid UTF-8".to_owned(),
            AddressProblem::NeedsSmtpUtf8 => {
                "553 5.6.7 Non-ASCII address requires SMTPUTF8".to_owned()
            }
            AddressProblem::ControlCharacter => {
                format!("501 {code} {who} address contains control characters")
            }
            AddressProblem::NoDomain => format!("501 {code} {who} address needs a domain"),
        };
        self.error(&reply);
    }

    fn handle_rcpt(&mut self, to: RcptTo<std::borrow::Cow<'_, str>>, line: &[u8], utf8: bool) {
        let txn = match &mut self.state {
            State::Mail(txn) | State::Rcpt(txn) => txn,
            State::Connected => return self.error("503 5.5.1 Send EHLO or HELO first"),
            State::Chunking(..) | State::BdatRefused(_) => {
                return self.error("503 5.5.1 RCPT not allowed during BDAT");
            }
            _ => return self.error("503 5.5.1 Need MAIL before RCPT"),
        };
        if txn.recipients.len() >= self.limits.max_recipients {
            // RFC 5321 §4.5.3.1.10: the client sends these again in a new transaction.
            self.excess_recipients = self.excess_recipients.saturating_add(1);
            if self.excess_recipients <= self.limits.recipient_overshoot {
                return self.reply("452 4.5.3 Too many recipients");
            }
            return self.error("452 4.5.3 Too many recipients");
        }
        let smtputf8 = txn.smtputf8;
        let mut address = to.address.into_owned();
        if address.is_empty() {
            let is_postmaster =
                address::raw_path(line).is_some_and(|p| p.eq_ignore_ascii_case(b"postmaster"));
            match self.policy.served_domains.first() {
                Some(domain) if is_postmaster => address = format!("postmaster@{domain}"),
                _ => return self.error("501 5.1.3 Recipient address needs a domain"),
            }
        } else if let Err(problem) = address::check_mailbox(&address, utf8, smtputf8) {
            return self.address_error(problem, "5.1.3", "Recipient");
        }
        if to.flags & (RCPT_CONNEG | RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 {
            return self.error("555 5.5.4 Unsupported RCPT parameter");
        }
        // smtp-proto refuses NEVER after another keyword, not before one.
        let others = RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY;
        if to.flags & RCPT_NOTIFY_NEVER != 0 && to.flags & others != 0 {
            return self.error("501 5.5.4 Invalid NOTIFY parameter");
        }
        let trusted = self.auth_user.is_some() || self.policy.relay_allowed;
        let served = address::domain_of(&address)
            .is_some_and(|d| address::is_served(d, &self.policy.served_domains));
        let routed = address::has_routing_characters(address::local_part_of(&address));
        if !trusted && (!served || routed) {
            return self.error("554 5.7.1 Relay access denied");
        }
        let orcpt = match to.orcpt {
            // The parser xtext-decodes ORCPT: refuse what would break the DSN's header lines.
            Some(o) if o.chars().any(|c| c.is_control()) => {
                return self.error("501 5.5.4 Invalid ORCPT parameter");
            }
            Some(o) => Some(format!("rfc822;{}", address::xtext(&o))),
            None => None,
        };
        let notify_bits =
            RCPT_NOTIFY_NEVER | RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY;
        let notify = (to.flags & notify_bits != 0).then_some(Notify {
            never: to.flags & RCPT_NOTIFY_NEVER != 0,
            success: to.flags & RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & RCPT_NOTIFY_DELAY != 0,
        });
        let recipient = Recipient {
            address,
            notify,
            orcpt,
        };
        self.state = match mem::replace(&mut self.state, State::Closed) {
            State::Mail(mut txn) | State::Rcpt(mut txn) => {
                txn.recipients.push(recipient);
                State::Rcpt(txn)
            }
            other => other,
        };
        self.reply("250 2.1.5 Ok");
    }

    fn handle_data(&mut self) {
        match mem::replace(&mut self.state, State::Closed) {
            State::Rcpt(txn) => {
                let mut rx = DataReceiver::new();
                let mut body = Vec::new();
                // smtp-proto's receiver only recognises "." after a CRLF it has seen; the DATA
                // line's own CRLF counts (RFC 5321 §4.1.1.4), so the first line may be "." too.
                rx.ingest(&mut b"\r\n".iter(), &mut body);
                body.clear();
                self.state = State::Data(txn, rx, body);
                self.reply("354 End data with <CR><LF>.<CR><LF>");
            }
            other => {
                let reply = match other {
                    State::Connected => "503 5.5.1 Send EHLO or HELO first",
                    State::Mail(_) => "503 5.5.1 Need RCPT before DATA",
                    State::Chunking(..) | State::BdatRefused(_) => {
                        "503 5.5.1 DATA not allowed after BDAT"
                    }
                    _ => "503 5.5.1 Need MAIL before DATA",
                };
                self.state = other;
                self.error(reply);
            }
        }
    }

    fn handle_bdat(&mut self, chunk_size: usize, is_last: bool) {
        let skip = |reply, counts_as_error, next| {
            State::Skip(Skip {
                rx: DummyDataReceiver::new_bdat(chunk_size),
                reply,
                counts_as_error,
                next: Box::new(next),
            })
        };
        let max = self.limits.max_message_size;
        self.state = match mem::replace(&mut self.state, State::Closed) {
            State::Rcpt(txn) => start_chunk(txn, Vec::new(), chunk_size, is_last, max, skip),
            State::Chunking(txn, body) => start_chunk(txn, body, chunk_size, is_last, max, skip),
            State::BdatRefused(reply) => {
                let next = if is_last {
                    State::Ready
                } else {
                    State::BdatRefused(reply)
                };
                skip(reply, false, next)
            }
            other => {
                let reply = match other {
                    State::Connected => "503 5.5.1 Send EHLO or HELO first",
                    State::Mail(_) => "503 5.5.1 Need RCPT before BDAT",
                    _ => "503 5.5.1 Need MAIL before BDAT",
                };
                skip(reply, true, other)
            }
        };
        // A zero-length chunk is complete without further input.
        if chunk_size == 0 {
            self.ingest_payload(&mut &[][..]);
        }
    }

    fn handle_starttls(&mut self) {
        if !self.policy.tls_available {
            return self.error("502 5.5.1 STARTTLS not available");
        }
        if self.tls.is_some() {
            return self.error("503 5.5.1 Already in TLS");
        }
        if !matches!(self.state, State::Connected | State::Ready) {
            return self.error("503 5.5.1 STARTTLS not allowed during a mail transaction");
        }
        self.reply("220 2.0.0 Ready to start TLS");
        self.held.clear();
        self.state = State::TlsHandshake;
        self.emit(Output::StartTls);
    }

    /// `STARTTLS <host> MODE=DMTPv1` (DIME.md §10.1): the same preconditions as STARTTLS, then
    /// `220` and the hand-over. Plaintext pipelined after it is dropped (RFC 3207 §6, as for
    /// STARTTLS): DMTP starts on the TLS stream with nothing carried over.
    fn handle_dual_mode_starttls(
        &mut self,
        dual: Result<crate::dmtp::codec::Domain, crate::dmtp::codec::CommandError>,
    ) {
        if !self.policy.dmtp_dual_mode {
            return self.error("502 5.5.1 DMTP dual mode not available");
        }
        let host = match dual {
            Ok(host) => host,
            Err(_) => return self.error("501 5.5.4 Syntax: STARTTLS <host> MODE=DMTPv1"),
        };
        if self.tls.is_some() {
            return self.error("503 5.5.1 Already in TLS");
        }
        if !matches!(self.state, State::Connected | State::Ready) {
            return self.error("503 5.5.1 STARTTLS not allowed during a mail transaction");
        }
        self.reply("220 2.0.0 Ready to start TLS for DMTPv1");
        self.held.clear();
        self.state = State::HandedOver;
        self.emit(Output::UpgradeToDmtp { host });
    }

    fn handle_auth(&mut self, mechanism: u64, initial_response: &[u8]) {
        match self.state {
            State::Connected => return self.error("503 5.5.1 Send EHLO first"),
            State::Ready => {}
            _ => return self.error("503 5.5.1 AUTH not allowed during a mail transaction"),
        }
        if !self.policy.auth_available {
            return self.error("503 5.5.1 Authentication not available");
        }
        if self.tls.is_none() {
            return self
                .error("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if self.auth_user.is_some() {
            return self.error("503 5.5.1 Already authenticated");
        }
        let step = match mechanism {
            AUTH_PLAIN => auth::Step::PlainResponse,
            AUTH_LOGIN => auth::Step::LoginUsername,
            _ => return self.error("504 5.5.4 Unrecognized authentication type"),
        };
        if initial_response.is_empty() {
            self.reply(match step {
                auth::Step::LoginUsername => auth::LOGIN_USERNAME_CHALLENGE,
                _ => "334 ",
            });
            self.state = State::Auth(step);
        } else {
            self.state = State::Auth(step);
            self.handle_sasl_line(initial_response);
        }
    }

    fn handle_sasl_line(&mut self, line: &[u8]) {
        let State::Auth(step) = mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        let result = match step {
            auth::Step::PlainResponse => {
                auth::decode(line).and_then(|message| auth::parse_plain(&message))
            }
            auth::Step::LoginUsername => match auth::decode_text(line) {
                Ok(username) => {
                    self.state = State::Auth(auth::Step::LoginPassword { username });
                    self.reply(auth::LOGIN_PASSWORD_CHALLENGE);
                    return;
                }
                Err(err) => Err(err),
            },
            auth::Step::LoginPassword { username } => {
                auth::decode_text(line).map(|password| (username, password))
            }
        };
        match result {
            Ok((username, password)) => {
                self.state = State::Authenticating;
                self.emit(Output::Authenticate { username, password });
            }
            Err(auth::SaslError::Cancelled) => self.error("501 5.0.0 Authentication cancelled"),
            Err(auth::SaslError::BadBase64) => self.error("501 5.5.2 Invalid base64 data"),
            Err(auth::SaslError::Malformed) => {
                self.error("501 5.5.2 Malformed authentication data")
            }
            Err(auth::SaslError::ProxyRefused) => {
                self.error("535 5.7.8 Authentication credentials invalid")
            }
        }
    }

    // ---- message payloads ----

    fn ingest_payload(&mut self, input: &mut &[u8]) {
        let max = self.limits.max_message_size;
        match mem::replace(&mut self.state, State::Closed) {
            State::Data(txn, mut rx, mut body) => {
                // Feed no more than fits: the receiver buffers everything it is given. The slack of
                // two covers the CR it pushes and pops around the final dot.
                let room = max.saturating_add(2).saturating_sub(body.len()).max(1);
                let (head, _) = input.split_at(room.min(input.len()));
                let mut bytes = head.iter();
                let done = rx.ingest(&mut bytes, &mut body);
                let used = head.len() - bytes.as_slice().len();
                *input = &input[used..];
                if done {
                    if body.len() > max {
                        self.state = State::Ready;
                        self.error(TOO_BIG);
                    } else {
                        self.finish_message(txn, body);
                    }
                } else if body.len() > max.saturating_add(1) {
                    self.state = State::Skip(Skip {
                        rx: DummyDataReceiver::new_data(&rx),
                        reply: TOO_BIG,
                        counts_as_error: true,
                        next: Box::new(State::Ready),
                    });
                } else {
                    self.state = State::Data(txn, rx, body);
                }
            }
            State::Bdat(mut txn, mut rx, mut body) => {
                let mut bytes = input.iter();
                let done = rx.ingest(&mut bytes, &mut body);
                *input = bytes.as_slice();
                if !done {
                    self.state = State::Bdat(txn, rx, body);
                } else if rx.is_last {
                    txn.body_8bit = true;
                    self.finish_message(txn, body);
                } else {
                    let reply = format!("250 2.0.0 {} octets received", body.len());
                    self.state = State::Chunking(txn, body);
                    self.reply(&reply);
                }
            }
            State::Skip(mut skip) => {
                let mut bytes = input.iter();
                let done = skip.rx.ingest(&mut bytes);
                *input = bytes.as_slice();
                if done {
                    self.state = *skip.next;
                    if skip.counts_as_error {
                        self.error(skip.reply);
                    } else {
                        self.reply(skip.reply);
                    }
                } else {
                    self.state = State::Skip(skip);
                }
            }
            other => self.state = other,
        }
    }

    fn finish_message(&mut self, txn: Transaction, body: Vec<u8>) {
        if let Some(reply) = check_body(&body) {
            self.state = State::Ready;
            self.error(reply);
            return;
        }
        let envelope = Envelope {
            sender: txn.sender,
            recipients: txn.recipients,
            dsn_ret: txn.dsn_ret,
            dsn_envid: txn.dsn_envid,
            body_8bit: txn.body_8bit,
            smtputf8: txn.smtputf8,
            helo: self.helo.clone().unwrap_or_default(),
            client: self.client,
            tls: self.tls.clone(),
            auth_user: self.auth_user.clone(),
            arrival_unix: self.now_unix,
            require_tls: txn.require_tls,
            dime: None,
        };
        // No reply now: the 250 waits for handle_stored, after the glue's fsync.
        self.state = State::Storing;
        self.emit(Output::Enqueue { envelope, body });
    }

    // ---- output ----

    fn reply(&mut self, line: &str) {
        self.replies.extend_from_slice(line.as_bytes());
        self.replies.extend_from_slice(b"\r\n");
    }

    /// An error reply; the `max_errors`-th one also ends the session.
    fn error(&mut self, line: &str) {
        self.reply(line);
        self.errors += 1;
        if self.errors >= self.limits.max_errors && !matches!(self.state, State::Closed) {
            self.reply("421 4.7.0 Too many errors");
            self.close(CloseReason::TooManyErrors);
        }
    }

    fn close_for_shutdown(&mut self) {
        let reply = format!("421 4.3.0 {} Server shutting down", self.policy.hostname);
        self.reply(&reply);
        self.close(CloseReason::Shutdown);
    }

    fn close(&mut self, reason: CloseReason) {
        self.held.clear();
        self.state = State::Closed;
        self.emit(Output::Close(reason));
    }

    fn emit(&mut self, output: Output) {
        self.flush_replies();
        self.out.push_back(output);
    }

    fn flush_replies(&mut self) {
        if !self.replies.is_empty() {
            self.out
                .push_back(Output::Send(mem::take(&mut self.replies)));
        }
    }
}

/// The state for a BDAT chunk within a transaction: receive it, or skip it when it would
/// take the message over `max`.
fn start_chunk(
    txn: Transaction,
    body: Vec<u8>,
    chunk_size: usize,
    is_last: bool,
    max: usize,
    skip: impl Fn(&'static str, bool, State) -> State,
) -> State {
    if body.len().saturating_add(chunk_size) > max {
        let next = if is_last {
            State::Ready
        } else {
            State::BdatRefused(TOO_BIG)
        };
        return skip(TOO_BIG, true, next);
    }
    State::Bdat(txn, BdatReceiver::new(chunk_size, is_last), body)
}

/// The first five bytes of a line split over `line` and `more`: enough to recognise `AUTH `.
fn verb_prefix(line: &[u8], more: &[u8]) -> Vec<u8> {
    line.iter().chain(more).take(5).copied().collect()
}

/// The first reason to refuse a message body, if any: NUL, bare LF or bare CR (RFC 5321 §2.3.8).
fn check_body(body: &[u8]) -> Option<&'static str> {
    for (i, &b) in body.iter().enumerate() {
        match b {
            0 => return Some("550 5.6.0 Message contains NUL characters"),
            b'\n' if i == 0 || body[i - 1] != b'\r' => {
                return Some("550 5.6.0 Message contains bare LF; lines must end with CRLF");
            }
            b'\r' if body.get(i + 1) != Some(&b'\n') => {
                return Some("550 5.6.0 Message contains bare CR; lines must end with CRLF");
            }
            _ => {}
        }
    }
    None
}
