//! The Firecracker engine: spawn `firecracker` (or `jailer`, which then execs it in a chroot),
//! configure the machine over its API socket, start it. Every request is plain data
//! ([`ApiCall`], its body one of the typed [`requests`]) built by a pure function, so tests can
//! check the exact sequence and validate each body against Firecracker's published API contract.
//!
//! Outputs are kept apart: Firecracker's stdout is the guest's serial console
//! ([`VmSpec::console_log`]), its own log goes to a file of its own (`--log-path`), and its
//! stderr (errors before the logger is up, the jailer's errors) to [`VmSpec::vmm_log`].

pub mod jail;
pub mod requests;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::api::{self, ApiError};
use super::{
    check_socket_path, describe_exit, kill_child, spawn_split, tail_of, Boot, Instance,
    SnapshotFiles, VmSpec, Vmm, VmmError, VmmKind,
};
pub use jail::{Jail, Jailer};
use requests::*;

/// One API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub method: &'static str,
    pub path: String,
    pub body: Body,
}

impl ApiCall {
    /// The body as Firecracker receives it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn call(method: &'static str, path: &str, body: Body) -> ApiCall {
    ApiCall {
        method,
        path: path.into(),
        body,
    }
}

/// Device ids used in every request (and in snapshot network overrides).
pub const ROOT_DRIVE: &str = "rootfs";
/// The second drive's id (an agent's workspace).
pub const EXTRA_DRIVE: &str = "workspace";
pub const NET_IFACE: &str = "eth0";

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The cold-boot sequence: boot source, machine, root drive (and the extra one), network, then
/// InstanceStart.
pub fn boot_calls(spec: &VmSpec) -> Vec<ApiCall> {
    let mut calls = vec![
        call(
            "PUT",
            "/boot-source",
            Body::BootSource(BootSource {
                kernel_image_path: path_string(&spec.kernel),
                boot_args: Some(spec.cmdline.clone()),
                initrd_path: spec.initrd.as_deref().map(path_string),
            }),
        ),
        call(
            "PUT",
            "/machine-config",
            Body::MachineConfig(MachineConfig {
                vcpu_count: spec.vcpus,
                mem_size_mib: spec.mem_mib,
                smt: false,
            }),
        ),
        call(
            "PUT",
            &format!("/drives/{ROOT_DRIVE}"),
            Body::Drive(Drive {
                drive_id: ROOT_DRIVE.into(),
                path_on_host: path_string(&spec.root_disk),
                is_root_device: true,
                is_read_only: false,
            }),
        ),
        call(
            "PUT",
            &format!("/network-interfaces/{NET_IFACE}"),
            Body::NetworkInterface(NetworkInterface {
                iface_id: NET_IFACE.into(),
                host_dev_name: spec.tap.clone(),
                guest_mac: spec.mac.clone(),
            }),
        ),
    ];
    if let Some(extra) = &spec.extra_disk {
        // Drives attach in the order they are PUT: after the root drive, this one is /dev/vdb.
        calls.insert(
            3,
            call(
                "PUT",
                &format!("/drives/{EXTRA_DRIVE}"),
                Body::Drive(Drive {
                    drive_id: EXTRA_DRIVE.into(),
                    path_on_host: path_string(extra),
                    is_root_device: false,
                    is_read_only: false,
                }),
            ),
        );
    }
    calls.push(call(
        "PUT",
        "/actions",
        Body::Action(InstanceAction {
            action_type: ActionType::InstanceStart,
        }),
    ));
    calls
}

