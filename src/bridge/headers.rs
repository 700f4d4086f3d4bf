//! Header-block surgery on raw RFC 5322 bytes: find, drop and prepend fields without
//! re-encoding anything else, so the body and every other byte stay as they came.

/// One field of the header block: the whole field (continuation lines and line endings
/// included), its name and its value (everything after the colon, folding kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Field<'a> {
    pub(super) raw: &'a [u8],
    pub(super) name: &'a [u8],
    pub(super) value: &'a [u8],
}

/// The fields of `msg`'s header block, and the offset where the header block ends (the blank
/// line, or the end of the input). A line that is neither a field nor a continuation becomes a
/// field with an empty name, so that nothing is lost when fields are dropped around it.
pub(super) fn fields(msg: &[u8]) -> (Vec<Field<'_>>, usize) {
    let mut out: Vec<(usize, usize, usize)> = Vec::new(); // (start, colon, end)
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match (line[0], out.last_mut()) {
            (b' ' | b'\t', Some(last)) => last.2 = end,
            _ => {
                let colon = line
                    .iter()
                    .position(|b| *b == b':')
                    .filter(|&c| c > 0 && line[..c].iter().all(|b| (33..=126).contains(b)))
                    .map_or(pos, |c| pos + c);
                out.push((pos, colon, end));
            }
        }
        pos = end;
    }
    let fields = out
        .into_iter()
        .map(|(start, colon, end)| Field {
            raw: &msg[start..end],
            name: &msg[start..colon],
            value: if colon > start {
                &msg[colon + 1..end]
            } else {
                &[]
            },
        })
        .collect();
    (fields, pos)
}

/// `msg` without the header fields `drop` picks, and the values of those it dropped.
pub(super) fn remove<'a>(
    msg: &'a [u8],
    mut drop: impl FnMut(&Field<'a>) -> bool,
) -> (Vec<u8>, Vec<&'a [u8]>) {
    let (fields, body_at) = fields(msg);
    let mut out = Vec::with_capacity(msg.len());
    let mut removed = Vec::new();
    for f in &fields {
        if drop(f) {
            removed.push(f.value);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    out.extend_from_slice(&msg[body_at..]);
    (out, removed)
}

/// Whether a field is named `name` (ASCII case-insensitive, RFC 5322 §1.2.2).
pub(super) fn is(f: &Field<'_>, name: &str) -> bool {
    f.name.eq_ignore_ascii_case(name.as_bytes())
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2): the first token, after
/// leading white space and comments, up to `;`, white space or a comment; quotes removed.
pub(super) fn authserv_id(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    let mut rest = text.trim_start();
    // Skip leading comments, which RFC 8601 allows as CFWS.
    while let Some(after) = rest.strip_prefix('(') {
        let close = after.find(')')?;
        rest = after[close + 1..].trim_start();
    }
    let id = if let Some(q) = rest.strip_prefix('"') {
        &q[..q.find('"')?]
    } else {
        let end = rest
            .find(|c: char| c == ';' || c == '(' || c.is_whitespace())
            .unwrap_or(rest.len());
        &rest[..end]
    };
    (!id.is_empty()).then(|| id.to_owned())
}

/// An unfolded, trimmed field value as text (for values that came from our own writing).
pub(super) fn unfolded(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_folding_and_find_the_body() {
        let m = b"A: 1\r\nB: 2\r\n  more\r\nbroken line\nC:3\n\r\nbody: x\r\n";
        let (f, at) = fields(m);
        let names: Vec<&[u8]> = f.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"A"[..], b"B", b"", b"C"]);
        assert_eq!(f[1].value, b" 2\r\n  more\r\n");
        assert_eq!(&m[at..], b"\r\nbody: x\r\n");
    }

    #[test]
    fn remove_drops_only_the_picked_fields() {
        let m = b"X-Envelope-From: <a>\r\nSubject: s\r\nx-envelope-from: <b>\r\n\r\nX-Envelope-From: body\r\n";
        let (out, gone) = remove(m, |f| is(f, "X-Envelope-From"));
        assert_eq!(out, b"Subject: s\r\n\r\nX-Envelope-From: body\r\n");
        assert_eq!(gone, [&b" <a>\r\n"[..], b" <b>\r\n"]);
    }

    #[test]
    fn authserv_ids() {
        let rows: &[(&[u8], Option<&str>)] = &[
            (b" mx.example; spf=pass", Some("mx.example")),
            (b" (comment) \"mx.example\" 1; none", Some("mx.example")),
            (b"\r\n\tmx.example\r\n ; dkim=fail", Some("mx.example")),
            (b" mx.example(c); none", Some("mx.example")),
            (b"  ", None),
            (b" (unclosed", None),
        ];
        for (value, want) in rows {
            assert_eq!(authserv_id(value).as_deref(), *want, "{value:?}");
        }
    }
}
