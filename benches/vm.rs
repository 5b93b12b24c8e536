//! `cargo bench --bench vm` (as root, with qemu): boot-to-SSH-ready and exec round-trip of
//! `fireclaw run` under QEMU (TCG where KVM is unusable), and the per-VM disk clone against a
//! full copy. Prints measurements side by side; asserts nothing about time (machines are noisy).

#[path = "../tests/support/mod.rs"]
mod support;

use support::vm as common;

use std::time::Instant;

use fireclaw::storage::{clone::CloneEngine, DiskEngine};

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only measure in the first.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    clone_vs_copy();
    if !common::prerequisites("vm", true) {
        return;
    }
    let fx = common::fixture();
    let ns = common::Netns::new("bench");
    let root = common::TestRoot::new(&fx);
    let runs: usize = std::env::var("FIRECLAW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut boot, mut exec, mut total, mut start) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        let out = root
            .run_cmd(&ns, &["--json", "--", "true"])
            .output()
            .unwrap();
        let wall = t.elapsed().as_millis() as u64;
        let stderr = common::text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let v: serde_json::Value =
            serde_json::from_str(stderr.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
        boot.push(v["boot_to_ssh_ms"].as_u64().unwrap());
        exec.push(v["exec_ms"].as_u64().unwrap());
        start.push(v["vmm_start_ms"].as_u64().unwrap());
        total.push(wall);
    }
    let accel = fireclaw::vmm::qemu::Accel::detect();
    println!("fireclaw run --vmm qemu ({accel:?}), {runs} runs, medians:");
    println!("  VMM start (spawn + QMP)   {:>6} ms", median(start));
    println!("  boot to SSH ready         {:>6} ms", median(boot.clone()));
    println!("  exec round-trip (`true`)  {:>6} ms", median(exec.clone()));
    println!("  whole run, wall clock     {:>6} ms", median(total));
    root.assert_no_leaks(&ns);
}

fn clone_vs_copy() {
    let dir = tempfile::tempdir_in(
        std::env::var("FIRECLAW_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    let image = dir.path().join("image.ext4");
    // A 1 GiB sparse image holding 128 MiB of data, shaped like a rootfs.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&image).unwrap();
        f.set_len(1 << 30).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for i in 0..128u64 {
            f.seek(SeekFrom::Start((i * 6) << 20)).unwrap();
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let engine = CloneEngine::new(dir.path().join("disks"));
    let t = Instant::now();
    let disk = engine.clone_for_vm(&image, "bench").unwrap();
    let clone = t.elapsed();
    let t = Instant::now();
    let full = dir.path().join("full-copy.ext4");
    {
        // A plain byte-for-byte copy that writes every block, holes included.
        use std::io::{Read, Write};
        let mut src = std::fs::File::open(&image).unwrap();
        let mut dst = std::fs::File::create(&full).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n]).unwrap();
        }
        dst.sync_all().unwrap();
    }
    let copy = t.elapsed();
    println!(
        "per-VM disk of a 1 GiB image (128 MiB data): {:?} clone {:.1} ms vs full copy {:.1} ms ({:.1}x)",
        disk.method,
        clone.as_secs_f64() * 1e3,
        copy.as_secs_f64() * 1e3,
        copy.as_secs_f64() / clone.as_secs_f64().max(1e-9)
    );
    engine.destroy(&disk).unwrap();
}
