//! Command-line definitions. Parsing only: every command's work lives in `commands/`.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

use crate::config::bounds;

/// Exit code for a usage error (bad flags or arguments), as clap and most tools use.
pub const EXIT_USAGE: i32 = 2;
/// `run` reports every failure of its own, usage errors included, as 125 (as `docker run` does), so
/// that it cannot be mistaken for the exit code of the command it ran.
pub const EXIT_RUN_FAILED: i32 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "fireclaw",
    version,
    about = "Run AI agents in microVMs on your own hardware",
    long_about = "fireclaw turns a Debian or Ubuntu host with KVM into a host for AI agents, each in its own \
microVM, talking over IRC and thinking with a local Ollama.\n\n\
Start with `fireclaw provision --dry-run` to see what it would change on this host (no root needed), \
then `sudo fireclaw provision` to apply it. `fireclaw uninstall` takes every change back out.",
    after_help = "Configuration: /etc/fireclaw/fireclaw.toml (see `fireclaw config`). State: /var/lib/fireclaw/state.db.\n\
Exit codes: 0 success, 1 error, 2 usage error, 3 plan blocked; `run` has its own (see `fireclaw run --help`).\n\
Manual: `man fireclaw` (installed by install.sh; `fireclaw manpage` prints it).",
    after_long_help = "Examples:\n  \
fireclaw provision --dry-run          see what provisioning would change (no root needed)\n  \
sudo fireclaw provision               apply it\n  \
sudo fireclaw run -- uname -a         run one command in a throwaway microVM\n  \
fireclaw status                       what provision did, the VMs that run\n  \
fireclaw --root /tmp/r provision --dry-run   plan for a tree under /tmp/r\n\n\
Configuration: /etc/fireclaw/fireclaw.toml (see `fireclaw config`). State: /var/lib/fireclaw/state.db.\n\
Exit codes: 0 success, 1 error (a bad configuration included), 2 usage error, 3 the plan is blocked \
(a required check failed, nothing changed); `provision`/`uninstall --detailed-exitcode` add 4 (changes \
pending or made); `run` has its own (see `fireclaw run --help`). A closed stdout (`| head`) never stops \
a command half-way: fireclaw finishes and discards the rest of its output."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Resolve every host path under this directory instead of `/` (for tests, chroots and image
    /// staging). Links, nftables and sysctls are not paths: they apply to the current network namespace.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FIRECLAW_ROOT",
        default_value = "/"
    )]
    pub root: PathBuf,
    /// Read this configuration file instead of <root>/etc/fireclaw/fireclaw.toml.
    #[arg(long, global = true, value_name = "FILE", env = "FIRECLAW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Say more about what is happening (for `run`: boot and exec times on stderr).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this host ready: packages, Firecracker, kernel, images, thin pool, bridge + NAT, ngircd, unit.
    #[command(
        long_about = "Make this host ready to run fireclaw, idempotently.\n\n\
Each step probes the host and plans only what is missing; a second run plans nothing. Every change \
is recorded in the state database before it is made, so an interrupted run can simply be run again, \
and `fireclaw uninstall` can reverse exactly what was done.\n\n\
--dry-run prints the plan (commands, files with diffs, links, addresses, nftables rules, units) \
and changes nothing; it works without root.",
        after_help = "Examples:\n  \
fireclaw provision --dry-run\n  \
fireclaw provision --dry-run --json | jq '.steps[] | select(.status == \"pending\") | .name'\n  \
sudo fireclaw provision\n  \
sudo fireclaw provision --skip images,thinpool"
    )]
    Provision(ProvisionArgs),
    /// Reverse everything provision recorded, newest first, and nothing else.
    #[command(after_help = "Examples:\n  \
fireclaw uninstall --dry-run\n  \
sudo fireclaw uninstall")]
    Uninstall(UninstallArgs),
    /// Check whether this host can run fireclaw, and say how to fix what is missing.
    #[command(after_help = "Examples:\n  \
