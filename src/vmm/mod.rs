//! Virtual machine monitors behind one trait. The rest of fireclaw describes a machine as a
//! [`VmSpec`] and gets back an [`Instance`]; it never names an engine. Two engines: QEMU `microvm`
//! (QMP over a Unix socket; what runs on machines without usable KVM) and Firecracker (its REST API
//! over a Unix socket, optionally under the jailer).
//!
//! A machine starts either from a kernel ([`Boot::Kernel`]) or from a snapshot an instance wrote
//! earlier ([`Boot::Snapshot`]); the warm pool and snapshot/restore build on the second.

pub mod api;
pub mod firecracker;
pub mod qemu;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

impl VmmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited during {during} ({status}){}", tail_suffix(log_tail))]
    Exited {
        program: String,
        during: String,
        status: String,
        log_tail: String,
    },
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
    /// QEMU answered the command with an error (`class` is QMP's, e.g. `CommandNotFound`).
    #[error("QMP {command}: {desc} ({class})")]
    QmpRefused {
        command: String,
        class: String,
        desc: String,
    },
    /// QEMU closed the monitor: it is exiting or gone.
    #[error("QMP {command}: QEMU closed the monitor connection")]
    QmpClosed { command: String },
    /// QEMU sent something that is not QMP.
    #[error("QMP {command}: {source}")]
    QmpProtocol {
        command: String,
        #[source]
        source: qmp::QmpError,
    },
    #[error("Firecracker API {method} {path}: {error}")]
    Api {
        method: String,
        path: String,
        /// Match on it: refused, a fault with Firecracker's status and message, a timeout, or a
        /// malformed answer.
        error: api::ApiError,
    },
    #[error("{what} did not happen within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("socket path {0} is longer than the 107 bytes a Unix socket address holds; use a shorter paths.run_dir")]
    SocketPath(PathBuf),
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{}", tail.trim_end())
    }
}

/// A snapshot on disk: the VMM's device state and the guest's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl SnapshotFiles {
    /// The conventional layout inside a snapshot directory.
    pub fn in_dir(dir: &Path) -> SnapshotFiles {
        SnapshotFiles {
            state: dir.join("vmstate"),
            memory: dir.join("memory"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A cold boot of `VmSpec::kernel`.
    Kernel,
    /// Resume a snapshot taken from a machine with the same devices. The disk and tap in the spec
    /// replace the ones the snapshot was taken with.
    Snapshot(SnapshotFiles),
}

/// One machine, as every engine understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique id; names the sockets, and appears in the VMM's command line so that `gc` can find
    /// the process even when its pid was never recorded.
    pub id: String,
    pub vcpus: u8,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The root disk (`/dev/vda` in the guest).
    pub root_disk: PathBuf,
    /// A second read-write disk (`/dev/vdb` in the guest): an agent's workspace.
    pub extra_disk: Option<PathBuf>,
    pub tap: String,
    pub mac: String,
    /// Private directory for this machine's sockets and logs; removed with the machine.
    pub run_dir: PathBuf,
    pub boot: Boot,
}

impl VmSpec {
    /// The guest's serial console, captured for error messages.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The VMM's own output (for Firecracker, whose stdout is the console: its stderr).
    pub fn vmm_log(&self) -> PathBuf {
        self.run_dir.join("vmm.log")
    }
}

/// Starts machines.
pub trait Vmm: Send + Sync {
    fn kind(&self) -> VmmKind;
    /// Spawns the VMM, configures the machine and lets it run (booting the kernel or resuming the
    /// snapshot). On error nothing this call spawned is left running.
    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Instance>, VmmError>;
    /// Removes what the engine keeps outside the VM's run dir for machine `id` (Firecracker's
    /// jail, killing what still runs in it), for teardown and `gc` of a machine that is being
    /// removed. Idempotent.
    fn remove_leftovers(&self, _id: &str) -> Result<(), VmmError> {
        Ok(())
    }
}

/// A running machine.
pub trait Instance: Send {
    fn pid(&self) -> u32;
    /// `Some(description)` once the VMM process has exited (it is reaped then).
    fn exited(&mut self) -> Option<String>;
    fn pause(&mut self) -> Result<(), VmmError>;
    fn resume(&mut self) -> Result<(), VmmError>;
    /// Pauses the machine and writes a snapshot a later [`Boot::Snapshot`] can resume.
    fn snapshot(&mut self, to: &SnapshotFiles) -> Result<(), VmmError>;
    /// Stops the machine now and reaps the VMM. The disk is throwaway, so no guest shutdown.
    fn kill(&mut self) -> Result<(), VmmError>;
    /// The last lines the guest printed on its console, for error messages.
    fn console_tail(&self) -> String;
    /// Lets the VMM outlive this handle: dropping the instance afterwards closes its monitor
    /// connection but does not kill it. The process stays the caller's child, to be reaped by
    /// whoever detached it (`vm::KeptMachine` does).
    fn detach(&mut self);
}

/// How each engine's programs are found and run. The command builds it (reading any environment
/// overrides); the engines themselves read no environment.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub firecracker: firecracker::Firecracker,
    pub qemu: qemu::QemuOptions,
}

