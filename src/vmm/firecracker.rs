//! The Firecracker engine: spawn `firecracker` (or `jailer`, which then execs it in a chroot),
//! configure the machine over its API socket, start it. Every request is plain data
//! ([`ApiCall`]) built by a pure function, so tests can check the exact sequence and validate each
//! body against Firecracker's published API contract.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api;
use super::{
    check_socket_path, describe_exit, kill_child, spawn, tail_of, Boot, Instance, SnapshotFiles,
    VmSpec, Vmm, VmmError, VmmKind,
};

/// One API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

fn call(method: &'static str, path: &str, body: Value) -> ApiCall {
    ApiCall {
        method,
        path: path.into(),
        body,
    }
}

/// Device ids used in every request (and in snapshot network overrides).
pub const ROOT_DRIVE: &str = "rootfs";
pub const NET_IFACE: &str = "eth0";

/// The cold-boot sequence: boot source, machine, root drive, network, then InstanceStart.
pub fn boot_calls(spec: &VmSpec) -> Vec<ApiCall> {
    let mut boot = json!({
        "kernel_image_path": spec.kernel.to_string_lossy(),
        "boot_args": spec.cmdline,
    });
    if let Some(initrd) = &spec.initrd {
        boot["initrd_path"] = json!(initrd.to_string_lossy());
    }
    vec![
        call("PUT", "/boot-source", boot),
        call(
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.mem_mib, "smt": false }),
        ),
        call(
            "PUT",
            &format!("/drives/{ROOT_DRIVE}"),
            json!({
                "drive_id": ROOT_DRIVE,
                "path_on_host": spec.root_disk.to_string_lossy(),
                "is_root_device": true,
                "is_read_only": false,
            }),
        ),
        call(
            "PUT",
            &format!("/network-interfaces/{NET_IFACE}"),
            json!({ "iface_id": NET_IFACE, "host_dev_name": spec.tap, "guest_mac": spec.mac }),
        ),
        call("PUT", "/actions", json!({ "action_type": "InstanceStart" })),
    ]
}

/// The restore sequence: load the snapshot onto this VM's tap and resume it. The disk path is the
/// one recorded in the snapshot, so restored clones must put their disk there (a per-VM mount
/// namespace or the jailer's chroot does that).
pub fn restore_calls(spec: &VmSpec, files: &SnapshotFiles) -> Vec<ApiCall> {
    vec![call(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": files.state.to_string_lossy(),
            "mem_backend": { "backend_type": "File", "backend_path": files.memory.to_string_lossy() },
            "resume_vm": true,
            "network_overrides": [{ "iface_id": NET_IFACE, "host_dev_name": spec.tap }],
        }),
    )]
}

pub fn pause_call() -> ApiCall {
    call("PATCH", "/vm", json!({ "state": "Paused" }))
}

pub fn resume_call() -> ApiCall {
    call("PATCH", "/vm", json!({ "state": "Resumed" }))
}

pub fn snapshot_calls(files: &SnapshotFiles) -> Vec<ApiCall> {
    vec![
        pause_call(),
        call(
            "PUT",
            "/snapshot/create",
            json!({
                "snapshot_type": "Full",
                "snapshot_path": files.state.to_string_lossy(),
                "mem_file_path": files.memory.to_string_lossy(),
            }),
        ),
    ]
}

/// Sends one call; any non-2xx answer becomes an error carrying Firecracker's own message.
pub fn send(socket: &Path, c: &ApiCall, timeout: Duration) -> Result<(), VmmError> {
    let api_err = |message: String| VmmError::Api {
        method: c.method.into(),
        path: c.path.clone(),
        message,
    };
    let body = c.body.to_string();
    let resp = api::request(socket, c.method, &c.path, Some(&body), timeout).map_err(api_err)?;
    if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(api_err(format!(
            "HTTP {}: {}",
            resp.status,
            api::error_message(&resp.body)
        )))
    }
}

/// Running Firecracker through the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
}

impl Jailer {
    /// The chroot the jailer builds: `<base>/firecracker/<id>/root`.
    pub fn root(&self, id: &str) -> PathBuf {
        self.chroot_base.join("firecracker").join(id).join("root")
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
            "/api.sock".into(),
        ]
    }

    /// Hard-links the files the machine needs into the chroot and returns the spec as seen from
    /// inside it (the API takes paths relative to the jail's root).
    pub fn stage(&self, spec: &VmSpec) -> Result<VmSpec, VmmError> {
        let root = self.root(&spec.id);
        std::fs::create_dir_all(&root).map_err(|source| VmmError::Io {
            what: format!("creating jail {}", root.display()),
            source,
        })?;
        let link = |src: &Path, name: &str| -> Result<PathBuf, VmmError> {
            let dest = root.join(name);
            let _ = std::fs::remove_file(&dest);
            std::fs::hard_link(src, &dest).map_err(|source| VmmError::Io {
                what: format!(
                    "linking {} into the jail (it must be on the same filesystem as {})",
                    src.display(),
                    self.chroot_base.display()
                ),
                source,
            })?;
            nix::unistd::chown(
                &dest,
                Some(nix::unistd::Uid::from_raw(self.uid)),
                Some(nix::unistd::Gid::from_raw(self.gid)),
            )
            .map_err(|e| VmmError::Io {
                what: format!("chown {}", dest.display()),
                source: e.into(),
            })?;
            Ok(PathBuf::from("/").join(name))
        };
        let mut jailed = spec.clone();
        jailed.kernel = link(&spec.kernel, "kernel")?;
        if let Some(i) = &spec.initrd {
            jailed.initrd = Some(link(i, "initrd")?);
        }
        jailed.root_disk = link(&spec.root_disk, "rootfs")?;
        Ok(jailed)
    }
}

