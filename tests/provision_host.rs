//! Host tier: provision into a temporary root prefix inside a private network namespace, then
//! uninstall, and prove the host is exactly as before. Needs root, ip, nft.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{run, run_ok, snapshot_tree, tier, NetNs};

/// Steps whose builders belong to other tiers (kernel, image, dm-thin); skipped here.
const SKIP: &str = "kernel,images,thinpool";

const FC_MEMBER: &str = "release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64";
const JAILER_MEMBER: &str = "release-v1.16.1-x86_64/jailer-v1.16.1-x86_64";

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    config: PathBuf,
    ns: NetNs,
}

fn host_tier() -> bool {
    tier("host", true, &["ip", "nft"])
}

/// A root prefix that looks like a Debian 12 host with an operator's own ngircd.conf, and a config
/// (outside the root) pointing the Firecracker download at a local release-shaped archive.
fn fixture(tag: &str, archive: &[u8], digest: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().to_path_buf();
    // Readable by `nobody`, who runs the unprivileged dry-run.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = base.join("root");
    std::fs::create_dir_all(root.join("etc/ngircd")).expect("mkdir");
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .expect("os-release");
    std::fs::write(
        root.join("etc/ngircd/ngircd.conf"),
        "# the operator's own ngircd.conf\n",
    )
    .expect("ngircd.conf");
    let tarball = base.join("firecracker.tgz");
    std::fs::write(&tarball, archive).expect("tarball");
    let config = base.join("fireclaw.toml");
    std::fs::write(
        &config,
        format!(
            "[firecracker]\nurl = \"file://{}\"\nsha256 = \"{digest}\"\n",
            tarball.display()
        ),
    )
    .expect("config");
    Fixture {
        _dir: dir,
        base,
        root,
        config,
        ns: NetNs::new(tag),
    }
}

fn release_archive() -> (Vec<u8>, String) {
    let archive = support::tgz(&[
        (FC_MEMBER, b"#!/bin/sh\necho 'Firecracker v1.16.1'\n"),
        (JAILER_MEMBER, b"#!/bin/sh\necho 'Jailer v1.16.1'\n"),
        ("release-v1.16.1-x86_64/SHA256SUMS", b"whatever\n"),
    ]);
    let digest = support::sha256_hex(&archive);
    (archive, digest)
}

impl Fixture {
    /// fireclaw as `nobody`, in the namespace: what an ordinary user's dry-run sees.
    fn unprivileged(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            support::bin(),
            "--root",
            self.root.to_str().unwrap_or_default(),
            "--config",
            self.config.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        self.ns.cmd("setpriv", &all)
    }

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

    fn plan_json(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["provision", "--dry-run", "--json", "--skip", SKIP];
        args.extend_from_slice(extra);
        let text = run_ok(&mut self.fireclaw(&args));
        serde_json::from_str(&text).expect("plan JSON")
    }

    fn db(&self) -> fireclaw::state::Db {
        fireclaw::state::Db::open_read_only(&self.root.join("var/lib/fireclaw/state.db"))
            .expect("open db")
            .expect("db exists")
    }

    fn host_state(
        &self,
    ) -> (
        std::collections::BTreeMap<PathBuf, String>,
        serde_json::Value,
        serde_json::Value,
        String,
    ) {
        (
            snapshot_tree(&self.root),
            self.ns.links_json(),
            self.ns.ruleset_json(),
            run_ok(&mut self.ns.cmd("sysctl", &["-n", "net.ipv4.ip_forward"])),
        )
    }
}

