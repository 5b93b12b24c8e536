//! The `thinpool` step: plan and apply the dm thin pool and the import of each built image.
//! The engine itself lives in `storage::thin`; this is the glue to the plan and the journal.

use anyhow::Context as _;

use crate::config::ThinPool;
use crate::plan::{Action, Ctx, StepPlan};
use crate::root::RootPrefix;
use crate::state::db_path;
use crate::state::Db;
use crate::storage::thin::recorded::{image_identity, recorded_spec};
use crate::storage::thin::{
    self, store, EngineChoice, PoolGeometry, PoolSpec, ThinEngine, ThinError,
};

pub fn plan(ctx: &Ctx) -> anyhow::Result<StepPlan> {
    let t = &ctx.config.thinpool;
    if !t.enabled {
        return Ok(StepPlan::not_applicable(
            "thinpool.enabled = false: VM disks are reflink/sparse copies",
        ));
    }
    if let EngineChoice::ReflinkCopy { reason } = thin::choose_engine(ctx.config) {
        return Ok(StepPlan::not_applicable(format!(
            "no thin pool on this host ({reason}); VM disks are reflink/sparse copies"
        )));
    }
    // Validates the geometry now, so a bad config fails the plan rather than the apply.
    PoolGeometry::new(
        t.data_mib,
        t.metadata_mib,
        t.block_sectors,
        t.max_used_percent,
    )?;
    let state_dir = ctx.config.paths.state_dir.clone();
    let recorded = ctx.db.filter(|db| store::has_tables(db).unwrap_or(false));
    let pool_exists = match recorded {
        Some(db) => store::pool(db, thin::DEFAULT_POOL_NAME)?.is_some(),
        None => false,
    };
    let mut actions = Vec::new();
    if !pool_exists {
        actions.push(Action::CreateThinPool {
            state_dir: state_dir.clone(),
            data_mib: t.data_mib,
            metadata_mib: t.metadata_mib,
            block_sectors: t.block_sectors,
            max_used_percent: t.max_used_percent,
        });
    }
    let volumes = match (recorded, pool_exists) {
        (Some(db), true) => store::volumes(db, thin::DEFAULT_POOL_NAME)?,
        _ => Vec::new(),
    };
    for recipe in &ctx.config.images.recipes {
        let path = format!("{}/{recipe}.ext4", ctx.config.paths.image_dir);
        // An image the images step (re)builds in this run is imported after it, as built.
        let being_built = ctx.planned_files.borrow().contains(&path);
        let digest = match image_identity(&ctx.host(&path)) {
            _ if being_built => "as built by this run".to_string(),
            Ok(digest) => digest,
            // Not there and not being built (the images step is skipped): nothing to import.
            Err(_) => continue,
        };
        let imported = volumes.iter().any(|v| {
            v.image == *recipe && v.digest == digest && v.state == store::VolumeState::Ready
        });
        if !imported {
            actions.push(Action::ImportThinImage {
                state_dir: state_dir.clone(),
                image: recipe.clone(),
                path,
                digest,
            });
        }
    }
    Ok(StepPlan::with_actions(actions))
}

fn open_db(root: &RootPrefix, state_dir: &str) -> anyhow::Result<Db> {
    let path = root.host(db_path(state_dir));
    Db::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn spec(root: &RootPrefix, state_dir: &str, t: &ThinPool) -> Result<PoolSpec, ThinError> {
    PoolSpec::new(root, state_dir, t)
}

pub fn create(root: &RootPrefix, state_dir: &str, t: ThinPool) -> anyhow::Result<()> {
    let db = open_db(root, state_dir)?;
    ThinEngine::new(&db, spec(root, state_dir, &t)?)?.create_pool()?;
    Ok(())
}

pub fn import(
    root: &RootPrefix,
    state_dir: &str,
    image: &str,
    path: &str,
    planned_digest: &str,
) -> anyhow::Result<()> {
    // The identity of the file as it is now, after any rebuild earlier in this run: recording the
    // plan-time one for new content would make `run` refuse the volume as stale.
    let digest = image_identity(&root.host(path)).with_context(|| {
        format!("image {image} ({path}) is missing; planned as {planned_digest}")
    })?;
    let digest = digest.as_str();
    let db = open_db(root, state_dir)?;
    let engine = ThinEngine::new(
        &db,
        recorded_spec(&db, root, state_dir, ThinPool::default().max_used_percent)?,
    )?;
    engine.import_image(image, digest, &root.host(path))?;
    Ok(())
}

/// The undo of [`create`]: idempotent, and works on a host that has lost device-mapper (then
/// nothing of the pool can be active, so only rows and files are left to remove).
pub fn destroy(root: &RootPrefix, state_dir: &str) -> anyhow::Result<()> {
    let db_file = root.host(db_path(state_dir));
    let dir = root.host(thin::pool_dir(state_dir));
    if db_file.exists() {
        let db = open_db(root, state_dir)?;
        let spec = recorded_spec(&db, root, state_dir, ThinPool::default().max_used_percent)?;
        match ThinEngine::new(&db, spec) {
            Ok(engine) => return Ok(engine.destroy_pool()?),
            Err(ThinError::NoDeviceMapper { .. }) => {
                store::delete_pool(&db, thin::DEFAULT_POOL_NAME)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for f in ["data.img", "metadata.img", "pool.lock"] {
        crate::fsops::remove_file_if_exists(&dir.join(f))?;
    }
    crate::fsops::remove_dir_if_empty(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::Undo;

    #[test]
    fn disabled_pool_plans_nothing_and_is_not_applicable() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let mut config = Config::default();
        config.thinpool.enabled = false;
        let ctx = Ctx::new(&root, &config, None, false);
        let p = plan(&ctx).unwrap();
        assert!(p.actions.is_empty());
        assert!(p.notes[0].contains("reflink"));
        // Not "already done": there is no pool and there will be none.
        assert!(p.not_applicable);
    }

    #[test]
    fn create_action_describes_and_undoes_the_pool() {
        let a = Action::CreateThinPool {
            state_dir: "/var/lib/fireclaw".into(),
            data_mib: 1024,
            metadata_mib: 64,
            block_sectors: 128,
            max_used_percent: 90,
        };
        let text = a.describe();
        assert!(
            text.contains("/var/lib/fireclaw/pool/data.img (1024 MiB)")
                && text.contains("fireclaw-pool"),
            "{text}"
        );
        let root = RootPrefix::new("/nonexistent");
        let (undo, backup) = a.prepare_undo(&root).unwrap();
        assert!(backup.is_none());
        assert_eq!(
            undo,
            Undo::DestroyThinPool {
                state_dir: "/var/lib/fireclaw".into()
            }
        );
        let json = serde_json::to_string(&undo).unwrap();
        assert_eq!(serde_json::from_str::<Undo>(&json).unwrap(), undo);
    }

    #[test]
    fn destroy_without_a_pool_is_a_no_op_and_removes_stray_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        destroy(&root, "/var/lib/fireclaw").unwrap();
        let pool = dir.path().join("var/lib/fireclaw/pool");
        std::fs::create_dir_all(&pool).unwrap();
        std::fs::write(pool.join("data.img"), b"").unwrap();
        // No state database: nothing is recorded, so only the files go.
        destroy(&root, "/var/lib/fireclaw").unwrap();
        assert!(!pool.exists());
    }
}
