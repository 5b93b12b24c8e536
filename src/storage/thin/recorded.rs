//! What the state database records about the pool, read back: the pool's spec as created, and the
//! identity an image was imported under. Used by provision, `run`, `gc` and `status` alike.

use std::path::Path;

use super::{store, PoolGeometry, PoolSpec, DEFAULT_POOL_NAME};
use crate::config::ThinPool;
use crate::root::RootPrefix;
use crate::state::Db;

/// Identifies an image file's content cheaply (size and modification time): a rebuilt image gets
/// a new identity and so a new thin volume, without hashing gigabytes while planning.
pub fn image_identity(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "size {} mtime {}.{:09}",
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// The pool's spec from its database row (geometry as created, whatever the config says now);
/// the refusal threshold is policy, so it comes from the config in effect.
pub fn recorded_spec(
    db: &Db,
    root: &RootPrefix,
    state_dir: &str,
    max_used_percent: u8,
) -> anyhow::Result<PoolSpec> {
    let defaults = ThinPool {
        max_used_percent,
        ..ThinPool::default()
    };
    let mut spec = PoolSpec::new(root, state_dir, &defaults)?;
    if let Some(row) = store::pool(db, DEFAULT_POOL_NAME)? {
        spec.geometry = PoolGeometry {
            data_sectors: row.data_sectors,
            metadata_sectors: row.metadata_sectors,
            block_sectors: row.block_sectors,
            low_water_blocks: row.low_water_blocks,
        };
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_identity_changes_when_the_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.ext4");
        std::fs::write(&f, b"one").unwrap();
        let a = image_identity(&f).unwrap();
        std::fs::write(&f, b"second build").unwrap();
        assert_ne!(a, image_identity(&f).unwrap());
    }
}
