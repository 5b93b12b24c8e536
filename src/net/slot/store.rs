//! Slot rows in the state database (`net_slots`, migration 4). A row is inserted in state
//! `creating` before any of the slot's kernel objects exist; the primary key on the index makes
//! two allocations of one slot impossible, even from separate processes.

use std::net::Ipv4Addr;

use rusqlite::OptionalExtension as _;

use super::super::policy::Policy;
use super::plan::{host_veth, ns_name, CloneRange};
use crate::state::{now_unix, sqlite, Db, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Creating,
    Ready,
    InUse,
    Releasing,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Creating => "creating",
            SlotState::Ready => "ready",
            SlotState::InUse => "in_use",
            SlotState::Releasing => "releasing",
        }
    }

    fn parse(text: &str) -> Option<SlotState> {
        Some(match text {
            "creating" => SlotState::Creating,
            "ready" => SlotState::Ready,
            "in_use" => SlotState::InUse,
            "releasing" => SlotState::Releasing,
            _ => return None,
        })
    }
}

/// One row of `net_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub index: u32,
    pub ns: String,
    pub host_veth: String,
    pub outside: Ipv4Addr,
    /// `None` when the stored text is no policy we know (a hand edit): such a slot is torn down.
    pub policy: Option<Policy>,
    /// `None` when the stored text is no state we know: torn down as well.
    pub state: Option<SlotState>,
    pub vm_id: Option<String>,
}

/// Why a slot could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("no free clone slot left in {range} ({slots} slots, all in use); release some clones or widen network.clone_range")]
    Exhausted { range: String, slots: u32 },
    #[error(transparent)]
    Db(#[from] StateError),
}

/// Inserts a `creating` row for the lowest free index and returns it.
pub fn allocate(
    db: &Db,
    range: &CloneRange,
    ns_prefix: &str,
    policy: Policy,
) -> Result<SlotRow, AllocError> {
    let q = |e| AllocError::Db(sqlite(db.path(), e));
    let exhausted = || AllocError::Exhausted {
        range: range.to_string(),
        slots: range.slots(),
    };
    // Indexes whose derived names or address a foreign row already holds (a hand edit, or a
    // different namespace prefix): never ours to take.
    let mut clashing: Vec<u32> = Vec::new();
    // A few rounds: each lost race means another connection took the index we saw as free.
    for _ in 0..64 {
        let used = used_indexes(db)?;
        let Some(index) =
            (0..range.slots()).find(|i| used.binary_search(i).is_err() && !clashing.contains(i))
        else {
            return Err(exhausted());
        };
        let addrs = range.addrs(index).ok_or_else(exhausted)?;
        let row = SlotRow {
            index,
            ns: ns_name(ns_prefix, index),
            host_veth: host_veth(index),
            outside: addrs.outside,
            policy: Some(policy),
            state: Some(SlotState::Creating),
            vm_id: None,
        };
        let inserted = db
            .conn()
            .execute(
                "INSERT OR IGNORE INTO net_slots
                 (idx, ns, host_veth, outside_ip, policy, state, vm_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'creating', NULL, ?6)",
                rusqlite::params![
                    index,
                    row.ns,
                    row.host_veth,
                    u32::from(row.outside),
                    policy.as_str(),
                    now_unix()
                ],
            )
            .map_err(q)?;
        if inserted == 1 {
            return Ok(row);
        }
        if used_indexes(db)?.binary_search(&index).is_err() {
            clashing.push(index);
        }
    }
    Err(exhausted())
}

