//! SIGHUP (systemd's ExecReload) against the real binary: a renewed certificate is served to the
//! next TLS client (openssl s_client) and its expiry shows in the metrics; a broken one is
//! refused and the old one stays.

mod common;

use common::{Gateway, metric, tool, wait_until};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The SHA-256 fingerprint of the certificate the implicit-TLS listener serves.
fn served_fingerprint(gw: &Gateway) -> String {
    let s_client = Command::new(tool("openssl"))
        .args([
            "s_client",
            "-connect",
            &gw.tls_smtp.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new(tool("openssl"))
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&s_client.stdout)
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn hup(gw: &Gateway) {
    let pid = gw.child.as_ref().expect("running").id();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn sighup_reloads_the_tls_certificate() {
    let mut gw = Gateway::start("");
    let before = served_fingerprint(&gw);
    assert!(before.contains("Fingerprint="), "{before:?}");
    let tls = gw.dir.path().join("data/tls");
    // A new certificate valid for 30 days, written over the generated one.
    let status = Command::new(tool("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "30", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(tls.join("key.pem"))
        .arg("-out")
        .arg(tls.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    hup(&gw);
    wait_until(
        Duration::from_secs(10),
        || gw.log_text().contains("TLS certificate reloaded"),
        || gw.log_text(),
    );
    let after = served_fingerprint(&gw);
    assert_ne!(before, after, "the new certificate is served");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let expiry = metric(
        &gw.metrics(),
        "dimegate_tls_certificate_expiry_timestamp_seconds",
    )
    .expect("expiry metric");
    let days = (expiry - now) / 86400.0;
    assert!((29.0..=30.1).contains(&days), "expires in {days} days");

    // A broken file: refused, the last good certificate stays, the server keeps running.
    std::fs::write(tls.join("cert.pem"), "not a certificate").unwrap();
    hup(&gw);
    wait_until(
        Duration::from_secs(10),
        || gw.log_text().contains("TLS certificate not reloaded"),
        || gw.log_text(),
    );
    assert_eq!(served_fingerprint(&gw), after);
    assert!(gw.stop().success());
}