fireclaw doctor\n  \
fireclaw doctor --json")]
    Doctor(JsonFlag),
    /// Show what provision has done: steps, bridge, ngircd, unit.
    #[command(after_help = "Examples:\n  \
sudo fireclaw status\n  \
sudo fireclaw status --json")]
    Status(JsonFlag),
    /// Build the guest kernel and rootfs images from recipes; list them.
    #[command(after_help = "Examples:\n  \
fireclaw image build --dry-run\n  \
sudo fireclaw image build kernel base\n  \
fireclaw image list --json")]
    Image(Box<crate::commands::image::ImageArgs>),
    /// Print the configuration in effect (defaults merged with the file), as TOML or JSON.
    #[command(after_help = "Examples:\n  \
fireclaw config\n  \
fireclaw --config ./test.toml config --json")]
    Config(JsonFlag),
    /// Run one command in a fresh microVM and throw the VM away.
    #[command(after_help = "Examples:\n  \
sudo fireclaw run -- uname -a\n  \
sudo fireclaw run --vmm qemu --policy none -- sh -c 'exit 7'; echo $?   # 7\n  \
sudo fireclaw -v run --cpus 2 --mem 1024 --timeout 60 -- make test\n  \
sudo fireclaw run --keep -- true")]
    Run(RunArgs),
    /// Remove VMs (process, tap, lease, disk, sockets) left behind by a fireclaw that died.
    #[command(after_help = "Examples:\n  \
sudo fireclaw gc --dry-run\n  \
sudo fireclaw gc\n  \
sudo fireclaw gc --vm fc-1a2b3c")]
    Gc(GcArgs),
    /// The service: warm pool, agents and the control socket (systemd runs this).
    #[command(after_help = "Examples:\n  \
sudo systemctl start fireclaw          # as the unit runs it\n  \
sudo fireclaw runtime --log-level debug\n  \
sudo systemctl reload fireclaw         # SIGHUP: re-read [pool]")]
    Runtime(RuntimeArgs),
    /// Base snapshots the warm pool restores from: list, build, remove.
    #[command(after_help = "Examples:\n  \
sudo fireclaw snapshot ls\n  \
sudo fireclaw snapshot build --image base --vmm qemu\n  \
sudo fireclaw snapshot rm 0123456789ab")]
    Snapshot(SnapshotArgs),
    /// List the VMs the runtime knows: id, image, address, state, age, origin, owner.
    #[command(after_help = "Examples:\n  \
fireclaw ps\n  \
fireclaw ps --json")]
    Ps(PsArgs),
    /// Run a command in a VM through the runtime.
    #[command(after_help = "Examples:\n  \
fireclaw exec 0123456789ab -- uname -a\n  \
fireclaw exec 0123456789ab -- sh -c 'df -h /workspace'")]
    Exec(ExecArgs),
    /// Remove a VM through the runtime (its process, tap, lease, disk and sockets).
    #[command(after_help = "Examples:\n  \
fireclaw rm 0123456789ab")]
    Rm(RmArgs),
    /// Print a VM's console log through the runtime; -f follows it.
    #[command(after_help = "Examples:\n  \
fireclaw logs 0123456789ab\n  \
fireclaw logs -f 0123456789ab")]
    Logs(LogsArgs),
    /// Agents through the runtime: start, stop, list, reload, logs, remove (as the overseer's commands).
    #[command(after_help = "Examples:\n  \
fireclaw agent start coder --name alice-coder\n  \
fireclaw agent ls\n  \
fireclaw agent reload alice-coder --model qwen2.5:7b\n  \
fireclaw agent logs alice-coder -n 20\n  \
fireclaw agent stop alice-coder\n  \
fireclaw agent rm alice-coder --purge")]
    Agent(AgentArgs),
    /// Show the audit trail: every command the overseer and the control socket received.
    #[command(after_help = "Examples:\n  \
