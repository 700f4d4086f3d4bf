//! `dimegate keys|signet|record|message`: DIME administration commands. File I/O lives here; everything
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
    /// Seal and open D/MIME messages.
    Message {
        /// What to do.
        #[command(subcommand)]
        cmd: MessageCommand,
    },
}

/// `dimegate message …`
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Seal an RFC 5322 message (stdin) as author and sign it as origin (without `--origin-key`:
    /// as author only, for submission to the origin over DMTP); the binary D/MIME message goes
    /// to stdout.
    Seal(SealArgs),
    /// Open a D/MIME message (stdin) as one actor and check every signature it can see.
    Open(OpenArgs),
}

/// `dimegate message seal`
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Author's user key.
    #[arg(long)]
    pub author_key: PathBuf,
    /// Author's user signet.
    #[arg(long)]
    pub author_signet: PathBuf,
    /// Origin's org key (signs chunks 248/249/255). Without it the message carries the author's
    /// signatures only, as a DIME client submits it to its own organization, which signs as
    /// origin (for mail to a legacy mailbox: `--recipient-signet` is the domain's exit
    /// identity, `dime-bridge@<domain>`, and `--recipient` the legacy address).
    #[arg(long)]
    pub origin_key: Option<PathBuf>,
    /// Origin's org signet.
    #[arg(long)]
    pub origin_signet: PathBuf,
    /// Destination's org signet.
    #[arg(long)]
    pub destination_signet: PathBuf,
    /// Recipient's user signet.
    #[arg(long)]
    pub recipient_signet: PathBuf,
    /// The recipient mailbox the destination chunk names, when it is not the recipient
    /// signet's own (the exit: a legacy address, sealed to the exit identity).
    #[arg(long)]
    pub recipient: Option<String>,
    /// Write libdime's tree-signature form instead of the spec's (DIME.md §7.8).
    #[arg(long)]
    pub libdime_tree: bool,
}

/// Who opens a message.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ActorArg {
    /// The sending user.
    Author,
    /// The sender's organization.
    Origin,
    /// The recipient's organization.
    Destination,
    /// The receiving user.
    Recipient,
}

/// `dimegate message open`
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The actor to open as.
    #[arg(long = "as", value_enum)]
    pub actor: ActorArg,
    /// That actor's private key.
    #[arg(long)]
    pub key: PathBuf,
    /// Signets of the other actors (found by the fingerprints in the message).
    #[arg(long, num_args = 1..)]
    pub signets: Vec<PathBuf>,
    /// Print a JSON report of every chunk and signature verdict instead of the message.
    #[arg(long)]
    pub json: bool,
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

/// `dimegate record DOMAIN …`: from the running configuration (the served domain's org signet,
/// `[dmtp] dx` and the DMTP certificate), or from files given with `--org-signet`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The domain (the record goes at `_dx.DOMAIN`).
    pub domain: String,
    /// The configuration the gateway runs with (embedded defaults without it).
    #[arg(long, short, conflicts_with = "org_signet")]
    pub config: Option<PathBuf>,
    /// Offline: the domain's org signet (armored or binary) instead of the configuration.
    #[arg(long)]
    pub org_signet: Option<PathBuf>,
    /// DIME delivery host; repeat for several, tried in order (with --org-signet).
    #[arg(long = "dx", requires = "org_signet")]
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
        DimeCommand::Message {
            cmd: MessageCommand::Seal(args),
        } => {
            let input = read_stdin()?;
            let mut out = std::io::stdout().lock();
            message_seal(&args, &input, &mut out, &mut rand::rngs::OsRng)
        }
        DimeCommand::Message {
            cmd: MessageCommand::Open(args),
        } => {
            let input = read_stdin()?;
            let mut out = std::io::stdout().lock();
            message_open(&args, &input, &mut out)
        }
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    Ok(input)
}

