//! The agent's world for the host-tier tests: a network namespace, a real ngircd started as its
//! unit starts it (testkit), the Ollama double listening inside the namespace, a workspace, and
//! `fireclaw-guest run` itself, started in the namespace as an unprivileged user (`nobody`, via
//! setpriv, as the image's init starts it as `agent`).
#![allow(dead_code)]

use std::net::{SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fireclaw_testkit::irc::{IrcClient, Line};
use fireclaw_testkit::ngircd::Ngircd;
use fireclaw_testkit::ollama::OllamaDouble;

pub const NICK: &str = "coder";
pub const MODEL: &str = "qwen2.5-coder:7b";
pub const PERSONA: &str = "You are coder, a careful test agent.";
/// The unprivileged user the agent runs as here (the image has `agent`).
pub const AGENT_UID: u32 = 65534;
const IRC_ADDR: &str = "127.0.0.1:6667";

/// Fails (never skips) when a prerequisite of the host tier is missing.
pub fn host_tier() {
    let root = nix::unistd::geteuid().is_root();
    let mut missing = Vec::new();
    if !root {
        missing.push("root");
    }
    for c in [
        "/usr/sbin/ngircd",
        "/usr/bin/setpriv",
        "/usr/bin/ip",
        "/bin/sh",
    ] {
        if !Path::new(c).exists() && !Path::new(&c.replace("/usr", "")).exists() {
            missing.push(c);
        }
    }
    if !Path::new(fireclaw_testkit::ngircd::UNIT_FILE).exists() {
        missing.push(fireclaw_testkit::ngircd::UNIT_FILE);
    }
    assert!(
        missing.is_empty(),
        "host tier prerequisites missing: {} (install ngircd and util-linux, run as root, or run without --include-ignored)",
        missing.join(", ")
    );
}

/// A network namespace with loopback up, deleted on drop.
pub struct NetNs {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        fireclaw_testkit::netns::reap_orphans("fcg");
        let name = format!(
            "fcg-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name}");
        let ns = NetNs { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .expect("ip link");
        assert!(ok.success());
        ns
    }

    /// A TCP listener on 127.0.0.1 (any port) inside the namespace.
    pub fn listen(&self) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("127.0.0.1:0").expect("bind in netns")
        })
        .join()
        .expect("listener thread")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// The binary under test: this build's, or the one `FIRECLAW_GUEST_BIN` names (to run these tests
/// against the static musl build).
pub fn guest_bin() -> std::ffi::OsString {
    std::env::var_os("FIRECLAW_GUEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_fireclaw-guest").into())
}

/// Options of one world's agent configuration.
#[derive(Clone)]
pub struct Setup {
    pub models: Vec<&'static str>,
    pub model: String,
    pub ollama_url: Option<String>,
    pub limits: String,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            models: vec![MODEL],
            model: MODEL.into(),
            ollama_url: None,
            limits: String::new(),
        }
    }
}

pub struct World {
    guest: Option<Child>,
    pub ollama: OllamaDouble,
    pub ngircd: Option<Ngircd>,
    pub dir: tempfile::TempDir,
    pub workspace: PathBuf,
    pub spool: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub setup: Setup,
    pub ns: NetNs,
}

fn chown(path: &Path, uid: u32) {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .expect("chown");
}

impl World {
    /// Everything up, the agent registered and in `#agents`.
    pub fn start(tag: &str, setup: Setup) -> World {
        let mut world = World::prepare(tag, setup);
        world.write_config();
        world.spawn_guest(&[]);
        world
    }

    /// ngircd and the Ollama double up, the agent started with `--wait-for-config` before its
    /// config exists (as an agent VM's init starts it before the host writes the file).
    pub fn start_without_config(tag: &str, setup: Setup) -> World {
        let mut world = World::prepare(tag, setup);
        world.spawn_guest(&["--wait-for-config"]);
        world
    }

