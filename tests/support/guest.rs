//! Run a command inside a guest kernel that has a feature the host kernel lacks.
//!
//! The host this project is tested on has no device-mapper (and may lack other features later tests
//! need), but QEMU's software emulation can boot Debian's own kernel, which has them as modules. This
//! harness boots such a kernel with a tiny initramfs (static busybox plus the requested modules),
//! shares the host's root file system read-only over virtio-fs, chroots into it and runs one command:
//! usually the calling test binary itself, re-invoked with `FIRECLAW_IN_GUEST=1`. Nothing is built
//! into a disk image, so the guest runs exactly the code under test.
//!
//! ```ignore
//! let out = guest::run_in_guest(&GuestSpec::new(vec![exe, "--exact".into(), name.into()])
//!     .modules(["dm-thin-pool", "loop"]))?;
//! assert!(out.status.success(), "{}", out.console);
//! ```
//!
//! The result comes back as a line on the serial console (`FIRECLAW_GUEST_EXIT=<code>`), which
//! needs no extra device and survives a guest that prints garbage; a missing line means the guest
//! died (panic, timeout) and is an error carrying the console log.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Env var set in the guest: tests use it to know they are the in-guest half.
pub const IN_GUEST_ENV: &str = "FIRECLAW_IN_GUEST";
/// Overrides the guest kernel (a bzImage whose modules are in /lib/modules/<version>).
pub const KERNEL_ENV: &str = "FIRECLAW_GUEST_KERNEL";

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const QEMU: &str = "qemu-system-x86_64";
const BUSYBOX: &str = "/bin/busybox";
const EXIT_MARKER: &str = "FIRECLAW_GUEST_EXIT=";
/// The virtio-fs tag the guest mounts the shared root by.
const FS_TAG: &str = "hostroot";
/// What the guest needs to mount the shared root, before any module the spec asks for.
const BASE_MODULES: &[&str] = &["virtio_mmio", "virtiofs"];

/// Two cores are shared by every test on these machines: guests run one at a time per process.
static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Kernel image; `None` picks the newest Debian cloud kernel in /boot (see [`KERNEL_ENV`]).
    pub kernel: Option<PathBuf>,
    /// Module names (as `modprobe` spells them) loaded, with their dependencies, before `cmd` runs.
    pub modules: Vec<String>,
    /// argv run in the guest, chrooted into `share_root`.
    pub cmd: Vec<String>,
    /// Environment of `cmd` (besides PATH, HOME, TMPDIR and [`IN_GUEST_ENV`]).
    pub env: Vec<(String, String)>,
    /// Working directory of `cmd`, inside the shared root.
    pub cwd: PathBuf,
    /// Host directory shared read-only as the guest's root (`/` to run host-built binaries).
    pub share_root: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Size limit of the guest's writable /tmp (a tmpfs in guest memory).
    pub scratch_mib: u32,
    /// QEMU is killed after this long; the result is then an error with the console so far.
    pub timeout: Duration,
}

