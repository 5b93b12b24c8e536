//! The pool's rows in the state database (migration 3): what re-activation, `gc` and uninstall
//! rebuild the kernel's view from.

use rusqlite::{params, OptionalExtension, Row};

use crate::state::{now_unix, sqlite, Db, StateError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub data_file: String,
    pub metadata_file: String,
    pub data_sectors: u64,
    pub metadata_sectors: u64,
    pub block_sectors: u64,
    pub low_water_blocks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Ready,
    /// Replaced by a newer import of the same image; deleted once no snapshot uses it.
    Retired,
}

impl VolumeState {
    fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Ready => "ready",
            VolumeState::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "ready" => VolumeState::Ready,
            "retired" => VolumeState::Retired,
            _ => VolumeState::Creating,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub dev_id: u64,
    pub image: String,
    pub digest: String,
    pub size_sectors: u64,
    pub state: VolumeState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub dev_id: u64,
    pub origin: u64,
    pub vm_id: String,
    pub owner_pid: u32,
    pub size_sectors: u64,
    /// False while `creating`: the kernel device may or may not exist.
    pub active: bool,
}

fn err(db: &Db) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |e| sqlite(db.path(), e)
}

fn volume(r: &Row) -> rusqlite::Result<VolumeRow> {
    Ok(VolumeRow {
        dev_id: r.get::<_, i64>(0)? as u64,
        image: r.get(1)?,
        digest: r.get(2)?,
        size_sectors: r.get::<_, i64>(3)? as u64,
        state: VolumeState::parse(&r.get::<_, String>(4)?),
    })
}

fn snapshot(r: &Row) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        dev_id: r.get::<_, i64>(0)? as u64,
        origin: r.get::<_, i64>(1)? as u64,
        vm_id: r.get(2)?,
        owner_pid: r.get::<_, i64>(3)? as u32,
        size_sectors: r.get::<_, i64>(4)? as u64,
        active: r.get::<_, String>(5)? == "active",
    })
}

/// False on a database older than migration 3 opened read-only (dry-run, status): then no pool
/// was ever recorded in it.
pub fn has_tables(db: &Db) -> Result<bool, StateError> {
    db.conn()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'thin_pools'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(err(db))
}

pub fn pool(db: &Db, name: &str) -> Result<Option<PoolRow>, StateError> {
    db.conn()
        .query_row(
            "SELECT name, data_file, metadata_file, data_sectors, metadata_sectors, block_sectors,
                    low_water_blocks FROM thin_pools WHERE name = ?1",
            [name],
            |r| {
                Ok(PoolRow {
                    name: r.get(0)?,
                    data_file: r.get(1)?,
                    metadata_file: r.get(2)?,
                    data_sectors: r.get::<_, i64>(3)? as u64,
                    metadata_sectors: r.get::<_, i64>(4)? as u64,
                    block_sectors: r.get::<_, i64>(5)? as u64,
                    low_water_blocks: r.get::<_, i64>(6)? as u64,
                })
            },
        )
        .optional()
        .map_err(err(db))
}

pub fn insert_pool(db: &Db, p: &PoolRow) -> Result<(), StateError> {
    db.conn()
        .execute(
            "INSERT INTO thin_pools (name, data_file, metadata_file, data_sectors, metadata_sectors,
                block_sectors, low_water_blocks, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                p.name,
                p.data_file,
                p.metadata_file,
                p.data_sectors as i64,
                p.metadata_sectors as i64,
                p.block_sectors as i64,
                p.low_water_blocks as i64,
                now_unix()
            ],
        )
        .map(drop)
        .map_err(err(db))
}

/// Forgets the pool and everything in it: the last act of uninstall.
pub fn delete_pool(db: &Db, name: &str) -> Result<(), StateError> {
    db.conn()
        .execute_batch("BEGIN")
        .and_then(|()| {
            for table in ["thin_snapshots", "thin_volumes"] {
                db.conn()
                    .execute(&format!("DELETE FROM {table} WHERE pool = ?1"), [name])?;
            }
            db.conn()
                .execute("DELETE FROM thin_pools WHERE name = ?1", [name])?;
            db.conn().execute_batch("COMMIT")
        })
        .map_err(|e| {
            let _ = db.conn().execute_batch("ROLLBACK");
            sqlite(db.path(), e)
        })
}

pub fn used_ids(db: &Db, pool: &str) -> Result<Vec<u64>, StateError> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT dev_id FROM thin_volumes WHERE pool = ?1
             UNION SELECT dev_id FROM thin_snapshots WHERE pool = ?1",
        )
        .map_err(err(db))?;
    let rows = stmt
        .query_map([pool], |r| r.get::<_, i64>(0))
        .map_err(err(db))?;
    rows.map(|r| r.map(|v| v as u64))
        .collect::<Result<_, _>>()
        .map_err(err(db))
}

pub fn volumes(db: &Db, pool: &str) -> Result<Vec<VolumeRow>, StateError> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT dev_id, image, digest, size_sectors, state FROM thin_volumes
             WHERE pool = ?1 ORDER BY dev_id",
        )
        .map_err(err(db))?;
    let rows = stmt.query_map([pool], volume).map_err(err(db))?;
    rows.collect::<Result<_, _>>().map_err(err(db))
}

