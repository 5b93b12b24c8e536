//! `cargo bench --profile dev --bench concurrent` (as root, with qemu and the CI image through
//! FIRECLAW_TEST_*): a runtime with a small warm pool in a temporary root and namespace, then N
//! concurrent `fireclaw -v run -- sh -c 'exit K'` (N from FIRECLAW_BENCH_CONCURRENT, default 50;
//! the warm pool's size from FIRECLAW_BENCH_WARM, default 2), each with a K of its own. Asserts
//! every exit code is its K, that no two live VMs ever shared an id, address, tap or slot (the
//! state database sampled while the runs are in flight), and that stopping the runtime leaves
//! nothing behind; prints throughput, latency percentiles and where the VMs came from.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use fireclaw::runtime::client::Client;
use support::runtime::{install_manifest, wait_ready, GroupGuard, Runtime};
use support::vm::*;

struct RunOutcome {
    want: i32,
    code: Option<i32>,
    latency_ms: u64,
    vm_id: Option<String>,
    origin: Option<String>,
    stderr: String,
}

/// What the sampler saw: the most VMs alive at once, and every collision.
#[derive(Default)]
struct Sampled {
    samples: usize,
    peak_live: usize,
    ids: BTreeSet<String>,
    collisions: Vec<String>,
}

/// `VM <id> from the runtime (origin <o>): ...` from `fireclaw -v run`.
fn parse_origin(stderr: &str) -> Option<(String, String)> {
    let line = stderr
        .lines()
        .find(|l| l.contains(" from the runtime (origin "))?;
    let id = line.split("VM ").nth(1)?.split(' ').next()?.to_string();
    let origin = line
        .split("(origin ")
        .nth(1)?
        .split(')')
        .next()?
        .to_string();
    Some((id, origin))
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Records any value two live VMs share: addresses and leases, host taps (of VMs with a lease:
/// a clone's row names the snapshot's tap, which lives in its slot's namespace), and slots'
/// namespaces, host veths and outside addresses.
fn check_sample(db: &fireclaw::state::Db, seen: &mut Sampled) {
    let (Ok(vms), Ok(slots), Ok(leases)) = (
        fireclaw::vm::record::list(db),
        fireclaw::net::slot::store::list(db),
        fireclaw::net::lease::list(db),
    ) else {
        return;
    };
    seen.samples += 1;
    seen.peak_live = seen.peak_live.max(vms.len());
    let on_bridge: BTreeSet<&str> = leases.iter().map(|l| l.vm_id.as_str()).collect();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |key: String, id: &str, collisions: &mut Vec<String>| {
        if let Some(other) = keys.insert(key.clone(), id.to_string()) {
            if other != id {
                collisions.push(format!("{key} held by {other} and {id}"));
            }
        }
    };
    for v in &vms {
        seen.ids.insert(v.id.clone());
        if let Some(ip) = v.ip {
            claim(format!("address {ip}"), &v.id, &mut seen.collisions);
        }
        if on_bridge.contains(v.id.as_str()) {
            claim(format!("tap {}", v.tap), &v.id, &mut seen.collisions);
        }
    }
    for l in &leases {
        claim(format!("lease {}", l.ip), &l.vm_id, &mut seen.collisions);
    }
    for s in &slots {
        let Some(id) = s.vm_id.as_deref() else {
            continue;
        };
        claim(format!("slot ns {}", s.ns), id, &mut seen.collisions);
        claim(
            format!("slot veth {}", s.host_veth),
            id,
            &mut seen.collisions,
        );
        claim(
            format!("slot address {}", s.outside),
            id,
            &mut seen.collisions,
        );
        claim(format!("slot of {id}"), &s.ns, &mut seen.collisions);
    }
}

fn slot_namespaces() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("fc-slot-"))
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !prerequisites("vm", true) {
        return;
    }
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env_num("FIRECLAW_BENCH_CONCURRENT", 50).max(1);
    let warm = env_num("FIRECLAW_BENCH_WARM", 2);
    // Every run in flight at once, with room for the pool's refills: nothing waits for a lease.
    let max_vms = (n + warm * 2).clamp(32, 250);
    let fx = fixture();
    assert!(
        fx.initrd.is_none(),
        "the benchmark needs the CI image (FIRECLAW_TEST_*)"
    );
    let _group = GroupGuard::new();
    let ns = Netns::new("bconc");
    sh_ok(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1",
        ns.name
    ));
    let root = TestRoot::new(&fx);
    let name = install_manifest(root.path(), &fx.manifest);
    let config = root.path().join("fireclaw.toml");
    std::fs::write(
        &config,
        format!(
            "[pool]\nwarm_per_image = {warm}\nmax_vms = {max_vms}\nvcpus = 1\nmem_mib = 256\n\n[images]\nrecipes = [\"{name}\"]\n"
        ),
    )
    .unwrap();
    let slot_ns_before = slot_namespaces();
    let fireclaw = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_fireclaw"))
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(&config)
            .args(args);
        cmd
    };
    let rt_files = tempfile::tempdir().unwrap();
    let client = Client::new(root.path().join("run/fireclaw/fireclaw.sock"));
    let rt = Runtime::start(fireclaw(&["runtime"]), rt_files.path());
    let t = Instant::now();
    wait_ready(&client, &rt, warm as u32, Duration::from_secs(600));
    let fill_ms = t.elapsed().as_millis();

    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(n + 1);
    let (outcomes, sampled, wall) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = Sampled::default();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Some(db)) = fireclaw::state::Db::open_read_only(&root.db_path()) {
                    check_sample(&db, &mut seen);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        let runs: Vec<_> = (0..n)
            .map(|i| {
                let want = (i % 120) as i32;
                let script = format!("exit {want}");
                let mut cmd = fireclaw(&[
                    "-v",
                    "run",
                    "--image",
                    &name,
                    "--timeout",
                    "900",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ]);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let out = cmd.output().unwrap();
                    let stderr = text(&out.stderr);
                    let parsed = parse_origin(&stderr);
                    RunOutcome {
                        want,
                        code: out.status.code(),
                        latency_ms: t.elapsed().as_millis() as u64,
                        vm_id: parsed.as_ref().map(|p| p.0.clone()),
                        origin: parsed.map(|p| p.1),
                        stderr,
                    }
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let outcomes: Vec<RunOutcome> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        let wall = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        (outcomes, sampler.join().unwrap(), wall)
    });

    let mut failures = Vec::new();
    for o in &outcomes {
        if o.code != Some(o.want) {
            failures.push(format!(
                "wanted exit {}, got {:?}: {}",
                o.want, o.code, o.stderr
            ));
        } else if o.origin.is_none() {
            failures.push(format!("not served by the runtime: {}", o.stderr));
        }
    }
    let ids: BTreeSet<&String> = outcomes.iter().filter_map(|o| o.vm_id.as_ref()).collect();
    if ids.len() != outcomes.iter().filter(|o| o.vm_id.is_some()).count() {
        failures.push("two runs reported the same VM id".into());
    }
    // Not a failure by itself: a VM that lived only between two samples.
    let unsampled = ids.iter().filter(|id| !sampled.ids.contains(**id)).count();
    failures.extend(sampled.collisions.iter().cloned());

    let mut lat: Vec<u64> = outcomes.iter().map(|o| o.latency_ms).collect();
    lat.sort();
    let mut origins: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for o in &outcomes {
        origins
            .entry(o.origin.as_deref().unwrap_or("?"))
            .or_default()
            .push(o.latency_ms);
    }
    let accel = fireclaw::vmm::qemu::Accel::detect();
    println!(
        "QEMU ({accel:?}), 1 vCPU, 256 MiB; runtime with warm_per_image = {warm}, max_vms = {max_vms} (pool filled in {fill_ms} ms)"
    );
    println!(
        "{n} concurrent `fireclaw run -- sh -c 'exit K'`: {} failures, {} distinct VMs",
        failures.len(),
        ids.len()
    );
    println!(
        "  wall {:.1} s, throughput {:.2} runs/s",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    println!(
        "  latency ms: p50 {} p90 {} p99 {} max {} (min {})",
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat[lat.len() - 1],
        lat[0]
    );
    for (origin, mut v) in origins {
        v.sort();
        println!(
            "  origin {origin}: {} runs, latency p50 {} ms, max {} ms",
            v.len(),
            pct(&v, 50.0),
            v[v.len() - 1]
        );
    }
    println!(
        "  most VMs alive at once: {} ({} database samples, {} shared address/lease/tap/slot; {unsampled} runs' VMs lived between samples)",
        sampled.peak_live,
        sampled.samples,
        sampled.collisions.len()
    );
    let (exit, log) = rt.stop();
    assert!(exit.success(), "the runtime failed on SIGTERM:\n{log}");
    let slots_left = root
        .db()
        .map(|db| fireclaw::net::slot::store::list(&db).unwrap().len())
        .unwrap_or(0);
    assert_eq!(slots_left, 0, "slot rows left after SIGTERM");
    let links = sh_ok(&format!("ip -n {} -o link show", ns.name));
    assert!(!links.contains(": fcv"), "slot veths left: {links}");
    let new_ns: Vec<_> = slot_namespaces()
        .difference(&slot_ns_before)
        .cloned()
        .collect();
    assert!(new_ns.is_empty(), "slot namespaces left: {new_ns:?}");
    root.assert_no_leaks(&ns);
    assert!(
        failures.is_empty(),
        "{} of {n} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    println!("  after SIGTERM: no tap, slot, slot namespace, lease, VM row, disk or process left");
}
