//! An agent's persistent workspace: a 64 MiB ext4 image at `<state_dir>/workspaces/NAME.ext4`,
//! attached as the agent VM's second disk and mounted at `/workspace` (where `MEMORY.md` lives).
//!
//! Made with `mkfs.ext4` on a sparse file, never mounted on the host: the guest owns its
//! contents. It survives the agent's restart, the runtime's and the host's; only a purge
//! deletes it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of a new workspace.
pub const WORKSPACE_MIB: u64 = 64;
/// The guest's `agent` user (uid and gid 1000 in the agent images): the root of the file system
/// is made theirs so the unprivileged guest agent can write `MEMORY.md` without root.
pub const AGENT_UID_GID: (u32, u32) = (1000, 1000);

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mkfs.ext4 {path} failed: {detail}")]
    Mkfs { path: PathBuf, detail: String },
    #[error("{path} is not a workspace image fireclaw can use: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// `<state_dir>/workspaces/NAME.ext4`. `name` must already be a valid agent name (see
/// `irc::command::is_agent_name`), which keeps it a single path component.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("workspaces").join(format!("{name}.ext4"))
}

/// Makes the workspace unless it exists. Returns whether it was created now. An existing file
/// is kept as it is (it holds the agent's memory), after a read-only check that it is ext4.
pub fn ensure(path: &Path) -> Result<bool, WorkspaceError> {
    if path.exists() {
        check(path)?;
        return Ok(false);
    }
    let io = |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Built beside the final name and renamed into place, so a crash never leaves a half-made
    // file where the next start would take it for the agent's workspace.
    let partial = path.with_extension("ext4.partial");
    let _ = std::fs::remove_file(&partial);
    let f = std::fs::File::create(&partial).map_err(io)?;
    f.set_len(WORKSPACE_MIB << 20).map_err(io)?;
    drop(f);
    let (uid, gid) = AGENT_UID_GID;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "workspace", "-m", "0"])
        .arg("-E")
        .arg(format!("root_owner={uid}:{gid}"))
        .arg(&partial)
        .output()
        .map_err(io)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(WorkspaceError::Mkfs {
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&partial, path).map_err(io)?;
    Ok(true)
}

/// A read-only `e2fsck -n`: the file is an ext4 file system in a usable state.
pub fn check(path: &Path) -> Result<(), WorkspaceError> {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(path)
        .output()
        .map_err(|source| WorkspaceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(WorkspaceError::Invalid {
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .take(3)
                .collect::<Vec<_>>()
                .join(" / "),
        })
    }
}

/// Makes `drive` (a restored clone's zeroed second drive, already open in its VMM) the
/// workspace at `path`: the workspace's data is copied into the drive (only its data extents:
/// the drive reads zeros elsewhere), synced, and the drive renamed over `path`. From then on
/// the inode the VMM writes to is the workspace; the old one is gone. The rename is atomic, so
/// a crash leaves either the old workspace or the new one, never a mix. Both files must be the
/// same size and on one file system (`Host::clone_drive` is under the state directory too).
pub fn move_into(path: &Path, drive: &Path) -> Result<(), WorkspaceError> {
    use std::io::{Seek, SeekFrom};
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WorkspaceError::Io {
            path: p.clone(),
            source,
        }
    };
    let mut src = std::fs::File::open(path).map_err(io(path))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(drive)
        .map_err(io(drive))?;
    let (len, drive_len) = (
        src.metadata().map_err(io(path))?.len(),
        dst.metadata().map_err(io(drive))?.len(),
    );
    if len != drive_len {
        return Err(WorkspaceError::Invalid {
            path: path.to_path_buf(),
            detail: format!("it is {len} bytes, the VM's drive {drive_len}"),
        });
    }
    let mut at = 0u64;
    while at < len {
        let start = match nix::unistd::lseek(&src, at as i64, nix::unistd::Whence::SeekData) {
            Ok(o) => o as u64,
            // ENXIO: no data after `at`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(io(path)(e.into())),
        };
        let end = match nix::unistd::lseek(&src, start as i64, nix::unistd::Whence::SeekHole) {
            Ok(o) => o as u64,
            Err(e) => return Err(io(path)(e.into())),
        };
        src.seek(SeekFrom::Start(start)).map_err(io(path))?;
        dst.seek(SeekFrom::Start(start)).map_err(io(drive))?;
        let copied =
            std::io::copy(&mut (&mut src).take(end - start), &mut dst).map_err(io(drive))?;
        at = start + copied.max(1);
    }
    dst.sync_all().map_err(io(drive))?;
    std::fs::rename(drive, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Deletes the workspace (`!destroy NAME --purge`). Absent is fine.
pub fn purge(path: &Path) -> Result<(), WorkspaceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WorkspaceError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_workspace_is_a_clean_sparse_ext4_owned_by_agent_and_survives_ensure() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "bob");
        assert!(p.ends_with("workspaces/bob.ext4"));
        assert!(ensure(&p).unwrap());
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), WORKSPACE_MIB << 20);
        assert!(meta.blocks() * 512 < meta.len() / 2, "sparse");
        check(&p).unwrap();
        let out = Command::new("debugfs")
            .args(["-R", "stat /"])
            .arg(&p)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&out.stdout);
        assert!(
            stat.contains("User:  1000") && stat.contains("Group:  1000"),
            "{stat}"
        );

        // A second ensure keeps what is there, byte for byte.
        let before = std::fs::read(&p).unwrap();
        assert!(!ensure(&p).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert!(!p.with_extension("ext4.partial").exists());

        purge(&p).unwrap();
        assert!(!p.exists());
        purge(&p).unwrap();
    }

    /// The drive a clone's VMM holds open becomes the workspace: same bytes, same inode as the
    /// drive, the old file gone; a drive of another size is refused and nothing moves.
    #[test]
    fn a_workspace_moves_into_a_clones_drive() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "bob");
        ensure(&p).unwrap();
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.seek(SeekFrom::Start(40 << 20)).unwrap();
            f.write_all(b"late data").unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let drive = dir.path().join("clone.vdb");
        crate::fsops::sparse_file(&drive, WORKSPACE_MIB << 20).unwrap();
        // The VMM's view: an open descriptor on the drive.
        let mut held = std::fs::File::open(&drive).unwrap();
        let inode = held.metadata().unwrap().ino();
        move_into(&p, &drive).unwrap();
        assert!(!drive.exists());
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let mut seen = Vec::new();
        held.read_to_end(&mut seen).unwrap();
        assert_eq!(
            seen, before,
            "the VMM reads the workspace through its descriptor"
        );
        check(&p).unwrap();

        let small = dir.path().join("small.vdb");
        crate::fsops::sparse_file(&small, 1 << 20).unwrap();
        let e = move_into(&p, &small).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        assert!(small.exists());
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn something_that_is_not_ext4_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "eve");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"not a file system").unwrap();
        let e = ensure(&p).unwrap_err().to_string();
        assert!(e.contains("not a workspace image"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"not a file system");
    }
}