/// `message seal`: `input` is the RFC 5322 message, the sealed message goes to `out`.
pub fn message_seal(
    args: &SealArgs,
    input: &[u8],
    out: &mut dyn std::io::Write,
    rng: &mut (impl rand::CryptoRng + rand::RngCore),
) -> anyhow::Result<ExitCode> {
    use crate::dime::message::{self, Parties, Party, SealOptions, TreeSignature};
    let author_key = load_key(&args.author_key)?;
    let origin_key = args.origin_key.as_deref().map(load_key).transpose()?;
    let signet = |p: &Path| load_signet(p).map(|s| Party::from_signet(&s));
    let author = signet(&args.author_signet)?;
    let origin = signet(&args.origin_signet)?;
    let destination = signet(&args.destination_signet)?;
    let mut recipient = signet(&args.recipient_signet)?;
    if let Some(name) = &args.recipient {
        recipient.name = name.clone();
    }
    // A key that does not belong to its signet would seal a message nobody can verify.
    let mut pairs = vec![("author", &author_key, &author)];
    if let Some(key) = &origin_key {
        pairs.push(("origin", key, &origin));
    }
    for (what, key, party) in pairs {
        if key.encryption_public() != party.encryption_key
            || !party.signing_keys.contains(&key.verifying_key())
        {
            eprintln!("error: the {what} key does not belong to the {what} signet");
            return Ok(ExitCode::from(2));
        }
    }
    let parties = Parties {
        author: &author,
        origin: &origin,
        destination: &destination,
        recipient: &recipient,
    };
    let opts = SealOptions {
        tree_signature: if args.libdime_tree {
            TreeSignature::LibdimeCompat
        } else {
            TreeSignature::Spec
        },
        origin_signing_key: origin_key.as_ref().map(|k| k.signing_key()),
    };
    match message::seal(input, &parties, author_key.signing_key(), &opts, rng) {
        Ok(sealed) => {
            out.write_all(&sealed)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: cannot seal: {e}");
            Ok(ExitCode::from(CHECK_FAILED))
        }
    }
}

/// `message open`: `input` is the D/MIME message; the rebuilt message (author, recipient), the
/// envelope (origin, destination) or the JSON report goes to `out`, verdicts to stderr.
pub fn message_open(
    args: &OpenArgs,
    input: &[u8],
    out: &mut dyn std::io::Write,
) -> anyhow::Result<ExitCode> {
    use crate::dime::message::{self, Actor, Party};
    let actor = match args.actor {
        ActorArg::Author => Actor::Author,
        ActorArg::Origin => Actor::Origin,
        ActorArg::Destination => Actor::Destination,
        ActorArg::Recipient => Actor::Recipient,
    };
    let key = load_key(&args.key)?;
    let want = match actor {
        Actor::Author | Actor::Recipient => KeyKind::User,
        Actor::Origin | Actor::Destination => KeyKind::Org,
    };
    if key.kind() != want {
        eprintln!("error: --as {actor} needs a {want:?} key");
        return Ok(ExitCode::from(2));
    }
    let mut signets = Vec::new();
    for p in &args.signets {
        signets.push(Party::from_signet(&load_signet(p)?));
    }
    let report = match message::inspect(input, actor, key.encryption_secret(), &signets) {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                let j = serde_json::json!({ "actor": actor.as_str(), "ok": false, "error": e.to_string() });
                writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
            }
            eprintln!("error: {e}");
            return Ok(ExitCode::from(CHECK_FAILED));
        }
    };
    let verdict = report.check();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report_json(&report, &verdict))?
        )?;
    } else {
        for c in &report.signatures {
            eprintln!("{}: signed by {}: {:?}", c.chunk, c.signer, c.verdict);
        }
        match report.rfc5322() {
            Some(m) => out.write_all(&m)?,
            None => {
                if let Some(e) = &report.origin_envelope {
                    writeln!(
                        out,
                        "Author: <{}>\nAuthor-Signet: [{}]\nDestination: <{}>\nDestination-Signet: [{}]",
                        e.author, e.author_fingerprint, e.destination, e.destination_fingerprint
                    )?;
                }
                if let Some(e) = &report.destination_envelope {
                    writeln!(
                        out,
                        "Recipient: <{}>\nRecipient-Signet: [{}]\nOrigin: <{}>\nOrigin-Signet: [{}]",
                        e.recipient, e.recipient_fingerprint, e.origin, e.origin_fingerprint
                    )?;
                }
            }
        }
        out.flush()?;
    }
    Ok(match verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(CHECK_FAILED)
        }
    })
}

