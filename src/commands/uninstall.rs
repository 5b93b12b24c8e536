//! `fireclaw uninstall`: the exact reverse of what provision journaled, after tearing down the VMs
//! that still run on what it is about to remove.

use serde::Serialize;

use crate::cli::UninstallArgs;
use crate::commands::exit::CHANGES as EXIT_CHANGES;
use crate::commands::Env;
use crate::plan::apply;
use crate::vm::record::{self, VmRecord};

#[derive(Serialize)]
struct Item {
    id: i64,
    step: String,
    did: String,
    undo: String,
}

#[derive(Serialize)]
struct VmItem {
    id: String,
    state: String,
    tap: String,
    run_dir: String,
}

/// The JSON document `uninstall --json` prints (README, "Plan JSON").
#[derive(Serialize)]
struct Report {
    schema: u32,
    root: String,
    dry_run: bool,
    /// VMs torn down before anything else (they use the bridge, the pool and the database).
    vms: Vec<VmItem>,
    reversals: Vec<Item>,
    /// Reversals (or VM teardowns) that failed; empty on success and in a dry-run.
    failures: Vec<String>,
}

pub fn run(env: &Env, args: &UninstallArgs) -> anyhow::Result<i32> {
    let dry_run = args.dry_run;
    if !dry_run {
        env.require_root("uninstall")?;
    }
    // Without the root directory there is nothing to lock (and nothing to change: the plan says so).
    let _lock = if dry_run || !env.root.dir().is_dir() {
        None
    } else {
        Some(env.lock()?)
    };
    let Some(db) = env.open_db_read_only()? else {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report(env, dry_run, &[], &[]))?
            );
        } else {
            println!("Nothing to uninstall: {} does not exist (this host was not provisioned by fireclaw).", env.db_path().display());
        }
        return Ok(0);
    };
    let items = apply::reversals(&db)?;
    let vms = record::list(&db)?;
    let mut doc = report(env, dry_run, &items, &vms);
    let code = if args.detailed_exitcode {
        EXIT_CHANGES
    } else {
        0
    };
    if dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!(
                "fireclaw uninstall --dry-run (root {}): nothing will be changed",
                env.root.dir().display()
            );
            for v in &doc.vms {
                println!(
                    "  - tear down VM {} ({}, tap {}, run dir {})",
                    v.id, v.state, v.tap, v.run_dir
                );
            }
            for i in &doc.reversals {
                println!("  - [{}] {}  (undoes: {})", i.step, i.undo, i.did);
            }
            println!("  - delete state database {}", env.db_path().display());
            println!(
                "Plan: {} VM(s) to tear down, {} reversal(s).",
                doc.vms.len(),
                doc.reversals.len()
            );
        }
        return Ok(code);
    }
    drop(db);
    let shell = crate::commands::shell::Shell::new();
    doc.failures = teardown_vms(env, &vms)?;
    if doc.failures.is_empty() {
        let db = crate::state::Db::open(&env.db_path())?;
        doc.failures = apply::uninstall(db, &env.root, &shell)?;
    } else {
        doc.failures.push(
            "uninstall stopped before reversing anything: a VM could not be torn down".into(),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if doc.failures.is_empty() {
        if !args.json {
            println!(
                "Uninstalled: {} VM(s) torn down, {} change(s) reversed; the state database is gone.",
                vms.len(),
                items.len()
            );
        }
        Ok(code)
    } else {
        for f in &doc.failures {
            eprintln!("error: {f}");
        }
        eprintln!("{} failure(s); the journal keeps what is left. Fix the cause and run `fireclaw uninstall` again.", doc.failures.len());
        Ok(1)
    }
}

fn report(env: &Env, dry_run: bool, items: &[apply::Reversal], vms: &[VmRecord]) -> Report {
    Report {
        schema: crate::plan::render::PLAN_SCHEMA,
        root: env.root.dir().display().to_string(),
        dry_run,
        vms: vms
            .iter()
            .map(|v| VmItem {
                id: v.id.clone(),
                state: v.state.clone(),
                tap: v.tap.clone(),
                run_dir: v.run_dir.display().to_string(),
            })
            .collect(),
        reversals: items
            .iter()
            .map(|r| Item {
                id: r.id,
                step: r.step.clone(),
                did: r.action.clone(),
                undo: r.undo.describe(),
            })
            .collect(),
        failures: Vec::new(),
    }
}

/// Every VM still recorded (running, kept with `run --keep`, or left by a crash) uses the bridge,
/// the thin pool and the database uninstall removes: each is torn down first, as `fireclaw gc
/// --all` does, so none is orphaned. Returns the failures (nothing is reversed if there are any).
///
/// Clone slots go too (their namespaces, host veths and the host's `_clones` table): those of
/// the VMs just torn down, and those a runtime that did not stop cleanly left prepared.
fn teardown_vms(env: &Env, vms: &[VmRecord]) -> anyhow::Result<Vec<String>> {
    let host = super::engines::host(env)?;
    let mut errors = Vec::new();
    if !vms.is_empty() {
        eprintln!("Tearing down {} VM(s) first:", vms.len());
        for v in vms {
            eprintln!("  {} ({}, tap {})", v.id, v.state, v.tap);
        }
        errors = crate::vm::gc(&host, true, None)?.errors;
    }
    if errors.is_empty() {
        match crate::pool::clone::reconcile_slots(&host) {
            Ok(r) if r.rows + r.namespaces + r.links > 0 => eprintln!(
                "Removed {} clone slot(s) ({} namespace(s), {} host veth(s) without a row).",
                r.rows, r.namespaces, r.links
            ),
            Ok(_) => {}
            Err(e) => errors.push(format!("removing clone slots: {e:#}")),
        }
    }
    Ok(errors)
}
