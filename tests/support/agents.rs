//! The agent system's VM-tier world, shared by `tests/agents_vm.rs` and `benches/agents.rs`: a
//! temporary root with the agent test image (this build's guest agent written into it), an
//! operator override of `coder` sized for emulation, ngircd as provision configures it (bridge
//! and loopback), the Ollama double on the bridge address, and the command that starts
//! `fireclaw runtime` there. Needs root, ip, nft, qemu-system-x86_64, ngircd, debugfs, the agent
//! test image (FIRECLAW_TEST_AGENT_MANIFEST, default the CI cache's debian-test) with the key it
//! authorizes (FIRECLAW_TEST_SSH_KEY) and the static guest agent (FIRECLAW_GUEST_BIN).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fireclaw_testkit::irc::IrcClient;
use fireclaw_testkit::ngircd::Ngircd;
use fireclaw_testkit::ollama::OllamaDouble;
use serde_json::json;

use super::runtime::{GroupGuard, Runtime};
use super::vm::*;

pub const PASSWORD: &str = "agents-vm-operator-password";

/// Fields drop in this order: the runtime's files, ngircd, the Ollama double, the root, the
/// namespace, then the locks.
pub struct AgentWorld {
    pub rt_files: tempfile::TempDir,
    server: std::sync::Mutex<Option<Ngircd>>,
    pub ollama: OllamaDouble,
    pub config: PathBuf,
    pub root: TestRoot,
    pub ns: Netns,
    _group: GroupGuard,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl AgentWorld {
    /// Everything but the runtime; `None` only where the tier gate says so (it fails a test
    /// whose prerequisites are missing).
    pub fn new(tag: &str) -> Option<AgentWorld> {
        let manifest = env_path(
            "FIRECLAW_TEST_AGENT_MANIFEST",
            "/var/cache/fireclaw-ci/images/debian-test.manifest.json",
        );
        let key = env_path("FIRECLAW_TEST_SSH_KEY", "/var/cache/fireclaw-ci/ci-key");
        // The static guest agent of this workspace (`cargo build --target x86_64-unknown-linux-musl
        // -p fireclaw-guest`), unless FIRECLAW_GUEST_BIN names another.
        let guest = std::env::var_os("FIRECLAW_GUEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/x86_64-unknown-linux-musl/debug/fireclaw-guest")
            });
        if !prerequisites("vm", true)
            || !super::require(
                "vm",
                &[
                    ("the agent test image's manifest", manifest.exists()),
                    ("its SSH key", key.exists()),
                    (
                        "the static guest agent (cargo build --target x86_64-unknown-linux-musl -p fireclaw-guest)",
                        guest.exists(),
                    ),
                    ("debugfs", Path::new("/usr/sbin/debugfs").exists() || Path::new("/sbin/debugfs").exists()),
                    ("ngircd", Path::new(fireclaw_testkit::ngircd::UNIT_FILE).exists()),
                ],
            )
        {
            return None;
        }
        let _lock = vm_lock();
        let _group = GroupGuard::new();
        let fixture = Fixture {
            kernel: PathBuf::new(),
            initrd: None,
            manifest: manifest.clone(),
            ssh_key: key,
        };
        let ns = Netns::new(tag);
        // Warm agents are clones in network slots, which route through the host: as provision sets.
        sh_ok(&format!(
            "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1",
            ns.name
        ));
        let root = TestRoot::new(&fixture);
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let image = install_image(root.path(), &manifest, &guest);
        let etc = root.path().join("etc/fireclaw");
        std::fs::write(etc.join("irc-operator.pass"), PASSWORD).unwrap();
        // The operator's override of `coder`: smaller, for emulation on a shared 2-core machine.
        std::fs::create_dir_all(etc.join("agents")).unwrap();
        std::fs::write(
            etc.join("agents/coder.toml"),
            "description = \"programmer (test size)\"\npersona = \"You are coder, a test agent.\"\n\
             model = \"qwen2.5-coder:7b\"\ntools = [\"run_command\", \"save_memory\"]\n\
             vcpus = 1\nmem_mib = 512\nnetwork = \"full\"\n\
             [restart]\npolicy = \"on-failure\"\nbackoff_secs = 1\nmax_restarts = 3\n",
        )
        .unwrap();
        // An operator's own template whose agents come back even after a clean stop.
        std::fs::write(
            etc.join("agents/steady.toml"),
            "description = \"always restarted (test size)\"\npersona = \"You are steady.\"\n\
             model = \"qwen2.5:7b\"\ntools = []\nvcpus = 1\nmem_mib = 512\nnetwork = \"local\"\n\
             [restart]\npolicy = \"always\"\nbackoff_secs = 1\nmax_restarts = 3\n",
        )
        .unwrap();