impl GuestSpec {
    pub fn new(cmd: Vec<String>) -> Self {
        GuestSpec {
            kernel: None,
            modules: Vec::new(),
            cmd,
            env: Vec::new(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            share_root: PathBuf::from("/"),
            memory_mib: 1024,
            cpus: 1,
            scratch_mib: 512,
            timeout: Duration::from_secs(300),
        }
    }

    pub fn modules<I, S>(mut self, modules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.modules.extend(modules.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn memory_mib(mut self, mib: u32, scratch_mib: u32) -> Self {
        self.memory_mib = mib;
        self.scratch_mib = scratch_mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Debug)]
pub struct GuestOutcome {
    /// `cmd`'s exit status inside the guest.
    pub status: ExitStatus,
    /// Everything the guest printed on its serial console (kernel, init and `cmd`).
    pub console: String,
    /// Boot to power-off, as seen from the host.
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest prerequisite missing: {0}")]
    Missing(String),
    #[error(
        "kernel module {module:?} is not in {dir}/modules.dep (is this the kernel's module tree?)"
    )]
    UnknownModule { module: String, dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("guest timed out after {secs} s (QEMU killed); console:\n{console}")]
    Timeout { secs: u64, console: String },
    #[error("guest ended without reporting an exit code (QEMU {qemu}); console:\n{console}")]
    NoExitCode { qemu: String, console: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// Checks what booting a guest needs; panics when something is missing (see `super::require`).
pub fn require(tier: &str) -> bool {
    let missing = missing_prerequisites();
    let what = missing.as_deref().unwrap_or("guest prerequisites");
    super::require(tier, &[(what, missing.is_none())])
}

/// `None` when everything is there, else what is missing and how to get it.
pub fn missing_prerequisites() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("must run as root (virtiofsd needs it)".into());
    }
    if find_in_path(QEMU).is_none() {
        return Some(format!(
            "{QEMU} not in PATH (apt-get install qemu-system-x86)"
        ));
    }
    if !Path::new(VIRTIOFSD).is_file() {
        return Some(format!(
            "{VIRTIOFSD} missing (apt-get install qemu-system-x86)"
        ));
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} missing (apt-get install busybox-static)"
        ));
    }
    if let Err(e) = pick_kernel(None) {
        return Some(e.to_string());
    }
    None
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// The kernel image and its module directory.
fn pick_kernel(explicit: Option<&Path>) -> Result<(PathBuf, PathBuf), GuestError> {
    let from_env = std::env::var_os(KERNEL_ENV).map(PathBuf::from);
    let chosen = match explicit.map(Path::to_path_buf).or(from_env) {
        Some(k) => k,
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
                .map_err(io("reading /boot"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
                })
                .collect();
            found.sort();
            found.pop().ok_or_else(|| {
                GuestError::Missing(
                    "no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64), or set FIRECLAW_GUEST_KERNEL"
                        .into(),
                )
            })?
        }
    };
    let name = chosen
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let version = name.strip_prefix("vmlinuz-").unwrap_or(name);
    let modules = PathBuf::from("/lib/modules").join(version);
    if !chosen.is_file() || !modules.join("modules.dep").is_file() {
        return Err(GuestError::Missing(format!(
            "kernel {} or its modules {}/modules.dep missing",
            chosen.display(),
            modules.display()
        )));
    }
    Ok((chosen, modules))
}

/// The module files to load, dependencies first, each once. `modules.dep` lists a module's
/// dependencies but not in load order, so the order comes from a depth-first walk.
pub fn resolve_modules(dir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>, GuestError> {
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(io(format!("reading {}/modules.dep", dir.display())))?;
    let mut table = std::collections::HashMap::new();
    for line in dep.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        table.insert(
            module.to_string(),
            deps.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    let by_name = |name: &str| -> Option<String> {
        let norm = name.replace('-', "_");
        table
            .keys()
            .find(|path| {
                let file = path.rsplit('/').next().unwrap_or(path);
                let stem = file.split(".ko").next().unwrap_or(file);
                stem.replace('-', "_") == norm
            })
            .cloned()
    };
    fn visit(
        path: &str,
        table: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for d in table.get(path).into_iter().flatten() {
            visit(d, table, seen, out);
        }
        out.push(path.to_string());
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for name in wanted {
        let path = by_name(name).ok_or_else(|| GuestError::UnknownModule {
            module: name.clone(),
            dir: dir.to_path_buf(),
        })?;
        visit(&path, &table, &mut seen, &mut order);
    }
    Ok(order.into_iter().map(|p| dir.join(p)).collect())
}

/// A module's bytes; compressed modules are unpacked on the host because busybox insmod cannot.
fn module_bytes(path: &Path) -> Result<Vec<u8>, GuestError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(io(format!("reading {name}"))),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(io(format!("running {tool} -dc {name}")))?;
            if !out.status.success() {
                return Err(GuestError::Missing(format!(
                    "{tool} could not unpack {name}"
                )));
            }
            Ok(out.stdout)
        }
    }
}

