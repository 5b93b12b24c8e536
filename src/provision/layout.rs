//! The directories fireclaw owns and the guest SSH key pair.

use std::path::Path;

use crate::plan::{files, Action, Check, Ctx, Step, StepPlan};

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

/// The guest key pair. A key the operator put there is never replaced: a private key without its
/// `.pub` gets its public half derived from it; a `.pub` alone blocks (generating a pair would
/// overwrite it, and fireclaw cannot know which private key it belongs to).
fn plan_key_pair(ctx: &Ctx, key: &str, plan: &mut StepPlan) {
    let public = format!("{key}.pub");
    match (ctx.host(key).exists(), ctx.host(&public).exists()) {
        (true, true) => {}
        (false, false) => plan.actions.push(Action::GenerateSshKey {
            path: key.to_string(),
            comment: "fireclaw".into(),
        }),
        (true, false) => match crate::provision::keys::public_half(&ctx.host(key)) {
            Ok(_) => plan.actions.push(Action::DerivePublicKey {
                path: key.to_string(),
            }),
            Err(_) if !ctx.privileged => {
                plan.notes.push(format!(
                    "{key} is not readable without root; its public half is derived from it as root"
                ));
                plan.actions.push(Action::DerivePublicKey {
                    path: key.to_string(),
                });
            }
            Err(e) => plan.checks.push(Check {
                name: "guest SSH key".into(),
                ok: false,
                detail: format!("{e:#}"),
                fix: Some(format!(
                    "replace {key} with an unencrypted OpenSSH ed25519 private key, or move it and {public} aside to have fireclaw generate a pair"
                )),
                required: true,
            }),
        },
        (false, true) => plan.checks.push(Check {
            name: "guest SSH key".into(),
            ok: false,
            detail: format!("{public} exists without its private key {key}"),
            fix: Some(format!(
                "put the private key back at {key}, or move {public} aside to have fireclaw generate a pair"
            )),
            required: true,
        }),
    }
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
        let mut plan = StepPlan::with_actions(actions);
        plan_key_pair(ctx, &format!("{}/{SSH_KEY_FILE}", p.config_dir), &mut plan);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::root::RootPrefix;

    /// The operator's private key without its `.pub`: provision derives the public half, and
    /// undoing that leaves the private key exactly as it was.
    #[test]
    fn an_existing_private_key_is_kept_and_only_its_public_half_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let config = Config::default();
        let key = format!("{}/{SSH_KEY_FILE}", config.paths.config_dir);
        let host_key = root.host(&key);
        std::fs::create_dir_all(host_key.parent().unwrap()).unwrap();
        crate::provision::keys::generate_ed25519(&host_key, "operator").unwrap();
        std::fs::remove_file(root.host(format!("{key}.pub"))).unwrap();
        let private = std::fs::read(&host_key).unwrap();

        let ctx = crate::plan::Ctx::new(&root, &config, None, true);
        let plan = Layout.plan(&ctx).unwrap();
        let key_actions: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::GenerateSshKey { .. } | Action::DerivePublicKey { .. }
                )
            })
            .collect();
        assert!(
            matches!(key_actions[..], [Action::DerivePublicKey { .. }]),
            "{key_actions:?}"
        );
        let (undo, backup) = key_actions[0].prepare_undo(&root).unwrap();
        key_actions[0]
            .execute(&root, &config, &crate::report::Silent)
            .unwrap();
        assert_eq!(std::fs::read(&host_key).unwrap(), private);
        let public = std::fs::read_to_string(root.host(format!("{key}.pub"))).unwrap();
        assert!(public.starts_with("ssh-ed25519 ") && public.contains("operator"));
        undo.revert(&root, backup.as_deref()).unwrap();
        assert_eq!(
            std::fs::read(&host_key).unwrap(),
            private,
            "undo touched the private key"
        );
        assert!(!root.host(format!("{key}.pub")).exists());
    }

    #[test]
    fn a_public_key_alone_blocks_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let config = Config::default();
        let public = root.host(format!("{}/{SSH_KEY_FILE}.pub", config.paths.config_dir));
        std::fs::create_dir_all(public.parent().unwrap()).unwrap();
        std::fs::write(&public, "ssh-ed25519 AAAA operator\n").unwrap();
        let ctx = crate::plan::Ctx::new(&root, &config, None, true);
        let plan = Layout.plan(&ctx).unwrap();
        let failed: Vec<&Check> = plan.blocking_failures().collect();
        assert_eq!(failed.len(), 1, "{:?}", plan.checks);
        assert!(failed[0]
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("aside"));
        assert!(!plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::GenerateSshKey { .. })));
    }

    /// Generating the pair journals a backup of whatever is at both paths, so even a pair planned
    /// against files that appeared since comes back exactly.
    #[test]
    fn generating_a_pair_over_files_that_appeared_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        std::fs::create_dir_all(dir.path().join("k")).unwrap();
        std::fs::write(dir.path().join("k/id"), b"mine").unwrap();
        let a = Action::GenerateSshKey {
            path: "/k/id".into(),
            comment: "fireclaw".into(),
        };
        let (undo, backup) = a.prepare_undo(&root).unwrap();
        a.execute(&root, &Config::default(), &crate::report::Silent)
            .unwrap();
        undo.revert(&root, backup.as_deref()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("k/id")).unwrap(), b"mine");
        assert!(!dir.path().join("k/id.pub").exists());
    }
}
