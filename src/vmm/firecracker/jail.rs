//! Running Firecracker under the jailer: the chroot's name, what goes into it, and removing it.
//!
//! The jailer builds `<chroot_base>/<exec file name>/<id>/root`, makes `/dev/net/tun` and
//! `/dev/kvm` in it with mknod, and execs Firecracker chrooted there as `uid:gid`. Every path the
//! API is given is then a path inside that root, so everything the machine opens (kernel, initrd,
//! disk, snapshot files, its log) is staged in first, and snapshots it writes are moved out.
//! The jail is the machine's own: it is removed with the machine, and a jail left by a machine
//! that died is removed before the same id starts again (the jailer's mknod fails with EEXIST on
//! a reused jail).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::vmm::{Boot, SnapshotFiles, VmSpec, VmmError};

/// The API socket, as Firecracker sees it inside the jail.
pub const SOCKET: &str = "/api.sock";
/// Firecracker's own log (`--log-path`), as it sees it inside the jail.
pub const LOG: &str = "/firecracker.log";
/// Where snapshots are written and staged, inside the jail.
const SNAPSHOT_DIR: &str = "snapshot";

/// How to run the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    /// The `jailer` executable.
    pub binary: PathBuf,
    /// The user Firecracker runs as inside the jail.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// `--chroot-base-dir`; the jailer's default is `/srv/jailer`. Kernel, images and disks must
    /// be on the same filesystem so they can be hard-linked in.
    pub chroot_base: PathBuf,
}

/// One machine's jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// `<chroot_base>/<exec file name>/<id>`: what is removed with the machine.
    pub dir: PathBuf,
    /// `<dir>/root`: `/` for the jailed Firecracker.
    pub root: PathBuf,
    uid: u32,
    gid: u32,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

impl Jailer {
    /// The jail the jailer makes for `firecracker` (the `--exec-file`) and machine `id`. The
    /// jailer names the directory after the exec file's name, so a binary installed as
    /// `firecracker-v1.16.1-x86_64` (the release archive's own name) gets
    /// `<base>/firecracker-v1.16.1-x86_64/<id>`.
    pub fn jail(&self, firecracker: &Path, id: &str) -> Result<Jail, VmmError> {
        let exec_name = firecracker.file_name().ok_or_else(|| {
            VmmError::Unsupported(format!(
                "the Firecracker binary {} has no file name for the jailer to name its chroot after",
                firecracker.display()
            ))
        })?;
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(VmmError::Unsupported(format!(
                "VM id {id:?} cannot name a jail"
            )));
        }
        let dir = self.chroot_base.join(exec_name).join(id);
        Ok(Jail {
            root: dir.join("root"),
            dir,
            uid: self.uid,
            gid: self.gid,
        })
    }

    pub fn args(&self, firecracker: &Path, id: &str) -> Vec<String> {
        vec![
            "--id".into(),
            id.into(),
            "--exec-file".into(),
            firecracker.to_string_lossy().into_owned(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.chroot_base.to_string_lossy().into_owned(),
            "--".into(),
            "--api-sock".into(),
            SOCKET.into(),
            "--log-path".into(),
            LOG.into(),
        ]
    }
}

impl Jail {
    /// The API socket as the host sees it.
    pub fn api_socket(&self) -> PathBuf {
        self.inside(SOCKET)
    }

    /// Firecracker's log as the host sees it.
    pub fn log(&self) -> PathBuf {
        self.inside(LOG)
    }

    /// A path Firecracker was given, as the host sees it.
    pub fn inside(&self, jailed: &str) -> PathBuf {
        self.root.join(jailed.trim_start_matches('/'))
    }

    /// Removes the jail. One whose API socket still answers belongs to a running Firecracker and
    /// is left alone (an error).
    pub fn remove(&self) -> Result<(), VmmError> {
        if !self.dir.exists() {
            return Ok(());
        }
        if std::os::unix::net::UnixStream::connect(self.api_socket()).is_ok() {
            return Err(VmmError::Unsupported(format!(
                "jail {} is in use: a Firecracker answers on its API socket",
                self.dir.display()
            )));
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing jail {}", self.dir.display()))(e)),
        }
    }

