//! The runtime's view of the `vms` table: listing, re-adoption of kept VMs, supervision of their
//! VMM processes, removal. Teardown is `vm::gc`'s, so a VM is removed the same way whoever
//! removes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fireclaw_proto::control::{Origin, VmInfo};

use crate::vm::{self, record, record::VmRecord, Host};

use super::Service;

/// How the runtime sees a kept VM it supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Its VMM runs and its control socket answers.
    Live,
    /// Its VMM runs but its control socket does not answer: listed, not killed (an agent's VM is
    /// not destroyed on a guess); `fireclaw rm` removes it.
    Unresponsive,
}

/// Whether the VMM of `r` still runs: the recorded pid, if any, is alive and its command line
/// names the VM's run directory (unique per VM, so a reused pid does not pass); without a
/// recorded pid, any process naming the run directory.
pub fn vmm_alive(r: &VmRecord) -> bool {
    let needle = r.run_dir.to_string_lossy();
    match r.vmm_pid.and_then(|p| u32::try_from(p).ok()) {
        Some(pid) => std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle.as_ref()))
            .unwrap_or(false),
        None => !vm::processes_mentioning(&needle).is_empty(),
    }
}

/// Whether the VMM's control socket (QEMU's QMP, Firecracker's API) accepts a connection.
pub fn control_socket_answers(run_dir: &Path) -> bool {
    ["qmp.sock", "api.sock"].iter().any(|name| {
        let p = run_dir.join(name);
        p.exists() && std::os::unix::net::UnixStream::connect(&p).is_ok()
    })
}

/// Adopts every kept VM whose VMM runs, forgets adopted VMs whose row went away. Returns the
/// lines worth logging.
pub fn adopt_kept(service: &Service, host: &Host) -> anyhow::Result<Vec<String>> {
    let db = host.db()?;
    let rows = record::list(&db)?;
    let mut lines = Vec::new();
    let Ok(mut adopted) = service.adopted.lock() else {
        anyhow::bail!("adopted-VM table poisoned");
    };
    adopted.retain(|id, _| rows.iter().any(|r| &r.id == id));
    for r in rows.iter().filter(|r| r.state == "kept") {
        if adopted.get(&r.id) == Some(&Adopted::Live) || !vmm_alive(r) {
            continue;
        }
        let state = if control_socket_answers(&r.run_dir) {
            Adopted::Live
        } else {
            Adopted::Unresponsive
        };
        if adopted.insert(r.id.clone(), state) != Some(state) {
            lines.push(match state {
                Adopted::Live => format!("re-adopted kept VM {} ({}, {})", r.id, r.vmm, r.image),
                Adopted::Unresponsive => format!(
                    "kept VM {} runs but its control socket does not answer; left alone (`fireclaw rm {}` removes it)",
                    r.id, r.id
                ),
            });
        }
    }
    Ok(lines)
}

/// Watches adopted VMs: one whose VMM died is torn down as `gc` does and forgotten; kept VMs
/// made after start-up (`fireclaw run --keep`) are adopted.
pub async fn supervise(service: Arc<Service>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(super::SUPERVISE_EVERY) => {}
            _ = stop.changed() => return,
        }
        let svc = service.clone();
        let res = tokio::task::spawn_blocking(move || supervise_once(&svc)).await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("supervising VMs: {e:#}"),
            Err(e) => tracing::warn!("supervising VMs: {e}"),
        }
    }
}

fn supervise_once(service: &Service) -> anyhow::Result<()> {
    let host = service.host();
    let db = host.db()?;
    let ids: Vec<String> = match service.adopted.lock() {
        Ok(a) => a.keys().cloned().collect(),
        Err(_) => anyhow::bail!("adopted-VM table poisoned"),
    };
    for id in ids {
        let dead = match record::get(&db, &id)? {
            Some(r) => !vmm_alive(&r),
            None => true,
        };
        if !dead {
            continue;
        }
        if let Ok(mut a) = service.adopted.lock() {
            a.remove(&id);
        }
        if record::get(&db, &id)?.is_none() {
            tracing::info!("VM {id} was removed");
            continue;
        }
        // The console goes with the run dir: an agent's death notice quotes its last lines.
        if let Some(m) = service.agents.get() {
            m.note_console(&id, &host.run_dir(&id).join("console.log"));
        }
        let report = crate::pool::clone::gc_vm(&host, &id)?;
        if report.errors.is_empty() {
            tracing::warn!("kept VM {id}: its VMM died; torn down");
        } else {
            tracing::error!(
                "kept VM {id}: its VMM died; teardown failed: {}",
                report.errors.join("; ")
            );
        }
    }
    for line in adopt_kept(service, &host)? {
        tracing::info!("{line}");
    }
    Ok(())
}

/// Every recorded VM as the API lists it.
pub fn list(service: &Service) -> anyhow::Result<Vec<VmInfo>> {
    let host = service.host();
    let db = host.db()?;
    let adopted = service
        .adopted
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let me = i64::from(std::process::id());
    Ok(record::list(&db)?
        .into_iter()
        .map(|r| {
            let state = match adopted.get(&r.id) {
                Some(Adopted::Live) => "adopted".to_string(),
                Some(Adopted::Unresponsive) => "unresponsive".to_string(),
                None => r.state.clone(),
            };
            let owner = if r.state == "kept" {
                "kept".to_string()
            } else if record::owner_alive(&r) {
                match r.owner_pid {
                    Some(p) if p == me => "runtime".to_string(),
                    Some(p) => format!("run pid {p}"),
                    None => "unknown".to_string(),
                }
            } else {
                "none (its fireclaw died)".to_string()
            };
            VmInfo {
                origin: service.pool.origin_of(&r.id).unwrap_or(Origin::Cold),
                id: r.id,
                image: r.image,
                address: r.ip.map(|i| i.to_string()),
                state,
                age_secs: u64::try_from(now - r.created_at).unwrap_or(0),
                owner,
                vmm: r.vmm,
            }
        })
        .collect())
}

/// VMs per state, for `/v1/status` and `/metrics`.
pub fn by_state(vms: &[VmInfo]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for v in vms {
        *m.entry(v.state.clone()).or_insert(0) += 1;
    }
    m
}

/// What removing a VM found.
pub enum RemoveOutcome {
    Removed,
    NotFound,
    Failed(String),
}

/// Removes one VM whatever its state (its VMM is killed), as `fireclaw gc --vm ID` does.
pub fn remove(service: &Service, id: &str) -> anyhow::Result<RemoveOutcome> {
    let host = service.host();
    let db = host.db()?;
    if record::get(&db, id)?.is_none() {
        return Ok(RemoveOutcome::NotFound);
    }
    let report = crate::pool::clone::gc_vm(&host, id)?;
    if let Ok(mut a) = service.adopted.lock() {
        a.remove(id);
    }
    if report.errors.is_empty() {
        tracing::info!("VM {id} removed on request");
        Ok(RemoveOutcome::Removed)
    } else {
        Ok(RemoveOutcome::Failed(report.errors.join("; ")))
    }
}

/// How long a follow stream waits between looks at the console file.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);
