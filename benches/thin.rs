//! `cargo bench --bench thin` (as root, with QEMU and Debian's cloud kernel): a VM's root disk by
//! dm-thin snapshot vs. by copy, for a 64 MiB and a 1 GiB image, inside a TCG guest whose kernel
//! has dm-thin (the host has no device-mapper). Prints medians and ratios side by side; asserts
//! nothing about time. The snapshot's time must not grow with the image; the copy's does.
//!
//! It boots a 3 GiB guest and copies 1 GiB images, so it is a benchmark, not a test: CI does not
//! run it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fireclaw::state::Db;
use fireclaw::storage::thin::ThinEngine;
use support::guest;
use support::thin::{make_image, spec, MODULES};

fn main() {
    if guest::in_guest() {
        return measure();
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only measure in the first.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    guest::reinvoke_in_guest("thin", "kernel", |s| {
        s.modules(MODULES.iter().copied())
            .memory_mib(3072, 2600)
            .timeout(Duration::from_secs(900))
    });
}

fn measure() {
    let tmp = tempfile::tempdir().expect("scratch");
    let db = Db::open(&tmp.path().join("state.db")).expect("db");
    let spec = spec(tmp.path(), "fcbench", 1200, 99);
    let engine = ThinEngine::new(&db, spec.clone()).expect("engine");
    engine.create_pool().expect("pool");
    const ROUNDS: usize = 3;
    let mut rows = Vec::new();
    for (label, mib) in [("64 MiB", 64usize), ("1 GiB", 1024)] {
        let image = tmp.path().join(format!("img-{mib}"));
        make_image(&image, mib, 5);
        // Copy engine first, while the pool is still empty: tmpfs holds one image plus one copy.
        let mut copy_times = Vec::new();
        for r in 0..ROUNDS {
            let dst = tmp.path().join(format!("copy-{mib}-{r}"));
            let t = Instant::now();
            std::fs::copy(&image, &dst).expect("copy");
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .expect("sync copy");
            copy_times.push(t.elapsed());
            std::fs::remove_file(&dst).expect("remove copy");
        }
        engine
            .import_image(&format!("img{mib}"), "d", &image)
            .expect("import");
        std::fs::remove_file(&image).expect("remove image");
        let mut snap_times = Vec::new();
        for r in 0..ROUNDS {
            let vm = format!("bench-{mib}-{r}");
            let t = Instant::now();
            let disk = engine
                .clone_for_vm(&format!("img{mib}"), &vm)
                .expect("snapshot");
            snap_times.push(t.elapsed());
            assert_eq!(disk.size_bytes, (mib as u64) << 20);
            engine.destroy_vm_disk(&vm).expect("destroy");
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        rows.push((label, median(&mut snap_times), median(&mut copy_times)));
    }
    println!("\nper-VM root disk, median of {ROUNDS} (TCG guest; ratios matter, not absolutes)");
    println!(
        "{:<8} {:>14} {:>16} {:>10}",
        "image", "thin snapshot", "reflink/copy", "copy/thin"
    );
    for (label, snap, copy) in &rows {
        println!(
            "{:<8} {:>11.1} ms {:>13.1} ms {:>9.1}x",
            label,
            snap.as_secs_f64() * 1e3,
            copy.as_secs_f64() * 1e3,
            copy.as_secs_f64() / snap.as_secs_f64()
        );
    }
    let snap_growth = rows[1].1.as_secs_f64() / rows[0].1.as_secs_f64();
    let copy_growth = rows[1].2.as_secs_f64() / rows[0].2.as_secs_f64();
    println!(
        "growth 64 MiB -> 1 GiB (16x the data): thin snapshot {snap_growth:.2}x, copy {copy_growth:.2}x"
    );
    engine.destroy_pool().expect("destroy pool");
}
