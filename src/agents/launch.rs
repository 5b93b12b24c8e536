//! An agent's VM: started cold from the agent image with the workspace as its second disk, or
//! taken warm from the pool (a clone of the agent image's snapshot, the workspace moved into its
//! drive); kept running, configured over SSH as root (`/etc/fireclaw/agent.toml`, then SIGHUP to
//! the guest agent); stopped with SIGTERM to the guest (it sends QUIT) before the VM goes.
//!
//! Every function here blocks: call it from a blocking thread. SSH runs on the caller's tokio
//! runtime when there is one (a `spawn_blocking` thread), else on a small one of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fireclaw_proto::agent::{self as proto, AgentConfig};

use crate::agents::manager::Manager;
use crate::agents::store::AgentRow;
use crate::agents::template::{NetworkPolicy, Template, Templates};
use crate::agents::workspace;
use crate::net::policy::Policy;
use crate::pool::clone::ClonedVm;
use crate::pool::snapshot::Recipe;
use crate::pool::warm::AgentWant;
use crate::vm::{image, record, ssh, Host, KeptMachine, LaunchOptions, Machine};
use crate::vmm::{Boot, VmmKind};

/// Where the guest agent reads its configuration (fireclaw-guest's README).
pub const CONFIG_PATH: &str = "/etc/fireclaw/agent.toml";
/// How long a cold boot may take to answer SSH (TCG emulation in CI is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The unprivileged user the image's init runs the guest agent as.
const USER: &str = "agent";
/// How long one SSH command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a future to completion from blocking code.
fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => Ok(h.block_on(f)),
        Err(_) => Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime for SSH")?
            .block_on(f)),
    }
}

/// The engine agents run on: Firecracker when provision installed it, else QEMU.
pub fn vmm_kind(host: &Host) -> VmmKind {
    if host
        .root
        .host(&host.config.paths.bin_dir)
        .join("firecracker")
        .exists()
    {
        VmmKind::Firecracker
    } else {
        VmmKind::Qemu
    }
}

fn policy(p: NetworkPolicy) -> Policy {
    match p {
        NetworkPolicy::Full => Policy::Full,
        NetworkPolicy::Local => Policy::Local,
        NetworkPolicy::None => Policy::None,
    }
}

/// The guest agent's configuration for this agent.
pub fn agent_config(host: &Host, row: &AgentRow, tpl: &Template) -> anyhow::Result<AgentConfig> {
    let bridge = host.bridge_cidr()?;
    let persona = row
        .persona
        .clone()
        .unwrap_or_else(|| tpl.persona.as_str().to_string());
    let channels = host
        .config
        .irc
        .channels
        .iter()
        .filter(|c| !c.eq_ignore_ascii_case("#control"))
        .cloned()
        .collect();
    Ok(AgentConfig {
        nick: row.name.clone(),
        persona,
        workspace: "/workspace".into(),
        usage_spool: proto::DEFAULT_USAGE_SPOOL.into(),
        irc: proto::Irc {
            server: format!("{}:{}", bridge.addr, host.config.irc.port),
            channels,
            quit_message: format!("{} stopped by fireclaw", row.name),
        },
        ollama: proto::Ollama {
            url: host.config.ollama.url.clone(),
            model: row.model.clone(),
        },
        searxng: None,
        limits: proto::Limits::default(),
    })
}

/// Starts the agent's VM and configures its guest agent; returns the VM's id. The VM is kept
/// (`state = kept` in `vms`): it outlives this runtime, and the next one re-adopts it.
///
/// This is the cold path; [`start_warm`] is the warm one.
pub fn start(host: &Host, row: &AgentRow, tpl: &Template) -> anyhow::Result<KeptMachine> {
    let config = agent_config(host, row, tpl)?;
    let image = image::resolve(
        &host.config.agents.image,
        &host.root.host(&host.config.paths.image_dir),
        &image::Overrides::default(),
    )?;
    let ws = workspace::path(&host.root.host(&host.config.paths.state_dir), &row.name);
    let opts = LaunchOptions {
        vmm: vmm_kind(host),
        vcpus: tpl.vcpus.get(),
        mem_mib: tpl.mem_mib.get(),
        policy: policy(tpl.network),
        image,
        boot: Boot::Kernel,
        extra_disk: Some(ws),
    };
    let mut machine = Machine::create(host, &opts)?;
    let target = machine.ssh_target()?;
    let configured = block_on(async {
        let session = ssh::wait_ready(&target, Instant::now() + BOOT_TIMEOUT).await?;
        let r = write_config(&session, &config).await;
        close(session).await;
        r
    })?;
    if let Err(e) = configured {
        let console = machine.console_tail();
        machine.destroy();
        return Err(e.context(format!("the console's last lines:\n{console}")));
    }
    machine.keep()
}

