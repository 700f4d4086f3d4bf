//! Drives `dmtp::ServerSession` with arbitrary bytes in arbitrary splits and arbitrary glue
//! answers.
//!
//! Asserts: no panic; buffered bytes stay bounded; while a `VerifyAndStore` (or a look-up) is
//! unanswered nothing is sent, so no 2xx can precede the store's answer; a stored body is never empty
//! and never over the limit; nothing is output after
//! `Close`; and the conversation is the same whether input arrives whole or split.
//!
//! Ops (`op % 8`): 0-3 client bytes (a length byte, that many source bytes mapped partly onto
//! DMTP tokens, then a split byte); 4 answer a look-up; 5 answer the store; 6 a timeout check
//! (the next byte, in minutes); 7 shutdown (only when the next byte is 0xFF).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dimegate::dime::{Fingerprint, KeyKind, PrivateKey, Signet};
use dimegate::dmtp::codec::{Domain, TxId};
use dimegate::dmtp::server::{
    HELD_INPUT_MAX, Limits, LookupFailure, Output, Policy, ServedDomain, ServerSession,
    TransferRefusal,
};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

const MAX_MESSAGE: u64 = 64;

struct Fixture {
    chain: Vec<Signet>,
    tokens: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let chain: Vec<Signet> = (1..=2)
            .map(|seed| {
                let key = PrivateKey::generate(KeyKind::Org, &mut StdRng::seed_from_u64(seed));
                Signet::create_org(&key, "example.com", &[], &[]).expect("org signet")
            })
            .collect();
        let old = chain[0].crypto_fingerprint();
        let cur = chain[1].crypto_fingerprint();
        let other = Fingerprint::of(b"origin");
        let tokens = [
            "EHLO <o.example>\r\n".to_owned(),
            "HELO o.example\r\n".to_owned(),
            format!("MAIL FROM: <o.example> [{other}] SIZE="),
            format!("MAIL FROM=<o.example> FINGERPRINT=[{other}] SIZE="),
            format!("RCPT TO: <example.com> [{cur}]\r\n"),
            format!("RCPT TO=<example.com> FINGERPRINT=[{old}]\r\n"),
            "RCPT TO: <other.example>\r\n".to_owned(),
            "DATA\r\n".to_owned(),
            "SGNT <example.com>\r\n".to_owned(),
            format!("SGNT DOMAIN=<example.com> FINGERPRINT=[{old}]\r\n"),
            "SGNT <user@example.com>\r\n".to_owned(),
            format!("VRFY <example.com> [{old}]\r\n"),
            format!("HIST <example.com> [{old}] [{cur}]\r\n"),
            "HIST USER=<u@example.com>\r\n".to_owned(),
            "MODE\r\n".to_owned(),
            "RSET\r\n".to_owned(),
            "NOOP\r\n".to_owned(),
            "QUIT\r\n".to_owned(),
            "STATS\r\n".to_owned(),
            "\r\n".to_owned(),
            "\n".to_owned(),
            "\r".to_owned(),
            " ".to_owned(),
            "<".to_owned(),
            ">".to_owned(),
            "[".to_owned(),
            "]".to_owned(),
            "=".to_owned(),
            ":".to_owned(),
            "0".to_owned(),
            "1".to_owned(),
            "5".to_owned(),
            "10".to_owned(),
            "64".to_owned(),
            "65".to_owned(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        Fixture { chain, tokens }
    })
}

struct Driver {
    session: ServerSession,
    pending: bool,
    closed: bool,
    transcript: Vec<u8>,
}

