//! Host tier: the overseer in `fireclaw runtime`, against a real ngircd started as Debian's unit
//! starts it (as `irc`, with fireclaw's own rendered configuration and operator password), with
//! people on IRC played by the testkit's client. Everything runs in a private network namespace.
//! Needs root, ip, nft, setpriv, ngircd and the `fireclaw` group (created here when missing).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fireclaw_testkit::irc::{IrcClient, Line};
use fireclaw_testkit::ngircd::Ngircd;
use fireclaw_testkit::ollama::OllamaDouble;
use support::runtime::{GroupGuard, Runtime};
use support::{run_ok, tier, NetNs};

const PASSWORD: &str = "test-operator-password-0123456789";
const IRC: &str = "127.0.0.1:6667";

fn host_tier() -> bool {
    tier(
        "host",
        true,
        &["ip", "nft", "setpriv", "ngircd", "groupadd"],
    ) && support::require(
        "host",
        &[(
            fireclaw_testkit::ngircd::UNIT_FILE,
            Path::new(fireclaw_testkit::ngircd::UNIT_FILE).exists(),
        )],
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    ngircd_conf: PathBuf,
    ns: NetNs,
    _ollama: OllamaDouble,
    _group: GroupGuard,
}

fn fixture(tag: &str) -> Fixture {
    let group = GroupGuard::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // ngircd runs as `irc` and must reach its configuration.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/fireclaw")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc/fireclaw")).expect("mkdir");
    std::fs::write(
        root.join("etc/fireclaw/irc-operator.pass"),
        format!("{PASSWORD}\n"),
    )
    .expect("password");
    let ns = NetNs::new(tag);
    let listener = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let ollama = OllamaDouble::start(listener, &["qwen2.5:7b", "qwen2.5-coder:7b"]);
    let config = dir.path().join("fireclaw.toml");
    std::fs::write(
        &config,
        format!(
            "[irc]\nadmins = [\"alice!*@*\"]\n[ollama]\nurl = \"{}\"\n[agents]\nimage = \"missing\"\n",
            ollama.url()
        ),
    )
    .expect("config");
    let parsed =
        fireclaw::config::Config::parse(&std::fs::read_to_string(&config).expect("read"), &config)
            .expect("config parses");
    let run = dir.path().join("ngircd");
    std::fs::create_dir(&run).expect("mkdir");
    let irc = nix::unistd::User::from_name("irc")
        .expect("users")
        .expect("irc user");
    nix::unistd::chown(&run, Some(irc.uid), Some(irc.gid)).expect("chown");
    let pid_file = run.join("ngircd.pid");
    let text = fireclaw::irc::ngircd::render(
        &parsed,
        &fireclaw::irc::ngircd::NgircdParams {
            listen: "127.0.0.1".into(),
            port: 6667,
            pid_file: pid_file.to_str().expect("utf-8"),
            operator_password: PASSWORD,
        },
    )
    .expect("render");
    let ngircd_conf = dir.path().join("ngircd.conf");
    std::fs::write(&ngircd_conf, text).expect("ngircd.conf");
    std::fs::set_permissions(&ngircd_conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let fx = Fixture {
        dir,
        root,
        config,
        ngircd_conf,
        ns,
        _ollama: ollama,
        _group: group,
    };
    fx.db().mark_step_complete("network").expect("mark");
    fx
}

impl Fixture {
    fn db(&self) -> fireclaw::state::Db {
        fireclaw::state::Db::open(&self.root.join("var/lib/fireclaw/state.db")).expect("db")
    }

    fn fireclaw(&self, args: &[&str]) -> std::process::Command {
        let mut all = vec![
            "--root",
            self.root.to_str().unwrap_or_default(),
            "--config",
            self.config.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        self.ns.cmd(support::bin(), &all)
    }

    fn ngircd(&self) -> Ngircd {
        Ngircd::start(&self.ngircd_conf, &self.ns.name, IRC.parse().expect("addr"))
            .expect("ngircd as its unit starts it")
    }

    fn runtime(&self) -> Runtime {
        Runtime::start(self.fireclaw(&["runtime"]), self.dir.path())
    }

    fn audit(&self) -> Vec<fireclaw::agents::store::AuditRow> {
        fireclaw::agents::store::audit_tail(&self.db(), 100_000).expect("audit")
    }
}

/// A person in `#control`.
fn person(server: &Ngircd, nick: &str) -> IrcClient {
    let mut c = IrcClient::register(server.connect().expect("connect"), nick).expect("register");
    c.join("#control").expect("join");
    c
}

/// The overseer's next line to `target` within `secs`.
fn answer(c: &mut IrcClient, target: &str, secs: u64) -> Option<Line> {
    c.wait_for(Duration::from_secs(secs), |l| {
        (l.command == "PRIVMSG" || l.command == "NOTICE")
            && l.nick() == Some("overseer")
            && l.params
                .first()
                .is_some_and(|t| t.eq_ignore_ascii_case(target))
    })
}

fn ask(c: &mut IrcClient, text: &str) -> String {
    // Answers to other people's commands in the channel are not this one's.
    let _ = c.collect(Duration::from_millis(300));
    c.say("#control", text).expect("say");
    answer(c, "#control", 20)
        .unwrap_or_else(|| panic!("no answer to {text:?}"))
        .text()
        .to_string()
}

fn wait_overseer(rt: &Runtime, c: &mut IrcClient) {
    rt.wait_log("overseer: registered");
    // In the channel once it answers there.
    let start = Instant::now();
    loop {
        c.say("#control", "!help list").expect("say");
        if answer(c, "#control", 3).is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the overseer never answered in #control:\n{}",
            rt.log_text()
        );
    }
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd as its unit runs it); run with --include-ignored"]
fn the_overseer_answers_refuses_and_audits_everything() {
    if !host_tier() {
        return;
    }
    let fx = fixture("ovs");
    let server = fx.ngircd();
    let rt = fx.runtime();
    let mut alice = person(&server, "alice");
    wait_overseer(&rt, &mut alice);
    rt.wait_log("IRC operator");
    let mut mallory = person(&server, "mallory");
    let mut opal = person(&server, "opal");
    opal.send_raw(&format!("OPER overseer {PASSWORD}"))
        .expect("oper");
    opal.wait_for(Duration::from_secs(10), |l| l.command == "381")
        .expect("opal becomes an IRC operator");

    // Reading is for anyone; the manager's answers come through.
    assert!(ask(&mut mallory, "!list").contains("No agents"));
    let models = ask(&mut alice, "!models");
    assert!(models.contains("qwen2.5"), "{models}");
    // Commands count only at the start of a message.
    let _ = alice.collect(Duration::from_millis(300));
    alice.say("#control", "please !destroy bob").expect("say");
    assert!(
        answer(&mut alice, "#control", 3).is_none(),
        "talk taken for a command"
    );

    // Authorization: a non-admin is refused politely; an admin and an IRC operator get through.
    for text in ["!destroy bob", "!invoke coder bob", "!model bob qwen2.5:7b"] {
        let a = ask(&mut mallory, text);
        assert!(
            a.starts_with("Sorry mallory, only fireclaw admins"),
            "{text}: {a}"
        );
    }
    let a = ask(&mut opal, "!destroy ghost");
    assert!(a.contains("no agent named ghost"), "{a}");
    let a = ask(&mut alice, "!destroy ghost");
    assert!(a.contains("no agent named ghost"), "{a}");

    // Hostile names and input: refused with one line, nothing created.
    for (text, expect) in [
        ("!invoke coder ../x", "not a valid agent name"),
        ("!invoke coder a;b", "not a valid agent name"),
        ("!destroy a b", "exactly one agent"),
        ("!invoke coder a\u{a0}b", ""),
        ("!invoke coder overseer", "overseer's own name"),
        ("!invoke coder OVERSEER", "overseer's own name"),
        ("!invoke nosuch bob", "nosuch"),
        ("!frob", "!help"),
        ("!destroy bob\u{1}x", ""),
        ("!list\u{3}4red", ""),
    ] {
        let a = ask(&mut alice, text);
        assert!(a.contains(expect), "{text:?}: {a}");
        assert!(!a.contains(" is up "), "{text:?} started something: {a}");
    }
    // A NUL inside a line, a CR in the middle, an overlong line: ngircd decides what arrives
    // (it cuts lines at 512 bytes); the overseer answers whatever did with at most a refusal,
    // and lives on. Each from a fresh person, so ngircd's own penalties on one sender do not
    // hide the overseer's answer.
    let mut nul = person(&server, "nul");
    nul.send_raw("PRIVMSG #control :!destroy bo\0b")
        .expect("raw");
    nul.send_raw("PRIVMSG #control :!destroy x\rPRIVMSG #control :!list")
        .expect("raw");
    let seen = nul.collect(Duration::from_secs(3));
    eprintln!(
        "after NUL and CR: {:?}",
        seen.iter().map(|l| &l.raw).collect::<Vec<_>>()
    );
    // ngircd admits 5 connections per address (MaxConnectionsIP): one leaves first.
    nul.send_raw("QUIT").expect("quit");
    drop(nul);
    std::thread::sleep(Duration::from_millis(500));
    let mut long = person(&server, "longy");
    // The longest line ngircd passes on (512 bytes with CR LF): one short refusal comes back.
    let a = ask(&mut long, &format!("!destroy {}", "a".repeat(480)));
    assert!(a.len() < 200 && a.contains("not a valid agent name"), "{a}");
    // Longer than that, ngircd itself drops the sender ("Request too long"): nothing reaches
    // the overseer.
    long.say("#control", &format!("!destroy {}", "b".repeat(600)))
        .expect("say");
    let seen = long.collect(Duration::from_secs(3));
    assert!(
        seen.iter().any(|l| l.raw.contains("Request too long")),
        "{seen:?}"
    );
    // An invoke that reaches the manager, whose image is missing: a sentence, and the row says
    // why.
    let a = ask(&mut alice, "!invoke quick tester");
    assert!(a.contains("tester could not start"), "{a}");
    let a = ask(&mut alice, "!status tester");
    assert!(a.contains("failed"), "{a}");
    let a = ask(&mut alice, "!destroy tester --purge");
    assert!(a.contains("tester destroyed"), "{a}");
    // Five templates are more than the channel takes: a pointer there, the lines by DM.
    let a = ask(&mut alice, "!templates");
    assert_eq!(a, "alice: 5 lines; sent to you privately.");
    let dm = answer(&mut alice, "alice", 10).expect("the templates by DM");
    assert!(dm.text().starts_with("coder: "), "{dm:?}");

    // 100 commands in one second from an operator with relaxed flood protection: throttled,
    // nothing crashes, every one in the audit trail.
    opal.send_raw("MODE opal +F").expect("mode");
    let before = fx.audit().len();
    let burst: String = (0..100)
        .map(|i| format!("PRIVMSG #control :!status x{i}\r\n"))
        .collect();
    let start = Instant::now();
    opal.send_raw(burst.trim_end()).expect("burst");
    let sent = start.elapsed();
    assert!(sent < Duration::from_secs(1), "{sent:?}");
    support::runtime::wait_for(Duration::from_secs(120), || {
        fx.audit()
            .iter()
            .skip(before)
            .filter(|r| r.actor.starts_with("opal!") && r.command.starts_with("!status x"))
            .count()
            == 100
    });
    let rows: Vec<_> = fx.audit().into_iter().skip(before).collect();
    let throttled = rows
        .iter()
        .filter(|r| r.result.starts_with("throttled"))
        .count();
    eprintln!(
        "burst of 100: {} answered, {throttled} throttled",
        rows.len() - throttled
    );
    // The overseer still answers.
    let a = ask(&mut alice, "!list");
    assert!(a.contains("No agents"), "{a}");

    // Every command above is in the audit trail, refusals included, with who sent it.
    let audit = fx.audit();
    assert!(audit
        .iter()
        .any(|r| r.actor.starts_with("mallory!") && r.command == "!destroy bob" && !r.ok));
    assert!(audit
        .iter()
        .any(|r| r.actor.starts_with("opal!") && r.command == "!destroy ghost"));
    assert!(!audit.iter().any(|r| r.command.starts_with("please")));
    // `fireclaw audit` shows it, as text and JSON.
    let text = run_ok(&mut fx.fireclaw(&["audit", "-n", "5"]));
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.contains("alice!"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&mut fx.fireclaw(&["audit", "--json", "-n", "500"])))
            .expect("json");
    assert!(json.as_array().expect("array").len() > 100);
    let (status, log) = rt.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd as its unit runs it); run with --include-ignored"]
fn the_overseer_comes_back_after_ngircd_restarts() {
    if !host_tier() {
        return;
    }
    let fx = fixture("ovr");
    let server = fx.ngircd();
    let rt = fx.runtime();
    let mut alice = person(&server, "alice");
    wait_overseer(&rt, &mut alice);
    drop(alice);
    drop(server);
    std::thread::sleep(Duration::from_secs(2));
    let server = fx.ngircd();
    let mut alice = person(&server, "alice");
    wait_overseer(&rt, &mut alice);
    assert!(ask(&mut alice, "!list").contains("No agents"));
    let (status, log) = rt.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("reconnecting"), "{log}");
}

