//! Tier `kernel`: fireclaw's dm-thin engine exercised for real, inside a TCG guest running Debian's
//! kernel (the host has no device-mapper). Each test re-runs itself in the guest (see
//! tests/support/guest.rs); the in-guest half drives `fireclaw::storage::thin` directly.
//!
//! Run: `cargo test --test kernel_thin -- --include-ignored --nocapture` (as root).

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fireclaw::state::Db;
use fireclaw::storage::thin::{self, PoolSpec, ThinEngine, ThinError};
use support::guest;
use support::thin::{make_image, spec, MODULES};

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).expect("open disk");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).expect("read disk");
    buf
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open disk for writing");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(data).expect("write disk");
    f.sync_all().expect("sync disk");
}

/// dm devices whose name starts with `prefix`, via the kernel (not udev).
fn dm_devices(prefix: &str) -> Vec<String> {
    let dm = devicemapper::DM::new().expect("device-mapper in the guest");
    dm.list_devices()
        .expect("list dm devices")
        .into_iter()
        .map(|(n, ..)| n.to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn thin_pool_lifecycle_in_guest() {
    if !guest::in_guest() {
        return guest::reinvoke_in_guest("thin_pool_lifecycle_in_guest", "kernel", |s| {
            s.modules(MODULES.iter().copied()).memory_mib(1024, 600)
        });
    }
    let tmp = tempfile::tempdir().expect("scratch dir");
    let db = Db::open(&tmp.path().join("state.db")).expect("state db");
    let spec = spec(tmp.path(), "fctest", 256, 90);
    let engine = ThinEngine::new(&db, spec.clone()).expect("engine");

    // Pool: created once; a second create is a no-op.
    engine.create_pool().expect("create pool");
    engine.create_pool().expect("create pool again");
    assert_eq!(dm_devices("fctest-"), vec!["fctest-pool"]);
    let usage = engine.usage().expect("usage");
    assert!(
        usage.discard_passdown && usage.error_if_no_space,
        "{usage:?}"
    );
    assert_eq!(usage.total_data_blocks, 256 * 2048 / 128);
    println!(
        "pool up: data {}/{} blocks, metadata {}/{}",
        usage.used_data_blocks,
        usage.total_data_blocks,
        usage.used_metadata_blocks,
        usage.total_metadata_blocks
    );

    // Image import: once per digest.
    let image = tmp.path().join("base.img");
    make_image(&image, 8, 0);
    let v1 = engine
        .import_image("base", "digest-1", &image)
        .expect("import");
    let again = engine
        .import_image("base", "digest-1", &image)
        .expect("re-import");
    assert_eq!(v1.dev_id, again.dev_id, "same digest: same volume");
    assert_eq!(
        dm_devices("fctest-"),
        vec!["fctest-pool"],
        "origin left inactive"
    );

    // Snapshots: each reads the image; writes stay in their own disk.
    let a = engine.clone_for_vm("base", "vm-a").expect("clone a");
    let b = engine.clone_for_vm("base", "vm-b").expect("clone b");
    assert_eq!(a.size_bytes, 8 << 20);
    assert_eq!(
        read_at(&a.path, 3 << 20, 4096),
        read_at(&image, 3 << 20, 4096)
    );
    write_at(&a.path, 3 << 20, &[0xAA; 4096]);
    assert_eq!(read_at(&a.path, 3 << 20, 4096), vec![0xAA; 4096]);
    assert_eq!(
        read_at(&b.path, 3 << 20, 4096),
        read_at(&image, 3 << 20, 4096)
    );
    let c = engine.clone_for_vm("base", "vm-c").expect("clone c");
    assert_eq!(
        read_at(&c.path, 3 << 20, 4096),
        read_at(&image, 3 << 20, 4096),
        "the origin is untouched by a snapshot's writes"
    );
    assert!(matches!(
        engine.clone_for_vm("base", "vm-a"),
        Err(ThinError::DiskExists { .. })
    ));
    assert!(matches!(
        engine.clone_for_vm("nope", "vm-x"),
        Err(ThinError::UnknownImage { .. })
    ));

    // Busy: a disk that is open cannot be destroyed, and the error says so.
    {
        let _held = std::fs::File::open(&b.path).expect("hold disk b");
        let err = engine.destroy_vm_disk("vm-b").expect_err("busy disk");
        assert!(matches!(err, ThinError::Busy { .. }), "{err}");
        println!("busy disk refused: {err}");
    }
    engine.destroy_vm_disk("vm-b").expect("destroy b");
    engine
        .destroy_vm_disk("vm-b")
        .expect("destroying twice is fine");
    assert!(!dm_devices("fctest-").contains(&"fctest-vm-vm-b".to_string()));

    // Simulated reboot: every dm and loop device goes; the database brings them back.
    engine.deactivate().expect("deactivate");
    assert!(dm_devices("fctest-").is_empty());
    assert!(thin::loops_of(&spec.data_file()).is_empty());
    assert!(thin::loops_of(&spec.metadata_file()).is_empty());
    drop(engine);
    let engine = ThinEngine::new(&db, spec.clone()).expect("engine after reboot");
    assert!(
        engine.ensure_active().expect("re-activate"),
        "had to re-activate"
    );
    assert!(
        !engine.ensure_active().expect("re-activate again"),
        "idempotent"
    );
    let a = engine.activate_vm_disk("vm-a").expect("re-activate vm-a");
    assert_eq!(
        read_at(&a.path, 3 << 20, 4096),
        vec![0xAA; 4096],
        "data survived"
    );

    // Image update: a new volume; running VMs keep the old one until they go.
    let image2 = tmp.path().join("base2.img");
    make_image(&image2, 8, 3);
    let v2 = engine
        .import_image("base", "digest-2", &image2)
        .expect("import v2");
    assert_ne!(v1.dev_id, v2.dev_id);
    let d = engine.clone_for_vm("base", "vm-d").expect("clone d");
    assert_eq!(read_at(&d.path, 1 << 20, 64), read_at(&image2, 1 << 20, 64));
    assert_eq!(read_at(&a.path, 1 << 20, 64), read_at(&image, 1 << 20, 64));
    let volumes = |e: &ThinEngine| -> Vec<u64> {
        thin::store::volumes(&db, &e.spec().name)
            .expect("volumes")
            .iter()
            .map(|v| v.dev_id)
            .collect()
    };
    assert!(
        volumes(&engine).contains(&v1.dev_id),
        "old volume kept while used"
    );
    engine.destroy_vm_disk("vm-a").expect("destroy a");
    engine.destroy_vm_disk("vm-c").expect("destroy c");
    assert_eq!(
        volumes(&engine),
        vec![v2.dev_id],
        "old volume gone with its last user"
    );

    // gc: a disk whose owner process died is an orphan; a live one stays.
    let e = engine.clone_for_vm("base", "vm-e").expect("clone e");
    let mut child = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn");
    let dead_pid = child.id();
    child.wait().expect("reap");
    db.conn()
        .execute(
            "UPDATE thin_snapshots SET owner_pid = ?1 WHERE vm_id = 'vm-e'",
            [dead_pid],
        )
        .expect("fake a crashed owner");
    let report = engine.gc(&thin::owner_alive).expect("gc");
    assert_eq!(report.snapshots, vec!["vm-e".to_string()]);
    assert!(
        dm_devices("fctest-vm-vm-e").is_empty(),
        "{} removed",
        e.dm_name
    );
    assert!(
        engine.activate_vm_disk("vm-d").is_ok(),
        "live disk kept by gc"
    );

    // Low space: past the threshold a new VM disk is refused with a clear message; freed blocks
    // go back to the pool and (discard passdown) to the host file.
    let strict = ThinEngine::new(&db, spec_with_limit(&spec, 15)).expect("strict engine");
    let before_fill = allocated_bytes(&spec.data_file());
    let big: Vec<u8> = (0..(32usize << 20)).map(|i| (i % 251) as u8 | 1).collect();
    write_at(&d.path, 0, &big[..8 << 20]);
    let f = strict.clone_for_vm("base", "vm-f").expect("room for vm-f");
    // The snapshot is as big as the image (8 MiB); fill the pool from a larger scratch volume.
    let filler_img = tmp.path().join("filler.img");
    std::fs::File::create(&filler_img)
        .and_then(|f| f.set_len(40 << 20))
        .expect("filler image");
    engine
        .import_image("filler", "f1", &filler_img)
        .expect("import filler");
    let g = engine.clone_for_vm("filler", "vm-g").expect("clone filler");
    write_at(&g.path, 0, &big);
    let usage = strict.usage().expect("usage");
    println!(
        "filled: data {:.1}% used ({} blocks)",
        usage.data_percent(),
        usage.used_data_blocks
    );
    let err = strict
        .clone_for_vm("base", "vm-h")
        .expect_err("refused past threshold");
    assert!(matches!(err, ThinError::Space(_)), "{err}");
    assert!(
        err.to_string().contains("refusing to start another VM"),
        "{err}"
    );
    println!("low space refused: {err}");
    assert!(strict
        .vm_disks()
        .expect("disks")
        .iter()
        .all(|s| s.vm_id != "vm-h"));
    let used_full = strict.usage().expect("usage").used_data_blocks;
    let file_full = allocated_bytes(&spec.data_file());
    engine.destroy_vm_disk("vm-g").expect("destroy g");
    let used_after = strict.usage().expect("usage").used_data_blocks;
    let file_after = allocated_bytes(&spec.data_file());
    println!(
        "after destroy: pool blocks {used_full} -> {used_after}, data file {} -> {} KiB (started at {} KiB)",
        file_full / 1024,
        file_after / 1024,
        before_fill / 1024
    );
    assert!(used_after < used_full, "pool blocks freed");
    assert!(file_after < file_full, "discard reached the host file");
    strict.clone_for_vm("base", "vm-h").expect("room again");
    drop(f);

    // Uninstall: nothing of ours is left: no dm device, no loop device, no file.
    engine.destroy_pool().expect("destroy pool");
    assert!(dm_devices("fctest-").is_empty());
    assert!(thin::loops_of(&spec.data_file()).is_empty());
    assert!(!spec.dir.exists(), "pool directory removed");
    assert!(thin::store::pool(&db, "fctest")
        .expect("pool row")
        .is_none());
}

fn spec_with_limit(spec: &PoolSpec, max_used_percent: u8) -> PoolSpec {
    PoolSpec {
        max_used_percent,
        ..spec.clone()
    }
}

/// Concurrent VM starts: many threads (each with its own database connection and dm handle, as
/// separate processes would have) clone, destroy and re-activate at once; none may fail with
/// "device or resource busy" or collide on a device id.
#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn concurrent_starts_do_not_race_in_guest() {
    if !guest::in_guest() {
        return guest::reinvoke_in_guest("concurrent_starts_do_not_race_in_guest", "kernel", |s| {
            s.modules(MODULES.iter().copied())
                .memory_mib(1024, 400)
                .cpus(2)
        });
    }
    let tmp = tempfile::tempdir().expect("scratch");
    let db_path = tmp.path().join("state.db");
    let spec = spec(tmp.path(), "fcconc", 128, 90);
    {
        let db = Db::open(&db_path).expect("db");
        let engine = ThinEngine::new(&db, spec.clone()).expect("engine");
        engine.create_pool().expect("pool");
        let image = tmp.path().join("img");
        make_image(&image, 4, 1);
        engine.import_image("base", "d", &image).expect("import");
        // Start from a "rebooted" host so the threads also race to re-activate the pool.
        engine.deactivate().expect("deactivate");
    }
    const N: usize = 8;
    // A tool that does not take fireclaw's lock (losetup, another manager) grabbing free loop
    // devices at the same time: the attach that loses the race must retry, not fail with EBUSY.
    let foreign_file = tmp.path().join("foreign.img");
    std::fs::File::create(&foreign_file)
        .and_then(|f| f.set_len(1 << 20))
        .expect("foreign file");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let foreign = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let control = loopdev::LoopControl::open().expect("loop-control");
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 200 {
                if let Ok(ld) = control.next_free() {
                    if ld.attach_file(&foreign_file).is_ok() {
                        let _ = ld.detach();
                    }
                }
                rounds += 1;
            }
            rounds
        })
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let spec = spec.clone();
            let db_path = db_path.clone();
            std::thread::spawn(move || -> Result<PathBuf, String> {
                let db = Db::open(&db_path).map_err(|e| e.to_string())?;
                let engine = ThinEngine::new(&db, spec).map_err(|e| e.to_string())?;
                let disk = engine
                    .clone_for_vm("base", &format!("vm-{i}"))
                    .map_err(|e| format!("clone vm-{i}: {e}"))?;
                write_at(&disk.path, 0, format!("vm-{i}").as_bytes());
                Ok(disk.path)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let foreign_rounds = foreign.join().expect("foreign thread");
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    println!(
        "{N} concurrent clones (with one re-activation, against {foreign_rounds} foreign loop attaches) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let db = Db::open(&db_path).expect("db");
    let engine = ThinEngine::new(&db, spec.clone()).expect("engine");
    let disks = engine.vm_disks().expect("disks");
    let mut ids: Vec<u64> = disks.iter().map(|d| d.dev_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), N, "distinct ids");
    for i in 0..N {
        let disk = engine.activate_vm_disk(&format!("vm-{i}")).expect("disk");
        let want = format!("vm-{i}");
        assert_eq!(
            read_at(&disk.path, 0, want.len()),
            want.as_bytes(),
            "own data"
        );
    }
    drop(engine);
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let spec = spec.clone();
            let db_path = db_path.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let db = Db::open(&db_path).map_err(|e| e.to_string())?;
                let engine = ThinEngine::new(&db, spec).map_err(|e| e.to_string())?;
                engine
                    .destroy_vm_disk(&format!("vm-{i}"))
                    .map_err(|e| format!("destroy vm-{i}: {e}"))
            })
        })
        .collect();
    for h in handles {
        let r = h.join().expect("thread");
        assert!(r.is_ok(), "{r:?}");
    }
    let engine = ThinEngine::new(&db, spec.clone()).expect("engine");
    assert!(engine.vm_disks().expect("disks").is_empty());
    engine.destroy_pool().expect("destroy pool");
    assert!(dm_devices("fcconc-").is_empty());
    assert!(thin::loops_of(&spec.data_file()).is_empty());
}