fn used_indexes(db: &Db) -> Result<Vec<u32>, StateError> {
    let q = |e| sqlite(db.path(), e);
    let mut stmt = db
        .conn()
        .prepare("SELECT idx FROM net_slots ORDER BY idx")
        .map_err(q)?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).map_err(q)?;
    let mut out = Vec::new();
    for idx in rows {
        // A value that is no index cannot collide with a candidate; skip it.
        if let Ok(i) = u32::try_from(idx.map_err(q)?) {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Moves slot `index` from `from` to `to`, recording `vm_id`; false when the row was not in
/// state `from` (someone else got there first, or it is gone).
pub fn transition(
    db: &Db,
    index: u32,
    from: SlotState,
    to: SlotState,
    vm_id: Option<&str>,
) -> Result<bool, StateError> {
    db.conn()
        .execute(
            "UPDATE net_slots SET state = ?3, vm_id = ?4 WHERE idx = ?1 AND state = ?2",
            rusqlite::params![index, from.as_str(), to.as_str(), vm_id],
        )
        .map(|n| n == 1)
        .map_err(|e| sqlite(db.path(), e))
}

/// What [`take_for_vm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Taken,
    /// The row is gone or no longer ready (released or reconciled meanwhile).
    Lost,
    /// `live` VMs already run, `pool.max_vms` or more.
    Full {
        live: u64,
    },
}

/// Hands ready slot `index` to `vm_id`, unless `max_vms` VMs already live: the count (leases of
/// booted VMs, slots of clones) and the hand-out are one write transaction, as for leases.
pub fn take_for_vm(db: &Db, index: u32, vm_id: &str, max_vms: u32) -> Result<Taken, StateError> {
    let conn = db.conn();
    let err = |e| sqlite(db.path(), e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        let live: u64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM leases) + (SELECT COUNT(*) FROM net_slots WHERE state = 'in_use')",
            [],
            |r| r.get(0),
        )?;
        if live >= u64::from(max_vms) {
            return Ok(Taken::Full { live });
        }
        let n = conn.execute(
            "UPDATE net_slots SET state = 'in_use', vm_id = ?2 WHERE idx = ?1 AND state = 'ready'",
            rusqlite::params![index, vm_id],
        )?;
        Ok(if n == 1 { Taken::Taken } else { Taken::Lost })
    })();
    let end = if matches!(result, Ok(Taken::Taken)) {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let _ = conn.execute_batch(end);
    result.map_err(err)
}

/// Marks slot `index` as being torn down, whatever state it was in (keeping its `vm_id`).
pub fn mark_releasing(db: &Db, index: u32) -> Result<(), StateError> {
    db.conn()
        .execute(
            "UPDATE net_slots SET state = 'releasing' WHERE idx = ?1",
            [index],
        )
        .map(drop)
        .map_err(|e| sqlite(db.path(), e))
}

pub fn delete(db: &Db, index: u32) -> Result<(), StateError> {
    db.conn()
        .execute("DELETE FROM net_slots WHERE idx = ?1", [index])
        .map(drop)
        .map_err(|e| sqlite(db.path(), e))
}

pub fn get(db: &Db, index: u32) -> Result<Option<SlotRow>, StateError> {
    let q = |e| sqlite(db.path(), e);
    db.conn()
        .query_row(
            "SELECT idx, ns, host_veth, outside_ip, policy, state, vm_id FROM net_slots WHERE idx = ?1",
            [index],
            row_from,
        )
        .optional()
        .map_err(q)
        .map(Option::flatten)
}

/// Every row that parses; a row whose index or address is not a number we could have written is
/// skipped (it names nothing fireclaw made) and reported by [`list_raw_indexes`].
pub fn list(db: &Db) -> Result<Vec<SlotRow>, StateError> {
    let q = |e| sqlite(db.path(), e);
    let mut stmt = db
        .conn()
        .prepare("SELECT idx, ns, host_veth, outside_ip, policy, state, vm_id FROM net_slots ORDER BY idx")
        .map_err(q)?;
    let rows = stmt.query_map([], row_from).map_err(q)?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(r) = row.map_err(q)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Raw `idx` values of every row, parsable or not (for deleting rows [`list`] skips).
pub fn list_raw_indexes(db: &Db) -> Result<Vec<i64>, StateError> {
    let q = |e| sqlite(db.path(), e);
    let mut stmt = db.conn().prepare("SELECT idx FROM net_slots").map_err(q)?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).map_err(q)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(q)
}

