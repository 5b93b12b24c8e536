//! The `vms` table: what the state database knows about each machine, written before the
//! machine's resources exist so a crash at any point leaves enough to clean up from.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::state::{now_unix, Db};
use crate::storage::VmDisk;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmRecord {
    pub id: String,
    pub vmm: String,
    pub state: String,
    pub owner_pid: Option<i64>,
    pub owner_start: Option<i64>,
    pub vmm_pid: Option<i64>,
    pub tap: String,
    pub ip: Option<Ipv4Addr>,
    pub run_dir: PathBuf,
    pub disk_planned: PathBuf,
    pub disk: Option<VmDisk>,
    pub policy: String,
    pub image: String,
    pub created_at: i64,
}

pub fn insert(db: &Db, r: &VmRecord) -> rusqlite::Result<()> {
    db.conn().execute(
        "INSERT INTO vms (id, vmm, state, owner_pid, owner_start, vmm_pid, tap, ip, run_dir,
                          disk_planned, disk, policy, image, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            r.id,
            r.vmm,
            r.state,
            r.owner_pid,
            r.owner_start,
            r.vmm_pid,
            r.tap,
            r.ip.map(u32::from),
            r.run_dir.to_string_lossy(),
            r.disk_planned.to_string_lossy(),
            r.disk.as_ref().and_then(|d| serde_json::to_string(d).ok()),
            r.policy,
            r.image,
            if r.created_at == 0 {
                now_unix()
            } else {
                r.created_at
            },
        ],
    )?;
    Ok(())
}

pub fn set_ip(db: &Db, id: &str, ip: Ipv4Addr) -> rusqlite::Result<()> {
    db.conn()
        .execute(
            "UPDATE vms SET ip = ?2 WHERE id = ?1",
            params![id, u32::from(ip)],
        )
        .map(drop)
}

pub fn set_disk(db: &Db, id: &str, disk: &VmDisk) -> rusqlite::Result<()> {
    let json = serde_json::to_string(disk).unwrap_or_default();
    db.conn()
        .execute("UPDATE vms SET disk = ?2 WHERE id = ?1", params![id, json])
        .map(drop)
}

pub fn set_vmm_pid(db: &Db, id: &str, pid: u32) -> rusqlite::Result<()> {
    db.conn()
        .execute(
            "UPDATE vms SET vmm_pid = ?2, state = 'running' WHERE id = ?1",
            params![id, pid],
        )
        .map(drop)
}

/// Marks a VM kept: no owner any more, `gc` leaves it alone while its VMM lives.
pub fn set_kept(db: &Db, id: &str) -> rusqlite::Result<()> {
    db.conn()
        .execute(
            "UPDATE vms SET state = 'kept', owner_pid = NULL, owner_start = NULL WHERE id = ?1",
            params![id],
        )
        .map(drop)
}

pub fn delete(db: &Db, id: &str) -> rusqlite::Result<()> {
    db.conn()
        .execute("DELETE FROM vms WHERE id = ?1", params![id])
        .map(drop)
}

pub fn get(db: &Db, id: &str) -> rusqlite::Result<Option<VmRecord>> {
    db.conn()
        .query_row(&format!("{SELECT} WHERE id = ?1"), [id], row)
        .optional()
}

pub fn list(db: &Db) -> rusqlite::Result<Vec<VmRecord>> {
    let mut stmt = db
        .conn()
        .prepare(&format!("{SELECT} ORDER BY created_at"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

const SELECT: &str = "SELECT id, vmm, state, owner_pid, owner_start, vmm_pid, tap, ip, run_dir,
    disk_planned, disk, policy, image, created_at FROM vms";

fn row(r: &rusqlite::Row) -> rusqlite::Result<VmRecord> {
    let ip: Option<i64> = r.get(7)?;
    let disk: Option<String> = r.get(10)?;
    Ok(VmRecord {
        id: r.get(0)?,
        vmm: r.get(1)?,
        state: r.get(2)?,
        owner_pid: r.get(3)?,
        owner_start: r.get(4)?,
        vmm_pid: r.get(5)?,
        tap: r.get(6)?,
        ip: ip.and_then(|i| u32::try_from(i).ok()).map(Ipv4Addr::from),
        run_dir: PathBuf::from(r.get::<_, String>(8)?),
        disk_planned: PathBuf::from(r.get::<_, String>(9)?),
        // A record this fireclaw cannot read is cleaned up by its planned path instead.
        disk: disk.and_then(|d| serde_json::from_str(&d).ok()),
        policy: r.get(11)?,
        image: r.get(12)?,
        created_at: r.get(13)?,
    })
}

/// The kernel's start time of a process (clock ticks since boot, field 22 of /proc/PID/stat):
/// with the pid, it identifies a process across pid reuse.
pub fn process_start_time(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the fireclaw process that owns a VM is still alive.
pub fn owner_alive(r: &VmRecord) -> bool {
    match (r.owner_pid, r.owner_start) {
        (Some(pid), Some(start)) => u32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .is_some_and(|s| s == start),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_columns() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let r = VmRecord {
            id: "abc".into(),
            vmm: "qemu".into(),
            state: "creating".into(),
            owner_pid: Some(std::process::id() as i64),
            owner_start: process_start_time(std::process::id()),
            vmm_pid: None,
            tap: "fc-abc".into(),
            ip: None,
            run_dir: "/run/x".into(),
            disk_planned: "/d/abc.img".into(),
            disk: None,
            policy: "full".into(),
            image: "fixture".into(),
            created_at: 5,
        };
        insert(&db, &r).unwrap();
        assert!(owner_alive(&get(&db, "abc").unwrap().unwrap()));
        set_ip(&db, "abc", Ipv4Addr::new(172, 16, 0, 9)).unwrap();
        set_vmm_pid(&db, "abc", 77).unwrap();
        let got = get(&db, "abc").unwrap().unwrap();
        assert_eq!(got.ip, Some(Ipv4Addr::new(172, 16, 0, 9)));
        assert_eq!(got.state, "running");
        // Garbage a crash or a hand edit could leave must not make the row unreadable.
        db.conn()
            .execute(
                "UPDATE vms SET disk = '{not json', ip = -1 WHERE id = 'abc'",
                [],
            )
            .unwrap();
        let got = get(&db, "abc").unwrap().unwrap();
        assert_eq!((got.disk, got.ip), (None, None));
        set_kept(&db, "abc").unwrap();
        assert!(!owner_alive(&get(&db, "abc").unwrap().unwrap()));
        assert!(db
            .conn()
            .execute("UPDATE vms SET state = 'bogus'", [])
            .is_err());
        delete(&db, "abc").unwrap();
        assert!(list(&db).unwrap().is_empty());
    }

    #[test]
    fn start_time_parsing() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX).is_none());
    }
}
