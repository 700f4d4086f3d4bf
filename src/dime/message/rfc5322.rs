//! Splitting an RFC 5322 message into D/MIME's header and content chunks, and putting it back
//! together. The normalisation this forces is documented on the parent module.

use mail_parser::{MessageParser, MimeHeaders};

use super::error::SealError;

/// Fields of the common-headers chunk, in chunk order and spelling (DIME.md §7.7).
pub(crate) const COMMON_FIELDS: [&str; 6] = ["Date", "To", "CC", "From", "Organization", "Subject"];
/// Fields D/MIME requires in the common-headers chunk.
const REQUIRED_FIELDS: [&str; 4] = ["Date", "To", "From", "Subject"];

/// A message cut into what goes into chunks 33, 34, 67 and 131.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    /// Common-headers chunk text (CRLF lines).
    pub(crate) common: Vec<u8>,
    /// Other-headers chunk text (CRLF lines); empty means no chunk 34.
    pub(crate) other: Vec<u8>,
    /// The body after the blank line, or `None` when the message has no blank line.
    pub(crate) body: Option<&'a [u8]>,
    /// Where, within the body, each attachment chunk starts (ascending, all > 0).
    pub(crate) attachment_starts: Vec<usize>,
}

impl Split<'_> {
    /// The message this split rebuilds to: the canonical form of the input.
    pub(crate) fn canonical(&self) -> Vec<u8> {
        let body = self.body.unwrap_or_default();
        let mut out = Vec::with_capacity(self.common.len() + self.other.len() + 2 + body.len());
        out.extend_from_slice(&self.common);
        out.extend_from_slice(&self.other);
        if let Some(body) = self.body {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
        out
    }
}

struct Field {
    /// Index into COMMON_FIELDS when this is a common field.
    common: Option<usize>,
    /// Bytes after the colon, lines joined with CRLF, ending in CRLF.
    value: Vec<u8>,
    /// The whole field as it will be written to chunk 34 (original name spelling).
    raw: Vec<u8>,
}

/// Pushes `line` without its line ending, then CRLF.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let content = if line.ends_with(b"\n") {
        content.strip_suffix(b"\r").unwrap_or(content)
    } else {
        content
    };
    out.extend_from_slice(content);
    out.extend_from_slice(b"\r\n");
}

/// Cuts `msg` into header fields and body.
pub(crate) fn split(msg: &[u8]) -> Result<Split<'_>, SealError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0usize;
    let mut body = None;
    let mut body_at = msg.len();
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        if line == b"\r\n" || line == b"\n" {
            body = Some(&msg[end..]);
            body_at = end;
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            let Some(field) = fields.last_mut() else {
                return Err(SealError::MalformedHeader { offset: pos });
            };
            push_line(&mut field.value, line);
            push_line(&mut field.raw, line);
        } else {
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .filter(|&c| c > 0 && line[..c].iter().all(|b| (33..=126).contains(b)))
                .ok_or(SealError::MalformedHeader { offset: pos })?;
            let name = &line[..colon];
            let common = COMMON_FIELDS
                .iter()
                .position(|f| f.as_bytes().eq_ignore_ascii_case(name))
                .filter(|i| !fields.iter().any(|f| f.common == Some(*i)));
            let mut value = Vec::new();
            push_line(&mut value, &line[colon + 1..]);
            let mut raw = Vec::new();
            push_line(&mut raw, line);
            fields.push(Field { common, value, raw });
        }
        pos = end;
    }
    let mut split = Split {
        body,
        ..Split::default()
    };
    for (i, name) in COMMON_FIELDS.iter().enumerate() {
        if let Some(f) = fields.iter().find(|f| f.common == Some(i)) {
            split.common.extend_from_slice(name.as_bytes());
            split.common.push(b':');
            split.common.extend_from_slice(&f.value);
        } else if REQUIRED_FIELDS.contains(name) {
            return Err(SealError::MissingHeader { name });
        }
    }
    for f in fields.iter().filter(|f| f.common.is_none()) {
        split.other.extend_from_slice(&f.raw);
    }
    if let Some(body) = body {
        split.attachment_starts = attachment_starts(msg, body_at, body.len());
    }
    Ok(split)
}

