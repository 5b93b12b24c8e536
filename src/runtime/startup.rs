//! Start-up: put the host back as provision left it, then reconcile the `vms` table.
//!
//! A reboot loses the bridge, its address, IPv4 forwarding, fireclaw's nftables table and the
//! thin pool's devices. Provision's journal says what it made; the runtime re-creates only what
//! the completed steps own (network for the first four, the recorded pool for the last), with the
//! same functions provision uses (`net::host`, `storage::thin`), and writes nothing to the journal:
//! the undo provision recorded still applies. Failures are logged and the runtime goes on: the
//! control socket stays useful (`ps`, `rm`) on a host that cannot start VMs.

use crate::net::{host as nethost, nft, Ipv4Cidr};
use crate::storage::thin::{self, recorded, store, ThinEngine, ThinError};
use crate::vm::{self, Host};

use super::Service;

/// Runs every start-up task and returns one line per thing done (also logged).
pub fn startup(service: &Service) -> Vec<String> {
    let host = service.host();
    let mut lines = Vec::new();
    let mut say = |line: String, warn: bool| {
        if warn {
            tracing::warn!("start-up: {line}");
        } else {
            tracing::info!("start-up: {line}");
        }
        lines.push(line);
    };
    match restore_network(&host) {
        Ok(done) if done.is_empty() => say(
            "network: as provisioned, nothing to re-create".into(),
            false,
        ),
        Ok(done) => {
            for d in done {
                say(format!("re-created: {d}"), false);
            }
        }
        Err(e) => say(format!("network: {e:#}"), true),
    }
    match restore_thin_pool(&host) {
        Ok(Some(line)) => say(line, false),
        Ok(None) => {}
        Err(e) => say(format!("thin pool: {e:#}"), true),
    }
    match reconcile(service, &host) {
        Ok(done) => {
            for d in done {
                say(d, false);
            }
        }
        Err(e) => say(format!("reconciling VMs: {e:#}"), true),
    }
    lines
}

/// After a reboot ngircd starts before the runtime puts the bridge address back, so it could not
/// listen on it (it says so in its log and serves loopback only; the system tier found this). When
/// the address was re-added on a host whose ngircd provision configured, ask systemd to restart
/// ngircd, without waiting: `fireclaw.service` is ordered after it.
fn rebind_ngircd(host: &Host, db: &crate::state::Db) -> anyhow::Result<Option<String>> {
    if !host.root.is_system()
        || !std::path::Path::new("/run/systemd/system").is_dir()
        || db.step_completed_at("ngircd")?.is_none()
    {
        return Ok(None);
    }
    let out = std::process::Command::new("systemctl")
        .args(["--no-block", "try-restart", "ngircd.service"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(Some(
            "ngircd restarted to listen on the bridge address".into(),
        )),
        Ok(o) => anyhow::bail!(
            "systemctl try-restart ngircd.service: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => anyhow::bail!("running systemctl: {e}"),
    }
}

/// The bridge, its address and state, forwarding and the nft table, when provision's network
/// step completed (a host provisioned with `--skip network` has none of them to put back).
pub fn restore_network(host: &Host) -> anyhow::Result<Vec<String>> {
    let db = host.db()?;
    if db.step_completed_at("network")?.is_none() {
        return Ok(vec![]);
    }
    let n = &host.config.network;
    let cidr = Ipv4Cidr::parse(&n.address).map_err(anyhow::Error::msg)?;
    let mut done = nethost::ensure_bridge(&n.bridge, &cidr)?;
    if done.iter().any(|d| d.starts_with("added ")) {
        // A failure here must not keep forwarding and the nft table from coming back.
        match rebind_ngircd(host, &db) {
            Ok(Some(line)) => done.push(line),
            Ok(None) => {}
            Err(e) => tracing::warn!("start-up: ngircd: {e:#}"),
        }
    }
    if n.nat && nethost::ensure_forwarding()? {
        done.push(format!("{}=1", nethost::FORWARD_SYSCTL));
    }
    let ruleset = nft::provision_ruleset(&n.nft_table, &n.bridge, &cidr, n.nat);
    match nethost::ensure_table(&n.nft_table, &ruleset)? {
        nethost::TableOutcome::Created => done.push(format!("nftables table inet {}", n.nft_table)),
        nethost::TableOutcome::Unchanged => {}
        nethost::TableOutcome::Differs => tracing::warn!(
            "nftables table inet {} differs from what provision installs; left as it is (`fireclaw provision` reconciles it)",
            n.nft_table
        ),
    }
    Ok(done)
}

/// Re-activates the recorded thin pool (loop devices and pool table) after a reboot.
pub fn restore_thin_pool(host: &Host) -> anyhow::Result<Option<String>> {
    let c = &host.config;
    if !c.thinpool.enabled {
        return Ok(None);
    }
    let db = host.db()?;
    if !store::has_tables(&db)? || store::pool(&db, thin::DEFAULT_POOL_NAME)?.is_none() {
        return Ok(None);
    }
    let spec = recorded::recorded_spec(
        &db,
        &host.root,
        &c.paths.state_dir,
        c.thinpool.max_used_percent,
    )?;
    let engine = match ThinEngine::new(&db, spec) {
        Ok(e) => e,
        Err(e @ ThinError::NoDeviceMapper { .. }) => {
            return Ok(Some(format!(
                "thin pool recorded but not available: {e}; VMs get reflink/copy disks"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(if engine.ensure_active()? {
        format!(
            "re-created: thin pool {} (loop devices and pool table)",
            thin::DEFAULT_POOL_NAME
        )
    } else {
        format!("thin pool {} active", thin::DEFAULT_POOL_NAME)
    }))
}

/// Tears down VMs whose owner died (as `gc` does) and kept VMs whose VMM is gone, then adopts
/// the kept VMs that still run.
pub fn reconcile(service: &Service, host: &Host) -> anyhow::Result<Vec<String>> {
    let report = vm::gc(host, false, None)?;
    let mut lines: Vec<String> = report
        .removed
        .iter()
        .map(|id| format!("tore down dead VM {id}"))
        .collect();
    lines.extend(
        report
            .errors
            .iter()
            .map(|e| format!("tearing down a dead VM: {e}")),
    );
    if report.orphan_leases > 0 {
        lines.push(format!(
            "released {} orphaned lease(s)",
            report.orphan_leases
        ));
    }
    lines.extend(super::vms::adopt_kept(service, host)?);
    // Clones of a runtime that died are gone with their rows: so are their slots, and any
    // snapshot it was half-way through building.
    let slots = crate::pool::clone::reconcile_slots(host)?;
    if slots.rows + slots.namespaces + slots.links > 0 {
        lines.push(format!(
            "removed {} clone slot row(s), {} namespace(s) and {} veth(s) left behind",
            slots.rows, slots.namespaces, slots.links
        ));
    }
    for id in crate::pool::snapshot::reconcile(host)? {
        lines.push(format!("removed half-built snapshot {id}"));
    }
    Ok(lines)
}