    /// Kills whatever still runs in the jail (a Firecracker whose fireclaw died: its command
    /// line names no run dir, so only its root or working directory finds it), then removes the
    /// jail. For a machine being torn down; never for one that may still be wanted.
    pub fn kill_and_remove(&self) -> Result<(), VmmError> {
        if !self.dir.exists() {
            return Ok(());
        }
        for pid in self.processes() {
            kill_and_wait(pid)?;
        }
        self.remove()
    }

    /// Processes whose root (the jailer's chroot) or working directory is inside the jail.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                ["root", "cwd"].iter().any(|link| {
                    std::fs::read_link(format!("/proc/{pid}/{link}"))
                        .is_ok_and(|p| p.starts_with(&self.dir))
                })
            })
            .collect()
    }

    /// A fresh jail holding everything `spec` needs; returns the spec as the jailed Firecracker
    /// sees it. A jail left by an earlier machine with this id is removed first.
    pub fn stage(&self, spec: &VmSpec) -> Result<VmSpec, VmmError> {
        self.remove()?;
        self.fill(spec).inspect_err(|_| {
            // Half a jail is of no use to anyone, and holds hard links to what it got.
            let _ = std::fs::remove_dir_all(&self.dir);
        })
    }

    fn fill(&self, spec: &VmSpec) -> Result<VmSpec, VmmError> {
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("creating jail {}", self.root.display())))?;
        // Firecracker's logger writes to an existing file (its docs: create it first).
        self.owned_file(&self.log())?;
        let mut jailed = spec.clone();
        jailed.kernel = self.share(&spec.kernel, "kernel")?;
        if let Some(i) = &spec.initrd {
            jailed.initrd = Some(self.share(i, "initrd")?);
        }
        jailed.root_disk = self.own(&spec.root_disk, "rootfs")?;
        if let Some(extra) = &spec.extra_disk {
            jailed.extra_disk = Some(self.own(extra, "workspace")?);
        }
        if let Boot::Snapshot(files) = &spec.boot {
            self.snapshot_dir()?;
            let inside = Self::snapshot_files();
            jailed.boot = Boot::Snapshot(SnapshotFiles {
                state: self.share(&files.state, &inside.state.to_string_lossy())?,
                memory: self.share(&files.memory, &inside.memory.to_string_lossy())?,
            });
        }
        Ok(jailed)
    }

    /// Where snapshots are written and staged, as Firecracker sees them.
    pub fn snapshot_files() -> SnapshotFiles {
        SnapshotFiles::in_dir(&Path::new("/").join(SNAPSHOT_DIR))
    }

    /// An empty directory the jailed Firecracker can write a snapshot into.
    pub fn snapshot_dir(&self) -> Result<(), VmmError> {
        let dir = self.root.join(SNAPSHOT_DIR);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("emptying {}", dir.display()))(e)),
        }
        std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
        self.chown(&dir)
    }

    /// Moves a snapshot the jailed Firecracker wrote to where the caller asked for it.
    pub fn take_out(&self, to: &SnapshotFiles) -> Result<(), VmmError> {
        let inside = Self::snapshot_files();
        for (from, dest) in [(&inside.state, &to.state), (&inside.memory, &to.memory)] {
            let from = self.inside(&from.to_string_lossy());
            move_file(&from, dest)?;
        }
        Ok(())
    }

    /// Puts a file Firecracker only reads (and other machines share: kernel, initrd, snapshot)
    /// into the jail without changing the original: a hard link when the jail's user can read
    /// it, else (or across filesystems) a copy owned by the jail's user. Chowning a hard link
    /// would chown the shared file itself.
    fn share(&self, src: &Path, name: &str) -> Result<PathBuf, VmmError> {
        let dest = self.inside(name);
        let meta = std::fs::metadata(src).map_err(io(format!("reading {}", src.display())))?;
        if readable_by(&meta, self.uid, self.gid) {
            match std::fs::hard_link(src, &dest) {
                Ok(()) => return Ok(Path::new("/").join(name.trim_start_matches('/'))),
                Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                    tracing::warn!(
                        "{} is not on the filesystem of {}; copying it into the jail",
                        src.display(),
                        self.root.display()
                    );
                }
                Err(e) => {
                    return Err(io(format!("linking {} into the jail", src.display()))(e));
                }
            }
        }
        std::fs::copy(src, &dest)
            .map_err(io(format!("copying {} into the jail", src.display())))?;
        self.chown(&dest)?;
        Ok(Path::new("/").join(name.trim_start_matches('/')))
    }

    /// Puts the machine's own writable disk into the jail and gives it to the jail's user: a
    /// hard link to a disk file, or a device node for a block device (a thin volume).
    fn own(&self, src: &Path, name: &str) -> Result<PathBuf, VmmError> {
        let dest = self.inside(name);
        let meta = std::fs::metadata(src).map_err(io(format!("reading {}", src.display())))?;
        if meta.file_type().is_block_device() {
            use nix::sys::stat::{mknod, Mode, SFlag};
            mknod(
                &dest,
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o600),
                meta.rdev(),
            )
            .map_err(|e| VmmError::Io {
                what: format!(
                    "making device node {} for {}",
                    dest.display(),
                    src.display()
                ),
                source: e.into(),
            })?;
        } else {
            std::fs::hard_link(src, &dest).map_err(io(format!(
                "linking {} into the jail (it must be on the same filesystem as {})",
                src.display(),
                self.root.display()
            )))?;
        }
        self.chown(&dest)?;
        Ok(Path::new("/").join(name))
    }

    fn owned_file(&self, path: &Path) -> Result<(), VmmError> {
        std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<(), VmmError> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .map_err(|e| VmmError::Io {
            what: format!("chown {}", path.display()),
            source: e.into(),
        })
    }
}

