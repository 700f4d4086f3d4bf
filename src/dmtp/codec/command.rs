//! DMTP commands (DIME.md §10.2): one enum, a parser that accepts both syntaxes and a formatter
//! that writes the libdime client's.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha512};

use super::names::{Domain, Mailbox, SignetName};
use super::{COMMAND_LINE_MAX, CommandError, NameError};
use crate::dime::Fingerprint;

/// The verbs of DMTP (plus `STARTTLS`, which only the dual-mode SMTP listener reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `EHLO`
    Ehlo,
    /// `HELO`
    Helo,
    /// `MODE`
    Mode,
    /// `MAIL`
    Mail,
    /// `RCPT`
    Rcpt,
    /// `DATA`
    Data,
    /// `SGNT`
    Sgnt,
    /// `VRFY`
    Vrfy,
    /// `HIST`
    Hist,
    /// `STATS`
    Stats,
    /// `NOOP`
    Noop,
    /// `RSET`
    Rset,
    /// `HELP`
    Help,
    /// `QUIT`
    Quit,
    /// `STARTTLS` (dual mode, on the SMTP listener only)
    StartTls,
}

impl Verb {
    const ALL: [Verb; 15] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::Mode,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Sgnt,
        Verb::Vrfy,
        Verb::Hist,
        Verb::Stats,
        Verb::Noop,
        Verb::Rset,
        Verb::Help,
        Verb::Quit,
        Verb::StartTls,
    ];

    /// The verb as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Mode => "MODE",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Sgnt => "SGNT",
            Verb::Vrfy => "VRFY",
            Verb::Hist => "HIST",
            Verb::Stats => "STATS",
            Verb::Noop => "NOOP",
            Verb::Rset => "RSET",
            Verb::Help => "HELP",
            Verb::Quit => "QUIT",
            Verb::StartTls => "STARTTLS",
        }
    }

    fn from_word(word: &str) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `MAIL … RETURN=`: how much of a bounced message the origin wants back (§10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnType {
    /// `RETURN=FULL`
    Full,
    /// `RETURN=DISPLAY`
    Display,
    /// `RETURN=HEADER`
    Header,
}

/// `MAIL … DATA=`: the body's declared transfer width (§10.2; the body is binary either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// `DATA=7BIT`
    SevenBit,
    /// `DATA=8BIT`
    EightBit,
}

/// Which part of a chain of custody `HIST` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistRange {
    /// The whole chain.
    All,
    /// From this signet to the current one.
    From(Fingerprint),
    /// From the first signet to the second, both included.
    Between(Fingerprint, Fingerprint),
}

/// One DMTP command. Every value formats to a line of at most 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO <domain>`
    Ehlo {
        /// The client's (origin's) domain.
        domain: Domain,
    },
    /// `HELO <domain>`
    Helo {
        /// The client's (origin's) domain.
        domain: Domain,
    },
    /// `MODE`
    Mode,
    /// `MAIL FROM: <origin> [fp] SIZE=n [RETURN=…] [DATA=…]`
    Mail {
        /// The origin organisation.
        origin: Domain,
        /// Crypto fingerprint of the origin's org signet.
        fingerprint: Option<Fingerprint>,
        /// Exact length of the message in octets.
        size: Option<u64>,
        /// `RETURN=`
        ret: Option<ReturnType>,
        /// `DATA=`
        data: Option<DataType>,
    },
    /// `RCPT TO: <destination> [fp]`
    Rcpt {
        /// The destination organisation (a domain only: the mailbox is sealed in the message).
        destination: Domain,
        /// Crypto fingerprint of the destination org signet the message was sealed to.
        fingerprint: Option<Fingerprint>,
    },
    /// `DATA` (an argument in brackets is read and dropped: libdime sends a placeholder).
    Data,
    /// `SGNT <name> [fp]`
    Sgnt {
        /// Whose signet.
        name: SignetName,
        /// Which signet, if not the current one.
        fingerprint: Option<Fingerprint>,
    },
    /// `VRFY <name> [fp]`
    Vrfy {
        /// Whose signet.
        name: SignetName,
        /// The signet the client holds.
        fingerprint: Fingerprint,
    },
    /// `HIST <name> [start] [end]`
    Hist {
        /// Whose chain of custody.
        name: SignetName,
        /// Which part of it.
        range: HistRange,
    },
    /// `STATS` (a nonce argument is read and dropped).
    Stats,
    /// `NOOP` (arguments are read and dropped).
    Noop,
    /// `RSET`
    Rset,
    /// `HELP`
    Help,
    /// `QUIT`
    Quit,
}

