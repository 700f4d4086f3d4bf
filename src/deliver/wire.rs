//! Sans-I/O pieces of the client side of SMTP: what the next hop can take, the MAIL and RCPT command
//! lines with their ESMTP parameters, and the DATA payload with dot-stuffing.

use super::EnhancedStatus;
use super::reply::Reply;
use crate::envelope::{DsnReturn, Envelope, Notify, Recipient};

/// What the next hop announced in its EHLO/LHLO reply (an empty set after HELO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) dsn: bool,
    pub(crate) smtputf8: bool,
    pub(crate) eight_bit_mime: bool,
    pub(crate) starttls: bool,
    /// RFC 2920: MAIL FROM and the RCPT TOs may go in one write.
    pub(crate) pipelining: bool,
    /// RFC 8689: the server takes `MAIL FROM ... REQUIRETLS`.
    pub(crate) requiretls: bool,
    /// The SIZE limit, 0 when none was announced.
    pub(crate) size: usize,
    pub(crate) size_announced: bool,
}

impl Capabilities {
    /// From the lines of a 250 reply to EHLO or LHLO: the first names the host, each further one
    /// starts with an extension keyword (RFC 5321 §4.1.1.1), compared without regard to case.
    pub(crate) fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "DSN" => caps.dsn = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "REQUIRETLS" => caps.requiretls = true,
                "SIZE" => {
                    caps.size_announced = true;
                    // RFC 1870 §4: no number or 0 means no fixed limit; a number too big for
                    // us is no limit we could exceed.
                    caps.size = words
                        .next()
                        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        .map_or(0, |n| n.parse::<usize>().unwrap_or(0));
                }
                _ => {}
            }
        }
        caps
    }
}

/// Why this message cannot go to this next hop at all, decided before MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsendable {
    /// Enhanced status for the DSN.
    pub(crate) status: EnhancedStatus,
    /// Precise reason for the log and the DSN.
    pub(crate) text: String,
    /// Another next hop might take it (SIZE, missing extension) or none will (bad address).
    pub(crate) hop_specific: bool,
}

