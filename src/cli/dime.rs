//! `dimegate keys|signet|record`: DIME administration commands. File I/O lives here; everything
//! else is a call into the sans-I/O [`crate::dime`] module.
//!
//! Exit codes: 0 success, 1 a check failed (invalid signet, key mismatch), 2 usage error.
//! I/O failures are returned as `Err` for the caller to print.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use clap::{Args, Subcommand};

use crate::dime::{self, DxRecord, KeyKind, PrivateKey, Signet, SignetKind, TlsPin};

/// The DIME administration subcommands; the top-level CLI flattens these as `keys`, `signet` and
/// `record` (a `message` command for seal/open may join them).
#[derive(Debug, Subcommand)]
pub enum DimeCommand {
    /// Generate private keys and their signets.
    Keys {
        /// What to generate.
        #[command(subcommand)]
        cmd: KeysCommand,
    },
    /// Inspect and check signets.
    Signet {
        /// What to do.
        #[command(subcommand)]
        cmd: SignetCommand,
    },
    /// Print the `_dx` TXT record a domain should publish.
    Record(RecordArgs),
}

/// `dimegate keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Org key and org signet: DIR/DOMAIN.key (mode 0600) and DIR/DOMAIN.signet, both armored.
    Org {
        /// The domain the org signet is for.
        domain: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// User key and user signet signed by the org key: DIR/ADDRESS.key and DIR/ADDRESS.signet.
    User {
        /// The mailbox address.
        address: String,
        /// The org key file (armored or binary) whose POK signs the user signet.
        #[arg(long)]
        org_key: PathBuf,
        /// The user's previous key file: adds the chain-of-custody signature (key rotation).
        #[arg(long)]
        previous_key: Option<PathBuf>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// `dimegate signet …`
#[derive(Debug, Subcommand)]
pub enum SignetCommand {
    /// Print a signet's fields, validation level and fingerprints; exit 1 if it does not validate.
    Show {
        /// Signet file (armored or binary).
        file: PathBuf,
        /// The org signet that signed a user signet.
        #[arg(long)]
        org: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `dimegate record DOMAIN …`
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The domain (the record goes at `_dx.DOMAIN`).
    pub domain: String,
    /// The domain's org signet (armored or binary).
    #[arg(long)]
    pub org_signet: PathBuf,
    /// DIME delivery host; repeat for several, tried in order.
    #[arg(long = "dx")]
    pub dx: Vec<String>,
    /// PEM certificate of the DX host to pin with `tls=` (needs --org-key).
    #[arg(long, requires = "org_key")]
    pub tls_cert: Option<PathBuf>,
    /// The org key that signs the `tls=` pin.
    #[arg(long, requires = "tls_cert")]
    pub org_key: Option<PathBuf>,
}

const CHECK_FAILED: u8 = 1;

/// Run one DIME subcommand.
pub fn run(cmd: DimeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DimeCommand::Keys { cmd } => run_keys(cmd),
        DimeCommand::Signet {
            cmd: SignetCommand::Show { file, org, json },
        } => signet_show(&file, org.as_deref(), json),
        DimeCommand::Record(args) => record(&args),
    }
}

/// Read a signet file (armored or binary).
pub fn load_signet(path: &Path) -> anyhow::Result<Signet> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Signet::parse_any(&bytes).with_context(|| format!("parsing signet {}", path.display()))
}

/// Read a private key file (armored or binary); warns when others may read it.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: {} is readable by group or others (mode {:o}); private keys should be 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let bin = zeroize::Zeroizing::new(
        dime::armor::decode_any(&bytes).with_context(|| format!("decoding {}", path.display()))?,
    );
    PrivateKey::parse(&bin).with_context(|| format!("parsing key {}", path.display()))
}