/// SIGKILL, then wait until the process is gone or a zombie (it need not be our child).
fn kill_and_wait(pid: u32) -> Result<(), VmmError> {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    let start = std::time::Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            });
        match state {
            None | Some(true) => return Ok(()),
            Some(false) if start.elapsed() > std::time::Duration::from_secs(10) => {
                return Err(VmmError::Unsupported(format!(
                    "process {pid} in a jail did not die after SIGKILL"
                )))
            }
            Some(false) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Whether `uid:gid` may read a file with `meta` (root reads everything).
fn readable_by(meta: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    if uid == 0 {
        true
    } else if meta.uid() == uid {
        mode & 0o400 != 0
    } else if meta.gid() == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// A rename, or a copy and delete across filesystems.
fn move_file(from: &Path, to: &Path) -> Result<(), VmmError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            std::fs::copy(from, to).map_err(io(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
            std::fs::remove_file(from).map_err(io(format!("removing {}", from.display())))
        }
        Err(e) => Err(io(format!("moving {} to {}", from.display(), to.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jailer() -> Jailer {
        Jailer {
            binary: "/usr/local/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: "/srv/jailer".into(),
        }
    }

    #[test]
    fn the_chroot_is_named_after_the_exec_file() {
        let j = jailer();
        let jail = j
            .jail(
                Path::new("/usr/local/bin/firecracker-v1.16.1-x86_64"),
                "abc",
            )
            .unwrap();
        assert_eq!(
            jail.root,
            PathBuf::from("/srv/jailer/firecracker-v1.16.1-x86_64/abc/root")
        );
        assert_eq!(
            jail.dir,
            PathBuf::from("/srv/jailer/firecracker-v1.16.1-x86_64/abc")
        );
        assert_eq!(
            jail.api_socket(),
            PathBuf::from("/srv/jailer/firecracker-v1.16.1-x86_64/abc/root/api.sock")
        );
        assert!(j
            .jail(Path::new("/usr/local/bin/firecracker"), "..")
            .is_err());
        assert!(j.jail(Path::new("/"), "abc").is_err());
    }

    #[test]
    fn jailer_arguments_give_firecracker_its_own_log() {
        assert_eq!(
            jailer().args(Path::new("/usr/local/bin/firecracker"), "abc").join(" "),
            "--id abc --exec-file /usr/local/bin/firecracker --uid 123 --gid 456 --chroot-base-dir /srv/jailer -- --api-sock /api.sock --log-path /firecracker.log"
        );
    }

    #[test]
    fn readability_follows_the_mode_bits() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, b"k").unwrap();
        let me = nix::unistd::getuid().as_raw();
        for (mode, other) in [(0o644, true), (0o640, false), (0o600, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&f).unwrap();
            assert_eq!(readable_by(&meta, 54321, 54321), other, "{mode:o}");
            assert!(readable_by(&meta, me, 54321), "{mode:o}");
        }
    }
}
