//! The system tier's guest: a Debian 12 with systemd as PID 1 (`rootfs-recipes/debian-systemd.toml`,
//! built by `ci/build-system-image.sh` with fireclaw's own image builder), booted under QEMU TCG
//! on a q35 machine with the image's own kernel and initramfs, and driven over SSH like an
//! operator's host.
//!
//! The guest's root disk is a qcow2 overlay on the cached image (the image itself is never
//! written), a second read-only disk carries the checkout the operator would have (install.sh,
//! uninstall.sh and the fireclaw binary built on this host), and its one NIC is QEMU's user-mode
//! network with `restrict=on` (no route off the machine) inside a network namespace the test
//! creates, where the guest's SSH port is forwarded to 127.0.0.1. QEMU dies with the test
//! process (PDEATHSIG), on drop, and after a hard deadline; every SSH call has a timeout.
#![allow(dead_code)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::NetNs;

/// Where the guest's SSH port appears inside the test's namespace.
const SSH_PORT: u16 = 2222;
/// The guest's root disk: the image is kept small (it is hashed and copied at build time) and
/// the guest grows its file system into this at first boot (`resize2fs`, online), leaving room
/// for the 4 GiB provision's preflight wants free under /var/lib/fireclaw.
const ROOT_DISK_GIB: u32 = 8;
/// The manifest of the built image; default under FIRECLAW_CI_CACHE (as `.ci/run` sets it).
pub const MANIFEST_ENV: &str = "FIRECLAW_SYSTEM_IMAGE_MANIFEST";

pub struct Paths {
    pub manifest: PathBuf,
    pub image: PathBuf,
    pub key: PathBuf,
    pub host_key: String,
}

fn cache_root() -> PathBuf {
    std::env::var_os("FIRECLAW_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/fireclaw-ci"))
}

/// The built image and the key it authorizes, or what is missing and how to make it.
pub fn paths() -> Result<Paths, String> {
    let manifest = std::env::var_os(MANIFEST_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join("images/debian-systemd.manifest.json"));
    let key = std::env::var_os("FIRECLAW_TEST_SSH_KEY")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join("ci-key"));
    let how = "build it with `sudo bash ci/build-system-image.sh` (or set FIRECLAW_SYSTEM_IMAGE_MANIFEST and FIRECLAW_TEST_SSH_KEY)";
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("{}: {e}; {how}", manifest.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let image = manifest.with_file_name(v["image"].as_str().unwrap_or("debian-systemd.ext4"));
    let host_key = v["ssh_host_key"]
        .as_str()
        .ok_or_else(|| format!("{}: no ssh_host_key", manifest.display()))?
        .trim()
        .to_string();
    if !image.is_file() || !key.is_file() {
        return Err(format!(
            "{} or {} missing; {how}",
            image.display(),
            key.display()
        ));
    }
    Ok(Paths {
        manifest,
        image,
        key,
        host_key,
    })
}

/// The system tier's gate: root, the tools, and the built image.
pub fn require() -> bool {
    super::tier(
        "system",
        true,
        &[
            "qemu-system-x86_64",
            "qemu-img",
            "ssh",
            "debugfs",
            "mkfs.ext4",
            "ip",
            "timeout",
        ],
    );
    let p = paths();
    super::require(
        "system",
        &[(p.as_ref().err().map_or("", String::as_str), p.is_ok())],
    )
}

pub struct Guest {
    qemu: Option<Child>,
    pub ns: NetNs,
    pub work: tempfile::TempDir,
    key: PathBuf,
    known_hosts: PathBuf,
    deadline: Instant,
    pub boots: Vec<Duration>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
    }
}

