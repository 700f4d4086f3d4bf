//! The DIME identities dimegate holds: one organization per served domain (its org key and org
//! signet) and the hosted users of each domain.
//!
//! A *trustful* user's private key lives here and dimegate seals and opens for them; a
//! *cautious* user keeps their own key and dimegate holds only their signet (DIME.md §2.2). Every
//! key rotation adds a *generation*: a new signet whose chain-of-custody field is signed by the
//! previous key, and, for a trustful user, the new key. Old generations are kept, so mail sealed
//! to an old key still opens and a peer can walk the chain (DMTP `HIST`).
//!
//! Layout under `data_dir/dime/` (directories 0700, private keys 0600):
//!
//! ```text
//! <domain>/org.key            org key file (absent when configured elsewhere)
//! <domain>/org.signet         org signet, armored
//! <domain>/users/<local>/user.json     address and mode
//! <domain>/users/<local>/<n>.signet    generation n (1, 2, ...), armored
//! <domain>/users/<local>/<n>.key       generation n's private key (trustful users only)
//! <domain>/removed/<local>.<unix time>/  a removed user, kept for recovery
//! ```
//!
//! Files, not the queue store, because the store is held exclusively by the running server while
//! `dimegate users ...` must work beside it: every change is a new file made with a no-clobber
//! atomic write, so a reader sees a generation whole or not at all, and two concurrent rotations
//! cannot both become generation n. The `.signet` of a generation is written last and is what
//! makes it exist. Local parts compare case-insensitively (ASCII), as Postfix's lookups do.
//!
//! Private keys are [`PrivateKey`] values, which zeroize their secrets on drop; the file bytes
//! they were parsed from are held in `Zeroizing` buffers.

mod cache;
mod files;

use crate::dime::{self, KeyKind, PrivateKey, Signet, SignetKind};
use files::{create_private_dir, encode_local, io, read_key_file, write_new};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// What went wrong with an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A private key file that group or others may read.
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}); run chmod 600 on it"
    )]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key or signet file that does not parse or validate.
    #[error("{path}: {source}")]
    Dime {
        /// The file, or the address whose signet was refused.
        path: PathBuf,
        /// Why.
        source: dime::Error,
    },
    /// The org key is not the key of the org signet beside it.
    #[error("{key}: not the primary key of the org signet {signet}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The signet file.
        signet: PathBuf,
    },
    /// A signet names another identity than the one it is filed under.
    #[error("{path}: the signet is for {found:?}, expected {expected}")]
    WrongIdentifier {
        /// The file.
        path: PathBuf,
        /// The name it should carry.
        expected: String,
        /// The name it carries.
        found: Option<String>,
    },
    /// An address that is not `local@domain`.
    #[error("{0:?} is not an address (local@domain)")]
    BadAddress(String),
    /// The domain is not one this gateway serves.
    #[error("{0} is not a served domain ([[domain]] in the configuration)")]
    NotServed(String),
    /// No hosted user by that address.
    #[error("{0}: no such hosted user")]
    UnknownUser(String),
    /// The user exists already.
    #[error("{0}: already a hosted user")]
    UserExists(String),
    /// The operation needs the other account mode.
    #[error("{address} is a {mode} user: {why}")]
    WrongMode {
        /// The user.
        address: String,
        /// Their mode.
        mode: Mode,
        /// What cannot be done, and what to do instead.
        why: &'static str,
    },
    /// A new signet does not continue the user's chain of custody.
    #[error("{address}: the new signet's chain of custody is not signed by the current key")]
    Custody {
        /// The user.
        address: String,
    },
    /// A hosted user whose current signet's private key is not held here (a cautious user).
    #[error("{0}: no private key held here for the current signet")]
    NoKey(String),
    /// Another process changed the same user at the same moment.
    #[error("{0}: changed concurrently by another process; try again")]
    Conflict(String),
    /// A file the store wrote does not read back.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// DIME.md §2.2 account modes dimegate can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// dimegate holds the private key: it seals and opens for the user.
    Trustful,
    /// The user holds the private key; dimegate holds the signet and seals mail at rest to it.
    Cautious,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Trustful => "trustful",
            Mode::Cautious => "cautious",
        })
    }
}

