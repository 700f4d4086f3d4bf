//! Command-line interface: clap definitions and the dispatch to library functions.
//!
//! Exit codes: 0 success, 1 a check failed (or the operation failed), 2 usage or invalid
//! configuration.

pub mod dime;
pub mod dmtp;
mod queue;
mod summary;
mod users;

use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// dimegate: the SMTP <-> DIME mail gateway.
#[derive(Debug, Parser)]
#[command(name = "dimegate", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "DIMEGATE_LOG_JSON")]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (embedded defaults without --config).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "DIMEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect and steer the queue (works while the server runs).
    Queue {
        /// Configuration file, to find the data directory and admin address.
        #[arg(long, short, global = true, env = "DIMEGATE_CONFIG")]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Hosted DIME users: add, list, show, rotate, remove, import-signet (works while the
    /// server runs).
    Users {
        /// Configuration file, to find the data directory and the served domains.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: users::UsersCommand,
    },
    /// Ask the running server's `/healthz` (or `/readyz` with --ready): exit 0 if it answers
    /// 200, 1 otherwise. For container HEALTHCHECKs in images without curl.
    Health {
        /// Configuration file, for the admin address.
        #[arg(long, short, env = "DIMEGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Ask `/readyz` instead (503 while draining or shutting down).
        #[arg(long)]
        ready: bool,
    },
    /// Ask a DMTP server like `dig` asks DNS: SGNT, VRFY, HIST (exit 1 if it fails or the
    /// signet does not validate).
    Dmtp {
        /// Configuration file, for `[dns]` and `[dmtp]` (ports, ca_file).
        #[arg(long, short, global = true, env = "DIMEGATE_CONFIG")]
        config: Option<PathBuf>,
        /// What to ask.
        #[command(subcommand)]
        command: dmtp::DmtpCommand,
    },
    /// Print the whole discovery chain for an address or domain: `_dx` record, DNSSEC verdict,
    /// DX targets and the one chosen, certificate check, org and user signets, cache state.
    Lookup {
        /// `user@domain` or `domain`.
        name: String,
        /// Configuration file, for `[dns]` and `[dmtp]`.
        #[arg(long, short, env = "DIMEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Hash a password read from standard input, for `[[user]] password_hash`.
    Passwd,
    /// Show the bridge end to end on loopback: two gateways, one mail from alice@north.test to
    /// bob@south.test, and what each hop saw. Needs no configuration; exit 0 when the mail
    /// arrives as sent.
    Demo {
        /// Keep everything (configurations, keys, logs, the mailbox) under this directory
        /// instead of a temporary one that is removed.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// DIME: keys, signets, `_dx` records, D/MIME messages.
    #[command(flatten)]
    Dime(dime::DimeCommand),
}

/// `dimegate config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file: exit 0 if valid, 2 with the key path and reason if not.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// A failure whose exit code is already decided.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| {
            Exit {
                code: 2,
                message: format!("invalid configuration {}: {e}", p.display()),
            }
            .into()
        }),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config.as_ref())?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(crate::serve::serve(config, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let c = load_config(Some(&file))?;
            println!(
                "{}: ok (domains: {}; smtp: {:?}; admin: {})",
                file.display(),
                c.domains.join(", "),
                c.smtp.listen,
                c.admin.listen
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { config, command } => {
            let config = load_config(config.as_ref())?;
            queue::run(&config, command)
        }
        Command::Users { config, command } => {
            let config = load_config(config.as_ref())?;
            users::run(&config, command)
        }
        Command::Dime(dime::DimeCommand::Record(args)) if args.org_signet.is_none() => {
            let config = load_config(args.config.as_ref())?;
            dime::record_from_config(&config, &args.domain)
        }
        Command::Dime(cmd) => dime::run(cmd),
        Command::Health { config, ready } => {
            let config = load_config(config.as_ref())?;
            let mut addr = config.admin.listen;
            // A wildcard listener is reached on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let path = if ready { "/readyz" } else { "/healthz" };
            match queue::http(addr, "GET", path) {
                Ok((200, body)) => {
                    print!("{body}");
                    Ok(ExitCode::SUCCESS)
                }
                Ok((status, body)) => {
                    eprintln!("{addr}{path}: {status} {}", body.trim());
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("{addr}{path}: {e:#}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Dmtp { config, command } => {
            let config = load_config(config.as_ref())?;
            dmtp::run_dmtp(&config, command)
        }
        Command::Lookup { name, config } => {
            let config = load_config(config.as_ref())?;
            dmtp::run_lookup(&config, &name)
        }
        Command::Demo { dir } => match crate::demo::run(dir) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(Exit {
                code: 1,
                message: format!("demo failed: {e}"),
            }
            .into()),
        },
        Command::Passwd => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(Exit {
                    code: 2,
                    message: "empty password".into(),
                }
                .into());
            }
            let hash = crate::auth::hash_password(password).map_err(anyhow::Error::msg)?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Sets up tracing: text or JSON on stderr, level from `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
