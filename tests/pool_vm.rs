//! Base snapshots and restored clones with real guests under QEMU, in a namespace the test makes
//! (the "host": fireclaw's bridge and nft table, as provision leaves them). Tier `vm`.

mod support;

use std::os::fd::AsFd;
use std::time::Duration;

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

    snapshot::remove(&host, &second.row.id).unwrap();
    assert!(snapshot_dirs(&root).is_empty());
    assert!(store::list(&db).unwrap().is_empty());
}
