//! Checks on envelope addresses that smtp-proto's parser leaves to the session.
//!
//! smtp-proto decodes addresses lossily (invalid UTF-8 becomes U+FFFD) and accepts an empty domain
//! (`user@`), control characters inside quoted local parts and a trailing dot. Those reach the queue,
//! `Received:` headers and DSNs, so they are refused here with a precise reply.

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AddressProblem {
    /// The command line held bytes that are not UTF-8 (refused even with SMTPUTF8).
    NotUtf8,
    /// Non-ASCII without `SMTPUTF8` on MAIL FROM (RFC 6531 §3.5).
    NeedsSmtpUtf8,
    /// A control character (C0 or DEL), possible inside a quoted local part.
    ControlCharacter,
    /// No domain after the `@`, or a domain that starts or ends with a dot.
    NoDomain,
}

/// Checks a non-empty mailbox as parsed from a command line that was (`line_is_utf8`) or was not
/// valid UTF-8.
pub(super) fn check_mailbox(
    address: &str,
    line_is_utf8: bool,
    smtputf8: bool,
) -> Result<(), AddressProblem> {
    if !line_is_utf8 {
        return Err(AddressProblem::NotUtf8);
    }
    if !smtputf8 && !address.is_ascii() {
        return Err(AddressProblem::NeedsSmtpUtf8);
    }
    if address.chars().any(|c| c.is_control()) {
        return Err(AddressProblem::ControlCharacter);
    }
    match domain_of(address) {
        Some(domain)
            if !domain.is_empty() && !domain.starts_with('.') && !domain.ends_with('.') =>
        {
            Ok(())
        }
        _ => Err(AddressProblem::NoDomain),
    }
}

/// The part after the last `@`. smtp-proto counts only unquoted `@` and drops the quotes, so the
/// last `@` of the decoded address is the separator even for `"a@b"@example.org`.
pub(super) fn domain_of(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, domain)| domain)
}

/// The local part (everything before the last `@`).
pub(super) fn local_part_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(local, _)| local)
}

/// The bytes between the first `<` and the following `>` of a raw MAIL/RCPT line.
///
/// smtp-proto returns an empty address both for `<>` and for `<Postmaster>`; the raw path tells
/// them apart.
pub(super) fn raw_path(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|&b| b == b'<')? + 1;
    let len = line[start..].iter().position(|&b| b == b'>')?;
    Some(&line[start..start + len])
}

/// Whether an (ASCII or Unicode) domain is one we serve. `served` is in
/// [`Domain`](crate::domain::Domain)'s form by contract, so U- and A-labels compare equal.
pub(super) fn is_served(domain: &str, served: &[String]) -> bool {
    crate::domain::Domain::parse(domain).is_ok_and(|d| served.iter().any(|s| s == d.as_str()))
}

/// Local parts that older MTAs route on (`user%other@`, `host!user@`, `"a@b"@`): accepted for a
/// served domain only from relay-allowed or authenticated clients, so a backend with the percent
/// hack enabled cannot be turned into an open relay through us.
pub(super) fn has_routing_characters(local_part: &str) -> bool {
    local_part.contains(['%', '!', '@'])
}

/// Re-encodes an ENVID or ORCPT value as xtext (RFC 3461 §4), as the envelope stores it.
///
/// smtp-proto decodes `+XX` into the char U+00XX, so each char below U+0100 stands for one byte
/// and a conforming (ASCII) xtext round-trips exactly. A char above U+00FF can only be raw UTF-8
/// the client sent unencoded; it is written as its UTF-8 bytes.
pub(super) fn xtext(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' => out.push(c),
            Ok(b) => out.push_str(&format!("+{b:02X}")),
            Err(_) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("+{b:02X}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_checks_table() {
        use AddressProblem::*;
        let rows: &[(&str, bool, bool, Result<(), AddressProblem>)] = &[
            ("a@example.org", true, false, Ok(())),
            ("a@[192.0.2.1]", true, false, Ok(())),
            ("\"a b\"@example.org", true, false, Ok(())),
            ("a@", true, false, Err(NoDomain)),
            ("a@example.org.", true, false, Err(NoDomain)),
            ("a", true, false, Err(NoDomain)),
            ("jösé@example.org", true, false, Err(NeedsSmtpUtf8)),
            ("jösé@example.org", true, true, Ok(())),
            ("a\u{fffd}@example.org", false, true, Err(NotUtf8)),
            ("a\u{1}b@example.org", true, false, Err(ControlCharacter)),
            ("a\u{7f}@example.org", true, false, Err(ControlCharacter)),
        ];
        for (address, utf8, smtputf8, expected) in rows {
            assert_eq!(
                check_mailbox(address, *utf8, *smtputf8),
                *expected,
                "{address:?}"
            );
        }
    }

    #[test]
    fn raw_path_and_domains() {
        assert_eq!(
            raw_path(b"RCPT TO:<Postmaster>\r\n"),
            Some(&b"Postmaster"[..])
        );
        assert_eq!(raw_path(b"RCPT TO:<>\r\n"), Some(&b""[..]));
        assert_eq!(raw_path(b"RCPT TO:\r\n"), None);
        assert_eq!(domain_of("a@b@Example.ORG"), Some("Example.ORG"));
        assert!(is_served("Example.ORG", &["example.org".to_owned()]));
        assert!(!is_served("example.org.evil", &["example.org".to_owned()]));
        assert!(has_routing_characters("user%other.net"));
        assert!(!has_routing_characters("user.name+tag"));
    }

    #[test]
    fn xtext_round_trips_what_the_parser_decoded() {
        assert_eq!(xtext("q+1"), "q+2B1");
        assert_eq!(xtext("a=b c"), "a+3Db+20c");
        assert_eq!(xtext("\u{c3}\u{a9}"), "+C3+A9");
        // Raw non-ASCII is not xtext; U+0080..U+00FF cannot be told from a decoded +XX.
        assert_eq!(xtext("é"), "+E9");
        assert_eq!(xtext("€"), "+E2+82+AC");
        assert_eq!(xtext("b@example.org"), "b@example.org");
    }
}
