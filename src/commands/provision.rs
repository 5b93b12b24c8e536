//! `fireclaw provision`.

use crate::cli::ProvisionArgs;
use crate::commands::exit::{BLOCKED as EXIT_BLOCKED, CHANGES as EXIT_CHANGES};
use crate::commands::Env;
use crate::plan::{self, render, Ctx, Selection};
use crate::provision;

pub fn run(env: &Env, args: &ProvisionArgs) -> anyhow::Result<i32> {
    let selection = Selection {
        only: args.only.clone(),
        skip: args.skip.clone(),
    };
    selection.validate(&provision::step_names())?;
    let dry_run = args.dry_run;
    if !dry_run {
        env.require_root("provision")?;
    }
    // Without the root directory there is nothing to lock (and nothing to change: the plan says so).
    let _lock = if dry_run || !env.root.dir().is_dir() {
        None
    } else {
        Some(env.lock()?)
    };
    let db = env.open_db_read_only()?;
    let ctx = Ctx::new(&env.root, &env.config, db.as_ref(), env.privileged);
    let steps = provision::steps();
    let mut the_plan = plan::make_plan(&steps, &ctx, &selection)?;
    render::attach_diffs(&mut the_plan);
    let root = env.root.dir().display().to_string();
    let changes = |n: usize| {
        if args.detailed_exitcode && n > 0 {
            EXIT_CHANGES
        } else {
            0
        }
    };
    let print = |plan: &plan::Plan| {
        if args.json {
            println!("{}", render::to_json(plan, &root, dry_run));
        } else {
            if dry_run {
                println!("fireclaw provision --dry-run (root {root}): nothing will be changed");
            }
            print!("{}", render::to_text(plan));
        }
    };
    if the_plan.is_blocked() {
        print(&the_plan);
        if !dry_run {
            eprintln!("error: the plan is blocked; nothing was changed (the FAIL lines say how to fix it)");
        }
        return Ok(EXIT_BLOCKED);
    }
    if dry_run || the_plan.is_empty() {
        if !dry_run && !args.json {
            let skipped = the_plan.skipped();
            if skipped.is_empty() {
                println!("Nothing to do; the host is provisioned.");
            } else {
                println!(
                    "Nothing to do in the selected steps ({} skipped: {}).",
                    skipped.len(),
                    skipped.join(", ")
                );
            }
        } else {
            print(&the_plan);
        }
        return Ok(changes(the_plan.action_count()));
    }
    drop(db);
    let (_, applied) = plan::apply::apply(
        &the_plan,
        &env.root,
        &env.config,
        &env.db_path(),
        &crate::commands::shell::Shell::new(),
    )?;
    if args.json {
        print(&the_plan);
    } else {
        println!("Provisioned: {applied} change(s) applied and journaled. `fireclaw status` shows the result.");
    }
    Ok(changes(applied))
}
