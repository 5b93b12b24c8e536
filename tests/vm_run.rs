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
