//! Fetching an MTA-STS policy (RFC 8461 §3.3): `GET /.well-known/mta-sts.txt` from
//! `mta-sts.<domain>` over HTTPS, the certificate verified by WebPKI for that name, no redirects
//! followed, bounded in time and size. HTTP/1.1 by hand: one request, `Connection: close`, and
//! the sans-I/O [`parse_response`] (fuzzed) reads the answer. No HTTP client crate is needed for
//! one GET, and none is in the dependency tree with the client side enabled.

use super::mta_sts::{MAX_POLICY_BYTES, Policy, StsParseError, parse_policy};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status line and headers together may not exceed this.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header value, if any.
    pub content_type: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why a response cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Status line or headers do not parse.
    #[error("malformed HTTP response head")]
    BadHead,
    /// The head is larger than [`MAX_HEAD_BYTES`].
    #[error("HTTP response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The body is larger than the policy cap.
    #[error("HTTP response body larger than {MAX_POLICY_BYTES} bytes")]
    BodyTooLarge,
    /// Bad chunked encoding or a Content-Length that does not parse.
    #[error("malformed HTTP response body framing")]
    BadFraming,
    /// The connection ended before the response was complete.
    #[error("HTTP response truncated")]
    Truncated,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses what has been received so far. `Ok(None)`: more bytes are needed (never at `eof`).
/// The body may be framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of the
/// connection; it is refused beyond [`MAX_POLICY_BYTES`].
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, HttpError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        return if eof {
            Err(HttpError::Truncated)
        } else {
            Ok(None)
        };
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::BadHead)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::BadHead)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadHead);
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadHead);
    }
    let status: u16 = code.parse().map_err(|_| HttpError::BadHead)?;
    let mut content_type = None;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::BadHead)?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ') {
            return Err(HttpError::BadHead);
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadFraming);
            }
            let length = value.parse().map_err(|_| HttpError::BadFraming)?;
            if content_length.is_some_and(|l| l != length) {
                return Err(HttpError::BadFraming);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                return Err(HttpError::BadFraming);
            }
        }
    }
    let rest = &buf[head_end + 4..];
    let body = if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None if eof => return Err(HttpError::Truncated),
            None => return Ok(None),
        }
    } else if let Some(length) = content_length {
        if length > MAX_POLICY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        if rest.len() < length {
            return if eof {
                Err(HttpError::Truncated)
            } else {
                Ok(None)
            };
        }
        rest[..length].to_vec()
    } else {
        if rest.len() > MAX_POLICY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        if !eof {
            return Ok(None);
        }
        rest.to_vec()
    };
    Ok(Some(Response {
        status,
        content_type,
        body,
    }))
}

/// A chunked body: `Ok(None)` while incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return if rest.len() > 64 {
                Err(HttpError::BadFraming)
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| HttpError::BadFraming)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        if size_text.is_empty()
            || size_text.len() > 8
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(HttpError::BadFraming);
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| HttpError::BadFraming)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find(rest, b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(body));
                }
                rest = &rest[end + 2..];
            }
        }
        if body.len() + size > MAX_POLICY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(HttpError::BadFraming);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Why no policy could be fetched; each is TLS-RPT's `sts-policy-fetch-error` or
/// `sts-policy-invalid` or `sts-webpki-invalid` (RFC 8460 §4.3.2.3).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// DNS, connect, timeout, I/O, a non-200 status (a redirect included).
    #[error("fetching the MTA-STS policy of {domain}: {text}")]
    Fetch {
        /// The policy domain.
        domain: String,
        /// What went wrong.
        text: String,
    },
    /// The HTTPS certificate does not verify for `mta-sts.<domain>`.
    #[error("the MTA-STS policy host of {domain} has an invalid certificate: {text}")]
    WebPki {
        /// The policy domain.
        domain: String,
        /// The TLS error.
        text: String,
    },
    /// The file was fetched but does not parse.
    #[error("the MTA-STS policy of {domain} is invalid: {source}")]
    Invalid {
        /// The policy domain.
        domain: String,
        /// Why.
        #[source]
        source: StsParseError,
    },
}

impl FetchError {
    /// TLS-RPT's result type (RFC 8460 §4.3.2.3).
    pub fn result_type(&self) -> &'static str {
        match self {
            FetchError::Fetch { .. } => "sts-policy-fetch-error",
            FetchError::WebPki { .. } => "sts-webpki-invalid",
            FetchError::Invalid { .. } => "sts-policy-invalid",
        }
    }
}

