//! The `Received:` trace header prepended on the way out (RFC 5321 §4.4, RFC 5322 §3.6.7).
//! Sans-I/O: everything, the time included, comes in as arguments.

use crate::envelope::{Envelope, QueueId};
use crate::time::{UnixTime, rfc5322_date};
use std::fmt::Write as _;
use std::net::IpAddr;

/// Builds the `Received:` header for `envelope`, folded over several lines, ending in CRLF.
///
/// `by_host` is our own host name; the date is the envelope's arrival time (when we received the
/// message, which is what a trace header records). The `with` keyword follows RFC 3848: ESMTP, plus
/// `S` for TLS and `A` for an authenticated client. Client-supplied text (HELO name, auth user) is
/// sanitised: a CR or LF in it would start a new header line, a `)` would end the comment early.
/// There is no `for <recipient>` clause: the header is the same for every recipient of a
/// transaction and does not disclose the other recipients.
pub fn received_header(envelope: &Envelope, queue_id: QueueId, by_host: &str) -> String {
    let mut out = String::with_capacity(256);
    let helo = sanitize_atom(&envelope.helo);
    let ip = client_ip_literal(envelope.client.ip());
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(out, "Received: from {helo} ({ip})");
    if let Some(tls) = &envelope.tls {
        let _ = write!(out, "\r\n\t(using {})", sanitize_comment(tls));
    }
    if let Some(user) = &envelope.auth_user {
        let _ = write!(
            out,
            "\r\n\t(authenticated sender: {})",
            sanitize_comment(user)
        );
    }
    let protocol = match (envelope.tls.is_some(), envelope.auth_user.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    let _ = write!(
        out,
        "\r\n\tby {} (dimegate) with {protocol} id {queue_id};\r\n\t{}\r\n",
        sanitize_atom(by_host),
        rfc5322_date(UnixTime(envelope.arrival_unix))
    );
    out
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3); an IPv4-mapped IPv6 address is shown
/// as the IPv4 address it is.
fn client_ip_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// A HELO name or host name as a single token: printable ASCII without spaces, parentheses,
/// semicolons or backslashes; anything else becomes `_`. An empty name becomes `unknown`.
fn sanitize_atom(text: &str) -> String {
    if text.is_empty() {
        return "unknown".to_owned();
    }
    text.chars()
        .map(|c| match c {
            '!'..='~' if !matches!(c, '(' | ')' | ';' | '\\') => c,
            _ => '_',
        })
        .collect()
}

/// Text inside a comment: controls become spaces, `(`, `)` and `\` are quoted (RFC 5322 §3.2.2).
/// Non-ASCII stays as is (the message may be SMTPUTF8).
fn sanitize_comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            helo: "client.example.org".into(),
            client: "192.0.2.7:40000".parse().unwrap(),
            // 2026-11-26 21:40:48 UTC
            ..Envelope::for_test("a@example.org", &[], 1_795_729_248)
        }
    }

    #[test]
    fn received_table() {
        let queue_id = QueueId(0x0123_4567_89AB_CDEF);
        let plain = envelope();
        let mut tls = envelope();
        tls.tls = Some("TLSv1.3 TLS_AES_256_GCM_SHA384".into());
        let mut auth = envelope();
        auth.auth_user = Some("alice".into());
        let mut both = tls.clone();
        both.auth_user = Some("alice".into());
        let mut v6 = envelope();
        v6.client = "[2001:db8::1]:25".parse().unwrap();
        let mut mapped = envelope();
        mapped.client = "[::ffff:192.0.2.9]:25".parse().unwrap();
        let mut hostile = envelope();
        hostile.helo = "evil\r\nX-Injected: yes (x)".into();
        hostile.auth_user = Some("bob)\r\nX-Bad: 1".into());
        let mut empty_helo = envelope();
        empty_helo.helo = String::new();

        let date = "Thu, 26 Nov 2026 21:40:48 +0000";
        for (case, env, expected) in [
            (
                "plain",
                &plain,
                format!(
                    "Received: from client.example.org ([192.0.2.7])\r\n\tby gw.example.net (dimegate) with ESMTP id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "tls",
                &tls,
                format!(
                    "Received: from client.example.org ([192.0.2.7])\r\n\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n\tby gw.example.net (dimegate) with ESMTPS id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "auth",
                &auth,
                format!(
                    "Received: from client.example.org ([192.0.2.7])\r\n\t(authenticated sender: alice)\r\n\tby gw.example.net (dimegate) with ESMTPA id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "tls+auth",
                &both,
                format!(
                    "Received: from client.example.org ([192.0.2.7])\r\n\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n\t(authenticated sender: alice)\r\n\tby gw.example.net (dimegate) with ESMTPSA id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "ipv6",
                &v6,
                format!(
                    "Received: from client.example.org ([IPv6:2001:db8::1])\r\n\tby gw.example.net (dimegate) with ESMTP id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "v4-mapped",
                &mapped,
                format!(
                    "Received: from client.example.org ([192.0.2.9])\r\n\tby gw.example.net (dimegate) with ESMTP id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "hostile",
                &hostile,
                format!(
                    "Received: from evil__X-Injected:_yes__x_ ([192.0.2.7])\r\n\t(authenticated sender: bob\\)  X-Bad: 1)\r\n\tby gw.example.net (dimegate) with ESMTPA id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
            (
                "empty helo",
                &empty_helo,
                format!(
                    "Received: from unknown ([192.0.2.7])\r\n\tby gw.example.net (dimegate) with ESMTP id 0123456789ABCDEF;\r\n\t{date}\r\n"
                ),
            ),
        ] {
            let got = received_header(env, queue_id, "gw.example.net");
            assert_eq!(got, expected, "{case}");
            // Every line but the first is a continuation line: no header can be injected.
            for line in got.trim_end_matches("\r\n").split("\r\n").skip(1) {
                assert!(line.starts_with('\t'), "{case}: {line:?}");
            }
        }
    }
}