impl Command {
    /// The verb of this command.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Ehlo { .. } => Verb::Ehlo,
            Command::Helo { .. } => Verb::Helo,
            Command::Mode => Verb::Mode,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Sgnt { .. } => Verb::Sgnt,
            Command::Vrfy { .. } => Verb::Vrfy,
            Command::Hist { .. } => Verb::Hist,
            Command::Stats => Verb::Stats,
            Command::Noop => Verb::Noop,
            Command::Rset => Verb::Rset,
            Command::Help => Verb::Help,
            Command::Quit => Verb::Quit,
        }
    }

    /// Parses one command line, CRLF included.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let text = check_line(line)?;
        let (word, rest) = split_verb(text);
        let verb = match Verb::from_word(word) {
            Some(Verb::StartTls) | None => {
                return Err(CommandError::UnknownVerb(word.chars().take(16).collect()));
            }
            Some(verb) => verb,
        };
        let tokens = tokenize(rest).map_err(|problem| CommandError::Syntax { verb, problem })?;
        parse_args(verb, &tokens)
    }

    /// The canonical line, CRLF included: the libdime client's syntax (DIME.md §10.2).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = self.to_string();
        debug_assert!(line.len() + 2 <= COMMAND_LINE_MAX, "{line}");
        line.push_str("\r\n");
        line.into_bytes()
    }
}

impl fmt::Display for Command {
    /// The canonical line without CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo { domain } => write!(f, "EHLO <{domain}>"),
            Command::Helo { domain } => write!(f, "HELO <{domain}>"),
            Command::Mail {
                origin,
                fingerprint,
                size,
                ret,
                data,
            } => {
                write!(f, "MAIL FROM: <{origin}>")?;
                if let Some(fp) = fingerprint {
                    write!(f, " [{fp}]")?;
                }
                if let Some(size) = size {
                    write!(f, " SIZE={size}")?;
                }
                match ret {
                    Some(ReturnType::Full) => f.write_str(" RETURN=FULL")?,
                    Some(ReturnType::Display) => f.write_str(" RETURN=DISPLAY")?,
                    Some(ReturnType::Header) => f.write_str(" RETURN=HEADER")?,
                    None => {}
                }
                match data {
                    Some(DataType::SevenBit) => f.write_str(" DATA=7BIT"),
                    Some(DataType::EightBit) => f.write_str(" DATA=8BIT"),
                    None => Ok(()),
                }
            }
            Command::Rcpt {
                destination,
                fingerprint,
            } => {
                write!(f, "RCPT TO: <{destination}>")?;
                match fingerprint {
                    Some(fp) => write!(f, " [{fp}]"),
                    None => Ok(()),
                }
            }
            Command::Sgnt { name, fingerprint } => {
                write!(f, "SGNT <{name}>")?;
                match fingerprint {
                    Some(fp) => write!(f, " [{fp}]"),
                    None => Ok(()),
                }
            }
            Command::Vrfy { name, fingerprint } => write!(f, "VRFY <{name}> [{fingerprint}]"),
            Command::Hist { name, range } => match range {
                HistRange::All => write!(f, "HIST <{name}>"),
                HistRange::From(start) => write!(f, "HIST <{name}> [{start}]"),
                HistRange::Between(start, end) => write!(f, "HIST <{name}> [{start}] [{end}]"),
            },
            other => f.write_str(other.verb().as_str()),
        }
    }
}