fn has_line_break_or_nul(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Does this message need SMTPUTF8 (RFC 6531): declared so, or a non-ASCII address.
pub(crate) fn needs_smtputf8(envelope: &Envelope, recipients: &[&Recipient]) -> bool {
    envelope.smtputf8
        || !envelope.sender.is_ascii()
        || recipients.iter().any(|r| !r.address.is_ascii())
}

/// Checks the message against the next hop's extensions (RFC 6152, RFC 6531, RFC 1870).
pub(crate) fn check_capabilities(
    envelope: &Envelope,
    recipients: &[&Recipient],
    caps: &Capabilities,
    message_len: usize,
) -> Result<(), Unsendable> {
    if needs_smtputf8(envelope, recipients) && !caps.smtputf8 {
        return Err(Unsendable {
            status: EnhancedStatus::new(5, 6, 7),
            text: "the message needs SMTPUTF8 and the next hop does not offer it".into(),
            hop_specific: true,
        });
    }
    if envelope.body_8bit && !caps.eight_bit_mime {
        return Err(Unsendable {
            status: EnhancedStatus::new(5, 6, 3),
            text: "the message has an 8-bit body and the next hop does not offer 8BITMIME \
                   (conversion to 7 bit is not done)"
                .into(),
            hop_specific: true,
        });
    }
    if caps.size_announced && caps.size > 0 && message_len > caps.size {
        return Err(Unsendable {
            status: EnhancedStatus::new(5, 3, 4),
            text: format!(
                "message of {message_len} bytes exceeds the next hop's SIZE limit of {} bytes",
                caps.size
            ),
            hop_specific: true,
        });
    }
    Ok(())
}

/// RFC 8689 §4.2.1: a REQUIRETLS message is relayed only over TLS (verified: the caller chose
/// the hop's TLS policy so) to a server that offers REQUIRETLS. Another MX may; so may a later
/// attempt, until the message expires with 5.7.30.
pub(crate) fn check_requiretls(
    envelope: &Envelope,
    caps: &Capabilities,
    encrypted: bool,
) -> Result<(), Unsendable> {
    if !envelope.require_tls {
        return Ok(());
    }
    let missing = if !encrypted {
        "the session is not encrypted"
    } else if !caps.requiretls {
        "the next hop does not offer REQUIRETLS"
    } else {
        return Ok(());
    };
    Err(Unsendable {
        status: EnhancedStatus::new(4, 7, 30),
        text: format!("the message requires TLS (REQUIRETLS) and {missing}"),
        hop_specific: true,
    })
}

/// `MAIL FROM:<sender> [SIZE=] [BODY=8BITMIME] [SMTPUTF8] [RET=] [ENVID=]\r\n`.
pub(crate) fn mail_from_command(
    envelope: &Envelope,
    recipients: &[&Recipient],
    caps: &Capabilities,
    message_len: usize,
) -> Result<String, Unsendable> {
    if has_line_break_or_nul(&envelope.sender)
        || envelope.dsn_envid.as_deref().is_some_and(bad_param_value)
    {
        return Err(Unsendable {
            status: EnhancedStatus::new(5, 1, 7),
            text: "the sender address or ENVID contains a line break, NUL or space".into(),
            hop_specific: false,
        });
    }
    let mut command = format!("MAIL FROM:<{}>", envelope.sender);
    if caps.size_announced {
        command.push_str(&format!(" SIZE={message_len}"));
    }
    if envelope.body_8bit && caps.eight_bit_mime {
        command.push_str(" BODY=8BITMIME");
    }
    if needs_smtputf8(envelope, recipients) && caps.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    if envelope.require_tls && caps.requiretls {
        command.push_str(" REQUIRETLS");
    }
    if caps.dsn {
        match envelope.dsn_ret {
            Some(DsnReturn::Full) => command.push_str(" RET=FULL"),
            Some(DsnReturn::Headers) => command.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &envelope.dsn_envid {
            command.push_str(" ENVID=");
            command.push_str(envid);
        }
    }
    command.push_str("\r\n");
    Ok(command)
}

/// An ESMTP parameter value is xtext: no space, no control characters.
fn bad_param_value(value: &str) -> bool {
    value.is_empty() || value.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// `RCPT TO:<address> [NOTIFY=] [ORCPT=]\r\n`; DSN parameters only when the hop offers DSN
/// (RFC 3461 §4: otherwise they are dropped, and we would owe the DSN ourselves).
pub(crate) fn rcpt_to_command(
    recipient: &Recipient,
    caps: &Capabilities,
) -> Result<String, Unsendable> {
    if has_line_break_or_nul(&recipient.address)
        || recipient.orcpt.as_deref().is_some_and(bad_param_value)
    {
        return Err(Unsendable {
            status: EnhancedStatus::new(5, 1, 3),
            text: "the recipient address or ORCPT contains a line break, NUL or space".into(),
            hop_specific: false,
        });
    }
    let mut command = format!("RCPT TO:<{}>", recipient.address);
    if caps.dsn {
        if let Some(notify) = recipient.notify {
            command.push_str(" NOTIFY=");
            command.push_str(&notify_value(notify));
        }
        if let Some(orcpt) = &recipient.orcpt {
            command.push_str(" ORCPT=");
            command.push_str(orcpt);
        }
    }
    command.push_str("\r\n");
    Ok(command)
}

fn notify_value(notify: Notify) -> String {
    if notify.never {
        return "NEVER".into();
    }
    let parts: Vec<&str> = [
        (notify.success, "SUCCESS"),
        (notify.failure, "FAILURE"),
        (notify.delay, "DELAY"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if parts.is_empty() {
        // A Notify with nothing set is not valid on the wire; RFC 3461's default is FAILURE,DELAY.
        "FAILURE,DELAY".into()
    } else {
        parts.join(",")
    }
}

/// The bytes sent after `354`, produced incrementally so that a message can be sent in chunks:
/// [`DotStuffer::push`] each piece (the `Received:` header, then the body, split anywhere) and
/// [`DotStuffer::finish`] with the end-of-data line. The result does not depend on how the input
/// was split. Otherwise the bytes are untouched: no line-ending repair, no re-encoding.
///
/// A `.` is doubled at the start of every line (RFC 5321 §4.5.2). A line starts after LF, and
/// also after a bare CR: receivers that end lines at a bare CR or LF would otherwise read
/// `\r.\r\n` or `\n.\r\n` as the end of data, which is how SMTP smuggling works. RFC 5322
/// forbids bare CR/LF, so for a valid message this changes nothing.
///
/// The terminator is `.\r\n` after a body that ends in CRLF, and `\r\n.\r\n` otherwise (so an
/// unterminated last line is terminated, never merged with the dot).
#[derive(Debug, Clone)]
pub(crate) struct DotStuffer {
    at_line_start: bool,
    /// The last two bytes pushed (an inserted dot is never among the last two when the output
    /// ends in CRLF), and how many bytes were pushed, up to 2.
    last: [u8; 2],
    seen: u8,
}

impl DotStuffer {
    pub(crate) fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            last: [0; 2],
            seen: 0,
        }
    }

    /// Appends `input`, dot-stuffed, to `out`.
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 1);
        let mut copied = 0;
        for (i, &byte) in input.iter().enumerate() {
            if byte == b'.' && self.at_line_start {
                out.extend_from_slice(&input[copied..i]);
                out.push(b'.');
                copied = i;
            }
            self.at_line_start = byte == b'\n' || byte == b'\r';
        }
        out.extend_from_slice(&input[copied..]);
        match input {
            [] => {}
            [one] => self.last = [self.last[1], *one],
            [.., a, b] => self.last = [*a, *b],
        }
        self.seen = self
            .seen
            .saturating_add(u8::try_from(input.len()).unwrap_or(2))
            .min(2);
    }

    /// Appends the end-of-data line to `out`.
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        if self.seen == 2 && self.last == *b"\r\n" {
            out.extend_from_slice(b".\r\n");
        } else {
            out.extend_from_slice(b"\r\n.\r\n");
        }
    }
}

