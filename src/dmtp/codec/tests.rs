//! Tables for every command in both syntaxes of DIME.md §10.2 and for every reply code of §10.3,
//! the refusals of hostile lines, and round-trip properties (format, then parse, gives the value).

use proptest::prelude::*;

use super::*;
use crate::dime::Fingerprint;

fn fp(seed: &str) -> Fingerprint {
    Fingerprint::of(seed.as_bytes())
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).expect("test domain")
}

fn user(s: &str) -> SignetName {
    SignetName::User(Mailbox::parse(s).expect("test mailbox"))
}

fn org(s: &str) -> SignetName {
    SignetName::Org(domain(s))
}

fn parse(line: &str) -> Result<Command, CommandError> {
    Command::parse(format!("{line}\r\n").as_bytes())
}

#[test]
fn every_command_in_both_syntaxes() {
    let a = fp("a");
    let b = fp("b");
    let mail = |fingerprint, size, ret, data| Command::Mail {
        origin: domain("origin.example"),
        fingerprint,
        size,
        ret,
        data,
    };
    let rows: Vec<(String, Command)> = vec![
        // EHLO / HELO: the client's `EHLO <d>`, SMTP's `EHLO d`, the draft's `EHLO HOST=<d>`.
        (
            "EHLO <origin.example>".into(),
            Command::Ehlo {
                domain: domain("origin.example"),
            },
        ),
        (
            "EHLO origin.example".into(),
            Command::Ehlo {
                domain: domain("origin.example"),
            },
        ),
        (
            "EHLO HOST=<Origin.Example>".into(),
            Command::Ehlo {
                domain: domain("origin.example"),
            },
        ),
        (
            "ehlo host=origin.example".into(),
            Command::Ehlo {
                domain: domain("origin.example"),
            },
        ),
        (
            "HELO <o.example>".into(),
            Command::Helo {
                domain: domain("o.example"),
            },
        ),
        (
            "HELO HOST=<o.example>".into(),
            Command::Helo {
                domain: domain("o.example"),
            },
        ),
        ("MODE".into(), Command::Mode),
        // MAIL: client syntax.
        (
            format!("MAIL FROM: <origin.example> [{a}] SIZE=1234"),
            mail(Some(a), Some(1234), None, None),
        ),
        (
            format!("MAIL FROM:<origin.example> [{a}] SIZE=1"),
            mail(Some(a), Some(1), None, None),
        ),
        (
            format!("MAIL FROM: <origin.example> [{a}] SIZE=9 RETURN=FULL DATA=8BIT"),
            mail(
                Some(a),
                Some(9),
                Some(ReturnType::Full),
                Some(DataType::EightBit),
            ),
        ),
        (
            format!("mail from: <origin.example> [{a}] size=9 return=display data=7bit"),
            mail(
                Some(a),
                Some(9),
                Some(ReturnType::Display),
                Some(DataType::SevenBit),
            ),
        ),
        (
            "MAIL FROM: <origin.example> SIZE=5".into(),
            mail(None, Some(5), None, None),
        ),
        // MAIL: draft syntax.
        (
            format!("MAIL FROM=<origin.example> FINGERPRINT=[{a}]"),
            mail(Some(a), None, None, None),
        ),
        (
            format!("MAIL FROM=<origin.example> FINGERPRINT=[{a}] SIZE=77 RETURN=HEADER"),
            mail(Some(a), Some(77), Some(ReturnType::Header), None),
        ),
        (
            format!("MAIL FROM=<origin.example> SIZE=3 FINGERPRINT=[{a}=]"),
            mail(Some(a), Some(3), None, None),
        ),
        // RCPT, both syntaxes.
        (
            format!("RCPT TO: <dest.example> [{b}]"),
            Command::Rcpt {
                destination: domain("dest.example"),
                fingerprint: Some(b),
            },
        ),
        (
            format!("RCPT TO:<dest.example> [{b}]"),
            Command::Rcpt {
                destination: domain("dest.example"),
                fingerprint: Some(b),
            },
        ),
        (
            format!("RCPT TO=<dest.example> FINGERPRINT=[{b}]"),
            Command::Rcpt {
                destination: domain("dest.example"),
                fingerprint: Some(b),
            },
        ),
        (
            "RCPT TO: <dest.example>".into(),
            Command::Rcpt {
                destination: domain("dest.example"),
                fingerprint: None,
            },
        ),
        // DATA: libdime's client sends a bracketed placeholder; it is dropped.
        ("DATA".into(), Command::Data),
        ("DATA [fingerprint]".into(), Command::Data),
        // SGNT.
        (
            "SGNT <dest.example>".into(),
            Command::Sgnt {
                name: org("dest.example"),
                fingerprint: None,
            },
        ),
        (
            format!("SGNT <bob@dest.example> [{a}]"),
            Command::Sgnt {
                name: user("bob@dest.example"),
                fingerprint: Some(a),
            },
        ),
        (
            "SGNT bob@dest.example".into(),
            Command::Sgnt {
                name: user("bob@dest.example"),
                fingerprint: None,
            },
        ),
        (
            "SGNT DOMAIN=<dest.example>".into(),
            Command::Sgnt {
                name: org("dest.example"),
                fingerprint: None,
            },
        ),
        (
            format!("SGNT USER=<bob@dest.example> FINGERPRINT=[{a}]"),
            Command::Sgnt {
                name: user("bob@dest.example"),
                fingerprint: Some(a),
            },
        ),
        // VRFY.
        (
            format!("VRFY <dest.example> [{a}]"),
            Command::Vrfy {
                name: org("dest.example"),
                fingerprint: a,
            },
        ),
        (
            format!("VRFY <bob@dest.example> [{a}]"),
            Command::Vrfy {
                name: user("bob@dest.example"),
                fingerprint: a,
            },
        ),
        (
            format!("VRFY USER=<bob@dest.example> FINGERPRINT=[{a}]"),
            Command::Vrfy {
                name: user("bob@dest.example"),
                fingerprint: a,
            },
        ),
        (
            format!("VRFY DOMAIN=<dest.example> FINGERPRINT=[{a}]"),
            Command::Vrfy {
                name: org("dest.example"),
                fingerprint: a,
            },
        ),
        // HIST.
        (
            "HIST <bob@dest.example>".into(),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::All,
            },
        ),
        (
            format!("HIST <bob@dest.example> [{a}]"),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::From(a),
            },
        ),
        (
            format!("HIST <bob@dest.example> [{a}] [{b}]"),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::Between(a, b),
            },
        ),
        (
            "HIST USER=<bob@dest.example>".into(),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::All,
            },
        ),
        (
            format!("HIST USER=<bob@dest.example> START=[{a}]"),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::From(a),
            },
        ),
        (
            format!("HIST USER=<bob@dest.example> STOP=[{b}] START=[{a}]"),
            Command::Hist {
                name: user("bob@dest.example"),
                range: HistRange::Between(a, b),
            },
        ),
        ("STATS".into(), Command::Stats),
        ("STATS [nonce]".into(), Command::Stats),
        ("NOOP".into(), Command::Noop),
        ("NOOP anything at all".into(), Command::Noop),
        ("RSET".into(), Command::Rset),
        ("HELP".into(), Command::Help),
        ("QUIT".into(), Command::Quit),
        ("  QUIT  ".into(), Command::Quit),
    ];
    for (line, want) in rows {
        assert_eq!(parse(&line), Ok(want.clone()), "{line:?}");
        // The canonical form parses back to the same value.
        assert_eq!(Command::parse(&want.to_line()), Ok(want.clone()), "{want}");
    }
}

