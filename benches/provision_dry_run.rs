//! `provision --dry-run` on a provisioned host (target: well under a second), measured side by side
//! with a bare `fireclaw --version` (process start-up) in one run, alternating A B A B so machine
//! drift hits both. Run as root: `cargo bench --bench provision_dry_run`.
//!
//! The host is a root prefix provisioned with the steps that need nothing from outside this machine,
//! inside a private network namespace that the benchmark creates and deletes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 21;

fn bin() -> std::path::PathBuf {
    // cargo bench builds the binary next to the bench's deps directory.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("fireclaw")
}

fn ok(c: &mut Command) {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("provision_dry_run: needs root (it provisions a root prefix in a network namespace); skipped");
        return;
    }
    let bin = bin();
    assert!(
        bin.is_file(),
        "build the binary first: cargo build --release ({})",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=12\nPRETTY_NAME=Debian\n",
    )
    .expect("os-release");
    let ns = format!("fcbench-{}", std::process::id());
    ok(Command::new("ip").args(["netns", "add", &ns]));
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns])
            .arg(&bin)
            .arg("--root")
            .arg(&root)
            .args(args);
        c
    };
    let steps = ["--only", "layout,network,ngircd,systemd"];
    ok(&mut in_ns(&["provision", steps[0], steps[1]]));

    let mut dry = Vec::new();
    let mut version = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        ok(&mut in_ns(&["provision", "--dry-run", steps[0], steps[1]]));
        dry.push(t.elapsed());
        let t = Instant::now();
        ok(&mut in_ns(&["--version"]));
        version.push(t.elapsed());
    }
    ok(&mut in_ns(&["uninstall"]));
    let _ = Command::new("ip").args(["netns", "delete", &ns]).status();

    let (d, v) = (median(dry), median(version));
    println!("provision --dry-run on a provisioned host, {RUNS} runs each, alternating:");
    println!(
        "  dry-run (plans nothing)     median {:>8.1} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "  fireclaw --version          median {:>8.1} ms",
        v.as_secs_f64() * 1e3
    );
    println!(
        "  ratio dry-run / start-up    {:>8.2}x",
        d.as_secs_f64() / v.as_secs_f64()
    );
}