/// Starts the agent in a clone the warm pool restored from the agent image's workspace
/// snapshot (its session open, its identity refreshed, its guest agent waiting for its
/// configuration): the workspace is moved into the clone's zeroed drive, the guest drops the
/// cached blocks of that drive (its kernel read the zeros when it probed it) and mounts it, the
/// configuration is written, and the clone is kept. On error the clone is destroyed (the caller
/// falls back to a cold start); the workspace is intact whichever step failed.
pub fn start_warm(
    host: &Host,
    row: &AgentRow,
    tpl: &Template,
    mut vm: ClonedVm,
) -> anyhow::Result<KeptMachine> {
    let config = agent_config(host, row, tpl)?;
    let ws = workspace::path(&host.root.host(&host.config.paths.state_dir), &row.name);
    let drive = vm
        .drive
        .clone()
        .context("the restored VM has no workspace drive")?;
    let t = Instant::now();
    workspace::move_into(&ws, &drive)?;
    let moved = t.elapsed();
    // Renamed: the file is the workspace now, not the clone's to remove.
    vm.drive = None;
    let session = vm
        .session
        .take()
        .context("the restored VM has no open session")?;
    // One command for both: every process and session round trip costs a guest under emulation.
    let script = format!(
        "echo 1 >/proc/sys/vm/drop_caches && mount /workspace || {{ echo 'mounting /workspace failed' >&2; exit 1; }}\n{}",
        config_script(&config)?
    );
    let t = Instant::now();
    let configured = block_on(async {
        let r = run(&session, &script).await;
        close(session).await;
        r
    })?;
    let result = match configured {
        Ok((0, _)) => Ok(()),
        Ok((code, out)) => Err(anyhow::anyhow!(
            "mounting /workspace and writing {CONFIG_PATH} failed ({code}): {}",
            out.trim()
        )),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let console = vm.console_tail();
        vm.destroy();
        return Err(e.context(format!("the console's last lines:\n{console}")));
    }
    tracing::info!(
        agent = %row.name,
        vm = %vm.id,
        "agents: warm VM taken: workspace moved in {} ms, mounted and configured in {} ms",
        moved.as_millis(),
        t.elapsed().as_millis()
    );
    vm.keep()
}

/// What the warm pool should keep ready for `[agents] warm`: one clone per template named there,
/// restored from the agent image's snapshot with a workspace drive. Templates that do not exist,
/// or whose network policy is `none` (a clone's slot opens IRC and Ollama only under `full` and
/// `local`), are left cold, with a line saying why.
pub fn warm_wants(host: &Host) -> (Vec<AgentWant>, Vec<String>) {
    let (mut wants, mut notes) = (Vec::new(), Vec::new());
    if host.config.agents.warm.is_empty() {
        return (wants, notes);
    }
    let templates = match Templates::load(&[&Manager::templates_dir(host)]) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("no warm agents: the templates cannot be read: {e}"));
            return (wants, notes);
        }
    };
    let image = match image::resolve(
        &host.config.agents.image,
        &host.root.host(&host.config.paths.image_dir),
        &image::Overrides::default(),
    ) {
        Ok(i) => i,
        Err(e) => {
            notes.push(format!("no warm agents: {e:#}"));
            return (wants, notes);
        }
    };
    for name in &host.config.agents.warm {
        let Ok(tpl) = templates.get(name) else {
            notes.push(format!(
                "[agents] warm names {name:?}, which is no template; skipped"
            ));
            continue;
        };
        if tpl.network == NetworkPolicy::None {
            notes.push(format!(
                "template {name} has network = \"none\", which a restored VM cannot serve; it starts cold"
            ));
            continue;
        }
        wants.push(AgentWant {
            key: AgentWant::key_for(name),
            recipe: Recipe {
                image: image.clone(),
                vmm: vmm_kind(host),
                vcpus: tpl.vcpus.get(),
                mem_mib: tpl.mem_mib.get(),
                workspace_mib: workspace::WORKSPACE_MIB as u32,
            },
            policy: policy(tpl.network),
        });
    }
    (wants, notes)
}

/// Writes agent.toml atomically (root's, readable by the agent) and tells a running guest agent
/// to re-read it; a guest agent waiting to be restarted by init reads it when it starts. The
/// usage spool's directory is made for the agent's user when the image has none (else usage
/// would be lost). Signals go to the agent user's process only: the host's own `fireclaw-guest
/// health` and `usage --drain` run as root under the same name.
async fn write_config(session: &ssh::Session, config: &AgentConfig) -> anyhow::Result<()> {
    let script = config_script(config)?;
    let (code, out) = run(session, &script).await?;
    if code != 0 {
        anyhow::bail!("writing {CONFIG_PATH} failed ({code}): {}", out.trim());
    }
    Ok(())
}

/// The shell script [`write_config`] runs.
fn config_script(config: &AgentConfig) -> anyhow::Result<String> {
    let text = toml::to_string(config).context("serializing agent.toml")?;
    let spool_dir = config
        .usage_spool
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/var/lib/fireclaw-guest".into());
    // Shell builtins where they do: each process costs a guest tens of milliseconds under
    // emulation, and the directories usually exist already.
    let script = format!(
        "set -e; umask 022; [ -d /etc/fireclaw ] || mkdir -p /etc/fireclaw; printf '%s' {} > {CONFIG_PATH}.new; \
         mv {CONFIG_PATH}.new {CONFIG_PATH}; \
         [ -d {spool} ] || install -d -o {USER} -g {USER} -m 0700 {spool}; \
         pkill -HUP -u {USER} -x fireclaw-guest || true",
        ssh::shell_join(&[text]),
        spool = ssh::shell_join(&[spool_dir]),
    );
    Ok(script)
}