    fn prepare(tag: &str, setup: Setup) -> World {
        host_tier();
        let ns = NetNs::new(tag);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let irc_uid = nix::unistd::User::from_name("irc")
            .expect("user db")
            .expect("user irc")
            .uid
            .as_raw();
        let run = dir.path().join("ngircd");
        std::fs::create_dir(&run).unwrap();
        chown(&run, irc_uid);
        let conf = dir.path().join("ngircd.conf");
        std::fs::write(
            &conf,
            format!(
                "[Global]\n\tName = nyx.fireclaw.local\n\tInfo = fireclaw test\n\tNetwork = FireclawNet\n\
                 \tListen = 127.0.0.1\n\tPorts = 6667\n\tMotdPhrase = test\n\tPidFile = {}/ngircd.pid\n\
                 [Limits]\n\tMaxNickLength = 30\n\tPingTimeout = 120\n\tPongTimeout = 60\n\
                 [Options]\n\tDNS = no\n\tIdent = no\n\tPAM = no\n",
                run.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let addr: SocketAddrV4 = IRC_ADDR.parse().unwrap();
        let ngircd = Ngircd::start(&conf, &ns.name, addr).expect("ngircd starts");
        let ollama = OllamaDouble::start(ns.listen(), &setup.models);
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        chown(&workspace, AGENT_UID);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chown(&state, AGENT_UID);
        World {
            guest: None,
            ollama,
            ngircd: Some(ngircd),
            config_path: dir.path().join("agent.toml"),
            log_path: dir.path().join("guest.log"),
            spool: state.join("usage.jsonl"),
            workspace,
            dir,
            setup,
            ns,
        }
    }

    pub fn write_config(&self) {
        let s = &self.setup;
        let url = s.ollama_url.clone().unwrap_or_else(|| self.ollama.url());
        let text = format!(
            "nick = \"{NICK}\"\npersona = \"{PERSONA}\"\nworkspace = \"{}\"\nusage_spool = \"{}\"\n\
             [irc]\nserver = \"{IRC_ADDR}\"\nchannels = [\"#agents\"]\nquit_message = \"coder signing off\"\n\
             [ollama]\nurl = \"{url}\"\nmodel = \"{}\"\n[limits]\n{}\n",
            self.workspace.display(),
            self.spool.display(),
            s.model,
            s.limits
        );
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    fn spawn_guest(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(&self.log_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "setpriv"])
            .arg(format!("--reuid={AGENT_UID}"))
            .arg(format!("--regid={AGENT_UID}"))
            .args(["--clear-groups", "--no-new-privs", "--"])
            .arg(guest_bin())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(extra)
            .env("FIRECLAW_GUEST_LOG", "debug,irc=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn fireclaw-guest");
        self.guest = Some(child);
    }

    /// Stops the agent with SIGTERM and starts it again (as the image's init restarts it).
    pub fn restart_guest(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "guest exits"
        );
        self.spawn_guest(&[]);
    }

    pub fn guest_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.guest.as_ref().expect("guest").id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.guest_pid(), sig).expect("signal the guest");
    }

    /// Waits for the guest to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.guest.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A person on the server, in `#agents`, who has seen the agent there.
    pub fn person(&self, nick: &str) -> IrcClient {
        let stream = self
            .ngircd
            .as_ref()
            .expect("ngircd")
            .connect()
            .expect("connect");
        let mut p = IrcClient::register(stream, nick).expect("register");
        p.join("#agents").expect("join");
        self.wait_agent_in(&mut p, "#agents");
        p
    }

    /// Waits until `NICK` is in `channel` as `p` sees it (NAMES, or its JOIN).
    pub fn wait_agent_in(&self, p: &mut IrcClient, channel: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let is_agent = |n: &str| n.trim_start_matches(['@', '+']).eq_ignore_ascii_case(NICK);
        while Instant::now() < deadline {
            p.send_raw(&format!("NAMES {channel}")).unwrap();
            let found = p.wait_for(Duration::from_secs(2), |l| {
                (l.command == "353" && l.text().split(' ').any(is_agent))
                    || (l.command == "JOIN" && l.nick().is_some_and(is_agent))
            });
            if found.is_some() {
                return;
            }
        }
        panic!("{NICK} never joined {channel}; guest log:\n{}", self.log());
    }

    /// The next PRIVMSG from the agent to `target` within `timeout`.
    pub fn reply(&self, p: &mut IrcClient, target: &str, timeout: Duration) -> Line {
        p.wait_for(timeout, |l| l.is_privmsg(NICK, target))
            .unwrap_or_else(|| {
                panic!(
                    "no reply from {NICK} to {target}; guest log:\n{}",
                    self.log()
                )
            })
    }

    /// Every PRIVMSG text from the agent to `target` until it is quiet for `quiet`.
    pub fn replies(
        &self,
        p: &mut IrcClient,
        target: &str,
        first: Duration,
        quiet: Duration,
    ) -> Vec<String> {
        let mut out = vec![self.reply(p, target, first).text().to_string()];
        while let Some(l) = p.wait_for(quiet, |l| l.is_privmsg(NICK, target)) {
            out.push(l.text().to_string());
        }
        out
    }

    /// Runs `fireclaw-guest usage --drain` on this world's spool; the records it printed.
    pub fn drain_usage(&self) -> Vec<fireclaw_proto::UsageRecord> {
        let out = Command::new(guest_bin())
            .args(["usage", "--drain", "--spool"])
            .arg(&self.spool)
            .output()
            .expect("drain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a usage record"))
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut g) = self.guest.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        // ngircd before the namespace goes (field order drops the rest).
        self.ngircd.take();
    }
}

pub const SECS_5: Duration = Duration::from_secs(5);
pub const SECS_30: Duration = Duration::from_secs(30);
