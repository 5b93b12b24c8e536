//! Test support for the VM tests: tier gating, the guest fixture, a private network namespace
//! with a bridge, a temporary root prefix, running the fireclaw binary inside the namespace, and
//! the leak check every VM test ends with. Everything here cleans up in `Drop`, so a failing
//! assertion still removes namespaces, processes and files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// VM tests boot real guests under emulation; two at once already fill a 2-core machine.
pub static VM_LOCK: Mutex<()> = Mutex::new(());

pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prerequisites of the VM tests for `tier` (through the one tier gate, `super::require`).
pub fn prerequisites(tier: &str, needs_qemu: bool) -> bool {
    let mut commands = vec!["ip", "nft"];
    if needs_qemu {
        commands.push("qemu-system-x86_64");
    }
    super::tier(tier, true, &commands)
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("running sh")
}

pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the tests boot.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub manifest: PathBuf,
    /// The client key the image authorizes.
    pub ssh_key: PathBuf,
}

/// FIRECLAW_TEST_KERNEL, FIRECLAW_TEST_IMAGE_MANIFEST (+ optional FIRECLAW_TEST_IMAGE to use another
/// root image than the manifest names, FIRECLAW_TEST_INITRD, FIRECLAW_TEST_SSH_KEY) point at the
/// image builder's outputs; without them, tests/support/make-fixture.sh builds a tiny guest from
/// Debian's cloud kernel, busybox and dropbear (once per target dir).
pub fn fixture() -> Fixture {
    static CACHE: Mutex<Option<Fixture>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = cache.as_ref() {
        return f.clone();
    }
    let f = if let Ok(manifest) = std::env::var("FIRECLAW_TEST_IMAGE_MANIFEST") {
        let kernel = std::env::var("FIRECLAW_TEST_KERNEL")
            .expect("FIRECLAW_TEST_KERNEL must accompany FIRECLAW_TEST_IMAGE_MANIFEST");
        let mut manifest = PathBuf::from(manifest);
        if let Ok(image) = std::env::var("FIRECLAW_TEST_IMAGE") {
            // Rewrite the manifest to name this image, keeping everything else.
            let text = std::fs::read_to_string(&manifest).expect("reading the test manifest");
            let mut v: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
            v["image"] = serde_json::Value::String(image);
            let dir =
                std::env::temp_dir().join(format!("fireclaw-test-manifest-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            manifest = dir.join("test.manifest.json");
            std::fs::write(&manifest, v.to_string()).unwrap();
        }
        Fixture {
            kernel: kernel.into(),
            initrd: std::env::var_os("FIRECLAW_TEST_INITRD").map(PathBuf::from),
            manifest,
            ssh_key: std::env::var_os("FIRECLAW_TEST_SSH_KEY")
                .map(PathBuf::from)
                .expect("FIRECLAW_TEST_SSH_KEY: the private key the test image authorizes"),
        }
    } else {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm-fixture");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-fixture.sh");
        // Several test binaries may want it at once: build under an exclusive lock.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm-fixture.lock"))
            .unwrap();
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        if !dir.join("fixture.manifest.json").exists() {
            let out = Command::new(&script).arg(&dir).output().unwrap();
            assert!(
                out.status.success(),
                "building the test fixture failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Fixture {
            kernel: dir.join("vmlinuz"),
            initrd: Some(dir.join("initrd.img")),
            manifest: dir.join("fixture.manifest.json"),
            ssh_key: dir.join("id_ed25519"),
        }
    };
    *cache = Some(f.clone());
    f
}

/// A private network namespace with fireclaw's bridge (fcbr0, 172.16.0.1/24) and nftables table,
/// as `provision` would leave a host. Dropped: every process in it is killed, then it is deleted.
pub struct Netns {
    pub name: String,
    extra: Vec<String>,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        fireclaw_testkit::netns::reap_orphans("fct");
        let name = format!(
            "fct-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Netns {
            name: name.clone(),
            extra: Vec::new(),
        };
        sh_ok(&format!("ip netns add {name}"));
        sh_ok(&format!(
            "ip -n {name} link set lo up && ip -n {name} link add fcbr0 type bridge && \
             ip -n {name} addr add 172.16.0.1/24 dev fcbr0 && ip -n {name} link set fcbr0 up"
        ));
        let cidr = fireclaw::net::Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let ruleset = fireclaw::net::nft::provision_ruleset("fireclaw", "fcbr0", &cidr, true);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft ruleset");
        ns
    }

    /// A second namespace, "outside", on 203.0.113.0/24 (TEST-NET-3), routed and NATed through
    /// this one: what a guest with policy `full` may reach and `local`/`none` may not.
    pub fn add_outside(&mut self) -> String {
        let out = format!("{}-o", self.name);
        let n = &self.name;
        sh_ok(&format!(
            "ip netns add {out} && ip -n {out} link set lo up && \
             ip -n {n} link add vout type veth peer name vin netns {out} && \
             ip -n {n} addr add 203.0.113.1/24 dev vout && ip -n {n} link set vout up && \
             ip -n {out} addr add 203.0.113.2/24 dev vin && ip -n {out} link set vin up && \
             ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"
        ));
        self.extra.push(out.clone());
        out
    }

    pub fn exec(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "sh", "-c", cmd]);
        c
    }

    /// Links in the namespace whose names start with fireclaw's tap prefix.
    pub fn taps(&self) -> Vec<String> {
        let out = sh_ok(&format!("ip -n {} -o link show", self.name));
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("fc-"))
            .collect()
    }

    pub fn nft_ruleset(&self) -> String {
        sh_ok(&format!(
            "ip netns exec {} nft list table inet fireclaw",
            self.name
        ))
    }
}