/// The restore sequence: load the snapshot paused onto this VM's tap, point the root drive at
/// this VM's own disk (the snapshot records the disk of the machine it was taken from), then
/// resume. A real v1.16.1 accepts `PATCH /drives/{id}` after a load.
pub fn restore_calls(spec: &VmSpec, files: &SnapshotFiles) -> Vec<ApiCall> {
    let mut calls = vec![
        call(
            "PUT",
            "/snapshot/load",
            Body::SnapshotLoad(SnapshotLoad {
                snapshot_path: path_string(&files.state),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: path_string(&files.memory),
                },
                resume_vm: false,
                network_overrides: vec![NetworkOverride {
                    iface_id: NET_IFACE.into(),
                    host_dev_name: spec.tap.clone(),
                }],
            }),
        ),
        call(
            "PATCH",
            &format!("/drives/{ROOT_DRIVE}"),
            Body::PartialDrive(PartialDrive {
                drive_id: ROOT_DRIVE.into(),
                path_on_host: path_string(&spec.root_disk),
            }),
        ),
    ];
    // An agent's snapshot was taken with a workspace drive: the clone's own takes its place.
    if let Some(extra) = &spec.extra_disk {
        calls.push(call(
            "PATCH",
            &format!("/drives/{EXTRA_DRIVE}"),
            Body::PartialDrive(PartialDrive {
                drive_id: EXTRA_DRIVE.into(),
                path_on_host: path_string(extra),
            }),
        ));
    }
    calls.push(resume_call());
    calls
}

pub fn pause_call() -> ApiCall {
    call(
        "PATCH",
        "/vm",
        Body::Vm(Vm {
            state: VmState::Paused,
        }),
    )
}

pub fn resume_call() -> ApiCall {
    call(
        "PATCH",
        "/vm",
        Body::Vm(Vm {
            state: VmState::Resumed,
        }),
    )
}

/// Pause, then write a full snapshot to `files` (paths as Firecracker sees them).
pub fn snapshot_calls(files: &SnapshotFiles) -> Vec<ApiCall> {
    vec![
        pause_call(),
        call(
            "PUT",
            "/snapshot/create",
            Body::SnapshotCreate(SnapshotCreate {
                snapshot_type: SnapshotType::Full,
                snapshot_path: path_string(&files.state),
                mem_file_path: path_string(&files.memory),
            }),
        ),
    ]
}

/// Sends one call; any non-2xx answer becomes an error carrying Firecracker's own message.
pub fn send(socket: &Path, c: &ApiCall, timeout: Duration) -> Result<(), VmmError> {
    let body = serde_json::to_string(&c.body).map_err(|e| VmmError::Api {
        method: c.method.into(),
        path: c.path.clone(),
        error: ApiError::Malformed(format!("cannot encode the request: {e}")),
    })?;
    api::call(socket, c.method, &c.path, Some(&body), timeout)
        .map(|_| ())
        .map_err(|error| VmmError::Api {
            method: c.method.into(),
            path: c.path.clone(),
            error,
        })
}

/// The Firecracker engine and its options: where the binary is, whether to jail it, how long to
/// wait for it. Built by the caller; nothing here reads the environment.
#[derive(Debug, Clone)]
pub struct Firecracker {
    /// The `firecracker` executable (under the jailer: its `--exec-file`).
    pub binary: PathBuf,
    /// Run it under the jailer.
    pub jailer: Option<Jailer>,
    /// How long to wait for the API socket, and for each request.
    pub api_timeout: Duration,
}

/// Where one machine's Firecracker lives: its socket and log on the host, its jail if any.
struct Layout {
    sock: PathBuf,
    log: PathBuf,
    jail: Option<Jail>,
}

impl Firecracker {
    /// `<bin_dir>/firecracker`, run directly.
    pub fn installed(bin_dir: &Path) -> Firecracker {
        Firecracker {
            binary: bin_dir.join("firecracker"),
            jailer: None,
            api_timeout: Duration::from_secs(10),
        }
    }

    fn layout(&self, spec: &VmSpec) -> Result<Layout, VmmError> {
        Ok(match &self.jailer {
            Some(j) => {
                let jail = j.jail(&self.binary, &spec.id)?;
                Layout {
                    sock: jail.api_socket(),
                    log: jail.log(),
                    jail: Some(jail),
                }
            }
            None => Layout {
                sock: spec.run_dir.join("api.sock"),
                log: firecracker_log(spec),
                jail: None,
            },
        })
    }

    /// The API socket of machine `spec`, as the host sees it.
    pub fn api_socket(&self, spec: &VmSpec) -> Result<PathBuf, VmmError> {
        Ok(self.layout(spec)?.sock)
    }