sudo fireclaw audit\n  \
sudo fireclaw audit -n 100 --json | jq '.[] | select(.ok | not)'")]
    Audit(AuditArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Examples:\n  \
fireclaw completions bash > /usr/share/bash-completion/completions/fireclaw\n  \
fireclaw completions zsh > \"${fpath[1]}/_fireclaw\"")]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) to stdout; install.sh installs it as fireclaw(1).
    #[command(after_help = "Examples:\n  \
fireclaw manpage | man -l -\n  \
fireclaw manpage > /usr/local/share/man/man1/fireclaw.1")]
    Manpage,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan as JSON (schema in README, "Plan JSON"); with --dry-run nothing is changed,
    /// without it the plan is applied and then printed.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there is nothing to do, 4 when changes are pending (--dry-run) or were made.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Run only these steps (comma-separated). Preflight always runs.
    #[arg(long, value_delimiter = ',', value_name = "STEP,..")]
    pub only: Vec<String>,
    /// Skip these steps (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "STEP,..")]
    pub skip: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Print what would be reversed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the reversals as JSON; with --dry-run nothing is changed, without it they are made
    /// and then printed.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there is nothing to undo, 4 when changes are pending (--dry-run) or were made.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Boot a fresh microVM, run CMD in it over SSH, stream its output, exit with \
its exit code, and destroy the VM.\n\n\
Every run gets its own address, tap, disk clone and sockets; any number can run at once. Ctrl-C, \
SIGTERM, --timeout, a guest that never boots or a VMM that dies all end with the VM removed. \
Exit codes: the command's own; 124 on timeout; 125 when fireclaw itself failed; 128+N when the \
command or fireclaw was killed by signal N."
)]
pub struct RunArgs {
    /// Image name (looked up as <image_dir>/NAME.manifest.json) or a path to a manifest.
    #[arg(long, default_value = "base", value_name = "NAME")]
    pub image: String,
    /// Virtual machine monitor. Default: firecracker when installed, else qemu.
    #[arg(long, value_parser = clap::builder::EnumValueParser::<VmmArg>::new().map(crate::vmm::VmmKind::from))]
    pub vmm: Option<crate::vmm::VmmKind>,
    /// Virtual CPUs (default: pool.vcpus from the configuration; the same bounds apply).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(bounds::VCPUS.clap()))]
    pub cpus: Option<u8>,
    /// Memory in MiB (default: pool.mem_mib; the same bounds apply).
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(bounds::MEM_MIB.clap()))]
    pub mem: Option<u32>,
    /// Give up after this many seconds, boot included; the VM is destroyed (exit 124).
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Guest network policy: full (NAT out), local (only the host's IRC and Ollama ports), none.
    #[arg(long, default_value = "full", value_parser = clap::builder::EnumValueParser::<PolicyArg>::new().map(crate::net::policy::Policy::from))]
    pub policy: crate::net::policy::Policy,
    /// Leave the VM running and print how to reach it (remove it with `fireclaw gc --vm ID`).
    #[arg(long)]
    pub keep: bool,
    /// Boot this kernel instead of the image's.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Boot with this initramfs.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Report a JSON summary (VM, address, timings, exit code) on stderr at the end.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", required_unless_present = "keep")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots: id, image, engine, vCPUs, memory, state, size, age.
    #[command(after_help = "Examples:\n  \
sudo fireclaw snapshot ls\n  \
sudo fireclaw snapshot ls --json")]
    Ls(JsonFlag),
    /// Boot the image once, wait for SSH, and snapshot it (replacing the ready snapshot of the
    /// same image, engine, vCPUs and memory).
    #[command(after_help = "Examples:\n  \
sudo fireclaw snapshot build --image base\n  \
sudo fireclaw snapshot build --image agent --vmm qemu --cpus 2 --mem 1024 --force")]
    Build(SnapshotBuildArgs),
    /// Remove a snapshot's files and row.
    #[command(after_help = "Examples:\n  \
sudo fireclaw snapshot rm 0123456789ab")]
    Rm {
        /// The snapshot's id (from `snapshot ls`).
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct SnapshotBuildArgs {
    /// Image name (looked up as <image_dir>/NAME.manifest.json) or a path to a manifest.
    #[arg(long, default_value = "base", value_name = "NAME")]
    pub image: String,
    /// Virtual machine monitor. Default: firecracker when installed, else qemu.
    #[arg(long, value_parser = clap::builder::EnumValueParser::<VmmArg>::new().map(crate::vmm::VmmKind::from))]
    pub vmm: Option<crate::vmm::VmmKind>,
    /// Virtual CPUs (default: pool.vcpus).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(bounds::VCPUS.clap()))]
    pub cpus: Option<u8>,
    /// Memory in MiB (default: pool.mem_mib).
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(bounds::MEM_MIB.clap()))]
    pub mem: Option<u32>,
    /// Boot this kernel instead of the image's.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Boot with this initramfs.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Give up waiting for the guest after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Build even when a ready snapshot matches this host.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove VMs whose fireclaw is still running, and kept VMs.
    #[arg(long)]
    pub all: bool,
    /// Remove only this VM (kept or not).
    #[arg(long, value_name = "ID")]
    pub vm: Option<String>,
    /// List what would be removed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `--vmm`'s values. The engine type itself knows nothing of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    Firecracker,
    Qemu,
}

