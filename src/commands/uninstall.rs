//! `fireclaw uninstall`: the exact reverse of what provision journaled.

use serde::Serialize;

use crate::cli::UninstallArgs;
use crate::commands::Env;
use crate::plan::apply;

#[derive(Serialize)]
struct Item {
    id: i64,
    step: String,
    did: String,
    undo: String,
}

pub fn run(env: &Env, args: &UninstallArgs) -> anyhow::Result<i32> {
    let dry_run = args.dry_run || args.json;
    if !dry_run {
        env.require_root("uninstall")?;
    }
    let _lock = if dry_run { None } else { Some(env.lock()?) };
    let Some(db) = env.open_db_read_only()? else {
        if args.json {
            println!("[]");
        } else {
            println!("Nothing to uninstall: {} does not exist (this host was not provisioned by fireclaw).", env.db_path().display());
        }
        return Ok(0);
    };
    let items = apply::reversals(&db)?;
    if dry_run {
        let list: Vec<Item> = items
            .iter()
            .map(|r| Item {
                id: r.id,
                step: r.step.clone(),
                did: r.action.clone(),
                undo: r.undo.describe(),
            })
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            println!(
                "fireclaw uninstall --dry-run (root {}): nothing will be changed",
                env.root.dir().display()
            );
            for i in &list {
                println!("  - [{}] {}  (undoes: {})", i.step, i.undo, i.did);
            }
            println!("  - delete state database {}", env.db_path().display());
            println!("Plan: {} reversal(s).", list.len());
        }
        return Ok(0);
    }
    drop(db);
    let db = crate::state::Db::open(&env.db_path())?;
    let failures = apply::uninstall(db, &env.root, &crate::commands::shell::Shell::new())?;
    if failures.is_empty() {
        println!(
            "Uninstalled: {} change(s) reversed; the state database is gone.",
            items.len()
        );
        Ok(0)
    } else {
        for f in &failures {
            eprintln!("error: {f}");
        }
        eprintln!("{} reversal(s) failed; the journal keeps them. Fix the cause and run `fireclaw uninstall` again.", failures.len());
        Ok(1)
    }
}