/// The `[hash]` of `354 CONTINUE [hash]`: unpadded base64 of SHA-512 over the canonical MAIL and
/// RCPT lines (CRLF included) of the transaction, as the server understood them. Both sides can
/// compute it; it names the envelope the body is committed to (the spec leaves the hash
/// undefined, §14).
pub fn commit_hash(mail: &Command, rcpt: &Command) -> String {
    let mut hash = Sha512::new();
    hash.update(mail.to_line());
    hash.update(rcpt.to_line());
    STANDARD_NO_PAD.encode(hash.finalize())
}

/// The SMTP-side command that asks for dual mode (§10.1): `STARTTLS <host> MODE=DMTPv1`.
pub fn dual_mode_starttls_line(host: &Domain) -> Vec<u8> {
    format!("STARTTLS <{host}> MODE=DMTPv1\r\n").into_bytes()
}

/// For the SMTP listener (§10.1): reads a line (CRLF optional) and says whether it is a DMTP
/// dual-mode `STARTTLS`. `None`: not a STARTTLS asking for DMTP (plain `STARTTLS`, `MODE=SMTP`,
/// any other verb): SMTP handles it. `Some(Ok(host))`: answer 2xx, run TLS, then start
/// [`crate::dmtp::ServerSession::after_dual_mode_upgrade`]. `Some(Err(_))`: a DMTP request with a
/// malformed host or extra arguments: answer `501`.
///
/// Accepted forms: `STARTTLS <host> MODE=DMTPv1` (libdime's client), `STARTTLS HOST=<host>
/// MODE=DMTP` (libdime's draft formatter, which writes `DMTP`), mode and keys case-insensitive.
pub fn parse_dual_mode_starttls(line: &[u8]) -> Option<Result<Domain, CommandError>> {
    let line = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    if line.len() + 2 > COMMAND_LINE_MAX {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let (word, rest) = split_verb(text);
    if !word.eq_ignore_ascii_case("STARTTLS") {
        return None;
    }
    let tokens = tokenize(rest).ok()?;
    let verb = Verb::StartTls;
    let mut host = None;
    let mut dmtp = false;
    for token in &tokens {
        match token {
            Token::Keyed {
                key,
                value: Value::Plain(mode),
                ..
            } if key.eq_ignore_ascii_case("MODE") => {
                dmtp = mode.eq_ignore_ascii_case("DMTPv1") || mode.eq_ignore_ascii_case("DMTP");
            }
            Token::Keyed { key, value, .. } if key.eq_ignore_ascii_case("HOST") => {
                host = Some(value.text());
            }
            Token::Bare(Value::Angle(h) | Value::Plain(h)) if host.is_none() => host = Some(h),
            _ => {
                return dmtp_requested(&tokens).then_some(Err(CommandError::Syntax {
                    verb,
                    problem: "unexpected STARTTLS argument",
                }));
            }
        }
    }
    if !dmtp {
        return None;
    }
    Some(match host {
        None => Err(CommandError::Syntax {
            verb,
            problem: "STARTTLS MODE=DMTPv1 needs the DX host name",
        }),
        Some(h) => Domain::parse(h).map_err(|source| CommandError::Name { verb, source }),
    })
}

fn dmtp_requested(tokens: &[Token<'_>]) -> bool {
    tokens.iter().any(|t| {
        matches!(t, Token::Keyed { key, value: Value::Plain(m), .. }
            if key.eq_ignore_ascii_case("MODE")
                && (m.eq_ignore_ascii_case("DMTPv1") || m.eq_ignore_ascii_case("DMTP")))
    })
}

/// Framing checks shared by every command: CRLF end, no other CR, printable ASCII, length.
fn check_line(line: &[u8]) -> Result<&str, CommandError> {
    if line.len() > COMMAND_LINE_MAX {
        return Err(CommandError::TooLong {
            max: COMMAND_LINE_MAX,
            got: line.len(),
        });
    }
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(CommandError::NoCrlf);
    };
    if body.contains(&b'\r') {
        return Err(CommandError::BareCr);
    }
    if body.contains(&b'\n') {
        return Err(CommandError::NoCrlf);
    }
    if !body
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(CommandError::NotAscii);
    }
    // Checked: ASCII only.
    let text = std::str::from_utf8(body).map_err(|_| CommandError::NotAscii)?;
    if text.trim().is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(text)
}

