//! The `Received:` trace header prepended on the way out (RFC 5321 §4.4, RFC 5322 §3.6.7), and the
//! RFC 5322 date it ends with. Sans-I/O: everything, the time included, comes in as arguments.

use crate::envelope::{Envelope, QueueId};
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
        rfc5322_date(envelope.arrival_unix)
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

/// RFC 5322 §3.3 date in UTC, e.g. `Thu, 26 Nov 2026 21:40:48 +0000`.
pub fn rfc5322_date(unix_seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar, by counting 400-year eras from 0000-03-01 (a leap day then falls at a year's end).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            sender: "a@example.org".into(),
            recipients: Vec::new(),
            dsn_ret: None,
            dsn_envid: None,
            body_8bit: false,
            smtputf8: false,
            helo: "client.example.org".into(),
            client: "192.0.2.7:40000".parse().unwrap(),
            tls: None,
            auth_user: None,
            arrival_unix: 1_795_729_248, // 2026-11-26 21:40:48 UTC
        }
    }

    #[test]
    fn dates_table() {
        for (unix, expected) in [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 +0000"),
            (1_795_729_248, "Thu, 26 Nov 2026 21:40:48 +0000"),
            (4_107_542_400, "Mon, 1 Mar 2100 00:00:00 +0000"),
        ] {
            assert_eq!(rfc5322_date(unix), expected, "{unix}");
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
