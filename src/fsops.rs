//! File-system primitives shared by provisioning (probes, apply, undo) and by the archive
//! extractor: reads that tell "absent" from "unreadable", atomic writes, and the idempotent
//! removals that undo relies on.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
        /// (uid, gid).
        owner: (u32, u32),
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
                owner: (meta.uid(), meta.gid()),
            },
            Err(_) => Existing::Unreadable,
        },
    }
}

/// A regular file as it was: what undo needs to put it back exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub content: Vec<u8>,
    pub mode: u32,
    pub owner: (u32, u32),
}

/// The file's bytes, mode and owner, or `None` if there is no file. Anything else is an error.
pub fn read_existing(path: &Path) -> anyhow::Result<Option<Saved>> {
    match probe_file(path) {
        Existing::Absent => Ok(None),
        Existing::File {
            content,
            mode,
            owner,
        } => Ok(Some(Saved {
            content,
            mode,
            owner,
        })),
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
    write_atomic_owned(path, content, mode, None)
}

/// [`write_atomic`] that also gives the file an owner (uid, gid) before its name appears: a file a
/// daemon reads through its group is never visible with the wrong group or a wider mode.
pub fn write_atomic_owned(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
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
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
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

/// Creates `path` (which must not exist) as a sparse file of `bytes` zeros, mode 0600.
pub fn sparse_file(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_len(bytes)
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

/// Saves the files among `paths` that exist (content, mode, owner) as one uncompressed tar, for the
/// journal's backup column: `None` when none exists. `resolve` maps a configured path to the host.
pub fn save_files(
    paths: &[String],
    resolve: impl Fn(&str) -> std::path::PathBuf,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut any = false;
    for p in paths {
        let Some(saved) = read_existing(&resolve(p))? else {
            continue;
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(saved.content.len() as u64);
        header.set_mode(saved.mode);
        header.set_uid(u64::from(saved.owner.0));
        header.set_gid(u64::from(saved.owner.1));
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(
                &mut header,
                p.trim_start_matches('/'),
                saved.content.as_slice(),
            )
            .with_context(|| format!("saving {p} for undo"))?;
        any = true;
    }
    let bytes = builder.into_inner().context("saving files for undo")?;
    Ok(any.then_some(bytes))
}

/// The undo of any change to `paths`: each file saved in `backup` (by [`save_files`]) is put back
/// with its bytes, mode and owner; each one not in it did not exist and is removed. Idempotent.
pub fn restore_files(
    paths: &[String],
    backup: Option<&[u8]>,
    resolve: impl Fn(&str) -> std::path::PathBuf,
) -> anyhow::Result<()> {
    let mut saved = std::collections::BTreeMap::new();
    if let Some(bytes) = backup {
        let mut archive = tar::Archive::new(bytes);
        for entry in archive.entries().context("reading the saved files")? {
            let mut entry = entry.context("reading the saved files")?;
            let name = format!("/{}", entry.path()?.to_string_lossy());
            let header = entry.header();
            let mode = header.mode()?;
            let owner = (header.uid()? as u32, header.gid()? as u32);
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)?;
            saved.insert(name, (content, mode, owner));
        }
    }
    for p in paths {
        let host = resolve(p);
        match saved.get(p) {
            Some((content, mode, owner)) => {
                write_atomic_owned(&host, content, *mode, Some(*owner))?
            }
            None => remove_file_if_exists(&host)?,
        }
    }
    Ok(())
}

/// An I/O error's reason without the "(os error N)" suffix std adds, for messages that already
/// name the path: "No such file or directory", not the errno twice.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
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
    fn saved_files_come_back_with_bytes_mode_and_owner_and_new_ones_go() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let resolve = |p: &str| dir.path().join(p.trim_start_matches('/'));
        fs::write(resolve("/kept"), b"operator's").unwrap();
        fs::set_permissions(resolve("/kept"), fs::Permissions::from_mode(0o751)).unwrap();
        let owner = (65534, 65534);
        let privileged = nix::unistd::geteuid().is_root();
        if privileged {
            std::os::unix::fs::chown(resolve("/kept"), Some(owner.0), Some(owner.1)).unwrap();
        }
        let paths = vec!["/kept".to_string(), "/new".to_string()];
        let backup = save_files(&paths, resolve).unwrap().unwrap();
        write_atomic(&resolve("/kept"), b"ours", 0o755).unwrap();
        write_atomic(&resolve("/new"), b"ours", 0o755).unwrap();
        for _ in 0..2 {
            restore_files(&paths, Some(&backup), resolve).unwrap();
            let meta = fs::metadata(resolve("/kept")).unwrap();
            assert_eq!(fs::read(resolve("/kept")).unwrap(), b"operator's");
            assert_eq!(meta.permissions().mode() & 0o7777, 0o751);
            if privileged {
                assert_eq!((meta.uid(), meta.gid()), owner);
            }
            assert!(!resolve("/new").exists());
        }
        assert!(save_files(&["/none".to_string()], resolve)
            .unwrap()
            .is_none());
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
