//! The pool as provision recorded it, for whoever must act on it later (gc, status, the runtime's
//! re-activation after a reboot): geometry from the pool's row, the refusal threshold from the
//! configuration in effect.

use crate::config::ThinPool;
use crate::root::RootPrefix;
use crate::state::Db;

use super::{store, PoolGeometry, PoolSpec, ThinError, DEFAULT_POOL_NAME};

/// The pool's spec from its database row (geometry as created, whatever the config says now).
pub fn recorded_spec(
    db: &Db,
    root: &RootPrefix,
    state_dir: &str,
    max_used_percent: u8,
) -> Result<PoolSpec, ThinError> {
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
