//! SMTP AUTH credentials: argon2 password hashes (PHC strings) and their verification.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;

/// Checks that `hash` is an argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not a PHC password hash ({e}); make one with `dimegate passwd`"))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => return Err(format!("unsupported algorithm {other:?}; use argon2id")),
    }
    if parsed.hash.is_none() {
        return Err("the PHC string has no hash part".into());
    }
    Ok(())
}

/// Hashes a password with argon2id and a fresh salt, for `[[user]] password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The users allowed to AUTH.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
}

/// A hash to verify against when the user does not exist, so that unknown and known users take
/// the same time to refuse.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0$x0vXcKyQ3J0YxQm3T6m8hvSCz2kqx5H8YVz4ybxSJ3o";

impl Credentials {
    /// Builds the table from validated configuration.
    pub fn new(users: &[crate::config::User]) -> Credentials {
        Credentials {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
        }
    }

    /// Are any users configured? (AUTH is offered only then.)
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Verifies a password. Slow on purpose (argon2): call it off the async runtime.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let hash = hash_password("s3cret").unwrap();
        check_hash_format(&hash).unwrap();
        let creds = Credentials::new(&[crate::config::User {
            name: "alice".into(),
            password_hash: hash,
        }]);
        assert!(creds.verify("alice", "s3cret"));
        assert!(!creds.verify("alice", "s3cret "));
        assert!(!creds.verify("bob", "s3cret"));
        assert!(check_hash_format(DUMMY_HASH).is_ok());
    }

    #[test]
    fn refuses_what_is_not_an_argon2_hash() {
        assert!(check_hash_format("hunter2").is_err());
        assert!(check_hash_format("$5$rounds=5000$salt$hash").is_err());
        assert!(check_hash_format("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA").is_err());
    }
}
