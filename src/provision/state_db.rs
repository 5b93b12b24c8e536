//! The state database comes first: every later change is journaled in it.

use std::path::Path;

use crate::plan::{Action, Ctx, Step, StepPlan};
use crate::state::db_path;

pub struct StateDb;

impl Step for StateDb {
    fn name(&self) -> &'static str {
        "state"
    }

    fn summary(&self) -> &'static str {
        "the state database that journals every change"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let path = db_path(&ctx.config.paths.state_dir);
        if ctx.host(&path).exists() {
            return Ok(StepPlan::default());
        }
        let mut dirs = Vec::new();
        let mut current = Path::new(&ctx.config.paths.state_dir);
        while current != Path::new("/") && !ctx.root.host(current).exists() {
            dirs.push(current.to_string_lossy().into_owned());
            current = current.parent().unwrap_or(Path::new("/"));
        }
        dirs.reverse();
        Ok(StepPlan::with_actions(vec![Action::CreateStateDb {
            path,
            dirs,
        }]))
    }
}
