//! Shared by the integration tests: tier gating, network namespaces, tree snapshots.
#![allow(dead_code)]

/// The agent system's VM-tier world (agents_vm and the agents benchmark).
pub mod agents;
/// Run a command inside a guest kernel that has a feature the host lacks (tier `kernel`).
pub mod guest;
/// Minirootfs-shaped trees and image inspection for the image tests.
pub mod image;
/// The runtime's tests: the socket group, a started runtime.
pub mod runtime;
/// The system tier's Debian guest with systemd as PID 1, driven over SSH.
pub mod system;
/// The thin pool's fixtures (kernel tier and the thin benchmark).
pub mod thin;
/// The VM tests' guest fixture, namespace with a bridge, and temporary root.
pub mod vm;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Checks a tier test's prerequisites; a missing one fails the test.
///
/// Tier tests (host, vm, kernel) carry `#[ignore = "<tier> tier: ..."]`, so a plain `cargo test`
/// lists them as ignored in its own summary and never counts them as passed. They run only when
/// asked for (`cargo test -- --include-ignored`, as `.ci/run` does, or `--ignored`), and a test
/// that was asked for and cannot run is a failure: a silent pass would hide a broken machine.
/// Returns true so call sites read `if !require(..) { return; }` in the tests written before
/// this rule; it never returns false.
pub fn require(tier: &str, checks: &[(&str, bool)]) -> bool {
    let missing: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "{tier} tier prerequisites missing: {} (install them, or run the tests without --include-ignored to leave this tier out)",
        missing.join(", ")
    );
    true
}

/// [`require`] for the common case: root and some commands on PATH.
pub fn tier(name: &str, needs_root: bool, commands: &[&str]) -> bool {
    let mut checks = vec![("root", !needs_root || is_root())];
    checks.extend(commands.iter().map(|c| (*c, command_exists(c))));
    require(name, &checks)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Alias kept for the image tests' vocabulary.
pub fn have(cmd: &str) -> bool {
    command_exists(cmd)
}

pub fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fireclaw")
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that exists for the guard's lifetime, with loopback up.
pub struct NetNs {
    pub name: String,
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        fireclaw_testkit::netns::reap_orphans("fct");
        let name = format!(
            "fct-{tag}-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        run_ok(&mut ns.cmd("ip", &["link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// Runs `f` on a thread that has joined the namespace (setns affects only the calling thread).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    pub fn links_json(&self) -> serde_json::Value {
        let text = run_ok(&mut self.cmd("ip", &["-j", "link", "show"]));
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("ip -j link");
        // Counters and timestamps change by themselves; compare what provisioning can change.
        if let Some(links) = v.as_array_mut() {
            for l in links {
                if let Some(o) = l.as_object_mut() {
                    o.retain(|k, _| {
                        [
                            "ifname",
                            "flags",
                            "link_type",
                            "address",
                            "operstate",
                            "mtu",
                        ]
                        .contains(&k.as_str())
                    });
                }
            }
        }
        v
    }

    pub fn ruleset_json(&self) -> serde_json::Value {
        let text = run_ok(&mut self.cmd("nft", &["-j", "list", "ruleset"]));
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("nft -j");
        // The metainfo object carries nft's version only.
        if let Some(arr) = v.get_mut("nftables").and_then(|a| a.as_array_mut()) {
            arr.retain(|o| o.get("metainfo").is_none());
        }
        v
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Every path under `root` with its type, mode, owner and content digest.
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            let desc = if meta.is_dir() {
                walk(root, &p, out);
                format!("dir {mode:o} {}:{}", meta.uid(), meta.gid())
            } else if meta.file_type().is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p).expect("readlink").display()
                )
            } else {
                let bytes = std::fs::read(&p).expect("read");
                format!(
                    "file {mode:o} {}:{} {}",
                    meta.uid(),
                    meta.gid(),
                    hex::encode(sha2::Sha256::digest(&bytes))
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

/// A gzip tarball with raw entry names (so tests can write hostile ones).
pub fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gz")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