/// How policies are fetched.
#[derive(Clone)]
pub struct Fetcher {
    /// WebPKI-verifying TLS for `mta-sts.<domain>`.
    pub connector: tokio_rustls::TlsConnector,
    /// 443; tests use another port (`[mta_sts] https_port`).
    pub port: u16,
    /// Whole fetch: resolve, connect, handshake, request, response (RFC 8461 §3.3 suggests at
    /// least a minute for the whole; we take `timeout`).
    pub timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("port", &self.port)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Fetches and parses the policy of `domain`, connecting to one of `addresses` (the caller
    /// resolved `mta-sts.<domain>`). Cancel-safe: dropping it only closes a connection.
    pub async fn fetch(
        &self,
        domain: &str,
        addresses: &[std::net::IpAddr],
    ) -> Result<Arc<Policy>, FetchError> {
        let host = format!("mta-sts.{domain}");
        let fetch_error = |text: String| FetchError::Fetch {
            domain: domain.to_owned(),
            text,
        };
        let response = tokio::time::timeout(self.timeout, self.get(&host, addresses))
            .await
            .map_err(|_| fetch_error(format!("https://{host}/: timed out")))??;
        let response = response.map_err(|e| fetch_error(format!("https://{host}/: {e}")))?;
        if response.status != 200 {
            // RFC 8461 §3.3: redirects are not followed; anything but 200 is no policy.
            return Err(fetch_error(format!(
                "https://{host}/.well-known/mta-sts.txt answered HTTP {}",
                response.status
            )));
        }
        let text_plain = response.content_type.as_deref().is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
        });
        if !text_plain {
            return Err(FetchError::Invalid {
                domain: domain.to_owned(),
                source: StsParseError::NotText,
            });
        }
        parse_policy(&response.body)
            .map(Arc::new)
            .map_err(|source| FetchError::Invalid {
                domain: domain.to_owned(),
                source,
            })
    }

    async fn get(
        &self,
        host: &str,
        addresses: &[std::net::IpAddr],
    ) -> Result<Result<Response, HttpError>, FetchError> {
        let domain = host.trim_start_matches("mta-sts.").to_owned();
        let fetch_error = |text: String| FetchError::Fetch {
            domain: domain.clone(),
            text,
        };
        let mut last = String::from("no address");
        let mut tcp = None;
        for ip in addresses {
            match tokio::net::TcpStream::connect((*ip, self.port)).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = format!("connect to {ip}:{}: {e}", self.port),
            }
        }
        let tcp = tcp.ok_or_else(|| fetch_error(format!("{host}: {last}")))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| fetch_error(format!("{host:?} is not a TLS server name")))?;
        let mut tls = self.connector.connect(name, tcp).await.map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(_)) => FetchError::WebPki {
                    domain: domain.clone(),
                    text: e.to_string(),
                },
                _ => fetch_error(format!("TLS with {host}: {e}")),
            }
        })?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dimegate\r\n\
             Accept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| fetch_error(format!("writing to {host}: {e}")))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 8192];
        loop {
            let read = tls.read(&mut chunk).await;
            let (n, eof) = match read {
                Ok(0) => (0, true),
                Ok(n) => (n, false),
                // A server that closes without close_notify still ended its response.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (0, true),
                Err(e) => return Err(fetch_error(format!("reading from {host}: {e}"))),
            };
            buf.extend_from_slice(&chunk[..n]);
            match parse_response(&buf, eof) {
                Ok(Some(response)) => return Ok(Ok(response)),
                Err(error) => return Ok(Err(error)),
                Ok(None) if eof => return Ok(Err(HttpError::Truncated)),
                // Chunk framing can outgrow the body cap without a body byte too many.
                Ok(None) if buf.len() > MAX_HEAD_BYTES + 2 * MAX_POLICY_BYTES => {
                    return Ok(Err(HttpError::BodyTooLarge));
                }
                Ok(None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_table() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        let r = parse_response(full, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        // Every split before the end is incomplete, never an error.
        for cut in 0..full.len() {
            assert_eq!(parse_response(&full[..cut], false), Ok(None), "{cut}");
            assert!(parse_response(&full[..cut], true).is_err(), "{cut}");
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap().unwrap().body,
            b"abcde"
        );
        for cut in 0..chunked.len() {
            assert_eq!(parse_response(&chunked[..cut], false), Ok(None), "{cut}");
        }
        let close = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(close, false), Ok(None));
        assert_eq!(parse_response(close, true).unwrap().unwrap().body, b"body");
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(redirect, false).unwrap().unwrap().status,
            301
        );
        for (bytes, want) in [
            (&b"HTTP/2 200 OK\r\n\r\n"[..], HttpError::BadHead),
            (b"HTTP/1.1 2000 OK\r\n\r\n", HttpError::BadHead),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", HttpError::BadHead),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                HttpError::BadFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::BadFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                HttpError::BadFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n",
                HttpError::BodyTooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                HttpError::BadFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
                HttpError::BadFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n",
                HttpError::BodyTooLarge,
            ),
        ] {
            assert_eq!(
                parse_response(bytes, false),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_POLICY_BYTES + 1));
        assert_eq!(parse_response(&big, false), Err(HttpError::BodyTooLarge));
        let long_head = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert_eq!(
            parse_response(&long_head, false),
            Err(HttpError::HeadTooLarge)
        );
    }
}