fn report_json(
    report: &crate::dime::message::Report,
    verdict: &Result<(), crate::dime::message::OpenError>,
) -> serde_json::Value {
    use crate::dime::message::{TreeSignature, Verdict};
    let data = |d: &[u8]| match std::str::from_utf8(d) {
        Ok(s) => serde_json::json!({ "text": s }),
        Err(_) => serde_json::json!({ "base64": STANDARD_NO_PAD.encode(d) }),
    };
    let chunks: Vec<_> = report
        .chunks
        .iter()
        .map(|c| {
            serde_json::json!({
                "type": c.kind as u8,
                "name": c.kind.to_string(),
                "size": c.size,
                "flags": c.flags,
                "data": c.data.as_deref().map(data),
            })
        })
        .collect();
    let signatures: Vec<_> = report
        .signatures
        .iter()
        .map(|c| {
            let (v, fp) = match &c.verdict {
                Verdict::Valid => ("valid", None),
                Verdict::ValidLibdimeTree => ("valid-libdime-tree", None),
                Verdict::Invalid => ("invalid", None),
                Verdict::Placeholder => ("placeholder", None),
                Verdict::SignetMissing { fingerprint } => ("signet-missing", Some(fingerprint)),
                Verdict::NotDisclosed => ("not-disclosed", None),
                Verdict::CheckedBefore => ("checked-before", None),
            };
            serde_json::json!({
                "chunk": c.chunk as u8,
                "signer": c.signer.as_str(),
                "verdict": v,
                "fingerprint": fp,
            })
        })
        .collect();
    serde_json::json!({
        "actor": report.actor.as_str(),
        "ok": verdict.is_ok(),
        "error": verdict.as_ref().err().map(ToString::to_string),
        "tree_signature": report.tree_signature.map(|t| match t {
            TreeSignature::Spec => "spec",
            TreeSignature::LibdimeCompat => "libdime",
        }),
        "origin_envelope": report.origin_envelope.as_ref().map(|e| serde_json::json!({
            "author": e.author, "author_fingerprint": e.author_fingerprint,
            "destination": e.destination, "destination_fingerprint": e.destination_fingerprint,
        })),
        "destination_envelope": report.destination_envelope.as_ref().map(|e| serde_json::json!({
            "recipient": e.recipient, "recipient_fingerprint": e.recipient_fingerprint,
            "origin": e.origin, "origin_fingerprint": e.origin_fingerprint,
        })),
        "chunks": chunks,
        "signatures": signatures,
    })
}

/// Read a signet file (armored or binary).
pub fn load_signet(path: &Path) -> anyhow::Result<Signet> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Signet::parse_any(&bytes).with_context(|| format!("parsing signet {}", path.display()))
}

/// Read a signet file: `Err` if it cannot be read, `Ok(Err)` if it is not a valid signet (a
/// failed check, exit 1, after printing why).
fn read_signet(path: &Path) -> anyhow::Result<Result<Signet, ExitCode>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Signet::parse_any(&bytes).map_err(|e| {
        eprintln!("{}: invalid: {e}", path.display());
        ExitCode::from(CHECK_FAILED)
    }))
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
    let out_dir = match &cmd {
        KeysCommand::Org { out, .. } | KeysCommand::User { out, .. } => out,
    };
    // The directory holds private keys: create it for the owner only.
    if !out_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
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
    let signet = match read_signet(file)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let org = match org.map(read_signet).transpose()? {
        Some(Err(code)) => return Ok(code),
        Some(Ok(o)) => Some(o),
        None => None,
    };
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

/// `record DOMAIN` from the configuration: the org identity (created on first use, as `serve`
/// would), the `dx=` hosts of `[dmtp] dx`, and a `tls=` pin of the DMTP certificate signed by
/// the org key.
pub fn record_from_config(
    config: &crate::config::Config,
    domain: &str,
) -> anyhow::Result<ExitCode> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !config.domains.contains(&domain) {
        eprintln!("error: {domain} is not a served domain ([[domain]] in the configuration)");
        return Ok(ExitCode::from(2));
    }
    println!(
        "{}.{domain}. IN TXT {}",
        dime::DX_PREFIX,
        zone_rdata(config, &domain)?
    );
    Ok(ExitCode::SUCCESS)
}