/// The provisioning path end to end, with fireclaw's own plan engine and commands: the thinpool
/// step plans, applies and journals the pool and the image import; a second plan is empty; after a
/// simulated reboot `fireclaw gc` re-activates the pool from the state database; a rebuilt image
/// gets a new volume; uninstall reverses the journal and leaves no device or file.
#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn provision_journal_and_uninstall_in_guest() {
    use fireclaw::plan::{self, apply, Ctx, Selection, Step};
    use fireclaw::provision::{artifacts, state_db};
    use fireclaw::root::RootPrefix;

    if !guest::in_guest() {
        return guest::reinvoke_in_guest(
            "provision_journal_and_uninstall_in_guest",
            "kernel",
            |s| s.modules(MODULES.iter().copied()).memory_mib(1024, 400),
        );
    }
    let tmp = tempfile::tempdir().expect("scratch");
    let root = RootPrefix::new(tmp.path());
    let mut config = fireclaw::config::Config::default();
    config.thinpool.data_mib = 128;
    config.thinpool.metadata_mib = 16;
    config.images.recipes = vec!["base".into()];
    let image = root.host(format!("{}/base.ext4", config.paths.image_dir));
    std::fs::create_dir_all(image.parent().expect("image dir")).expect("image dir");
    make_image(&image, 4, 9);
    let steps: Vec<Box<dyn Step>> = vec![
        Box::new(state_db::StateDb),
        Box::new(artifacts::ThinPoolStep),
    ];
    let make = |db: Option<&Db>| {
        let ctx = Ctx::new(&root, &config, db, true);
        plan::make_plan(&steps, &ctx, &Selection::default()).expect("plan")
    };
    let db_path = root.host(fireclaw::state::db_path(&config.paths.state_dir));

    let first = make(None);
    let described: Vec<String> = first
        .steps
        .iter()
        .flat_map(|s| s.plan.actions.iter().map(|a| a.describe()))
        .collect();
    println!("plan:\n  {}", described.join("\n  "));
    assert_eq!(described.len(), 3, "{described:?}");
    assert!(described[1].contains("thin-pool fireclaw-pool"));
    assert!(described[2].contains("import image \"base\""));
    apply::apply(&first, &root, &config, &db_path, &fireclaw::report::Silent).expect("apply");
    assert_eq!(dm_devices("fireclaw-"), vec!["fireclaw-pool"]);

    let ro = Db::open_read_only(&db_path).expect("db").expect("exists");
    assert!(make(Some(&ro)).is_empty(), "second provision plans nothing");
    drop(ro);

    // Reboot: devices gone; the next command that needs the pool brings it back.
    {
        let db = Db::open(&db_path).expect("db");
        let spec = fireclaw::storage::thin::recorded::recorded_spec(
            &db,
            &root,
            &config.paths.state_dir,
            config.thinpool.max_used_percent,
        )
        .expect("spec");
        ThinEngine::new(&db, spec)
            .expect("engine")
            .deactivate()
            .expect("deactivate");
    }
    assert!(dm_devices("fireclaw-").is_empty());
    let fireclaw = env!("CARGO_BIN_EXE_fireclaw");
    let cfg_file = tmp.path().join("fireclaw.toml");
    std::fs::write(&cfg_file, toml::to_string(&config).expect("toml")).expect("config file");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(fireclaw)
            .args(args)
            .arg("--root")
            .arg(tmp.path())
            .arg("--config")
            .arg(&cfg_file)
            .output()
            .expect("run fireclaw");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "fireclaw {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let status = run(&["status"]);
    assert!(status.contains("recorded but not active"), "{status}");
    println!("gc after reboot: {}", run(&["gc"]).trim());
    assert_eq!(
        dm_devices("fireclaw-"),
        vec!["fireclaw-pool"],
        "re-activated"
    );
    let status = run(&["status"]);
    println!("{}", status.lines().last().unwrap_or_default());
    assert!(status.contains("thin pool: data"), "{status}");

    // A rebuilt image: planned again, imported as a new volume; the unused old one goes.
    std::thread::sleep(Duration::from_millis(20));
    make_image(&image, 4, 11);
    let ro = Db::open_read_only(&db_path).expect("db").expect("exists");
    let again = make(Some(&ro));
    drop(ro);
    assert_eq!(again.action_count(), 1, "only the import");
    apply::apply(&again, &root, &config, &db_path, &fireclaw::report::Silent)
        .expect("apply import");
    let db = Db::open(&db_path).expect("db");
    let vols = thin::store::volumes(&db, "fireclaw").expect("volumes");
    assert_eq!(vols.len(), 1, "{vols:?}");
    drop(db);

    // Uninstall: the journal, newest first; nothing of the pool is left.
    let failures = apply::uninstall(
        Db::open(&db_path).expect("db"),
        &root,
        &fireclaw::report::Silent,
    )
    .expect("uninstall");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(dm_devices("fireclaw-").is_empty());
    let pool_dir = root.host(thin::pool_dir(&config.paths.state_dir));
    assert!(thin::loops_of(&pool_dir.join("data.img")).is_empty());
    assert!(!pool_dir.exists(), "pool files removed");
    assert!(!db_path.exists(), "state database removed");
}