impl From<VmmArg> for crate::vmm::VmmKind {
    fn from(v: VmmArg) -> Self {
        match v {
            VmmArg::Firecracker => crate::vmm::VmmKind::Firecracker,
            VmmArg::Qemu => crate::vmm::VmmKind::Qemu,
        }
    }
}

/// `--policy`'s values, mapped onto the network policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Unrestricted (NAT to the outside, as provisioned).
    Full,
    /// Only the host's IRC and Ollama ports on the bridge address.
    Local,
    /// No new connections from the guest.
    None,
}

impl From<PolicyArg> for crate::net::policy::Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Full => crate::net::policy::Policy::Full,
            PolicyArg::Local => crate::net::policy::Policy::Local,
            PolicyArg::None => crate::net::policy::Policy::None,
        }
    }
}

/// The full command definition: the derived one plus what only the code knows, such as the
/// provision step names (listed from the step list itself, so help cannot fall behind it).
pub fn command() -> clap::Command {
    let steps = StepName(crate::provision::step_names());
    let list = steps.0.join(", ");
    Cli::command().mut_subcommand("provision", |c| {
        c.mut_arg("only", |a| {
            a.help(format!(
                "Run only these steps (comma-separated). Steps, in order: {list}. Preflight and state always run."
            ))
            .value_parser(steps.clone())
            .hide_possible_values(true)
        })
        .mut_arg("skip", |a| a.value_parser(steps).hide_possible_values(true))
    })
}

/// `--only`/`--skip` values: an unknown step is a usage error that lists the steps, and shell
/// completions offer the real names.
#[derive(Clone)]
struct StepName(Vec<&'static str>);

impl clap::builder::TypedValueParser for StepName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let value = value.to_string_lossy();
        if self.0.contains(&value.as_ref()) {
            return Ok(value.into_owned());
        }
        let flag = arg.map(|a| a.to_string()).unwrap_or_default();
        Err(clap::Error::raw(
            clap::error::ErrorKind::InvalidValue,
            format!(
                "unknown step {value:?} for {flag}; the steps are: {}\n",
                self.0.join(", ")
            ),
        )
        .with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.0.iter().map(|n| clap::builder::PossibleValue::new(*n)),
        ))
    }
}

/// Parses the process's arguments. On a usage error, prints clap's message and exits with
/// [`EXIT_USAGE`], or [`EXIT_RUN_FAILED`] for `run`; `--help` and `--version` exit 0.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(usage_exit_code(&e, &args));
        }
    }
}

pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// The exit code for a parse error: 0 for `--help`/`--version`, 125 for `run`, 2 otherwise.
pub fn usage_exit_code(e: &clap::Error, args: &[std::ffi::OsString]) -> i32 {
    if !e.use_stderr() {
        return 0;
    }
    if subcommand_name(args).as_deref() == Some("run") {
        EXIT_RUN_FAILED
    } else {
        EXIT_USAGE
    }
}

/// The subcommand an argument list names, found the way clap would (global options and their
/// values come first), even when the rest of the line does not parse.
pub fn subcommand_name(args: &[std::ffi::OsString]) -> Option<String> {
    let cmd = command();
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(w) = words.next() {
        if w == "--" {
            return None;
        }
        if let Some(long) = w.strip_prefix("--") {
            let takes_value = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .is_some_and(|a| a.get_action().takes_values());
            if takes_value {
                words.next();
            }
            continue;
        }
        if w.starts_with('-') {
            continue;
        }
        return cmd
            .find_subcommand(w.as_ref())
            .map(|c| c.get_name().to_string());
    }
    None
}

// ---- The runtime and its clients (`fireclaw runtime`, `ps`, `exec`, `rm`, `logs`). ----

#[derive(Debug, Args)]
#[command(
    long_about = "The service systemd starts (fireclaw.service, Type=notify).\n\n\
At start it puts the host back as provision left it (bridge, address, forwarding, nftables table, \
thin pool), tears down VMs that died and re-adopts kept VMs that still run, then serves the control \
socket <run_dir>/fireclaw.sock (0660 root:fireclaw; API in docs/api.md) and tells systemd it is \
ready. SIGHUP reloads the [pool] section of the configuration; SIGTERM or SIGINT stop it and leave \
kept VMs running for the next start to re-adopt."
)]
pub struct RuntimeArgs {
    /// Log filter, as RUST_LOG takes it (`info`, `debug`, `fireclaw=debug,hyper=warn`). Overrides
    /// RUST_LOG; the default is `info`.
    #[arg(long, value_name = "FILTER", value_parser = log_filter)]
    pub log_level: Option<String>,
}

