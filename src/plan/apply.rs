//! Applying a plan and reversing it. Each action is journaled as `pending` (with its undo record and
//! backup) before it runs and marked `done` after, so an interruption at any point leaves a journal
//! that a re-run completes and uninstall can reverse.

use std::path::Path;

use anyhow::Context as _;

use super::{Action, Plan, StepStatus, Undo};
use crate::fsops;
use crate::report::Reporter;
use crate::root::RootPrefix;
use crate::state::{Db, JournalStatus};

/// Meta key listing the directories created together with the database, removed after it.
const META_CREATED_DIRS: &str = "created_dirs";

/// Executes every pending step's actions in order and returns the open database. Stops at the first
/// failure: what ran is journaled, and the error says which action failed.
pub fn apply(
    plan: &Plan,
    root: &RootPrefix,
    config: &crate::config::Config,
    db_path: &Path,
    reporter: &dyn Reporter,
) -> anyhow::Result<(Option<Db>, usize)> {
    if plan.is_blocked() {
        anyhow::bail!(
            "the plan is blocked; nothing was changed (the FAIL lines say how to fix it)"
        );
    }
    let mut db = if db_path.exists() {
        Some(Db::open(db_path)?)
    } else {
        None
    };
    let mut applied = 0;
    let total = plan.steps.len();
    // Steps found done before the database exists (preflight, on a fresh host) are recorded as
    // soon as it does, so `status` does not call them "not run".
    let mut unrecorded = Vec::new();
    for (index, step) in plan.steps.iter().enumerate() {
        if step.status != StepStatus::Pending {
            if step.status == StepStatus::Done {
                match &db {
                    Some(db) => db.mark_step_complete(step.name)?,
                    None => unrecorded.push(step.name),
                }
            }
            continue;
        }
        let bar = reporter.progress(
            &format!("[{}/{}] {}", index + 1, total, step.name),
            Some(step.plan.actions.len() as u64),
        );
        for action in &step.plan.actions {
            let line = action.describe();
            bar.set_message(&line);
            if let Action::CreateStateDb { dirs, .. } = action {
                let opened = Db::open(db_path)?;
                opened.set_meta(META_CREATED_DIRS, &serde_json::to_string(dirs)?)?;
                let id = opened.journal_begin(
                    step.name,
                    &line,
                    &serde_json::to_string(&Undo::Nothing)?,
                    None,
                )?;
                opened.journal_set_status(id, JournalStatus::Done)?;
                for name in unrecorded.drain(..) {
                    opened.mark_step_complete(name)?;
                }
                db = Some(opened);
                applied += 1;
                bar.inc(1);
                continue;
            }
            let journal = db
                .as_ref()
                .context("internal error: a change was planned before the state database exists")?;
            let (undo, backup) = action
                .prepare_undo(root)
                .with_context(|| format!("step {}: preparing to {line}", step.name))?;
            let id = journal.journal_begin(
                step.name,
                &line,
                &serde_json::to_string(&undo)?,
                backup.as_deref(),
            )?;
            action
                .execute(root, config, reporter)
                .with_context(|| format!("step {}", step.name))?;
            journal.journal_set_status(id, JournalStatus::Done)?;
            applied += 1;
            bar.inc(1);
        }
        drop(bar);
        if let Some(db) = &db {
            db.mark_step_complete(step.name)?;
        }
        reporter.status(&format!(
            "[{}/{}] {}: {} change(s) applied",
            index + 1,
            total,
            step.name,
            step.plan.actions.len()
        ));
    }
    Ok((db, applied))
}

/// One journaled change as uninstall will reverse it.
pub struct Reversal {
    pub id: i64,
    pub step: String,
    pub action: String,
    pub undo: Undo,
    pub backup: Option<Vec<u8>>,
}

/// The journal's active entries, newest first, parsed. A corrupt undo record is an error naming the
/// entry: guessing how to undo it could delete something that is not ours.
pub fn reversals(db: &Db) -> anyhow::Result<Vec<Reversal>> {
    db.journal_active_newest_first()?
        .into_iter()
        .map(|e| {
            let undo: Undo = serde_json::from_str(&e.undo).with_context(|| {
                format!(
                    "journal entry {} ({}) has an unreadable undo record; repair {} by hand",
                    e.id,
                    e.action,
                    db.path().display()
                )
            })?;
            Ok(Reversal {
                id: e.id,
                step: e.step,
                action: e.action,
                undo,
                backup: e.backup,
            })
        })
        .collect()
}

/// Reverses every journaled change, newest first, then deletes the database and the directories
/// created with it. Keeps going past failures (reporting each) so one stuck item does not strand the
/// rest; if anything failed the database stays, so a re-run can finish the job.
pub fn uninstall(
    db: Db,
    root: &RootPrefix,
    reporter: &dyn Reporter,
) -> anyhow::Result<Vec<String>> {
    let items = reversals(&db)?;
    let bar = reporter.progress("uninstall", Some(items.len() as u64));
    let mut failures = Vec::new();
    for item in &items {
        bar.set_message(&item.undo.describe());
        match item.undo.revert(root, item.backup.as_deref()) {
            Ok(()) => db.journal_set_status(item.id, JournalStatus::Reverted)?,
            Err(e) => failures.push(format!("{}: {e:#}", item.step)),
        }
        bar.inc(1);
    }
    drop(bar);
    if !failures.is_empty() {
        return Ok(failures);
    }
    let dirs: Vec<String> = match db.meta(META_CREATED_DIRS)? {
        Some(json) => {
            serde_json::from_str(&json).context("reading the list of created directories")?
        }
        None => Vec::new(),
    };
    db.destroy().context("deleting the state database")?;
    // Deepest first: the list is outermost first, as the plan created them.
    for dir in dirs.iter().rev() {
        if let Err(e) = fsops::remove_dir_if_empty(&root.host(dir)) {
            failures.push(format!("state: {e:#}"));
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlannedStep, StepPlan};

    /// Preflight is done before the database exists; it must still be recorded as done.
    #[test]
    fn steps_done_before_the_database_exists_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let db_path = dir.path().join("var/lib/fireclaw/state.db");
        let plan = Plan {
            steps: vec![
                PlannedStep {
                    name: "preflight",
                    summary: "",
                    status: StepStatus::Done,
                    plan: StepPlan::default(),
                },
                PlannedStep {
                    name: "state",
                    summary: "",
                    status: StepStatus::Pending,
                    plan: StepPlan::with_actions(vec![Action::CreateStateDb {
                        path: "/var/lib/fireclaw/state.db".into(),
                        dirs: vec![],
                    }]),
                },
            ],
        };
        let collect = crate::report::Collect::default();
        let (db, applied) = apply(
            &plan,
            &root,
            &crate::config::Config::default(),
            &db_path,
            &collect,
        )
        .unwrap();
        assert_eq!(applied, 1);
        let db = db.unwrap();
        assert!(db.step_completed_at("preflight").unwrap().is_some());
        assert!(db.step_completed_at("state").unwrap().is_some());
        assert!(collect
            .lines()
            .iter()
            .any(|l| l.contains("state: 1 change(s) applied")));
    }
}
