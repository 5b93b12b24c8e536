//! `fireclaw run` end to end: a real guest under QEMU (TCG here) in a private network namespace.
//! Tier `vm`: needs root, ip, nft and qemu-system-x86_64.

mod support;

use support::vm::*;

fn setup(tag: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Netns, TestRoot)> {
    if !prerequisites("vm", true) {
        return None;
    }
    let lock = vm_lock();
    let fx = fixture();
    let ns = Netns::new(tag);
    let root = TestRoot::new(&fx);
    Some((lock, ns, root))
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn run_prints_guest_kernel_and_propagates_exit_codes_and_stderr() {
    let Some((_l, ns, root)) = setup("run") else {
        return;
    };
    let out = root
        .run_cmd(&ns, &["--verbose", "--", "uname", "-a"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.starts_with("Linux "), "{stdout}");
    // The guest's own hostname: this is the guest's kernel, not the host's.
    let guest_host = stdout.split_whitespace().nth(1).unwrap_or("").to_string();
    assert_ne!(guest_host, text(&sh("hostname").stdout).trim());
    assert!(stderr.contains("SSH ready after"), "{stderr}");
    root.assert_no_leaks(&ns);

    let out = root
        .run_cmd(&ns, &["--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    root.assert_no_leaks(&ns);

    let out = root
        .run_cmd(
            &ns,
            &["--json", "--", "sh", "-c", "echo to-out; echo to-err >&2"],
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "to-out\n");
    assert!(
        stderr.contains("to-err") && !stdout.contains("to-err"),
        "{stderr}"
    );
    let summary = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("JSON summary");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert!(v["boot_to_ssh_ms"].as_u64().unwrap() > 0);
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn command_outliving_timeout_is_killed_and_vm_removed() {
    let Some((_l, ns, root)) = setup("tmo") else {
        return;
    };
    // Long enough to boot on a loaded machine; the command then outlives it.
    let out = root
        .run_cmd(
            &ns,
            &[
                "--timeout",
                "40",
                "--",
                "sh",
                "-c",
                "echo started; sleep 1000",
            ],
        )
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("timed out after 40s (the command was still running)"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("started"),
        "the command never ran: {stderr}"
    );
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn sigterm_and_sigint_end_the_run_and_clean_up() {
    let Some((_l, ns, root)) = setup("sig") else {
        return;
    };
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let mut child = root
            .run_cmd(&ns, &["--", "sh", "-c", "echo started; sleep 1000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the command runs in the guest.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        use std::io::Read;
        stdout.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"started\n");
        let fc = fireclaw_pid_in(&ns);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(fc), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("{sig:?} received")),
            "{}",
            text(&out.stderr)
        );
        root.assert_no_leaks(&ns);
    }
}

fn fireclaw_pid_in(ns: &Netns) -> i32 {
    let pids = text(&sh(&format!("ip netns pids {}", ns.name)).stdout);
    pids.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e.to_string_lossy().contains("fireclaw"))
                .unwrap_or(false)
        })
        .expect("fireclaw process in the namespace")
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn kill_9_while_booting_then_gc_leaves_nothing() {
    let Some((_l, ns, root)) = setup("k9") else {
        return;
    };
    let mut child = root
        .run_cmd(&ns, &["--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Booting: the VMM has been recorded but SSH is not up yet.
    let start = std::time::Instant::now();
    loop {
        let running = root
            .db()
            .and_then(|db| fireclaw::vm::record::list(&db).ok())
            .is_some_and(|v| v.iter().any(|r| r.vmm_pid.is_some()));
        if running {
            break;
        }
        assert!(start.elapsed().as_secs() < 60, "VM never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let fc = fireclaw_pid_in(&ns);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fc),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    // The leftovers are visible...
    let status = root.fireclaw(&ns, &["status"]);
    assert!(
        text(&status.stdout).contains("LEFTOVER"),
        "{}",
        text(&status.stdout)
    );
    let dry = root.fireclaw(&ns, &["gc", "--dry-run"]);
    assert!(
        text(&dry.stdout).contains("would remove VM"),
        "{}",
        text(&dry.stdout)
    );
    assert!(
        !ns.taps().is_empty(),
        "the tap should still be there before gc"
    );
    // ...and gc removes them.
    let out = root.fireclaw(&ns, &["gc"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("removed VM"),
        "{}",
        text(&out.stdout)
    );
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn four_concurrent_runs_get_distinct_leases_and_taps() {
    let Some((_l, ns, root)) = setup("conc") else {
        return;
    };
    let children: Vec<_> = (0..4)
        .map(|_| {
            root.run_cmd(
                &ns,
                &[
                    "--json",
                    "--timeout",
                    "400",
                    "--",
                    "sh",
                    "-c",
                    "ip -4 -o addr show eth0; cat /sys/class/net/eth0/address",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut ips = std::collections::BTreeSet::new();
    let mut vms = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let v: serde_json::Value =
            serde_json::from_str(stderr.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
        let ip = v["ip"].as_str().unwrap().to_string();
        // The guest configured the address it was leased.
        assert!(
            text(&out.stdout).contains(&format!("inet {ip}/24")),
            "{}",
            text(&out.stdout)
        );
        ips.insert(ip);
        vms.insert(v["vm"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 4, "{ips:?}");
    assert_eq!(vms.len(), 4, "{vms:?}");
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn vmm_that_dies_mid_run_is_reported_and_cleaned() {
    let Some((_l, ns, root)) = setup("die") else {
        return;
    };
    let mut child = root
        .run_cmd(&ns, &["--", "sh", "-c", "echo started; sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    use std::io::Read;
    stdout.read_exact(&mut first).unwrap();
    let db = root.db().unwrap();
    let vm = fireclaw::vm::record::list(&db).unwrap().pop().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.vmm_pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("VMM exited unexpectedly") || stderr.contains("running the command"),
        "{stderr}"
    );
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn guest_that_never_boots_times_out_with_console_and_cleans_up() {
    let Some((_l, ns, root)) = setup("noboot") else {
        return;
    };
    // A kernel that is not a kernel: QEMU starts, the guest never answers.
    let bogus = root.path().join("bogus-kernel");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "120", "ip", "netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_fireclaw"))
        .arg("--root")
        .arg(root.path())
        .args([
            "run",
            "--vmm",
            "qemu",
            "--mem",
            "256",
            "--timeout",
            "8",
            "--image",
        ])
        .arg(&root.fixture.manifest)
        .arg("--kernel")
        .arg(&bogus)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.code() == Some(124) || out.status.code() == Some(125),
        "{stderr}"
    );
    assert!(
        stderr.contains("never answered SSH")
            || stderr.contains("VMM exited")
            || stderr.contains("could not start"),
        "{stderr}"
    );
    root.assert_no_leaks(&ns);
}

/// `fireclaw --root <root> run --vmm qemu --mem 256 <args>` inside `ns`, without the fixture's
/// image and kernel flags (clap refuses a flag given twice).
fn raw_run(root: &TestRoot, ns: &Netns, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("timeout");
    c.args(["-s", "KILL", "300", "ip", "netns", "exec", &ns.name]);
    c.arg(env!("CARGO_BIN_EXE_fireclaw"))
        .arg("--root")
        .arg(root.path())
        .args(["run", "--vmm", "qemu", "--mem", "256"])
        .args(args)
        .env_remove("FIRECLAW_CONFIG");
    c
}

/// True when a thread of `pid` waits in open(2) for a FIFO's writer.
fn blocked_on_a_fifo(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan"))
            .map(|w| w.contains("wait_for_partner") || w.contains("fifo"))
            .unwrap_or(false)
    })
}

/// The launch options `fireclaw run` would build for the fixture.
fn launch_options(root: &TestRoot) -> fireclaw::vm::LaunchOptions {
    let fx = &root.fixture;
    let image = fireclaw::vm::image::resolve(
        &fx.manifest.to_string_lossy(),
        &root.path().join("var/lib/fireclaw/images"),
        &fireclaw::vm::image::Overrides {
            kernel: Some(fx.kernel.clone()),
            initrd: fx.initrd.clone(),
        },
    )
    .unwrap();
    fireclaw::vm::LaunchOptions {
        vmm: fireclaw::vmm::VmmKind::Qemu,
        vcpus: 1,
        mem_mib: 256,
        policy: fireclaw::net::policy::Policy::Full,
        image,
        boot: fireclaw::vmm::Boot::Kernel,
        extra_disk: None,
    }
}

/// Runs `f` on a thread that joined `ns`; threads it starts (a runtime's workers) start there too.
fn in_namespace<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsFd;
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn machines_made_and_ended_on_tokio_workers_leave_nothing() {
    use fireclaw::vm::Machine;
    let Some((_l, ns, root)) = setup("wrk") else {
        return;
    };
    let host = root.host();
    let opts = launch_options(&root);
    let (h, o) = (host.clone(), opts.clone());
    let results = in_namespace(&ns, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Created on one worker, destroyed from another task (any worker).
            let (h1, o1) = (h.clone(), o.clone());
            let machine = tokio::spawn(async move { Machine::create(&h1, &o1) })
                .await
                .unwrap()
                .expect("creating a machine on a worker");
            assert!(machine.ip.is_some());
            let destroyed = tokio::spawn(async move {
                let mut m = machine;
                m.destroy()
            })
            .await
            .unwrap();
            // A panic between creation and teardown: Drop runs during unwinding, on a worker.
            let (h2, o2) = (h.clone(), o.clone());
            let panicked = tokio::spawn(async move {
                let m = Machine::create(&h2, &o2).expect("creating a machine on a worker");
                if m.ip.is_some() {
                    panic!("a pool task fails mid-way");
                }
                m.id.clone()
            })
            .await;
            // Kept: the VMM outlives the handle, is reaped, and `gc` removes the rest.
            let (h3, o3) = (h.clone(), o.clone());
            let reaped = tokio::spawn(async move {
                let m = Machine::create(&h3, &o3).expect("creating a machine on a worker");
                let mut kept = m.keep().expect("keeping it");
                let pid = nix::unistd::Pid::from_raw(kept.pid() as i32);
                assert!(kept.exited().is_none(), "the kept VMM must still run");
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
                let start = std::time::Instant::now();
                loop {
                    if let Some(why) = kept.exited() {
                        break why;
                    }
                    assert!(start.elapsed() < std::time::Duration::from_secs(10));
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
            let gc = tokio::task::spawn_blocking(move || fireclaw::vm::gc(&h, true, None))
                .await
                .unwrap()
                .unwrap();
            (destroyed, panicked.map_err(|e| e.is_panic()), reaped, gc)
        })
    });
    let (destroyed, panicked, reaped, gc) = results;
    assert!(destroyed.is_empty(), "{destroyed:?}");
    assert_eq!(panicked, Err(true), "the task must have panicked");
    assert!(reaped.contains("SIGKILL"), "{reaped}");
    assert!(gc.errors.is_empty(), "{:?}", gc.errors);
    assert_eq!(gc.removed.len(), 1, "the kept VM's resources: {gc:?}");
    root.assert_no_leaks(&ns);
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn failures_before_the_vm_exists_exit_125_and_leave_nothing() {
    let Some((_l, ns, root)) = setup("pre") else {
        return;
    };
    let expect_125 = |args: &[&str], want: &str| {
        let out = raw_run(&root, &ns, args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        root.assert_no_leaks(&ns);
    };
    let manifest = root.fixture.manifest.to_string_lossy().into_owned();
    // Usage errors (clap's).
    expect_125(&["--cpus", "0", "--", "true"], "--cpus");
    expect_125(&["uname"], "uname");
    // A kernel that does not exist; an image whose manifest is not one.
    expect_125(
        &[
            "--image",
            &manifest,
            "--kernel",
            "/nonexistent/vmlinux",
            "--",
            "true",
        ],
        "vmlinux",
    );
    let bad = root.path().join("bad.manifest.json");
    std::fs::write(&bad, "{ not json").unwrap();
    expect_125(
        &["--image", &bad.to_string_lossy(), "--", "true"],
        "not a fireclaw image manifest",
    );
    // Unknown image by name.
    expect_125(&["--image", "nosuchimage", "--", "true"], "nosuchimage");

    // pool.max_vms: one VM, owned by this live test process, already holds a lease.
    std::fs::write(
        root.path().join("etc/fireclaw/fireclaw.toml"),
        "[pool]\nmax_vms = 1\n",
    )
    .unwrap();
    {
        let db = fireclaw::state::Db::open(&root.db_path()).unwrap();
        let me = std::process::id();
        fireclaw::vm::record::insert(
            &db,
            &fireclaw::vm::record::VmRecord {
                id: "livevm000001".into(),
                vmm: "qemu".into(),
                state: "running".into(),
                owner_pid: Some(i64::from(me)),
                owner_start: fireclaw::vm::record::process_start_time(me),
                vmm_pid: None,
                tap: "fc-livevm0000".into(),
                ip: None,
                run_dir: root.path().join("run/fireclaw/vms/livevm000001"),
                disk_planned: root.path().join("var/lib/fireclaw/disks/livevm000001.ext4"),
                disk: None,
                policy: "full".into(),
                image: "x".into(),
                created_at: 0,
            },
        )
        .unwrap();
        let bridge = fireclaw::net::Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        fireclaw::net::lease::allocate(&db, &bridge, "livevm000001", 1).unwrap();
    }
    let out = root.run_cmd(&ns, &["--", "true"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("pool.max_vms = 1"), "{stderr}");
    {
        let db = fireclaw::state::Db::open(&root.db_path()).unwrap();
        fireclaw::net::lease::release(&db, "livevm000001").unwrap();
        fireclaw::vm::record::delete(&db, "livevm000001").unwrap();
    }
    std::fs::remove_file(root.path().join("etc/fireclaw/fireclaw.toml")).unwrap();
    root.assert_no_leaks(&ns);

    // A host that was never provisioned: refused before anything is created.
    let bare = TestRoot::unprovisioned(&root.fixture);
    let out = bare.run_cmd(&ns, &["--", "true"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("run `fireclaw provision` first"),
        "{stderr}"
    );
    assert!(!bare.db_path().exists(), "run created the state database");
    assert!(!bare.path().join("run").exists() && !bare.path().join("var").exists());
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn signal_while_preparing_exits_128_plus_n_and_makes_nothing() {
    let Some((_l, ns, root)) = setup("early") else {
        return;
    };
    // A manifest that is a FIFO: reading it blocks until the test writes, which holds fireclaw
    // inside its preparation (gc done, image lookup under way) for as long as the test likes.
    let fifo = root.path().join("slow.manifest.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        let child = raw_run(
            &root,
            &ns,
            &["--image", &fifo.to_string_lossy(), "--", "true"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        // Wait until fireclaw is blocked opening the FIFO.
        let start = std::time::Instant::now();
        let fc = loop {
            let pids = text(&sh(&format!("ip netns pids {}", ns.name)).stdout);
            let found = pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .map(|e| e.to_string_lossy().contains("fireclaw"))
                        .unwrap_or(false)
                        && blocked_on_a_fifo(*p)
                });
            if let Some(p) = found {
                break p;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "fireclaw never reached the manifest"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(fc), sig).unwrap();
        // Let it go on: a valid-looking open and an empty manifest.
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Non-blocking: a fireclaw the signal killed is no reader, and open would wait forever.
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Ok(mut w) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
        {
            use std::io::Write;
            let _ = w.write_all(b"{}");
        }
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig:?}: {stderr}");
        assert!(stderr.contains(&format!("{sig:?} received")), "{stderr}");
        root.assert_no_leaks(&ns);
    }
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn timeout_while_waiting_for_ssh_exits_124() {
    let Some((_l, ns, root)) = setup("sshtmo") else {
        return;
    };
    // One second: no guest answers SSH that soon under emulation.
    let out = root
        .run_cmd(&ns, &["--timeout", "1", "--", "true"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("never answered SSH"), "{stderr}");
    root.assert_no_leaks(&ns);
}
