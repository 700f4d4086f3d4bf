//! The DMTP client session (DIME.md §10.4): a sans-I/O state machine with one state per step of
//! a delivery session, and the `SGNT`/`VRFY`/`HIST` look-ups.
//!
//! The glue connects (port 26 with TLS from the first byte: [`ClientSession::new`]; or port 25 in
//! dual mode: [`ClientSession::new_dual_mode`], which asks for TLS with [`ClientOutput::StartTls`]
//! and expects [`ClientSession::handle_tls_established`]), feeds the server's bytes with
//! [`ClientSession::handle_input`], submits [`Job`]s, writes [`ClientOutput::Send`] bytes and
//! reads results as [`ClientEvent`]s. Jobs run one after another, in order, once `EHLO` and
//! `MODE` succeeded.
//!
//! Every reply passes [`check_reply`], the one place that knows which class each step expects
//! (220 for the banner, 3xx after `DATA`, 2xx elsewhere). Failures are [`ClientError`]s that say
//! whether they are permanent ([`ClientError::is_permanent`]): a 5xx reply is, a 4xx reply,
//! a malformed reply, a timeout or a closed connection are not. A `2xx` to the message is
//! reported as delivered even when its transaction id is unreadable, so that a message a server
//! accepted is never sent twice.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use super::codec::{
    Command, DataType, Domain, HistRange, Reply, ReplyClass, ReplyCode, ReplyError, ReplyReader,
    ReturnType, SignetName, TxId, dual_mode_starttls_line,
};
use crate::dime::{Fingerprint, armor};

/// Time limits of a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our domain, sent in `EHLO` (the origin organisation).
    pub ehlo_domain: Domain,
    /// How long to wait for the banner and for replies to commands (RFC 5321 §4.5.3.2: 5 min).
    pub reply_timeout: Duration,
    /// How long to wait for the reply to a message, which the server gives only after it
    /// verified and stored it (RFC 5321 §4.5.3.2.6: 10 min).
    pub final_reply_timeout: Duration,
}

impl ClientConfig {
    /// The RFC 5321 timeouts for `ehlo_domain`.
    pub fn new(ehlo_domain: Domain) -> ClientConfig {
        ClientConfig {
            ehlo_domain,
            reply_timeout: Duration::from_secs(300),
            final_reply_timeout: Duration::from_secs(600),
        }
    }
}

/// A message to transfer (§10.4 step 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The origin organisation: ours.
    pub origin: Domain,
    /// Crypto fingerprint of our org signet, which signed the message as origin.
    pub origin_fingerprint: Fingerprint,
    /// The destination organisation.
    pub destination: Domain,
    /// Crypto fingerprint of the destination org signet the message is sealed to.
    pub destination_fingerprint: Option<Fingerprint>,
    /// `RETURN=` for `MAIL`.
    pub ret: Option<ReturnType>,
    /// `DATA=` for `MAIL`.
    pub data_type: Option<DataType>,
    /// The sealed D/MIME message.
    pub message: Vec<u8>,
}

/// A signet look-up (§10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `SGNT`: fetch a signet (the current one, or the one with this fingerprint).
    Sgnt {
        /// Whose.
        name: SignetName,
        /// Which.
        fingerprint: Option<Fingerprint>,
    },
    /// `VRFY`: is this signet still the current one?
    Vrfy {
        /// Whose.
        name: SignetName,
        /// The one held.
        fingerprint: Fingerprint,
    },
    /// `HIST`: the chain of custody.
    Hist {
        /// Whose.
        name: SignetName,
        /// Which part.
        range: HistRange,
    },
}

impl Lookup {
    fn command(&self) -> Command {
        match self.clone() {
            Lookup::Sgnt { name, fingerprint } => Command::Sgnt { name, fingerprint },
            Lookup::Vrfy { name, fingerprint } => Command::Vrfy { name, fingerprint },
            Lookup::Hist { name, range } => Command::Hist { name, range },
        }
    }

