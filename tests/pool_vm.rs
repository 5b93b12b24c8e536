//! Base snapshots and restored clones with real guests under QEMU, in a namespace the test makes
//! (the "host": fireclaw's bridge and nft table, as provision leaves them). Tier `vm`.

mod support;

use std::os::fd::AsFd;
use std::time::Duration;

use fireclaw::net::policy::Policy;
use fireclaw::net::slot::SlotPool;
use fireclaw::pool::clone::ClonedVm;
use fireclaw::pool::snapshot::{self, Recipe};
use fireclaw::pool::store::{self, SnapshotState};
use support::vm::*;

/// Runs `f` on a thread inside `ns` with a tokio runtime whose threads inherit the namespace.
fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let joined = std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        f(&rt)
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn recipe(root: &TestRoot) -> Recipe {
    let fx = &root.fixture;
    let image = fireclaw::vm::image::resolve(
        &fx.manifest.to_string_lossy(),
        root.path(),
        &fireclaw::vm::image::Overrides {
            kernel: Some(fx.kernel.clone()),
            initrd: fx.initrd.clone(),
        },
    )
    .unwrap();
    Recipe {
        image,
        vmm: fireclaw::vmm::VmmKind::Qemu,
        vcpus: 1,
        mem_mib: 256,
        workspace_mib: 0,
    }
}