pub fn insert_volume(db: &Db, pool: &str, v: &VolumeRow) -> Result<(), StateError> {
    db.conn()
        .execute(
            "INSERT INTO thin_volumes (pool, dev_id, image, digest, size_sectors, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                pool,
                v.dev_id as i64,
                v.image,
                v.digest,
                v.size_sectors as i64,
                v.state.as_str(),
                now_unix()
            ],
        )
        .map(drop)
        .map_err(err(db))
}

pub fn set_volume_state(
    db: &Db,
    pool: &str,
    dev_id: u64,
    state: VolumeState,
) -> Result<(), StateError> {
    db.conn()
        .execute(
            "UPDATE thin_volumes SET state = ?1 WHERE pool = ?2 AND dev_id = ?3",
            params![state.as_str(), pool, dev_id as i64],
        )
        .map(drop)
        .map_err(err(db))
}

pub fn delete_volume(db: &Db, pool: &str, dev_id: u64) -> Result<(), StateError> {
    db.conn()
        .execute(
            "DELETE FROM thin_volumes WHERE pool = ?1 AND dev_id = ?2",
            params![pool, dev_id as i64],
        )
        .map(drop)
        .map_err(err(db))
}

pub fn snapshots(db: &Db, pool: &str) -> Result<Vec<SnapshotRow>, StateError> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT dev_id, origin, vm_id, owner_pid, size_sectors, state FROM thin_snapshots
             WHERE pool = ?1 ORDER BY dev_id",
        )
        .map_err(err(db))?;
    let rows = stmt.query_map([pool], snapshot).map_err(err(db))?;
    rows.collect::<Result<_, _>>().map_err(err(db))
}

pub fn snapshot_for_vm(db: &Db, vm_id: &str) -> Result<Option<(String, SnapshotRow)>, StateError> {
    db.conn()
        .query_row(
            "SELECT dev_id, origin, vm_id, owner_pid, size_sectors, state, pool FROM thin_snapshots
             WHERE vm_id = ?1",
            [vm_id],
            |r| Ok((r.get(6)?, snapshot(r)?)),
        )
        .optional()
        .map_err(err(db))
}

pub fn insert_snapshot(db: &Db, pool: &str, s: &SnapshotRow) -> Result<(), StateError> {
    db.conn()
        .execute(
            "INSERT INTO thin_snapshots (pool, dev_id, origin, vm_id, owner_pid, size_sectors, state,
                created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'creating', ?7)",
            params![
                pool,
                s.dev_id as i64,
                s.origin as i64,
                s.vm_id,
                i64::from(s.owner_pid),
                s.size_sectors as i64,
                now_unix()
            ],
        )
        .map(drop)
        .map_err(err(db))
}

pub fn mark_snapshot_active(db: &Db, pool: &str, dev_id: u64) -> Result<(), StateError> {
    db.conn()
        .execute(
            "UPDATE thin_snapshots SET state = 'active' WHERE pool = ?1 AND dev_id = ?2",
            params![pool, dev_id as i64],
        )
        .map(drop)
        .map_err(err(db))
}

pub fn delete_snapshot(db: &Db, pool: &str, dev_id: u64) -> Result<(), StateError> {
    db.conn()
        .execute(
            "DELETE FROM thin_snapshots WHERE pool = ?1 AND dev_id = ?2",
            params![pool, dev_id as i64],
        )
        .map(drop)
        .map_err(err(db))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        (dir, db)
    }

    fn pool_row() -> PoolRow {
        PoolRow {
            name: "p".into(),
            data_file: "/d".into(),
            metadata_file: "/m".into(),
            data_sectors: 2048,
            metadata_sectors: 4096,
            block_sectors: 128,
            low_water_blocks: 1,
        }
    }

    #[test]
    fn rows_round_trip_and_ids_span_both_tables() {
        let (_d, db) = db();
        insert_pool(&db, &pool_row()).unwrap();
        assert_eq!(pool(&db, "p").unwrap(), Some(pool_row()));
        let v = VolumeRow {
            dev_id: 1,
            image: "base".into(),
            digest: "x".into(),
            size_sectors: 10,
            state: VolumeState::Creating,
        };
        insert_volume(&db, "p", &v).unwrap();
        set_volume_state(&db, "p", 1, VolumeState::Ready).unwrap();
        assert_eq!(volumes(&db, "p").unwrap()[0].state, VolumeState::Ready);
        let s = SnapshotRow {
            dev_id: 2,
            origin: 1,
            vm_id: "vm-a".into(),
            owner_pid: 42,
            size_sectors: 10,
            active: false,
        };
        insert_snapshot(&db, "p", &s).unwrap();
        assert_eq!(used_ids(&db, "p").unwrap(), vec![1, 2]);
        // One disk per VM: a second snapshot for the same VM is refused by the schema.
        assert!(insert_snapshot(
            &db,
            "p",
            &SnapshotRow {
                dev_id: 3,
                ..s.clone()
            }
        )
        .is_err());
        mark_snapshot_active(&db, "p", 2).unwrap();
        let (pool_name, row) = snapshot_for_vm(&db, "vm-a").unwrap().unwrap();
        assert_eq!(pool_name, "p");
        assert!(row.active);
        delete_pool(&db, "p").unwrap();
        assert!(pool(&db, "p").unwrap().is_none());
        assert!(used_ids(&db, "p").unwrap().is_empty());
    }
}