    fn step(&self) -> Step {
        match self {
            Lookup::Sgnt { .. } => Step::Sgnt,
            Lookup::Vrfy { .. } => Step::Vrfy,
            Lookup::Hist { .. } => Step::Hist,
        }
    }
}

/// Work for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Transfer a message.
    Deliver(Delivery),
    /// Look a signet up.
    Lookup(Lookup),
}

/// Names a submitted job in the events about it; ids count up from 1 per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// The step of the session a reply or failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the banner.
    Banner,
    /// Dual mode: `STARTTLS <host> MODE=DMTPv1` sent.
    StartTls,
    /// Dual mode: the glue runs the TLS handshake.
    TlsHandshake,
    /// Dual mode: waiting for `2xx OK DMTPv1` after the handshake.
    DualModeGreeting,
    /// `EHLO` sent.
    Ehlo,
    /// `MODE` sent.
    Mode,
    /// Ready, nothing in flight.
    Idle,
    /// `MAIL` sent.
    Mail,
    /// `RCPT` sent.
    Rcpt,
    /// `DATA` sent.
    Data,
    /// The message sent; waiting for the final reply.
    Message,
    /// `RSET` sent after a refused transaction step.
    Reset,
    /// `SGNT` sent.
    Sgnt,
    /// `VRFY` sent.
    Vrfy,
    /// `HIST` sent.
    Hist,
    /// `QUIT` sent.
    Quit,
    /// Closed.
    Closed,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Banner => "banner",
            Step::StartTls => "STARTTLS",
            Step::TlsHandshake => "TLS handshake",
            Step::DualModeGreeting => "dual-mode greeting",
            Step::Ehlo => "EHLO",
            Step::Mode => "MODE",
            Step::Idle => "idle",
            Step::Mail => "MAIL",
            Step::Rcpt => "RCPT",
            Step::Data => "DATA",
            Step::Message => "message",
            Step::Reset => "RSET",
            Step::Sgnt => "SGNT",
            Step::Vrfy => "VRFY",
            Step::Hist => "HIST",
            Step::Quit => "QUIT",
            Step::Closed => "closed session",
        })
    }
}

/// Why a step or a job failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered 4xx or 5xx.
    #[error("{step}: server replied {code} {text}")]
    Refused {
        /// Where.
        step: Step,
        /// The code; decide from it, not from `text`.
        code: ReplyCode,
        /// The reply's last line, for logs.
        text: String,
    },
    /// A reply of the wrong class or shape (no `DMTPv1` in the banner, `OK` missing…).
    #[error("{step}: unexpected reply {code}: {problem}")]
    Unexpected {
        /// Where.
        step: Step,
        /// The code received.
        code: ReplyCode,
        /// What was wrong.
        problem: &'static str,
    },
    /// Bytes that are not a reply.
    #[error("{step}: {source}")]
    BadReply {
        /// Where.
        step: Step,
        /// The framing error.
        source: ReplyError,
    },
    /// No reply within the step's timeout.
    #[error("{step}: no reply in time")]
    Timeout {
        /// Where.
        step: Step,
    },
    /// The connection closed (or the server sent 421) before the step ended.
    #[error("connection closed during {step}")]
    ConnectionClosed {
        /// Where.
        step: Step,
    },
    /// The job was submitted after the session had ended.
    #[error("the session has ended")]
    SessionEnded,
}