/// `fireclaw agent` over the control socket: the overseer's semantics, hostile names refused
/// before anything runs, every call audited with the caller's uid.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd as its unit runs it); run with --include-ignored"]
fn fireclaw_agent_goes_through_the_socket_and_is_audited() {
    if !host_tier() {
        return;
    }
    let fx = fixture("agcli");
    let rt = fx.runtime();
    let out = |args: &[&str]| {
        let o = fx.fireclaw(args).output().expect("run fireclaw");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = out(&["agent", "ls"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("No agents"), "{stdout}");
    // The image is missing here: the start fails with the manager's sentence, the row says why.
    let (code, _, stderr) = out(&["agent", "start", "quick", "--name", "tester"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("tester could not start"), "{stderr}");
    let (code, stdout, _) = out(&["agent", "ls"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("tester (quick,") && stdout.contains("failed"),
        "{stdout}"
    );
    for bad in ["../x", "a;b", "a b", "overseer"] {
        let (code, _, stderr) = out(&["agent", "start", "quick", "--name", bad]);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        let (code, _, stderr) = out(&["agent", "rm", bad]);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
    }
    let (code, _, stderr) = out(&["agent", "logs", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no agent named nobody"), "{stderr}");
    let (code, stdout, stderr) = out(&["agent", "rm", "tester", "--purge"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("tester destroyed (workspace purged)"),
        "{stdout}"
    );
    let audit = fx.audit();
    let socket: Vec<_> = audit
        .iter()
        .filter(|r| r.source == fireclaw::agents::store::Source::Socket)
        .collect();
    assert!(
        socket.iter().all(|r| r.actor.starts_with("uid 0 ")),
        "{socket:?}"
    );
    assert!(socket
        .iter()
        .any(|r| r.command == "agent rm tester --purge" && r.ok));
    assert!(socket
        .iter()
        .any(|r| r.command == "agent start quick tester" && !r.ok));
    let (status, log) = rt.stop();
    assert!(status.success(), "{log}");
}

/// An agent is never named after someone on IRC: the overseer asks the server (ISON), in any
/// case, whether that person is in a channel with it or not; the refusal is one line, audited,
/// and nothing is written to the agents table.
#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd as its unit runs it); run with --include-ignored"]
fn an_agent_is_not_named_after_someone_on_irc() {
    if !host_tier() {
        return;
    }
    let fx = fixture("nick");
    let server = fx.ngircd();
    let rt = fx.runtime();
    let mut alice = person(&server, "alice");
    wait_overseer(&rt, &mut alice);
    // bob is on the server but in no channel.
    let _bob = IrcClient::register(server.connect().expect("connect"), "bob").expect("register");

    for (text, nick) in [
        ("!invoke worker alice", "alice"),
        ("!invoke worker ALICE", "alice"),
        ("!invoke worker bob", "bob"),
    ] {
        let _ = alice.collect(Duration::from_millis(300));
        let mark = alice.seen.len();
        alice.say("#control", text).expect("say");
        let a = answer(&mut alice, "#control", 20)
            .unwrap_or_else(|| panic!("no answer to {text:?}:\n{}", rt.log_text()));
        assert_eq!(
            a.text(),
            format!("Sorry, {nick} is someone's nick on IRC right now; choose another name for the agent."),
            "{text}"
        );
        let more = alice.collect(Duration::from_secs(1));
        assert!(
            !alice.seen[mark..]
                .iter()
                .chain(more.iter())
                .any(|l| l.nick() == Some("overseer") && l.raw != a.raw && l.command == "PRIVMSG"),
            "more than one line for {text:?}"
        );
    }
    let rows = fireclaw::agents::store::list(&fx.db()).expect("agents");
    assert!(rows.is_empty(), "{rows:?}");
    let audit = fx.audit();
    let refused = audit
        .iter()
        .find(|r| r.actor.starts_with("alice!") && r.command == "!invoke worker alice")
        .expect("the refusal audited");
    assert!(
        !refused.ok && refused.result.contains("someone's nick on IRC"),
        "{refused:?}"
    );

    // The same through the control socket.
    let o = fx
        .fireclaw(&["agent", "start", "worker", "--name", "Alice"])
        .output()
        .expect("run fireclaw");
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("alice is someone's nick on IRC"),
        "{stderr}"
    );
    assert!(fireclaw::agents::store::list(&fx.db())
        .expect("agents")
        .is_empty());

    // A name nobody is on IRC under gets to the manager (whose image is missing here).
    let a = ask(&mut alice, "!invoke quick carol");
    assert!(a.contains("carol could not start"), "{a}");
    let (status, log) = rt.stop();
    assert!(status.success(), "{log}");
}
