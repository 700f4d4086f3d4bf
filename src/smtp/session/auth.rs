//! SASL PLAIN (RFC 4616) and LOGIN decoding for `AUTH` (RFC 4954). The session asks the glue to
//! verify the credentials; this module only turns base64 lines into a user name and a password.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Where a SASL exchange waits for the client's next line.
pub(super) enum Step {
    /// `AUTH PLAIN` without initial response: the whole PLAIN message comes next.
    PlainResponse,
    /// `AUTH LOGIN`: the user name comes next.
    LoginUsername,
    /// `AUTH LOGIN`: the password comes next.
    LoginPassword { username: String },
}

/// `334` challenge for the LOGIN user name: base64 of `Username:`.
pub(super) const LOGIN_USERNAME_CHALLENGE: &str = "334 VXNlcm5hbWU6";
/// `334` challenge for the LOGIN password: base64 of `Password:`.
pub(super) const LOGIN_PASSWORD_CHALLENGE: &str = "334 UGFzc3dvcmQ6";

/// What can go wrong while decoding a SASL response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    Cancelled,
    /// Not base64.
    BadBase64,
    /// Not UTF-8, or a PLAIN message without its two NUL separators or with an empty user name.
    Malformed,
    /// PLAIN with an authorization identity other than the user: we do not let one user act as
    /// another, so this fails like bad credentials.
    ProxyRefused,
}

/// Decodes one client response line (without CRLF). `=` is the empty response (RFC 4954 §4).
/// The buffer is wiped on drop because it may hold a password.
pub(super) fn decode(line: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    STANDARD
        .decode(line)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::BadBase64)
}

/// Decodes a response that must be UTF-8 text (LOGIN user name or password).
pub(super) fn decode_text(line: &[u8]) -> Result<String, SaslError> {
    let bytes = decode(line)?;
    std::str::from_utf8(&bytes)
        .map(str::to_owned)
        .map_err(|_| SaslError::Malformed)
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd` into user name and password.
pub(super) fn parse_plain(message: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    fn text(b: &[u8]) -> Result<&str, SaslError> {
        std::str::from_utf8(b).map_err(|_| SaslError::Malformed)
    }
    let (authzid, authcid, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if authcid.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::ProxyRefused);
    }
    Ok((authcid.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        STANDARD.encode(s).into_bytes()
    }

    #[test]
    fn plain_table() {
        type Row = (
            &'static [u8],
            Result<(&'static str, &'static str), SaslError>,
        );
        let rows: &[Row] = &[
            (b"\0alice\0secret", Ok(("alice", "secret"))),
            (b"alice\0alice\0secret", Ok(("alice", "secret"))),
            (b"\0alice\0", Ok(("alice", ""))),
            (b"bob\0alice\0secret", Err(SaslError::ProxyRefused)),
            (b"\0\0secret", Err(SaslError::Malformed)),
            (b"alice\0secret", Err(SaslError::Malformed)),
            (b"\0alice\0sec\0ret", Err(SaslError::Malformed)),
            (b"\0al\xffice\0secret", Err(SaslError::Malformed)),
        ];
        for (message, expected) in rows {
            let got = decode(&b64(message)).and_then(|m| parse_plain(&m));
            let expected = expected.map(|(u, p)| (u.to_owned(), p.to_owned()));
            assert_eq!(got, expected, "{message:?}");
        }
    }

    #[test]
    fn decode_table() {
        assert_eq!(decode(b"*").err(), Some(SaslError::Cancelled));
        assert_eq!(decode(b"=").map(|v| v.len()), Ok(0));
        assert_eq!(decode(b"not base64!").err(), Some(SaslError::BadBase64));
        assert_eq!(decode_text(b"YWxpY2U="), Ok("alice".to_owned()));
        assert_eq!(decode_text(&b64(b"\xff")), Err(SaslError::Malformed));
    }
}