impl ClientError {
    /// True when trying again will not help: a 5xx reply. Everything else (4xx, malformed
    /// replies, timeouts, closed connections) may succeed later or on another host.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Refused { code, .. } if code.class() == ReplyClass::Permanent)
    }

    /// The step the session was at when this failed; `None` for [`ClientError::SessionEnded`].
    pub fn step(&self) -> Option<Step> {
        match self {
            ClientError::Refused { step, .. }
            | ClientError::Unexpected { step, .. }
            | ClientError::BadReply { step, .. }
            | ClientError::Timeout { step }
            | ClientError::ConnectionClosed { step } => Some(*step),
            ClientError::SessionEnded => None,
        }
    }

    /// The reply code, when the failure is a refusal.
    pub fn code(&self) -> Option<ReplyCode> {
        match self {
            ClientError::Refused { code, .. } | ClientError::Unexpected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `VRFY`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrfyStatus {
    /// The signet asked about is the current one.
    Current,
    /// There is a newer one, with this fingerprint.
    Update(Fingerprint),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Banner, `EHLO` and `MODE` succeeded; jobs run now.
    Ready,
    /// The server accepted the message (verified and stored, by its `2xx`).
    Delivered {
        /// Which job.
        job: JobId,
        /// The server's transaction id; `None` if its reply carried none readable.
        txid: Option<TxId>,
        /// The `[hash]` of `354 CONTINUE [hash]`.
        commit: String,
    },
    /// `SGNT`'s signet, binary (not yet validated: that is the resolver's).
    Signet {
        /// Which job.
        job: JobId,
        /// The signet object.
        signet: Vec<u8>,
    },
    /// `VRFY`'s answer.
    Verified {
        /// Which job.
        job: JobId,
        /// Current or not.
        status: VrfyStatus,
    },
    /// `HIST`'s signets, binary, in the server's order.
    History {
        /// Which job.
        job: JobId,
        /// The signet objects.
        signets: Vec<Vec<u8>>,
    },
    /// A job failed (`job: Some`), or the session did (`job: None`; every pending job then
    /// also gets its own `Failed` with the same error, the job in flight first: the error's
    /// [`ClientError::step`] is where that one was).
    Failed {
        /// Which job, if one.
        job: Option<JobId>,
        /// Why.
        error: ClientError,
    },
}

impl ClientEvent {
    /// The job a result event is about (none for `Ready` and session failures).
    pub fn job(&self) -> Option<JobId> {
        match self {
            ClientEvent::Delivered { job, .. }
            | ClientEvent::Signet { job, .. }
            | ClientEvent::Verified { job, .. }
            | ClientEvent::History { job, .. }
            | ClientEvent::Failed { job: Some(job), .. } => Some(*job),
            ClientEvent::Ready | ClientEvent::Failed { job: None, .. } => None,
        }
    }
}

/// What the glue must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Dual mode: run the TLS handshake on the socket, then call
    /// [`ClientSession::handle_tls_established`].
    StartTls,
    /// Report this.
    Event(ClientEvent),
    /// Close the connection (after writing what was sent before).
    Close,
}

/// Checks that `reply` is of the class `step` expects: `220` for the banner, 3xx after `DATA`,
/// 2xx elsewhere. 4xx/5xx are refusals; anything else is unexpected.
pub fn check_reply(step: Step, reply: &Reply) -> Result<(), ClientError> {
    let code = reply.code();
    let class = code.class();
    if matches!(class, ReplyClass::Transient | ReplyClass::Permanent) {
        return Err(ClientError::Refused {
            step,
            code,
            text: reply.last_line().to_owned(),
        });
    }
    let ok = match step {
        Step::Banner => code == ReplyCode::Ready,
        Step::Data => class == ReplyClass::Intermediate,
        _ => class == ReplyClass::Positive,
    };
    if ok {
        Ok(())
    } else {
        Err(ClientError::Unexpected {
            step,
            code,
            problem: "wrong reply class for this step",
        })
    }
}

/// The phase of the session.
#[derive(Debug)]
enum State {
    Banner { dual_mode_host: Option<Domain> },
    StartTls,
    TlsHandshake,
    DualModeGreeting,
    Ehlo,
    Mode,
    Idle,
    Mail(JobId, Delivery),
    Rcpt(JobId, Delivery),
    Data(JobId, Delivery),
    Message(JobId, String),
    Reset,
    Lookup(JobId, Lookup),
    Quit,
    Closed,
}

/// One DMTP client session.
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    reader: ReplyReader,
    jobs: VecDeque<(JobId, Job)>,
    next_job: u64,
    quit_requested: bool,
    deadline: Option<Instant>,
    out: VecDeque<ClientOutput>,
}

