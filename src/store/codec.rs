//! The binary encoding of a queue record (record version 2), and its hostile-input decoder.
//!
//! Why binary: the JSON of version 1 spent about 440 bytes on a one-recipient message (field
//! names, quoted numbers, the recipient address twice), which at 1 KiB per message is 40% of the
//! queue's size on disk. This encoding spends about 100: little-endian LEB128 varints for every
//! integer and length, one byte of flags, the recipient address once (repeated only in the rare
//! case that the state's address differs from the envelope's), and a small body stored in the same
//! value right after the record (see the `store` module docs for why in the same value).
//!
//! Layout, after the version byte the caller writes:
//!
//! ```text
//! flags u8          bit 0 delay_warned, 1 body_8bit, 2 smtputf8, 3 require_tls, 4 dime present
//! body u8           0 row of the legacy `bodies` table, 1 body file, 2 inline: the value's tail
//! size, arrival     varint, varint
//! sender, helo      str, str                          (str = varint length + UTF-8 bytes)
//! client            u8 4 or 6, 4 or 16 address bytes, u16 port (big-endian, as on the wire)
//! tls, auth_user, dsn_envid   opt str                 (opt = u8 0 absent / 1 present + value)
//! dsn_ret           u8 0 none, 1 FULL, 2 HDRS
//! dime              if flag 4: str origin, str origin fingerprint, str recipient fingerprint
//! recipients        varint count, then per recipient:
//!   rflags u8       bit 0 notify present, 1 never, 2 success, 3 failure, 4 delay,
//!                   5 orcpt present, 6 last_error present, 7 state address differs
//!   address         str; then orcpt str if bit 5
//!   state           u8 kind (0 queued, 1 leased, 2 deferred, 3 held, 4 delivered, 5 failed),
//!                   then varint time for 1, 2, 4, 5 and str reply for 5
//!   attempts        varint; then last_error str if bit 6; then state address str if bit 7
//! body              the remaining bytes, when body = 2
//! ```
//!
//! Decoding checks every length against what is left, every string for UTF-8 and every tag for
//! its range, so a damaged record is a [`DecodeError`], never a panic or an allocation larger
//! than the value.

use super::record::{DecodeError, StoredBody, StoredRecord};
use super::state::{RecipientState, RecipientStatus};
use crate::envelope::{DimeArrival, DsnReturn, Envelope, Notify, Recipient};
use crate::time::UnixTime;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const F_DELAY_WARNED: u8 = 1;
const F_8BIT: u8 = 1 << 1;
const F_SMTPUTF8: u8 = 1 << 2;
const F_REQUIRE_TLS: u8 = 1 << 3;
const F_DIME: u8 = 1 << 4;

const R_NOTIFY: u8 = 1;
const R_NEVER: u8 = 1 << 1;
const R_SUCCESS: u8 = 1 << 2;
const R_FAILURE: u8 = 1 << 3;
const R_DELAY: u8 = 1 << 4;
const R_ORCPT: u8 = 1 << 5;
const R_LAST_ERROR: u8 = 1 << 6;
const R_OWN_ADDRESS: u8 = 1 << 7;

const BODY_TABLE: u8 = 0;
const BODY_FILE: u8 = 1;
const BODY_INLINE: u8 = 2;

/// Appends the encoding of `r` (without the version byte) to `out`.
pub(super) fn encode(r: &StoredRecord, out: &mut Vec<u8>) {
    let e = &r.envelope;
    let mut flags = 0;
    for (on, bit) in [
        (r.delay_warned, F_DELAY_WARNED),
        (e.body_8bit, F_8BIT),
        (e.smtputf8, F_SMTPUTF8),
        (e.require_tls, F_REQUIRE_TLS),
        (e.dime.is_some(), F_DIME),
    ] {
        if on {
            flags |= bit;
        }
    }
    out.push(flags);
    out.push(match r.body {
        StoredBody::Table => BODY_TABLE,
        StoredBody::File => BODY_FILE,
        StoredBody::Inline(_) => BODY_INLINE,
    });
    varint(out, r.size);
    varint(out, e.arrival_unix);
    string(out, &e.sender);
    string(out, &e.helo);
    match e.client.ip() {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&e.client.port().to_be_bytes());
    for s in [&e.tls, &e.auth_user, &e.dsn_envid] {
        opt_string(out, s.as_deref());
    }
    out.push(match e.dsn_ret {
        None => 0,
        Some(DsnReturn::Full) => 1,
        Some(DsnReturn::Headers) => 2,
    });
    if let Some(d) = &e.dime {
        string(out, &d.origin);
        string(out, &d.origin_fingerprint);
        string(out, &d.recipient_fingerprint);
    }
    varint(out, e.recipients.len() as u64);
    for (rcpt, status) in e.recipients.iter().zip(&r.recipients) {
        let mut rflags = 0;
        if let Some(n) = rcpt.notify {
            rflags |= R_NOTIFY;
            for (on, bit) in [
                (n.never, R_NEVER),
                (n.success, R_SUCCESS),
                (n.failure, R_FAILURE),
                (n.delay, R_DELAY),
            ] {
                if on {
                    rflags |= bit;
                }
            }
        }
        if rcpt.orcpt.is_some() {
            rflags |= R_ORCPT;
        }
        if status.last_error.is_some() {
            rflags |= R_LAST_ERROR;
        }
        if status.address != rcpt.address {
            rflags |= R_OWN_ADDRESS;
        }
        out.push(rflags);
        string(out, &rcpt.address);
        if let Some(o) = &rcpt.orcpt {
            string(out, o);
        }
        match &status.state {
            RecipientState::Queued => out.push(0),
            RecipientState::Leased { until } => {
                out.push(1);
                varint(out, until.0);
            }
            RecipientState::Deferred { next_at } => {
                out.push(2);
                varint(out, next_at.0);
            }
            RecipientState::Held => out.push(3),
            RecipientState::Delivered { at } => {
                out.push(4);
                varint(out, at.0);
            }
            RecipientState::Failed { at, reply } => {
                out.push(5);
                varint(out, at.0);
                string(out, reply);
            }
        }
        varint(out, u64::from(status.attempts));
        if let Some(err) = &status.last_error {
            string(out, err);
        }
        if status.address != rcpt.address {
            string(out, &status.address);
        }
    }
    if let StoredBody::Inline(body) = &r.body {
        out.extend_from_slice(body);
    }
}

