//! `fireclaw doctor`: preflight alone, each check with its fix.

use crate::cli::JsonFlag;
use crate::commands::Env;
use crate::plan::Ctx;
use crate::provision::preflight;

pub fn run(env: &Env, args: &JsonFlag) -> anyhow::Result<i32> {
    let db = env.open_db_read_only().ok().flatten();
    let ctx = Ctx::new(&env.root, &env.config, db.as_ref(), env.privileged);
    let checks = preflight::checks(&ctx);
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
