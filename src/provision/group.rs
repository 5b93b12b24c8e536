//! The `fireclaw` system group: its members (and root) may use the runtime's control socket.
//! Host-global like packages and units, so it is managed only when the root prefix is `/`.

use std::process::Command;

use anyhow::Context as _;

/// The group the runtime's socket belongs to (`runtime::SOCKET_GROUP` names the same).
pub const GROUP: &str = "fireclaw";

pub fn exists(name: &str) -> anyhow::Result<bool> {
    Ok(nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name}"))?
        .is_some())
}

/// `groupadd --system NAME`; a group that appeared meanwhile is fine.
pub fn create(name: &str) -> anyhow::Result<()> {
    if exists(name)? {
        return Ok(());
    }
    let out = Command::new("groupadd")
        .args(["--system", name])
        .output()
        .context("running groupadd (package passwd)")?;
    if !out.status.success() {
        anyhow::bail!(
            "groupadd --system {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `groupdel NAME`; a group already gone is fine (undo is idempotent).
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !exists(name)? {
        return Ok(());
    }
    let out = Command::new("groupdel")
        .arg(name)
        .output()
        .context("running groupdel (package passwd)")?;
    if !out.status.success() {
        anyhow::bail!(
            "groupdel {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::plan::{Action, Undo};
    use crate::root::RootPrefix;

    #[test]
    fn the_action_is_undone_by_deleting_that_group() {
        let a = Action::CreateGroup {
            name: "fireclaw".into(),
        };
        assert_eq!(a.describe(), "groupadd --system fireclaw");
        let (undo, backup) = a.prepare_undo(&RootPrefix::new("/nonexistent")).unwrap();
        assert!(backup.is_none());
        assert_eq!(
            undo,
            Undo::DeleteGroup {
                name: "fireclaw".into()
            }
        );
        assert_eq!(undo.describe(), "groupdel fireclaw");
        let json = serde_json::to_string(&undo).unwrap();
        assert_eq!(serde_json::from_str::<Undo>(&json).unwrap(), undo);
    }

    #[test]
    fn a_temporary_root_plans_no_group_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let config = crate::config::Config::default();
        let ctx = crate::plan::Ctx::new(&root, &config, None, false);
        let plan = crate::plan::Step::plan(&crate::provision::systemd::Unit, &ctx).unwrap();
        assert!(!plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateGroup { .. })));
        assert!(
            plan.notes.iter().any(|n| n.contains("group fireclaw")),
            "{:?}",
            plan.notes
        );
    }
}
