//! The runner's [`Directory`] over the network and the key store: `_dx` records and signets
//! through [`Discovery`] (DNSSEC-validated, cached), hosted users through the [`Keystore`].
//! It only classifies answers for the pure route; the lookups themselves are discovery's.

use super::route::{DxLookup, Hosted, SignetLookup};
use super::transport::{Directory, Lookup};
use crate::discovery::{Discovery, DiscoveryError};
use crate::domain::Domain;
use crate::identity::{IdentityError, Keystore, Mode};
use std::sync::Arc;
use tracing::warn;

/// Discovery and the key store, as the lookup phase asks them.
#[derive(Debug, Clone)]
pub struct DimeDirectory {
    discovery: Arc<Discovery>,
    keystore: Keystore,
}

impl DimeDirectory {
    /// A directory over `discovery` and `keystore`.
    pub fn new(discovery: Arc<Discovery>, keystore: Keystore) -> DimeDirectory {
        DimeDirectory {
            discovery,
            keystore,
        }
    }
}

/// What a failed `_dx` lookup means for the route: no record is "no DIME"; a forged answer is
/// bogus; anything else (SERVFAIL, timeout, a record that does not parse) may be mended by the
/// domain's operator, so the mail waits rather than leaving in clear text.
pub(super) fn dx_answer(result: Result<(), &DiscoveryError>) -> DxLookup {
    match result {
        Ok(()) => DxLookup::Found,
        Err(DiscoveryError::NoRecord { .. }) => DxLookup::Absent,
        Err(e) if e.is_bogus() => DxLookup::Bogus {
            reason: e.to_string(),
        },
        Err(e) => DxLookup::Temporary {
            reason: e.to_string(),
        },
    }
}

/// What a failed user-signet lookup means for the route: only the DX's own permanent refusal
/// (the DMTP table's 5xx for an unknown name, remembered or fresh) says the recipient has no
/// DIME address. A signet that does not validate, an org signet that cannot be had, an
/// unreachable DX: the recipient waits, because sending in clear what the domain asked to get
/// sealed cannot be taken back.
pub(super) fn signet_answer(result: Result<(), &DiscoveryError>) -> SignetLookup {
    match result {
        Ok(()) => SignetLookup::Found,
        Err(
            e @ (DiscoveryError::Refused { .. }
            | DiscoveryError::Backoff {
                permanent: true, ..
            }),
        ) if e.is_permanent() => SignetLookup::Absent {
            reason: e.to_string(),
        },
        Err(e) => SignetLookup::Temporary {
            reason: e.to_string(),
        },
    }
}

impl Directory for DimeDirectory {
    fn dx<'a>(&'a self, domain: &'a Domain) -> Lookup<'a, DxLookup> {
        Box::pin(async move {
            let found = self.discovery.record(domain.as_str()).await;
            dx_answer(found.as_ref().map(|_| ()))
        })
    }

    fn signet<'a>(&'a self, address: &'a str) -> Lookup<'a, SignetLookup> {
        Box::pin(async move {
            let found = self.discovery.user_signet(address).await;
            signet_answer(found.as_ref().map(|_| ()))
        })
    }

    fn hosted(&self, address: &str) -> Hosted {
        if address.is_empty() {
            return Hosted::No;
        }
        match self.keystore.user(address) {
            Ok(user) => match user.mode {
                Mode::Trustful => Hosted::Trustful,
                Mode::Cautious => Hosted::Cautious {
                    has_signet: user.current().is_some(),
                },
            },
            Err(
                IdentityError::UnknownUser(_)
                | IdentityError::NotServed(_)
                | IdentityError::BadAddress(_),
            ) => Hosted::No,
            Err(e) => {
                warn!(%address, error = %e, "hosted-user lookup failed; treated as not hosted");
                Hosted::No
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmtp::client::{ClientError, Step};
    use crate::dmtp::codec::ReplyCode;

    fn refused(code: u16) -> DiscoveryError {
        DiscoveryError::Refused {
            host: "dx.example".into(),
            error: ClientError::Refused {
                step: Step::Sgnt,
                code: ReplyCode::from_number(code).expect("a code"),
                text: "no".into(),
            },
        }
    }

    #[test]
    fn answers_are_classified_for_the_route() {
        assert_eq!(dx_answer(Ok(())), DxLookup::Found);
        let none = DiscoveryError::NoRecord {
            domain: "a.example".into(),
        };
        assert_eq!(dx_answer(Err(&none)), DxLookup::Absent);
        let unreachable = DiscoveryError::Unreachable {
            domain: "a.example".into(),
            attempts: vec![],
        };
        assert!(matches!(
            dx_answer(Err(&unreachable)),
            DxLookup::Temporary { .. }
        ));
        assert_eq!(signet_answer(Ok(())), SignetLookup::Found);
        assert!(matches!(
            signet_answer(Err(&refused(510))),
            SignetLookup::Absent { .. }
        ));
        assert!(matches!(
            signet_answer(Err(&refused(470))),
            SignetLookup::Temporary { .. }
        ));
        let invalid = DiscoveryError::InvalidSignet {
            name: "bob@a.example".into(),
            reason: "bad signature".into(),
        };
        assert!(
            matches!(signet_answer(Err(&invalid)), SignetLookup::Temporary { .. }),
            "an invalid signet must not send the mail in clear"
        );
        let remembered = |permanent| DiscoveryError::Backoff {
            name: "bob@a.example".into(),
            error: "510".into(),
            retry_in_secs: 60,
            permanent,
        };
        assert!(matches!(
            signet_answer(Err(&remembered(true))),
            SignetLookup::Absent { .. }
        ));
        assert!(matches!(
            signet_answer(Err(&remembered(false))),
            SignetLookup::Temporary { .. }
        ));
    }
}