pub struct Output2 {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output2 {
    fn from(o: Output) -> Self {
        Output2 {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Output2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies `src` out of an ext4 image with debugfs (nothing is mounted).
fn dump(image: &Path, guest_path: &str, out: &Path) {
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {guest_path} {}", out.display()))
            .arg(image),
    );
    assert!(
        std::fs::metadata(out).is_ok_and(|m| m.len() > 0),
        "debugfs could not dump {guest_path} from {}",
        image.display()
    );
}

/// The kernel and initramfs the image's own `linux-image-cloud-amd64` installed.
fn kernel_of(image: &Path, work: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new("debugfs")
        .args(["-R", "ls -p /boot"])
        .arg(image)
        .output()
        .expect("debugfs");
    let listing = String::from_utf8_lossy(&out.stdout);
    let name = |prefix: &str| {
        listing
            .lines()
            .filter_map(|l| l.split('/').nth(5))
            .filter(|n| n.starts_with(prefix))
            .max()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no /boot/{prefix}* in {}: {listing}", image.display()))
    };
    let (k, i) = (work.join("vmlinuz"), work.join("initrd.img"));
    dump(image, &format!("/boot/{}", name("vmlinuz-")), &k);
    dump(image, &format!("/boot/{}", name("initrd.img-")), &i);
    (k, i)
}

impl Guest {
    /// Boots the image with `checkout` (a directory) as a read-only second disk, and waits for
    /// SSH. The whole guest lives at most `budget`.
    pub fn boot(checkout: &Path, budget: Duration) -> Guest {
        let p = paths().expect("system image (checked by require())");
        let work = tempfile::Builder::new()
            .prefix("fireclaw-system-")
            .tempdir()
            .expect("work dir");
        let (kernel, initrd) = kernel_of(&p.image, work.path());
        let overlay = work.path().join("root.qcow2");
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&p.image)
                .arg(&overlay)
                .arg(format!("{ROOT_DISK_GIB}G")),
        );
        let share = work.path().join("checkout.ext4");
        let mib = dir_mib(checkout) * 2 + 64;
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "checkout", "-d"])
                .arg(checkout)
                .arg(&share)
                .arg(format!("{mib}M")),
        );
        let known_hosts = work.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{SSH_PORT} {}\n", p.host_key),
        )
        .expect("known_hosts");
        let ns = NetNs::new("sys");
        let mut append = String::from(
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 random.trust_cpu=on systemd.show_status=0",
        );
        if let Some(khz) = fireclaw::vm::host_tsc_khz() {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let console = work.path().join("console.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "qemu-system-x86_64"])
            .args(["-M", "q35", "-accel", "tcg,tb-size=256", "-cpu", "max"])
            .args(["-smp", "2", "-m", "1024"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                overlay.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                share.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("qemu.log")).expect("qemu.log"));
        // If the test process dies, its guest must not outlive it.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let qemu = cmd.spawn().expect("starting QEMU");
        let mut g = Guest {
            qemu: Some(qemu),
            ns,
            work,
            key: p.key,
            known_hosts,
            deadline: started + budget,
            boots: Vec::new(),
        };
        g.wait_ssh(started, None);
        g.ok(
            "resize2fs /dev/vda >/dev/null 2>&1",
            Duration::from_secs(300),
        );
        g
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.work.path().join("console.log")).unwrap_or_default()
    }

    fn check_alive(&mut self) {
        if let Some(q) = self.qemu.as_mut() {
            if let Ok(Some(status)) = q.try_wait() {
                let log =
                    std::fs::read_to_string(self.work.path().join("qemu.log")).unwrap_or_default();
                panic!(
                    "QEMU exited ({status}): {log}\nconsole:\n{}",
                    self.console()
                );
            }
        }
        if Instant::now() > self.deadline {
            panic!(
                "the system test ran past its budget; console:\n{}",
                self.console()
            );
        }
    }

    /// Runs `script` with bash as root in the guest, killed after `timeout`.
    pub fn sh(&mut self, script: &str, timeout: Duration) -> Output2 {
        self.check_alive();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let secs = timeout.min(left).as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-k",
            "5",
            &secs.to_string(),
            "ip",
            "netns",
            "exec",
            &self.ns.name,
        ])
        .arg("ssh")
        .arg("-i")
        .arg(&self.key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &SSH_PORT.to_string(),
            "root@127.0.0.1",
            "bash -s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("ssh");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            let _ = stdin.write_all(format!("set -o pipefail\n{script}\n").as_bytes());
        }
        Output2::from(child.wait_with_output().expect("ssh output"))
    }

    /// [`Guest::sh`] that must succeed; returns stdout.
    pub fn ok(&mut self, script: &str, timeout: Duration) -> String {
        let out = self.sh(script, timeout);
        assert_eq!(out.code, Some(0), "in the guest: {script}\n{out}");
        out.stdout
    }

    pub fn boot_id(&mut self) -> Option<String> {
        let out = self.sh(
            "cat /proc/sys/kernel/random/boot_id",
            Duration::from_secs(30),
        );
        (out.code == Some(0)).then(|| out.stdout.trim().to_string())
    }

    /// Waits until SSH answers (on a boot other than `old_boot`, when given).
    fn wait_ssh(&mut self, since: Instant, old_boot: Option<&str>) {
        loop {
            self.check_alive();
            if let Some(id) = self.boot_id() {
                if old_boot != Some(id.as_str()) {
                    self.boots.push(since.elapsed());
                    return;
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `systemctl reboot` in the guest and back: QEMU resets and boots the same kernel.
    pub fn reboot(&mut self) {
        let old = self.boot_id().expect("boot id before the reboot");
        let since = Instant::now();
        // The connection drops as sshd stops: the exit status means nothing here.
        let _ = self.sh("systemctl reboot", Duration::from_secs(30));
        self.wait_ssh(since, Some(&old));
    }
}

fn dir_mib(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total >> 20
}
