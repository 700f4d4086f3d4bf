//! Drives `dmtp::ClientSession` with arbitrary server bytes in arbitrary splits, jobs, quits,
//! timeouts, TLS and EOF events.
//!
//! Asserts: no panic; buffered bytes stay bounded; nothing is output after `Close`; a
//! `Delivered` event comes only after the message itself was sent (the Send just before it is a
//! message: messages here hold a NUL, command lines never do); and the conversation is the same
//! whether the server's bytes arrive whole or split.
//!
//! Ops (`op % 8`): 0-3 server bytes (a length byte, that many source bytes mapped partly onto
//! reply tokens, then a split byte); 4 submit a job; 5 quit; 6 a timeout check (next byte, in
//! minutes); 7 TLS established or EOF.
#![no_main]

use std::time::{Duration, Instant};

use dimegate::dime::Fingerprint;
use dimegate::dmtp::client::{
    ClientConfig, ClientEvent, ClientOutput, ClientSession, Delivery, Job, Lookup,
};
use dimegate::dmtp::codec::{Domain, HistRange, REPLY_LINE_MAX, REPLY_MAX, SignetName};
use libfuzzer_sys::fuzz_target;

const TOKENS: &[&[u8]] = &[
    b"220 dx.example DMTPv1\r\n",
    b"220 mx.example ESMTP\r\n",
    b"250-dx.example\r\n",
    b"250 OK\r\n",
    b"250 OK DMTPv1\r\n",
    b"354 CONTINUE [h]\r\n",
    b"250 OK [tx1]\r\n",
    b"270 OK [AAEC]\r\n",
    b"280 OK [AAEC]\r\n",
    b"271 CURRENT\r\n",
    b"270 UPDATE ",
    b"290-[AAEC]\r\n",
    b"290 OK\r\n",
    b"221 BYE\r\n",
    b"421 bye\r\n",
    b"451 later\r\n",
    b"552 big\r\n",
    b"576 stale\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"-",
    b" ",
    b"[",
    b"]",
];

struct Driver {
    session: ClientSession,
    closed: bool,
    last_send_was_message: bool,
    transcript: Vec<u8>,
}

impl Driver {
    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match &output {
                ClientOutput::Send(bytes) => {
                    self.last_send_was_message = bytes.contains(&0);
                    if !self.last_send_was_message {
                        assert!(bytes.len() <= 512 && bytes.ends_with(b"\r\n"));
                    }
                }
                ClientOutput::Event(ClientEvent::Delivered { .. }) => {
                    assert!(self.last_send_was_message, "Delivered before the message was sent");
                    self.last_send_was_message = false;
                }
                ClientOutput::Close => self.closed = true,
                _ => {}
            }
            self.transcript
                .extend_from_slice(format!("{output:?}").as_bytes());
        }
        assert_eq!(self.closed, self.session.is_closed());
    }
}

fn job(pick: u8, n: usize) -> Job {
    let domain = |s: &str| Domain::parse(s).expect("domain");
    let fp = Fingerprint::of(b"fp");
    match pick % 4 {
        0 | 1 => Job::Deliver(Delivery {
            origin: domain("o.example"),
            origin_fingerprint: fp,
            destination: domain("dx.example"),
            destination_fingerprint: Some(fp),
            ret: None,
            data_type: None,
            message: format!("\0message {n}").into_bytes(),
        }),
        2 => Job::Lookup(Lookup::Sgnt {
            name: SignetName::Org(domain("dx.example")),
            fingerprint: None,
        }),
        _ => Job::Lookup(Lookup::Hist {
            name: SignetName::parse("u@dx.example").expect("name"),
            range: HistRange::All,
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let config = ClientConfig::new(Domain::parse("o.example").expect("domain"));
    let dual = data.first().is_some_and(|b| b & 1 == 1);
    let new = || {
        let session = if dual {
            ClientSession::new_dual_mode(config.clone(), Domain::parse("dx.example").expect("domain"), start)
        } else {
            ClientSession::new(config.clone(), start)
        };
        Driver {
            session,
            closed: false,
            last_send_was_message: false,
            transcript: Vec::new(),
        }
    };
    let mut whole = new();
    let mut split = new();
    let mut now = start;
    let mut jobs = 0;
    let mut bytes = data.iter().copied().skip(1);
    while let Some(op) = bytes.next() {
        match op % 8 {
            0..=3 => {
                let count = usize::from(bytes.next().unwrap_or(0));
                let mut input = Vec::new();
                for b in bytes.by_ref().take(count) {
                    match TOKENS.get(usize::from(b)) {
                        Some(token) => input.extend_from_slice(token),
                        None => input.push(b),
                    }
                }
                let size = usize::from(bytes.next().unwrap_or(0)).max(1);
                // The glue never hands over an empty read (zero bytes is the end of the stream).
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
                let pick = bytes.next().unwrap_or(0);
                jobs += 1;
                for d in [&mut whole, &mut split] {
                    let _ = d.session.submit(now, job(pick, jobs));
                }
            }
            5 => {
                for d in [&mut whole, &mut split] {
                    d.session.quit(now);
                }
            }
            6 => {
                now += Duration::from_secs(60 * u64::from(bytes.next().unwrap_or(0)));
                for d in [&mut whole, &mut split] {
                    d.session.handle_timeout(now);
                }
            }
            _ => {
                let eof = bytes.next().unwrap_or(0) & 1 == 1;
                for d in [&mut whole, &mut split] {
                    if eof {
                        d.session.handle_closed();
                    } else {
                        d.session.handle_tls_established(now);
                    }
                }
            }
        }
        for d in [&mut whole, &mut split] {
            d.drain();
            assert!(d.session.buffered_len() <= REPLY_MAX + REPLY_LINE_MAX);
        }
        assert_eq!(whole.transcript, split.transcript, "split changed the conversation");
    }
});
