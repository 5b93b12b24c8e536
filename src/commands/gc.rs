//! `fireclaw gc`: removes the leftovers of crashes from the thin pool.

use crate::cli::JsonFlag;
use crate::commands::Env;
use crate::storage::thin::{self, store, ThinEngine};

pub fn run(env: &Env, args: &JsonFlag) -> anyhow::Result<i32> {
    env.require_root("gc")?;
    let Some(ro) = env.open_db_read_only()? else {
        println!("Nothing to collect: this host was not provisioned.");
        return Ok(0);
    };
    if !store::has_tables(&ro)? || store::pool(&ro, thin::DEFAULT_POOL_NAME)?.is_none() {
        println!("Nothing to collect: no thin pool (VM disks are reflink/copy clones).");
        return Ok(0);
    }
    drop(ro);
    let db = crate::state::Db::open(&env.db_path())?;
    let spec = crate::provision::thinpool::recorded_spec(
        &db,
        &env.root,
        &env.config.paths.state_dir,
        env.config.thinpool.max_used_percent,
    )?;
    let engine = ThinEngine::new(&db, spec)?;
    // Until the VM table exists, a disk is alive while the process that made it runs.
    let report = engine.gc(&thin::owner_alive)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "vm_disks_removed": report.snapshots,
                "image_volumes_removed": report.volumes,
            })
        );
    } else {
        println!(
            "Removed {} orphaned VM disk(s){} and {} unused image volume(s).",
            report.snapshots.len(),
            if report.snapshots.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.snapshots.join(", "))
            },
            report.volumes.len()
        );
    }
    Ok(0)
}