/// A kernel with device-mapper but without the thin-pool target: creating the pool fails with the
/// `modprobe dm_thin_pool` hint, and leaves no dm or loop device behind.
#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn missing_thin_target_is_a_clear_error_in_guest() {
    if !guest::in_guest() {
        return guest::reinvoke_in_guest(
            "missing_thin_target_is_a_clear_error_in_guest",
            "kernel",
            |s| s.modules(["dm-mod", "loop"]).memory_mib(512, 200),
        );
    }
    let tmp = tempfile::tempdir().expect("scratch");
    let db = Db::open(&tmp.path().join("state.db")).expect("db");
    let spec = spec(tmp.path(), "fcmiss", 64, 90);
    let engine = ThinEngine::new(&db, spec.clone()).expect("device-mapper itself is there");
    let err = engine.create_pool().expect_err("no thin-pool target");
    println!("missing target: {err}");
    assert!(matches!(err, ThinError::MissingTarget), "{err}");
    assert!(err.to_string().contains("modprobe dm_thin_pool"), "{err}");
    assert!(dm_devices("fcmiss-").is_empty());
    assert!(thin::loops_of(&spec.data_file()).is_empty());
    assert!(thin::loops_of(&spec.metadata_file()).is_empty());
    assert!(thin::store::pool(&db, "fcmiss").expect("rows").is_none());
}