    /// The whole sequence a machine's start sends.
    pub fn start_calls(spec: &VmSpec) -> Vec<ApiCall> {
        match &spec.boot {
            Boot::Kernel => boot_calls(spec),
            Boot::Snapshot(files) => restore_calls(spec, files),
        }
    }
}

/// Firecracker's own log when it runs unjailed.
pub fn firecracker_log(spec: &VmSpec) -> PathBuf {
    spec.run_dir.join("firecracker.log")
}

/// What to show when Firecracker failed: the end of its own log and of its stderr.
fn failure_tail(log: &Path, spec: &VmSpec) -> String {
    [tail_of(log, 10), tail_of(&spec.vmm_log(), 10)]
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn create_file(path: &Path) -> Result<(), VmmError> {
    std::fs::File::create(path)
        .map(|_| ())
        .map_err(|source| VmmError::Io {
            what: format!("creating {}", path.display()),
            source,
        })
}

impl Vmm for Firecracker {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Instance>, VmmError> {
        let layout = self.layout(spec)?;
        check_socket_path(&layout.sock)?;
        let (mut cmd, seen) = match (&self.jailer, &layout.jail) {
            (Some(j), Some(jail)) => {
                let seen = jail.stage(spec)?;
                let mut c = Command::new(&j.binary);
                c.args(j.args(&self.binary, &spec.id));
                (c, seen)
            }
            _ => {
                // The run dir is this machine's alone: a socket in it was left by a Firecracker
                // that died, and a new one refuses to bind over it.
                match std::fs::remove_file(&layout.sock) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(VmmError::Io {
                            what: format!("removing stale {}", layout.sock.display()),
                            source,
                        })
                    }
                }
                create_file(&layout.log)?;
                let mut c = Command::new(&self.binary);
                c.arg("--api-sock")
                    .arg(&layout.sock)
                    .arg("--id")
                    .arg(&spec.id)
                    .arg("--log-path")
                    .arg(&layout.log);
                (c, spec.clone())
            }
        };
        cmd.env_clear();
        let program = self.binary.to_string_lossy().into_owned();
        let spawned = spawn_split(cmd, &spec.console_log(), &spec.vmm_log());
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                remove_jail(&layout.jail);
                return Err(e);
            }
        };
        let result = (|| {
            wait_socket(&mut child, &layout.sock, self.api_timeout, &program, || {
                failure_tail(&layout.log, spec)
            })?;
            for c in Self::start_calls(&seen) {
                send(&layout.sock, &c, self.api_timeout)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            kill_child(&mut child);
            // The jail goes with the failed start (an exit's log tail is already in the error).
            remove_jail(&layout.jail);
            return Err(e);
        }
        Ok(Box::new(FirecrackerInstance {
            child,
            sock: layout.sock,
            log: layout.log,
            jail: layout.jail,
            spec: spec.clone(),
            program,
            timeout: self.api_timeout,
            detached: false,
        }))
    }

    fn remove_leftovers(&self, id: &str) -> Result<(), VmmError> {
        match &self.jailer {
            Some(j) => j.jail(&self.binary, id)?.kill_and_remove(),
            None => Ok(()),
        }
    }
}

fn remove_jail(jail: &Option<Jail>) {
    if let Some(j) = jail {
        if let Err(e) = j.remove() {
            tracing::warn!("{e}");
        }
    }
}