/// Offsets within the body where top-level attachment parts begin, found with mail-parser. The
/// display and attachment chunks partition the body at these points, so concatenating them gives
/// the body back byte for byte whatever mail-parser makes of the MIME structure.
fn attachment_starts(msg: &[u8], body_at: usize, body_len: usize) -> Vec<usize> {
    // Only multipart messages can have attachment parts; skip the MIME parse for the rest.
    let header = &msg[..body_at];
    if !header
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"multipart"))
    {
        return Vec::new();
    }
    let Some(parsed) = MessageParser::default().parse(msg) else {
        return Vec::new();
    };
    let Some(children) = parsed.parts.first().and_then(|p| p.sub_parts()) else {
        return Vec::new();
    };
    let mut starts: Vec<usize> = Vec::new();
    for id in children {
        let Some(part) = parsed.parts.get(*id as usize) else {
            continue;
        };
        if !part
            .content_disposition()
            .is_some_and(|d| d.is_attachment())
        {
            continue;
        }
        let Some(rel) = (part.offset_header as usize).checked_sub(body_at) else {
            continue;
        };
        if rel == 0 || rel >= body_len || starts.last().is_some_and(|l| *l >= rel) {
            continue;
        }
        starts.push(rel);
    }
    starts
}

/// The form `msg` takes after a seal/open round trip (see the parent module's documentation).
pub fn canonical_form(msg: &[u8]) -> Result<Vec<u8>, SealError> {
    Ok(split(msg)?.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_input_is_a_fixed_point() {
        let m = b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\nX-A: 1\r\n  2\r\n\r\nbody\n";
        assert_eq!(canonical_form(m).unwrap(), m);
    }

    #[test]
    fn normalisation_table() {
        let rows: &[(&[u8], &[u8])] = &[
            // Common fields move to the front in chunk order, with the spec's spelling.
            (
                b"subject: s\r\nX: 1\r\ncc: c\r\nFROM:f\r\nTo: t\r\nDate: d\r\n\r\nb",
                b"Date: d\r\nTo: t\r\nCC: c\r\nFrom:f\r\nSubject: s\r\nX: 1\r\n\r\nb",
            ),
            // Header line endings become CRLF; the body keeps its own.
            (
                b"Date: d\nTo: t\nFrom: f\nSubject: s\n\nb\nc\n",
                b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\n\r\nb\nc\n",
            ),
            // A second To stays where it was, among the other headers.
            (
                b"Date: d\r\nTo: t\r\nTo: u\r\nFrom: f\r\nSubject: s\r\n",
                b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\nTo: u\r\n",
            ),
            // No blank line: no body, and none is added; a last line without EOL gets CRLF.
            (
                b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s",
                b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\n",
            ),
        ];
        for (input, want) in rows {
            assert_eq!(
                String::from_utf8_lossy(&canonical_form(input).unwrap()),
                String::from_utf8_lossy(want)
            );
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(
            split(b"Date: d\r\nTo: t\r\nFrom: f\r\n\r\n"),
            Err(SealError::MissingHeader { name: "Subject" })
        );
        assert_eq!(
            split(b" folded\r\n"),
            Err(SealError::MalformedHeader { offset: 0 })
        );
        assert_eq!(
            split(b"Date: d\r\nno colon here\r\n"),
            Err(SealError::MalformedHeader { offset: 9 })
        );
    }

    #[test]
    fn attachments_partition_the_body() {
        let m = b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x\r\n\r\nAAAA\r\n--b--\r\n";
        let s = split(m).unwrap();
        assert_eq!(s.attachment_starts.len(), 1);
        let body = s.body.unwrap();
        assert!(body[s.attachment_starts[0]..].starts_with(b"Content-Type: application"));
    }
}