/// Paths of an org key and signet kept outside the data directory (`[[domain]] org_key`,
/// `org_signet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgKeyFiles {
    /// The org key file (1952), armored or binary, mode 0600.
    pub key: PathBuf,
    /// The org signet (1776), armored or binary.
    pub signet: PathBuf,
}

/// A served domain as a DIME organization.
#[derive(Debug, Clone)]
pub struct OrgIdentity {
    /// The domain (lower case).
    pub domain: String,
    /// The org key: its POK signs user signets and origin signatures.
    pub key: PrivateKey,
    /// The org signet published over DMTP `SGNT`.
    pub signet: Signet,
}

/// One generation of a hosted user's keys.
#[derive(Debug, Clone)]
pub struct Generation {
    /// 1 for the first key, counting up with each rotation.
    pub number: u32,
    /// The user signet of this generation.
    pub signet: Signet,
    /// Whether dimegate holds this generation's private key.
    pub has_key: bool,
}

/// A hosted user and their key history, oldest first.
#[derive(Debug, Clone)]
pub struct HostedUser {
    /// `local@domain`, normalised.
    pub address: String,
    /// Account mode.
    pub mode: Mode,
    /// Key generations, oldest first; empty for a cautious user whose signet is not imported yet.
    pub generations: Vec<Generation>,
}

