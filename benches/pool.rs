//! `cargo bench --bench pool` (as root, with qemu and the CI image through FIRECLAW_TEST_*):
//! side by side in one run, cold boot → first exec result, snapshot restore → first exec result,
//! and warm-pool hand-out → first exec result (the clone restored and its session opened
//! beforehand, as the pool does), with min/median/max and the ratios; then the VMM's resident
//! memory per idle pooled VM beside the guest's memory. Asserts nothing about time.

#[path = "../tests/support/mod.rs"]
mod support;

use support::vm as common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use fireclaw::net::policy::Policy;
use fireclaw::net::slot::SlotPool;
use fireclaw::pool::clone::ClonedVm;
use fireclaw::pool::snapshot::{self, Recipe};
use fireclaw::vm::{ssh, LaunchOptions, Machine};
use fireclaw::vmm::{Boot, VmmKind};

const MEM_MIB: u32 = 256;

fn stats(v: &[u64]) -> (u64, u64, u64) {
    let mut v = v.to_vec();
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn exec_true(session: &ssh::Session) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = session.exec("true", &mut out, &mut err).await.unwrap();
    assert_eq!(exit, ssh::Exit::Code(0));
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !common::prerequisites("vm", true) {
        return;
    }
    let runs: usize = std::env::var("FIRECLAW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let fx = common::fixture();
    let ns = common::Netns::new("bpool");
    common::sh_ok(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1",
        ns.name
    ));
    let root = common::TestRoot::new(&fx);
    let host = root.host();
    let image = fireclaw::vm::image::resolve(
        &fx.manifest.to_string_lossy(),
        root.path(),
        &fireclaw::vm::image::Overrides {
            kernel: Some(fx.kernel.clone()),
            initrd: fx.initrd.clone(),
        },
    )
    .unwrap();
    let recipe = Recipe {
        image: image.clone(),
        vmm: VmmKind::Qemu,
        vcpus: 1,
        mem_mib: MEM_MIB,
        workspace_mib: 0,
    };
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let ns_name = ns.name.clone();
    let h = host.clone();
    std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let timeout = Duration::from_secs(180);
        let (mut cold, mut restore, mut pool) = (vec![], vec![], vec![]);
        let mut phases: Vec<fireclaw::pool::clone::CloneTimings> = vec![];

        for _ in 0..runs {
            let opts = LaunchOptions {
                vmm: VmmKind::Qemu,
                vcpus: 1,
                mem_mib: MEM_MIB,
                policy: Policy::Full,
                image: image.clone(),
                boot: Boot::Kernel,
                extra_disk: None,
            };
            let t = Instant::now();
            let mut m = Machine::create(&h, &opts).unwrap();
            let target = m.ssh_target().unwrap();
            rt.block_on(async {
                let s = ssh::wait_ready(&target, Instant::now() + timeout).await.unwrap();
                exec_true(&s).await;
            });
            cold.push(t.elapsed().as_millis() as u64);
            assert!(m.destroy().is_empty());
        }

        let t = Instant::now();
        let (snap, _) = rt.block_on(snapshot::ensure(&h, &recipe, timeout)).unwrap();
        let build_ms = t.elapsed().as_millis();
        let mut cfg = fireclaw::pool::clone::slot_config(&h, &snap).unwrap();
        cfg.ns_prefix = format!("fcb-{}-s-", std::process::id());
        cfg.host_ns = Some(ns_name);
        let mut slots = SlotPool::new(h.db().unwrap(), cfg).unwrap();
        // Slots are prepared ahead in the pool too: out of the timed path.
        slots.prepare(runs * 2, Policy::Full).unwrap();

        for _ in 0..runs {
            let t = Instant::now();
            let mut c = ClonedVm::start(&h, &snap, &mut slots, Policy::Full).unwrap();
            rt.block_on(async {
                c.ready(timeout).await.unwrap();
                exec_true(c.session.as_ref().unwrap()).await;
            });
            restore.push(t.elapsed().as_millis() as u64);
            phases.push(c.timings.clone());
            assert!(c.destroy().is_empty());
        }

        // The pool's work happens before the request: restore, identity, session open.
        let mut ready: Vec<ClonedVm> = (0..runs)
            .map(|_| {
                let mut c = ClonedVm::start(&h, &snap, &mut slots, Policy::Full).unwrap();
                rt.block_on(c.ready(timeout)).unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let rss: Vec<u64> = ready
            .iter()
            .map(|c| rss_kib(c.vmm_pid().unwrap()))
            .collect();
        let mut queue: std::collections::VecDeque<ClonedVm> = ready.drain(..).collect();
        for _ in 0..runs {
            let t = Instant::now();
            let mut c = queue.pop_front().unwrap();
            rt.block_on(exec_true(c.session.as_ref().unwrap()));
            pool.push(t.elapsed().as_millis() as u64);
            assert!(c.destroy().is_empty());
        }
        slots.close().unwrap();

        let accel = fireclaw::vmm::qemu::Accel::detect();
        println!("QEMU ({accel:?}), 1 vCPU, {MEM_MIB} MiB, {runs} runs each; first exec result of `true`:");
        println!("  {:<28} {:>7} {:>7} {:>7}", "", "min ms", "median", "max");
        let (cmin, cmed, cmax) = stats(&cold);
        let (rmin, rmed, rmax) = stats(&restore);
        let (pmin, pmed, pmax) = stats(&pool);
        println!("  {:<28} {cmin:>7} {cmed:>7} {cmax:>7}", "cold boot");
        println!("  {:<28} {rmin:>7} {rmed:>7} {rmax:>7}", "restore (slot prepared)");
        println!("  {:<28} {pmin:>7} {pmed:>7} {pmax:>7}", "pool hand-out");
        let phase = |f: fn(&fireclaw::pool::clone::CloneTimings) -> u64| {
            stats(&phases.iter().map(f).collect::<Vec<_>>()).1
        };
        println!(
            "  restore phases (medians, ms): slot {}, disk clone {}, VMM restore {}, SSH ready {}, identity {}",
            phase(|t| t.slot_ms),
            phase(|t| t.disk_ms),
            phase(|t| t.vmm_restore_ms),
            phase(|t| t.ssh_ms),
            phase(|t| t.identity_ms)
        );
        println!(
            "  ratios of medians: restore {:.1}x, pool hand-out {:.1}x faster than cold boot",
            cmed as f64 / rmed.max(1) as f64,
            cmed as f64 / pmed.max(1) as f64
        );
        println!("  snapshot build (cold boot + snapshot + disk copy): {build_ms} ms");
        let (smin, smed, smax) = stats(&rss);
        println!(
            "  VMM resident memory per idle pooled VM: min {} MiB, median {} MiB, max {} MiB (guest memory {MEM_MIB} MiB)",
            smin / 1024,
            smed / 1024,
            smax / 1024
        );
        snapshot::remove(&h, &snap.row.id).unwrap();
    })
    .join()
    .unwrap();
    root.assert_no_leaks(&ns);
}
