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

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn the_generated_ngircd_config_runs_a_real_ngircd_that_a_client_can_join() {
    if !tier("host", true, &["ip", "ngircd"]) {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let ns = NetNs::new("irc");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fireclaw::config::Config::default();
    let pid_file = dir.path().join("ngircd.pid");
    let port = 16667;
    let params = fireclaw::irc::ngircd::NgircdParams {
        listen: "127.0.0.1".into(),
        port,
        pid_file: pid_file.to_str().unwrap_or_default(),
        operator_password: "test-operator-password",
    };
    let text = fireclaw::irc::ngircd::render(&config, &params).expect("render");
    // The test runs ngircd as root without switching user, so the pid file in a private dir works.
    let text = text.replace("\tServerUID = irc\n\tServerGID = irc\n", "");
    let conf = dir.path().join("ngircd.conf");
    std::fs::write(&conf, &text).expect("write conf");
    let conf_arg = conf.to_str().unwrap_or_default();
    let check = run(&mut ns.cmd("ngircd", &["--configtest", "-f", conf_arg]));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "ngircd --configtest rejected it:\n{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("nyx.fireclaw.local") && stdout.contains("FireclawNet"),
        "{stdout}"
    );

    let mut server = ns
        .cmd("ngircd", &["--nodaemon", "-f", conf_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ngircd");
    let result = ns.enter(move || -> Result<Vec<String>, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("ngircd never listened: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
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
    });
    let _ = server.kill();
    let _ = server.wait();
    let lines = result.expect("IRC session");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("JOIN") && l.contains("#agents")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("nyx.fireclaw.local")),
        "{lines:?}"
    );
    // The predefined topic proves the channel came from our configuration.
    assert!(
        lines.iter().any(|l| l.contains("the common room")),
        "{lines:?}"
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
    assert_eq!(out.status.code(), Some(2), "a blocked dry-run exits 2");
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
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("preflight failed; nothing was changed"));
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