fn split_verb(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    match text.find([' ', '\t']) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    }
}

/// An argument value: bare, in angle brackets or in square brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Plain(&'a str),
    Angle(&'a str),
    Square(&'a str),
}

impl<'a> Value<'a> {
    fn text(self) -> &'a str {
        match self {
            Value::Plain(t) | Value::Angle(t) | Value::Square(t) => t,
        }
    }
}

/// One argument: a bare value, or `KEY=value` / `KEY:value` (also with the value after spaces,
/// as in `FROM: <x>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Bare(Value<'a>),
    Keyed { key: &'a str, value: Value<'a> },
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, &'static str> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    // A `KEY:` or `KEY=` whose value comes after whitespace.
    let mut pending_key: Option<&str> = None;
    let mut i = 0;
    let is_ws = |b: u8| b == b' ' || b == b'\t';
    while i < bytes.len() {
        if is_ws(bytes[i]) {
            i += 1;
            continue;
        }
        let value = if bytes[i] == b'<' || bytes[i] == b'[' {
            let (value, next) = bracketed(text, i)?;
            i = next;
            value
        } else {
            let start = i;
            while i < bytes.len() && !is_ws(bytes[i]) && bytes[i] != b'<' && bytes[i] != b'[' {
                i += 1;
            }
            let word = &text[start..i];
            let split = word
                .find('=')
                .map(|at| (at, 1))
                .or_else(|| word.ends_with(':').then(|| (word.len() - 1, 1)));
            if let Some((at, sep)) = split {
                if pending_key.is_some() {
                    return Err("parameter where a value belongs");
                }
                let key = &word[..at];
                let rest = &word[at + sep..];
                if key.is_empty() {
                    return Err("parameter without a name");
                }
                if !rest.is_empty() {
                    if i < bytes.len() && !is_ws(bytes[i]) {
                        return Err("junk before a bracket");
                    }
                    tokens.push(Token::Keyed {
                        key,
                        value: Value::Plain(rest),
                    });
                } else if i < bytes.len() && !is_ws(bytes[i]) {
                    let (value, next) = bracketed(text, i)?;
                    i = next;
                    tokens.push(Token::Keyed { key, value });
                } else {
                    pending_key = Some(key);
                }
                continue;
            }
            if i < bytes.len() && !is_ws(bytes[i]) {
                return Err("junk before a bracket");
            }
            Value::Plain(word)
        };
        tokens.push(match pending_key.take() {
            Some(key) => Token::Keyed { key, value },
            None => Token::Bare(value),
        });
    }
    if pending_key.is_some() {
        return Err("parameter without a value");
    }
    Ok(tokens)
}

