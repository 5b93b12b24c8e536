//! The one SQLite database under the state directory: the provisioning journal now; leases, VMs,
//! agents and audit later. Schema changes are numbered migrations applied in order on open.

pub mod journal;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

pub use journal::{JournalEntry, JournalStatus};

/// File name of the database inside `paths.state_dir`.
pub const DB_FILE: &str = "state.db";

/// The database's path for a configured `paths.state_dir` (a host path, before any root prefix).
pub fn db_path(state_dir: &str) -> String {
    format!("{}/{DB_FILE}", state_dir.trim_end_matches('/'))
}

/// Each entry upgrades the schema by one version; `PRAGMA user_version` records how many ran.
/// Never edit a shipped migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the provisioning journal. `undo` is JSON (see plan::Undo); `backup` holds a file's previous
    // content when provision overwrote it, so uninstall can put it back byte for byte.
    "CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step TEXT NOT NULL,
        action TEXT NOT NULL,
        undo TEXT NOT NULL,
        backup BLOB,
        status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'reverted')),
        created_at INTEGER NOT NULL
     );
     CREATE TABLE step_runs (
        step TEXT PRIMARY KEY,
        completed_at INTEGER NOT NULL
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: running VMs and their IP leases. A VM row is written before any of its resources exist
    // and names all of them (tap, run dir, planned disk path), so a crash at any point leaves a
    // record `fireclaw gc` can clean up from. `owner_pid`/`owner_start` identify the fireclaw
    // process that owns the VM (start time guards against pid reuse); both are NULL for `--keep`.
    // `ip` is the IPv4 address as an integer; the primary key makes a double lease impossible.
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        vmm TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'running', 'kept', 'destroying')),
        owner_pid INTEGER,
        owner_start INTEGER,
        vmm_pid INTEGER,
        tap TEXT NOT NULL,
        ip INTEGER,
        run_dir TEXT NOT NULL,
        disk_planned TEXT NOT NULL,
        disk TEXT,
        policy TEXT NOT NULL,
        image TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE leases (
        ip INTEGER PRIMARY KEY,
        vm_id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
     );",
    // 3: the dm thin pool (storage::thin). A row is written *before* the kernel object it names
    // (state `creating`), so a crash leaves a row that re-activation or `gc` can finish or delete.
    // `dev_id` is dm-thin's 24-bit device id, unique per pool across images and snapshots.
    "CREATE TABLE thin_pools (
        name TEXT PRIMARY KEY,
        data_file TEXT NOT NULL,
        metadata_file TEXT NOT NULL,
        data_sectors INTEGER NOT NULL,
        metadata_sectors INTEGER NOT NULL,
        block_sectors INTEGER NOT NULL,
        low_water_blocks INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE thin_volumes (
        pool TEXT NOT NULL REFERENCES thin_pools(name),
        dev_id INTEGER NOT NULL,
        image TEXT NOT NULL,
        digest TEXT NOT NULL,
        size_sectors INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'retired')),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (pool, dev_id)
     );
     CREATE TABLE thin_snapshots (
        pool TEXT NOT NULL REFERENCES thin_pools(name),
        dev_id INTEGER NOT NULL,
        origin INTEGER NOT NULL,
        vm_id TEXT NOT NULL UNIQUE,
        owner_pid INTEGER NOT NULL,
        size_sectors INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'active')),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (pool, dev_id)
     );",
    // 4: the agent system. `agents` survives every restart (runtime, host): an agent's name is
    // its IRC nick and its workspace's file name. `audit` records every overseer or socket
    // command, who sent it and what came of it. `usage` is one row per interaction the guest
    // agent reported (attributed by the VM it was read from, so no agent can forge another's).
    "CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        model TEXT NOT NULL,
        persona TEXT,
        state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'stopped', 'failed')),
        vm_id TEXT,
        restarts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('irc', 'socket')),
        actor TEXT NOT NULL,
        command TEXT NOT NULL,
        ok INTEGER NOT NULL,
        result TEXT NOT NULL
     );
     CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        at INTEGER NOT NULL,
        model TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        eval_tokens INTEGER NOT NULL,
        channel TEXT,
        asker TEXT,
        summary TEXT
     );
     CREATE INDEX usage_by_agent ON usage (agent, at);",
    // 5: base snapshots (pool::store). A row is written (`building`) before its directory exists,
    // so a crash mid-build leaves a row naming what to delete. `tag` is JSON (pool::tag) and is
    // compared with the host before every restore; a mismatch marks the row `stale`.
    "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        image TEXT NOT NULL,
        engine TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        mem_mib INTEGER NOT NULL,
        tag TEXT NOT NULL,
        dir TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('building', 'ready', 'stale')),
        bytes INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
     );
     CREATE UNIQUE INDEX one_ready_snapshot ON snapshots (image, engine, vcpus, mem_mib)
        WHERE state = 'ready';",
    // 6: clone network slots (net::slot). A row is written before the slot's namespace and veth
    // exist (state `creating`), and both names derive from `idx`, so a crash at any point leaves
    // something `reconcile` can find. `outside_ip` is the address the host reaches the clone at
    // (an integer, unique); `vm_id` is set while a clone uses the slot (state `in_use`).
    "CREATE TABLE net_slots (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        ns TEXT NOT NULL UNIQUE,
        host_veth TEXT NOT NULL,
        outside_ip INTEGER NOT NULL UNIQUE,
        policy TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'in_use', 'releasing')),
        vm_id TEXT UNIQUE,
        created_at INTEGER NOT NULL
     );",
    // 7: a snapshot booted with a workspace drive (agents): its size in MiB, 0 for none. QEMU
    // restores only onto the device set it saved, so it is part of what a snapshot is for.
    "ALTER TABLE snapshots ADD COLUMN workspace_mib INTEGER NOT NULL DEFAULT 0;
     DROP INDEX one_ready_snapshot;
     CREATE UNIQUE INDEX one_ready_snapshot ON snapshots (image, engine, vcpus, mem_mib, workspace_mib)
        WHERE state = 'ready';",
];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    // The cause is part of the message and deliberately not a `#[source]`: `{:#}` would print it
    // twice ("...: Not a directory (os error 20): Not a directory (os error 20)").
    #[error("state database {path}: {reason}")]
    Sqlite {
        path: PathBuf,
        reason: rusqlite::Error,
    },
    #[error("state database {path} has schema version {found}, newer than this fireclaw knows ({known}); upgrade fireclaw")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("state database {path} is readable by root only")]
    NoPermission { path: PathBuf },
    #[error("cannot set the mode of {path}: {}", crate::fsops::io_reason(reason))]
    Mode {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(
        "cannot create state directory {path}: {}",
        crate::fsops::io_reason(reason)
    )]
    CreateDir {
        path: PathBuf,
        reason: std::io::Error,
    },
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database for writing and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Db, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|reason| StateError::CreateDir {
                path: dir.to_path_buf(),
                reason,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
        // The journal keeps backups of the 0600 files provision replaces (ngircd.conf with the
        // operator password): the database is root's alone. SQLite gives -wal/-shm this mode too.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |reason| StateError::Mode {
                path: path.to_path_buf(),
                reason,
            },
        )?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sqlite(path, e))?;
        // Several processes opening a new database at once (parallel `fireclaw run`s on a fresh
        // host) contend for the exclusive lock that switching to WAL and migrating need. SQLite
        // answers some of those lock escalations BUSY at once rather than waiting (it would
        // otherwise deadlock), so the whole step is retried until the deadline.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match db.enable_wal().and_then(|()| db.migrate()) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                other => return other.map(|()| db),
            }
        }
    }

    fn enable_wal(&self) -> Result<(), StateError> {
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| sqlite(&self.path, e))?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sqlite(&self.path, e))
    }

    /// Opens an existing database read-only, for dry-runs and `status`; `None` if it does not exist
    /// (a host that was never provisioned). Never creates anything.
    pub fn open_read_only(path: &Path) -> Result<Option<Db>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        if let Err(e) = std::fs::File::open(path) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(StateError::NoPermission {
                    path: path.to_path_buf(),
                });
            }
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| sqlite(path, e))?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        let version = db.schema_version()?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StateError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        Ok(Some(db))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn schema_version(&self) -> Result<i64, StateError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sqlite(&self.path, e))
    }

    fn migrate(&self) -> Result<(), StateError> {
        // IMMEDIATE takes the write lock before the version is read: concurrent first opens
        // (parallel `fireclaw run`s on a fresh host) wait here, then see the finished schema
        // instead of both running migration 1.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| sqlite(&self.path, e))?;
        let result = (|| {
            let version = self.schema_version()?;
            if version > MIGRATIONS.len() as i64 {
                return Err(StateError::TooNew {
                    path: self.path.clone(),
                    found: version,
                    known: MIGRATIONS.len(),
                });
            }
            for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                let next = index + 1;
                self.conn
                    .execute_batch(&format!("{sql}; PRAGMA user_version = {next};"))
                    .map_err(|e| sqlite(&self.path, e))?;
            }
            Ok(())
        })();
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self
            .conn
            .execute_batch(end)
            .map_err(|e| sqlite(&self.path, e));
        result.and(ended)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| sqlite(&self.path, e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
            .map_err(|e| sqlite(&self.path, e))
    }

    /// Closes the connection and deletes the database with its WAL files: the last act of uninstall.
    pub fn destroy(self) -> std::io::Result<()> {
        let path = self.path.clone();
        drop(self.conn);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How long an open waits for other processes holding the database's locks.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_busy(e: &StateError) -> bool {
    matches!(
        e,
        StateError::Sqlite {
            reason: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn sqlite(path: &Path, reason: rusqlite::Error) -> StateError {
    StateError::Sqlite {
        path: path.to_path_buf(),
        reason,
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I/O cause appears once in the error chain, without its errno suffix twice.
    #[test]
    fn errors_do_not_repeat_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = match Db::open(&file.join("sub/state.db")) {
            Err(e) => format!("{:#}", anyhow::Error::new(e)),
            Ok(_) => panic!("opened a database under a file"),
        };
        assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
        assert!(!err.contains("os error"), "{err}");
    }

    #[test]
    fn migrates_fresh_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        db.set_meta("k", "v").unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.meta("k").unwrap().as_deref(), Some("v"));
        let ro = Db::open_read_only(&path).unwrap().unwrap();
        assert_eq!(ro.meta("k").unwrap().as_deref(), Some("v"));
    }

    /// Parallel first opens of a new database, started together, many times over.
    #[test]
    fn concurrent_first_opens_all_succeed() {
        for _ in 0..25 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let p = path.clone();
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        Db::open(&p).map(drop).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
            let db = Db::open(&path).unwrap();
            assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        }
    }

    /// Env var naming the database a re-invoked test binary opens (see the test below).
    const CHILD_OPEN_ENV: &str = "FIRECLAW_TEST_CHILD_OPEN_DB";

    /// Entry point for the child processes of `concurrent_first_opens_across_processes`; without
    /// the env var (a normal test run) it has nothing to do.
    #[test]
    fn child_process_opens_the_database() {
        if let Some(path) = std::env::var_os(CHILD_OPEN_ENV) {
            // Open, write, close, over and over, as `fireclaw run` does through its life: each
            // last close checkpoints and removes the WAL while others are opening.
            for i in 0..40 {
                let db = Db::open(Path::new(&path))
                    .unwrap_or_else(|e| panic!("child open {i} failed: {e}"));
                db.set_meta(&format!("k{}", std::process::id()), &i.to_string())
                    .unwrap_or_else(|e| panic!("child write {i} failed: {e}"));
            }
        }
    }

    /// Separate processes opening a new database at once and writing through many short-lived
    /// connections, as concurrent `fireclaw run`s do: SQLite arbitrates locks between processes
    /// differently from connections in one process.
    #[test]
    fn concurrent_first_opens_across_processes() {
        let exe = std::env::current_exe().unwrap();
        for _ in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let children: Vec<_> = (0..6)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .args([
                            "--exact",
                            "state::tests::child_process_opens_the_database",
                            "--quiet",
                        ])
                        .env(CHILD_OPEN_ENV, &path)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for c in children {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let db = Db::open(&path).unwrap();
            assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        }
    }

    #[test]
    fn read_only_open_of_missing_db_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/state.db");
        assert!(Db::open_read_only(&path).unwrap().is_none());
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 999;").unwrap();
        drop(conn);
        let err = Db::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("999") && err.contains("upgrade fireclaw"),
            "{err}"
        );
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, b"this is not sqlite at all, not even close....").unwrap();
        let err = Db::open(&path).err().unwrap().to_string();
        assert!(err.contains("state.db"), "{err}");
    }

    #[test]
    fn destroy_removes_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Db::open(&path).unwrap();
        db.set_meta("a", "b").unwrap();
        db.destroy().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
