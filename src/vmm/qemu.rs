//! The QEMU `microvm` engine. The machine has the same devices Firecracker gives a guest
//! (virtio-mmio block and net, a serial console) plus a virtio-rng, so one image and kernel serve
//! both engines. QEMU is driven over QMP; snapshots are a `migrate` to a file and a restore is
//! `-incoming` from it.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::Qmp;
use super::{
    check_socket_path, describe_exit, kill_child, spawn, tail_of, Boot, Instance, SnapshotFiles,
    VmSpec, Vmm, VmmError, VmmKind,
};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn parse(text: &str) -> Option<Accel> {
        match text {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// KVM when /dev/kvm can run an ordinary guest, else TCG. A PVM host (`kvm_pvm` loaded) has
    /// a /dev/kvm that hangs on ordinary kernels, so it counts as no KVM.
    pub fn detect() -> Accel {
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable && !pvm {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
    /// Describe devices through ACPI (what Debian's cloud kernel needs). Without it QEMU puts
    /// `virtio_mmio.device=` entries on the kernel command line instead.
    pub acpi: bool,
    /// How long QMP may take to answer and the socket to appear.
    pub monitor_timeout: Duration,
}

/// What the caller chooses about QEMU. The library reads no environment: `fireclaw run` fills
/// this from `FIRECLAW_QEMU`, `FIRECLAW_QEMU_ACCEL` and `FIRECLAW_QEMU_ACPI` (docs/run.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// The QEMU binary, looked up in PATH when relative.
    pub binary: PathBuf,
    /// `None`: detect ([`Accel::detect`]).
    pub accel: Option<Accel>,
    /// Describe devices through ACPI (what Debian's cloud kernel needs).
    pub acpi: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: None,
            acpi: true,
        }
    }
}

impl Qemu {
    pub fn new(opts: &QemuOptions) -> Qemu {
        Qemu {
            binary: opts.binary.clone(),
            accel: opts.accel.unwrap_or_else(Accel::detect),
            acpi: opts.acpi,
            monitor_timeout: Duration::from_secs(10),
        }
    }

    pub fn qmp_socket(spec: &VmSpec) -> PathBuf {
        spec.run_dir.join("qmp.sock")
    }

    /// The complete argument list (without the binary): pure, so tests can read it.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        let machine = format!("microvm,acpi={}", if self.acpi { "on" } else { "off" });
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        push(&["-name", &format!("fireclaw-{}", spec.id)]);
        push(&["-M", &machine, "-accel", accel, "-cpu", cpu]);
        push(&[
            "-m",
            &spec.mem_mib.to_string(),
            "-smp",
            &spec.vcpus.to_string(),
        ]);
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        push(&["-kernel", &spec.kernel.to_string_lossy()]);
        if let Some(initrd) = &spec.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        push(&["-append", &spec.cmdline]);
        push(&[
            "-chardev",
            &format!("file,id=con,path={}", spec.console_log().to_string_lossy()),
            "-serial",
            "chardev:con",
        ]);
        // Paths go into QEMU's option syntax, where `,` separates options: double it to escape.
        let disk = spec.root_disk.to_string_lossy().replace(',', ",,");
        push(&[
            "-drive",
            &format!("id=root,file={disk},format=raw,if=none,cache=unsafe"),
            "-device",
            "virtio-blk-device,drive=root",
        ]);
        if let Some(extra) = &spec.extra_disk {
            let extra = extra.to_string_lossy().replace(',', ",,");
            push(&[
                "-drive",
                &format!("id=extra,file={extra},format=raw,if=none,cache=writeback"),
                "-device",
                "virtio-blk-device,drive=extra",
            ]);
        }
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
        ]);
        push(&[
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ]);
        let qmp = Self::qmp_socket(spec).to_string_lossy().replace(',', ",,");
        push(&["-qmp", &format!("unix:{qmp},server=on,wait=off")]);
        if let Boot::Snapshot(files) = &spec.boot {
            push(&[
                "-incoming",
                &format!("exec:cat {}", shell_quote(&files.state.to_string_lossy())),
            ]);
        }
        a
    }
}

/// Single-quotes for `sh -c`, which QEMU's `exec:` migration runs.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn Instance>, VmmError> {
        let sock = Self::qmp_socket(spec);
        check_socket_path(&sock)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(spec));
        let mut child = spawn(cmd, &spec.vmm_log())?;
        let program = self.binary.to_string_lossy().into_owned();
        let qmp = match connect(&mut child, &sock, self.monitor_timeout, spec, &program) {
            Ok(q) => q,
            Err(e) => {
                kill_child(&mut child);
                return Err(e);
            }
        };
        let mut inst = QemuInstance {
            child,
            qmp,
            spec: spec.clone(),
            program,
            detached: false,
        };
        if let Boot::Snapshot(_) = &spec.boot {
            if let Err(e) = inst.wait_incoming() {
                let _ = inst.kill();
                return Err(e);
            }
        }
        Ok(Box::new(inst))
    }
}