/// Waits until Firecracker accepts connections on `sock`, watching the process all the while:
/// if it exits (a stale socket, a bad argument, a jailer error) the error says so at once, with
/// the end of its log.
fn wait_socket(
    child: &mut Child,
    sock: &Path,
    timeout: Duration,
    program: &str,
    tail: impl Fn() -> String,
) -> Result<(), VmmError> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::Exited {
                program: program.into(),
                during: "startup".into(),
                status: describe_exit(status),
                log_tail: tail(),
            });
        }
        let last = match std::os::unix::net::UnixStream::connect(sock) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            let tail = tail();
            let log = if tail.is_empty() {
                String::new()
            } else {
                format!(
                    "; its log ends: {}",
                    tail.lines().collect::<Vec<_>>().join(" | ")
                )
            };
            return Err(VmmError::Timeout {
                what: format!(
                    "Firecracker listening on {} (last attempt: {last}{log})",
                    sock.display()
                ),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct FirecrackerInstance {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    jail: Option<Jail>,
    spec: VmSpec,
    program: String,
    timeout: Duration,
    /// Set by [`Instance::detach`]: dropping the handle leaves Firecracker running.
    detached: bool,
}

impl FirecrackerInstance {
    /// Firecracker's own log (not the console).
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Instance for FirecrackerInstance {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(format!("{} {}", self.program, describe_exit(s))),
            _ => None,
        }
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        send(&self.sock, &pause_call(), self.timeout)
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        send(&self.sock, &resume_call(), self.timeout)
    }

    fn snapshot(&mut self, to: &SnapshotFiles) -> Result<(), VmmError> {
        // A jailed Firecracker can only write inside its chroot: it writes there, and the files
        // are moved to where the caller wants them.
        let target = match &self.jail {
            Some(j) => {
                j.snapshot_dir()?;
                Jail::snapshot_files()
            }
            None => to.clone(),
        };
        for c in snapshot_calls(&target) {
            send(&self.sock, &c, Duration::from_secs(120))?;
        }
        if let Some(j) = &self.jail {
            j.take_out(to)?;
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        kill_child(&mut self.child);
        match &self.jail {
            Some(j) => j.remove(),
            None => {
                let _ = std::fs::remove_file(&self.sock);
                Ok(())
            }
        }
    }

    fn console_tail(&self) -> String {
        // Firecracker's stdout is the guest's serial console, and nothing else writes there.
        tail_of(&self.spec.console_log(), 15)
    }

    fn detach(&mut self) {
        self.detached = true;
    }
}

impl Drop for FirecrackerInstance {
    fn drop(&mut self) {
        if !self.detached {
            kill_child(&mut self.child);
            remove_jail(&self.jail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: Option<&str>) -> VmSpec {
        VmSpec {
            id: "0123456789ab".into(),
            vcpus: 1,
            mem_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            root_disk: "/d/root.img".into(),
            extra_disk: extra.map(Into::into),
            tap: "fc-0123456789ab".into(),
            mac: "02:fc:ac:10:00:02".into(),
            run_dir: "/run/fireclaw/vms/0123456789ab".into(),
            boot: Boot::Kernel,
        }
    }

    /// The workspace drive is PUT right after the root drive (so it is /dev/vdb), read-write, and
    /// only when there is one; InstanceStart stays last.
    #[test]
    fn an_extra_disk_is_the_second_drive() {
        let paths = |calls: &[ApiCall]| calls.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        let plain = boot_calls(&spec(None));
        assert!(!paths(&plain).iter().any(|p| p.contains(EXTRA_DRIVE)));
        let calls = boot_calls(&spec(Some("/w/bob.ext4")));
        let p = paths(&calls);
        let root = p.iter().position(|x| x == "/drives/rootfs").unwrap();
        assert_eq!(p[root + 1], "/drives/workspace");
        assert_eq!(p.last().map(String::as_str), Some("/actions"));
        let body = calls[root + 1].json();
        assert_eq!(body["path_on_host"], "/w/bob.ext4");
        assert_eq!(body["is_root_device"], false);
        assert_eq!(body["is_read_only"], false);
    }

    /// A restore onto a workspace snapshot points both drives at the clone's own files before
    /// it resumes; a plain restore touches the root drive only.
    #[test]
    fn a_restore_patches_the_workspace_drive_too() {
        let paths = |calls: &[ApiCall]| calls.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        let files = SnapshotFiles::in_dir(std::path::Path::new("/s"));
        let plain = restore_calls(&spec(None), &files);
        assert!(!paths(&plain).iter().any(|p| p.contains(EXTRA_DRIVE)));
        let calls = restore_calls(&spec(Some("/w/clone.vdb")), &files);
        let p = paths(&calls);
        assert_eq!(
            p,
            [
                "/snapshot/load",
                "/drives/rootfs",
                "/drives/workspace",
                "/vm"
            ]
        );
        assert_eq!(calls[2].method, "PATCH");
        assert_eq!(calls[2].json()["path_on_host"], "/w/clone.vdb");
    }
}
