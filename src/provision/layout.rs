//! The directories fireclaw owns and the guest SSH key pair.

use std::path::Path;

use crate::plan::{files, Action, Ctx, Step, StepPlan};

pub struct Layout;

/// File name of the guest key pair inside `paths.config_dir`.
pub const SSH_KEY_FILE: &str = "id_ed25519";

/// Plans `path` and every missing ancestor, outermost first, so each directory fireclaw creates is
/// journaled and uninstall removes exactly those.
pub fn plan_dir_tree(
    ctx: &Ctx,
    path: &str,
    mode: u32,
    out: &mut Vec<Action>,
) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(Path::new(path));
    while let Some(p) = current {
        // The state step creates the state directory and its ancestors along with the database.
        if p == Path::new("/") || Path::new(&ctx.config.paths.state_dir).starts_with(p) {
            break;
        }
        let p_str = p.to_string_lossy().into_owned();
        if ctx.planned_dirs.borrow().contains(&p_str) {
            break;
        }
        match files::plan_dir(ctx, &p_str, if p_str == path { mode } else { 0o755 })? {
            Some(action) => missing.push(action),
            None => break,
        }
        current = p.parent();
    }
    let mut planned = ctx.planned_dirs.borrow_mut();
    for action in missing.into_iter().rev() {
        if let Action::CreateDir { path, .. } = &action {
            planned.insert(path.clone());
        }
        out.push(action);
    }
    Ok(())
}

impl Step for Layout {
    fn name(&self) -> &'static str {
        "layout"
    }

    fn summary(&self) -> &'static str {
        "state, cache, image and config directories; guest SSH key pair"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let p = &ctx.config.paths;
        let mut actions = Vec::new();
        plan_dir_tree(ctx, &p.config_dir, 0o755, &mut actions)?;
        plan_dir_tree(ctx, &p.image_dir, 0o750, &mut actions)?;
        plan_dir_tree(ctx, &p.cache_dir, 0o755, &mut actions)?;
        let downloads = format!(
            "{}/{}",
            p.cache_dir.trim_end_matches('/'),
            crate::fetch::DOWNLOADS_DIR
        );
        plan_dir_tree(ctx, &downloads, 0o755, &mut actions)?;
        let key = format!("{}/{SSH_KEY_FILE}", p.config_dir);
        let have_private = ctx.host(&key).exists();
        let have_public = ctx.host(&format!("{key}.pub")).exists();
        if !(have_private && have_public) {
            actions.push(Action::GenerateSshKey {
                path: key,
                comment: "fireclaw".into(),
            });
        }
        Ok(StepPlan::with_actions(actions))
    }
}