impl HostedUser {
    /// The current signet, if any.
    pub fn current(&self) -> Option<&Generation> {
        self.generations.last()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct UserMeta {
    address: String,
    mode: Mode,
}

/// A normalised hosted-user address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserAddress {
    local: String,
    domain: String,
}

impl UserAddress {
    fn parse(address: &str) -> Result<UserAddress, IdentityError> {
        let bad = || IdentityError::BadAddress(address.to_owned());
        let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if local.is_empty()
            || domain.is_empty()
            || local.len() > 64
            || address.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad());
        }
        Ok(UserAddress {
            local: local.to_ascii_lowercase(),
            domain,
        })
    }

    fn text(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// The local part of every served domain's bridge identity (see [`Keystore::ensure_bridge`]).
pub const BRIDGE_LOCAL_PART: &str = "dime-bridge";

/// The bridge identity's address in `domain`.
pub fn bridge_address(domain: &str) -> String {
    format!("{BRIDGE_LOCAL_PART}@{domain}")
}

/// The key store under `data_dir/dime`, for the given served domains.
#[derive(Debug, Clone)]
pub struct Keystore {
    root: PathBuf,
    domains: Vec<String>,
    cache: cache::UserCache,
}

impl Keystore {
    /// The key store of a data directory. Nothing is read or created until asked.
    pub fn new(data_dir: &Path, served_domains: &[String]) -> Keystore {
        Keystore {
            root: data_dir.join("dime"),
            domains: served_domains.to_vec(),
            cache: cache::UserCache::default(),
        }
    }

    fn domain_dir(&self, domain: &str) -> PathBuf {
        self.root.join(domain)
    }

    fn served(&self, domain: &str) -> Result<(), IdentityError> {
        if self.domains.iter().any(|d| d == domain) {
            Ok(())
        } else {
            Err(IdentityError::NotServed(domain.to_owned()))
        }
    }

    /// The org identity of `domain`: read from `files` when configured, else from the data
    /// directory, creating a fresh org key and signet there on first use. Returns whether it was
    /// created now.
    pub fn ensure_org<R: CryptoRng + RngCore>(
        &self,
        domain: &str,
        files: Option<&OrgKeyFiles>,
        rng: &mut R,
    ) -> Result<(OrgIdentity, bool), IdentityError> {
        self.served(domain)?;
        if let Some(files) = files {
            return Ok((load_org(domain, &files.key, &files.signet)?, false));
        }
        let dir = self.domain_dir(domain);
        let (key_path, signet_path) = (dir.join("org.key"), dir.join("org.signet"));
        if !signet_path.exists() {
            create_private_dir(&dir)?;
            let key = PrivateKey::generate(KeyKind::Org, rng);
            let signet = Signet::create_org(&key, domain, &[], &[]).map_err(|source| {
                IdentityError::Dime {
                    path: signet_path.clone(),
                    source,
                }
            })?;
            let armored =
                dime::armor::armor(&key.to_bytes()).map_err(|source| IdentityError::Dime {
                    path: key_path.clone(),
                    source,
                })?;
            // Key first: a signet without its key would be an identity nobody can use. Two
            // first starts racing: the one whose key lands first wins, the other reads it.
            if write_new(&key_path, armored.as_bytes(), 0o600)?
                && write_new(&signet_path, signet.armor().as_bytes(), 0o644)?
            {
                return Ok((
                    OrgIdentity {
                        domain: domain.to_owned(),
                        key,
                        signet,
                    },
                    true,
                ));
            }
        }
        Ok((load_org(domain, &key_path, &signet_path)?, false))
    }

    /// The org identity of `domain`, which must exist already.
    pub fn org(
        &self,
        domain: &str,
        files: Option<&OrgKeyFiles>,
    ) -> Result<OrgIdentity, IdentityError> {
        self.served(domain)?;
        match files {
            Some(f) => load_org(domain, &f.key, &f.signet),
            None => {
                let dir = self.domain_dir(domain);
                load_org(domain, &dir.join("org.key"), &dir.join("org.signet"))
            }
        }
    }

    fn user_dir(&self, a: &UserAddress) -> PathBuf {
        self.domain_dir(&a.domain)
            .join("users")
            .join(encode_local(&a.local))
    }

    /// Adds a hosted user. A trustful user gets a fresh key and a signet signed by the org; a
    /// cautious user starts with no signet until [`Keystore::import_signet`].
    pub fn add_user<R: CryptoRng + RngCore>(
        &self,
        org: &OrgIdentity,
        address: &str,
        mode: Mode,
        rng: &mut R,
    ) -> Result<HostedUser, IdentityError> {
        let a = self.user_address(org, address)?;
        let dir = self.user_dir(&a);
        create_private_dir(dir.parent().unwrap_or(&dir))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IdentityError::UserExists(a.text()));
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        let meta = UserMeta {
            address: a.text(),
            mode,
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_new(&dir.join("user.json"), &json, 0o600)?;
        if mode == Mode::Trustful {
            self.new_generation(org, &a, &dir, None, rng)?;
        }
        self.load_user(&a)
    }

    /// Rotates a trustful user's key: generation n+1 with a new key, its signet carrying the
    /// chain of custody signed by generation n's key.
    pub fn rotate_user<R: CryptoRng + RngCore>(
        &self,
        org: &OrgIdentity,
        address: &str,
        rng: &mut R,
    ) -> Result<HostedUser, IdentityError> {
        let a = self.user_address(org, address)?;
        let user = self.load_user(&a)?;
        if user.mode == Mode::Cautious {
            return Err(IdentityError::WrongMode {
                address: user.address,
                mode: user.mode,
                why: "the user holds the key; import their new signet with `users import-signet`",
            });
        }
        let dir = self.user_dir(&a);
        let previous = match user.current() {
            Some(g) => Some((g.number, self.user_key(&user.address, g.number)?)),
            None => None,
        };
        self.new_generation(org, &a, &dir, previous, rng)?;
        self.load_user(&a)
    }

    fn new_generation<R: CryptoRng + RngCore>(
        &self,
        org: &OrgIdentity,
        a: &UserAddress,
        dir: &Path,
        previous: Option<(u32, PrivateKey)>,
        rng: &mut R,
    ) -> Result<(), IdentityError> {
        let number = previous.as_ref().map_or(1, |(n, _)| n + 1);
        let key = PrivateKey::generate(KeyKind::User, rng);
        let dime_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Dime { path, source }
        };
        let signet_path = dir.join(format!("{number}.signet"));
        let key_path = dir.join(format!("{number}.key"));
        let ssr = Signet::create_ssr(&key, previous.as_ref().map(|(_, k)| k))
            .map_err(dime_err(&signet_path))?;
        let signet = Signet::sign_ssr_with_org_key(&ssr, &org.key, &a.text(), &[])
            .map_err(dime_err(&signet_path))?;
        let armored = dime::armor::armor(&key.to_bytes()).map_err(dime_err(&key_path))?;
        if !write_new(&key_path, armored.as_bytes(), 0o600)?
            || !write_new(&signet_path, signet.armor().as_bytes(), 0o644)?
        {
            return Err(IdentityError::Conflict(a.text()));
        }
        Ok(())
    }

    /// Files a signet for a cautious user, creating the user if needed. `bytes` is a user signet
    /// already signed by this domain's org, or a signing request (SSR) that the org signs now.
    /// For an existing user the new signet must carry the chain of custody signed by the current
    /// key.
    pub fn import_signet(
        &self,
        org: &OrgIdentity,
        address: &str,
        bytes: &[u8],
    ) -> Result<HostedUser, IdentityError> {
        let a = self.user_address(org, address)?;
        let refused = |source| IdentityError::Dime {
            path: PathBuf::from(a.text()),
            source,
        };
        let parsed = Signet::parse_any(bytes).map_err(refused)?;
        let signet = match parsed.kind() {
            SignetKind::Ssr => {
                Signet::sign_ssr_with_org_key(&parsed, &org.key, &a.text(), &[]).map_err(refused)?
            }
            SignetKind::User => {
                parsed.validate(Some(&org.signet)).map_err(refused)?;
                if parsed.identifier() != Some(a.text().as_str()) {
                    return Err(IdentityError::WrongIdentifier {
                        path: PathBuf::from(a.text()),
                        expected: a.text(),
                        found: parsed.identifier().map(str::to_owned),
                    });
                }
                parsed
            }
            SignetKind::Org => {
                return Err(refused(dime::Error::WrongKind {
                    object: "org signet",
                    expected: "a user signet or signing request",
                }));
            }
        };
        let existing = match self.load_user(&a) {
            Ok(u) => Some(u),
            Err(IdentityError::UnknownUser(_)) => None,
            Err(e) => return Err(e),
        };
        let dir = self.user_dir(&a);
        let number = match &existing {
            Some(u) if u.mode == Mode::Trustful => {
                return Err(IdentityError::WrongMode {
                    address: u.address.clone(),
                    mode: u.mode,
                    why: "dimegate holds its key; `users remove` it first to host it as cautious",
                });
            }
            Some(u) => match u.current() {
                Some(g) => {
                    if signet.verify_custody(g.signet.signing_key()).is_err() {
                        return Err(IdentityError::Custody {
                            address: u.address.clone(),
                        });
                    }
                    g.number + 1
                }
                None => 1,
            },
            None => {
                create_private_dir(&dir)?;
                let meta = UserMeta {
                    address: a.text(),
                    mode: Mode::Cautious,
                };
                let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
                if !write_new(&dir.join("user.json"), &json, 0o600)? {
                    return Err(IdentityError::Conflict(a.text()));
                }
                1
            }
        };
        if !write_new(
            &dir.join(format!("{number}.signet")),
            signet.armor().as_bytes(),
            0o644,
        )? {
            return Err(IdentityError::Conflict(a.text()));
        }
        self.load_user(&a)
    }

    /// Removes a hosted user: their directory moves to `<domain>/removed/`, keys included, so a
    /// mistaken removal can be undone by moving it back.
    pub fn remove_user(&self, address: &str, now_unix: u64) -> Result<(), IdentityError> {
        let a = UserAddress::parse(address)?;
        self.served(&a.domain)?;
        let dir = self.user_dir(&a);
        if !dir.join("user.json").exists() {
            return Err(IdentityError::UnknownUser(a.text()));
        }
        let removed = self.domain_dir(&a.domain).join("removed");
        create_private_dir(&removed)?;
        let target = removed.join(format!("{}.{now_unix}", encode_local(&a.local)));
        std::fs::rename(&dir, &target).map_err(io(&dir))?;
        files::sync_dir(dir.parent().unwrap_or(&dir))?;
        files::sync_dir(&removed)
    }

    /// The bridge identity of `org`'s domain ([`bridge_address`]), a trustful hosted user
    /// created on first use: the author of legacy mail wrapped for DIME recipients, and the
    /// recipient DIME authors seal mail to when it leaves for a legacy mailbox (the exit).
    /// Returns whether it was created now.
    pub fn ensure_bridge<R: CryptoRng + RngCore>(
        &self,
        org: &OrgIdentity,
        rng: &mut R,
    ) -> Result<(HostedUser, bool), IdentityError> {
        let address = bridge_address(&org.domain);
        match self.add_user(org, &address, Mode::Trustful, rng) {
            Ok(user) => Ok((user, true)),
            Err(IdentityError::UserExists(_)) => Ok((self.user(&address)?, false)),
            Err(e) => Err(e),
        }
    }

    /// The current signet and private key of a trustful hosted user: what signs as author.
    pub fn signing_identity(&self, address: &str) -> Result<(Signet, PrivateKey), IdentityError> {
        let user = self.user(address)?;
        match user.current() {
            Some(g) if g.has_key => Ok((g.signet.clone(), self.user_key(address, g.number)?)),
            _ => Err(IdentityError::NoKey(user.address)),
        }
    }

    /// A hosted user by address.
    pub fn user(&self, address: &str) -> Result<HostedUser, IdentityError> {
        let a = UserAddress::parse(address)?;
        self.served(&a.domain)?;
        let Some(stamp) = cache::Stamp::of(&self.user_dir(&a)) else {
            return self.load_user(&a);
        };
        let name = a.text();
        if let Some(user) = self.cache.user(&name, stamp) {
            return Ok(user);
        }
        let user = self.load_user(&a)?;
        self.cache.keep_user(&name, stamp, &user);
        Ok(user)
    }

    /// The mode of a hosted user, read from its metadata alone: whether `address` is hosted
    /// here, for a receiver that checks it per message, without reading and parsing every
    /// generation's signet as [`Keystore::user`] does. Same errors as [`Keystore::user`].
    pub fn user_mode(&self, address: &str) -> Result<Mode, IdentityError> {
        let a = UserAddress::parse(address)?;
        self.served(&a.domain)?;
        if let Some(stamp) = cache::Stamp::of(&self.user_dir(&a))
            && let Some(user) = self.cache.user(&a.text(), stamp)
        {
            return Ok(user.mode);
        }
        Ok(self.load_meta(&a)?.mode)
    }

    /// Every hosted user of the served domains (or of one), sorted by address.
    pub fn users(&self, domain: Option<&str>) -> Result<Vec<HostedUser>, IdentityError> {
        let mut out = Vec::new();
        for d in &self.domains {
            if domain.is_some_and(|want| want != d) {
                continue;
            }
            let dir = self.domain_dir(d).join("users");
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let name = entry.file_name();
                let Some(local) = name.to_str().and_then(files::decode_local) else {
                    continue; // not a user directory (a temporary file, say)
                };
                let a = UserAddress {
                    local,
                    domain: d.clone(),
                };
                match self.load_user(&a) {
                    Ok(u) => out.push(u),
                    // Removed between the listing and the read.
                    Err(IdentityError::UnknownUser(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|x, y| x.address.cmp(&y.address));
        Ok(out)
    }

    /// The private key of a trustful user's generation.
    pub fn user_key(&self, address: &str, generation: u32) -> Result<PrivateKey, IdentityError> {
        let a = UserAddress::parse(address)?;
        let stamp = cache::Stamp::of(&self.user_dir(&a));
        let name = a.text();
        if let Some(stamp) = stamp
            && let Some(key) = self.cache.key(&name, stamp, generation)
        {
            return Ok(key);
        }
        let key = self.read_user_key(&a, generation)?;
        if let Some(stamp) = stamp {
            self.cache.keep_key(&name, stamp, generation, &key);
        }
        Ok(key)
    }

    fn read_user_key(&self, a: &UserAddress, generation: u32) -> Result<PrivateKey, IdentityError> {
        let path = self.user_dir(a).join(format!("{generation}.key"));
        let bytes = read_key_file(&path)?;
        let bin = zeroize::Zeroizing::new(dime::armor::decode_any(&bytes).map_err(|source| {
            IdentityError::Dime {
                path: path.clone(),
                source,
            }
        })?);
        PrivateKey::parse_kind(&bin, KeyKind::User)
            .map_err(|source| IdentityError::Dime { path, source })
    }

    fn user_address(&self, org: &OrgIdentity, address: &str) -> Result<UserAddress, IdentityError> {
        let a = UserAddress::parse(address)?;
        self.served(&a.domain)?;
        if a.domain != org.domain {
            return Err(IdentityError::NotServed(a.domain));
        }
        Ok(a)
    }

    fn load_meta(&self, a: &UserAddress) -> Result<UserMeta, IdentityError> {
        let meta_path = self.user_dir(a).join("user.json");
        match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| IdentityError::Corrupt {
                path: meta_path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(IdentityError::UnknownUser(a.text()))
            }
            Err(e) => Err(io(&meta_path)(e)),
        }
    }

    fn load_user(&self, a: &UserAddress) -> Result<HostedUser, IdentityError> {
        let dir = self.user_dir(a);
        let meta = self.load_meta(a)?;
        let mut generations = Vec::new();
        for number in 1.. {
            let path = dir.join(format!("{number}.signet"));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io(&path)(e)),
            };
            let signet = Signet::parse_any(&bytes).map_err(|source| IdentityError::Dime {
                path: path.clone(),
                source,
            })?;
            generations.push(Generation {
                number,
                signet,
                has_key: dir.join(format!("{number}.key")).exists(),
            });
        }
        Ok(HostedUser {
            address: meta.address,
            mode: meta.mode,
            generations,
        })
    }
}

