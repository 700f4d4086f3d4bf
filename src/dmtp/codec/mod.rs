//! The DMTP wire codec (DIME.md §10.1-§10.3): commands and replies, parsed from and written to
//! CRLF-terminated lines. Pure functions over bytes; the session machines in `server` and
//! `client` frame lines and call these.
//!
//! * [`Command::parse`] reads one command line in either syntax of §10.2 (the libdime client's
//!   `MAIL FROM: <d> [fp] SIZE=n` and the draft parser's `MAIL FROM=<d> FINGERPRINT=[fp]`);
//!   [`Command::to_line`] writes the client's form (see the `dmtp` module docs for why).
//! * [`Reply`] is a code from the draft table ([`ReplyCode`]) and one or more text lines;
//!   [`ReplyReader`] frames replies from a byte stream in any split.
//! * [`parse_dual_mode_starttls`] is the piece the SMTP listener needs for dual mode (§10.1).

mod command;
mod names;
mod reply;
#[cfg(test)]
mod tests;

pub use command::{
    Command, DataType, HistRange, ReturnType, Verb, commit_hash, dual_mode_starttls_line,
    parse_dual_mode_starttls,
};
pub use names::{DOMAIN_MAX, Domain, LOCAL_PART_MAX, Mailbox, SignetName, TXID_MAX, TxId};
pub use reply::{REPLY_LINE_MAX, REPLY_MAX, Reply, ReplyClass, ReplyCode, ReplyReader};

/// Longest command line, CRLF included (DIME.md §10.1: the formatter's limit, as RFC 5321's).
pub const COMMAND_LINE_MAX: usize = 512;

/// Why a name (domain, mailbox, transaction id) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing where a name belongs.
    #[error("empty name")]
    Empty,
    /// Longer than the protocol allows.
    #[error("name too long: {got} characters, at most {max}")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length seen.
        got: usize,
    },
    /// Not an LDH domain name.
    #[error("not a domain name")]
    BadDomain,
    /// Not `dot-atom@domain`.
    #[error("not a mailbox (local@domain with a dot-atom local part)")]
    BadMailbox,
    /// Not printable ASCII without brackets.
    #[error("not a transaction id")]
    BadTxId,
}

/// Why a command line was refused; [`CommandError::reply_code`] gives the table's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The line does not end in CRLF (a bare LF ends it).
    #[error("command line must end with CRLF")]
    NoCrlf,
    /// A CR inside the line.
    #[error("bare CR in command line")]
    BareCr,
    /// Over [`COMMAND_LINE_MAX`].
    #[error("command line too long: {got} bytes, at most {max}")]
    TooLong {
        /// The limit, CRLF included.
        max: usize,
        /// Bytes seen (at least).
        got: usize,
    },
    /// Bytes outside printable ASCII, space and tab.
    #[error("command line holds bytes outside printable ASCII")]
    NotAscii,
    /// An empty line.
    #[error("empty command line")]
    Empty,
    /// A verb DMTP does not have.
    #[error("unknown command {0:?}")]
    UnknownVerb(String),
    /// The arguments do not fit the verb's grammar.
    #[error("{verb}: {problem}")]
    Syntax {
        /// The command.
        verb: Verb,
        /// What is wrong, for the reply text.
        problem: &'static str,
    },
    /// A name argument is malformed.
    #[error("{verb}: {source}")]
    Name {
        /// The command.
        verb: Verb,
        /// What is wrong with the name.
        source: NameError,
    },
    /// A bracketed value where a fingerprint belongs is not 86 characters of base64 (libdime's
    /// client sends the literal placeholder `[fingerprint]`; it lands here).
    #[error("{verb}: not a signet fingerprint")]
    Fingerprint {
        /// The command.
        verb: Verb,
    },
}

impl CommandError {
    /// `500` for lines that are not commands, `501` for bad arguments (DIME.md §10.3).
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            CommandError::Syntax { .. }
            | CommandError::Name { .. }
            | CommandError::Fingerprint { .. } => ReplyCode::ArgumentSyntax,
            _ => ReplyCode::CommandSyntax,
        }
    }
}

/// Why a reply could not be parsed or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line does not start with three digits from 100 to 599.
    #[error("reply line does not start with a reply code")]
    BadCode,
    /// The fourth byte is neither space, `-` nor the end of the line.
    #[error("reply code not followed by space or '-'")]
    BadSeparator,
    /// A continuation line carries another code than the first line.
    #[error("multi-line reply mixes codes {first} and {got}")]
    MixedCodes {
        /// Code of the first line.
        first: u16,
        /// Code of the offending line.
        got: u16,
    },
    /// Control characters or invalid UTF-8 in the text.
    #[error("reply text holds control characters or invalid UTF-8")]
    BadText,
    /// A line over [`REPLY_LINE_MAX`].
    #[error("reply line too long (at most {max} bytes)")]
    LineTooLong {
        /// The limit, CRLF included.
        max: usize,
    },
    /// A whole reply over [`REPLY_MAX`].
    #[error("reply too long (at most {max} bytes)")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A line not ending in CRLF.
    #[error("reply line must end with CRLF")]
    NoCrlf,
    /// Input ended inside a reply, or a reply with no line.
    #[error("incomplete reply")]
    Incomplete,
    /// Bytes after the end of the reply (whole-buffer parsing only).
    #[error("{0} bytes after the end of the reply")]
    Trailing(usize),
}
