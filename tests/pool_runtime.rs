//! VM tier: the runtime's warm pool with real guests under QEMU (TCG here) in a private
//! namespace. The pool fills, a `POST /v1/run` is served by a pooled clone (origin `pool`), the
//! pool refills; `kill -9` of the runtime mid-refill followed by a start leaves nothing behind
//! and the pool fills again; SIGTERM destroys the pooled VMs. Needs root, ip, nft, QEMU.

mod support;

use std::time::Duration;

use fireclaw::runtime::client::Client;
use fireclaw_proto::control::{Origin, RunRequest, RunResult};
use support::runtime::{install_manifest, wait_ready, GroupGuard, Runtime};
use support::vm::*;

/// The id of the VM `/v1/vms` lists with origin `pool`, if any.
fn pooled_vm(client: &Client) -> Option<String> {
    let list: fireclaw_proto::control::VmList =
        fireclaw::runtime::client::block_on(client.json(hyper::Method::GET, "/v1/vms", None))
            .unwrap()
            .unwrap();
    list.vms
        .into_iter()
        .find(|v| v.origin == Origin::Pool)
        .map(|v| v.id)
}

fn slot_rows(root: &TestRoot) -> usize {
    root.db()
        .map(|db| fireclaw::net::slot::store::list(&db).unwrap().len())
        .unwrap_or(0)
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn a_pool_hands_out_a_ready_clone_and_survives_kill_9_mid_refill() {
    if !prerequisites("vm", true) {
        return;
    }
    let _lock = vm_lock();
    let _group = GroupGuard::new();
    let fx = fixture();
    assert!(
        fx.initrd.is_none(),
        "the pool test needs the CI image (FIRECLAW_TEST_*)"
    );
    let ns = Netns::new("pool");
    // As provision leaves a host: clone slots route through it.
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
            "[pool]\nwarm_per_image = 1\nvcpus = 1\nmem_mib = 256\n\n[images]\nrecipes = [\"{name}\"]\n"
        ),
    )
    .unwrap();
    let runtime = || {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_fireclaw"))
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(&config)
            .arg("runtime");
        cmd
    };
    let rt_files = tempfile::tempdir().unwrap();
    let client = Client::new(root.path().join("run/fireclaw/fireclaw.sock"));

    let mut rt = Runtime::start(runtime(), rt_files.path());
    // The first fill builds the snapshot (a cold boot) and restores one clone.
    wait_ready(&client, &rt, 1, Duration::from_secs(120));
    let req = RunRequest {
        argv: vec!["sh".into(), "-c".into(), "cat /etc/hostname; exit 7".into()],
        image: None,
        policy: None,
        timeout_secs: Some(60),
    };
    let body = serde_json::to_vec(&req).unwrap();
    let r: RunResult = fireclaw::runtime::client::block_on(client.json(
        hyper::Method::POST,
        "/v1/run",
        Some(body.clone()),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(r.origin, Origin::Pool, "{r:?}");
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert_eq!(r.stdout, format!("fc-{}\n", r.vm_id));
    println!("pool hand-out to exec result: {} ms", r.elapsed_ms);
    let metrics =
        fireclaw::runtime::client::block_on(client.raw(hyper::Method::GET, "/metrics", None))
            .unwrap()
            .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.1).into_owned();
    assert!(
        metrics.contains(&format!(
            "fireclaw_pool_handouts_total{{image=\"{name}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("fireclaw_restore_seconds_count 1")
            || metrics.contains("fireclaw_restore_seconds_count 2"),
        "{metrics}"
    );

    wait_ready(&client, &rt, 1, Duration::from_secs(120));

    // A pooled VM whose VMM dies is noticed, cleaned up and replaced.
    let pooled = pooled_vm(&client).expect("a pooled VM is listed with origin pool");
    let pid = fireclaw::vm::record::get(&root.db().unwrap(), &pooled)
        .unwrap()
        .unwrap()
        .vmm_pid
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let start = std::time::Instant::now();
    while pooled_vm(&client).is_none_or(|id| id == pooled) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}",
            rt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fireclaw::vm::record::get(&root.db().unwrap(), &pooled)
        .unwrap()
        .is_none());

    // SIGHUP resizes: to nothing (the pooled VM is destroyed), then back to one.
    let sized = |n: u32| {
        format!(
            "[pool]\nwarm_per_image = {n}\nvcpus = 1\nmem_mib = 256\n\n[images]\nrecipes = [\"{name}\"]\n"
        )
    };
    std::fs::write(&config, sized(0)).unwrap();
    rt.signal(nix::sys::signal::Signal::SIGHUP);
    wait_ready(&client, &rt, 0, Duration::from_secs(30));
    let start = std::time::Instant::now();
    while slot_rows(&root) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            rt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&config, sized(1)).unwrap();
    rt.signal(nix::sys::signal::Signal::SIGHUP);

    // The refill starts at once: kill -9 while it restores.
    std::thread::sleep(Duration::from_millis(400));
    rt.signal(nix::sys::signal::Signal::SIGKILL);
    rt.child.wait().unwrap();
    drop(rt);

    // A new start cleans up after it and fills the pool again.
    let rt = Runtime::start(runtime(), rt_files.path());
    let log = rt.log_text();
    assert!(
        log.contains("tore down dead VM") || log.contains("clone slot"),
        "{log}"
    );
    wait_ready(&client, &rt, 1, Duration::from_secs(120));
    assert_eq!(slot_rows(&root), 1, "one slot for the one pooled clone");
    // `fireclaw run` goes through the runtime when it answers, and says so with -v.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_fireclaw"))
        .arg("--root")
        .arg(root.path())
        .arg("--config")
        .arg(&config)
        .args([
            "-v",
            "run",
            "--image",
            &name,
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(
        text(&out.stderr).contains("from the runtime (origin pool)"),
        "{}",
        text(&out.stderr)
    );
    wait_ready(&client, &rt, 1, Duration::from_secs(120));
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    assert_eq!(
        slot_rows(&root),
        0,
        "SIGTERM released the pooled clone's slot"
    );
    let links = sh_ok(&format!("ip -n {} -o link show", ns.name));
    assert!(!links.contains(": fcv"), "slot veths left: {links}");
    root.assert_no_leaks(&ns);
}
