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
    /// Delete what crashed runs left behind: thin VM disks whose owner process is gone, half-made
    /// disks and image volumes nothing uses. Re-activates the pool first if needed.
    Gc(JsonFlag),
    /// Print the configuration in effect (defaults merged with the file), as TOML.
    Config,
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