fn descriptions(plan: &serde_json::Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["status"] == "pending")
        .flat_map(|s| s["actions"].as_array().cloned().unwrap_or_default())
        .map(|a| a["description"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn provision_then_uninstall_restores_the_host_exactly() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("cycle", &archive, &digest);
    let before = fx.host_state();

    // The unprivileged dry-run changes nothing and announces every change the real run makes.
    let text = run_ok(&mut fx.unprivileged(&["provision", "--dry-run", "--json", "--skip", SKIP]));
    let dry: serde_json::Value = serde_json::from_str(&text).expect("plan JSON");
    assert_eq!(dry["blocked"], false, "{dry:#}");
    assert_eq!(fx.host_state(), before, "a dry-run changed the host");
    let planned = descriptions(&dry);
    assert!(
        planned
            .iter()
            .any(|d| d.starts_with("ip link add fcbr0 type bridge")),
        "{planned:?}"
    );
    assert!(
        planned
            .iter()
            .any(|d| d.contains("/etc/ngircd/ngircd.conf")),
        "{planned:?}"
    );

    run_ok(&mut fx.fireclaw(&["provision", "--skip", SKIP]));

    // What the journal says was done is exactly what the dry-run said would be.
    let journal: Vec<String> = fx
        .db()
        .journal_all()
        .expect("journal")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(journal, planned);
    assert!(fx
        .db()
        .journal_all()
        .expect("journal")
        .iter()
        .all(|e| e.status == fireclaw::state::JournalStatus::Done));

    // Files.
    let mode = |p: &str| {
        std::fs::metadata(fx.root.join(p))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode("etc/fireclaw/id_ed25519"), 0o600);
    assert_eq!(mode("etc/fireclaw/irc-operator.pass"), 0o600);
    assert_eq!(mode("etc/ngircd/ngircd.conf"), 0o640);
    assert_eq!(mode("usr/local/bin/firecracker"), 0o755);
    let conf =
        std::fs::read_to_string(fx.root.join("etc/ngircd/ngircd.conf")).expect("ngircd.conf");
    let password =
        std::fs::read_to_string(fx.root.join("etc/fireclaw/irc-operator.pass")).expect("pass");
    assert!(conf.contains("Listen = 172.16.0.1,127.0.0.1"), "{conf}");
    assert!(conf.contains(&format!("Password = {}", password.trim())));
    assert!(
        !text.contains(password.trim()),
        "the dry-run printed the operator password"
    );
    let unit =
        std::fs::read_to_string(fx.root.join("etc/systemd/system/fireclaw.service")).expect("unit");
    assert!(unit.contains("KillMode=process"));

    // The bridge, with its address, up; NAT in fireclaw's table.
    let addr = run_ok(&mut fx.ns.cmd("ip", &["-j", "addr", "show", "dev", "fcbr0"]));
    let addr: serde_json::Value = serde_json::from_str(&addr).expect("ip -j addr");
    assert!(
        addr[0]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{addr:#}"
    );
    assert!(addr[0]["addr_info"].as_array().is_some_and(|a| a
        .iter()
        .any(|i| i["local"] == "172.16.0.1" && i["prefixlen"] == 24)));
    let table = run_ok(&mut fx.ns.cmd("nft", &["list", "table", "inet", "fireclaw"]));
    assert!(
        table.contains("masquerade") && table.contains("172.16.0.0/24"),
        "{table}"
    );
    assert_eq!(
        run_ok(&mut fx.ns.cmd("sysctl", &["-n", "net.ipv4.ip_forward"])).trim(),
        "1"
    );

    // Idempotent: the second run plans nothing and changes nothing.
    let again = fx.plan_json(&[]);
    assert_eq!(again["action_count"], 0, "{again:#}");
    let provisioned = fx.host_state();
    let out = run_ok(&mut fx.fireclaw(&["provision", "--skip", SKIP]));
    assert!(out.contains("Nothing to do"), "{out}");
    assert_eq!(fx.host_state(), provisioned);

    let status = run_ok(&mut fx.fireclaw(&["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["provisioned"], true);
    assert_eq!(status["bridge"]["up"], true);
    // Preflight ran before the database existed; it is recorded all the same.
    let preflight = status["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "preflight"))
        .expect("preflight in status");
    assert!(preflight["completed_at"].is_i64(), "{status:#}");

    // Uninstall: the dry-run lists the reversals; the real one puts everything back.
    let undo = run_ok(&mut fx.fireclaw(&["uninstall", "--dry-run"]));
    assert!(undo.contains("ip link delete fcbr0"), "{undo}");
    assert!(
        undo.contains("restore previous /etc/ngircd/ngircd.conf"),
        "{undo}"
    );
    run_ok(&mut fx.fireclaw(&["uninstall"]));
    assert_eq!(
        fx.host_state(),
        before,
        "uninstall did not restore the host exactly"
    );
    let conf =
        std::fs::read_to_string(fx.root.join("etc/ngircd/ngircd.conf")).expect("ngircd.conf");
    assert_eq!(conf, "# the operator's own ngircd.conf\n");
    // And a second uninstall has nothing to do.
    let out = run_ok(&mut fx.fireclaw(&["uninstall"]));
    assert!(out.contains("Nothing to uninstall"), "{out}");
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn interrupted_apply_completes_on_rerun_and_still_uninstalls_exactly() {
    if !host_tier() || !tier("host", true, &["mkfifo"]) {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("intr", &archive, &digest);
    let before = fx.host_state();
    // The download source is a FIFO nobody writes to: apply blocks inside the firecracker step,
    // after earlier steps are applied and that step's action is journaled as pending.
    let tarball = fx.base.join("firecracker.tgz");
    std::fs::remove_file(&tarball).expect("rm");
    run_ok(Command::new("mkfifo").arg(&tarball));
    let mut child = fx
        .fireclaw(&["provision", "--skip", SKIP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn provision");
    let db_path = fx.root.join("var/lib/fireclaw/state.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = fireclaw::state::Db::open_read_only(&db_path)
            .ok()
            .flatten()
            .and_then(|db| db.journal_all().ok())
            .is_some_and(|j| {
                j.iter().any(|e| {
                    e.step == "firecracker" && e.status == fireclaw::state::JournalStatus::Pending
                })
            });
        if pending {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "provision never reached the firecracker download"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "provision exited before blocking"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no chance to clean up, as in a power cut.
    child.kill().expect("kill");
    child.wait().expect("reap");
    // `ip netns exec` execs fireclaw in place, so the child killed is fireclaw itself.
    std::fs::remove_file(&tarball).expect("rm fifo");
    std::fs::write(&tarball, &archive).expect("tarball");

    let rest = descriptions(&fx.plan_json(&[]));
    assert!(
        rest.iter().any(|d| d.starts_with("download ")),
        "the download is still to do: {rest:?}"
    );
    assert!(
        !rest.iter().any(|d| d.starts_with("create state database")),
        "{rest:?}"
    );
    run_ok(&mut fx.fireclaw(&["provision", "--skip", SKIP]));
    assert_eq!(fx.plan_json(&[])["action_count"], 0);
    assert!(fx.root.join("usr/local/bin/jailer").is_file());

    run_ok(&mut fx.fireclaw(&["uninstall"]));
    assert_eq!(
        fx.host_state(),
        before,
        "uninstall after an interrupted run did not restore the host"
    );
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn only_and_skip_select_steps_and_unknown_names_are_refused() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("only", &archive, &digest);
    let plan = fx.plan_json(&["--only", "network"]);
    let statuses: Vec<(String, String)> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (name, status) in &statuses {
        match name.as_str() {
            "preflight" => assert_eq!(status, "done"),
            "state" | "network" => assert_eq!(status, "pending", "{name}"),
            _ => assert_eq!(status, "skipped", "{name}"),
        }
    }
    for bad in [["--only", "netwrok"], ["--skip", "bogus"]] {
        let out = run(&mut fx.fireclaw(&["provision", "--dry-run", bad[0], bad[1]]));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown step") && err.contains("network"),
            "{err}"
        );
    }
    // --only network really applies just that (plus the journal), and uninstall takes it back.
    let before = fx.host_state();
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network"]));
    assert!(!fx.root.join("etc/fireclaw").exists());
    assert!(run_ok(&mut fx.ns.cmd("ip", &["link", "show", "fcbr0"])).contains("fcbr0"));
    run_ok(&mut fx.fireclaw(&["uninstall"]));
    assert_eq!(fx.host_state(), before);
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn a_tampered_or_hostile_firecracker_archive_installs_nothing() {
    if !host_tier() {
        return;
    }
    let (good, good_digest) = release_archive();
    let traversal = support::tgz(&[
        (FC_MEMBER, b"fc"),
        (JAILER_MEMBER, b"jl"),
        ("../../../../etc/evil", b"pwned"),
    ]);
    let traversal_digest = support::sha256_hex(&traversal);
    for (archive, digest, expect) in [
        (
            good.clone(),
            support::sha256_hex(b"something else"),
            "sha256 mismatch",
        ),
        (traversal, traversal_digest, "escapes the destination"),
    ] {
        let fx = fixture("evil", &archive, &digest);
        let before = fx.host_state();
        let out = run(&mut fx.fireclaw(&["provision", "--only", "firecracker"]));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
        assert!(!fx.root.join("usr/local/bin/firecracker").exists());
        assert!(!fx.base.join("etc/evil").exists() && !Path::new("/etc/evil").exists());
        // What did run is journaled, and uninstall takes it back out.
        run_ok(&mut fx.fireclaw(&["uninstall"]));
        assert_eq!(fx.host_state(), before);
    }
    let _ = good_digest;
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn malformed_config_names_the_key_and_line_and_changes_nothing() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("badcfg", &archive, &digest);
    let before = fx.host_state();
    for (text, needle) in [
        (
            "[network]\nbridge = \"fcbr0\"\nbrigde = \"oops\"\n",
            "fireclaw.toml:3:",
        ),
        ("[network]\naddress = \"172.16.0.1\"\n", "network.address"),
        ("[firecracker\n", "fireclaw.toml:1:"),
        ("\u{0}\u{1}\u{2}binary", "fireclaw.toml:1:"),
    ] {
        std::fs::write(&fx.config, text).expect("config");
        for args in [
            &["provision", "--dry-run"][..],
            &["provision"],
            &["uninstall"],
            &["status"],
        ] {
            let out = run(&mut fx.fireclaw(args));
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{args:?} with {text:?}: {err}");
        }
    }
    assert_eq!(fx.host_state(), before);
}

/// Registers on the server, joins #agents and returns every line up to the end of NAMES.
fn irc_join(stream: std::net::TcpStream) -> Result<Vec<String>, String> {
    use std::io::{BufRead, BufReader, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writer
        .write_all(b"NICK tester\r\nUSER tester 0 * :fireclaw test\r\n")
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stream);
    let mut joined = false;
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("{e}; got {lines:?}"))?
            == 0
        {
            return Err(format!("connection closed; got {lines:?}"));
        }
        if let Some(rest) = line.strip_prefix("PING ") {
            writer
                .write_all(format!("PONG {rest}").as_bytes())
                .map_err(|e| e.to_string())?;
        }
        // 376 = end of MOTD (422 = no MOTD): registered.
        if !joined && (line.contains(" 376 ") || line.contains(" 422 ")) {
            writer
                .write_all(b"JOIN #agents\r\n")
                .map_err(|e| e.to_string())?;
            joined = true;
        }
        lines.push(line.trim_end().to_string());
        // 366 = end of NAMES, sent after a successful JOIN.
        if line.contains(" 366 ") {
            return Ok(lines);
        }
    }
}

fn gid_of(group: &str) -> u32 {
    nix::unistd::Group::from_name(group)
        .expect("getgrnam")
        .unwrap_or_else(|| panic!("group {group} missing"))
        .gid
        .as_raw()
}

/// The configuration provision writes runs ngircd exactly as Debian's and Ubuntu's unit starts it
/// (as `irc`, from the first instruction), a client can join our channel, and uninstall puts back
/// the operator's file with its owner, mode and bytes.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn the_provisioned_ngircd_config_runs_ngircd_as_its_unit_does() {
    if !host_tier() || !tier("host", true, &["ngircd", "setpriv"]) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (archive, digest) = release_archive();
    let fx = fixture("ircunit", &archive, &digest);
    let conf = fx.root.join("etc/ngircd/ngircd.conf");
    // The operator's file belongs to someone else: uninstall must give it back to them.
    std::os::unix::fs::chown(&conf, Some(65534), Some(65534)).expect("chown");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let before = fx.host_state();
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network,ngircd"]));

    let meta = std::fs::metadata(&conf).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (0, gid_of("irc"), 0o640),
        "ngircd.conf must be readable by ngircd's group and no one else"
    );
    let pass = std::fs::metadata(fx.root.join("etc/fireclaw/irc-operator.pass")).expect("stat");
    assert_eq!(
        (pass.uid(), pass.gid(), pass.permissions().mode() & 0o777),
        (0, 0, 0o600)
    );
    let check = fireclaw_testkit::ngircd::configtest(&conf, &fx.ns.name).expect("configtest");
    assert!(
        check.contains("nyx.fireclaw.local") && check.contains("FireclawNet"),
        "{check}"
    );
    let server = fireclaw_testkit::ngircd::Ngircd::start(
        &conf,
        &fx.ns.name,
        "127.0.0.1:6667".parse().expect("addr"),
    )
    .expect("ngircd as its unit starts it");
    let lines = irc_join(server.connect().expect("connect")).expect("IRC session");
    drop(server);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("JOIN") && l.contains("#agents")),
        "{lines:?}"
    );
    // The predefined topic proves the channel came from our configuration.
    assert!(
        lines.iter().any(|l| l.contains("the common room")),
        "{lines:?}"
    );

    run_ok(&mut fx.fireclaw(&["uninstall"]));
    assert_eq!(
        fx.host_state(),
        before,
        "uninstall did not restore the operator's ngircd.conf with its owner"
    );
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn an_unsupported_host_is_blocked_with_the_fix_and_nothing_changes() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("unsup", &archive, &digest);
    std::fs::write(
        fx.root.join("etc/os-release"),
        "PRETTY_NAME=\"Fedora Linux 40\"\nID=fedora\nVERSION_ID=40\n",
    )
    .expect("os-release");
    let before = fx.host_state();
    let out = run(&mut fx.fireclaw(&["provision", "--dry-run"]));
    assert_eq!(out.status.code(), Some(3), "a blocked dry-run exits 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL distribution: Fedora Linux 40"),
        "{text}"
    );
    assert!(
        text.contains("fix: fireclaw supports Debian 12/13 and Ubuntu 22.04/24.04"),
        "{text}"
    );
    assert!(text.contains("BLOCKED"), "{text}");
    let out = run(&mut fx.fireclaw(&["provision"]));
    assert_eq!(out.status.code(), Some(3), "a blocked apply exits 3");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the plan is blocked; nothing was changed")
    );
    let out = run(&mut fx.fireclaw(&["doctor"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL distribution"));
    let json = run(&mut fx.fireclaw(&["doctor", "--json"]));
    let checks: serde_json::Value = serde_json::from_slice(&json.stdout).expect("doctor JSON");
    let distro = checks
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "distribution"))
        .expect("check");
    assert_eq!(distro["ok"], false);
    assert!(distro["fix"]
        .as_str()
        .is_some_and(|f| f.contains("Debian 12/13")));
    assert_eq!(fx.host_state(), before);
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn reprovisioning_leaves_running_vms_policy_rules_alone() {
    if !host_tier() {
        return;
    }
    use fireclaw::net::policy::{install_script, Policy, VmRules};
    let (archive, digest) = release_archive();
    let fx = fixture("vmrules", &archive, &digest);
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network"]));
    let script = install_script(&VmRules {
        table: "fireclaw",
        bridge: "fcbr0",
        bridge_ip: "172.16.0.1".parse().expect("ip"),
        irc_port: 6667,
        ollama_port: Some(11434),
        tap: "fctap-test",
        guest_ip: "172.16.0.9".parse().expect("ip"),
        policy: Policy::Local,
    })
    .expect("a local policy has rules");
    let mut nft = fx.ns.cmd("nft", &["-f", "-"]);
    let mut child = nft.stdin(Stdio::piped()).spawn().expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
        .expect("write");
    assert!(child.wait().expect("nft").success());

    let plan = fx.plan_json(&["--only", "network"]);
    assert_eq!(
        plan["action_count"], 0,
        "a running VM's rules looked like drift: {plan:#}"
    );
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network"]));
    let table = run_ok(&mut fx.ns.cmd("nft", &["list", "table", "inet", "fireclaw"]));
    assert!(
        table.contains("chain vm_fctap_test") && table.contains("fc:fctap-test"),
        "{table}"
    );
    run_ok(&mut fx.fireclaw(&["uninstall"]));
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn the_journal_is_root_only_and_unprivileged_dry_runs_still_work() {
    if !host_tier() || !tier("host", true, &["setpriv"]) {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("rootonly", &archive, &digest);
    run_ok(&mut fx.fireclaw(&["provision", "--only", "ngircd"]));
    let db = fx.root.join("var/lib/fireclaw/state.db");
    let mode = std::fs::metadata(&db)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600, "the journal holds backups of secret files");
    let out = run(&mut fx.unprivileged(&["provision", "--dry-run", "--only", "ngircd"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by root only"));
    run_ok(&mut fx.fireclaw(&["uninstall"]));
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn a_dry_run_never_prints_an_old_operator_password() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("oldpw", &archive, &digest);
    run_ok(&mut fx.fireclaw(&["provision", "--only", "ngircd"]));
    let old =
        std::fs::read_to_string(fx.root.join("etc/fireclaw/irc-operator.pass")).expect("pass");
    // The password file is gone but ngircd.conf still holds the old password: provision plans a
    // new one, and the diff of ngircd.conf would show the old line.
    std::fs::remove_file(fx.root.join("etc/fireclaw/irc-operator.pass")).expect("rm");
    for extra in [&[][..], &["--json"]] {
        let mut args = vec!["provision", "--dry-run", "--only", "ngircd"];
        args.extend_from_slice(extra);
        let out = run_ok(&mut fx.fireclaw(&args));
        assert!(out.contains("ngircd.conf"), "{out}");
        assert!(
            !out.contains(old.trim()),
            "the old password was printed:\n{out}"
        );
    }
    run_ok(&mut fx.fireclaw(&["provision", "--only", "ngircd"]));
    run_ok(&mut fx.fireclaw(&["uninstall"]));
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn a_second_provision_of_the_same_root_is_refused_while_one_runs() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("lock", &archive, &digest);
    // Hold the lock a running provision would hold: a flock on the root directory.
    let dir = std::fs::File::open(&fx.root).expect("open root");
    let held =
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).expect("flock");
    let before = fx.host_state();
    let out = run(&mut fx.fireclaw(&["provision", "--only", "network"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("another fireclaw provision/uninstall is running"));
    assert_eq!(
        fx.host_state(),
        before,
        "a refused provision changed something"
    );
    drop(held);
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network"]));
    run_ok(&mut fx.fireclaw(&["uninstall"]));
}

/// An operator's own firecracker in `bin_dir` comes back exactly (bytes, mode, owner)
/// after uninstall, whether provision's install failed before touching them or replaced them.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn an_operators_firecracker_comes_back_after_a_failed_or_a_successful_install() {
    if !host_tier() {
        return;
    }
    let (good, good_digest) = release_archive();
    for (digest, succeeds) in [
        (support::sha256_hex(b"something else"), false),
        (good_digest, true),
    ] {
        let fx = fixture("ownfc", &good, &digest);
        let bin = fx.root.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        // The operator installed firecracker by hand (no jailer): provision installs both.
        let own = bin.join("firecracker");
        std::fs::write(&own, b"#!/bin/sh\necho operator's firecracker\n").expect("write");
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::os::unix::fs::chown(&own, Some(65534), Some(65534)).expect("chown");
        let before = fx.host_state();
        let out = run(&mut fx.fireclaw(&["provision", "--only", "firecracker"]));
        assert_eq!(out.status.success(), succeeds, "{out:?}");
        if succeeds {
            let installed = std::fs::read_to_string(bin.join("firecracker")).expect("read");
            assert!(installed.contains("Firecracker v1.16.1"), "{installed}");
        }
        let undo = run_ok(&mut fx.fireclaw(&["uninstall", "--dry-run"]));
        assert!(undo.contains("/usr/local/bin/firecracker"), "{undo}");
        run_ok(&mut fx.fireclaw(&["uninstall"]));
        assert_eq!(
            fx.host_state(),
            before,
            "the operator's binaries were not restored (install {})",
            if succeeds { "succeeded" } else { "failed" }
        );
    }
}

/// `[network] nft_table` naming a table fireclaw did not create (the operator's `inet filter`
/// with a drop policy) blocks the plan with the setting to change, and applying changes nothing.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn an_nft_table_fireclaw_did_not_create_is_refused() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("nftown", &archive, &digest);
    let mut nft = fx.ns.cmd("nft", &["-f", "-"]);
    let mut child = nft.stdin(Stdio::piped()).spawn().expect("nft");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        b"table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tiif lo accept\n\t}\n}\n",
    )
    .expect("write");
    assert!(child.wait().expect("nft").success());
    let mut config = std::fs::read_to_string(&fx.config).expect("config");
    config.push_str("[network]\nnft_table = \"filter\"\n");
    std::fs::write(&fx.config, config).expect("config");
    let before = fx.host_state();

    let out = run(&mut fx.fireclaw(&["provision", "--dry-run", "--only", "network"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "FAIL nftables table: table inet filter exists and fireclaw did not create it"
        ),
        "{text}"
    );
    assert!(text.contains("`nft_table` under [network]"), "{text}");
    let out = run(&mut fx.fireclaw(&["provision", "--dry-run", "--json", "--only", "network"]));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(plan["blocked"], true);
    let out = run(&mut fx.fireclaw(&["provision", "--only", "network"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(fx.host_state(), before, "the operator's table was touched");
}

/// VMs recorded in the database (a kept one, with its tap, VMM process and run dir) are torn down
/// first, listed, so uninstall orphans nothing.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn uninstall_tears_down_recorded_vms_first() {
    if !host_tier() || !tier("host", true, &["python3"]) {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("vmsgone", &archive, &digest);
    let before = fx.host_state();
    run_ok(&mut fx.fireclaw(&["provision", "--only", "network"]));
    let run_dir = fx.base.join("vms/kept1");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    std::fs::write(run_dir.join("console.log"), b"booted\n").expect("write");
    run_ok(
        &mut fx
            .ns
            .cmd("ip", &["tuntap", "add", "fctap-kept1", "mode", "tap"]),
    );
    run_ok(
        &mut fx
            .ns
            .cmd("ip", &["link", "set", "fctap-kept1", "master", "fcbr0"]),
    );
    // Stands in for the VMM: a process whose command line names the run dir.
    let mut vmm = Command::new("python3")
        .args(["-c", "import time; time.sleep(300)"])
        .arg(&run_dir)
        .spawn()
        .expect("fake vmm");
    {
        let db = fireclaw::state::Db::open(&fx.root.join("var/lib/fireclaw/state.db")).expect("db");
        fireclaw::vm::record::insert(
            &db,
            &fireclaw::vm::record::VmRecord {
                id: "kept1".into(),
                vmm: "firecracker".into(),
                state: "kept".into(),
                owner_pid: None,
                owner_start: None,
                vmm_pid: Some(i64::from(vmm.id())),
                tap: "fctap-kept1".into(),
                ip: None,
                run_dir: run_dir.clone(),
                disk_planned: fx.base.join("vms/kept1.ext4"),
                disk: None,
                policy: "local".into(),
                image: "base".into(),
                created_at: 0,
            },
        )
        .expect("insert");
    }
    // A clone slot the VM held (a warm agent's), its namespace and its row: uninstall removes
    // them with the VM. (A high index: the runtime's own slots count up from 0.)
    run_ok(Command::new("ip").args(["netns", "add", "fc-slot-999"]));
    {
        let db = fireclaw::state::Db::open(&fx.root.join("var/lib/fireclaw/state.db")).expect("db");
        db.conn()
            .execute(
                "INSERT INTO net_slots (idx, ns, host_veth, outside_ip, policy, state, vm_id, created_at)
                 VALUES (999, 'fc-slot-999', 'fcv999h', 999, 'full', 'in_use', 'kept1', 0)",
                [],
            )
            .expect("slot row");
    }
    let dry = run_ok(&mut fx.fireclaw(&["uninstall", "--dry-run"]));
    assert!(dry.contains("tear down VM kept1"), "{dry}");
    assert!(
        Path::new("/run/netns/fc-slot-999").exists(),
        "a dry-run removed the slot"
    );
    let out = run(&mut fx.fireclaw(&["uninstall"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("kept1"), "the VM was not listed: {err}");
    assert!(err.contains("Removed 1 clone slot"), "{err}");
    assert!(
        !Path::new("/run/netns/fc-slot-999").exists(),
        "the clone slot's namespace outlived uninstall"
    );
    let reaped = (0..100).any(|_| {
        if vmm.try_wait().expect("wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    if !reaped {
        let _ = vmm.kill();
        let _ = vmm.wait();
    }
    assert!(reaped, "the VM's process survived uninstall");
    assert!(!run_dir.exists(), "the VM's run dir survived uninstall");
    assert_eq!(
        fx.host_state(),
        before,
        "uninstall left the VM's tap or state"
    );
}

/// What apply would fail on, the dry-run blocks with the fix, in text and JSON: a bridge subnet
/// that overlaps an address (the uplink's) or a route on the host, a loopback bridge address, a
/// missing or read-only --root.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn a_dry_run_blocks_what_apply_would_fail_on() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("truth", &archive, &digest);
    let blocked = |fx: &Fixture, args: &[&str], needle: &str| {
        let mut all = vec!["provision", "--dry-run"];
        all.extend_from_slice(args);
        let out = run(&mut fx.fireclaw(&all));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
        all.push("--json");
        let out = run(&mut fx.fireclaw(&all));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
        assert_eq!(plan["blocked"], true);
        let checks: Vec<String> = plan["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["checks"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["ok"] == false && c["required"] == true && c["fix"].is_string())
            .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            checks.iter().any(|d| text.contains(d.as_str())),
            "{checks:?}"
        );
    };
    // The uplink's address in the bridge's subnet; then only a route into it.
    run_ok(
        &mut fx
            .ns
            .cmd("ip", &["link", "add", "uplink0", "type", "bridge"]),
    );
    run_ok(&mut fx.ns.cmd("ip", &["link", "set", "uplink0", "up"]));
    run_ok(
        &mut fx
            .ns
            .cmd("ip", &["addr", "add", "172.16.0.77/16", "dev", "uplink0"]),
    );
    blocked(
        &fx,
        &["--only", "network"],
        "overlaps address 172.16.0.77/16 on uplink0",
    );
    run_ok(&mut fx.ns.cmd("ip", &["addr", "flush", "dev", "uplink0"]));
    run_ok(
        &mut fx
            .ns
            .cmd("ip", &["route", "add", "172.16.0.0/20", "dev", "uplink0"]),
    );
    blocked(
        &fx,
        &["--only", "network"],
        "overlaps route 172.16.0.0/20 via uplink0",
    );
    run_ok(&mut fx.ns.cmd("ip", &["link", "del", "uplink0"]));

    let config = std::fs::read_to_string(&fx.config).expect("config");
    std::fs::write(
        &fx.config,
        format!("{config}[network]\naddress = \"127.0.0.1/8\"\n"),
    )
    .expect("config");
    blocked(
        &fx,
        &["--only", "network"],
        "127.0.0.1/8 is a loopback address",
    );
    std::fs::write(&fx.config, &config).expect("config");

    let missing = fx.base.join("no-such-root");
    let out = run(&mut fx.ns.cmd(
        support::bin(),
        &[
            "--root",
            missing.to_str().unwrap_or_default(),
            "--config",
            fx.config.to_str().unwrap_or_default(),
            "provision",
            "--only",
            "layout",
        ],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("FAIL root prefix") && text.contains("--root"),
        "{text}"
    );
    assert!(!missing.exists(), "a blocked provision created the root");

    // A --root that is a file: the error names --root, and states its cause once.
    let file_root = fx.base.join("firecracker.tgz");
    let out = run(&mut fx.ns.cmd(
        support::bin(),
        &[
            "--root",
            file_root.to_str().unwrap_or_default(),
            "provision",
            "--dry-run",
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--root") && err.contains("not a directory"),
        "{err}"
    );
    assert!(err.matches("os error").count() <= 1, "{err}");

    let ro = fx.base.join("ro-root");
    std::fs::create_dir(&ro).expect("mkdir");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro", "tmpfs"])
            .arg(&ro),
    );
    let out = run(&mut fx.ns.cmd(
        support::bin(),
        &[
            "--root",
            ro.to_str().unwrap_or_default(),
            "--config",
            fx.config.to_str().unwrap_or_default(),
            "provision",
            "--dry-run",
            "--only",
            "layout",
        ],
    ));
    let _ = Command::new("umount").arg(&ro).status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("is not writable"), "{text}");
}

/// Exit codes: 3 blocked (above), `--detailed-exitcode` 0 nothing to do / 4 changes, `--json`
/// without `--dry-run` applies and prints the plan; `status` and `uninstall` on a host with no
/// state database say so and create nothing.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn detailed_exit_codes_and_json_apply() {
    if !host_tier() {
        return;
    }
    let (archive, digest) = release_archive();
    let fx = fixture("exitc", &archive, &digest);
    let before = fx.host_state();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["uninstall"],
        &["uninstall", "--json"],
    ] {
        let out = run(&mut fx.fireclaw(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Not provisioned")
                || text.contains("\"provisioned\": false")
                || text.contains("Nothing to uninstall")
                || text.contains("\"reversals\": []"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(fx.host_state(), before, "status/uninstall created state");

    let code = |args: &[&str]| run(&mut fx.fireclaw(args)).status.code();
    let only = ["--only", "network"];
    assert_eq!(
        code(&[
            "provision",
            "--dry-run",
            "--detailed-exitcode",
            only[0],
            only[1]
        ]),
        Some(4)
    );
    assert_eq!(code(&["provision", "--dry-run", only[0], only[1]]), Some(0));
    let out = run(&mut fx.fireclaw(&[
        "provision",
        "--json",
        "--detailed-exitcode",
        only[0],
        only[1],
    ]));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON after apply");
    assert_eq!(applied["dry_run"], false);
    assert!(run_ok(&mut fx.ns.cmd("ip", &["link", "show", "fcbr0"])).contains("fcbr0"));
    assert_eq!(
        code(&["provision", "--detailed-exitcode", only[0], only[1]]),
        Some(0)
    );
    assert_eq!(
        code(&["uninstall", "--dry-run", "--detailed-exitcode"]),
        Some(4)
    );
    let out = run(&mut fx.fireclaw(&["uninstall", "--json", "--detailed-exitcode"]));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let undone: serde_json::Value = serde_json::from_slice(&out.stdout).expect("uninstall JSON");
    assert_eq!(undone["dry_run"], false);
    assert!(undone["failures"].as_array().is_some_and(|f| f.is_empty()));
    assert_eq!(code(&["uninstall", "--detailed-exitcode"]), Some(0));
    assert_eq!(fx.host_state(), before);
}

/// The fixture runs ngircd as its unit does, so the configuration the old provision wrote
/// (`root:root` 0600) fails here exactly as it did on a real host.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn ngircd_as_its_unit_cannot_read_a_root_only_config() {
    if !tier("host", true, &["ip", "ngircd", "setpriv"]) {
        return;
    }
    let ns = NetNs::new("irc600");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let params = fireclaw::irc::ngircd::NgircdParams {
        listen: "127.0.0.1".into(),
        port: 16667,
        pid_file: "/run/ngircd/ngircd.pid",
        operator_password: "test-operator-password",
    };
    let text = fireclaw::irc::ngircd::render(&fireclaw::config::Config::default(), &params)
        .expect("render");
    let conf = dir.path().join("ngircd.conf");
    std::fs::write(&conf, text).expect("write");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = match fireclaw_testkit::ngircd::Ngircd::start(
        &conf,
        &ns.name,
        "127.0.0.1:16667".parse().expect("addr"),
    ) {
        Ok(_) => panic!("ngircd started as irc with a root-only config"),
        Err(e) => e,
    };
    assert!(err.contains("Permission denied"), "{err}");
}
