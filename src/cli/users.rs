//! `dimegate users ...`: hosted DIME users, through [`crate::identity::Keystore`]. The key store
//! is plain files with atomic no-clobber writes, so these commands work while the server runs.
//!
//! Exit codes: 0 success, 1 the operation was refused (unknown user, custody, mode), 2 usage or
//! invalid configuration.

use crate::config::Config;
use crate::identity::{HostedUser, IdentityError, Keystore, Mode, OrgIdentity};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `dimegate users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Host a new user: trustful (a key is made and kept here) or cautious (import their signet).
    Add {
        /// `local@domain`, a served domain.
        address: String,
        /// Who holds the private key.
        #[arg(long, value_enum, default_value_t = Mode::Trustful)]
        mode: Mode,
    },
    /// List hosted users.
    List {
        /// Only this domain's.
        #[arg(long)]
        domain: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One user: mode, key generations and fingerprints.
    Show {
        /// The user.
        address: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// New key for a trustful user; the new signet's chain of custody is signed by the old key.
    Rotate {
        /// The user.
        address: String,
    },
    /// Stop hosting a user (their files move to `<domain>/removed/` in the key store).
    Remove {
        /// The user.
        address: String,
    },
    /// File a cautious user's signet, or sign their signing request (SSR).
    ImportSignet {
        /// The user.
        address: String,
        /// The signet or SSR (armored or binary).
        file: PathBuf,
    },
}

fn org_for(config: &Config, ks: &Keystore, address: &str) -> Result<OrgIdentity, IdentityError> {
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .ok_or_else(|| IdentityError::BadAddress(address.to_owned()))?;
    ks.ensure_org(
        &domain,
        config.org_key_files.get(&domain),
        &mut rand::rngs::OsRng,
    )
    .map(|(org, _)| org)
}

/// Runs one `users` subcommand.
pub(crate) fn run(config: &Config, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    let ks = Keystore::new(&config.data_dir, &config.domains);
    let result = match cmd {
        UsersCommand::Add { address, mode } => org_for(config, &ks, &address)
            .and_then(|org| ks.add_user(&org, &address, mode, &mut rand::rngs::OsRng))
            .map(|u| print_user(&u, false)),
        UsersCommand::Rotate { address } => org_for(config, &ks, &address)
            .and_then(|org| ks.rotate_user(&org, &address, &mut rand::rngs::OsRng))
            .map(|u| print_user(&u, false)),
        UsersCommand::ImportSignet { address, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            org_for(config, &ks, &address)
                .and_then(|org| ks.import_signet(&org, &address, &bytes))
                .map(|u| print_user(&u, false))
        }
        UsersCommand::Remove { address } => ks
            .remove_user(&address, crate::time::UnixTime::now().0)
            .map(|()| println!("removed {address}")),
        UsersCommand::Show { address, json } => ks.user(&address).map(|u| print_user(&u, json)),
        UsersCommand::List { domain, json } => {
            let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
            ks.users(domain.as_deref()).map(|users| {
                if json {
                    let list: Vec<_> = users.iter().map(user_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                } else {
                    for u in &users {
                        let fp = u
                            .current()
                            .map(|g| g.signet.crypto_fingerprint().to_string())
                            .unwrap_or_else(|| "(no signet yet)".into());
                        println!("{:<40} {:<9} {fp}", u.address, u.mode);
                    }
                }
            })
        }
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ (IdentityError::Io { .. } | IdentityError::Corrupt { .. })) => Err(e.into()),
        Err(e @ (IdentityError::BadAddress(_) | IdentityError::NotServed(_))) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn user_json(u: &HostedUser) -> serde_json::Value {
    serde_json::json!({
        "address": u.address,
        "mode": u.mode.to_string(),
        "current": u.current().map(|g| g.signet.crypto_fingerprint().to_string()),
        "generations": u.generations.iter().map(|g| serde_json::json!({
            "number": g.number,
            "crypto_fingerprint": g.signet.crypto_fingerprint().to_string(),
            "full_fingerprint": g.signet.full_fingerprint().map(|f| f.to_string()),
            "key_held": g.has_key,
        })).collect::<Vec<_>>(),
    })
}

fn print_user(u: &HostedUser, json: bool) {
    if json {
        println!("{}", user_json(u));
        return;
    }
    println!("{} ({})", u.address, u.mode);
    if u.generations.is_empty() {
        println!(
            "  no signet yet: `dimegate users import-signet {} FILE`",
            u.address
        );
    }
    for g in &u.generations {
        let current = if Some(g.number) == u.current().map(|c| c.number) {
            " current"
        } else {
            ""
        };
        let key = if g.has_key { "key held" } else { "signet only" };
        println!(
            "  generation {}{current}: {} ({key})",
            g.number,
            g.signet.crypto_fingerprint()
        );
    }
}
