//! The DNSSEC verdict of an answer, from hickory's per-record proofs. Pure, table-tested.

use hickory_resolver::proto::dnssec::Proof;

/// What DNSSEC says about an answer that is delivered as a value. Bogus is not a verdict here:
/// it is [`super::ResolveError::Bogus`], so it cannot be mistaken for a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Every record of the answer (each link of a CNAME chain included) chains to the trust
    /// anchor, or its non-existence is proven by signed NSEC/NSEC3 records.
    Secure,
    /// Some record lies in a zone proven unsigned, or the resolver does not validate (no
    /// `[dns] trust_anchor`): nothing is proven either way.
    Insecure,
}

impl Verdict {
    /// `true` for [`Verdict::Secure`].
    pub fn is_secure(self) -> bool {
        self == Verdict::Secure
    }

    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Secure => "secure",
            Verdict::Insecure => "insecure",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict of a set of records from a validating resolver: `Err(())` when any is bogus or
/// indeterminate. Indeterminate (the validator never reached the record) fails closed: with a
/// trust anchor configured, an answer that was not judged is not trusted as insecure either.
/// An empty set is insecure (nothing proves anything).
pub(crate) fn from_proofs(proofs: impl IntoIterator<Item = Proof>) -> Result<Verdict, ()> {
    let mut all_secure = true;
    let mut any = false;
    for proof in proofs {
        any = true;
        match proof {
            Proof::Secure => {}
            Proof::Insecure => all_secure = false,
            Proof::Bogus | Proof::Indeterminate => return Err(()),
        }
    }
    Ok(if any && all_secure {
        Verdict::Secure
    } else {
        Verdict::Insecure
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_table() {
        use Proof::*;
        let rows: &[(&[Proof], Result<Verdict, ()>)] = &[
            (&[Secure], Ok(Verdict::Secure)),
            (&[Secure, Secure], Ok(Verdict::Secure)),
            (&[Insecure], Ok(Verdict::Insecure)),
            // A secure CNAME to an insecure target is insecure.
            (&[Secure, Insecure], Ok(Verdict::Insecure)),
            (&[Bogus], Err(())),
            (&[Secure, Bogus], Err(())),
            (&[Insecure, Bogus], Err(())),
            (&[Indeterminate], Err(())),
            (&[Secure, Indeterminate], Err(())),
            (&[], Ok(Verdict::Insecure)),
        ];
        for (proofs, want) in rows {
            assert_eq!(from_proofs(proofs.iter().copied()), *want, "{proofs:?}");
        }
    }
}