/// A `--log-level` that tracing cannot parse is a usage error, not a silent default.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (examples: info, debug, fireclaw=debug,hyper=warn)"))
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Start an agent from a template (`!invoke TEMPLATE [NAME] [MODEL]`).
    #[command(
        after_help = "Examples:\n  fireclaw agent start coder\n  fireclaw agent start quick --name q1 --model qwen2.5:1.5b"
    )]
    Start {
        template: String,
        /// The agent's name and IRC nick (default: the template's name).
        #[arg(long)]
        name: Option<String>,
        /// The Ollama model (default: the template's, else [ollama] default_model).
        #[arg(long)]
        model: Option<String>,
    },
    /// Stop an agent and remove its VM, keeping its workspace (`!destroy NAME`).
    #[command(after_help = "Examples:\n  fireclaw agent stop coder")]
    Stop { name: String },
    /// List the agents (`!list`).
    #[command(after_help = "Examples:\n  fireclaw agent ls")]
    Ls,
    /// Push an agent's configuration again, with a new model if given (`!model NAME MODEL`).
    #[command(after_help = "Examples:\n  fireclaw agent reload coder --model qwen2.5:7b")]
    Reload {
        name: String,
        #[arg(long)]
        model: Option<String>,
    },
    /// An agent's last interactions (`!logs NAME [N]`).
    #[command(after_help = "Examples:\n  fireclaw agent logs coder -n 20")]
    Logs {
        name: String,
        #[arg(short = 'n', long = "lines", value_parser = clap::value_parser!(u16).range(1..=50))]
        lines: Option<u16>,
    },
    /// Stop an agent; --purge also deletes its workspace (`!destroy NAME [--purge]`).
    #[command(after_help = "Examples:\n  fireclaw agent rm coder --purge")]
    Rm {
        name: String,
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Machine-readable output: the rows as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// How many of the newest rows to show.
    #[arg(short = 'n', long = "lines", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub lines: u32,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Machine-readable output (the API's VM list).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Run a command in a VM the runtime knows, over SSH, and exit with its \
exit code. Output is printed when the command ends (each stream is cut at 1 MiB)."
)]
pub struct ExecArgs {
    /// The VM's id (12 hex digits, from `fireclaw ps`).
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Give up after this many seconds (exit 124).
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The VM's id (12 hex digits, from `fireclaw ps`).
    #[arg(value_name = "VM")]
    pub vm: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The VM's id (12 hex digits, from `fireclaw ps`).
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Keep printing what the console writes until the VM goes away or Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(Into::into).collect()
    }

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_2_but_run_exits_125() {
        for (args, code) in [
            (&["fireclaw", "provision", "--bogus"][..], 2),
            (&["fireclaw", "provision", "--only", "keys"][..], 2),
            (&["fireclaw", "provision", "--skip", "layout,nope"][..], 2),
            (&["fireclaw", "--root", "/x", "status", "extra"][..], 2),
            (&["fireclaw", "nosuchcommand"][..], 2),
            (&["fireclaw", "run", "--cpus", "0", "--", "true"][..], 125),
            (
                &["fireclaw", "--root", "/x", "-v", "run", "--bogus"][..],
                125,
            ),
            (&["fireclaw", "--config", "run", "status", "--bogus"][..], 2),
            (&["fireclaw", "run", "--help"][..], 0),
            (&["fireclaw", "--version"][..], 0),
        ] {
            let args = os(args);
            let e = try_parse_from(&args).expect_err("a parse error");
            assert_eq!(usage_exit_code(&e, &args), code, "{args:?}");
        }
    }

    #[test]
    fn verbose_is_global() {
        for args in [
            &["fireclaw", "-v", "run", "--", "true"][..],
            &["fireclaw", "run", "-v", "--", "true"][..],
            &["fireclaw", "status", "--verbose"][..],
        ] {
            assert!(try_parse_from(args).unwrap().global.verbose, "{args:?}");
        }
    }

    #[test]
    fn provision_help_lists_every_step() {
        let help = command()
            .find_subcommand_mut("provision")
            .unwrap()
            .render_long_help()
            .to_string();
        for step in crate::provision::step_names() {
            assert!(help.contains(step), "{step} missing from:\n{help}");
        }
    }

    #[test]
    fn every_command_has_examples() {
        fn check(cmd: &mut clap::Command, path: &str) {
            for sub in cmd.get_subcommands_mut() {
                let path = format!("{path} {}", sub.get_name());
                let help = sub.render_long_help().to_string();
                assert!(help.contains("Examples:"), "{path}:\n{help}");
                check(sub, &path);
            }
        }
        let mut cmd = command().disable_help_subcommand(true);
        assert!(cmd.render_long_help().to_string().contains("Examples:"));
        check(&mut cmd, "fireclaw");
    }

    #[test]
    fn run_flags_map_onto_the_core_types() {
        let cli = try_parse_from([
            "fireclaw", "run", "--vmm", "qemu", "--policy", "local", "--", "true",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.vmm, Some(crate::vmm::VmmKind::Qemu));
        assert_eq!(r.policy, crate::net::policy::Policy::Local);
        let help = command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("firecracker") && help.contains("local"),
            "{help}"
        );
    }

    /// `run --cpus`/`--mem` accept exactly what the configuration accepts for pool.vcpus/mem_mib.
    #[test]
    fn run_bounds_are_the_config_bounds() {
        let parse = |flag: &str, v: u64| {
            try_parse_from(["fireclaw", "run", flag, &v.to_string(), "--", "true"]).is_ok()
        };
        for (flag, b) in [("--cpus", bounds::VCPUS), ("--mem", bounds::MEM_MIB)] {
            assert!(parse(flag, b.min) && parse(flag, b.max), "{flag}");
            assert!(!parse(flag, b.min - 1) && !parse(flag, b.max + 1), "{flag}");
        }
    }
}
