//! Server replies as the client reads them (RFC 5321 §4.2): `NNN-text` continuation lines ending in
//! one `NNN text` line, the enhanced status code of RFC 2034 §4 taken apart from the text.
//!
//! Sans-I/O and incremental: [`ReplyParser::feed`] takes bytes in any split and yields one reply
//! at a time, so the caller can change state (STARTTLS) between two replies of one read. Memory is
//! bounded by [`MAX_LINE`] for the line being read and [`MAX_REPLY`] for the lines of the reply
//! being collected; beyond either the reply is an error, never a bigger buffer.
//!
//! Lines end at LF; a CR before it is dropped (servers that send bare LF are common enough, and
//! a client reading replies gains nothing by refusing them). The code must be 2xx to 5xx and the
//! same on every line; the enhanced code counts only when its class matches the reply code's.

use super::EnhancedStatus;

/// Longest reply line, line end included (RFC 5321 §4.5.3.1.5 says 512; servers exceed it).
pub(crate) const MAX_LINE: usize = 4096;
/// Most bytes in all lines of one reply (an EHLO reply has a line per extension).
pub(crate) const MAX_REPLY: usize = 64 * 1024;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit code, 200 to 599.
    pub(crate) code: u16,
    /// The enhanced status code of the first line, when it had one of the code's class.
    pub(crate) status: Option<EnhancedStatus>,
    /// The text of each line, without code, separator and enhanced code.
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// The first digit: 2 positive, 3 intermediate, 4 transient, 5 permanent.
    pub(crate) fn class(&self) -> u16 {
        self.code / 100
    }

    /// The text, lines joined by `\n`.
    pub(crate) fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Bytes that are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplyError {
    /// A line longer than [`MAX_LINE`].
    #[error("a reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A reply longer than [`MAX_REPLY`].
    #[error("a reply longer than {MAX_REPLY} bytes")]
    TooLong,
    /// A line that does not start with a code 200-599 and a space, hyphen or line end.
    #[error("not an SMTP reply line: {0:?}")]
    Malformed(String),
    /// The lines of one reply carry different codes.
    #[error("reply code {then} on a continuation of a {first} reply")]
    CodeChanged {
        /// The first line's code.
        first: u16,
        /// The code that differed.
        then: u16,
    },
}

/// Lines collected so far of a multi-line reply.
#[derive(Debug)]
struct Partial {
    code: u16,
    status: Option<EnhancedStatus>,
    lines: Vec<String>,
    size: usize,
}

/// Incremental reply reader. After an error its state is reset; the caller decides whether the
/// session survives (it does not: a client that lost track of replies cannot match them).
#[derive(Debug, Default)]
pub(crate) struct ReplyParser {
    line: Vec<u8>,
    partial: Option<Partial>,
}

impl ReplyParser {
    /// Consumes bytes from `input` up to the end of the next complete reply and returns it, or
    /// consumes everything and returns `None` when no reply is complete yet.
    pub(crate) fn feed(&mut self, input: &mut &[u8]) -> Option<Result<Reply, ReplyError>> {
        loop {
            if input.is_empty() {
                return None;
            }
            let (chunk, rest, complete) = match input.iter().position(|&b| b == b'\n') {
                Some(lf) => (&input[..=lf], &input[lf + 1..], true),
                None => (*input, &[][..], false),
            };
            *input = rest;
            if self.line.len() + chunk.len() > MAX_LINE {
                self.reset();
                return Some(Err(ReplyError::LineTooLong));
            }
            self.line.extend_from_slice(chunk);
            if !complete {
                return None;
            }
            let line = std::mem::take(&mut self.line);
            match self.take_line(&line) {
                Ok(Some(reply)) => return Some(Ok(reply)),
                Ok(None) => {}
                Err(error) => {
                    self.reset();
                    return Some(Err(error));
                }
            }
        }
    }

    /// Bytes held: the partial line and the lines of an unfinished reply.
    pub(crate) fn buffered_len(&self) -> usize {
        self.line.len() + self.partial.as_ref().map_or(0, |p| p.size)
    }

    /// Forgets everything read so far (after STARTTLS, bytes before the handshake are discarded).
    pub(crate) fn reset(&mut self) {
        self.line.clear();
        self.partial = None;
    }