fn load_org(
    domain: &str,
    key_path: &Path,
    signet_path: &Path,
) -> Result<OrgIdentity, IdentityError> {
    let dime_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Dime { path, source }
    };
    let key_bytes = read_key_file(key_path)?;
    let bin =
        zeroize::Zeroizing::new(dime::armor::decode_any(&key_bytes).map_err(dime_err(key_path))?);
    let key = PrivateKey::parse_kind(&bin, KeyKind::Org).map_err(dime_err(key_path))?;
    let signet_bytes = std::fs::read(signet_path).map_err(io(signet_path))?;
    let signet = Signet::parse_any(&signet_bytes).map_err(dime_err(signet_path))?;
    if signet.kind() != SignetKind::Org {
        return Err(IdentityError::Dime {
            path: signet_path.to_path_buf(),
            source: dime::Error::WrongKind {
                object: signet.kind().name(),
                expected: "an org signet",
            },
        });
    }
    signet.validate(None).map_err(dime_err(signet_path))?;
    if &key.verifying_key() != signet.signing_key() {
        return Err(IdentityError::KeyMismatch {
            key: key_path.to_path_buf(),
            signet: signet_path.to_path_buf(),
        });
    }
    if let Some(id) = signet.identifier()
        && !id.eq_ignore_ascii_case(domain)
    {
        return Err(IdentityError::WrongIdentifier {
            path: signet_path.to_path_buf(),
            expected: domain.to_owned(),
            found: Some(id.to_owned()),
        });
    }
    Ok(OrgIdentity {
        domain: domain.to_owned(),
        key,
        signet,
    })
}

#[cfg(test)]
mod tests;
