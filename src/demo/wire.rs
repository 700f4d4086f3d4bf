//! The recording TCP tap the demo puts between gateway A and gateway B, and what the demo reads
//! from its bytes: the TLS version and cipher suite of each connection (from the server's
//! cleartext ServerHello) and whether any of the mail's text shows.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one connection carried: client to server, server to client.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Bytes A sent.
    pub upstream: Vec<u8>,
    /// Bytes B sent.
    pub downstream: Vec<u8>,
}

/// Every connection through the tap, in order of arrival.
pub type Recording = Arc<Mutex<Vec<Recorded>>>;

/// Forwards each connection on `listener` to `upstream`, recording both directions, until
/// dropped. A copy of the bytes is kept in memory: the demo sends one small message.
pub async fn tap(listener: TcpListener, upstream: std::net::SocketAddr, recording: Recording) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let slot = {
            let mut r = lock(&recording);
            r.push(Recorded::default());
            r.len() - 1
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        for (from, to, up) in [
            (client_read, server_write, true),
            (server_read, client_write, false),
        ] {
            let recording = Arc::clone(&recording);
            tokio::spawn(copy(from, to, recording, slot, up));
        }
    }
}

fn lock(r: &Recording) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    recording: Recording,
    slot: usize,
    up: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(c) = lock(&recording).get_mut(slot) {
            if up {
                &mut c.upstream
            } else {
                &mut c.downstream
            }
            .extend_from_slice(&buf[..n]);
        }
    }
    let _ = to.shutdown().await;
}

/// A snapshot of the recording.
pub fn snapshot(recording: &Recording) -> Vec<Recorded> {
    lock(recording).clone()
}

/// The negotiated TLS version and cipher suite, from the ServerHello that opens what a TLS
/// server sends (RFC 8446 §4.1.3, RFC 5246 §7.4.1.3). `None` when the bytes are not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// 0x0303 is TLS 1.2, 0x0304 TLS 1.3 (from `supported_versions` when present).
    pub version: u16,
    /// The IANA cipher suite number.
    pub cipher_suite: u16,
}

impl Hello {
    /// `TLS 1.2`, `TLS 1.3`, or the number.
    pub fn version_name(self) -> String {
        match self.version {
            0x0301 => "TLS 1.0".into(),
            0x0302 => "TLS 1.1".into(),
            0x0303 => "TLS 1.2".into(),
            0x0304 => "TLS 1.3".into(),
            v => format!("TLS version 0x{v:04x}"),
        }
    }

    /// The suite's name for the ones dimegate negotiates, else its number.
    pub fn cipher_name(self) -> String {
        match self.cipher_suite {
            0xc030 => "ECDHE-RSA-AES256-GCM-SHA384".into(),
            0xc02f => "ECDHE-RSA-AES128-GCM-SHA256".into(),
            0xcca8 => "ECDHE-RSA-CHACHA20-POLY1305".into(),
            0x1301 => "TLS_AES_128_GCM_SHA256".into(),
            0x1302 => "TLS_AES_256_GCM_SHA384".into(),
            0x1303 => "TLS_CHACHA20_POLY1305_SHA256".into(),
            c => format!("0x{c:04x}"),
        }
    }
}

/// Reads the ServerHello at the start of `server_bytes`. Bounds-checked: hostile or truncated
/// input gives `None`.
pub fn server_hello(server_bytes: &[u8]) -> Option<Hello> {
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
    };
    // Record header: handshake (22), version, length.
    if *server_bytes.first()? != 22 {
        return None;
    }
    let record_len = usize::from(u16_at(server_bytes, 3)?);
    let record = server_bytes.get(5..5 + record_len)?;
    // Handshake header: server_hello (2), 24-bit length.
    if *record.first()? != 2 {
        return None;
    }
    let len = usize::from(*record.get(1)?) << 16
        | usize::from(*record.get(2)?) << 8
        | usize::from(*record.get(3)?);
    let body = record.get(4..4 + len)?;
    let legacy_version = u16_at(body, 0)?;
    let sid_len = usize::from(*body.get(34)?);
    let mut i = 35 + sid_len;
    let cipher_suite = u16_at(body, i)?;
    i += 3; // suite, compression method
    let mut version = legacy_version;
    if let Some(ext_len) = u16_at(body, i) {
        let exts = body.get(i + 2..i + 2 + usize::from(ext_len))?;
        let mut j = 0;
        while j + 4 <= exts.len() {
            let kind = u16_at(exts, j)?;
            let n = usize::from(u16_at(exts, j + 2)?);
            let data = exts.get(j + 4..j + 4 + n)?;
            if kind == 0x002b {
                version = u16_at(data, 0)?;
            }
            j += 4 + n;
        }
    }
    Some(Hello {
        version,
        cipher_suite,
    })
}

/// The `secrets` that occur anywhere in `bytes`.
pub fn visible<'a>(bytes: &[u8], secrets: &[&'a str]) -> Vec<&'a str> {
    secrets
        .iter()
        .copied()
        .filter(|s| !s.is_empty() && bytes.windows(s.len()).any(|w| w == s.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_hello_bytes(version_ext: Option<u16>, suite: u16) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&suite.to_be_bytes());
        body.push(0);
        let mut exts = vec![0xff, 0x01, 0x00, 0x01, 0x00];
        if let Some(v) = version_ext {
            exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x02]);
            exts.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&u16::try_from(exts.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![2, 0];
        hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 3];
        rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(&hs);
        rec.extend_from_slice(b"more records");
        rec
    }

    #[test]
    fn reads_the_server_hello() {
        let h = server_hello(&server_hello_bytes(None, 0xc030)).unwrap();
        assert_eq!(h.version_name(), "TLS 1.2");
        assert_eq!(h.cipher_name(), "ECDHE-RSA-AES256-GCM-SHA384");
        let h = server_hello(&server_hello_bytes(Some(0x0304), 0x1302)).unwrap();
        assert_eq!(h.version_name(), "TLS 1.3");
        assert_eq!(h.cipher_name(), "TLS_AES_256_GCM_SHA384");
    }

    #[test]
    fn anything_else_is_none_without_panic() {
        let good = server_hello_bytes(Some(0x0304), 0x1301);
        for cut in 0..good.len() - b"more records".len() {
            assert_eq!(server_hello(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_hello(b"220 mx ESMTP\r\n"), None);
        let mut not_hello = good.clone();
        not_hello[5] = 1;
        assert_eq!(server_hello(&not_hello), None);
    }

    #[test]
    fn finds_visible_secrets() {
        assert_eq!(
            visible(b"xx alice yy", &["alice", "bob", ""]),
            vec!["alice"]
        );
        assert!(visible(b"", &["a"]).is_empty());
    }
}