/// A minimal `newc` cpio writer: the initramfs format the kernel unpacks.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.ino += 1;
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// Single-quotes a word for the guest's busybox shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn init_script(spec: &GuestSpec, module_files: &[String]) -> String {
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME".to_string(), "/tmp".to_string()),
        ("TMPDIR".to_string(), "/tmp".to_string()),
        (IN_GUEST_ENV.to_string(), "1".to_string()),
    ];
    env.extend(spec.env.iter().cloned());
    let env_words = env
        .iter()
        .map(|(k, v)| sh_quote(&format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let argv = spec
        .cmd
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let inner = format!(
        "cd {} && exec /usr/bin/env -i {env_words} {argv}",
        sh_quote(&spec.cwd.to_string_lossy())
    );
    // The guest's /tmp is a tmpfs over the shared root's: a checkout under /tmp (where many
    // people clone) would vanish under it. Each top-level entry of /tmp that the command needs
    // (its working directory, its executable) is bound back in from the shared root.
    let mut keep: Vec<String> = [
        spec.cwd.as_path(),
        Path::new(spec.cmd.first().map(String::as_str).unwrap_or("")),
    ]
    .iter()
    .filter_map(|p| p.strip_prefix("/tmp").ok())
    .filter_map(|rest| rest.components().next())
    .map(|c| c.as_os_str().to_string_lossy().into_owned())
    .collect();
    keep.sort();
    keep.dedup();
    let rebind = keep
        .iter()
        .map(|k| {
            let k = sh_quote(k);
            format!("mkdir -p /mnt/tmp/{k} && mount -o bind /hosttmp/{k} /mnt/tmp/{k}")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let loads = module_files
        .iter()
        .map(|m| format!("insmod /modules/{m} || echo \"fireclaw-guest: insmod {m} failed\""))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /hosttmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{loads}
if ! mount -t virtiofs -o ro {FS_TAG} /mnt; then
  echo "fireclaw-guest: cannot mount the shared root"
  echo "{EXIT_MARKER}125"
  reboot -f
fi
mount -t proc proc /mnt/proc
mount -t sysfs sys /mnt/sys
mount -t devtmpfs dev /mnt/dev
mount -o bind /mnt/tmp /hosttmp
mount -t tmpfs -o size={scratch}m tmp /mnt/tmp
{rebind}
mount -t tmpfs -o size=16m run /mnt/run
chroot /mnt /bin/sh -c {inner}
code=$?
sync
echo "{EXIT_MARKER}$code"
reboot -f
"#,
        scratch = spec.scratch_mib,
        inner = sh_quote(&inner),
    )
}

fn build_initramfs(spec: &GuestSpec, modules_dir: &Path) -> Result<Vec<u8>, GuestError> {
    let mut wanted: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(spec.modules.iter().cloned());
    let files = resolve_modules(modules_dir, &wanted)?;
    let mut cpio = Cpio::new();
    for d in ["bin", "modules", "proc", "sys", "dev", "mnt"] {
        cpio.dir(d);
    }
    let busybox = std::fs::read(BUSYBOX).map_err(io(format!("reading {BUSYBOX}")))?;
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut names = Vec::new();
    for f in &files {
        let base = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let plain = base
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        cpio.file(&format!("modules/{plain}"), 0o644, &module_bytes(f)?);
        names.push(plain);
    }
    cpio.file("init", 0o755, init_script(spec, &names).as_bytes());
    Ok(cpio.finish())
}

/// Kills and reaps a child on every exit path of [`run_in_guest`].
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_dying_with_parent(cmd: &mut Command) -> std::io::Result<Child> {
    // If the test process is killed, its guest must not outlive it.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

/// Boots the guest, runs `spec.cmd` in it and returns its exit status and console.
pub fn run_in_guest(spec: &GuestSpec) -> Result<GuestOutcome, GuestError> {
    if let Some(reason) = missing_prerequisites() {
        return Err(GuestError::Missing(reason));
    }
    let _one = ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (kernel, modules_dir) = pick_kernel(spec.kernel.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("fireclaw-guest-")
        .tempdir()
        .map_err(io("creating the guest work directory"))?;
    let initrd = work.path().join("initrd.cpio");
    let image = build_initramfs(spec, &modules_dir)?;
    std::fs::write(&initrd, image).map_err(io("writing the initramfs"))?;
    let socket = work.path().join("virtiofs.sock");
    let console_path = work.path().join("console.log");

    let mut vfsd_cmd = Command::new(VIRTIOFSD);
    vfsd_cmd
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", spec.share_root.display()))
        // The namespace sandbox pivots into the shared directory, which fails when it is `/`.
        .args(["-o", "sandbox=chroot", "-o", "cache=auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(work.path().join("virtiofsd.log"))
                .map_err(io("creating virtiofsd.log"))?,
        );
    let vfsd = Reaper(Some(
        spawn_dying_with_parent(&mut vfsd_cmd).map_err(io(format!("starting {VIRTIOFSD}")))?,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(work.path().join("virtiofsd.log")).unwrap_or_default();
            return Err(GuestError::Missing(format!(
                "virtiofsd did not create its socket: {log}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut append = String::from("console=ttyS0 panic=-1 quiet loglevel=3 random.trust_cpu=on");
    if let Some(khz) = fireclaw::vm::host_tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mem = format!("{}M", spec.memory_mib);
    let mut qemu_cmd = Command::new(QEMU);
    qemu_cmd
        .args(["-M", "microvm", "-accel", "tcg", "-cpu", "max"])
        .args(["-m", &mem, "-smp", &spec.cpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console_path.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        // vhost-user needs guest memory QEMU can hand to virtiofsd: a shared memfd.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-machine",
            "memory-backend=mem",
        ])
        // vhost-user-fs speaks only modern virtio; microvm's mmio transport defaults to legacy.
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", socket.display()))
        .args([
            "-device",
            &format!("vhost-user-fs-device,chardev=vfs,tag={FS_TAG}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(work.path().join("qemu.log")).map_err(io("creating qemu.log"))?,
        );
    let started = Instant::now();
    let mut qemu = Reaper(Some(
        spawn_dying_with_parent(&mut qemu_cmd).map_err(io(format!("starting {QEMU}")))?,
    ));
    let read_console = || std::fs::read_to_string(&console_path).unwrap_or_default();
    let mut reported_at: Option<Instant> = None;
    let mut polls = 0u32;
    let qemu_status = loop {
        let child = qemu.0.as_mut().expect("qemu child is present until reaped");
        polls += 1;
        // Once the guest has reported, its exit is a formality: a reset with dm/loop devices still
        // set up was seen to stall QEMU for minutes, so do not wait on it.
        if reported_at.is_none() && polls.is_multiple_of(10) && read_console().contains(EXIT_MARKER)
        {
            reported_at = Some(Instant::now());
        }
        if reported_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            let _ = child.kill();
        }
        match child.try_wait().map_err(io("waiting for QEMU"))? {
            Some(status) => break status,
            None if started.elapsed() > spec.timeout => {
                drop(qemu);
                drop(vfsd);
                return Err(GuestError::Timeout {
                    secs: spec.timeout.as_secs(),
                    console: read_console(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let elapsed = started.elapsed();
    qemu.0 = None;
    drop(vfsd);
    let console = read_console();
    let code = console.lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix(EXIT_MARKER)
            .and_then(|c| c.trim().parse::<i32>().ok())
    });
    match code {
        Some(code) => {
            use std::os::unix::process::ExitStatusExt as _;
            Ok(GuestOutcome {
                status: ExitStatus::from_raw((code & 0xff) << 8),
                console,
                elapsed,
            })
        }
        None => {
            let qemu_log =
                std::fs::read_to_string(work.path().join("qemu.log")).unwrap_or_default();
            Err(GuestError::NoExitCode {
                qemu: format!("{qemu_status}: {qemu_log}"),
                console,
            })
        }
    }
}

/// The common shape of a kernel-feature test: on the host, boot a guest that re-runs this very test
/// (by name) with [`IN_GUEST_ENV`] set, and assert it passed there. The caller checks [`in_guest`]
/// first and runs its body instead when it is the in-guest half.
pub fn reinvoke_in_guest(test_name: &str, tier: &str, spec: impl FnOnce(GuestSpec) -> GuestSpec) {
    if !require(tier) {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let cmd = vec![
        exe.to_string_lossy().into_owned(),
        "--exact".into(),
        test_name.into(),
        // Tier tests are #[ignore]d by default; the in-guest half must still run.
        "--include-ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ];
    // Symbolizing a backtrace under TCG takes minutes: off unless asked for explicitly.
    let mut base = GuestSpec::new(cmd).env(
        "RUST_BACKTRACE",
        &std::env::var("FIRECLAW_GUEST_BACKTRACE").unwrap_or_else(|_| "0".into()),
    );
    if let Ok(v) = std::env::var("RUST_LOG") {
        base = base.env("RUST_LOG", &v);
    }
    let spec = spec(base);
    match run_in_guest(&spec) {
        Ok(out) => {
            // The guest's own test output, so `--nocapture` on the host shows it (benchmarks).
            let body: String = out
                .console
                .lines()
                .filter(|l| !l.starts_with('['))
                .collect::<Vec<_>>()
                .join("\n");
            println!(
                "--- guest console ({:.1} s) ---\n{body}\n--- end guest console ---",
                out.elapsed.as_secs_f64()
            );
            std::io::stdout().flush().ok();
            assert!(
                out.status.success(),
                "{test_name} failed inside the guest with {}",
                out.status
            );
        }
        Err(e) => panic!("{test_name}: {e}"),
    }
}

pub fn in_guest() -> bool {
    std::env::var(IN_GUEST_ENV).is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    // The benchmarks include this module too, built with cfg(test) but no test harness, where the
    // #[test] functions (and so this import's uses) vanish.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn a_checkout_under_tmp_stays_visible_under_the_guests_tmpfs() {
        let mut spec = GuestSpec::new(vec!["/tmp/clone/target/debug/deps/t-1".into()]);
        spec.cwd = "/tmp/clone".into();
        let script = init_script(&spec, &[]);
        let bind = "mount -o bind /hosttmp/'clone' /mnt/tmp/'clone'";
        let tmpfs = script.find("tmp /mnt/tmp").unwrap();
        assert!(script.find(bind).unwrap() > tmpfs, "{script}");
        assert_eq!(script.matches(bind).count(), 1, "{script}");

        spec.cwd = "/work/clone".into();
        spec.cmd = vec!["/work/clone/t".into()];
        assert!(!init_script(&spec, &[]).contains("/hosttmp/'"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn modules_load_dependencies_first_and_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/md/dm-thin-pool.ko: kernel/md/dm-pd.ko kernel/md/dm-mod.ko kernel/lib/crc.ko\n\
             kernel/md/dm-pd.ko: kernel/md/dm-mod.ko kernel/lib/crc.ko\n\
             kernel/md/dm-mod.ko:\nkernel/lib/crc.ko:\nkernel/block/loop.ko:\n",
        )
        .unwrap();
        let got = resolve_modules(
            dir.path(),
            &["dm_thin_pool".into(), "loop".into(), "dm-mod".into()],
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "kernel/md/dm-mod.ko",
                "kernel/lib/crc.ko",
                "kernel/md/dm-pd.ko",
                "kernel/md/dm-thin-pool.ko",
                "kernel/block/loop.ko"
            ]
        );
        let err = resolve_modules(dir.path(), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("\"nope\" is not in"), "{err}");
    }

    #[test]
    fn cpio_is_4_byte_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"abc");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
