//! `fireclaw gc`: remove what VMs left behind when their fireclaw died.

use crate::cli::GcArgs;
use crate::commands::Env;
use crate::storage::thin::{self, store, ThinEngine};
use crate::vm::{self, record};

pub fn run(env: &Env, args: &GcArgs) -> anyhow::Result<i32> {
    let host = super::engines::host(env)?;
    if args.dry_run {
        let Some(db) = env.open_db_read_only()? else {
            if args.json {
                println!("[]");
            } else {
                println!("No state database: nothing to collect.");
            }
            return Ok(0);
        };
        let records = record::list(&db)?;
        let stale: Vec<_> = records
            .iter()
            .filter(|r| {
                args.vm.as_deref().map_or(
                    args.all || !record::owner_alive(r) && r.state != "kept",
                    |id| id == r.id,
                )
            })
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&stale)?);
        } else if stale.is_empty() {
            println!("Nothing to collect ({} VM(s) recorded).", records.len());
        } else {
            for r in stale {
                println!(
                    "would remove VM {} ({}, {}): tap {}, address {}, run dir {}, disk {}",
                    r.id,
                    r.vmm,
                    r.state,
                    r.tap,
                    r.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    r.run_dir.display(),
                    r.disk
                        .as_ref()
                        .map_or(r.disk_planned.display(), |d| d.path.display())
                );
            }
        }
        return Ok(0);
    }
    env.require_root("fireclaw gc")?;
    if !env.db_path().exists() {
        // Never provisioned and nothing ever ran: nothing recorded, and gc must not create state.
        if args.json {
            let empty = serde_json::json!({
                "vms": vm::GcReport::default(),
                "thin_vm_disks_removed": null,
                "thin_image_volumes_removed": null,
            });
            println!("{}", serde_json::to_string_pretty(&empty)?);
        } else {
            println!("No state database: nothing to collect.");
        }
        return Ok(0);
    }
    let report = vm::gc(&host, args.all, args.vm.as_deref())?;
    // Clones' slots name their VM: those of VMs just collected go too.
    let slots = crate::pool::clone::release_slots_of_gone_vms(&host)?;
    let thin_report = thin_gc(env)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "vms": report,
                "slots_released": slots,
                "thin_vm_disks_removed": thin_report.as_ref().map(|r| &r.snapshots),
                "thin_image_volumes_removed": thin_report.as_ref().map(|r| &r.volumes),
            }))?
        );
    } else {
        if let Some(t) = &thin_report {
            for vm_id in &t.snapshots {
                println!("removed orphaned thin disk of VM {vm_id}");
            }
            if !t.volumes.is_empty() {
                println!(
                    "removed {} unused image volume(s) from the thin pool",
                    t.volumes.len()
                );
            }
        }
        for id in &report.removed {
            println!("removed VM {id}");
        }
        for ns in &slots {
            println!("released clone slot {ns}");
        }
        for id in &report.kept_running {
            println!("kept VM {id} is running (remove it with `fireclaw gc --vm {id}`)");
        }
        if report.orphan_leases > 0 {
            println!("released {} orphaned lease(s)", report.orphan_leases);
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        if report.removed.is_empty() && report.errors.is_empty() && report.orphan_leases == 0 {
            println!("Nothing to collect.");
        }
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

/// Deletes thin-pool VM disks that no VM record names any more (their VM was collected above, or
/// crashed before it was recorded) and image volumes nothing uses. Re-activates the pool after a
/// reboot first. `None` when the host has no thin pool.
fn thin_gc(env: &Env) -> anyhow::Result<Option<thin::GcReport>> {
    // A normal connection: runs may be writing (see ThinDisks::serves on read-only ones).
    if !env.db_path().exists() {
        return Ok(None);
    }
    let db = crate::state::Db::open(&env.db_path())?;
    if !store::has_tables(&db)? || store::pool(&db, thin::DEFAULT_POOL_NAME)?.is_none() {
        return Ok(None);
    }
    let spec = crate::storage::thin::recorded::recorded_spec(
        &db,
        &env.root,
        &env.config.paths.state_dir,
        env.config.thinpool.max_used_percent,
    )?;
    let engine = ThinEngine::new(&db, spec)?;
    // Liveness is decided inside the engine's gc, under the pool lock, per snapshot: a VM that
    // starts while gc runs has its row written before its disk, so it is never taken for an orphan.
    Ok(Some(engine.gc(&|s| {
        record::get(&db, &s.vm_id).map_or(true, |r| r.is_some())
    })?))
}

/// The VM table for `status`: what runs, who owns it, and what a dead owner left behind.
pub fn print_vms(vms: &[record::VmRecord]) {
    if vms.is_empty() {
        println!("VMs: none");
        return;
    }
    println!("VMs: {}", vms.len());
    for r in vms {
        let owner = if r.state == "kept" {
            "kept".to_string()
        } else if record::owner_alive(r) {
            format!("owned by fireclaw pid {}", r.owner_pid.unwrap_or_default())
        } else {
            "LEFTOVER (its fireclaw died; `fireclaw gc` removes it)".to_string()
        };
        println!(
            "  {} {} {} {} tap {} policy {}: {owner}",
            r.id,
            r.vmm,
            r.state,
            r.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            r.tap,
            r.policy
        );
    }
}