fn snapshot_dirs(root: &TestRoot) -> Vec<String> {
    std::fs::read_dir(root.path().join("var/lib/fireclaw/snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn a_snapshot_from_another_kernel_or_image_is_refused_by_name_and_rebuilt() {
    if !prerequisites("vm", true) {
        return;
    }
    let _l = vm_lock();
    let ns = Netns::new("psnap");
    let root = TestRoot::new(&fixture());
    let host = root.host();
    let recipe = recipe(&root);
    let timeout = Duration::from_secs(180);

    let (h, r) = (host.clone(), recipe.clone());
    let (first, refused) = in_ns(&ns, move |rt| {
        rt.block_on(snapshot::ensure(&h, &r, timeout)).unwrap()
    });
    assert!(refused.is_none());
    assert_eq!(first.row.state, SnapshotState::Ready);
    for f in ["vmstate", "disk", "machine.json"] {
        assert!(first.row.dir.join(f).exists(), "{f} missing");
    }
    let tag = first.row.tag.clone().unwrap();
    assert_eq!(tag.image_sha256.len(), 64);
    assert!(
        tag.engine_version.contains("QEMU"),
        "{}",
        tag.engine_version
    );
    // The VM it was taken from is gone; only the snapshot stays.
    root.assert_no_leaks(&ns);
    assert_eq!(snapshot_dirs(&root), vec![first.row.id.clone()]);

    // The same host again: the snapshot is reused, not rebuilt.
    let (h, r) = (host.clone(), recipe.clone());
    let (again, refused) = in_ns(&ns, move |rt| {
        rt.block_on(snapshot::ensure(&h, &r, timeout)).unwrap()
    });
    assert!(refused.is_none());
    assert_eq!(again.row.id, first.row.id);

    // Pretend it was made from another kernel and image.
    let mut old = tag.clone();
    old.kernel_sha256 = "0".repeat(64);
    old.image_sha256 = "1".repeat(64);
    host.db()
        .unwrap()
        .conn()
        .execute(
            "UPDATE snapshots SET tag = ?1 WHERE id = ?2",
            rusqlite::params![serde_json::to_string(&old).unwrap(), first.row.id],
        )
        .unwrap();
    let (h, r) = (host.clone(), recipe.clone());
    let (second, refused) = in_ns(&ns, move |rt| {
        rt.block_on(snapshot::ensure(&h, &r, timeout)).unwrap()
    });
    let refused = refused.expect("the mismatch is refused");
    assert!(
        refused.contains("kernel: the snapshot has 0000000000000000")
            && refused.contains("image: the snapshot has 1111111111111111")
            && !refused.contains("CPU"),
        "{refused}"
    );
    assert_ne!(second.row.id, first.row.id);
    let db = host.db().unwrap();
    assert!(store::get(&db, &first.row.id).unwrap().is_none());
    assert_eq!(
        store::ready(&db, &recipe.key()).unwrap().unwrap().id,
        second.row.id
    );
    assert_eq!(snapshot_dirs(&root), vec![second.row.id.clone()]);
    root.assert_no_leaks(&ns);

    // The CLI lists and removes it.
    let out = root.fireclaw(&ns, &["snapshot", "ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains(&second.row.id) && listing.contains("ready"),
        "{listing}"
    );
    let out = root.fireclaw(&ns, &["snapshot", "rm", &second.row.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = root.fireclaw(&ns, &["snapshot", "rm", &second.row.id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no snapshot"),
        "{}",
        text(&out.stderr)
    );
    assert!(snapshot_dirs(&root).is_empty());
    let left = store::list(&host.db().unwrap()).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

fn slot_pool(ns: &str, host: &fireclaw::vm::Host, snap: &snapshot::Snapshot) -> SlotPool {
    let mut cfg = fireclaw::pool::clone::slot_config(host, snap).unwrap();
    cfg.ns_prefix = slot_prefix();
    cfg.host_ns = Some(ns.to_string());
    SlotPool::new(host.db().unwrap(), cfg).unwrap()
}

fn slot_prefix() -> String {
    format!("fct-{}-s-", std::process::id())
}

/// No slot row, no slot namespace, no host veth of a slot.
fn assert_no_slots(ns: &Netns, host: &fireclaw::vm::Host) {
    let rows = fireclaw::net::slot::store::list(&host.db().unwrap()).unwrap();
    assert!(rows.is_empty(), "slot rows left: {rows:?}");
    let names = sh_ok("ip netns list");
    assert!(
        !names.contains(&slot_prefix()),
        "slot namespaces left: {names}"
    );
    let links = sh_ok(&format!("ip -n {} -o link show", ns.name));
    assert!(!links.contains(": fcv"), "slot veths left: {links}");
}

/// Runs a command on a ready clone: (exit, stdout).
fn exec(
    rt: &tokio::runtime::Runtime,
    c: &ClonedVm,
    cmd: &str,
) -> (fireclaw::vm::ssh::Exit, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = rt.block_on(c.exec(cmd, &mut out, &mut err)).unwrap();
    (exit, format!("{}{}", text(&out), text(&err)))
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn two_clones_of_one_snapshot_run_side_by_side_and_are_not_twins() {
    if !prerequisites("vm", true) {
        return;
    }
    let _l = vm_lock();
    let ns = Netns::new("pclone");
    sh_ok(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1",
        ns.name
    ));
    let root = TestRoot::new(&fixture());
    let host = root.host();
    let recipe = recipe(&root);
    let timeout = Duration::from_secs(180);
    let (h, r) = (host.clone(), recipe.clone());
    let ns_name = ns.name.clone();
    let snap_id = in_ns(&ns, move |rt| {
        let (snap, _) = rt.block_on(snapshot::ensure(&h, &r, timeout)).unwrap();
        let mut slots = slot_pool(&ns_name, &h, &snap);
        let mut a = ClonedVm::start(&h, &snap, &mut slots, Policy::None).unwrap();
        let mut b = ClonedVm::start(&h, &snap, &mut slots, Policy::None).unwrap();
        rt.block_on(a.ready(timeout)).unwrap();
        rt.block_on(b.ready(timeout)).unwrap();
        assert_ne!(a.outside(), b.outside());
        println!("restore timings: {:?} / {:?}", a.timings, b.timings);
        let probe = "cat /proc/sys/kernel/random/uuid; cat /etc/machine-id; date +%s; hostname";
        let mut seen = Vec::new();
        for c in [&a, &b] {
            let (exit, out) = exec(rt, c, probe);
            assert_eq!(exit, fireclaw::vm::ssh::Exit::Code(0), "{out}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 4, "{out}");
            let guest_clock: i64 = lines[2].trim().parse().unwrap();
            let host_clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(
                (guest_clock - host_clock).abs() <= 5,
                "clone clock {guest_clock} vs host {host_clock}"
            );
            assert_eq!(lines[3], format!("fc-{}", c.id));
            seen.push((lines[0].to_string(), lines[1].to_string()));
        }
        assert_ne!(seen[0].0, seen[1].0, "random UUIDs are equal");
        assert_ne!(seen[0].1, seen[1].1, "machine-ids are equal");
        assert!(a.destroy().is_empty());
        assert!(b.destroy().is_empty());

        // A clone its owner lost (as if fireclaw died): gc removes its VMM, disk, run dir and
        // row, and releases its slot, which names it.
        let lost = ClonedVm::start(&h, &snap, &mut slots, Policy::Local).unwrap();
        let lost_id = lost.id.clone();
        std::mem::forget(lost);
        let report = fireclaw::vm::gc(&h, false, Some(&lost_id)).unwrap();
        assert_eq!(report.removed, vec![lost_id]);
        let cfg = slots.config().clone();
        let released = fireclaw::pool::clone::release_slots_of_gone_vms_in(&h, cfg).unwrap();
        assert_eq!(released.len(), 1, "{released:?}");
        slots.close().unwrap();
        snap.row.id
    });
    assert_no_slots(&ns, &host);
    root.assert_no_leaks(&ns);
    snapshot::remove(&host, &snap_id).unwrap();
}
