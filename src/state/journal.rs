//! The provisioning journal: every change provision makes is recorded *before* it is made (status
//! `pending`) and confirmed after (`done`), so an interrupted run leaves a journal uninstall can still
//! reverse. Undo records are idempotent, which makes reverting a `pending` entry safe whether or not
//! its change happened.

use rusqlite::{params, OptionalExtension};

use super::{now_unix, sqlite, Db, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalStatus {
    Pending,
    Done,
    Reverted,
}

impl JournalStatus {
    fn as_str(self) -> &'static str {
        match self {
            JournalStatus::Pending => "pending",
            JournalStatus::Done => "done",
            JournalStatus::Reverted => "reverted",
        }
    }

    fn parse(s: &str) -> JournalStatus {
        match s {
            "done" => JournalStatus::Done,
            "reverted" => JournalStatus::Reverted,
            _ => JournalStatus::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: i64,
    pub step: String,
    /// One-line description of the action, as the plan printed it.
    pub action: String,
    /// JSON of the undo record.
    pub undo: String,
    pub backup: Option<Vec<u8>>,
    pub status: JournalStatus,
}

impl Db {
    pub fn journal_begin(
        &self,
        step: &str,
        action: &str,
        undo: &str,
        backup: Option<&[u8]>,
    ) -> Result<i64, StateError> {
        self.conn
            .execute(
                "INSERT INTO journal (step, action, undo, backup, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                params![step, action, undo, backup, now_unix()],
            )
            .map_err(|e| sqlite(&self.path, e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn journal_set_status(&self, id: i64, status: JournalStatus) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE journal SET status = ?1 WHERE id = ?2",
                params![status.as_str(), id],
            )
            .map(drop)
            .map_err(|e| sqlite(&self.path, e))
    }

    /// Entries not yet reverted, newest first: the order uninstall undoes them in.
    pub fn journal_active_newest_first(&self) -> Result<Vec<JournalEntry>, StateError> {
        self.journal_query(
            "SELECT id, step, action, undo, backup, status FROM journal
             WHERE status != 'reverted' ORDER BY id DESC",
        )
    }

    pub fn journal_all(&self) -> Result<Vec<JournalEntry>, StateError> {
        self.journal_query("SELECT id, step, action, undo, backup, status FROM journal ORDER BY id")
    }

    fn journal_query(&self, sql: &str) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| sqlite(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JournalEntry {
                    id: r.get(0)?,
                    step: r.get(1)?,
                    action: r.get(2)?,
                    undo: r.get(3)?,
                    backup: r.get(4)?,
                    status: JournalStatus::parse(&r.get::<_, String>(5)?),
                })
            })
            .map_err(|e| sqlite(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlite(&self.path, e))
    }

    pub fn mark_step_complete(&self, step: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO step_runs (step, completed_at) VALUES (?1, ?2)
                 ON CONFLICT(step) DO UPDATE SET completed_at = excluded.completed_at",
                params![step, now_unix()],
            )
            .map(drop)
            .map_err(|e| sqlite(&self.path, e))
    }

    pub fn step_completed_at(&self, step: &str) -> Result<Option<i64>, StateError> {
        self.conn
            .query_row(
                "SELECT completed_at FROM step_runs WHERE step = ?1",
                [step],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sqlite(&self.path, e))
    }

    pub fn clear_step_runs(&self) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM step_runs", [])
            .map(drop)
            .map_err(|e| sqlite(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_newest_first_and_reverted_ones_drop_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let a = db
            .journal_begin("net", "create bridge", "{}", None)
            .unwrap();
        let b = db
            .journal_begin("files", "write x", "{}", Some(b"old"))
            .unwrap();
        db.journal_set_status(a, JournalStatus::Done).unwrap();
        let active = db.journal_active_newest_first().unwrap();
        assert_eq!(active.iter().map(|e| e.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(active[0].status, JournalStatus::Pending);
        assert_eq!(active[0].backup.as_deref(), Some(&b"old"[..]));
        db.journal_set_status(b, JournalStatus::Reverted).unwrap();
        assert_eq!(db.journal_active_newest_first().unwrap().len(), 1);
        assert_eq!(db.journal_all().unwrap().len(), 2);
    }

    #[test]
    fn step_completion_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        assert!(db.step_completed_at("net").unwrap().is_none());
        db.mark_step_complete("net").unwrap();
        assert!(db.step_completed_at("net").unwrap().is_some());
        db.clear_step_runs().unwrap();
        assert!(db.step_completed_at("net").unwrap().is_none());
    }
}