fn kill_netns_pids(name: &str) {
    let pids = sh(&format!("ip netns pids {name}"));
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.extra.iter().chain(std::iter::once(&self.name)) {
            kill_netns_pids(ns);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        for ns in self.extra.iter().chain(std::iter::once(&self.name)) {
            let _ = sh(&format!("ip netns delete {ns}"));
        }
    }
}

/// A temporary root prefix with the fixture's key installed as fireclaw's SSH key.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
    pub fixture: Fixture,
}

impl TestRoot {
    /// A root as `provision` leaves it, as far as `run` cares: the key and the state database.
    pub fn new(fixture: &Fixture) -> TestRoot {
        let root = TestRoot::unprovisioned(fixture);
        fireclaw::state::Db::open(&root.db_path()).unwrap();
        root
    }

    /// Only the key: `run` must refuse this root and create nothing in it.
    pub fn unprovisioned(fixture: &Fixture) -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("fct")
            .tempdir_in("/tmp")
            .unwrap();
        let etc = dir.path().join("etc/fireclaw");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::copy(&fixture.ssh_key, etc.join("id_ed25519")).unwrap();
        TestRoot {
            dir,
            fixture: fixture.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `fireclaw --root <root> run --vmm qemu --image <manifest> --kernel .. [--initrd ..] <args>`,
    /// inside `ns`, bounded by timeout(1) so a hang cannot outlive the test.
    pub fn run_cmd(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", "600", "ip", "netns", "exec", &ns.name]);
        c.arg(env!("CARGO_BIN_EXE_fireclaw"));
        c.arg("--root").arg(self.path());
        c.args(["run", "--vmm", "qemu", "--mem", "256"]);
        c.arg("--image").arg(&self.fixture.manifest);
        c.arg("--kernel").arg(&self.fixture.kernel);
        if let Some(i) = &self.fixture.initrd {
            c.arg("--initrd").arg(i);
        }
        c.args(args);
        c.env_remove("FIRECLAW_CONFIG");
        c
    }

    pub fn fireclaw(&self, ns: &Netns, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_fireclaw"))
            .arg("--root")
            .arg(self.path())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("var/lib/fireclaw/state.db")
    }

    pub fn db(&self) -> Option<fireclaw::state::Db> {
        fireclaw::state::Db::open_read_only(&self.db_path()).unwrap()
    }

    /// The library's view of this root, for tests that drive `vm` directly.
    pub fn host(&self) -> fireclaw::vm::Host {
        let root = fireclaw::root::RootPrefix::new(self.path());
        let config = fireclaw::config::Config::default();
        let engines = fireclaw::vmm::EngineOptions::installed(&root.host(&config.paths.bin_dir));
        fireclaw::vm::Host {
            db_path: root.host(fireclaw::state::db_path(&config.paths.state_dir)),
            engines,
            root,
            config,
        }
    }

    /// Every VM resource fireclaw makes, checked gone: taps, leases, VM rows, disk clones,
    /// sockets/run dirs, per-VM nft chains, and processes mentioning this root.
    pub fn assert_no_leaks(&self, ns: &Netns) {
        let mut leaks = Vec::new();
        let taps = ns.taps();
        if !taps.is_empty() {
            leaks.push(format!("taps {taps:?}"));
        }
        if let Some(db) = self.db() {
            let leases = fireclaw::net::lease::list(&db).unwrap();
            if !leases.is_empty() {
                leaks.push(format!("leases {leases:?}"));
            }
            let vms = fireclaw::vm::record::list(&db).unwrap();
            if !vms.is_empty() {
                leaks.push(format!(
                    "vm rows {:?}",
                    vms.iter().map(|v| &v.id).collect::<Vec<_>>()
                ));
            }
        }
        for dir in ["var/lib/fireclaw/disks", "run/fireclaw/vms"] {
            let p = self.path().join(dir);
            if let Ok(rd) = std::fs::read_dir(&p) {
                let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
                if !names.is_empty() {
                    leaks.push(format!("{dir}: {names:?}"));
                }
            }
        }
        let socks = sh(&format!("find {} -type s", self.path().display()));
        let socks = String::from_utf8_lossy(&socks.stdout).trim().to_string();
        if !socks.is_empty() {
            leaks.push(format!("sockets {socks}"));
        }
        let procs = fireclaw::vm::processes_mentioning(&self.path().to_string_lossy());
        let procs: Vec<_> = procs
            .into_iter()
            .filter(|p| {
                // Our own `timeout`/`ip netns exec` wrappers of a finished run are gone already;
                // anything left is a VMM or a fireclaw.
                std::path::Path::new(&format!("/proc/{p}")).exists()
            })
            .collect();
        if !procs.is_empty() {
            let cmds: Vec<String> = procs
                .iter()
                .map(|p| {
                    String::from_utf8_lossy(
                        &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
                    )
                    .replace('\0', " ")
                })
                .collect();
            leaks.push(format!("processes {cmds:?}"));
        }
        let rules = ns.nft_ruleset();
        if rules.contains("chain vm_") || rules.contains("comment \"fc:") {
            leaks.push(format!("nft rules:\n{rules}"));
        }
        assert!(leaks.is_empty(), "leaked: {}", leaks.join("; "));
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        // A failed test may leave a VMM running; it must not outlive the test.
        for pid in fireclaw::vm::processes_mentioning(&self.path().to_string_lossy()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
