//! The DIME commands as an administrator runs them: the real binary, files on disk, and the
//! libdime vectors read back through the same commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dimegate(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dimegate"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dimegate");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> &[u8] {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dime-vectors/d1-libdime")
}

const MAIL: &[u8] = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: hello\r\nMessage-ID: <x@a.example>\r\n\r\nHi Bob,\r\nthe secret is 42.\r\n";

#[test]
fn keys_seal_open_round_trip_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&dimegate(
        d,
        &["keys", "org", "a.example", "--out", "a"],
        b"",
    ));
    ok(&dimegate(
        d,
        &["keys", "org", "b.example", "--out", "b"],
        b"",
    ));
    ok(&dimegate(
        d,
        &[
            "keys",
            "user",
            "alice@a.example",
            "--org-key",
            "a/a.example.key",
            "--out",
            "a",
        ],
        b"",
    ));
    ok(&dimegate(
        d,
        &[
            "keys",
            "user",
            "bob@b.example",
            "--org-key",
            "b/b.example.key",
            "--out",
            "b",
        ],
        b"",
    ));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("b/bob@b.example.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private keys are owner-only");

    let show = dimegate(
        d,
        &[
            "signet",
            "show",
            "b/bob@b.example.signet",
            "--org",
            "b/b.example.signet",
            "--json",
        ],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(ok(&show)).unwrap();
    assert_eq!(v["level"], "id", "{v}");

    let record = dimegate(
        d,
        &[
            "record",
            "a.example",
            "--org-signet",
            "a/a.example.signet",
            "--dx",
            "dx.a.example",
        ],
        b"",
    );
    let text = String::from_utf8_lossy(ok(&record)).into_owned();
    assert!(
        text.starts_with("_dx.a.example. IN TXT \"ver=1 pok="),
        "{text}"
    );
    assert!(text.contains("dx=dx.a.example"), "{text}");

    let sealed = dimegate(
        d,
        &[
            "message",
            "seal",
            "--author-key",
            "a/alice@a.example.key",
            "--author-signet",
            "a/alice@a.example.signet",
            "--origin-key",
            "a/a.example.key",
            "--origin-signet",
            "a/a.example.signet",
            "--destination-signet",
            "b/b.example.signet",
            "--recipient-signet",
            "b/bob@b.example.signet",
        ],
        MAIL,
    );
    let sealed = ok(&sealed).to_vec();
    assert!(
        !sealed.windows(9).any(|w| w == b"secret is"),
        "plaintext leaked into the sealed message"
    );
    assert!(
        !sealed.windows(5).any(|w| w == b"alice"),
        "an address leaked into the sealed message"
    );

    let signets = [
        "a/alice@a.example.signet",
        "a/a.example.signet",
        "b/b.example.signet",
        "b/bob@b.example.signet",
    ];
    let mut open = vec![
        "message",
        "open",
        "--as",
        "recipient",
        "--key",
        "b/bob@b.example.key",
        "--signets",
    ];
    open.extend(signets);
    let opened = dimegate(d, &open, &sealed);
    assert_eq!(
        ok(&opened),
        MAIL,
        "the recipient gets the message back byte for byte"
    );

    let mut as_dest = vec![
        "message",
        "open",
        "--as",
        "destination",
        "--key",
        "b/b.example.key",
        "--json",
        "--signets",
    ];
    as_dest.extend(signets);
    let report: serde_json::Value =
        serde_json::from_slice(ok(&dimegate(d, &as_dest, &sealed))).unwrap();
    assert_eq!(report["actor"], "destination");

    // A flipped byte in the recipient's view fails with exit 1.
    let mut bad = sealed.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let out = dimegate(d, &open, &bad);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn libdime_vector_opens_through_the_binary() {
    let v = vectors();
    let signets: Vec<String> = ["auth", "orig", "dest", "recp"]
        .iter()
        .map(|n| v.join(format!("{n}.signet")).display().to_string())
        .collect();
    let key = v.join("recp.keys").display().to_string();
    let msg = std::fs::read(v.join("msg.from_destination.bin")).unwrap();
    let mut args = vec![
        "message",
        "open",
        "--as",
        "recipient",
        "--key",
        key.as_str(),
        "--signets",
    ];
    args.extend(signets.iter().map(String::as_str));
    let out = dimegate(Path::new("."), &args, &msg);
    let text = String::from_utf8_lossy(ok(&out)).into_owned();
    assert!(text.contains("Subject: DIME test vector"), "{text}");
    assert!(
        text.contains("Hello Bob,\r\nthis is a DIME test vector.\r\n"),
        "{text}"
    );
}
