//! File primitives for the key store: owner-only directories, no-clobber atomic writes, key files
//! whose mode is checked on every read, and a reversible file name for an address's local part.

use super::IdentityError;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and its missing parents for the owner only (0700).
pub(super) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Writes `bytes` to `path` only if `path` does not exist yet, atomically: the bytes go to a
/// temporary file that is fsync'd and then hard-linked into place (a link never replaces a file,
/// so two concurrent writers cannot both win), and the directory is fsync'd so the name survives
/// a crash. Returns `Ok(false)` if `path` already existed.
pub(super) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let written = result?;
    sync_dir(dir)?;
    Ok(written)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn temp_name(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a private key file, refusing one that group or others may read, as ssh does: a key
/// that leaked through its mode is not one to keep using quietly.
pub(super) fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, IdentityError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(zeroize::Zeroizing::new(
        std::fs::read(path).map_err(io(path))?,
    ))
}

/// A local part as a file name: ASCII letters (lower-cased by the caller), digits, `-`, `_`, `+`
/// and inner dots stay; every other byte becomes `%XX`. Reversible, and never `.`, `..` or a
/// name with a `/`.
pub(super) fn encode_local(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    for (i, b) in local.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'+')
            || (b == b'.' && i != 0 && i + 1 != local.len());
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_local`]; `None` for a name it cannot have made.
pub(super) fn decode_local(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (encode_local(&text) == name).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_round_trip_through_file_names() {
        for local in [
            "alice",
            "a.b",
            ".hidden",
            "trailing.",
            "..",
            "a/b",
            "we ird\"",
            "ü",
            "%41",
            "",
        ] {
            let name = encode_local(local);
            assert!(!name.contains('/') && name != "." && name != "..", "{name}");
            assert_eq!(decode_local(&name).as_deref(), Some(local), "{local:?}");
        }
        assert_eq!(encode_local("alice+tag"), "alice+tag");
        assert_eq!(decode_local("%4"), None);
        assert_eq!(
            decode_local("%41"),
            None,
            "not what encode_local makes for 'A'"
        );
    }

    #[test]
    fn write_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_new(&p, b"one", 0o600).unwrap());
        assert!(!write_new(&p, b"two", 0o600).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        match read_key_file(&p) {
            Err(IdentityError::KeyFileMode { mode, .. }) => assert_eq!(mode, 0o640),
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&p).unwrap().as_slice(), b"secret");
    }
}