        // Ollama's double where agents reach Ollama: the bridge address.
        let listener = {
            let path = format!("/run/netns/{}", ns.name);
            std::thread::spawn(move || {
                let fd = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                std::net::TcpListener::bind("172.16.0.1:11434").unwrap()
            })
            .join()
            .unwrap()
        };
        let ollama = OllamaDouble::start(listener, &["qwen2.5-coder:7b", "qwen2.5:7b"]);
        let config = root.path().join("fireclaw.toml");
        std::fs::write(
            &config,
            format!(
                "[irc]\nadmins = [\"alice!*@*\"]\n[ollama]\nurl = \"http://172.16.0.1:11434\"\n\
                 [agents]\nimage = \"{image}\"\nhealth_secs = 3\n"
            ),
        )
        .unwrap();
        let parsed =
            fireclaw::config::Config::parse(&std::fs::read_to_string(&config).unwrap(), &config)
                .unwrap();

        // ngircd as provision configures it: the bridge and loopback.
        let run = root.path().join("ngircd-run");
        std::fs::create_dir(&run).unwrap();
        let irc = nix::unistd::User::from_name("irc").unwrap().unwrap();
        nix::unistd::chown(&run, Some(irc.uid), Some(irc.gid)).unwrap();
        let conf = root.path().join("ngircd.conf");
        std::fs::write(
            &conf,
            fireclaw::irc::ngircd::render(
                &parsed,
                &fireclaw::irc::ngircd::NgircdParams {
                    listen: "172.16.0.1,127.0.0.1".into(),
                    port: 6667,
                    pid_file: run.join("ngircd.pid").to_str().unwrap(),
                    operator_password: PASSWORD,
                },
            )
            .unwrap(),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let server = Ngircd::start(&conf, &ns.name, "127.0.0.1:6667".parse().unwrap()).unwrap();
        Some(AgentWorld {
            rt_files: tempfile::tempdir().unwrap(),
            server: std::sync::Mutex::new(Some(server)),
            ollama,
            config,
            root,
            ns,
            _group,
            _lock,
        })
    }

    /// `fireclaw runtime` in the world's namespace, root and configuration.
    pub fn runtime_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(env!("CARGO_BIN_EXE_fireclaw"))
            .arg("--root")
            .arg(self.root.path())
            .arg("--config")
            .arg(&self.config)
            .arg("runtime");
        cmd
    }

    pub fn start_runtime(&self) -> Runtime {
        Runtime::start(self.runtime_command(), self.rt_files.path())
    }

    /// A person on IRC, in `#control` and `#agents`.
    pub fn person(&self, nick: &str) -> IrcClient {
        let stream = self
            .server
            .lock()
            .unwrap()
            .as_ref()
            .expect("ngircd runs")
            .connect()
            .unwrap();
        let mut p = IrcClient::register(stream, nick).unwrap();
        p.join("#control").unwrap();
        p.join("#agents").unwrap();
        p
    }

    /// Appends `line` to the `[agents]` section (the configuration's last).
    pub fn add_agents_setting(&self, line: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.config, text).unwrap();
    }

    /// Stops ngircd (before the leak check: it runs in the namespace).
    pub fn stop_irc(&self) {
        self.server.lock().unwrap().take();
    }
}

pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

/// The image in the root's image directory: a copy of the test image with this build's guest
/// agent written into it (debugfs, no mount), as the image builder puts the workspace's build in.
pub fn install_image(root: &Path, manifest: &Path, guest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let name = m["name"].as_str().expect("manifest name").to_string();
    let images = root.join("var/lib/fireclaw/images");
    std::fs::create_dir_all(&images).unwrap();
    let source = manifest
        .parent()
        .unwrap()
        .join(m["image"].as_str().unwrap());
    let copy = images.join(format!("{name}.ext4"));
    sh_ok(&format!(
        "cp --sparse=always --reflink=auto {} {}",
        source.display(),
        copy.display()
    ));
    let cmds = images.join("debugfs.cmds");
    std::fs::write(
        &cmds,
        format!(
            "rm /usr/local/bin/fireclaw-guest\nwrite {} /usr/local/bin/fireclaw-guest\n\
             sif /usr/local/bin/fireclaw-guest mode 0100755\n\
             sif /usr/local/bin/fireclaw-guest uid 0\nsif /usr/local/bin/fireclaw-guest gid 0\n",
            guest.display()
        ),
    )
    .unwrap();
    sh_ok(&format!(
        "debugfs -w -f {} {}",
        cmds.display(),
        copy.display()
    ));
    m["image"] = json!(copy.file_name().unwrap().to_str().unwrap());
    std::fs::write(
        images.join(format!("{name}.manifest.json")),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    name
}