#[test]
fn canonical_form_is_the_libdime_client_syntax() {
    let a = fp("a");
    let b = fp("b");
    let rows: Vec<(Command, String)> = vec![
        (
            Command::Ehlo {
                domain: domain("o.example"),
            },
            "EHLO <o.example>".into(),
        ),
        (
            Command::Helo {
                domain: domain("o.example"),
            },
            "HELO <o.example>".into(),
        ),
        (
            Command::Mail {
                origin: domain("o.example"),
                fingerprint: Some(a),
                size: Some(42),
                ret: Some(ReturnType::Full),
                data: Some(DataType::EightBit),
            },
            format!("MAIL FROM: <o.example> [{a}] SIZE=42 RETURN=FULL DATA=8BIT"),
        ),
        (
            Command::Rcpt {
                destination: domain("d.example"),
                fingerprint: Some(b),
            },
            format!("RCPT TO: <d.example> [{b}]"),
        ),
        (Command::Data, "DATA".into()),
        (
            Command::Sgnt {
                name: user("bob@d.example"),
                fingerprint: None,
            },
            "SGNT <bob@d.example>".into(),
        ),
        (
            Command::Vrfy {
                name: org("d.example"),
                fingerprint: a,
            },
            format!("VRFY <d.example> [{a}]"),
        ),
        (
            Command::Hist {
                name: user("bob@d.example"),
                range: HistRange::Between(a, b),
            },
            format!("HIST <bob@d.example> [{a}] [{b}]"),
        ),
        (Command::Mode, "MODE".into()),
        (Command::Stats, "STATS".into()),
        (Command::Noop, "NOOP".into()),
        (Command::Rset, "RSET".into()),
        (Command::Help, "HELP".into()),
        (Command::Quit, "QUIT".into()),
    ];
    for (command, line) in rows {
        assert_eq!(command.to_line(), format!("{line}\r\n").into_bytes());
    }
}

