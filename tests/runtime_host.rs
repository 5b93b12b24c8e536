//! Host tier: `fireclaw runtime` in a temporary root prefix inside a private network namespace,
//! provisioned there first (state, layout, network). Needs root, ip, nft, setpriv, python3 (the
//! stand-in VMM), and the `fireclaw` group (created here when missing, and removed again).

mod support;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::runtime::{wait_for, GroupGuard, Runtime};
use support::{run, run_ok, tier, NetNs};

fn host_tier() -> bool {
    tier(
        "host",
        true,
        &["ip", "nft", "setpriv", "python3", "groupadd"],
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    config: PathBuf,
    ns: NetNs,
    _group: GroupGuard,
}

/// A provisioned host after a reboot, in a temporary root and a fresh namespace: the state
/// database records that provision's network step ran, and the namespace has none of what it made
/// (no bridge, no nft table, forwarding off). The database is made through the library rather
/// than by `fireclaw provision`, whose preflight wants gigabytes free that a test does not use.
fn fixture(tag: &str) -> Fixture {
    let group = GroupGuard::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().to_path_buf();
    // Traversable by `nobody`, whom the access tests connect as.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = base.join("root");
    std::fs::create_dir_all(root.join("var/lib/fireclaw")).expect("mkdir");
    let config = base.join("fireclaw.toml");
    std::fs::write(&config, "[pool]\nwarm_per_image = 2\n").expect("config");
    let fx = Fixture {
        _dir: dir,
        base,
        root,
        config,
        ns: NetNs::new(tag),
        _group: group,
    };
    fx.db()
        .mark_step_complete("network")
        .expect("mark network step");
    run_ok(&mut fx.ns.cmd("sysctl", &["-qw", "net.ipv4.ip_forward=0"]));
    fx
}

impl Fixture {
    fn fireclaw(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "--root",
            self.root.to_str().unwrap_or_default(),
            "--config",
            self.config.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        self.ns.cmd(support::bin(), &all)
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/fireclaw/fireclaw.sock")
    }

    fn db(&self) -> fireclaw::state::Db {
        fireclaw::state::Db::open(&self.root.join("var/lib/fireclaw/state.db")).expect("open db")
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join("run/fireclaw/vms").join(id)
    }

    /// Starts the runtime with a NOTIFY_SOCKET the test reads, and waits for READY=1.
    fn start(&self) -> Runtime {
        Runtime::start(self.fireclaw(&["runtime"]), &self.base)
    }

    /// One raw HTTP/1.1 request on the control socket; the status and the body.
    fn http(&self, raw: &[u8]) -> (u16, String) {
        let mut s = UnixStream::connect(self.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(raw).expect("write");
        let mut text = Vec::new();
        let _ = s.read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, body.to_string())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.http(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
    }

    /// A `vms` row as `fireclaw run --keep` leaves it (state kept, no owner).
    fn insert_kept(&self, id: &str, vmm_pid: Option<u32>) {
        let db = self.db();
        fireclaw::vm::record::insert(
            &db,
            &fireclaw::vm::record::VmRecord {
                id: id.into(),
                vmm: "qemu".into(),
                state: "kept".into(),
                owner_pid: None,
                owner_start: None,
                vmm_pid: vmm_pid.map(i64::from),
                tap: format!("fc-{id}"),
                ip: None,
                run_dir: self.run_dir(id),
                disk_planned: self.root.join(format!("var/lib/fireclaw/disks/{id}.img")),
                disk: None,
                policy: "full".into(),
                image: "base".into(),
                created_at: 0,
            },
        )
        .expect("insert row");
    }

    fn row_exists(&self, id: &str) -> bool {
        fireclaw::vm::record::get(&self.db(), id)
            .expect("read row")
            .is_some()
    }

    /// A process that stands in for a VMM: its command line names the VM's run dir and it
    /// listens on `<run dir>/qmp.sock`, as QEMU does.
    fn stand_in(&self, id: &str) -> Child {
        let dir = self.run_dir(id);
        std::fs::create_dir_all(&dir).expect("run dir");
        let sock = dir.join("qmp.sock");
        let child = Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\n\
                 s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n\
                 while True:\n    c,_=s.accept(); c.close()",
                sock.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("stand-in");
        wait_for(Duration::from_secs(10), || sock.exists());
        child
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn runtime_notifies_ready_answers_and_stops_cleanly() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-ready");
    // Before it runs, the clients say so and exit 1.
    let out = run(&mut fx.fireclaw(&["ps"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("the runtime is not running")
            && stderr_of(&out).contains("systemctl start fireclaw"),
        "{}",
        stderr_of(&out)
    );
    let rt = fx.start();
    let meta = std::fs::metadata(fx.socket()).expect("socket");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name("fireclaw")
        .unwrap()
        .unwrap()
        .gid;
    assert_eq!(meta.gid(), gid.as_raw());

    let (status, body) = fx.get("/v1/health");
    assert_eq!(status, 200, "{body}");
    let h: fireclaw_proto::control::Health = serde_json::from_str(&body).expect("health");
    assert!(h.ok && h.api == "v1" && h.pid == rt.child.id(), "{h:?}");
    let ps = run_ok(&mut fx.fireclaw(&["ps"]));
    assert!(ps.starts_with("ID "), "{ps}");
    let status_text = run_ok(&mut fx.fireclaw(&["status"]));
    assert!(status_text.contains("runtime: up (pid"), "{status_text}");
    assert!(
        status_text.contains("pool base: 0/2 ready"),
        "{status_text}"
    );
    let (status, metrics) = fx.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "fireclaw_requests_total{method=\"GET\",route=\"/v1/health\",status=\"200\"}"
        ) && metrics.contains("fireclaw_pool_target{image=\"base\"} 2"),
        "{metrics}"
    );

    let (exit, log) = rt.stop();
    assert!(exit.success(), "{exit}\n{log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(
        !fx.socket().exists(),
        "the socket is removed on a clean stop"
    );
    let out = run(&mut fx.fireclaw(&["status"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("runtime: not running"));
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn sighup_applies_pool_sizes_and_refuses_a_broken_config() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-hup");
    let rt = fx.start();
    std::fs::write(&fx.config, "[pool]\nwarm_per_image = 5\n").unwrap();
    rt.signal(nix::sys::signal::Signal::SIGHUP);
    rt.wait_log("SIGHUP: pool.warm_per_image: 2 -> 5");
    let (_, body) = fx.get("/v1/status");
    let s: fireclaw_proto::control::RuntimeStatus = serde_json::from_str(&body).unwrap();
    assert!(s.pools.iter().all(|p| p.target == 5), "{s:?}");

    std::fs::write(&fx.config, "[pool]\nwarm_per_image = \"many\"\n").unwrap();
    rt.signal(nix::sys::signal::Signal::SIGHUP);
    rt.wait_log("SIGHUP: refusing the new configuration, keeping the one in effect");
    let log = rt.log_text();
    assert!(
        log.contains("fireclaw.toml:2:"),
        "the refusal names file and line:\n{log}"
    );
    let (status, body) = fx.get("/v1/status");
    assert_eq!(status, 200, "still serving");
    let s: fireclaw_proto::control::RuntimeStatus = serde_json::from_str(&body).unwrap();
    assert!(
        s.pools.iter().all(|p| p.target == 5),
        "old config kept: {s:?}"
    );
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn startup_recreates_bridge_address_forwarding_and_nft_table() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-boot");
    // The fixture is a host after a reboot: nothing of provision's network is there.
    assert!(!run(&mut fx.ns.cmd("ip", &["link", "show", "fcbr0"]))
        .status
        .success());
    let journal_before = fx.db().journal_active_newest_first().unwrap().len();
    let rt = fx.start();
    let log = rt.log_text();
    for needle in [
        "re-created: created bridge fcbr0",
        "re-created: added 172.16.0.1/24 to fcbr0",
        "re-created: set fcbr0 up",
        "re-created: net.ipv4.ip_forward=1",
        "re-created: nftables table inet fireclaw",
    ] {
        assert!(log.contains(needle), "missing {needle:?} in\n{log}");
    }
    let link = run_ok(&mut fx.ns.cmd("ip", &["-j", "address", "show", "fcbr0"]));
    assert!(
        link.contains("172.16.0.1") && link.contains("\"UP\""),
        "{link}"
    );
    let fwd = run_ok(&mut fx.ns.cmd("sysctl", &["-n", "net.ipv4.ip_forward"]));
    assert_eq!(fwd.trim(), "1");
    let table = run_ok(&mut fx.ns.cmd("nft", &["list", "table", "inet", "fireclaw"]));
    assert!(table.contains("masquerade"), "{table}");
    assert_eq!(
        fx.db().journal_active_newest_first().unwrap().len(),
        journal_before,
        "the runtime writes nothing to provision's journal"
    );
    let (_, body) = fx.get("/v1/status");
    assert!(body.contains("re-created: created bridge fcbr0"), "{body}");
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    // A second start finds everything in place and re-creates nothing.
    let rt = fx.start();
    let log = rt.log_text();
    assert!(!log.contains("re-created"), "{log}");
    assert!(log.contains("nothing to re-create"), "{log}");
    let (exit, _) = rt.stop();
    assert!(exit.success());
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn dead_vms_are_torn_down_and_live_kept_vms_readopted_and_left_running() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-adopt");
    let (dead, live) = ("dead00000001", "11fe00000002");
    std::fs::create_dir_all(fx.run_dir(dead)).unwrap();
    fx.insert_kept(dead, Some(i32::MAX as u32));
    let mut stand_in = fx.stand_in(live);
    fx.insert_kept(live, Some(stand_in.id()));

    let rt = fx.start();
    let log = rt.log_text();
    assert!(log.contains(&format!("tore down dead VM {dead}")), "{log}");
    assert!(log.contains(&format!("re-adopted kept VM {live}")), "{log}");
    assert!(!fx.row_exists(dead) && !fx.run_dir(dead).exists());
    let ps = run_ok(&mut fx.fireclaw(&["ps", "--json"]));
    let list: fireclaw_proto::control::VmList = serde_json::from_str(&ps).unwrap();
    assert_eq!(list.vms.len(), 1, "{ps}");
    assert_eq!(
        (
            list.vms[0].id.as_str(),
            list.vms[0].state.as_str(),
            list.vms[0].owner.as_str()
        ),
        (live, "adopted", "kept")
    );

    // SIGTERM leaves the kept VM and its row for the next start, and ends a console follower
    // at once rather than waiting for it.
    let follower = fx
        .fireclaw(&["logs", "-f", live])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "stop took {:?} with a follower attached",
        stopping.elapsed()
    );
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(fx.row_exists(live));
    assert!(
        stand_in.try_wait().unwrap().is_none(),
        "the kept VM still runs"
    );

    let rt = fx.start();
    assert!(rt
        .log_text()
        .contains(&format!("re-adopted kept VM {live}")));
    // Its VMM dies under the runtime: noticed and torn down.
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
    rt.wait_log(&format!("kept VM {live}: its VMM died; torn down"));
    assert!(!fx.row_exists(live) && !fx.run_dir(live).exists());
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn malformed_oversized_and_unknown_requests_are_refused() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-bad");
    let rt = fx.start();
    let (status, _) = fx.http(b"NONSENSE\r\n\r\n");
    assert_eq!(status, 400, "not HTTP");
    // Headers that never finish: the connection is closed, not held.
    let mut slow = UnixStream::connect(fx.socket()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "a stalled request held its connection for {:?}",
        t.elapsed()
    );
    let (status, body) = fx.get("/v1/nope");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");
    let post = |body: &[u8]| {
        let mut req = format!(
            "POST /v1/vms/0123456789ab/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        fx.http(&req)
    };
    let (status, body) = post(b"{\"argv\": [\"true\"");
    assert_eq!(status, 400);
    assert!(body.contains("malformed JSON"), "{body}");
    let (status, body) = post(&vec![b' '; 200 * 1024]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too large"), "{body}");
    let (status, body) =
        fx.http(b"DELETE /v1/vms/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    // An unknown but well-formed VM id: 404 from every verb.
    let (status, _) =
        fx.http(b"DELETE /v1/vms/0123456789ab HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404);
    let out = run(&mut fx.fireclaw(&["rm", "0123456789ab"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no VM 0123456789ab"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&mut fx.fireclaw(&["logs", "../../etc/passwd"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("invalid VM id"));
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn users_outside_the_group_are_refused() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-perm");
    let rt = fx.start();
    let as_user = |groups: &[&str]| {
        let mut args = vec!["--reuid=65534", "--regid=65534"];
        let joined;
        if groups.is_empty() {
            args.push("--clear-groups");
        } else {
            joined = format!("--groups={}", groups.join(","));
            args.push(&joined);
        }
        args.extend([
            support::bin(),
            "--root",
            fx.root.to_str().unwrap(),
            "--config",
            fx.config.to_str().unwrap(),
            "ps",
        ]);
        run(&mut fx.ns.cmd("setpriv", &args))
    };
    // The socket's mode keeps nobody out.
    let out = as_user(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("permission denied") && stderr_of(&out).contains("group fireclaw"),
        "{}",
        stderr_of(&out)
    );
    // A member of the group gets in.
    let out = as_user(&["fireclaw"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // With the mode loosened by hand, the peer credential check still refuses nobody.
    std::fs::set_permissions(fx.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("403")
            && stderr_of(&out).contains("root and members of group fireclaw"),
        "{}",
        stderr_of(&out)
    );
    rt.wait_log("refused a control socket connection");
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn kill_9_then_a_start_leaks_nothing() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-kill");
    // The host as the runtime sets it up, before any VM.
    let (exit, _) = fx.start().stop();
    assert!(exit.success());
    let links_before = fx.ns.links_json();
    let ruleset_before = fx.ns.ruleset_json();
    let mut stand_in = fx.stand_in("cafe00000003");
    fx.insert_kept("cafe00000003", Some(stand_in.id()));
    let mut rt = fx.start();
    rt.signal(nix::sys::signal::Signal::SIGKILL);
    rt.child.wait().unwrap();
    assert!(fx.socket().exists(), "kill -9 leaves the socket file");
    let rt2 = fx.start();
    let log = rt2.log_text();
    assert!(log.contains("removed the stale socket"), "{log}");
    assert!(log.contains("re-adopted kept VM cafe00000003"), "{log}");
    let (status, _) = fx.get("/v1/health");
    assert_eq!(status, 200);
    // Removing the kept VM through the runtime takes its process and files with it.
    let out = run_ok(&mut fx.fireclaw(&["rm", "cafe00000003"]));
    assert!(out.contains("removed VM cafe00000003"), "{out}");
    wait_for(Duration::from_secs(10), || {
        stand_in.try_wait().unwrap().is_some()
    });
    let (exit, log) = rt2.stop();
    assert!(exit.success(), "{log}");
    assert!(!fx.socket().exists());
    assert!(fireclaw::vm::record::list(&fx.db()).unwrap().is_empty());
    assert!(!fx.root.join("run/fireclaw/vms/cafe00000003").exists());
    assert_eq!(fx.ns.links_json(), links_before, "no link left behind");
    assert_eq!(fx.ns.ruleset_json(), ruleset_before, "no rule left behind");
    // No process of the killed runtime or its VMs lives on.
    let leftovers = fireclaw::vm::processes_mentioning(fx.root.to_str().unwrap());
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
}

#[test]
#[ignore = "host tier: needs systemd-analyze (package systemd); run with --include-ignored"]
fn the_unit_passes_systemd_analyze_verify() {
    if !tier("host", false, &["systemd-analyze"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("fireclaw.service");
    std::fs::write(
        &unit,
        fireclaw::provision::systemd::render_unit(support::bin()).unwrap(),
    )
    .unwrap();
    let out =
        run(Command::new("systemd-analyze").args(["verify", "--man=no", unit.to_str().unwrap()]));
    // verify exits 0 on some problems (an unknown Type= is "ignored"): any message is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}\n{}",
        out.status,
        stderr_of(&out)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=process",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Documentation=man:fireclaw(1)",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
}

#[test]
#[ignore = "host tier: needs root and groupadd; run with --include-ignored"]
fn provision_group_action_creates_and_its_undo_removes_the_group() {
    if !tier("host", true, &["groupadd", "groupdel"]) {
        return;
    }
    use fireclaw::plan::Action;
    let name = format!("fct{}", std::process::id() % 100_000);
    assert!(nix::unistd::Group::from_name(&name).unwrap().is_none());
    let root = fireclaw::root::RootPrefix::new("/");
    let action = Action::CreateGroup { name: name.clone() };
    let (undo, backup) = action.prepare_undo(&root).unwrap();
    action
        .execute(
            &root,
            &fireclaw::config::Config::default(),
            &fireclaw::report::Silent,
        )
        .unwrap();
    assert!(nix::unistd::Group::from_name(&name).unwrap().is_some());
    // Idempotent both ways: a second create and a second undo are no-ops.
    action
        .execute(
            &root,
            &fireclaw::config::Config::default(),
            &fireclaw::report::Silent,
        )
        .unwrap();
    undo.revert(&root, backup.as_deref()).unwrap();
    assert!(nix::unistd::Group::from_name(&name).unwrap().is_none());
    undo.revert(&root, backup.as_deref()).unwrap();
}

#[test]
#[ignore = "host tier: needs root, ip, nft, setpriv, python3; run with --include-ignored"]
fn logs_print_and_follow_the_console_until_the_vm_goes() {
    if !host_tier() {
        return;
    }
    let fx = fixture("rt-logs");
    let id = "c0de00000004";
    let mut stand_in = fx.stand_in(id);
    fx.insert_kept(id, Some(stand_in.id()));
    let console = fx.run_dir(id).join("console.log");
    std::fs::write(&console, "boot line one\n").unwrap();
    let rt = fx.start();
    let out = run_ok(&mut fx.fireclaw(&["logs", id]));
    assert_eq!(out, "boot line one\n");

    let follow_out = fx.base.join("follow.out");
    let mut follow = fx
        .fireclaw(&["logs", "-f", id])
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&follow_out).unwrap_or_default() == "boot line one\n"
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&console)
        .unwrap();
    f.write_all(b"login: \n").unwrap();
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&follow_out).unwrap_or_default() == "boot line one\nlogin: \n"
    });
    // Removing the VM ends the stream, and `logs -f` exits 0.
    run_ok(&mut fx.fireclaw(&["rm", id]));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "logs -f did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let _ = stand_in.wait();
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
}