    fn take_line(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let malformed = || {
            ReplyError::Malformed(String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned())
        };
        let code = match line {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(malformed()),
        };
        let (last, text) = match line.get(3) {
            None => (true, &[][..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        let text = String::from_utf8_lossy(text);
        let (status, text) = split_status(code, &text);
        let partial = self.partial.get_or_insert_with(|| Partial {
            code,
            status,
            lines: Vec::new(),
            size: 0,
        });
        if partial.code != code {
            return Err(ReplyError::CodeChanged {
                first: partial.code,
                then: code,
            });
        }
        partial.size += raw.len();
        if partial.size > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        partial.lines.push(text.to_owned());
        if !last {
            return Ok(None);
        }
        Ok(self.partial.take().map(|p| Reply {
            code: p.code,
            status: p.status,
            lines: p.lines,
        }))
    }
}

/// `5.1.1 text` -> (5.1.1, `text`) when the class matches the reply code (RFC 2034 §4); the
/// line unchanged otherwise.
fn split_status(code: u16, text: &str) -> (Option<EnhancedStatus>, &str) {
    let (token, rest) = text.split_once(' ').unwrap_or((text, ""));
    match EnhancedStatus::parse(token) {
        Some(status) if u16::from(status.class) == code / 100 => (Some(status), rest),
        _ => (None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8], split: usize) -> Vec<Result<Reply, ReplyError>> {
        let mut parser = ReplyParser::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(split.max(1)) {
            let mut input = chunk;
            while let Some(result) = parser.feed(&mut input) {
                out.push(result);
            }
        }
        out
    }

    fn reply(code: u16, status: Option<(u8, u16, u16)>, lines: &[&str]) -> Reply {
        Reply {
            code,
            status: status.map(|(a, b, c)| EnhancedStatus::new(a, b, c)),
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    #[test]
    fn replies_table_in_every_split() {
        let long = format!("250 {}\r\n", "x".repeat(MAX_LINE));
        let many = "250-x\r\n".repeat(MAX_REPLY / 7 + 1);
        type Case<'a> = (&'a [u8], Vec<Result<Reply, ReplyError>>);
        let cases: Vec<Case> = vec![
            (
                b"220 mx ESMTP\r\n",
                vec![Ok(reply(220, None, &["mx ESMTP"]))],
            ),
            (
                b"250 2.1.5 Ok\r\n",
                vec![Ok(reply(250, Some((2, 1, 5)), &["Ok"]))],
            ),
            // A bare LF ends a line too; a code alone is a reply.
            (b"250\n", vec![Ok(reply(250, None, &[""]))]),
            (
                b"550-5.1.1 no such\r\n550 5.1.1 user\r\n",
                vec![Ok(reply(550, Some((5, 1, 1)), &["no such", "user"]))],
            ),
            // The class of the enhanced code must match the reply's.
            (
                b"250 5.1.1 odd\r\n",
                vec![Ok(reply(250, None, &["5.1.1 odd"]))],
            ),
            (
                b"451 4.3.0\r\n",
                vec![Ok(reply(451, Some((4, 3, 0)), &[""]))],
            ),
            (
                b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n354 go\r\n",
                vec![
                    Ok(reply(250, None, &["mx", "PIPELINING", "8BITMIME"])),
                    Ok(reply(354, None, &["go"])),
                ],
            ),
            (
                b"hello\r\n",
                vec![Err(ReplyError::Malformed("hello".into()))],
            ),
            (
                b"199 x\r\n",
                vec![Err(ReplyError::Malformed("199 x".into()))],
            ),
            (b"2500\r\n", vec![Err(ReplyError::Malformed("2500".into()))]),
            (
                b"250-a\r\n251 b\r\n",
                vec![Err(ReplyError::CodeChanged {
                    first: 250,
                    then: 251,
                })],
            ),
            (long.as_bytes(), vec![Err(ReplyError::LineTooLong)]),
            (many.as_bytes(), vec![Err(ReplyError::TooLong)]),
            // Non-UTF-8 text is kept, lossily.
            (b"250 \xff\r\n", vec![Ok(reply(250, None, &["\u{fffd}"]))]),
        ];
        for (bytes, expected) in cases {
            for split in [bytes.len(), 1, 2, 3, 7, 64] {
                let got = parse_all(bytes, split);
                // After an error the rest of that read is dropped; compare up to the first error.
                let got: Vec<_> = match got.iter().position(Result::is_err) {
                    Some(i) => got[..=i].to_vec(),
                    None => got,
                };
                assert_eq!(
                    got,
                    expected,
                    "{:?} in {split}-byte pieces",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                );
            }
        }
    }

    #[test]
    fn buffers_stay_bounded() {
        let mut parser = ReplyParser::default();
        let mut input = &b"250-x\r\n"[..];
        assert!(parser.feed(&mut input).is_none());
        assert_eq!(parser.buffered_len(), 7);
        let junk = vec![b'a'; MAX_LINE + 10];
        let mut input = &junk[..];
        assert_eq!(parser.feed(&mut input), Some(Err(ReplyError::LineTooLong)));
        assert_eq!(parser.buffered_len(), 0);
    }
}