impl ClientSession {
    /// A session on a connection with TLS from the first byte (port 26): waits for the banner.
    pub fn new(config: ClientConfig, now: Instant) -> ClientSession {
        ClientSession::start(config, None, now)
    }

    /// A session on an SMTP port in dual mode (§10.1): after the SMTP banner it sends
    /// `STARTTLS <dx_host> MODE=DMTPv1`, asks for TLS, and expects `2xx OK DMTPv1`. The SMTP
    /// banner need not announce DMTPv1.
    pub fn new_dual_mode(config: ClientConfig, dx_host: Domain, now: Instant) -> ClientSession {
        ClientSession::start(config, Some(dx_host), now)
    }

    fn start(config: ClientConfig, dual_mode_host: Option<Domain>, now: Instant) -> ClientSession {
        let deadline = Some(now + config.reply_timeout);
        ClientSession {
            config,
            state: State::Banner { dual_mode_host },
            reader: ReplyReader::new(),
            jobs: VecDeque::new(),
            next_job: 1,
            quit_requested: false,
            deadline,
            out: VecDeque::new(),
        }
    }

    /// Queues a job; it runs when the session is ready and the jobs before it are done. Refused
    /// with [`ClientError::SessionEnded`] once the session is closed or `QUIT` was asked for.
    pub fn submit(&mut self, now: Instant, job: Job) -> Result<JobId, ClientError> {
        if matches!(self.state, State::Closed) || self.quit_requested {
            return Err(ClientError::SessionEnded);
        }
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.push_back((id, job));
        if matches!(self.state, State::Idle) {
            self.next(now);
        }
        Ok(id)
    }

    /// Ends the session with `QUIT` once the queued jobs are done.
    pub fn quit(&mut self, now: Instant) {
        self.quit_requested = true;
        if matches!(self.state, State::Idle) {
            self.next(now);
        }
    }

