//! `fireclaw doctor`: preflight alone, each check with its fix.

use crate::cli::JsonFlag;
use crate::commands::Env;
use crate::plan::Ctx;
use crate::provision::preflight;

pub fn run(env: &Env, args: &JsonFlag) -> anyhow::Result<i32> {
    let db = env.open_db_read_only().ok().flatten();
    let ctx = Ctx::new(&env.root, &env.config, db.as_ref(), env.privileged);
    let mut checks = preflight::checks(&ctx);
    checks.push(disk_engine_check(env));
    let failed = checks.iter().any(|c| c.required && !c.ok);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = if c.ok {
                "ok  "
            } else if c.required {
                "FAIL"
            } else {
                "warn"
            };
            println!("{mark} {:<20} {}", c.name, c.detail);
            if let (false, Some(fix)) = (c.ok, &c.fix) {
                println!("     {:<20} fix: {fix}", "");
            }
        }
        println!(
            "{}",
            if failed {
                "This host cannot run fireclaw until the FAIL lines are fixed."
            } else {
                "This host can run fireclaw."
            }
        );
    }
    Ok(if failed { 1 } else { 0 })
}

/// Which per-VM disk engine this host gets. Never a failure: without device-mapper, disks are
/// reflink/copy clones, slower to make for big images but otherwise equivalent.
fn disk_engine_check(env: &Env) -> crate::plan::Check {
    use crate::storage::thin::{self, EngineChoice};
    let (ok, detail) = match thin::choose_engine(&env.config) {
        EngineChoice::Thin => (
            true,
            "dm-thin: one thin snapshot per VM (O(1) in image size)".to_string(),
        ),
        EngineChoice::ReflinkCopy { reason } => (false, format!("reflink/copy ({reason})")),
    };
    crate::plan::Check {
        name: "disk engine".into(),
        ok,
        detail,
        fix: (!ok).then(|| {
            "for O(1) VM disks: `modprobe dm_thin_pool` (package dmsetup), keep thinpool.enabled = true, then `fireclaw provision --only thinpool`".to_string()
        }),
        required: false,
    }
}
