//! File-system primitives shared by provisioning (probes, apply, undo) and by the archive
//! extractor: reads that tell "absent" from "unreadable", atomic writes, and the idempotent
//! removals that undo relies on.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context as _;
use rand::Rng;

/// What a probe found at a path.
#[derive(Debug, PartialEq)]
pub enum Existing {
    Absent,
    File {
        content: Vec<u8>,
        mode: u32,
    },
    /// Present but not readable by this user (a dry-run without root meets 0600 files).
    Unreadable,
    NotAFile,
}

pub fn probe_file(path: &Path) -> Existing {
    match fs::symlink_metadata(path) {
        Err(_) => Existing::Absent,
        Ok(meta) if !meta.is_file() => Existing::NotAFile,
        Ok(meta) => match fs::read(path) {
            Ok(content) => Existing::File {
                content,
                mode: meta.permissions().mode() & 0o7777,
            },
            Err(_) => Existing::Unreadable,
        },
    }
}

/// The file's bytes and mode, or `None` if there is no file. Anything else is an error.
pub fn read_existing(path: &Path) -> anyhow::Result<Option<(Vec<u8>, u32)>> {
    match probe_file(path) {
        Existing::Absent => Ok(None),
        Existing::File { content, mode } => Ok(Some((content, mode))),
        Existing::Unreadable => anyhow::bail!("cannot read {}", path.display()),
        Existing::NotAFile => anyhow::bail!("{} exists and is not a regular file", path.display()),
    }
}

/// Creates one directory (its parent must exist: plans create parents first, so each is journaled).
pub fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("mkdir {}", path.display())),
    }
    // The umask may have narrowed the mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Writes via a temporary file in the same directory and a rename, so a crash never leaves a torn
/// file, and the final mode is in place before the name appears (no window where a secret is 0644).
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.fireclaw-tmp", name.to_string_lossy()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("write {}", path.display()))
}

pub fn remove_file_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// Removes a whole directory tree that fireclaw created for its own use (a build's staging area).
pub fn remove_tree_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// Removes a directory fireclaw created, but never one that someone has since put files into: those
/// are the operator's, and uninstall leaves them (and says so through the error).
pub fn remove_dir_if_empty(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => anyhow::bail!(
            "{} is not empty (files not created by fireclaw); left in place",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("rmdir {}", path.display())),
    }
}

/// A password from a 62-symbol alphabet (no characters that need quoting in ngircd.conf).
pub fn random_secret(length: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..length)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn remove_dir_refuses_non_empty() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("operator-file"), b"mine").unwrap();
        let err = remove_dir_if_empty(&sub).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        assert!(sub.join("operator-file").exists());
        fs::remove_file(sub.join("operator-file")).unwrap();
        remove_dir_if_empty(&sub).unwrap();
        remove_dir_if_empty(&sub).unwrap();
    }

    #[test]
    fn secrets_are_random_and_plain() {
        let a = random_secret(32);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_secret(32));
    }

    #[test]
    fn probe_tells_absent_from_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe_file(&dir.path().join("x")), Existing::Absent);
        assert_eq!(probe_file(dir.path()), Existing::NotAFile);
    }
}