    /// Feeds bytes read from the socket at `now`, in any split.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Closed => return,
                // Nothing the server sends before the handshake may be read as if it came over
                // TLS (the STARTTLS injection defence, RFC 3207 §6).
                State::TlsHandshake => return,
                _ => {}
            }
            match self.reader.push(&mut bytes) {
                Ok(Some(reply)) => self.on_reply(now, reply),
                Ok(None) => {}
                Err(source) => {
                    let step = self.step();
                    return self.fail_session(ClientError::BadReply { step, source });
                }
            }
        }
    }

    /// Dual mode: the TLS handshake after [`ClientOutput::StartTls`] succeeded.
    pub fn handle_tls_established(&mut self, now: Instant) {
        if matches!(self.state, State::TlsHandshake) {
            self.reader = ReplyReader::new();
            self.state = State::DualModeGreeting;
            self.deadline = Some(now + self.config.reply_timeout);
        }
    }

    /// The connection closed (read EOF, reset, or a failed TLS handshake).
    pub fn handle_closed(&mut self) {
        match self.state {
            State::Closed => {}
            State::Quit => self.close(),
            _ => {
                let step = self.step();
                self.fail_session(ClientError::ConnectionClosed { step });
            }
        }
    }

    /// The clock reached `now`: if the step's timer expired, the session fails.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            let step = self.step();
            self.fail_session(ClientError::Timeout { step });
        }
    }

    /// The next thing the glue must do, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] is due, if a reply is awaited.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The step the session is at.
    pub fn step(&self) -> Step {
        match &self.state {
            State::Banner { .. } => Step::Banner,
            State::StartTls => Step::StartTls,
            State::TlsHandshake => Step::TlsHandshake,
            State::DualModeGreeting => Step::DualModeGreeting,
            State::Ehlo => Step::Ehlo,
            State::Mode => Step::Mode,
            State::Idle => Step::Idle,
            State::Mail(..) => Step::Mail,
            State::Rcpt(..) => Step::Rcpt,
            State::Data(..) => Step::Data,
            State::Message(..) => Step::Message,
            State::Reset => Step::Reset,
            State::Lookup(_, lookup) => lookup.step(),
            State::Quit => Step::Quit,
            State::Closed => Step::Closed,
        }
    }

    /// Ready with nothing in flight and nothing queued.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.jobs.is_empty()
    }

    /// True once [`ClientOutput::Close`] has been emitted.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Bytes buffered from the server (bounded by the reply limits).
    pub fn buffered_len(&self) -> usize {
        self.reader.buffered_len()
    }

    // ---- replies ----

    fn on_reply(&mut self, now: Instant, reply: Reply) {
        let step = self.step();
        if reply.code() == ReplyCode::Terminating && !matches!(self.state, State::Quit) {
            return self.fail_session(ClientError::Refused {
                step,
                code: reply.code(),
                text: reply.last_line().to_owned(),
            });
        }
        let checked = check_reply(step, &reply);
        match mem::replace(&mut self.state, State::Closed) {
            State::Banner { dual_mode_host } => {
                if let Err(err) = checked {
                    return self.fail_session(err);
                }
                match dual_mode_host {
                    Some(host) => {
                        self.send(now, dual_mode_starttls_line(&host), State::StartTls);
                    }
                    None if !announces_dmtp(&reply) => {
                        self.fail_session(unexpected(
                            step,
                            &reply,
                            "banner does not announce DMTPv1",
                        ));
                    }
                    None => self.send_ehlo(now),
                }
            }
            State::StartTls => match checked {
                Ok(()) => {
                    self.state = State::TlsHandshake;
                    self.deadline = None;
                    self.out.push_back(ClientOutput::StartTls);
                }
                Err(err) => self.fail_session(err),
            },
            State::DualModeGreeting => match checked {
                Ok(()) if mode_is_dmtp(reply.last_line()) => self.send_ehlo(now),
                Ok(()) => self.fail_session(unexpected(step, &reply, "no OK DMTPv1 after TLS")),
                Err(err) => self.fail_session(err),
            },
            State::Ehlo => match checked {
                Ok(()) => self.send(now, Command::Mode.to_line(), State::Mode),
                Err(err) => self.fail_session(err),
            },
            State::Mode => match checked {
                Ok(()) if mode_is_dmtp(reply.last_line()) => {
                    self.event(ClientEvent::Ready);
                    self.state = State::Idle;
                    self.next(now);
                }
                Ok(()) => self.fail_session(unexpected(step, &reply, "MODE is not DMTPv1")),
                Err(err) => self.fail_session(err),
            },
            State::Mail(job, delivery) => match checked {
                Ok(()) => {
                    let rcpt = Command::Rcpt {
                        destination: delivery.destination.clone(),
                        fingerprint: delivery.destination_fingerprint,
                    };
                    self.send(now, rcpt.to_line(), State::Rcpt(job, delivery));
                }
                // A refused MAIL leaves no transaction open.
                Err(error) => self.job_failed(now, job, error, false),
            },
            State::Rcpt(job, delivery) => match checked {
                Ok(()) => self.send(now, Command::Data.to_line(), State::Data(job, delivery)),
                Err(error) => self.job_failed(now, job, error, true),
            },
            State::Data(job, delivery) => {
                let commit = checked.and_then(|()| {
                    continue_hash(reply.last_line())
                        .ok_or_else(|| unexpected(step, &reply, "no CONTINUE [hash]"))
                });
                match commit {
                    Ok(commit) => {
                        let mut bytes = delivery.message;
                        bytes.extend_from_slice(b"\r\n");
                        self.state = State::Message(job, commit);
                        self.out.push_back(ClientOutput::Send(bytes));
                        self.deadline = Some(now + self.config.final_reply_timeout);
                    }
                    Err(error) => self.job_failed(now, job, error, true),
                }
            }
            State::Message(job, commit) => match checked {
                Ok(()) => {
                    let txid = ok_bracket(reply.last_line()).and_then(|t| TxId::parse(t).ok());
                    self.event(ClientEvent::Delivered { job, txid, commit });
                    self.state = State::Idle;
                    self.next(now);
                }
                // After the message the server is back between transactions.
                Err(error) => self.job_failed(now, job, error, false),
            },
            State::Reset => match checked {
                Ok(()) => {
                    self.state = State::Idle;
                    self.next(now);
                }
                Err(err) => self.fail_session(err),
            },
            State::Lookup(job, lookup) => {
                let result = checked.and_then(|()| lookup_result(job, &lookup, &reply));
                match result {
                    Ok(event) => self.event(event),
                    Err(error) => self.event(ClientEvent::Failed {
                        job: Some(job),
                        error,
                    }),
                }
                self.state = State::Idle;
                self.next(now);
            }
            State::Quit => self.close(),
            State::Idle => {
                self.state = State::Idle;
                self.fail_session(unexpected(step, &reply, "reply without a command"));
            }
            state @ (State::TlsHandshake | State::Closed) => self.state = state,
        }
    }

    fn send_ehlo(&mut self, now: Instant) {
        let ehlo = Command::Ehlo {
            domain: self.config.ehlo_domain.clone(),
        };
        self.send(now, ehlo.to_line(), State::Ehlo);
    }

    /// Starts the next job, or QUIT, or waits.
    fn next(&mut self, now: Instant) {
        debug_assert!(matches!(self.state, State::Idle));
        match self.jobs.pop_front() {
            Some((job, Job::Deliver(delivery))) => {
                let mail = Command::Mail {
                    origin: delivery.origin.clone(),
                    fingerprint: Some(delivery.origin_fingerprint),
                    size: Some(delivery.message.len() as u64),
                    ret: delivery.ret,
                    data: delivery.data_type,
                };
                self.send(now, mail.to_line(), State::Mail(job, delivery));
            }
            Some((job, Job::Lookup(lookup))) => {
                let line = lookup.command().to_line();
                self.send(now, line, State::Lookup(job, lookup));
            }
            None if self.quit_requested => self.send(now, Command::Quit.to_line(), State::Quit),
            None => self.deadline = None,
        }
    }

    fn send(&mut self, now: Instant, line: Vec<u8>, next: State) {
        self.out.push_back(ClientOutput::Send(line));
        self.state = next;
        self.deadline = Some(now + self.config.reply_timeout);
    }

    /// A transaction step was refused: report it, close the transaction (RSET when one is open
    /// on the server), go on with the next job.
    fn job_failed(&mut self, now: Instant, job: JobId, error: ClientError, reset: bool) {
        self.event(ClientEvent::Failed {
            job: Some(job),
            error,
        });
        if reset {
            self.send(now, Command::Rset.to_line(), State::Reset);
        } else {
            self.state = State::Idle;
            self.next(now);
        }
    }

    /// The session cannot go on: the job in flight and every queued job fail with `error`.
    fn fail_session(&mut self, error: ClientError) {
        let in_flight = match mem::replace(&mut self.state, State::Closed) {
            State::Mail(job, _)
            | State::Rcpt(job, _)
            | State::Data(job, _)
            | State::Message(job, _)
            | State::Lookup(job, _) => Some(job),
            _ => None,
        };
        self.event(ClientEvent::Failed {
            job: None,
            error: error.clone(),
        });
        let queued: Vec<JobId> = self.jobs.drain(..).map(|(id, _)| id).collect();
        for job in in_flight.into_iter().chain(queued) {
            self.event(ClientEvent::Failed {
                job: Some(job),
                error: error.clone(),
            });
        }
        self.close();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.deadline = None;
        self.jobs.clear();
        self.out.push_back(ClientOutput::Close);
    }

    fn event(&mut self, event: ClientEvent) {
        self.out.push_back(ClientOutput::Event(event));
    }
}

