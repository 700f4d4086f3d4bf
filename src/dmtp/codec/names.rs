//! The validated names DMTP carries: domains (MAIL, RCPT, EHLO, SGNT), mailboxes (SGNT, VRFY,
//! HIST of a user signet) and transaction ids. Each type holds only values the codec can write
//! back inside one 512-byte command line, so formatting never fails.

use std::fmt;

use super::NameError;

/// Longest domain name (RFC 1035 §2.3.4, without the trailing dot).
pub const DOMAIN_MAX: usize = 253;
/// Longest local part of a mailbox (RFC 5321 §4.5.3.1.1).
pub const LOCAL_PART_MAX: usize = 64;
/// Longest transaction id we write or accept.
pub const TXID_MAX: usize = 64;

/// A DNS domain name in LDH form (A-labels for IDNs), lower-cased, without a trailing dot.
/// A single label (`localhost`) is allowed: the zero-configuration organisation is `localhost`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Checks and lower-cases `text`.
    pub fn parse(text: &str) -> Result<Domain, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > DOMAIN_MAX {
            return Err(NameError::TooLong {
                max: DOMAIN_MAX,
                got: text.len(),
            });
        }
        for label in text.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(NameError::BadDomain);
            }
        }
        Ok(Domain(text.to_ascii_lowercase()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Domain, NameError> {
        Domain::parse(s)
    }
}

/// A mailbox `local@domain`: the name of a user signet. The local part is an RFC 5322 dot-atom
/// (no quoted strings: they could carry the brackets and spaces DMTP uses as delimiters); its case
/// is kept, the domain is lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Checks `text` (`local@domain`).
    pub fn parse(text: &str) -> Result<Mailbox, NameError> {
        let Some((local, domain)) = text.rsplit_once('@') else {
            return Err(NameError::BadMailbox);
        };
        Mailbox::new(local, Domain::parse(domain)?)
    }

    /// A mailbox from its parts.
    pub fn new(local: &str, domain: Domain) -> Result<Mailbox, NameError> {
        if local.is_empty() {
            return Err(NameError::BadMailbox);
        }
        if local.len() > LOCAL_PART_MAX {
            return Err(NameError::TooLong {
                max: LOCAL_PART_MAX,
                got: local.len(),
            });
        }
        let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
        let ok = local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext));
        if !ok {
            return Err(NameError::BadMailbox);
        }
        Ok(Mailbox {
            local: local.to_owned(),
            domain,
        })
    }

    /// The local part, as given.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain: the organisation whose signet signs this user's.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({self})")
    }
}

/// Whose signet a look-up names: an organisation (a domain) or a user (a mailbox).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SignetName {
    /// An organisational signet, named by its domain.
    Org(Domain),
    /// A user signet, named by the mailbox.
    User(Mailbox),
}

impl SignetName {
    /// A mailbox if `text` holds `@`, else a domain.
    pub fn parse(text: &str) -> Result<SignetName, NameError> {
        if text.contains('@') {
            Mailbox::parse(text).map(SignetName::User)
        } else {
            Domain::parse(text).map(SignetName::Org)
        }
    }

    /// The organisation the name belongs to.
    pub fn domain(&self) -> &Domain {
        match self {
            SignetName::Org(domain) => domain,
            SignetName::User(mailbox) => mailbox.domain(),
        }
    }

    /// True for a user signet.
    pub fn is_user(&self) -> bool {
        matches!(self, SignetName::User(_))
    }
}

impl fmt::Display for SignetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignetName::Org(domain) => domain.fmt(f),
            SignetName::User(mailbox) => mailbox.fmt(f),
        }
    }
}

/// The transaction id a server gives in `2xx OK [txid]`: 1 to [`TXID_MAX`] printable ASCII
/// characters other than brackets and space. dimegate's server uses the queue id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TxId(String);

impl TxId {
    /// Checks `text`.
    pub fn parse(text: &str) -> Result<TxId, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > TXID_MAX {
            return Err(NameError::TooLong {
                max: TXID_MAX,
                got: text.len(),
            });
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        {
            return Err(NameError::BadTxId);
        }
        Ok(TxId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<crate::envelope::QueueId> for TxId {
    fn from(id: crate::envelope::QueueId) -> TxId {
        TxId(id.to_string())
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({})", self.0)
    }
}