/// Write an armored private key with mode 0600 (created that way, never widened).
pub fn save_key(path: &Path, key: &PrivateKey, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let text = zeroize::Zeroizing::new(dime::armor::armor(&key.to_bytes())?);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its old mode when overwritten: tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn save_public(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!("{} exists (use --force to overwrite)", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The name becomes a file name: refuse anything that could leave `--out`.
fn safe_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

fn run_keys(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let mut rng = rand::rngs::OsRng;
    let name = match &cmd {
        KeysCommand::Org { domain, .. } => domain,
        KeysCommand::User { address, .. } => address,
    };
    if !safe_file_stem(name) {
        eprintln!("error: {name:?} cannot be used as a file name");
        return Ok(ExitCode::from(2));
    }
    match cmd {
        KeysCommand::Org { domain, out, force } => {
            let key = PrivateKey::generate(KeyKind::Org, &mut rng);
            let signet = Signet::create_org(&key, &domain, &[], &[])?;
            let key_path = out.join(format!("{domain}.key"));
            let signet_path = out.join(format!("{domain}.signet"));
            save_key(&key_path, &key, force)?;
            save_public(&signet_path, &signet.armor(), force)?;
            println!("{}", key_path.display());
            println!("{}", signet_path.display());
            println!("crypto fingerprint: {}", signet.crypto_fingerprint());
        }
        KeysCommand::User {
            address,
            org_key,
            previous_key,
            out,
            force,
        } => {
            let org_key = load_key(&org_key)?;
            if org_key.kind() != KeyKind::Org {
                eprintln!("error: --org-key is a user key, not an org key");
                return Ok(ExitCode::from(2));
            }
            let previous = previous_key.as_deref().map(load_key).transpose()?;
            let key = PrivateKey::generate(KeyKind::User, &mut rng);
            let ssr = Signet::create_ssr(&key, previous.as_ref())?;
            let signet = Signet::sign_ssr_with_org_key(&ssr, &org_key, &address, &[])?;
            let key_path = out.join(format!("{address}.key"));
            let signet_path = out.join(format!("{address}.signet"));
            save_key(&key_path, &key, force)?;
            save_public(&signet_path, &signet.armor(), force)?;
            println!("{}", key_path.display());
            println!("{}", signet_path.display());
            println!("crypto fingerprint: {}", signet.crypto_fingerprint());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A field value for display: text when it is printable UTF-8, else base64.
fn show_value(f: &dime::Field) -> String {
    // Keys, signatures and photos are binary even when the bytes happen to be UTF-8.
    let binary = f.id <= 15 || matches!(f.id, 252 | 253 | 255);
    match std::str::from_utf8(&f.value) {
        Ok(s) if !binary && !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("base64:{}", STANDARD_NO_PAD.encode(&f.value)),
    }
}

fn signet_show(file: &Path, org: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let signet = match Signet::parse_any(&bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: invalid: {e}", file.display());
            return Ok(ExitCode::from(CHECK_FAILED));
        }
    };
    let org = org.map(load_signet).transpose()?;
    let validation = signet.validate(org.as_ref());
    let kind = signet.kind();
    if json {
        let fields: Vec<_> = signet
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "id": f.id,
                    "name": dime::field_name(kind, f.id),
                    "field_name": f.name.as_ref().map(|n| String::from_utf8_lossy(n).into_owned()),
                    "value": show_value(f),
                })
            })
            .collect();
        let (level, limit, error) = match &validation {
            Ok(v) => (
                Some(v.level.to_string()),
                v.limit.map(|l| l.to_string()),
                None,
            ),
            Err(e) => (None, None, Some(e.to_string())),
        };
        let out = serde_json::json!({
            "kind": kind.name(),
            "dialect": format!("{:?}", signet.dialect()),
            "identifier": signet.identifier(),
            "fields": fields,
            "level": level,
            "limit": limit,
            "error": error,
            "custody": validation.as_ref().ok().map(|v| format!("{:?}", v.custody)),
            "fingerprints": {
                "crypto": signet.crypto_fingerprint().to_string(),
                "full": signet.full_fingerprint().map(|f| f.to_string()),
                "id": signet.id_fingerprint().map(|f| f.to_string()),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{} ({:?})", kind.name(), signet.dialect());
        for f in signet.fields() {
            println!(
                "  {:>3} {:<30} {}",
                f.id,
                dime::field_name(kind, f.id),
                show_value(f)
            );
        }
        match &validation {
            Ok(v) => match v.limit {
                Some(l) => println!("level: {} (not higher: {l})", v.level),
                None => println!("level: {}", v.level),
            },
            Err(e) => println!("invalid: {e}"),
        }
        println!("crypto fingerprint: {}", signet.crypto_fingerprint());
        if let Some(fp) = signet.full_fingerprint() {
            println!("full fingerprint:   {fp}");
        }
        if let Some(fp) = signet.id_fingerprint() {
            println!("id fingerprint:     {fp}");
        }
    }
    Ok(if validation.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHECK_FAILED)
    })
}

fn record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    let signet = load_signet(&args.org_signet)?;
    if signet.kind() != SignetKind::Org {
        eprintln!(
            "error: {} is a {}, not an org signet",
            args.org_signet.display(),
            signet.kind().name()
        );
        return Ok(ExitCode::from(2));
    }
    if let Err(e) = signet.validate(None) {
        eprintln!("{}: invalid: {e}", args.org_signet.display());
        return Ok(ExitCode::from(CHECK_FAILED));
    }
    let domain = args.domain.trim_end_matches('.');
    if let Some(id) = signet.identifier()
        && !id.eq_ignore_ascii_case(domain)
    {
        eprintln!("error: the org signet is for {id}, not {domain}");
        return Ok(ExitCode::from(CHECK_FAILED));
    }
    let mut rec = DxRecord {
        poks: vec![*signet.signing_key()],
        dx: args.dx.clone(),
        ..Default::default()
    };
    if let (Some(cert_path), Some(key_path)) = (&args.tls_cert, &args.org_key) {
        use rustls_pki_types::pem::PemObject;
        let key = load_key(key_path)?;
        if &key.verifying_key() != signet.signing_key() {
            eprintln!("error: --org-key is not the POK of the org signet");
            return Ok(ExitCode::from(CHECK_FAILED));
        }
        let cert = rustls_pki_types::CertificateDer::from_pem_file(cert_path)
            .with_context(|| format!("reading certificate {}", cert_path.display()))?;
        rec.tls.push(dime::tls_signature(key.signing_key(), &cert));
        // Check what we publish, as a peer would (DIME.md §9.4).
        if !matches!(rec.check_tls(&cert), TlsPin::Verified { .. }) {
            bail!("tls= pin does not verify");
        }
    }
    let rdata = match rec.to_zone_rdata() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}.{domain}. IN TXT {rdata}", dime::DX_PREFIX);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: DimeCommand,
    }

    fn parse(args: &[&str]) -> Result<DimeCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("dimegate").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

    #[test]
    fn command_lines_parse() {
        assert!(parse(&["keys", "org", "example.org", "--out", "d"]).is_ok());
        assert!(
            parse(&[
                "keys",
                "user",
                "a@example.org",
                "--org-key",
                "k",
                "--out",
                "d"
            ])
            .is_ok()
        );
        assert!(parse(&["signet", "show", "f", "--org", "o", "--json"]).is_ok());
        assert!(
            parse(&[
                "record",
                "example.org",
                "--org-signet",
                "s",
                "--dx",
                "a",
                "--dx",
                "b"
            ])
            .is_ok()
        );
        // --tls-cert needs --org-key.
        assert!(
            parse(&[
                "record",
                "example.org",
                "--org-signet",
                "s",
                "--tls-cert",
                "c"
            ])
            .is_err()
        );
        assert!(parse(&["keys", "org", "example.org"]).is_err());
        let escape = parse(&["keys", "org", "../x", "--out", "/nonexistent"]).unwrap();
        assert_eq!(run(escape).unwrap(), ExitCode::from(2));
    }

    #[test]
    fn keys_org_then_user_then_show_and_record() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        let code = run(parse(&["keys", "org", "example.org", "--out", out]).unwrap()).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let key = dir.path().join("example.org.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Keys are never overwritten silently.
        assert!(run(parse(&["keys", "org", "example.org", "--out", out]).unwrap()).is_err());

        let key_s = key.to_str().unwrap();
        let code = run(parse(&[
            "keys",
            "user",
            "a@example.org",
            "--org-key",
            key_s,
            "--out",
            out,
        ])
        .unwrap())
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let org = load_signet(&dir.path().join("example.org.signet")).unwrap();
        let user = load_signet(&dir.path().join("a@example.org.signet")).unwrap();
        assert_eq!(user.validate(Some(&org)).unwrap().level, dime::Level::Id);
        let org_s = dir.path().join("example.org.signet");
        let user_s = dir.path().join("a@example.org.signet");
        let show = |f: &Path, o: Option<&Path>| {
            let mut args = vec!["signet", "show", f.to_str().unwrap(), "--json"];
            if let Some(o) = o {
                args.extend(["--org", o.to_str().unwrap()]);
            }
            run(parse(&args).unwrap()).unwrap()
        };
        assert_eq!(show(&user_s, Some(&org_s)), ExitCode::SUCCESS);
        // Checked against the wrong org, the user signet fails: exit 1.
        assert_eq!(show(&user_s, Some(&user_s)), ExitCode::from(1));

        let rec = parse(&[
            "record",
            "example.org",
            "--org-signet",
            org_s.to_str().unwrap(),
            "--dx",
            "dx.example.org",
        ])
        .unwrap();
        assert_eq!(run(rec).unwrap(), ExitCode::SUCCESS);
        let wrong = parse(&[
            "record",
            "example.net",
            "--org-signet",
            org_s.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(run(wrong).unwrap(), ExitCode::from(1));
    }

    #[test]
    fn record_pins_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        run(parse(&["keys", "org", "example.org", "--out", out]).unwrap()).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["dx.example.org".into()]).unwrap();
        let pem = dir.path().join("dx.pem");
        std::fs::write(&pem, cert.cert.pem()).unwrap();
        let args = [
            "record",
            "example.org",
            "--org-signet",
            &format!("{out}/example.org.signet"),
            "--tls-cert",
            pem.to_str().unwrap(),
            "--org-key",
            &format!("{out}/example.org.key"),
        ];
        assert_eq!(run(parse(&args).unwrap()).unwrap(), ExitCode::SUCCESS);
    }
}
