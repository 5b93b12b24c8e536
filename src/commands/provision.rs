//! `fireclaw provision`.

use crate::cli::ProvisionArgs;
use crate::commands::Env;
use crate::plan::{self, render, Ctx, Selection};
use crate::provision;

pub fn run(env: &Env, args: &ProvisionArgs) -> anyhow::Result<i32> {
    let selection = Selection {
        only: args.only.clone(),
        skip: args.skip.clone(),
    };
    selection.validate(&provision::step_names())?;
    let dry_run = args.dry_run || args.json;
    if !dry_run {
        env.require_root("provision")?;
    }
    let _lock = if dry_run { None } else { Some(env.lock()?) };
    let db = env.open_db_read_only()?;
    let ctx = Ctx::new(&env.root, &env.config, db.as_ref(), env.privileged);
    let steps = provision::steps();
    let mut the_plan = plan::make_plan(&steps, &ctx, &selection)?;
    render::attach_diffs(&mut the_plan);
    if args.json {
        println!(
            "{}",
            render::to_json(&the_plan, &env.root.dir().display().to_string(), dry_run)
        );
        return Ok(if the_plan.is_blocked() { 2 } else { 0 });
    }
    if dry_run {
        println!(
            "fireclaw provision --dry-run (root {}): nothing will be changed",
            env.root.dir().display()
        );
        print!("{}", render::to_text(&the_plan));
        return Ok(if the_plan.is_blocked() { 2 } else { 0 });
    }
    if the_plan.is_blocked() {
        print!("{}", render::to_text(&the_plan));
        anyhow::bail!("preflight failed; nothing was changed");
    }
    if the_plan.is_empty() {
        println!("Nothing to do; the host is provisioned.");
        return Ok(0);
    }
    drop(db);
    let (_, applied) = plan::apply::apply(
        &the_plan,
        &env.root,
        &env.config,
        &env.db_path(),
        &crate::commands::shell::Shell::new(),
    )?;
    println!("Provisioned: {applied} change(s) applied and journaled. `fireclaw status` shows the result.");
    Ok(0)
}
