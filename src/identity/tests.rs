use super::*;
use crate::dime::Level;
use rand::SeedableRng;
use std::os::unix::fs::PermissionsExt;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}

fn store(dir: &Path) -> Keystore {
    Keystore::new(dir, &["example.org".to_owned(), "example.net".to_owned()])
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn org_is_created_once_owner_only_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let (org, created) = ks.ensure_org("example.org", None, &mut rng()).unwrap();
    assert!(created);
    assert_eq!(org.signet.identifier(), Some("example.org"));
    assert_eq!(org.signet.validate(None).unwrap().level, Level::Id);
    let (again, created) = ks.ensure_org("example.org", None, &mut rng()).unwrap();
    assert!(!created);
    assert_eq!(again.key, org.key);
    assert_eq!(again.signet, org.signet);
    let d = dir.path().join("dime/example.org");
    assert_eq!(mode_of(&d), 0o700);
    assert_eq!(mode_of(&d.join("org.key")), 0o600);
    assert!(matches!(
        ks.ensure_org("other.test", None, &mut rng()),
        Err(IdentityError::NotServed(d)) if d == "other.test"
    ));
}

#[test]
fn a_key_file_others_can_read_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    ks.ensure_org("example.org", None, &mut rng()).unwrap();
    let key = dir.path().join("dime/example.org/org.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    match ks.org("example.org", None) {
        Err(IdentityError::KeyFileMode { path, mode }) => {
            assert_eq!(path, key);
            assert_eq!(mode, 0o644);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn configured_org_files_must_belong_together() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let (a, _) = ks.ensure_org("example.org", None, &mut rng()).unwrap();
    let (_, _) = ks
        .ensure_org(
            "example.net",
            None,
            &mut rand::rngs::StdRng::seed_from_u64(8),
        )
        .unwrap();
    let files = OrgKeyFiles {
        key: dir.path().join("dime/example.org/org.key"),
        signet: dir.path().join("dime/example.org/org.signet"),
    };
    let (loaded, created) = ks
        .ensure_org("example.org", Some(&files), &mut rng())
        .unwrap();
    assert!(!created);
    assert_eq!(loaded.key, a.key);
    let mismatched = OrgKeyFiles {
        key: dir.path().join("dime/example.net/org.key"),
        signet: files.signet.clone(),
    };
    assert!(matches!(
        ks.org("example.org", Some(&mismatched)),
        Err(IdentityError::KeyMismatch { .. })
    ));
    // The right pair under the wrong domain.
    assert!(matches!(
        ks.org("example.net", Some(&files)),
        Err(IdentityError::WrongIdentifier { .. })
    ));
}

#[test]
fn trustful_users_rotate_with_custody_and_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let mut r = rng();
    let (org, _) = ks.ensure_org("example.org", None, &mut r).unwrap();
    let user = ks
        .add_user(&org, "Alice@Example.ORG", Mode::Trustful, &mut r)
        .unwrap();
    assert_eq!(user.address, "alice@example.org");
    let g1 = user.current().unwrap();
    assert_eq!(g1.number, 1);
    assert!(g1.has_key);
    assert_eq!(
        g1.signet.validate(Some(&org.signet)).unwrap().level,
        Level::Id
    );
    let k1 = ks.user_key("alice@example.org", 1).unwrap();
    assert_eq!(&k1.verifying_key(), g1.signet.signing_key());
    assert!(matches!(
        ks.add_user(&org, "alice@example.org", Mode::Trustful, &mut r),
        Err(IdentityError::UserExists(_))
    ));

    let rotated = ks.rotate_user(&org, "alice@example.org", &mut r).unwrap();
    assert_eq!(rotated.generations.len(), 2);
    let g2 = rotated.current().unwrap();
    assert_eq!(g2.number, 2);
    g2.signet
        .verify_custody(g1.signet.signing_key())
        .expect("generation 2 is signed by generation 1's key");
    assert_ne!(
        g2.signet.crypto_fingerprint(),
        g1.signet.crypto_fingerprint()
    );
    // The old key stays, so mail sealed to it still opens.
    assert_eq!(ks.user_key("alice@example.org", 1).unwrap(), k1);
    let user_dir = dir.path().join("dime/example.org/users/alice");
    assert_eq!(mode_of(&user_dir.join("2.key")), 0o600);
}