fn connect(
    child: &mut Child,
    sock: &std::path::Path,
    timeout: Duration,
    spec: &VmSpec,
    program: &str,
) -> Result<Qmp, VmmError> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::Exited {
                program: program.into(),
                during: "startup".into(),
                status: describe_exit(status),
                log_tail: tail_of(&spec.vmm_log(), 10),
            });
        }
        if sock.exists() {
            match Qmp::connect(sock, timeout) {
                // The socket file appears at bind(), a moment before QEMU listens on it.
                Err(VmmError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && start.elapsed() < timeout => {}
                other => return other,
            }
        }
        if start.elapsed() > timeout {
            return Err(VmmError::Timeout {
                what: format!("QMP socket {}", sock.display()),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct QemuInstance {
    child: Child,
    qmp: Qmp,
    spec: VmSpec,
    program: String,
    /// Set by [`Instance::detach`]: dropping the handle leaves QEMU running.
    detached: bool,
}

impl QemuInstance {
    fn wait_incoming(&mut self) -> Result<(), VmmError> {
        let start = Instant::now();
        loop {
            let st = self.qmp.execute("query-status", None)?;
            match st.get("status").and_then(|s| s.as_str()) {
                Some("running") => return Ok(()),
                Some("paused") | Some("postmigrate") => {
                    self.qmp.execute("cont", None)?;
                    return Ok(());
                }
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(VmmError::Timeout {
                    what: "restoring the snapshot".into(),
                    after: Duration::from_secs(60),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Instance for QemuInstance {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} {}", self.program, describe_exit(status))),
            _ => None,
        }
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        self.qmp.execute("stop", None).map(drop)
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        self.qmp.execute("cont", None).map(drop)
    }

    fn snapshot(&mut self, to: &SnapshotFiles) -> Result<(), VmmError> {
        self.pause()?;
        // QEMU keeps guest memory inside its migration stream: one file holds both.
        let uri = format!("exec:cat > {}", shell_quote(&to.state.to_string_lossy()));
        self.qmp.execute("migrate", Some(json!({ "uri": uri })))?;
        let start = Instant::now();
        loop {
            let st = self.qmp.execute("query-migrate", None)?;
            match st.get("status").and_then(|s| s.as_str()) {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(VmmError::Qmp {
                        command: "migrate".into(),
                        message: format!(
                            "snapshot failed: {}",
                            st.get("error-desc")
                                .and_then(|s| s.as_str())
                                .unwrap_or("no reason given")
                        ),
                    })
                }
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(VmmError::Timeout {
                    what: "writing the snapshot".into(),
                    after: Duration::from_secs(120),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(&to.memory, b"").map_err(|source| VmmError::Io {
            what: format!("writing {}", to.memory.display()),
            source,
        })
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        kill_child(&mut self.child);
        Ok(())
    }

    fn console_tail(&self) -> String {
        tail_of(&self.spec.console_log(), 15)
    }

    fn detach(&mut self) {
        self.detached = true;
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        if !self.detached {
            kill_child(&mut self.child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "abc".into(),
            vcpus: 2,
            mem_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off".into(),
            root_disk: "/d/a,b.img".into(),
            extra_disk: None,
            tap: "fc-abc".into(),
            mac: "02:fc:ac:10:00:02".into(),
            run_dir: "/run/fireclaw/vms/abc".into(),
            boot: Boot::Kernel,
        }
    }

    #[test]
    fn argv_describes_the_machine() {
        let q = Qemu {
            binary: "qemu".into(),
            accel: Accel::Tcg,
            acpi: true,
            monitor_timeout: Duration::from_secs(1),
        };
        let a = q.args(&spec()).join(" ");
        assert!(a.contains("-M microvm,acpi=on -accel tcg -cpu max"), "{a}");
        assert!(a.contains("file=/d/a,,b.img,format=raw"), "{a}");
        assert!(a.contains("ifname=fc-abc,script=no"), "{a}");
        assert!(a.contains("mac=02:fc:ac:10:00:02"), "{a}");
        assert!(a.contains("-qmp unix:/run/fireclaw/vms/abc/qmp.sock,server=on,wait=off"));
        assert!(!a.contains("-incoming") && !a.contains("-initrd"));
        let mut s = spec();
        s.boot = Boot::Snapshot(SnapshotFiles::in_dir(std::path::Path::new("/s/it's")));
        s.initrd = Some("/k/initrd".into());
        let kvm = Qemu {
            accel: Accel::Kvm,
            ..q
        };
        let args = kvm.args(&s);
        let a = args.join(" ");
        assert!(a.contains("-accel kvm -cpu host") && a.contains("-initrd /k/initrd"));
        assert!(
            args.contains(&"exec:cat '/s/it'\\''s/vmstate'".to_string()),
            "{a}"
        );
    }

    /// The workspace is the second virtio-blk device, so the guest sees it as /dev/vdb.
    #[test]
    fn an_extra_disk_follows_the_root_disk() {
        let q = Qemu {
            binary: "qemu".into(),
            accel: Accel::Tcg,
            acpi: true,
            monitor_timeout: Duration::from_secs(1),
        };
        let mut s = spec();
        assert!(!q.args(&s).join(" ").contains("id=extra"));
        s.extra_disk = Some("/w/bob,1.ext4".into());
        let a = q.args(&s).join(" ");
        let root = a.find("drive=root").unwrap();
        let extra = a.find("drive=extra").unwrap();
        assert!(root < extra, "{a}");
        assert!(a.contains("id=extra,file=/w/bob,,1.ext4,format=raw"), "{a}");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.run_dir = dir.path().to_path_buf();
        let q = Qemu {
            binary: "/nonexistent/qemu".into(),
            accel: Accel::Tcg,
            acpi: true,
            monitor_timeout: Duration::from_secs(1),
        };
        let err = q.start(&s).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/qemu"), "{err}");
    }

    #[test]
    fn vmm_that_dies_at_startup_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'qemu: could not open disk' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = spec();
        s.run_dir = dir.path().to_path_buf();
        let q = Qemu {
            binary: fake,
            accel: Accel::Tcg,
            acpi: true,
            monitor_timeout: Duration::from_secs(5),
        };
        let err = q.start(&s).err().unwrap().to_string();
        assert!(
            err.contains("exit code 1") && err.contains("could not open disk"),
            "{err}"
        );
    }
}
