//! Command-line definitions. Parsing only: every command's work lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fireclaw",
    version,
    about = "Run AI agents in microVMs on your own hardware",
    long_about = "fireclaw turns a Debian or Ubuntu host with KVM into a host for AI agents, each in its own \
microVM, talking over IRC and thinking with a local Ollama.\n\n\
Start with `fireclaw provision --dry-run` to see what it would change on this host (no root needed), \
then `sudo fireclaw provision` to apply it. `fireclaw uninstall` takes every change back out.",
    after_help = "Configuration: /etc/fireclaw/fireclaw.toml (see `fireclaw config`). State: /var/lib/fireclaw/state.db."
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this host ready: packages, Firecracker, kernel, images, thin pool, bridge + NAT, ngircd, unit.
    #[command(long_about = "Make this host ready to run fireclaw, idempotently.\n\n\
Each step probes the host and plans only what is missing; a second run plans nothing. Every change \
is recorded in the state database before it is made, so an interrupted run can simply be run again, \
and `fireclaw uninstall` can reverse exactly what was done.\n\n\
--dry-run prints the plan (commands, files with diffs, links, addresses, nftables rules, units) \
and changes nothing; it works without root.")]
    Provision(ProvisionArgs),
    /// Reverse everything provision recorded, newest first, and nothing else.
    Uninstall(UninstallArgs),
    /// Check whether this host can run fireclaw, and say how to fix what is missing.
    Doctor(JsonFlag),
    /// Show what provision has done: steps, bridge, ngircd, unit.
    Status(JsonFlag),
    /// Build the guest kernel and rootfs images from recipes; list them.
    Image(Box<crate::commands::image::ImageArgs>),
    /// Print the configuration in effect (defaults merged with the file), as TOML.
    Config,
    /// Run one command in a fresh microVM and throw the VM away.
    Run(RunArgs),
    /// Remove VMs (process, tap, lease, disk, sockets) left behind by a fireclaw that died.
    Gc(GcArgs),
    /// The service: warm pool, agents and the control socket (systemd runs this).
    Runtime(RuntimeArgs),
    /// List the VMs the runtime knows: id, image, address, state, age, origin, owner.
    Ps(PsArgs),
    /// Run a command in a VM through the runtime.
    Exec(ExecArgs),
    /// Remove a VM through the runtime (its process, tap, lease, disk and sockets).
    Rm(RmArgs),
    /// Print a VM's console log through the runtime; -f follows it.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan as JSON (schema in README, "Plan JSON"). Implies nothing else.
    #[arg(long)]
    pub json: bool,
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
    /// Print the reversal list as JSON.
    #[arg(long)]
    pub json: bool,
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
    #[arg(long, value_enum)]
    pub vmm: Option<crate::vmm::VmmKind>,
    /// Virtual CPUs (default: pool.vcpus from the configuration).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    pub cpus: Option<u8>,
    /// Memory in MiB (default: pool.mem_mib).
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub mem: Option<u32>,
    /// Give up after this many seconds, boot included; the VM is destroyed (exit 124).
    #[arg(long, value_name = "S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Guest network policy: full (NAT out), local (only the host's IRC port), none.
    #[arg(long, value_enum, default_value = "full")]
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
    /// Report boot and exec times on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Report a JSON summary (VM, address, timings, exit code) on stderr at the end.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", required_unless_present = "keep")]
    pub command: Vec<String>,
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
    #[arg(long)]
    pub json: bool,
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