/// Ends a session without waiting on a VM that died under it: a dead guest never answers the
/// disconnect, and a health probe stuck here would stop every later check.
async fn close(session: ssh::Session) {
    let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
}

async fn run(session: &ssh::Session, command: &str) -> anyhow::Result<(i32, String)> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let exit = tokio::time::timeout(COMMAND_TIMEOUT, session.exec(command, &mut out, &mut err))
        .await
        .map_err(|_| anyhow::anyhow!("`{command}` did not finish in {COMMAND_TIMEOUT:?}"))??;
    out.extend_from_slice(&err);
    Ok((
        exit.shell_code(),
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// The SSH target of a kept VM, from its record and its image's manifest.
fn target(host: &Host, vm: &str) -> anyhow::Result<ssh::Target> {
    let db = host.db()?;
    let r = record::get(&db, vm)?.with_context(|| format!("VM {vm} is not recorded"))?;
    let ip = r.ip.with_context(|| format!("VM {vm} has no address"))?;
    let spec = image::resolve(
        &r.image,
        &host.root.host(&host.config.paths.image_dir),
        &image::Overrides::default(),
    )?;
    Ok(ssh::Target {
        addr: SocketAddr::new(ip.into(), 22),
        user: spec.user,
        key: Arc::new(ssh::load_private_key(&host.key_path())?),
        host_key: spec.host_key,
    })
}

/// Runs `command` as the image's user (root) in a kept VM: exit code and output.
pub fn exec(host: &Host, vm: &str, command: &str) -> anyhow::Result<(i32, String)> {
    let target = target(host, vm)?;
    block_on(async {
        let session = ssh::connect(&target, Duration::from_secs(5)).await?;
        let r = run(&session, command).await;
        close(session).await;
        r
    })?
}

/// Rewrites a running agent's configuration and sends SIGHUP: it stays on IRC.
pub fn reconfigure(host: &Host, vm: &str, row: &AgentRow, tpl: &Template) -> anyhow::Result<()> {
    let config = agent_config(host, row, tpl)?;
    let target = target(host, vm)?;
    block_on(async {
        let session = ssh::connect(&target, Duration::from_secs(5)).await?;
        let r = write_config(&session, &config).await;
        close(session).await;
        r
    })?
}

/// SIGTERM to the guest agent (it says QUIT), a moment for it to leave, the workspace flushed
/// and unmounted, then the VM goes. (The VMM is killed, not shut down: without the unmount, what
/// the agent wrote in its last seconds — `MEMORY.md` — would still sit in the guest's cache.)
pub fn stop(host: &Host, vm: &str) -> anyhow::Result<()> {
    // The guest may be dead already; its VM goes all the same.
    if let Err(e) = exec(
        host,
        vm,
        "pkill -TERM -u agent -x fireclaw-guest; for i in 1 2 3 4 5 6 7 8 9 10; do \
         pgrep -u agent -x fireclaw-guest >/dev/null || break; sleep 0.3; done; \
         sync; umount /workspace 2>/dev/null || mount -o remount,ro /workspace; sync",
    ) {
        tracing::info!(vm, "agents: the guest agent did not take SIGTERM: {e:#}");
    }
    let report = crate::pool::clone::gc_vm(host, vm)?;
    if report.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(report.errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration script parses under sh, carries hostile text only as one quoted word,
    /// and starts no process for a directory that exists.
    #[test]
    fn the_config_script_quotes_the_config_and_parses() {
        let config = AgentConfig {
            nick: "coder".into(),
            persona: "You are 'coder'; $(reboot) `id` \\ \"quoted\"\nnew line".into(),
            workspace: "/workspace".into(),
            usage_spool: proto::DEFAULT_USAGE_SPOOL.into(),
            irc: proto::Irc {
                server: "172.16.0.1:6667".into(),
                channels: vec!["#agents".into()],
                quit_message: "bye".into(),
            },
            ollama: proto::Ollama {
                url: "http://172.16.0.1:11434".into(),
                model: "m".into(),
            },
            searxng: None,
            limits: proto::Limits::default(),
        };
        let script = config_script(&config).unwrap();
        assert!(script.contains("[ -d /etc/fireclaw ] || mkdir -p /etc/fireclaw"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The printf's argument, unquoted by sh, is the TOML exactly.
        let printed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' {}",
                ssh::shell_join(&[toml::to_string(&config).unwrap()])
            ))
            .output()
            .unwrap();
        let back: AgentConfig = toml::from_str(&String::from_utf8_lossy(&printed.stdout)).unwrap();
        assert_eq!(back.persona, config.persona);
    }
}