/// Reads `<…>` or `[…]` starting at `at`; the closing bracket must end the token.
fn bracketed(text: &str, at: usize) -> Result<(Value<'_>, usize), &'static str> {
    let bytes = text.as_bytes();
    let close = if bytes[at] == b'<' { b'>' } else { b']' };
    let start = at + 1;
    let Some(len) = bytes[start..].iter().position(|&b| b == close) else {
        return Err("unclosed bracket");
    };
    let inner = &text[start..start + len];
    if inner.contains([' ', '\t', '<', '>', '[', ']']) {
        return Err("space or bracket inside brackets");
    }
    let next = start + len + 1;
    if next < bytes.len() && bytes[next] != b' ' && bytes[next] != b'\t' {
        return Err("junk after a bracket");
    }
    let value = if close == b'>' {
        Value::Angle(inner)
    } else {
        Value::Square(inner)
    };
    Ok((value, next))
}

fn parse_args(verb: Verb, tokens: &[Token<'_>]) -> Result<Command, CommandError> {
    let syntax = |problem| CommandError::Syntax { verb, problem };
    let name_err = |source: NameError| CommandError::Name { verb, source };
    let fingerprint = |text: &str| {
        text.parse::<Fingerprint>()
            .map_err(|_| CommandError::Fingerprint { verb })
    };
    let key_is = |key: &str, want: &str| key.eq_ignore_ascii_case(want);
    match verb {
        Verb::Ehlo | Verb::Helo => {
            let host = match tokens {
                [Token::Bare(Value::Plain(h) | Value::Angle(h))] => *h,
                [
                    Token::Keyed {
                        key,
                        value: Value::Plain(h) | Value::Angle(h),
                    },
                ] if key_is(key, "HOST") => *h,
                [] => return Err(syntax("needs the client's domain")),
                _ => return Err(syntax("takes one domain")),
            };
            let domain = Domain::parse(host).map_err(name_err)?;
            Ok(if verb == Verb::Ehlo {
                Command::Ehlo { domain }
            } else {
                Command::Helo { domain }
            })
        }
        Verb::Mode | Verb::Rset | Verb::Help | Verb::Quit => match tokens {
            [] => Ok(match verb {
                Verb::Mode => Command::Mode,
                Verb::Rset => Command::Rset,
                Verb::Help => Command::Help,
                _ => Command::Quit,
            }),
            _ => Err(syntax("takes no arguments")),
        },
        Verb::Noop => Ok(Command::Noop),
        Verb::Data => match tokens {
            [] | [Token::Bare(Value::Square(_))] => Ok(Command::Data),
            _ => Err(syntax("takes no arguments")),
        },
        Verb::Stats => match tokens {
            [] | [Token::Bare(Value::Square(_))] => Ok(Command::Stats),
            _ => Err(syntax("takes at most a [nonce]")),
        },
        Verb::Mail | Verb::Rcpt => {
            let (path_key, what) = if verb == Verb::Mail {
                ("FROM", "MAIL needs FROM: <origin domain>")
            } else {
                ("TO", "RCPT needs TO: <destination domain>")
            };
            let (domain, rest) = match tokens.split_first() {
                Some((
                    Token::Keyed {
                        key,
                        value: Value::Angle(d),
                    },
                    rest,
                )) if key_is(key, path_key) => (Domain::parse(d).map_err(name_err)?, rest),
                _ => return Err(syntax(what)),
            };
            let mut fp = None;
            let mut size = None;
            let mut ret = None;
            let mut data = None;
            for (index, token) in rest.iter().enumerate() {
                match *token {
                    Token::Bare(Value::Square(f)) if index == 0 => {
                        fp = Some(fingerprint(f)?);
                    }
                    Token::Keyed {
                        key,
                        value: Value::Square(f),
                    } if key_is(key, "FINGERPRINT") => {
                        if fp.replace(fingerprint(f)?).is_some() {
                            return Err(syntax("fingerprint given twice"));
                        }
                    }
                    Token::Keyed {
                        key,
                        value: Value::Plain(n),
                    } if verb == Verb::Mail && key_is(key, "SIZE") => {
                        if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
                            return Err(syntax("SIZE must be a decimal number"));
                        }
                        let n = n
                            .parse()
                            .map_err(|_| syntax("SIZE must be a decimal number"))?;
                        if size.replace(n).is_some() {
                            return Err(syntax("SIZE given twice"));
                        }
                    }
                    Token::Keyed {
                        key,
                        value: Value::Plain(v),
                    } if verb == Verb::Mail && key_is(key, "RETURN") => {
                        let value = match v.to_ascii_uppercase().as_str() {
                            "FULL" => ReturnType::Full,
                            "DISPLAY" => ReturnType::Display,
                            "HEADER" => ReturnType::Header,
                            _ => return Err(syntax("RETURN must be FULL, DISPLAY or HEADER")),
                        };
                        if ret.replace(value).is_some() {
                            return Err(syntax("RETURN given twice"));
                        }
                    }
                    Token::Keyed {
                        key,
                        value: Value::Plain(v),
                    } if verb == Verb::Mail && key_is(key, "DATA") => {
                        let value = match v.to_ascii_uppercase().as_str() {
                            "7BIT" => DataType::SevenBit,
                            "8BIT" => DataType::EightBit,
                            _ => return Err(syntax("DATA must be 7BIT or 8BIT")),
                        };
                        if data.replace(value).is_some() {
                            return Err(syntax("DATA given twice"));
                        }
                    }
                    _ => return Err(syntax("unknown or misplaced parameter")),
                }
            }
            Ok(if verb == Verb::Mail {
                Command::Mail {
                    origin: domain,
                    fingerprint: fp,
                    size,
                    ret,
                    data,
                }
            } else {
                Command::Rcpt {
                    destination: domain,
                    fingerprint: fp,
                }
            })
        }
        Verb::Sgnt | Verb::Vrfy | Verb::Hist => {
            let mut name = None;
            let mut fps: Vec<Option<Fingerprint>> = Vec::new();
            // Keyed fingerprints: FINGERPRINT= (SGNT, VRFY), START= and STOP= (HIST).
            let mut keyed: [Option<Fingerprint>; 2] = [None, None];
            for token in tokens {
                match *token {
                    Token::Bare(Value::Angle(n) | Value::Plain(n)) if name.is_none() => {
                        name = Some(SignetName::parse(n).map_err(name_err)?);
                    }
                    Token::Bare(Value::Square(f)) if name.is_some() => {
                        fps.push(Some(fingerprint(f)?));
                    }
                    Token::Keyed {
                        key,
                        value: Value::Angle(n) | Value::Plain(n),
                    } if name.is_none() && key_is(key, "USER") => {
                        name = Some(SignetName::User(Mailbox::parse(n).map_err(name_err)?));
                    }
                    Token::Keyed {
                        key,
                        value: Value::Angle(n) | Value::Plain(n),
                    } if name.is_none() && key_is(key, "DOMAIN") => {
                        name = Some(SignetName::Org(Domain::parse(n).map_err(name_err)?));
                    }
                    Token::Keyed {
                        key,
                        value: Value::Square(f),
                    } => {
                        let slot = match verb {
                            Verb::Hist if key_is(key, "START") => 0,
                            Verb::Hist if key_is(key, "STOP") => 1,
                            Verb::Sgnt | Verb::Vrfy if key_is(key, "FINGERPRINT") => 0,
                            _ => return Err(syntax("unknown parameter")),
                        };
                        if keyed[slot].replace(fingerprint(f)?).is_some() {
                            return Err(syntax("fingerprint given twice"));
                        }
                    }
                    _ => return Err(syntax("unknown or misplaced argument")),
                }
            }
            let Some(name) = name else {
                return Err(syntax("needs a signet name (domain or mailbox)"));
            };
            if !fps.is_empty() && keyed.iter().any(Option::is_some) {
                return Err(syntax("mixes the two argument syntaxes"));
            }
            if fps.is_empty() {
                fps = keyed.to_vec();
                while fps.last() == Some(&None) {
                    fps.pop();
                }
            }
            match verb {
                Verb::Sgnt => match fps.as_slice() {
                    [] => Ok(Command::Sgnt {
                        name,
                        fingerprint: None,
                    }),
                    [fp] => Ok(Command::Sgnt {
                        name,
                        fingerprint: *fp,
                    }),
                    _ => Err(syntax("takes at most one fingerprint")),
                },
                Verb::Vrfy => match fps.as_slice() {
                    [Some(fp)] => Ok(Command::Vrfy {
                        name,
                        fingerprint: *fp,
                    }),
                    [] => Err(syntax("needs the fingerprint to verify")),
                    _ => Err(syntax("takes one fingerprint")),
                },
                _ => match fps.as_slice() {
                    [] => Ok(Command::Hist {
                        name,
                        range: HistRange::All,
                    }),
                    [Some(start)] => Ok(Command::Hist {
                        name,
                        range: HistRange::From(*start),
                    }),
                    [Some(start), Some(end)] => Ok(Command::Hist {
                        name,
                        range: HistRange::Between(*start, *end),
                    }),
                    [None, Some(_)] => Err(syntax("STOP needs START")),
                    _ => Err(syntax("takes at most two fingerprints")),
                },
            }
        }
        Verb::StartTls => Err(CommandError::UnknownVerb("STARTTLS".to_owned())),
    }
}
