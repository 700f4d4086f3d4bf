//! Signets made for the tests from seeded keys (the shared vectors live outside the worktree).

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::dime::{KeyKind, PrivateKey, Signet};

/// An org signet for `domain`, from the key seeded with `seed`.
pub(crate) fn org(domain: &str, seed: u64) -> Signet {
    let key = PrivateKey::generate(KeyKind::Org, &mut StdRng::seed_from_u64(seed));
    Signet::create_org(&key, domain, &[], &[]).expect("org signet")
}

/// A user signet for `address`, signed by the org key seeded with `org_seed`.
pub(crate) fn user(address: &str, seed: u64, org_seed: u64) -> Signet {
    let org_key = PrivateKey::generate(KeyKind::Org, &mut StdRng::seed_from_u64(org_seed));
    let key = PrivateKey::generate(KeyKind::User, &mut StdRng::seed_from_u64(seed));
    let ssr = Signet::create_ssr(&key, None).expect("ssr");
    Signet::sign_ssr_with_org_key(&ssr, &org_key, address, &[]).expect("user signet")
}