/// Decodes what [`encode`] wrote (the bytes after the version byte).
pub(super) fn decode(bytes: &[u8]) -> Result<StoredRecord, DecodeError> {
    let mut c = Cursor { rest: bytes };
    let flags = c.byte()?;
    let body_tag = c.byte()?;
    if body_tag > BODY_INLINE {
        return Err(bad("body place"));
    }
    let size = c.varint()?;
    let arrival_unix = c.varint()?;
    let sender = c.string()?;
    let helo = c.string()?;
    let ip = match c.byte()? {
        4 => IpAddr::V4(Ipv4Addr::from(c.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(c.array::<16>()?)),
        _ => return Err(bad("client address family")),
    };
    let port = u16::from_be_bytes(c.array::<2>()?);
    let tls = c.opt_string()?;
    let auth_user = c.opt_string()?;
    let dsn_envid = c.opt_string()?;
    let dsn_ret = match c.byte()? {
        0 => None,
        1 => Some(DsnReturn::Full),
        2 => Some(DsnReturn::Headers),
        _ => return Err(bad("RET")),
    };
    let dime = if flags & F_DIME != 0 {
        Some(Box::new(DimeArrival {
            origin: c.string()?,
            origin_fingerprint: c.string()?,
            recipient_fingerprint: c.string()?,
        }))
    } else {
        None
    };
    let count = c.varint()?;
    // Each recipient takes at least four bytes: a bound on what a damaged count can allocate.
    if count > (c.rest.len() / 4) as u64 {
        return Err(bad("recipient count"));
    }
    let mut recipients = Vec::with_capacity(count as usize);
    let mut statuses = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let rflags = c.byte()?;
        let address = c.string()?;
        let orcpt = if rflags & R_ORCPT != 0 {
            Some(c.string()?)
        } else {
            None
        };
        let notify = (rflags & R_NOTIFY != 0).then_some(Notify {
            never: rflags & R_NEVER != 0,
            success: rflags & R_SUCCESS != 0,
            failure: rflags & R_FAILURE != 0,
            delay: rflags & R_DELAY != 0,
        });
        let state = match c.byte()? {
            0 => RecipientState::Queued,
            1 => RecipientState::Leased {
                until: UnixTime(c.varint()?),
            },
            2 => RecipientState::Deferred {
                next_at: UnixTime(c.varint()?),
            },
            3 => RecipientState::Held,
            4 => RecipientState::Delivered {
                at: UnixTime(c.varint()?),
            },
            5 => RecipientState::Failed {
                at: UnixTime(c.varint()?),
                reply: c.string()?,
            },
            _ => return Err(bad("recipient state")),
        };
        let attempts = u32::try_from(c.varint()?).map_err(|_| bad("attempts"))?;
        let last_error = if rflags & R_LAST_ERROR != 0 {
            Some(c.string()?)
        } else {
            None
        };
        let status_address = if rflags & R_OWN_ADDRESS != 0 {
            c.string()?
        } else {
            address.clone()
        };
        statuses.push(RecipientStatus {
            address: status_address,
            state,
            attempts,
            last_error,
        });
        recipients.push(Recipient {
            address,
            notify,
            orcpt,
        });
    }
    let body = match body_tag {
        BODY_TABLE | BODY_FILE if !c.rest.is_empty() => return Err(bad("trailing bytes")),
        BODY_TABLE => StoredBody::Table,
        BODY_FILE => StoredBody::File,
        _ => {
            if c.rest.len() as u64 != size {
                return Err(bad("inline body length"));
            }
            StoredBody::Inline(c.rest.to_vec())
        }
    };
    Ok(StoredRecord {
        envelope: Envelope {
            sender,
            recipients,
            dsn_ret,
            dsn_envid,
            body_8bit: flags & F_8BIT != 0,
            smtputf8: flags & F_SMTPUTF8 != 0,
            helo,
            client: SocketAddr::new(ip, port),
            tls,
            auth_user,
            arrival_unix,
            require_tls: flags & F_REQUIRE_TLS != 0,
            dime,
        },
        recipients: statuses,
        size,
        delay_warned: flags & F_DELAY_WARNED != 0,
        body,
    })
}

fn bad(what: &'static str) -> DecodeError {
    DecodeError::Malformed(format!("bad or truncated {what}"))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            string(out, s);
        }
    }
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(bad("field"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(bad("varint"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| bad("string length"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("UTF-8 string"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            _ => Err(bad("optional string")),
        }
    }
}