pub fn delete_raw(db: &Db, idx: i64) -> Result<(), StateError> {
    db.conn()
        .execute("DELETE FROM net_slots WHERE idx = ?1", [idx])
        .map(drop)
        .map_err(|e| sqlite(db.path(), e))
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<SlotRow>> {
    let idx: i64 = r.get(0)?;
    let ip: i64 = r.get(3)?;
    let (Ok(index), Ok(ip)) = (u32::try_from(idx), u32::try_from(ip)) else {
        return Ok(None);
    };
    let policy: String = r.get(4)?;
    let state: String = r.get(5)?;
    Ok(Some(SlotRow {
        index,
        ns: r.get(1)?,
        host_veth: r.get(2)?,
        outside: Ipv4Addr::from(ip),
        policy: Policy::parse(&policy).ok(),
        state: SlotState::parse(&state),
        vm_id: r.get(6)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::slot::plan::DEFAULT_NS_PREFIX;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn lowest_free_index_then_exhaustion_is_a_clear_error() {
        let (_d, db) = db();
        let range = CloneRange::parse("10.9.0.0/30").unwrap();
        let a = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Full).unwrap();
        let b = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::None).unwrap();
        assert_eq!((a.index, a.ns.as_str()), (0, "fc-slot-0"));
        assert_eq!((b.index, b.host_veth.as_str()), (1, "fcv1h"));
        assert_eq!(b.outside, Ipv4Addr::new(10, 9, 0, 3));
        let err = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Full)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.9.0.0/30") && err.contains("no free clone slot"),
            "{err}"
        );
        // Released indexes are handed out again (the slot is rebuilt from nothing).
        delete(&db, 0).unwrap();
        assert_eq!(
            allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Local)
                .unwrap()
                .index,
            0
        );
    }

    #[test]
    fn transitions_are_guarded_by_the_current_state() {
        let (_d, db) = db();
        let range = CloneRange::parse("10.200.0.0/16").unwrap();
        let a = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Full).unwrap();
        assert!(!transition(&db, a.index, SlotState::Ready, SlotState::InUse, Some("vm")).unwrap());
        assert!(transition(&db, a.index, SlotState::Creating, SlotState::Ready, None).unwrap());
        assert!(transition(&db, a.index, SlotState::Ready, SlotState::InUse, Some("vm")).unwrap());
        let row = get(&db, a.index).unwrap().unwrap();
        assert_eq!(row.state, Some(SlotState::InUse));
        assert_eq!(row.vm_id.as_deref(), Some("vm"));
        mark_releasing(&db, a.index).unwrap();
        assert_eq!(
            get(&db, a.index).unwrap().unwrap().state,
            Some(SlotState::Releasing)
        );
    }

    #[test]
    fn clones_and_booted_vms_share_pool_max_vms() {
        let (_d, db) = db();
        let range = CloneRange::parse("10.200.0.0/16").unwrap();
        let mut slots = Vec::new();
        for _ in 0..3 {
            let s = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Full).unwrap();
            assert!(transition(&db, s.index, SlotState::Creating, SlotState::Ready, None).unwrap());
            slots.push(s);
        }
        let bridge = crate::net::Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        // One booted VM and one clone: a limit of 3 leaves room for one more of either kind.
        crate::net::lease::allocate(&db, &bridge, "booted", 3).unwrap();
        assert_eq!(
            take_for_vm(&db, slots[0].index, "clone-a", 3).unwrap(),
            Taken::Taken
        );
        assert_eq!(
            take_for_vm(&db, slots[1].index, "clone-b", 3).unwrap(),
            Taken::Taken
        );
        assert_eq!(
            take_for_vm(&db, slots[2].index, "clone-c", 3).unwrap(),
            Taken::Full { live: 3 }
        );
        assert_eq!(
            get(&db, slots[2].index).unwrap().unwrap().state,
            Some(SlotState::Ready)
        );
        let err = crate::net::lease::allocate(&db, &bridge, "booted-2", 3).unwrap_err();
        assert!(err.to_string().contains("pool.max_vms = 3"), "{err}");
        // A slot taken twice is lost, not handed out again.
        assert_eq!(
            take_for_vm(&db, slots[0].index, "clone-d", 10).unwrap(),
            Taken::Lost
        );
    }

    #[test]
    fn hostile_rows_are_survived() {
        let (_d, db) = db();
        // Rows a bug or a hand edit could leave: an index past u32, an unknown state's text is
        // stopped by the CHECK, an unknown policy, an address that is no IPv4 address.
        db.conn()
            .execute_batch(
                "INSERT INTO net_slots VALUES (99999999999, 'x', 'y', 1, 'full', 'ready', NULL, 0);
                 INSERT INTO net_slots VALUES (0, 'fc-slot-0', 'fcv0h', -1, 'full', 'ready', NULL, 0);
                 INSERT INTO net_slots VALUES (2, 'fc-slot-2', 'fcv2h', 5, 'open', 'ready', NULL, 0);",
            )
            .unwrap();
        assert!(db
            .conn()
            .execute_batch(
                "INSERT INTO net_slots VALUES (3, 'a', 'b', 6, 'full', 'bogus', NULL, 0)"
            )
            .is_err());
        let rows = list(&db).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].policy, None);
        assert_eq!(list_raw_indexes(&db).unwrap().len(), 3);
        let range = CloneRange::parse("10.200.0.0/16").unwrap();
        // Index 1's namespace name is held by a foreign row: 1 is skipped, not retried forever.
        db.conn()
            .execute_batch(
                "INSERT INTO net_slots VALUES (7, 'fc-slot-1', 'z', 9, 'full', 'ready', NULL, 0)",
            )
            .unwrap();
        let next = allocate(&db, &range, DEFAULT_NS_PREFIX, Policy::Full).unwrap();
        assert_eq!(next.index, 3);
    }
}
