//! `fireclaw gc`: remove what VMs left behind when their fireclaw died.

use crate::cli::GcArgs;
use crate::commands::Env;
use crate::vm::{self, record};

pub fn run(env: &Env, args: &GcArgs) -> anyhow::Result<i32> {
    let host = super::run::host(env);
    if args.dry_run {
        let Some(db) = env.open_db_read_only()? else {
            println!("No state database: nothing to collect.");
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
    let report = vm::gc(&host, args.all, args.vm.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for id in &report.removed {
            println!("removed VM {id}");
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