#[derive(Debug, Clone)]
pub struct Firecracker {
    pub binary: PathBuf,
    pub jailer: Option<Jailer>,
    pub api_timeout: Duration,
}

impl Firecracker {
    /// `<bin_dir>/firecracker`, or `FIRECLAW_FIRECRACKER`. `FIRECLAW_JAILER=<uid>:<gid>` runs it
    /// under `<bin_dir>/jailer` with chroots in `/srv/jailer`.
    pub fn from_env(bin_dir: &Path) -> Firecracker {
        let binary = std::env::var_os("FIRECLAW_FIRECRACKER")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir.join("firecracker"));
        let jailer = std::env::var("FIRECLAW_JAILER").ok().and_then(|v| {
            let (u, g) = v.split_once(':')?;
            Some(Jailer {
                binary: bin_dir.join("jailer"),
                uid: u.parse().ok()?,
                gid: g.parse().ok()?,
                chroot_base: "/srv/jailer".into(),
            })
        });
        Firecracker {
            binary,
            jailer,
            api_timeout: Duration::from_secs(10),
        }
    }

    pub fn api_socket(&self, spec: &VmSpec) -> PathBuf {
        match &self.jailer {
            Some(j) => j.root(&spec.id).join("api.sock"),
            None => spec.run_dir.join("api.sock"),
        }
    }

    /// The whole sequence a machine's start sends.
    pub fn start_calls(spec: &VmSpec) -> Vec<ApiCall> {
        match &spec.boot {
            Boot::Kernel => boot_calls(spec),
            Boot::Snapshot(files) => restore_calls(spec, files),
        }
    }
}

impl Vmm for Firecracker {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Instance>, VmmError> {
        let sock = self.api_socket(spec);
        check_socket_path(&sock)?;
        let (mut cmd, seen) = match &self.jailer {
            Some(j) => {
                let seen = j.stage(spec)?;
                let mut c = Command::new(&j.binary);
                c.args(j.args(&self.binary, &spec.id));
                (c, seen)
            }
            None => {
                let mut c = Command::new(&self.binary);
                c.arg("--api-sock").arg(&sock).arg("--id").arg(&spec.id);
                (c, spec.clone())
            }
        };
        cmd.env_clear();
        let program = self.binary.to_string_lossy().into_owned();
        let mut child = spawn(cmd, &spec.vmm_log())?;
        let result = (|| {
            wait_socket(&mut child, &sock, self.api_timeout, spec, &program)?;
            for c in Self::start_calls(&seen) {
                send(&sock, &c, self.api_timeout)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            kill_child(&mut child);
            return Err(e);
        }
        Ok(Box::new(FirecrackerInstance {
            child,
            sock,
            spec: spec.clone(),
            program,
            timeout: self.api_timeout,
            detached: false,
        }))
    }
}

fn wait_socket(
    child: &mut Child,
    sock: &Path,
    timeout: Duration,
    spec: &VmSpec,
    program: &str,
) -> Result<(), VmmError> {
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::Exited {
                program: program.into(),
                during: "startup".into(),
                status: describe_exit(status),
                log_tail: tail_of(&spec.vmm_log(), 10),
            });
        }
        if start.elapsed() > timeout {
            return Err(VmmError::Timeout {
                what: format!("API socket {}", sock.display()),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The file exists from bind(); wait until Firecracker also listens.
    while let Err(e) = std::os::unix::net::UnixStream::connect(sock) {
        if start.elapsed() > timeout {
            return Err(VmmError::Io {
                what: format!("connecting to {}", sock.display()),
                source: e,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub struct FirecrackerInstance {
    child: Child,
    sock: PathBuf,
    spec: VmSpec,
    program: String,
    timeout: Duration,
    /// Set by [`Instance::detach`]: dropping the handle leaves Firecracker running.
    detached: bool,
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
        for c in snapshot_calls(to) {
            send(&self.sock, &c, Duration::from_secs(120))?;
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        kill_child(&mut self.child);
        let _ = std::fs::remove_file(&self.sock);
        Ok(())
    }

    fn console_tail(&self) -> String {
        // Firecracker's serial console is its stdout.
        tail_of(&self.spec.vmm_log(), 15)
    }

    fn detach(&mut self) {
        self.detached = true;
    }
}

impl Drop for FirecrackerInstance {
    fn drop(&mut self) {
        if !self.detached {
            kill_child(&mut self.child);
        }
    }
}
