//! Domain names as dimegate compares them: [`Domain`], one form for every comparison of a
//! recipient domain with a served domain, a destination policy or a next hop.
//!
//! Domain names are not case-sensitive (RFC 5321 §2.4), a trailing dot only says "absolute"
//! (RFC 1034 §3.1), and an internationalized name is the same name whether written in U-labels
//! (`bücher.example`, as SMTPUTF8 carries it) or A-labels (`xn--bcher-kva.example`, as DNS and
//! the configuration carry it; RFC 5890 §2.3.2.1). [`Domain::parse`] maps all of these to one
//! key, the lower-case A-label form without the trailing dot, with UTS #46 processing (the
//! `idna` crate, the one `url` and `hickory` use).
//!
//! A leaf module: it uses no other module of the crate.

use std::fmt;

/// A domain name in its comparable form: lower-case A-labels, no trailing dot. An address
/// literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3) is kept as written: it is an
/// address, not a name, and `deliver` parses it.
///
/// Equality, ordering and hashing are on that form, so `Bücher.Example.` and
/// `xn--bcher-kva.example` are equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

/// Text that is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// Nothing, or only dots.
    #[error("empty domain name")]
    Empty,
    /// IDNA (UTS #46) processing refused it: a bad A-label (`xn--` that is not Punycode), a
    /// disallowed code point, a label that is too long.
    #[error("not a valid domain name: {domain:?}")]
    Invalid {
        /// The text as given.
        domain: String,
    },
}

impl DomainError {
    /// Whether retrying could help: never, the text will not change.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

impl Domain {
    /// The comparable form of `text` (any case, U- or A-labels, with or without the trailing
    /// dot).
    pub fn parse(text: &str) -> Result<Domain, DomainError> {
        if text.starts_with('[') && text.ends_with(']') && text.len() > 2 {
            return Ok(Domain(text.to_owned()));
        }
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        // `[]` is an address literal with no address in it.
        if trimmed.bytes().all(|b| b == b'.') || trimmed == "[]" {
            return Err(DomainError::Empty);
        }
        let invalid = || DomainError::Invalid {
            domain: text.to_owned(),
        };
        // An empty label (`a..b`, `.a`) is no name; UTS #46 would let it through.
        if trimmed.split('.').any(str::is_empty) {
            return Err(invalid());
        }
        match idna::domain_to_ascii(trimmed) {
            Ok(ascii) if !ascii.is_empty() => Ok(Domain(ascii)),
            _ => Err(invalid()),
        }
    }

    /// The comparable form: lower-case A-labels without the trailing dot, or the address literal.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an address literal (`[...]`) rather than a name.
    pub fn is_address_literal(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Domain, DomainError> {
        Domain::parse(s)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_compare_equal() {
        let rows = [
            ("example.org", "example.org"),
            ("Example.ORG", "example.org"),
            ("example.org.", "example.org"),
            ("EXAMPLE.org.", "example.org"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("Bücher.Example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
            ("παράδειγμα.δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp"),
            ("ΠΑΡΆΔΕΙΓΜΑ.δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp"),
            ("[192.0.2.1]", "[192.0.2.1]"),
            ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
        ];
        for (text, want) in rows {
            let domain = Domain::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(domain.as_str(), want, "{text}");
            assert_eq!(domain, Domain::parse(want).expect(want), "{text}");
        }
        assert!(
            Domain::parse("[192.0.2.1]")
                .expect("literal")
                .is_address_literal()
        );
        assert!(
            !Domain::parse("example.org")
                .expect("name")
                .is_address_literal()
        );
    }

    #[test]
    fn what_is_not_a_domain() {
        let rows = [
            ("", DomainError::Empty),
            (".", DomainError::Empty),
            ("..", DomainError::Empty),
            (
                "a..b",
                DomainError::Invalid {
                    domain: "a..b".into(),
                },
            ),
            (
                ".example.org",
                DomainError::Invalid {
                    domain: ".example.org".into(),
                },
            ),
            (
                "xn--zz.example",
                DomainError::Invalid {
                    domain: "xn--zz.example".into(),
                },
            ),
            ("[]", DomainError::Empty),
        ];
        for (text, want) in rows {
            assert_eq!(Domain::parse(text), Err(want), "{text:?}");
        }
    }
}