impl Driver {
    fn new(session: ServerSession) -> Driver {
        let mut driver = Driver {
            session,
            pending: false,
            closed: false,
            transcript: Vec::new(),
        };
        driver.drain();
        driver
    }

    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match output {
                Output::Reply(bytes) => {
                    assert!(!self.pending, "reply while the glue's answer is pending");
                    assert!(bytes.ends_with(b"\r\n"));
                    self.transcript.extend_from_slice(&bytes);
                }
                Output::LookupSignet(lookup) => {
                    self.pending = true;
                    self.transcript
                        .extend_from_slice(format!("[lookup {lookup:?}]").as_bytes());
                }
                Output::VerifyAndStore(transfer) => {
                    self.pending = true;
                    assert!(transfer.body.len() as u64 <= MAX_MESSAGE);
                    assert!(!transfer.body.is_empty());
                    self.transcript
                        .extend_from_slice(format!("[store {transfer:?}]").as_bytes());
                }
                Output::Close => {
                    self.closed = true;
                    self.transcript.extend_from_slice(b"[close]");
                }
            }
        }
        assert_eq!(self.closed, self.session.is_closed());
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let policy = Policy {
        hostname: "dx.example.com".to_owned(),
        served: vec![ServedDomain {
            domain: Domain::parse("example.com").expect("domain"),
            org_fingerprints: vec![fixture.chain[1].crypto_fingerprint()],
        }],
    };
    let limits = Limits {
        max_message_size: MAX_MESSAGE,
        max_errors: 30,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
    };
    let start = Instant::now();
    let mut whole = Driver::new(ServerSession::new(policy.clone(), limits.clone(), start));
    let mut split = Driver::new(ServerSession::new(policy, limits, start));
    let mut now = start;
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        match op % 8 {
            0..=3 => {
                let count = usize::from(bytes.next().unwrap_or(0));
                let mut input = Vec::new();
                for b in bytes.by_ref().take(count) {
                    match fixture.tokens.get(usize::from(b)) {
                        Some(token) => input.extend_from_slice(token),
                        None => input.push(b),
                    }
                }
                let size = usize::from(bytes.next().unwrap_or(0)).max(1);
                // The glue never hands over an empty read (zero bytes is the end of the stream),
                // and an empty input would count as activity for `whole` alone.
                if input.is_empty() {
                    continue;
                }
                whole.session.handle_input(now, &input);
                whole.drain();
                for chunk in input.chunks(size) {
                    split.session.handle_input(now, chunk);
                    split.drain();
                }
            }
            4 => {
                let pick = bytes.next().unwrap_or(0) % 4;
                for d in [&mut whole, &mut split] {
                    d.pending = false;
                    d.session.handle_signet_answer(match pick {
                        0 => Ok(fixture.chain.clone()),
                        1 => Ok(Vec::new()),
                        2 => Err(LookupFailure::UnknownName),
                        _ => Err(LookupFailure::Unavailable),
                    });
                }
            }
            5 => {
                let pick = bytes.next().unwrap_or(0) % 11;
                let refusals = [
                    TransferRefusal::InvalidOriginSignet,
                    TransferRefusal::InvalidOriginSignature,
                    TransferRefusal::OriginSignetUnavailable,
                    TransferRefusal::OriginSignetMissing,
                    TransferRefusal::WrongDestinationSignet,
                    TransferRefusal::InvalidRecipient,
                    TransferRefusal::Corrupted,
                    TransferRefusal::TooLarge,
                    TransferRefusal::StoreFull,
                    TransferRefusal::StoreFailed,
                ];
                for d in [&mut whole, &mut split] {
                    d.pending = false;
                    d.session.handle_stored(match refusals.get(usize::from(pick)) {
                        Some(r) => Err(*r),
                        None => Ok(TxId::parse("0000000000000001").expect("txid")),
                    });
                }
            }
            6 => {
                now += Duration::from_secs(60 * u64::from(bytes.next().unwrap_or(0)));
                for d in [&mut whole, &mut split] {
                    d.session.handle_timeout(now);
                }
            }
            _ => {
                if bytes.next() == Some(0xFF) {
                    for d in [&mut whole, &mut split] {
                        d.session.handle_shutdown();
                    }
                }
            }
        }
        for d in [&mut whole, &mut split] {
            d.drain();
            assert!(d.session.buffered_len() <= MAX_MESSAGE as usize + 2 + 512 + HELD_INPUT_MAX);
        }
        assert_eq!(whole.transcript, split.transcript, "split changed the conversation");
    }
});
