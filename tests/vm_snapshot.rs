//! Snapshot and restore through the `Vmm` trait with the QEMU engine: boot a guest, leave state
//! in its memory, snapshot it, kill it, restore a new VMM from the snapshot and find the state
//! still there. Prints cold-boot vs. restore-to-SSH times (no timing assertions). Tier `vm`.

mod support;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fireclaw::vm::ssh;
use fireclaw::vmm::{
    qemu::{Qemu, QemuOptions},
    Boot, SnapshotFiles, VmSpec, Vmm,
};
use support::vm::*;

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn qemu_snapshot_then_restore_keeps_guest_memory() {
    if !prerequisites("vm", true) {
        return;
    }
    let _l = vm_lock();
    let fx = fixture();
    let ns = Netns::new("snap");
    let root = TestRoot::new(&fx);
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let root_dir = root.path().to_path_buf();
    let fx2 = fx.clone();
    // Everything that touches the network (tap, QEMU, SSH sockets) runs on one thread that has
    // entered the test namespace; children forked from it inherit the namespace.
    let result = std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Netlink helpers run their own small runtime: call them outside this one.
        fireclaw::net::tap::create("fc-snaptest", "fcbr0").map_err(|e| e.to_string())?;
        let r = rt.block_on(scenario(&root_dir, &fx2));
        fireclaw::net::tap::delete("fc-snaptest").map_err(|e| e.to_string())?;
        r
    })
    .join();
    match result {
        Ok(r) => r.unwrap(),
        Err(p) => std::panic::resume_unwind(p),
    }
    root.assert_no_leaks(&ns);
}

async fn scenario(root: &std::path::Path, fx: &Fixture) -> Result<(), String> {
    let image = fireclaw::vm::image::resolve(
        &fx.manifest.to_string_lossy(),
        root,
        &fireclaw::vm::image::Overrides {
            kernel: Some(fx.kernel.clone()),
            initrd: fx.initrd.clone(),
        },
    )
    .map_err(|e| e.to_string())?;
    let run_dir = root.join("run/fireclaw/vms/snaptest");
    std::fs::create_dir_all(&run_dir).unwrap();
    let disk = root.join("disk.img");
    fireclaw::storage::clone::clone_file(&image.rootfs, &disk).map_err(|e| e.to_string())?;
    let tap = "fc-snaptest";
    let ip = std::net::Ipv4Addr::new(172, 16, 0, 50);
    let bridge = fireclaw::net::Ipv4Cidr::parse("172.16.0.1/24").unwrap();
    let mut spec = VmSpec {
        id: "snaptest".into(),
        vcpus: 1,
        mem_mib: 256,
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        cmdline: fireclaw::vm::kernel_cmdline(
            ip,
            &bridge,
            fireclaw::vmm::VmmKind::Qemu,
            &image.cmdline_extra,
        ),
        root_disk: disk.clone(),
        extra_disk: None,
        tap: tap.into(),
        mac: fireclaw::net::lease::mac_for(ip),
        run_dir: run_dir.clone(),
        boot: Boot::Kernel,
    };
    let target = ssh::Target {
        addr: std::net::SocketAddr::new(ip.into(), 22),
        user: image.user.clone(),
        key: Arc::new(ssh::load_private_key(&fx.ssh_key).map_err(|e| e.to_string())?),
        host_key: image.host_key.clone(),
    };
    let qemu = Qemu::new(&QemuOptions::default());
    let deadline = || Instant::now() + Duration::from_secs(180);

    let t = Instant::now();
    let mut a = qemu.start(&spec).map_err(|e| e.to_string())?;
    let session = ssh::wait_ready(&target, deadline())
        .await
        .map_err(|e| format!("{e}\n{}", a.console_tail()))?;
    let cold = t.elapsed();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    // State only memory holds: a tmpfs file and a running process.
    let exit = session
        .exec("echo remembered > /tmp/marker && { sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/pid; } && echo ok", &mut out, &mut err)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        exit,
        ssh::Exit::Code(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    session.close().await;

    let files = SnapshotFiles::in_dir(&run_dir);
    let t = Instant::now();
    a.snapshot(&files).map_err(|e| e.to_string())?;
    let snap = t.elapsed();
    let size = std::fs::metadata(&files.state)
        .map(|m| m.len())
        .unwrap_or(0);
    a.kill().map_err(|e| e.to_string())?;
    drop(a);

    spec.boot = Boot::Snapshot(files.clone());
    let t = Instant::now();
    let mut b = qemu.start(&spec).map_err(|e| e.to_string())?;
    let session = ssh::wait_ready(&target, deadline())
        .await
        .map_err(|e| format!("{e}\n{}", b.console_tail()))?;
    let restore = t.elapsed();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = session
        .exec(
            "cat /tmp/marker; kill -0 $(cat /tmp/pid) && echo still-running",
            &mut out,
            &mut err,
        )
        .await
        .map_err(|e| e.to_string())?;
    session.close().await;
    b.kill().map_err(|e| e.to_string())?;
    drop(b);
    let out = String::from_utf8_lossy(&out).into_owned();
    println!(
        "QEMU ({:?}): cold boot to SSH {:?}; snapshot {:?} ({} MiB); restore to SSH {:?}; ratio {:.1}x",
        qemu.accel,
        cold,
        snap,
        size >> 20,
        restore,
        cold.as_secs_f64() / restore.as_secs_f64().max(1e-9)
    );
    std::fs::remove_dir_all(&run_dir).unwrap();
    std::fs::remove_file(&disk).unwrap();
    if exit != ssh::Exit::Code(0) || !out.contains("remembered") || !out.contains("still-running") {
        return Err(format!(
            "restored guest lost its memory: {exit:?} {out:?} {}",
            String::from_utf8_lossy(&err)
        ));
    }
    Ok(())
}
