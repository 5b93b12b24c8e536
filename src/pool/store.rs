//! The `snapshots` table (migrations 5 and 7): one ready base snapshot per (image, engine,
//! vCPUs, memory, workspace drive), written before its files exist.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::pool::tag::SnapshotTag;
use crate::state::{now_unix, Db};

/// What a snapshot is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SnapshotKey {
    pub image: String,
    pub engine: String,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// The size of the workspace drive the guest was booted with (agents), 0 for none.
    pub workspace_mib: u32,
}

impl std::fmt::Display for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} ({} vCPU, {} MiB{})",
            self.image,
            self.engine,
            self.vcpus,
            self.mem_mib,
            if self.workspace_mib > 0 {
                format!(", {} MiB workspace drive", self.workspace_mib)
            } else {
                String::new()
            }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Building,
    Ready,
    Stale,
}

impl SnapshotState {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Building => "building",
            SnapshotState::Ready => "ready",
            SnapshotState::Stale => "stale",
        }
    }
    fn parse(s: &str) -> SnapshotState {
        match s {
            "ready" => SnapshotState::Ready,
            "building" => SnapshotState::Building,
            _ => SnapshotState::Stale,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotRow {
    pub id: String,
    pub key: SnapshotKey,
    /// None when the stored tag no longer parses (an older fireclaw's): treated as stale.
    pub tag: Option<SnapshotTag>,
    pub dir: PathBuf,
    pub state: SnapshotState,
    pub bytes: u64,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("snapshot tag: {0}")]
    Tag(#[from] serde_json::Error),
}

const COLUMNS: &str =
    "id, image, engine, vcpus, mem_mib, tag, dir, state, bytes, created_at, workspace_mib";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let tag: String = r.get(5)?;
    Ok(SnapshotRow {
        id: r.get(0)?,
        key: SnapshotKey {
            image: r.get(1)?,
            engine: r.get(2)?,
            vcpus: r.get(3)?,
            mem_mib: r.get(4)?,
            workspace_mib: r.get(10)?,
        },
        tag: serde_json::from_str(&tag).ok(),
        dir: PathBuf::from(r.get::<_, String>(6)?),
        state: SnapshotState::parse(&r.get::<_, String>(7)?),
        bytes: r.get::<_, i64>(8).map(|b| u64::try_from(b).unwrap_or(0))?,
        created_at: r.get(9)?,
    })
}

/// Records a snapshot about to be built (before its directory exists).
pub fn begin(
    db: &Db,
    id: &str,
    key: &SnapshotKey,
    tag: &SnapshotTag,
    dir: &std::path::Path,
) -> Result<(), StoreError> {
    db.conn().execute(
        &format!("INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'building', 0, ?8, ?9)"),
        params![
            id,
            key.image,
            key.engine,
            key.vcpus,
            key.mem_mib,
            serde_json::to_string(tag)?,
            dir.to_string_lossy(),
            now_unix(),
            key.workspace_mib
        ],
    )?;
    Ok(())
}

/// Marks a finished build ready, retiring the previous ready snapshot of the same key to
/// `stale` in the same transaction (the unique index allows one ready row per key). Returns the
/// retired snapshot's id, whose files go once no clone uses them.
pub fn finish(db: &Db, id: &str, bytes: u64) -> Result<Option<String>, StoreError> {
    let tx = db.conn().unchecked_transaction()?;
    let key: Option<(String, String, u8, u32, u32)> = tx
        .query_row(
            "SELECT image, engine, vcpus, mem_mib, workspace_mib FROM snapshots WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((image, engine, vcpus, mem, ws)) = key else {
        return Ok(None);
    };
    let old: Option<String> = tx
        .query_row(
            "SELECT id FROM snapshots WHERE image = ?1 AND engine = ?2 AND vcpus = ?3
               AND mem_mib = ?4 AND workspace_mib = ?5 AND state = 'ready'",
            params![image, engine, vcpus, mem, ws],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(old) = &old {
        tx.execute("UPDATE snapshots SET state = 'stale' WHERE id = ?1", [old])?;
    }
    tx.execute(
        "UPDATE snapshots SET state = 'ready', bytes = ?2 WHERE id = ?1",
        params![id, i64::try_from(bytes).unwrap_or(i64::MAX)],
    )?;
    tx.commit()?;
    Ok(old)
}

pub fn set_state(db: &Db, id: &str, state: SnapshotState) -> Result<(), StoreError> {
    db.conn().execute(
        "UPDATE snapshots SET state = ?2 WHERE id = ?1",
        params![id, state.as_str()],
    )?;
    Ok(())
}

pub fn ready(db: &Db, key: &SnapshotKey) -> Result<Option<SnapshotRow>, StoreError> {
    Ok(db
        .conn()
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM snapshots WHERE image = ?1 AND engine = ?2 AND vcpus = ?3
                   AND mem_mib = ?4 AND workspace_mib = ?5 AND state = 'ready'"
            ),
            params![
                key.image,
                key.engine,
                key.vcpus,
                key.mem_mib,
                key.workspace_mib
            ],
            row,
        )
        .optional()?)
}

