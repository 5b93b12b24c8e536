//! The host's side of the network, put back into the state provision leaves it in: the bridge
//! with its address and up, IPv4 forwarding, fireclaw's nftables table. A reboot loses all of it;
//! the runtime calls these at start-up. Each returns what it had to change (empty when nothing),
//! records nothing (provision's journal already holds the undo for what provision made), and acts
//! on the current network namespace. Provision's network step plans the same changes as journaled
//! actions; both use `link`, `sysctl` and `nft` underneath.

use super::{link, nft, sysctl, Ipv4Cidr};

/// The sysctl that lets the host route guest traffic.
pub const FORWARD_SYSCTL: &str = "net.ipv4.ip_forward";

/// Makes `bridge` exist, carry `cidr` and be up. A link of that name that is not a bridge is an
/// error: it is someone else's, and fireclaw does not take it over.
pub fn ensure_bridge(bridge: &str, cidr: &Ipv4Cidr) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let state = match link::state(bridge)? {
        None => {
            link::create_bridge(bridge)?;
            done.push(format!("created bridge {bridge}"));
            None
        }
        Some(s) => {
            if s.kind.as_deref() != Some("bridge") {
                anyhow::bail!(
                    "link {bridge} exists but is a {} device, not a bridge; remove it or change [network] bridge",
                    s.kind.as_deref().unwrap_or("plain")
                );
            }
            Some(s)
        }
    };
    if !state.as_ref().is_some_and(|s| s.ipv4.contains(cidr)) {
        link::add_address(bridge, &cidr.to_string())?;
        done.push(format!("added {cidr} to {bridge}"));
    }
    if !state.as_ref().is_some_and(|s| s.up) {
        link::set_up(bridge, true)?;
        done.push(format!("set {bridge} up"));
    }
    Ok(done)
}

/// Turns IPv4 forwarding on; true when it was off.
pub fn ensure_forwarding() -> anyhow::Result<bool> {
    if sysctl::read(FORWARD_SYSCTL)? == "1" {
        return Ok(false);
    }
    sysctl::write(FORWARD_SYSCTL, "1")?;
    Ok(true)
}

/// What [`ensure_table`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableOutcome {
    /// The table holds `ruleset` (running VMs' own chains aside).
    Unchanged,
    /// The table was missing and now holds `ruleset`.
    Created,
    /// The table exists with other rules. Left alone: replacing it would drop running VMs'
    /// rules, and a changed configuration is provision's to apply.
    Differs,
}

/// Installs `ruleset` as `inet <table>` when the table is missing.
pub fn ensure_table(table: &str, ruleset: &str) -> anyhow::Result<TableOutcome> {
    match nft::probe_table("inet", table)? {
        nft::TableProbe::Present(listed) if nft::table_matches(&listed, ruleset) => {
            Ok(TableOutcome::Unchanged)
        }
        nft::TableProbe::Present(_) => Ok(TableOutcome::Differs),
        nft::TableProbe::Absent => {
            nft::apply(ruleset)?;
            Ok(TableOutcome::Created)
        }
        nft::TableProbe::NoPermission => {
            anyhow::bail!("nft needs root (CAP_NET_ADMIN) to read table inet {table}")
        }
        nft::TableProbe::NoTool => anyhow::bail!("nft is not installed (package nftables)"),
    }
}
