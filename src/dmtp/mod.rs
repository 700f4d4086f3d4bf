//! DMTP, the Dark Mail Transfer Protocol (DIME.md §10, with §9.3 and §13): the sans-I/O protocol
//! core. This module owns the wire codec and the two session state machines; the tokio glue
//! (listeners, TLS, the signet resolver, the store) is the caller's and lives elsewhere.
//!
//! * [`codec`]: commands and replies (§10.1-§10.3), 512-byte CRLF command lines, reply lines of
//!   up to 4096 bytes, typed errors for hostile input, the dual-mode `STARTTLS` reader.
//! * [`server`]: [`ServerSession`], the receiving DX: banner, EHLO/HELO, MODE, MAIL, RCPT, DATA
//!   with a length-delimited binary body, SGNT/VRFY/HIST, NOOP, RSET, HELP, QUIT. It asks the glue
//!   for signets and for verification plus durable storage, and says `2xx OK [txid]` only after
//!   the glue's answer.
//! * [`client`]: [`ClientSession`], the sending side: one state per step of §10.4 (banner, EHLO,
//!   MODE, MAIL, RCPT, DATA, the message, the final reply, QUIT) plus SGNT/VRFY/HIST look-ups, and
//!   the dual-mode entry of §10.1; results and failures are typed, failures say permanent or not.
//!
//! # Choices where the spec is silent or ambiguous (§10.2 notes, §14)
//!
//! No DMTP server has worked before this one, so each of these is a decision, written down here
//! and pinned by a test.
//!
//! * **Two syntaxes in, one out.** Both forms of §10.2 are read: the libdime client's
//!   (`MAIL FROM: <d> [fp] SIZE=n`, `RCPT TO: <d> [fp]`, `SGNT <name> [fp]`, `VRFY <name> [fp]`,
//!   `HIST <name> [start] [end]`, `EHLO <d>`) and the draft parser's (`MAIL FROM=<d>
//!   FINGERPRINT=[fp] SIZE=n`, `RCPT TO=<d> FINGERPRINT=[fp]`, `SGNT USER=<u>|DOMAIN=<d>
//!   FINGERPRINT=[fp]`, `VRFY USER=<u>|DOMAIN=<d> FINGERPRINT=[fp]`, `HIST USER=<u> START=[a]
//!   STOP=[b]`, `EHLO HOST=<d>`), keys and verbs case-insensitive, `FROM:<d>` with or without the
//!   space, plain `EHLO d` as SMTP clients send it, and `DOMAIN=` for HIST too. We write only the
//!   client's form: it is what the one DMTP client ever written sends on the network
//!   (`signet-resolver/dmtp.c`) and what §10.2's table documents; the `NAME=` form comes from a
//!   draft parser that never ran on a network and ends lines with a bare LF.
//! * **CRLF only.** Command lines end in CRLF (§10.1); a bare LF (the draft formatter's default) or
//!   a stray CR gets `500`, as in our SMTP session: two parsers that frame lines differently are
//!   how smuggling starts.
//! * **Placeholders.** libdime's client sends the literal `[fingerprint]` in MAIL, RCPT and DATA.
//!   In MAIL and RCPT it is not a fingerprint and gets `501`; DATA's bracketed argument (its
//!   meaning is unknown) is read and dropped, so `DATA [fingerprint]` works.
//! * **MAIL needs the fingerprint and SIZE.** The issue requires the origin org signet to match
//!   MAIL's fingerprint, so MAIL without one is `501`; without SIZE the length-delimited body
//!   cannot be framed (`501`); `SIZE=0` is `501`; SIZE over the limit is `552` before any octet is
//!   read. RCPT's fingerprint is optional (the destination keyslot decides anyway) but, when
//!   given, must be one of the served domain's org signets (`576`). One RCPT per transaction:
//!   a D/MIME message is sealed to one destination organisation (`503` for a second).
//! * **The hash in `354 CONTINUE [hash]`.** The spec calls it a "commit hash" and never says of
//!   what; libdime's client reads it and throws it away. Ours is the unpadded base64 SHA-512 of
//!   the canonical MAIL and RCPT lines ([`codec::commit_hash`]): it names the envelope the body
//!   is committed to and either side can recompute it. Our client reports it and does not check it.
//! * **The body.** Exactly SIZE octets, then CRLF; no dot-stuffing, any bytes. If the two octets
//!   after the body are not CRLF the answer is `451` (the table's "data corrupted") and the
//!   session reads commands again.
//! * **Reply codes.** The draft table (§10.3) plus two SMTP codes it lacks: `552` (too large) and
//!   `452` (storage full), and `431` (the table's "destination limits exceeded") when the queue
//!   holds `[queue] max_messages`. `451` also answers other store failures and a message that does not
//!   parse (the table's "data corrupted", a temporary code: the sender retries). SGNT answers
//!   `270`/`280 OK [base64]` (org/user), VRFY `271`/`281 CURRENT` or `270`/`280 UPDATE <fp>`,
//!   HIST `290-[base64]` lines and `290 OK`; `291` is never sent. Unknown names get `510`,
//!   fingerprints not in a chain `586` (user) or `576` (org), a failing store `476`, names outside
//!   the served domains `510`. `STATS` has no defined content: `502`. MODE answers
//!   `250 OK DMTPv1`; EHLO `250-<host> DMTPv1`, `250-SIZE <max>`, `250 OK`.
//! * **Look-ups need no EHLO.** libdime's resolver sends SGNT right after the banner.
//! * **Signets on one line.** A signet travels as one line of padded base64 (§5.6); a signet too
//!   large for a 4096-byte reply line (libdime's buffer) gets `451` rather than a line a client
//!   cannot read.
//! * **Dual mode (§10.1).** On the SMTP listener, [`codec::parse_dual_mode_starttls`] recognises
//!   `STARTTLS <host> MODE=DMTPv1` (and the draft's `HOST=<host> MODE=DMTP`); after the TLS
//!   handshake [`ServerSession::after_dual_mode_upgrade`] starts with `250 OK DMTPv1` instead of a
//!   banner. Our client, in dual mode, accepts any `220` SMTP banner (libdime's also wants
//!   `DMTPv1` in it: the SMTP greeting should carry that token for libdime clients), then sends
//!   `STARTTLS`, wants 2xx, discards anything the server sent before the handshake, and wants
//!   `2xx OK DMTPv1` after it.
//! * **Client failures.** A 5xx reply is permanent; a 4xx reply, a malformed reply, a timeout or
//!   a closed connection are temporary (never bounce a message for a protocol glitch). A 2xx to
//!   the message is "delivered" even when no transaction id can be read, so it is never sent
//!   twice. `421` ends the session at any step.
//! * **Time.** Both sessions take `now` with every input and hand out one deadline; the server
//!   waits [`server::Limits::command_timeout`] for a command and
//!   [`server::Limits::data_timeout`] between message bytes, the client
//!   [`client::ClientConfig::reply_timeout`] for a reply and
//!   [`client::ClientConfig::final_reply_timeout`] for the one after the message. No timer runs
//!   while the other side's glue works (server) or while the client is idle.
//!
//! Not here (the lead wires them): the listeners and TLS, the signet resolver and cache, the
//! queue. Not implemented: STATS (`502`), `RETURN=`/`DATA=` semantics (parsed and handed to the
//! glue), `254`/`255` (no command in the spec produces them).

pub mod client;
pub mod codec;
pub mod listener;
#[cfg(test)]
mod pair_tests;
pub mod server;
#[cfg(test)]
mod test_signets;
pub mod trust;

pub use client::ClientSession;
pub use server::ServerSession;