#[test]
fn hostile_lines_get_typed_errors() {
    let a = fp("a");
    let syntax = |verb| move |e: &CommandError| matches!(e, CommandError::Syntax { verb: v, .. } if *v == verb);
    type Check = Box<dyn Fn(&CommandError) -> bool>;
    let rows: Vec<(Vec<u8>, Check)> = vec![
        (b"NOOP\n".to_vec(), Box::new(|e| *e == CommandError::NoCrlf)),
        (b"NOOP".to_vec(), Box::new(|e| *e == CommandError::NoCrlf)),
        (
            b"NO\rOP\r\n".to_vec(),
            Box::new(|e| *e == CommandError::BareCr),
        ),
        (
            b"NOOP\n\r\n".to_vec(),
            Box::new(|e| *e == CommandError::NoCrlf),
        ),
        (b"\r\n".to_vec(), Box::new(|e| *e == CommandError::Empty)),
        (b"   \r\n".to_vec(), Box::new(|e| *e == CommandError::Empty)),
        (
            b"NOOP \xff\r\n".to_vec(),
            Box::new(|e| *e == CommandError::NotAscii),
        ),
        (
            b"NOOP \0\r\n".to_vec(),
            Box::new(|e| *e == CommandError::NotAscii),
        ),
        (
            [b"NOOP ".repeat(200).as_slice(), b"\r\n"].concat(),
            Box::new(|e| matches!(e, CommandError::TooLong { .. })),
        ),
        (
            b"EXPN list\r\n".to_vec(),
            Box::new(|e| *e == CommandError::UnknownVerb("EXPN".into())),
        ),
        (
            b"STARTTLS\r\n".to_vec(),
            Box::new(|e| *e == CommandError::UnknownVerb("STARTTLS".into())),
        ),
        (b"EHLO\r\n".to_vec(), Box::new(syntax(Verb::Ehlo))),
        (b"EHLO a b\r\n".to_vec(), Box::new(syntax(Verb::Ehlo))),
        (
            b"EHLO -bad-.example\r\n".to_vec(),
            Box::new(|e| {
                matches!(
                    e,
                    CommandError::Name {
                        verb: Verb::Ehlo,
                        source: NameError::BadDomain
                    }
                )
            }),
        ),
        (
            b"EHLO a..b\r\n".to_vec(),
            Box::new(|e| matches!(e, CommandError::Name { .. })),
        ),
        (b"MODE x\r\n".to_vec(), Box::new(syntax(Verb::Mode))),
        (
            b"MAIL <o.example>\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: o.example\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <user@o.example> SIZE=1\r\n".to_vec(),
            Box::new(|e| {
                matches!(
                    e,
                    CommandError::Name {
                        verb: Verb::Mail,
                        ..
                    }
                )
            }),
        ),
        (
            b"MAIL FROM: <o.example> [fingerprint] SIZE=1\r\n".to_vec(),
            Box::new(|e| *e == CommandError::Fingerprint { verb: Verb::Mail }),
        ),
        (
            b"MAIL FROM: <o.example> SIZE=-1\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example> SIZE=99999999999999999999\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example> SIZE=1 SIZE=2\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example> BODY=8BITMIME\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example> RETURN=ALL\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o.example>x\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"MAIL FROM: <o .example>\r\n".to_vec(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            format!("MAIL FROM: <o.example> [{a}] [{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            format!("MAIL FROM: <o.example> [{a}] FINGERPRINT=[{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Mail)),
        ),
        (
            b"RCPT TO: <d.example> SIZE=1\r\n".to_vec(),
            Box::new(syntax(Verb::Rcpt)),
        ),
        (
            b"RCPT FROM: <d.example>\r\n".to_vec(),
            Box::new(syntax(Verb::Rcpt)),
        ),
        (b"DATA now\r\n".to_vec(), Box::new(syntax(Verb::Data))),
        (b"SGNT\r\n".to_vec(), Box::new(syntax(Verb::Sgnt))),
        (
            format!("SGNT <d.example> [{a}] [{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Sgnt)),
        ),
        (
            b"SGNT USER=<d.example>\r\n".to_vec(),
            Box::new(|e| {
                matches!(
                    e,
                    CommandError::Name {
                        verb: Verb::Sgnt,
                        ..
                    }
                )
            }),
        ),
        (
            b"SGNT <a@@d.example>\r\n".to_vec(),
            Box::new(|e| matches!(e, CommandError::Name { .. })),
        ),
        (
            b"SGNT <\"a b\"@d.example>\r\n".to_vec(),
            Box::new(syntax(Verb::Sgnt)),
        ),
        (
            format!("SGNT <d.example> START=[{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Sgnt)),
        ),
        (
            b"VRFY <d.example>\r\n".to_vec(),
            Box::new(syntax(Verb::Vrfy)),
        ),
        (
            b"VRFY <d.example> [AAAA]\r\n".to_vec(),
            Box::new(|e| *e == CommandError::Fingerprint { verb: Verb::Vrfy }),
        ),
        (
            format!("HIST USER=<b@d.example> STOP=[{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Hist)),
        ),
        (
            format!("HIST <b@d.example> [{a}] [{a}] [{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Hist)),
        ),
        (
            format!("HIST <b@d.example> [{a}] START=[{a}]\r\n").into_bytes(),
            Box::new(syntax(Verb::Hist)),
        ),
        (b"STATS a b\r\n".to_vec(), Box::new(syntax(Verb::Stats))),
        (b"QUIT now\r\n".to_vec(), Box::new(syntax(Verb::Quit))),
    ];
    for (line, check) in rows {
        let err = Command::parse(&line).expect_err(&String::from_utf8_lossy(&line));
        assert!(
            check(&err),
            "{:?} -> {err:?}",
            String::from_utf8_lossy(&line)
        );
        let code = err.reply_code();
        assert!(
            matches!(code, ReplyCode::CommandSyntax | ReplyCode::ArgumentSyntax),
            "{err:?}"
        );
    }
}

#[test]
fn longest_names_fit_in_one_command_line() {
    let label = "a".repeat(63);
    let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(long.len(), DOMAIN_MAX);
    let local = "c".repeat(LOCAL_PART_MAX);
    let name = SignetName::User(Mailbox::new(&local, domain(&long)).expect("longest mailbox"));
    let command = Command::Hist {
        name,
        range: HistRange::Between(fp("a"), fp("b")),
    };
    let line = command.to_line();
    assert!(line.len() <= COMMAND_LINE_MAX, "{}", line.len());
    assert_eq!(Command::parse(&line), Ok(command));
    assert!(Domain::parse(&format!("{long}b")).is_err());
    assert!(Mailbox::parse(&format!("{local}c@x")).is_err());
}

#[test]
fn every_reply_code_parses_and_formats() {
    let rows: &[(u16, ReplyCode, ReplyClass)] = &[
        (214, ReplyCode::Help, ReplyClass::Positive),
        (220, ReplyCode::Ready, ReplyClass::Positive),
        (221, ReplyCode::Closing, ReplyClass::Positive),
        (250, ReplyCode::Ok, ReplyClass::Positive),
        (254, ReplyCode::Accepted, ReplyClass::Positive),
        (255, ReplyCode::Duplicate, ReplyClass::Positive),
        (270, ReplyCode::OrgSignet, ReplyClass::Positive),
        (271, ReplyCode::OrgSignetCurrent, ReplyClass::Positive),
        (280, ReplyCode::UserSignet, ReplyClass::Positive),
        (281, ReplyCode::UserSignetCurrent, ReplyClass::Positive),
        (290, ReplyCode::History, ReplyClass::Positive),
        (291, ReplyCode::HistoryCurrent, ReplyClass::Positive),
        (354, ReplyCode::StartMessage, ReplyClass::Intermediate),
        (421, ReplyCode::Terminating, ReplyClass::Transient),
        (431, ReplyCode::DestinationLimits, ReplyClass::Transient),
        (450, ReplyCode::AccessDenied, ReplyClass::Transient),
        (451, ReplyCode::DataCorrupted, ReplyClass::Transient),
        (452, ReplyCode::InsufficientStorage, ReplyClass::Transient),
        (
            470,
            ReplyCode::OriginSignetUnavailable,
            ReplyClass::Transient,
        ),
        (476, ReplyCode::SignetUnavailable, ReplyClass::Transient),
        (500, ReplyCode::CommandSyntax, ReplyClass::Permanent),
        (501, ReplyCode::ArgumentSyntax, ReplyClass::Permanent),
        (502, ReplyCode::CommandDisabled, ReplyClass::Permanent),
        (503, ReplyCode::BadSequence, ReplyClass::Permanent),
        (510, ReplyCode::InvalidRecipient, ReplyClass::Permanent),
        (552, ReplyCode::TooLarge, ReplyClass::Permanent),
        (570, ReplyCode::OriginSignetMissing, ReplyClass::Permanent),
        (575, ReplyCode::InvalidOriginSignet, ReplyClass::Permanent),
        (
            576,
            ReplyCode::InvalidDestinationSignet,
            ReplyClass::Permanent,
        ),
        (
            578,
            ReplyCode::InvalidOriginSignature,
            ReplyClass::Permanent,
        ),
        (
            586,
            ReplyCode::InvalidRecipientSignet,
            ReplyClass::Permanent,
        ),
    ];
    assert_eq!(
        rows.len(),
        ReplyCode::TABLE.len(),
        "every named code has a row"
    );
    for &(number, code, class) in rows {
        assert_eq!(ReplyCode::from_number(number), Some(code));
        assert_eq!(code.number(), number);
        assert_eq!(code.class(), class, "{number}");
        let line = format!("{number} some text\r\n");
        let reply = Reply::parse(line.as_bytes()).expect("reply");
        assert_eq!(reply.code(), code);
        assert_eq!(reply.lines(), ["some text"]);
        assert_eq!(reply.to_bytes(), line.into_bytes());
    }
    assert_eq!(ReplyCode::from_number(299), Some(ReplyCode::Other(299)));
    assert_eq!(ReplyCode::Other(299).class(), ReplyClass::Positive);
    assert_eq!(ReplyCode::from_number(99), None);
    assert_eq!(ReplyCode::from_number(600), None);
}

#[test]
fn multi_line_replies() {
    let bytes = b"290-[AAAA]\r\n290-[BBBB]\r\n290 OK\r\n";
    let reply = Reply::parse(bytes).expect("multi-line");
    assert_eq!(reply.code(), ReplyCode::History);
    assert_eq!(reply.lines(), ["[AAAA]", "[BBBB]", "OK"]);
    assert_eq!(reply.last_line(), "OK");
    assert_eq!(reply.to_bytes(), bytes);
    // A bare code is a reply with empty text.
    assert_eq!(Reply::parse(b"250\r\n").expect("bare").lines(), [""]);
    assert_eq!(Reply::new(ReplyCode::Ok, "").to_bytes(), b"250\r\n");
}

#[test]
fn hostile_replies_get_typed_errors() {
    let rows: &[(&[u8], ReplyError)] = &[
        (b"25 OK\r\n", ReplyError::BadCode),
        (b"abc OK\r\n", ReplyError::BadCode),
        (b"650 OK\r\n", ReplyError::BadCode),
        (b"099 OK\r\n", ReplyError::BadCode),
        (b"250_OK\r\n", ReplyError::BadSeparator),
        (b"250 OK\n", ReplyError::NoCrlf),
        (b"250 O\rK\r\n", ReplyError::BadText),
        (b"250 O\x00K\r\n", ReplyError::BadText),
        (b"250 \xff\r\n", ReplyError::BadText),
        (
            b"250-a\r\n251 b\r\n",
            ReplyError::MixedCodes {
                first: 250,
                got: 251,
            },
        ),
        (b"250-a\r\n", ReplyError::Incomplete),
        (b"250 a\r\n250 b\r\n", ReplyError::Trailing(7)),
        (b"", ReplyError::Incomplete),
    ];
    for (bytes, want) in rows {
        assert_eq!(
            Reply::parse(bytes),
            Err(want.clone()),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let long = [b"250 ".as_slice(), &[b'a'; REPLY_LINE_MAX], b"\r\n"].concat();
    assert_eq!(
        Reply::parse(&long),
        Err(ReplyError::LineTooLong {
            max: REPLY_LINE_MAX
        })
    );
    // The reader refuses an endless multi-line reply once it passes REPLY_MAX.
    let mut reader = ReplyReader::new();
    let line = [b"250-".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
    let mut result = Ok(None);
    for _ in 0..(REPLY_MAX / line.len() + 2) {
        result = reader.push(&mut line.as_slice());
        if result.is_err() {
            break;
        }
        assert!(reader.buffered_len() <= REPLY_MAX);
    }
    assert_eq!(result, Err(ReplyError::TooLong { max: REPLY_MAX }));
}

#[test]
fn reply_text_from_a_peer_cannot_break_framing() {
    let reply = Reply::new(ReplyCode::ArgumentSyntax, "bad\r\n250 OK injected");
    assert_eq!(reply.to_bytes(), b"501 bad  250 OK injected\r\n");
    let long = Reply::new(ReplyCode::Ok, "x".repeat(10_000));
    assert!(long.to_bytes().len() <= REPLY_LINE_MAX);
    assert!(Reply::exact(ReplyCode::Ok, vec!["x".repeat(10_000)]).is_err());
    assert!(Reply::exact(ReplyCode::Ok, vec!["a\nb".into()]).is_err());
}

#[test]
fn reply_reader_frames_any_split() {
    let stream = b"220 h DMTPv1\r\n250-h\r\n250 OK\r\n354 CONTINUE [x]\r\n";
    for size in [1, 2, 3, 7, 64] {
        let mut reader = ReplyReader::new();
        let mut replies = Vec::new();
        for chunk in stream.chunks(size) {
            let mut input = chunk;
            while let Some(reply) = reader.push(&mut input).expect("valid stream") {
                replies.push(reply);
            }
            assert!(input.is_empty());
        }
        let codes: Vec<u16> = replies.iter().map(|r| r.code().number()).collect();
        assert_eq!(codes, [220, 250, 354], "split {size}");
        assert_eq!(replies[1].lines(), ["h", "OK"]);
    }
}

#[test]
fn dual_mode_starttls_parsing() {
    let host = Some(Ok(domain("dx.example")));
    assert_eq!(
        parse_dual_mode_starttls(b"STARTTLS <dx.example> MODE=DMTPv1\r\n"),
        host
    );
    assert_eq!(
        parse_dual_mode_starttls(b"starttls <DX.example> mode=dmtpv1"),
        host
    );
    assert_eq!(
        parse_dual_mode_starttls(b"STARTTLS HOST=<dx.example> MODE=DMTP\n"),
        host
    );
    assert_eq!(
        parse_dual_mode_starttls(b"STARTTLS MODE=DMTPv1 <dx.example>\r\n"),
        host
    );
    assert_eq!(
        parse_dual_mode_starttls(&dual_mode_starttls_line(&domain("dx.example"))),
        host
    );
    // Plain SMTP STARTTLS and other lines are SMTP's.
    assert_eq!(parse_dual_mode_starttls(b"STARTTLS\r\n"), None);
    assert_eq!(
        parse_dual_mode_starttls(b"STARTTLS <dx.example> MODE=SMTP\r\n"),
        None
    );
    assert_eq!(parse_dual_mode_starttls(b"EHLO x\r\n"), None);
    assert_eq!(
        parse_dual_mode_starttls(b"MAIL FROM:<a@b> MODE=DMTPv1\r\n"),
        None
    );
    assert_eq!(parse_dual_mode_starttls(b"\xff\xfe"), None);
    // DMTP asked for, but the host is missing or bad: 501.
    assert!(matches!(
        parse_dual_mode_starttls(b"STARTTLS MODE=DMTPv1\r\n"),
        Some(Err(CommandError::Syntax {
            verb: Verb::StartTls,
            ..
        }))
    ));
    assert!(matches!(
        parse_dual_mode_starttls(b"STARTTLS <bad_host> MODE=DMTPv1\r\n"),
        Some(Err(CommandError::Name {
            verb: Verb::StartTls,
            ..
        }))
    ));
    assert!(matches!(
        parse_dual_mode_starttls(b"STARTTLS <dx.example> [x] MODE=DMTPv1\r\n"),
        Some(Err(_))
    ));
}

#[test]
fn commit_hash_names_the_envelope() {
    let mail = parse(&format!("MAIL FROM: <o.example> [{}] SIZE=10", fp("o"))).expect("mail");
    let rcpt = parse(&format!("RCPT TO: <d.example> [{}]", fp("d"))).expect("rcpt");
    let hash = commit_hash(&mail, &rcpt);
    assert_eq!(hash.len(), 86);
    assert_eq!(hash, commit_hash(&mail, &rcpt));
    let other = parse(&format!("MAIL FROM: <o.example> [{}] SIZE=11", fp("o"))).expect("mail");
    assert_ne!(hash, commit_hash(&other, &rcpt));
    // The draft syntax of the same envelope commits to the same hash.
    let draft = parse(&format!(
        "MAIL FROM=<o.example> FINGERPRINT=[{}] SIZE=10",
        fp("o")
    ))
    .expect("mail");
    assert_eq!(hash, commit_hash(&draft, &rcpt));
}

// ---- round-trip properties ----

fn arb_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn arb_domain() -> impl Strategy<Value = Domain> {
    proptest::collection::vec(arb_label(), 1..4)
        .prop_map(|labels| Domain::parse(&labels.join(".")).expect("generated domain"))
}

fn arb_name() -> impl Strategy<Value = SignetName> {
    prop_oneof![
        arb_domain().prop_map(SignetName::Org),
        (
            "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[A-Za-z0-9_-]{1,10}){0,2}",
            arb_domain()
        )
            .prop_map(|(local, d)| SignetName::User(
                Mailbox::new(&local, d).expect("generated mailbox")
            )),
    ]
}

fn arb_fp() -> impl Strategy<Value = Fingerprint> {
    any::<[u8; 32]>().prop_map(|seed| Fingerprint::of(&seed))
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        arb_domain().prop_map(|domain| Command::Ehlo { domain }),
        arb_domain().prop_map(|domain| Command::Helo { domain }),
        Just(Command::Mode),
        (
            arb_domain(),
            proptest::option::of(arb_fp()),
            proptest::option::of(any::<u64>().prop_map(|n| n % 10_000_000_000_000_000_000)),
            proptest::option::of(prop_oneof![
                Just(ReturnType::Full),
                Just(ReturnType::Display),
                Just(ReturnType::Header)
            ]),
            proptest::option::of(prop_oneof![
                Just(DataType::SevenBit),
                Just(DataType::EightBit)
            ]),
        )
            .prop_map(|(origin, fingerprint, size, ret, data)| Command::Mail {
                origin,
                fingerprint,
                size,
                ret,
                data
            }),
        (arb_domain(), proptest::option::of(arb_fp())).prop_map(|(destination, fingerprint)| {
            Command::Rcpt {
                destination,
                fingerprint,
            }
        }),
        Just(Command::Data),
        (arb_name(), proptest::option::of(arb_fp()))
            .prop_map(|(name, fingerprint)| Command::Sgnt { name, fingerprint }),
        (arb_name(), arb_fp()).prop_map(|(name, fingerprint)| Command::Vrfy { name, fingerprint }),
        (
            arb_name(),
            prop_oneof![
                Just(HistRange::All),
                arb_fp().prop_map(HistRange::From),
                (arb_fp(), arb_fp()).prop_map(|(a, b)| HistRange::Between(a, b)),
            ]
        )
            .prop_map(|(name, range)| Command::Hist { name, range }),
        Just(Command::Stats),
        Just(Command::Noop),
        Just(Command::Rset),
        Just(Command::Help),
        Just(Command::Quit),
    ]
}

fn arb_code() -> impl Strategy<Value = ReplyCode> {
    (100u16..600).prop_map(|n| ReplyCode::from_number(n).expect("in range"))
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    (
        arb_code(),
        proptest::collection::vec("[ -~\t\u{e9}\u{4e2d}]{0,80}", 1..6),
    )
        .prop_map(|(code, lines)| Reply::exact(code, lines).expect("generated reply"))
}

proptest! {
    #[test]
    fn command_round_trip(command in arb_command()) {
        let line = command.to_line();
        prop_assert!(line.len() <= COMMAND_LINE_MAX);
        prop_assert_eq!(Command::parse(&line), Ok(command));
    }

    #[test]
    fn reply_round_trip(reply in arb_reply()) {
        prop_assert_eq!(Reply::parse(&reply.to_bytes()), Ok(reply));
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Command::parse(&bytes);
        let _ = Reply::parse(&bytes);
        let _ = parse_dual_mode_starttls(&bytes);
    }
}