fn unexpected(step: Step, reply: &Reply, problem: &'static str) -> ClientError {
    ClientError::Unexpected {
        step,
        code: reply.code(),
        problem,
    }
}

/// §10.1: a whitespace-separated token exactly `DMTPv1` after the host name.
fn announces_dmtp(banner: &Reply) -> bool {
    banner.lines().first().is_some_and(|line| {
        line.split([' ', '\t'])
            .filter(|t| !t.is_empty())
            .skip(1)
            .any(|t| t == "DMTPv1")
    })
}

/// `OK DMTPv1` (the MODE reply and the dual-mode greeting).
fn mode_is_dmtp(text: &str) -> bool {
    let mut tokens = text.split_whitespace();
    tokens.next() == Some("OK")
        && tokens
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("DMTPv1"))
}

/// The hash of `CONTINUE [hash]`.
fn continue_hash(text: &str) -> Option<String> {
    let mut tokens = text.split_whitespace();
    if !tokens.next()?.eq_ignore_ascii_case("CONTINUE") {
        return None;
    }
    let hash = tokens.next()?.strip_prefix('[')?.strip_suffix(']')?;
    (!hash.is_empty()).then(|| hash.to_owned())
}

/// The bracketed value of `OK [value]`.
fn ok_bracket(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("OK")?.trim_start();
    rest.strip_prefix('[')?.strip_suffix(']')
}