/// The `_dx` record of served `domain` as zone-file RDATA (creating the org identity and the
/// DMTP certificate on first use), its `tls=` pin checked.
pub(crate) fn zone_rdata(config: &crate::config::Config, domain: &str) -> anyhow::Result<String> {
    let ks = crate::identity::Keystore::new(&config.data_dir, &config.domains);
    let (org, _) = ks.ensure_org(
        domain,
        config.org_key_files.get(domain),
        &mut rand::rngs::OsRng,
    )?;
    let cert_path = crate::serve::dmtp_certificate(config)?.0;
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?;
    let rec = DxRecord {
        poks: vec![*org.signet.signing_key()],
        dx: config.dmtp.dx.clone(),
        tls: vec![dime::tls_signature(org.key.signing_key(), &cert)],
        ..Default::default()
    };
    if !matches!(rec.check_tls(&cert), TlsPin::Verified { .. }) {
        bail!("tls= pin does not verify");
    }
    Ok(rec.to_zone_rdata()?)
}

fn record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    let Some(org_signet) = &args.org_signet else {
        bail!("record needs --org-signet or the configuration");
    };
    let signet = match read_signet(org_signet)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if signet.kind() != SignetKind::Org {
        eprintln!(
            "error: {} is a {}, not an org signet",
            org_signet.display(),
            signet.kind().name()
        );
        return Ok(ExitCode::from(2));
    }
    if let Err(e) = signet.validate(None) {
        eprintln!("{}: invalid: {e}", org_signet.display());
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
mod message_tests {
    use super::*;
    use rand::SeedableRng;

    fn vec_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/dime-vectors/d1-libdime")
            .join(name)
    }

    fn open_args(actor: ActorArg, key: &str, json: bool) -> OpenArgs {
        OpenArgs {
            actor,
            key: vec_path(key),
            signets: ["auth", "orig", "dest", "recp"]
                .iter()
                .map(|a| vec_path(&format!("{a}.signet")))
                .collect(),
            json,
        }
    }

    const MAIL: &[u8] = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: cli\r\n\r\nHi\r\n";

    #[test]
    fn seal_then_open_as_each_actor() {
        let args = SealArgs {
            author_key: vec_path("auth.keys"),
            author_signet: vec_path("auth.signet"),
            origin_key: Some(vec_path("orig.keys")),
            origin_signet: vec_path("orig.signet"),
            destination_signet: vec_path("dest.signet"),
            recipient_signet: vec_path("recp.signet"),
            recipient: None,
            libdime_tree: false,
        };
        let mut sealed = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(
            message_seal(&args, MAIL, &mut sealed, &mut rng).unwrap(),
            ExitCode::SUCCESS
        );
        let mut out = Vec::new();
        let code = message_open(
            &open_args(ActorArg::Recipient, "recp.keys", false),
            &sealed,
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(out, MAIL);
        for (actor, key) in [
            (ActorArg::Origin, "orig.keys"),
            (ActorArg::Destination, "dest.keys"),
            (ActorArg::Author, "auth.keys"),
        ] {
            let mut out = Vec::new();
            assert_eq!(
                message_open(&open_args(actor, key, true), &sealed, &mut out).unwrap(),
                ExitCode::SUCCESS,
                "{actor:?}"
            );
            let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(j["ok"], true);
        }
        // One flipped byte: exit 1 and a report that says which chunk.
        let mut bad = sealed.clone();
        let at = bad.len() - 300;
        bad[at] ^= 1;
        let mut out = Vec::new();
        let code = message_open(
            &open_args(ActorArg::Recipient, "recp.keys", true),
            &bad,
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::from(1));
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["ok"], false);
        // A user key for the origin is a usage error.
        let code = message_open(
            &open_args(ActorArg::Origin, "recp.keys", false),
            &sealed,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(code, ExitCode::from(2));
    }

    #[test]
    fn libdime_vector_opens_with_the_libdime_tree_reported() {
        let msg = std::fs::read(vec_path("msg.from_destination.bin")).unwrap();
        let mut out = Vec::new();
        let code = message_open(
            &open_args(ActorArg::Recipient, "recp.keys", true),
            &msg,
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["tree_signature"], "libdime");
    }
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
        // A file that is not a signet is a failed check; a missing file is an error.
        let key_path = dir.path().join("example.org.key");
        assert_eq!(show(&key_path, None), ExitCode::from(1));
        assert!(run(parse(&["signet", "show", "/nonexistent/x"]).unwrap()).is_err());

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
