//! DMTP replies: SMTP-style `NNN text` / `NNN-text` lines (DIME.md §10.1) with the codes of the
//! draft table (§10.3).

use std::fmt;

use super::ReplyError;

/// Longest reply line, CRLF included: libdime's client reads replies into a 4096-byte buffer
/// (DIME.md §10.1), and a signet travels on one line.
pub const REPLY_LINE_MAX: usize = 4096;
/// Longest whole reply (a `HIST` answer is one line per signet of a chain of custody).
pub const REPLY_MAX: usize = 1024 * 1024;

macro_rules! reply_codes {
    ($($(#[$doc:meta])* $name:ident = $num:literal,)*) => {
        /// A reply code: the draft table of DIME.md §10.3, plus `452` and `552` (taken from SMTP
        /// for storage failures and size refusals, which the draft table lacks). A code outside
        /// the table that a foreign server sends is [`ReplyCode::Other`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ReplyCode {
            $($(#[$doc])* $name,)*
            /// Any other code from 100 to 599 (never one of the named ones).
            Other(u16),
        }

        impl ReplyCode {
            /// Every named code, in table order.
            pub const TABLE: &[ReplyCode] = &[$(ReplyCode::$name,)*];

            /// The three-digit number.
            pub fn number(self) -> u16 {
                match self {
                    $(ReplyCode::$name => $num,)*
                    ReplyCode::Other(n) => n,
                }
            }

            /// The code for `n`, if `n` is from 100 to 599.
            pub fn from_number(n: u16) -> Option<ReplyCode> {
                Some(match n {
                    $($num => ReplyCode::$name,)*
                    100..=599 => ReplyCode::Other(n),
                    _ => return None,
                })
            }
        }
    };
}

reply_codes! {
    /// 214: help text.
    Help = 214,
    /// 220: the banner.
    Ready = 220,
    /// 221: closing, after QUIT.
    Closing = 221,
    /// 250: OK.
    Ok = 250,
    /// 254: `ACCEPTED=fp`.
    Accepted = 254,
    /// 255: `DUPLICATE=fp`.
    Duplicate = 255,
    /// 270: org signet transfer OK.
    OrgSignet = 270,
    /// 271: org signet current.
    OrgSignetCurrent = 271,
    /// 280: user signet transfer OK.
    UserSignet = 280,
    /// 281: user signet current.
    UserSignetCurrent = 281,
    /// 290: user signet history OK.
    History = 290,
    /// 291: user signet current (HIST).
    HistoryCurrent = 291,
    /// 354: ready to receive the message.
    StartMessage = 354,
    /// 421: abnormal termination; the server closes.
    Terminating = 421,
    /// 431: destination limits exceeded.
    DestinationLimits = 431,
    /// 450: access denied.
    AccessDenied = 450,
    /// 451: data corrupted (also: local error, try again).
    DataCorrupted = 451,
    /// 452: insufficient storage (SMTP's code; not in the draft table).
    InsufficientStorage = 452,
    /// 470: origin signet unavailable, temporarily.
    OriginSignetUnavailable = 470,
    /// 476: signet temporarily unavailable.
    SignetUnavailable = 476,
    /// 500: command syntax error.
    CommandSyntax = 500,
    /// 501: argument syntax error.
    ArgumentSyntax = 501,
    /// 502: command disabled.
    CommandDisabled = 502,
    /// 503: bad sequence of commands.
    BadSequence = 503,
    /// 510: invalid recipient.
    InvalidRecipient = 510,
    /// 552: message too large (SMTP's code; not in the draft table).
    TooLarge = 552,
    /// 570: origin signet unavailable, permanently.
    OriginSignetMissing = 570,
    /// 575: invalid origin signet.
    InvalidOriginSignet = 575,
    /// 576: invalid destination signet.
    InvalidDestinationSignet = 576,
    /// 578: invalid origin signature.
    InvalidOriginSignature = 578,
    /// 586: invalid recipient signet.
    InvalidRecipientSignet = 586,
}

/// The class of a reply, from its first digit; the only thing libdime's client checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 1xx (unused by DMTP).
    Preliminary,
    /// 2xx: success.
    Positive,
    /// 3xx: go on (DATA).
    Intermediate,
    /// 4xx: failed, may succeed later.
    Transient,
    /// 5xx: failed, will fail again.
    Permanent,
}

impl ReplyCode {
    /// The class of this code.
    pub fn class(self) -> ReplyClass {
        match self.number() / 100 {
            1 => ReplyClass::Preliminary,
            2 => ReplyClass::Positive,
            3 => ReplyClass::Intermediate,
            4 => ReplyClass::Transient,
            _ => ReplyClass::Permanent,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// One reply: a code and one or more lines of text (no CR, LF or other control characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    lines: Vec<String>,
}

fn text_ok(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\t')
}

impl Reply {
    /// A one-line reply. Control characters in `text` become spaces and the line is cut to fit
    /// [`REPLY_LINE_MAX`], so a reply built from a peer's words cannot break the framing.
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![sanitize(text.into())],
        }
    }

    /// A reply of several lines, each sanitised as [`Reply::new`] does; an empty list is one
    /// empty line.
    pub fn multi(code: ReplyCode, lines: Vec<String>) -> Reply {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply { code, lines }
    }

    /// A reply whose lines must be sent exactly (signets): refused instead of altered.
    pub fn exact(code: ReplyCode, lines: Vec<String>) -> Result<Reply, ReplyError> {
        if lines.is_empty() {
            return Err(ReplyError::Incomplete);
        }
        let mut total = 0;
        for line in &lines {
            if !text_ok(line) {
                return Err(ReplyError::BadText);
            }
            if line.len() + 6 > REPLY_LINE_MAX {
                return Err(ReplyError::LineTooLong {
                    max: REPLY_LINE_MAX,
                });
            }
            total += line.len() + 6;
        }
        if total > REPLY_MAX {
            return Err(ReplyError::TooLong { max: REPLY_MAX });
        }
        Ok(Reply { code, lines })
    }

    /// The code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The lines' text, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The last line's text (where DMTP puts `OK`, `CONTINUE [hash]`, `CURRENT`…).
    pub fn last_line(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    /// The reply on the wire: `NNN-text` lines, then `NNN text`, each ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            if line.is_empty() && i == last {
                out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            } else {
                out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes());
            }
        }
        out
    }

    /// Parses exactly one reply from `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Reply, ReplyError> {
        let mut reader = ReplyReader::new();
        let mut input = bytes;
        match reader.push(&mut input)? {
            Some(reply) if input.is_empty() => Ok(reply),
            Some(_) => Err(ReplyError::Trailing(input.len())),
            None => Err(ReplyError::Incomplete),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

fn sanitize(text: String) -> String {
    let mut text = if text_ok(&text) {
        text
    } else {
        text.chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect()
    };
    let max = REPLY_LINE_MAX - 6;
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Frames replies from a byte stream in any split; each line at most [`REPLY_LINE_MAX`] and each
/// reply at most [`REPLY_MAX`], so a hostile server cannot make it buffer more. After an error
/// the reader must not be used again (the connection is beyond repair).
#[derive(Debug, Default)]
pub struct ReplyReader {
    line: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
    total: usize,
}

impl ReplyReader {
    /// An empty reader.
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// Bytes buffered (partial line and lines of an unfinished reply).
    pub fn buffered_len(&self) -> usize {
        self.line.len() + self.total
    }

    /// Consumes input up to the end of one reply and returns it; `Ok(None)` when `input` ran
    /// out first (everything was consumed and is kept).
    pub fn push(&mut self, input: &mut &[u8]) -> Result<Option<Reply>, ReplyError> {
        while !input.is_empty() {
            let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
                Some(at) => (&input[..=at], true),
                None => (*input, false),
            };
            if self.line.len() + chunk.len() > REPLY_LINE_MAX {
                return Err(ReplyError::LineTooLong {
                    max: REPLY_LINE_MAX,
                });
            }
            self.line.extend_from_slice(chunk);
            *input = &input[chunk.len()..];
            if !complete {
                return Ok(None);
            }
            let line = std::mem::take(&mut self.line);
            if let Some(reply) = self.line_done(&line)? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let body = line.strip_suffix(b"\r\n").ok_or(ReplyError::NoCrlf)?;
        if body.len() < 3
            || !body[..3].iter().all(u8::is_ascii_digit)
            || !(b'1'..=b'5').contains(&body[0])
        {
            return Err(ReplyError::BadCode);
        }
        let code = u16::from(body[0] - b'0') * 100
            + u16::from(body[1] - b'0') * 10
            + u16::from(body[2] - b'0');
        let last = match body.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::BadSeparator),
        };
        let text = std::str::from_utf8(body.get(4..).unwrap_or_default())
            .map_err(|_| ReplyError::BadText)?;
        if !text_ok(text) {
            return Err(ReplyError::BadText);
        }
        match self.code {
            Some(first) if first != code => {
                return Err(ReplyError::MixedCodes { first, got: code });
            }
            _ => self.code = Some(code),
        }
        self.total += line.len();
        if self.total > REPLY_MAX {
            return Err(ReplyError::TooLong { max: REPLY_MAX });
        }
        self.lines.push(text.to_owned());
        if !last {
            return Ok(None);
        }
        self.total = 0;
        self.code = None;
        let code = ReplyCode::from_number(code).ok_or(ReplyError::BadCode)?;
        Ok(Some(Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}