fn bracketed(text: &str) -> Option<&str> {
    text.trim().strip_prefix('[')?.strip_suffix(']')
}

fn lookup_result(job: JobId, lookup: &Lookup, reply: &Reply) -> Result<ClientEvent, ClientError> {
    let step = lookup.step();
    let bad = |problem| unexpected(step, reply, problem);
    match lookup {
        Lookup::Sgnt { .. } => {
            let b64 = ok_bracket(reply.last_line()).ok_or_else(|| bad("no OK [signet]"))?;
            let signet = armor::from_base64_line(b64).map_err(|_| bad("signet is not base64"))?;
            Ok(ClientEvent::Signet { job, signet })
        }
        Lookup::Vrfy { .. } => {
            let mut tokens = reply.last_line().split_whitespace();
            let status = match tokens.next() {
                Some(t) if t.eq_ignore_ascii_case("CURRENT") => VrfyStatus::Current,
                Some(t) if t.eq_ignore_ascii_case("UPDATE") => {
                    let fp = tokens
                        .next()
                        .ok_or_else(|| bad("UPDATE without a fingerprint"))?;
                    let fp = bracketed(fp).unwrap_or(fp);
                    VrfyStatus::Update(
                        fp.parse()
                            .map_err(|_| bad("UPDATE fingerprint malformed"))?,
                    )
                }
                _ => return Err(bad("neither CURRENT nor UPDATE")),
            };
            Ok(ClientEvent::Verified { job, status })
        }
        Lookup::Hist { .. } => {
            let Some((last, signets)) = reply.lines().split_last() else {
                return Err(bad("empty HIST reply"));
            };
            if last.trim() != "OK" {
                return Err(bad("HIST reply does not end with OK"));
            }
            let signets = signets
                .iter()
                .map(|line| {
                    let b64 = bracketed(line).ok_or_else(|| bad("HIST line is not [signet]"))?;
                    armor::from_base64_line(b64).map_err(|_| bad("signet is not base64"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ClientEvent::History { job, signets })
        }
    }
}