pub fn get(db: &Db, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
    Ok(db
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

pub fn list(db: &Db) -> Result<Vec<SnapshotRow>, StoreError> {
    let mut st = db.conn().prepare(&format!(
        "SELECT {COLUMNS} FROM snapshots ORDER BY image, engine, vcpus, mem_mib, workspace_mib, created_at"
    ))?;
    let rows = st.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Deletes the row, after its files are gone.
pub fn remove(db: &Db, id: &str) -> Result<bool, StoreError> {
    Ok(db
        .conn()
        .execute("DELETE FROM snapshots WHERE id = ?1", [id])?
        == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> SnapshotTag {
        SnapshotTag {
            engine: "qemu".into(),
            engine_version: "7.2".into(),
            kernel_sha256: "k".into(),
            image_sha256: "i".into(),
            cpu_model: "cpu".into(),
            cpu_flags_sha256: "f".into(),
            host_kernel: "6.1".into(),
            fireclaw_version: "0.1.0".into(),
            vcpus: 1,
            mem_mib: 512,
        }
    }

    fn key() -> SnapshotKey {
        SnapshotKey {
            image: "agent".into(),
            engine: "qemu".into(),
            vcpus: 1,
            mem_mib: 512,
            workspace_mib: 0,
        }
    }

    #[test]
    fn a_snapshot_with_a_workspace_drive_is_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let agent = SnapshotKey {
            workspace_mib: 64,
            ..key()
        };
        begin(&db, "aaaaaaaaaaaa", &key(), &tag(), &dir.path().join("a")).unwrap();
        begin(&db, "bbbbbbbbbbbb", &agent, &tag(), &dir.path().join("b")).unwrap();
        assert_eq!(finish(&db, "aaaaaaaaaaaa", 1).unwrap(), None);
        // Not a rebuild of the plain one: both stay ready.
        assert_eq!(finish(&db, "bbbbbbbbbbbb", 1).unwrap(), None);
        assert_eq!(ready(&db, &key()).unwrap().unwrap().id, "aaaaaaaaaaaa");
        let r = ready(&db, &agent).unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.key.workspace_mib), ("bbbbbbbbbbbb", 64));
        assert!(
            agent.to_string().ends_with("64 MiB workspace drive)"),
            "{agent}"
        );
    }

    #[test]
    fn one_ready_snapshot_per_key_and_a_rebuild_retires_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        begin(&db, "aaaaaaaaaaaa", &key(), &tag(), &dir.path().join("a")).unwrap();
        assert!(
            ready(&db, &key()).unwrap().is_none(),
            "building is not ready"
        );
        assert_eq!(finish(&db, "aaaaaaaaaaaa", 100).unwrap(), None);
        let r = ready(&db, &key()).unwrap().unwrap();
        assert_eq!(
            (r.id.as_str(), r.bytes, r.tag.as_ref()),
            ("aaaaaaaaaaaa", 100, Some(&tag()))
        );

        begin(&db, "bbbbbbbbbbbb", &key(), &tag(), &dir.path().join("b")).unwrap();
        assert_eq!(
            finish(&db, "bbbbbbbbbbbb", 7).unwrap().as_deref(),
            Some("aaaaaaaaaaaa")
        );
        assert_eq!(ready(&db, &key()).unwrap().unwrap().id, "bbbbbbbbbbbb");
        assert_eq!(
            get(&db, "aaaaaaaaaaaa").unwrap().unwrap().state,
            SnapshotState::Stale
        );
        assert_eq!(list(&db).unwrap().len(), 2);
        assert!(remove(&db, "aaaaaaaaaaaa").unwrap());
        assert!(finish(&db, "nope", 1).unwrap().is_none());
    }

    #[test]
    fn an_unreadable_tag_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        begin(&db, "cccccccccccc", &key(), &tag(), dir.path()).unwrap();
        db.conn()
            .execute("UPDATE snapshots SET tag = '{\"old\":1}'", [])
            .unwrap();
        assert_eq!(get(&db, "cccccccccccc").unwrap().unwrap().tag, None);
    }
}
