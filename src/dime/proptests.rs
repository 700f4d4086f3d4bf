//! Property tests: parse(format(x)) == x for key files, signets and `_dx` records.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;

fn arb_dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::D1), Just(Dialect::D2)]
}

fn arb_key(kind: KeyKind) -> impl Strategy<Value = PrivateKey> {
    (any::<[u8; 32]>(), any::<[u8; 32]>(), arb_dialect()).prop_filter_map(
        "scalar out of range",
        move |(seed, scalar, dialect)| {
            let enc = k256::SecretKey::from_slice(&scalar).ok()?;
            Some(
                PrivateKey::from_parts(kind, SigningKey::from_bytes(&seed), enc)
                    .with_dialect(dialect),
            )
        },
    )
}

/// Informational fields (16..=252) in ascending order, unique except the repeatable ones.
fn arb_extra() -> impl Strategy<Value = Vec<Field>> {
    proptest::collection::btree_map(
        prop_oneof![16u8..=160, 200u8..=252],
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..8),
        ),
        0..6,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(id, (value, name))| Field {
                id,
                name: (id == 251).then_some(name),
                value,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn key_files_round_trip(key in prop_oneof![arb_key(KeyKind::Org), arb_key(KeyKind::User)]) {
        let bytes = key.to_bytes();
        prop_assert_eq!(PrivateKey::parse(&bytes).unwrap(), key);
    }

    #[test]
    fn signets_round_trip(
        org_key in arb_key(KeyKind::Org),
        user_key in arb_key(KeyKind::User),
        extra in arb_extra(),
        user_extra in arb_extra(),
        domain in "[a-z0-9.-]{1,40}",
        dialect in arb_dialect(),
    ) {
        let org = Signet::create_org(&org_key, &domain, &[], &extra).unwrap();
        prop_assert_eq!(Signet::parse(org.as_bytes()).unwrap(), org.clone());
        prop_assert_eq!(Signet::parse_any(org.armor().as_bytes()).unwrap(), org.clone());
        prop_assert_eq!(org.validate(None).unwrap().level, Level::Id);

        let ssr = Signet::create_ssr(&user_key, None).unwrap();
        let user = Signet::sign_ssr(&ssr, org_key.signing_key(), &org, &domain, &user_extra).unwrap();
        prop_assert_eq!(Signet::parse(user.as_bytes()).unwrap(), user.clone());
        prop_assert_eq!(user.validate(Some(&org)).unwrap().level, Level::Id);

        // Any field list, in either dialect, survives encode -> parse -> re-encode.
        let rebuilt = Signet::from_fields(SignetKind::User, dialect, user.fields()).unwrap();
        prop_assert_eq!(rebuilt.fields(), user.fields());
        prop_assert_eq!(rebuilt.dialect(), dialect);
        prop_assert_eq!(Signet::parse(rebuilt.as_bytes()).unwrap(), rebuilt);
    }

    #[test]
    fn dx_records_round_trip(
        seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..4),
        certs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
        policy in proptest::option::of(prop_oneof![Just(Policy::Experimental), Just(Policy::Mixed), Just(Policy::Strict)]),
        syndicates in proptest::option::of("[a-zA-Z0-9.,:/_-]{1,30}"),
        dx in proptest::collection::vec("[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}", 0..4),
        expiry_days in proptest::option::of(any::<u32>()),
        subdomain in proptest::option::of(prop_oneof![Just(Subdomain::Strict), Just(Subdomain::Relaxed), Just(Subdomain::Explicit)]),
    ) {
        let keys: Vec<SigningKey> = seeds.iter().map(SigningKey::from_bytes).collect();
        let record = DxRecord {
            poks: keys.iter().map(SigningKey::verifying_key).collect(),
            tls: certs.iter().map(|c| tls_signature(&keys[0], c)).collect(),
            policy,
            syndicates,
            dx,
            expiry_days,
            subdomain,
        };
        let strings = record.to_txt_strings().unwrap();
        prop_assert!(strings.iter().all(|s| s.len() <= 255));
        let parts: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
        prop_assert_eq!(DxRecord::parse(&parts).unwrap(), record.clone());
        prop_assert_eq!(DxRecord::parse_str(&record.to_text().unwrap()).unwrap(), record);
    }
}