/// The whole payload after `354` for `header` then `body`, see [`DotStuffer`].
#[cfg(test)]
pub(crate) fn data_payload(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + body.len() + body.len() / 64 + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.push(header, &mut out);
    stuffer.push(body, &mut out);
    stuffer.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            helo: "h".into(),
            client: "192.0.2.7:40000".parse().unwrap(),
            ..Envelope::for_test("a@example.org", &[], 0)
        }
    }

    fn rcpt(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }

    const ALL: Capabilities = Capabilities {
        dsn: true,
        smtputf8: true,
        eight_bit_mime: true,
        starttls: false,
        pipelining: true,
        requiretls: true,
        size: 1000,
        size_announced: true,
    };
    const NONE: Capabilities = Capabilities {
        dsn: false,
        smtputf8: false,
        eight_bit_mime: false,
        starttls: false,
        pipelining: false,
        requiretls: false,
        size: 0,
        size_announced: false,
    };

    #[test]
    fn requiretls_table() {
        let mut env = envelope();
        env.require_tls = true;
        for (caps, encrypted, ok) in [(ALL, true, true), (ALL, false, false), (NONE, true, false)] {
            let got = check_requiretls(&env, &caps, encrypted);
            assert_eq!(got.is_ok(), ok, "{caps:?} {encrypted}");
            if let Err(u) = got {
                assert_eq!(u.status, EnhancedStatus::new(4, 7, 30));
                assert!(u.hop_specific);
            }
        }
        assert!(
            mail_from_command(&env, &[], &ALL, 10)
                .unwrap()
                .ends_with(" REQUIRETLS\r\n")
        );
        env.require_tls = false;
        assert!(check_requiretls(&env, &NONE, false).is_ok());
        assert!(
            !mail_from_command(&env, &[], &ALL, 10)
                .unwrap()
                .contains("REQUIRETLS")
        );
    }

    #[test]
    fn data_payload_table() {
        for (header, body, expected) in [
            ("", "", "\r\n.\r\n"),
            ("H: 1\r\n", "", "H: 1\r\n.\r\n"),
            ("", "a\r\n", "a\r\n.\r\n"),
            ("", "a", "a\r\n.\r\n"),
            ("", ".\r\n", "..\r\n.\r\n"),
            ("", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"),
            ("", "a\r\n..b\r\n", "a\r\n...b\r\n.\r\n"),
            ("", "a.b\r\n", "a.b\r\n.\r\n"),
            ("", "a\n.\r\nMAIL", "a\n..\r\nMAIL\r\n.\r\n"),
            ("", "a\r.\r\nMAIL", "a\r..\r\nMAIL\r\n.\r\n"),
            ("", "a\n", "a\n\r\n.\r\n"),
            ("X: y\r\n", ".x\r\n", "X: y\r\n..x\r\n.\r\n"),
        ] {
            assert_eq!(
                String::from_utf8(data_payload(header.as_bytes(), body.as_bytes())).unwrap(),
                expected,
                "{header:?} + {body:?}"
            );
        }
    }

    /// The payload of `pieces` pushed one by one.
    fn stuffed(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::new();
        for piece in pieces {
            stuffer.push(piece, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    /// Every way of cutting the input in two and in three, and byte by byte: the same bytes as
    /// the input in one piece. The cases put the cut between CR and LF, between LF and the dot,
    /// between the two dots of a stuffed line and just before the end.
    #[test]
    fn dot_stuffing_does_not_depend_on_where_the_input_is_cut() {
        let cases: [&[u8]; 12] = [
            b"",
            b".",
            b"a\r\n.\r\nb\r\n",
            b"..\r\n..\r\n",
            b"a\n.\r\nMAIL",
            b"a\r.\r\nMAIL",
            b"x\r\n",
            b"x\r",
            b"\r\n",
            b"\n",
            b"line\r\n.\r\n.\r\n\r\n.end",
            b"no line break at all",
        ];
        for input in cases {
            let whole = stuffed(&[input]);
            assert_eq!(whole, data_payload(b"", input), "{input:?}");
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(stuffed(&bytes), whole, "byte by byte: {input:?}");
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(stuffed(&[a, b]), whole, "cut at {i}: {input:?}");
                for j in i..=input.len() {
                    let (b, c) = input[i..].split_at(j - i);
                    assert_eq!(stuffed(&[a, b, c]), whole, "cut at {i}, {j}: {input:?}");
                }
            }
        }
    }

    proptest::proptest! {
        /// Random bodies cut at random places, with empty pieces among them.
        #[test]
        fn dot_stuffing_in_chunks_matches_one_piece(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'.'),
                    proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b'\n'),
                    proptest::num::u8::ANY,
                ],
                0..300,
            ),
            cuts in proptest::collection::vec(0usize..300, 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&body[from..cut]);
                from = cut;
            }
            pieces.push(&body[from..]);
            proptest::prop_assert_eq!(stuffed(&pieces), data_payload(b"", &body));
        }
    }

    /// Undoes `data_payload` the way a receiver that ends lines at CR, LF or CRLF would: drops
    /// one leading dot of each line and stops at the first line that is a lone dot.
    fn receive(payload: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        let mut i = 0;
        while i < payload.len() {
            let byte = payload[i];
            if at_line_start && byte == b'.' {
                let next = payload.get(i + 1).copied();
                if matches!(next, Some(b'\r') | Some(b'\n') | None) {
                    // End of data; report where it was.
                    return Some((out, i));
                }
                i += 1;
                at_line_start = false;
                continue;
            }
            out.push(byte);
            at_line_start = byte == b'\n' || byte == b'\r';
            i += 1;
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn data_payload_ends_only_at_its_end_and_round_trips(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'.'),
                    proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b'\n'),
                    proptest::num::u8::ANY,
                ],
                0..200,
            )
        ) {
            let payload = data_payload(b"", &body);
            proptest::prop_assert!(payload.ends_with(b"\r\n.\r\n") || payload == b".\r\n"[..]);
            // Even a receiver lax about line ends sees the end of data only at the very end.
            let (received, end) = receive(&payload).expect("an end of data");
            proptest::prop_assert_eq!(end, payload.len() - 3);
            let mut expected = body.clone();
            if !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            if body.is_empty() {
                expected = b"\r\n".to_vec();
            }
            proptest::prop_assert_eq!(received, expected);
        }
    }

    #[test]
    fn data_payload_keeps_8bit_bytes() {
        let body = [0xC3, 0xA9, b'\r', b'\n', 0xFF, b'\r', b'\n'];
        let out = data_payload(b"", &body);
        assert_eq!(&out[..body.len()], &body);
        assert_eq!(&out[body.len()..], b".\r\n");
    }

    #[test]
    fn mail_from_table() {
        let plain = envelope();
        let mut dsn = envelope();
        dsn.dsn_ret = Some(DsnReturn::Headers);
        dsn.dsn_envid = Some("QQ+2Bx".into());
        let mut eight = envelope();
        eight.body_8bit = true;
        let mut utf8 = envelope();
        utf8.sender = "José@example.org".into();
        let mut null = envelope();
        null.sender = String::new();
        for (case, env, caps, expected) in [
            (
                "plain, no ext",
                &plain,
                NONE,
                "MAIL FROM:<a@example.org>\r\n",
            ),
            (
                "plain, all",
                &plain,
                ALL,
                "MAIL FROM:<a@example.org> SIZE=10\r\n",
            ),
            ("null sender", &null, NONE, "MAIL FROM:<>\r\n"),
            (
                "dsn offered",
                &dsn,
                ALL,
                "MAIL FROM:<a@example.org> SIZE=10 RET=HDRS ENVID=QQ+2Bx\r\n",
            ),
            (
                "dsn not offered",
                &dsn,
                NONE,
                "MAIL FROM:<a@example.org>\r\n",
            ),
            (
                "8bit",
                &eight,
                ALL,
                "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME\r\n",
            ),
            (
                "utf8 sender",
                &utf8,
                ALL,
                "MAIL FROM:<José@example.org> SIZE=10 SMTPUTF8\r\n",
            ),
        ] {
            assert_eq!(
                mail_from_command(env, &[], &caps, 10).unwrap(),
                expected,
                "{case}"
            );
        }
        let mut evil = envelope();
        evil.sender = "a@b>\r\nRCPT TO:<x@y".into();
        assert_eq!(
            mail_from_command(&evil, &[], &ALL, 10).unwrap_err().status,
            EnhancedStatus::new(5, 1, 7)
        );
    }

    #[test]
    fn rcpt_to_table() {
        let mut full = rcpt("b@example.net");
        full.notify = Some(Notify {
            never: false,
            success: true,
            failure: true,
            delay: false,
        });
        full.orcpt = Some("rfc822;b@example.net".into());
        let mut never = rcpt("b@example.net");
        never.notify = Some(Notify {
            never: true,
            ..Notify::default()
        });
        for (case, r, caps, expected) in [
            (
                "bare",
                rcpt("b@example.net"),
                ALL,
                "RCPT TO:<b@example.net>\r\n",
            ),
            (
                "dsn",
                full.clone(),
                ALL,
                "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net\r\n",
            ),
            ("dsn not offered", full, NONE, "RCPT TO:<b@example.net>\r\n"),
            (
                "never",
                never,
                ALL,
                "RCPT TO:<b@example.net> NOTIFY=NEVER\r\n",
            ),
        ] {
            assert_eq!(rcpt_to_command(&r, &caps).unwrap(), expected, "{case}");
        }
        assert!(rcpt_to_command(&rcpt("x@y>\r\nDATA"), &ALL).is_err());
        let mut spaced = rcpt("b@example.net");
        spaced.orcpt = Some("rfc822;b@x NOTIFY=NEVER".into());
        assert!(rcpt_to_command(&spaced, &ALL).is_err());
    }

    #[test]
    fn capability_table() {
        let plain = envelope();
        let mut eight = envelope();
        eight.body_8bit = true;
        let mut utf8 = envelope();
        utf8.smtputf8 = true;
        let utf8_rcpt = rcpt("Jürgen@example.net");
        for (case, env, rcpts, caps, len, status) in [
            ("plain to bare hop", &plain, vec![], NONE, 10, None),
            (
                "8bit to bare hop",
                &eight,
                vec![],
                NONE,
                10,
                Some((5, 6, 3)),
            ),
            ("8bit to 8bit hop", &eight, vec![], ALL, 10, None),
            ("utf8 to bare hop", &utf8, vec![], NONE, 10, Some((5, 6, 7))),
            (
                "utf8 rcpt to bare hop",
                &plain,
                vec![&utf8_rcpt],
                NONE,
                10,
                Some((5, 6, 7)),
            ),
            ("too big", &plain, vec![], ALL, 1001, Some((5, 3, 4))),
            ("no size limit", &plain, vec![], NONE, usize::MAX, None),
        ] {
            let got = check_capabilities(env, &rcpts, &caps, len)
                .err()
                .map(|u| u.status);
            assert_eq!(
                got,
                status.map(|(a, b, c)| EnhancedStatus::new(a, b, c)),
                "{case}"
            );
        }
    }

    #[test]
    fn ehlo_keywords_table() {
        let reply = |lines: &[&str]| Reply {
            code: 250,
            status: None,
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        };
        let caps = Capabilities::from_ehlo(&reply(&[
            "mx.example ESMTP",
            "pipelining",
            "SIZE 10240000",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
        ]));
        assert_eq!(
            caps,
            Capabilities {
                dsn: true,
                smtputf8: true,
                eight_bit_mime: true,
                starttls: true,
                pipelining: true,
                requiretls: false,
                size: 10_240_000,
                size_announced: true,
            }
        );
        // The host name line is not a keyword; SIZE without a usable number is no limit.
        for (lines, size) in [
            (&["STARTTLS", "SIZE"][..], 0),
            (&["x", "SIZE 0"][..], 0),
            (&["x", "SIZE 99999999999999999999999"][..], 0),
            (&["x", "SIZE -1"][..], 0),
        ] {
            let caps = Capabilities::from_ehlo(&reply(lines));
            assert!(!caps.starttls, "{lines:?}");
            assert!(caps.size_announced, "{lines:?}");
            assert_eq!(caps.size, size, "{lines:?}");
        }
    }
}