impl EngineOptions {
    /// The programs provision installs into `bin_dir`, run directly.
    pub fn installed(bin_dir: &Path) -> EngineOptions {
        EngineOptions {
            firecracker: firecracker::Firecracker::installed(bin_dir),
            qemu: qemu::QemuOptions::default(),
        }
    }
}

/// Picks the engine for `kind`.
pub fn engine(kind: VmmKind, opts: &EngineOptions) -> Box<dyn Vmm> {
    match kind {
        VmmKind::Qemu => Box::new(qemu::Qemu::new(&opts.qemu)),
        VmmKind::Firecracker => Box::new(opts.firecracker.clone()),
    }
}

/// [`Vmm::remove_leftovers`] of every engine, for a teardown that may not know which one ran.
pub fn remove_leftovers(opts: &EngineOptions, id: &str) -> Vec<VmmError> {
    [VmmKind::Firecracker, VmmKind::Qemu]
        .into_iter()
        .filter_map(|k| engine(k, opts).remove_leftovers(id).err())
        .collect()
}

/// Unix socket addresses hold 107 bytes plus the NUL.
pub fn check_socket_path(path: &Path) -> Result<(), VmmError> {
    if path.as_os_str().len() > 107 {
        return Err(VmmError::SocketPath(path.to_path_buf()));
    }
    Ok(())
}

/// Spawns a VMM in its own process group (a Ctrl-C at the terminal reaches fireclaw, which then
/// tears the machine down in order, not the VMM directly) with its output in `log`.
pub(crate) fn spawn(cmd: Command, log: &Path) -> Result<Child, VmmError> {
    spawn_split(cmd, log, log)
}

/// [`spawn`] with stdout and stderr in files of their own (one file when the paths are equal).
pub(crate) fn spawn_split(
    mut cmd: Command,
    stdout: &Path,
    stderr: &Path,
) -> Result<Child, VmmError> {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let create = |log: &Path| {
        std::fs::File::create(log).map_err(|source| VmmError::Io {
            what: format!("creating {}", log.display()),
            source,
        })
    };
    let out = create(stdout)?;
    let err = if stdout == stderr {
        out.try_clone().map_err(|source| VmmError::Io {
            what: "duplicating log descriptor".into(),
            source,
        })?
    } else {
        create(stderr)?
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    cmd.spawn()
        .map_err(|source| VmmError::Spawn { program, source })
}

/// Kills and reaps a child; one that already exited is fine.
pub(crate) fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last `lines` lines of a (possibly binary, possibly huge) log file, printable.
pub fn tail_of(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(16 * 1024).read_to_end(&mut buf);
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| {
            if c == '\n' || (!c.is_control() && c != '\u{fffd}') {
                c
            } else {
                ' '
            }
        })
        .collect();
    let all: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_printable_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut data = vec![0u8, 27, b'[', b'6', b'n'];
        for i in 0..5000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        data.extend_from_slice(&[0xff, 0xfe, b'\n', b'e', b'n', b'd']);
        std::fs::write(&p, data).unwrap();
        let t = tail_of(&p, 3);
        assert_eq!(t.lines().count(), 3);
        assert!(t.ends_with("end"), "{t}");
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'));
        assert_eq!(tail_of(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn socket_paths_are_bounded() {
        assert!(check_socket_path(Path::new("/run/fireclaw/x/qmp.sock")).is_ok());
        let long = format!("/{}", "a".repeat(120));
        assert!(check_socket_path(Path::new(&long)).is_err());
    }
}
