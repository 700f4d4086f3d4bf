//! What the demo reads back: the gateways' JSON log events, the delivered mail's headers, and
//! the final comparison of the delivered mail with the sent one. Pure functions.

use serde_json::{Map, Value};

/// The `fields` of every JSON log line of `log` whose message is `message`.
pub fn events(log: &str, message: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(mut o) => match o.remove("fields") {
                Some(Value::Object(f)) => Some(f),
                _ => None,
            },
            _ => None,
        })
        .filter(|f| f.get("message").and_then(Value::as_str) == Some(message))
        .collect()
}

/// A field as text (strings bare, numbers and the rest as JSON); `?` when absent.
pub fn field(fields: &Map<String, Value>, key: &str) -> String {
    match fields.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

/// Splits a message at the blank line: header lines (CRLF or LF ended) and the body bytes.
fn split(mail: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(i) = mail.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((&mail[..i + 2], &mail[i + 4..]));
    }
    mail.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (&mail[..i + 1], &mail[i + 2..]))
}

fn header_lines(header: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(header)
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The unfolded value of the first header field `name` of `mail`.
pub fn header(mail: &[u8], name: &str) -> Option<String> {
    let (head, _) = split(mail)?;
    let mut value: Option<String> = None;
    for line in header_lines(head) {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => {
                v.push(' ');
                v.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some((n, v)) = line.split_once(':')
                    && n.eq_ignore_ascii_case(name)
                {
                    value = Some(v.trim().to_owned());
                }
            }
        }
    }
    value
}

/// Why the delivered mail is not the sent one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// A message without a header/body separator.
    #[error("the {0} mail has no blank line between header and body")]
    NoBody(&'static str),
    /// A header line of the sent mail is not a line of the delivered header.
    #[error("header line {0:?} of the sent mail is missing from the delivered one")]
    MissingHeader(String),
    /// The bodies differ.
    #[error(
        "the delivered body ({delivered} bytes) differs from the sent one ({sent} bytes) from byte {offset} on"
    )]
    BodyDiffers {
        /// Sent body length.
        sent: usize,
        /// Delivered body length.
        delivered: usize,
        /// The first differing byte.
        offset: usize,
    },
}

/// `Ok` when `delivered` carries every header line of `sent` and exactly its body.
pub fn compare(sent: &[u8], delivered: &[u8]) -> Result<(), Mismatch> {
    let (sent_head, sent_body) = split(sent).ok_or(Mismatch::NoBody("sent"))?;
    let (got_head, got_body) = split(delivered).ok_or(Mismatch::NoBody("delivered"))?;
    let got = header_lines(got_head);
    if let Some(missing) = header_lines(sent_head)
        .into_iter()
        .find(|l| !got.contains(l))
    {
        return Err(Mismatch::MissingHeader(missing));
    }
    if sent_body != got_body {
        let offset = sent_body
            .iter()
            .zip(got_body)
            .position(|(a, b)| a != b)
            .unwrap_or(sent_body.len().min(got_body.len()));
        return Err(Mismatch::BodyDiffers {
            sent: sent_body.len(),
            delivered: got_body.len(),
            offset,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: &[u8] = b"From: a@n.test\r\nSubject: Hi\r\n\r\nBody.\r\n";

    #[test]
    fn delivered_with_trace_headers_is_the_sent_mail() {
        let got = b"Received: from x\r\n  by y\r\nSubject: Hi\r\nFrom: a@n.test\r\n\r\nBody.\r\n";
        assert_eq!(compare(SENT, got), Ok(()));
        assert_eq!(header(got, "received").as_deref(), Some("from x by y"));
        assert_eq!(header(got, "To"), None);
    }

    #[test]
    fn each_difference_is_named() {
        assert_eq!(
            compare(SENT, b"From: a@n.test\r\n\r\nBody.\r\n"),
            Err(Mismatch::MissingHeader("Subject: Hi".into()))
        );
        assert_eq!(
            compare(SENT, b"From: a@n.test\r\nSubject: Hi\r\n\r\nBodY.\r\n"),
            Err(Mismatch::BodyDiffers {
                sent: 7,
                delivered: 7,
                offset: 3
            })
        );
        assert_eq!(
            compare(SENT, b"From: a@n.test\r\nSubject: Hi\r\n\r\nBody."),
            Err(Mismatch::BodyDiffers {
                sent: 7,
                delivered: 5,
                offset: 5
            })
        );
        assert_eq!(
            compare(SENT, b"no header"),
            Err(Mismatch::NoBody("delivered"))
        );
    }

    #[test]
    fn reads_json_log_events() {
        let log = "{\"level\":\"INFO\",\"fields\":{\"message\":\"wrapped\",\"size\":4096,\"rcpt\":\"b@s.test\"}}\n\
                   not json\n{\"fields\":{\"message\":\"other\"}}\n";
        let got = events(log, "wrapped");
        assert_eq!(got.len(), 1);
        assert_eq!(field(&got[0], "size"), "4096");
        assert_eq!(field(&got[0], "rcpt"), "b@s.test");
        assert_eq!(field(&got[0], "nope"), "?");
    }
}
