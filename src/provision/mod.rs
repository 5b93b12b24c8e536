//! The host steps `fireclaw provision` runs, in order. Each is a [`Step`]: it probes, plans typed
//! actions, and the plan engine applies and journals them.

pub mod artifacts;
pub mod firecracker;
pub mod group;
pub mod keys;
pub mod layout;
pub mod network;
pub mod ngircd;
pub mod packages;
pub mod preflight;
pub mod state_db;
pub mod systemd;
pub mod thinpool;

use crate::plan::Step;
use crate::root::RootPrefix;

/// Every step, in the order provision applies them (uninstall reverses the journal, which follows
/// this order).
pub fn steps() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(preflight::Preflight),
        Box::new(state_db::StateDb),
        Box::new(packages::Packages),
        Box::new(layout::Layout),
        Box::new(firecracker::FirecrackerStep),
        Box::new(artifacts::Kernel),
        Box::new(artifacts::Images),
        Box::new(artifacts::ThinPoolStep),
        Box::new(network::Network),
        Box::new(ngircd::Ngircd),
        Box::new(systemd::Unit),
    ]
}

pub fn step_names() -> Vec<&'static str> {
    steps().iter().map(|s| s.name()).collect()
}

/// Runs a builder named by a plan's `Build` action.
pub fn build(
    root: &RootPrefix,
    config: &crate::config::Config,
    id: &str,
    reporter: &dyn crate::report::Reporter,
) -> anyhow::Result<()> {
    artifacts::run_build(root, config, id, reporter)
}

/// Whether fireclaw should talk to systemd: only on the real root, and only when systemd runs.
pub fn systemd_active(root: &RootPrefix) -> bool {
    root.is_system() && std::path::Path::new("/run/systemd/system").is_dir()
}
