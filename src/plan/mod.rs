//! The provisioning engine. A [`Step`] probes the host and returns a [`StepPlan`]: checks and typed
//! [`Action`]s. Dry-run renders the plan; apply executes exactly those actions, journaling each one
//! (with its [`Undo`]) before it runs. Both paths share every line of probing and planning code.

pub mod action;
pub mod apply;
pub mod files;
pub mod render;

use serde::Serialize;

use crate::config::Config;
use crate::root::RootPrefix;
use crate::state::Db;

pub use action::{Action, Undo};

/// Everything a step may look at while planning. Probing must not change the host.
pub struct Ctx<'a> {
    pub root: &'a RootPrefix,
    pub config: &'a Config,
    /// The journal, when the host was provisioned before (read-only during planning).
    pub db: Option<&'a Db>,
    /// Running with root privileges: some probes (nftables) need it; without it they say so.
    pub privileged: bool,
    /// Directories that earlier steps of this plan will create, so a later step neither plans them
    /// twice nor misses them when the earlier step is skipped.
    pub planned_dirs: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// Files that earlier steps of this plan will build (kernel, images), so a later step can
    /// plan work on them (importing an image into the thin pool) in the same run.
    pub planned_files: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        root: &'a RootPrefix,
        config: &'a Config,
        db: Option<&'a Db>,
        privileged: bool,
    ) -> Self {
        Ctx {
            root,
            config,
            db,
            privileged,
            planned_dirs: Default::default(),
            planned_files: Default::default(),
        }
    }

    pub fn host(&self, absolute: &str) -> std::path::PathBuf {
        self.root.host(absolute)
    }
}

/// One step of provisioning.
pub trait Step {
    /// Short, stable name used by `--only`/`--skip` and the journal.
    fn name(&self) -> &'static str;
    /// One line saying what the step is for.
    fn summary(&self) -> &'static str;
    /// Probes the host and plans the actions that bring it to the desired state. An empty plan means
    /// "already done".
    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan>;
}

/// A preflight check result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A failed required check blocks `provision` from applying anything.
    pub required: bool,
}

#[derive(Debug, Default)]
pub struct StepPlan {
    pub checks: Vec<Check>,
    /// Facts worth showing that are not actions ("packages are host-global; skipped under a root prefix").
    pub notes: Vec<String>,
    pub actions: Vec<Action>,
    /// The step does not apply to this host (no device-mapper for the thin pool, packages under a
    /// root prefix): nothing to do, and nothing was checked either.
    pub not_applicable: bool,
}

impl StepPlan {
    /// A plan for a step that does not apply here, with the reason as its note.
    pub fn not_applicable(reason: impl Into<String>) -> Self {
        StepPlan {
            notes: vec![reason.into()],
            not_applicable: true,
            ..Default::default()
        }
    }

    pub fn with_actions(actions: Vec<Action>) -> Self {
        StepPlan {
            actions,
            ..Default::default()
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn blocking_failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.required && !c.ok)
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Nothing to do.
    Done,
    /// Actions to apply.
    Pending,
    /// A required check failed; nothing will be applied.
    Blocked,
    /// Excluded by `--only`/`--skip`.
    Skipped,
    /// Does not apply to this host (see the step's note).
    NotApplicable,
}

pub struct PlannedStep {
    pub name: &'static str,
    pub summary: &'static str,
    pub status: StepStatus,
    pub plan: StepPlan,
}

/// The whole provisioning plan: data that can be printed, serialized, diffed and tested.
pub struct Plan {
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    pub fn action_count(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .map(|s| s.plan.actions.len())
            .sum()
    }

    pub fn is_blocked(&self) -> bool {
        self.steps.iter().any(|s| s.status == StepStatus::Blocked)
    }

    pub fn is_empty(&self) -> bool {
        self.action_count() == 0
    }

    /// Names of the steps `--only`/`--skip` left out.
    pub fn skipped(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Skipped)
            .map(|s| s.name)
            .collect()
    }
}

/// Which steps to run, from `--only` and `--skip`.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    pub only: Vec<String>,
    pub skip: Vec<String>,
}

impl Selection {
    /// Checks every named step exists, so a typo is an error rather than a silent no-op.
    pub fn validate(&self, known: &[&str]) -> anyhow::Result<()> {
        for name in self.only.iter().chain(&self.skip) {
            if !known.contains(&name.as_str()) {
                anyhow::bail!("unknown step {name:?}; the steps are: {}", known.join(", "));
            }
        }
        Ok(())
    }

    pub fn includes(&self, name: &str) -> bool {
        // Preflight keeps a broken host from being half-provisioned, and the state database is
        // where every change is journaled: neither can be left out.
        if name == "preflight" || name == "state" {
            return true;
        }
        (self.only.is_empty() || self.only.iter().any(|n| n == name))
            && !self.skip.iter().any(|n| n == name)
    }
}

/// Plans every step. The probes run even for skipped steps' neighbours only; skipped steps are not
/// probed at all.
pub fn make_plan(
    steps: &[Box<dyn Step>],
    ctx: &Ctx,
    selection: &Selection,
) -> anyhow::Result<Plan> {
    let mut planned = Vec::with_capacity(steps.len());
    for step in steps {
        if !selection.includes(step.name()) {
            planned.push(PlannedStep {
                name: step.name(),
                summary: step.summary(),
                status: StepStatus::Skipped,
                plan: StepPlan::default(),
            });
            continue;
        }
        let plan = step
            .plan(ctx)
            .map_err(|e| e.context(format!("planning step {}", step.name())))?;
        let status = if plan.blocking_failures().next().is_some() {
            StepStatus::Blocked
        } else if plan.actions.is_empty() && plan.not_applicable {
            StepStatus::NotApplicable
        } else if plan.actions.is_empty() {
            StepStatus::Done
        } else {
            StepStatus::Pending
        };
        planned.push(PlannedStep {
            name: step.name(),
            summary: step.summary(),
            status,
            plan,
        });
    }
    Ok(Plan { steps: planned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_rejects_unknown_steps() {
        let sel = Selection {
            only: vec!["netwrok".into()],
            skip: vec![],
        };
        let err = sel
            .validate(&["preflight", "network"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("netwrok") && err.contains("network"), "{err}");
    }

    #[test]
    fn selection_only_and_skip() {
        let sel = Selection {
            only: vec!["network".into(), "ngircd".into()],
            skip: vec!["ngircd".into()],
        };
        assert!(sel.includes("preflight"));
        assert!(sel.includes("network"));
        assert!(!sel.includes("ngircd"));
        assert!(!sel.includes("packages"));
    }
}