#[test]
fn cautious_users_hold_only_signets_and_need_custody_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let mut r = rng();
    let (org, _) = ks.ensure_org("example.org", None, &mut r).unwrap();
    let added = ks
        .add_user(&org, "bob@example.org", Mode::Cautious, &mut r)
        .unwrap();
    assert!(added.generations.is_empty());
    assert!(matches!(
        ks.rotate_user(&org, "bob@example.org", &mut r),
        Err(IdentityError::WrongMode { .. })
    ));

    // Bob's client makes his key and a signing request; we sign it.
    let k1 = PrivateKey::generate(KeyKind::User, &mut r);
    let ssr1 = Signet::create_ssr(&k1, None).unwrap();
    let bob = ks
        .import_signet(&org, "bob@example.org", ssr1.armor().as_bytes())
        .unwrap();
    let g1 = bob.current().unwrap();
    assert!(!g1.has_key);
    assert_eq!(g1.signet.identifier(), Some("bob@example.org"));
    g1.signet.validate(Some(&org.signet)).unwrap();

    // A new key without custody from the old one is refused ...
    let k2 = PrivateKey::generate(KeyKind::User, &mut r);
    let no_custody = Signet::create_ssr(&k2, None).unwrap();
    assert!(matches!(
        ks.import_signet(&org, "bob@example.org", no_custody.as_bytes()),
        Err(IdentityError::Custody { .. })
    ));
    // ... with it, accepted as generation 2 (here as a signet the org signed already).
    let ssr2 = Signet::create_ssr(&k2, Some(&k1)).unwrap();
    let signed2 = Signet::sign_ssr_with_org_key(&ssr2, &org.key, "bob@example.org", &[]).unwrap();
    let bob = ks
        .import_signet(&org, "bob@example.org", signed2.as_bytes())
        .unwrap();
    assert_eq!(bob.generations.len(), 2);

    // A user signet from another organization, or for another address, is refused.
    let other = PrivateKey::generate(KeyKind::Org, &mut r);
    let foreign = Signet::sign_ssr_with_org_key(&ssr1, &other, "bob@example.org", &[]).unwrap();
    assert!(matches!(
        ks.import_signet(&org, "carol@example.org", foreign.as_bytes()),
        Err(IdentityError::Dime { .. })
    ));
    let wrong_name =
        Signet::sign_ssr_with_org_key(&ssr1, &org.key, "eve@example.org", &[]).unwrap();
    assert!(matches!(
        ks.import_signet(&org, "carol@example.org", wrong_name.as_bytes()),
        Err(IdentityError::WrongIdentifier { .. })
    ));
    assert!(matches!(
        ks.user("carol@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));

    // A trustful user's signet is never replaced by an import.
    ks.add_user(&org, "dave@example.org", Mode::Trustful, &mut r)
        .unwrap();
    assert!(matches!(
        ks.import_signet(&org, "dave@example.org", ssr1.as_bytes()),
        Err(IdentityError::WrongMode { .. })
    ));
}

#[test]
fn users_list_sorted_and_removal_keeps_the_keys_aside() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let mut r = rng();
    let (org, _) = ks.ensure_org("example.org", None, &mut r).unwrap();
    for a in [
        "zed@example.org",
        "a.b+c@example.org",
        "\"odd/name\"@example.org",
    ] {
        ks.add_user(&org, a, Mode::Trustful, &mut r).unwrap();
    }
    let listed: Vec<String> = ks
        .users(None)
        .unwrap()
        .into_iter()
        .map(|u| u.address)
        .collect();
    assert_eq!(
        listed,
        [
            "\"odd/name\"@example.org",
            "a.b+c@example.org",
            "zed@example.org"
        ]
    );
    assert!(ks.users(Some("example.net")).unwrap().is_empty());
    ks.remove_user("zed@example.org", 1_700_000_000).unwrap();
    assert!(matches!(
        ks.user("zed@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));
    assert!(
        dir.path()
            .join("dime/example.org/removed/zed.1700000000/1.key")
            .exists()
    );
    assert!(matches!(
        ks.remove_user("zed@example.org", 1),
        Err(IdentityError::UnknownUser(_))
    ));
    assert_eq!(ks.users(None).unwrap().len(), 2);
    assert!(matches!(
        ks.user("nobody"),
        Err(IdentityError::BadAddress(_))
    ));
}

#[test]
fn user_mode_answers_like_user_from_the_metadata_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store(dir.path());
    let mut r = rng();
    let (org, _) = ks.ensure_org("example.org", None, &mut r).unwrap();
    ks.add_user(&org, "Alice@Example.org", Mode::Trustful, &mut r)
        .unwrap();
    ks.add_user(&org, "bob@example.org", Mode::Cautious, &mut r)
        .unwrap();
    assert_eq!(ks.user_mode("alice@example.org").unwrap(), Mode::Trustful);
    assert_eq!(ks.user_mode("BOB@example.org").unwrap(), Mode::Cautious);
    assert!(matches!(
        ks.user_mode("carol@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));
    assert!(matches!(
        ks.user_mode("alice@elsewhere.test"),
        Err(IdentityError::NotServed(_))
    ));
    assert!(matches!(
        ks.user_mode("no-at-sign"),
        Err(IdentityError::BadAddress(_))
    ));
    // It reads the disk each time: a removed user is gone at once, as for `user`.
    ks.remove_user("bob@example.org", 1_700_000_000).unwrap();
    assert!(matches!(
        ks.user_mode("bob@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));
    // Corrupt metadata is an error, not "hosted".
    let meta = dir.path().join("dime/example.org/users/alice/user.json");
    std::fs::write(&meta, b"{").unwrap();
    assert!(matches!(
        ks.user_mode("alice@example.org"),
        Err(IdentityError::Corrupt { .. })
    ));
}

/// Sets `path`'s modification time `secs` into the past, as if it had settled long ago.
fn age(path: &Path, secs: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let then = libc::timespec {
        tv_sec: now.as_secs() as libc::time_t - secs,
        tv_nsec: 0,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and two valid timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [then, then].as_ptr(), 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn a_running_server_sees_what_another_process_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cli = store(dir.path());
    let mut r = rng();
    let (org, _) = cli.ensure_org("example.org", None, &mut r).unwrap();
    cli.add_user(&org, "alice@example.org", Mode::Trustful, &mut r)
        .unwrap();
    let user_dir = dir.path().join("dime/example.org/users/alice");
    let server = store(dir.path());
    // Just written: not remembered, in case a second change falls in the same clock tick.
    server.user("alice@example.org").unwrap();
    assert_eq!(server.cache.len(), 0);
    age(&user_dir, 60);
    let k1 = server.user_key("alice@example.org", 1).unwrap();
    assert_eq!(
        server.user("alice@example.org").unwrap().generations.len(),
        1
    );
    assert_eq!(server.cache.len(), 1);
    assert_eq!(server.user_key("alice@example.org", 1).unwrap(), k1);

    // `users rotate` from the command line, while the server runs.
    cli.rotate_user(&org, "alice@example.org", &mut r).unwrap();
    let seen = server.user("alice@example.org").unwrap();
    assert_eq!(seen.generations.len(), 2);
    assert!(server.user_key("alice@example.org", 2).is_ok());
    // (Another age than the first: the stamp is the time itself.)
    age(&user_dir, 120);
    assert_eq!(
        server.user("alice@example.org").unwrap().generations.len(),
        2
    );

    // `users remove`: the directory moves away.
    cli.remove_user("alice@example.org", 1).unwrap();
    assert!(matches!(
        server.user("alice@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));
    assert!(matches!(
        server.user_mode("alice@example.org"),
        Err(IdentityError::UnknownUser(_))
    ));
    assert!(server.user_key("alice@example.org", 1).is_err());
}
