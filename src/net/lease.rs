//! IP leases from the state database. Each VM gets one address of the bridge's subnet; the
//! `leases` table's primary key on the address is what makes two concurrent `run`s unable to get
//! the same one, even from separate processes: a lost race is a constraint violation, and the
//! loser simply tries the next free address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rusqlite::OptionalExtension;

use super::Ipv4Cidr;
use crate::state::{now_unix, Db};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no free guest address left in {subnet} ({used} leased); destroy some VMs or widen network.address")]
    Exhausted { subnet: String, used: usize },
    #[error("lease database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("VM {0} already holds a lease")]
    AlreadyLeased(String),
    /// The host runs as many VMs as it may: refuse (or queue), do not retry at once.
    #[error("{live} VMs are running, the most this host allows (pool.max_vms = {max} in fireclaw.toml); wait for one to end, remove kept ones with `fireclaw gc --all`, or raise pool.max_vms")]
    TooManyVms { max: u32, live: u64 },
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub vm_id: String,
}

/// Candidate guest addresses: the subnet's hosts minus the bridge's own address. Network and
/// broadcast are never candidates.
fn candidates(bridge: &Ipv4Cidr) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let first = u32::from(bridge.network()) + 1;
    let last = u32::from(bridge.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .filter(move |ip| *ip != bridge.addr)
}

/// Leases the lowest free address for `vm_id`, unless `max_vms` VMs already live. Every live VM
/// holds a lease (booted) or a clone slot (restored; see `net::slot::store::take_for_vm`), so the
/// count and the new lease are taken in one write transaction: two processes creating VMs at
/// once cannot both see room for one more.
pub fn allocate(
    db: &Db,
    bridge: &Ipv4Cidr,
    vm_id: &str,
    max_vms: u32,
) -> Result<Lease, LeaseError> {
    let conn = db.conn();
    // IMMEDIATE takes SQLite's write lock now (waiting out the busy timeout), not at the insert.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = allocate_locked(db, bridge, vm_id, max_vms);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match conn.execute_batch(end) {
        Ok(()) => result,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(result.err().unwrap_or(LeaseError::Db(e)))
        }
    }
}

fn allocate_locked(
    db: &Db,
    bridge: &Ipv4Cidr,
    vm_id: &str,
    max_vms: u32,
) -> Result<Lease, LeaseError> {
    let conn = db.conn();
    // Live VMs: booted ones hold a lease, clones restored from a snapshot hold a clone slot.
    let live: u64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM leases WHERE vm_id != ?1)
              + (SELECT COUNT(*) FROM net_slots WHERE state = 'in_use' AND vm_id != ?1)",
        [vm_id],
        |r| r.get(0),
    )?;
    if live >= u64::from(max_vms) {
        return Err(LeaseError::TooManyVms { max: max_vms, live });
    }
    let held: Option<u32> = conn
        .query_row("SELECT ip FROM leases WHERE vm_id = ?1", [vm_id], |r| {
            r.get(0)
        })
        .optional()?;
    if held.is_some() {
        return Err(LeaseError::AlreadyLeased(vm_id.to_string()));
    }
    // A few rounds: each lost race means another process took an address we saw as free.
    for _ in 0..64 {
        let used = used_addresses(db)?;
        let Some(ip) = candidates(bridge).find(|ip| !used.contains(&u32::from(*ip))) else {
            let used = used
                .iter()
                .filter(|ip| bridge.contains(Ipv4Addr::from(**ip)))
                .count();
            return Err(LeaseError::Exhausted {
                subnet: bridge.network_cidr(),
                used,
            });
        };
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO leases (ip, vm_id, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![u32::from(ip), vm_id, now_unix()],
        )?;
        if inserted == 1 {
            return Ok(Lease {
                ip,
                vm_id: vm_id.to_string(),
            });
        }
        // Either the address or the VM id was taken meanwhile; the id case is a caller bug.
        let mine: Option<u32> = conn
            .query_row("SELECT ip FROM leases WHERE vm_id = ?1", [vm_id], |r| {
                r.get(0)
            })
            .optional()?;
        if mine.is_some() {
            return Err(LeaseError::AlreadyLeased(vm_id.to_string()));
        }
    }
    Err(LeaseError::Exhausted {
        subnet: bridge.network_cidr(),
        used: used_addresses(db)?.len(),
    })
}

fn used_addresses(db: &Db) -> Result<BTreeSet<u32>, rusqlite::Error> {
    let mut stmt = db.conn().prepare("SELECT ip FROM leases")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    let mut set = BTreeSet::new();
    for ip in rows {
        // A value that is no IPv4 address cannot collide with a candidate; skip it.
        if let Ok(ip) = u32::try_from(ip?) {
            set.insert(ip);
        }
    }
    Ok(set)
}

/// Releases `vm_id`'s lease; releasing one that does not exist is not an error.
pub fn release(db: &Db, vm_id: &str) -> Result<(), LeaseError> {
    db.conn()
        .execute("DELETE FROM leases WHERE vm_id = ?1", [vm_id])?;
    Ok(())
}

pub fn list(db: &Db) -> Result<Vec<Lease>, LeaseError> {
    let mut stmt = db
        .conn()
        .prepare("SELECT ip, vm_id FROM leases ORDER BY ip")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (ip, vm_id) = row?;
        if let Ok(ip) = u32::try_from(ip) {
            out.push(Lease {
                ip: Ipv4Addr::from(ip),
                vm_id,
            });
        }
    }
    Ok(out)
}

/// The guest's MAC, derived from its address so that it is stable, unique on the bridge and
/// recognisable: `02:fc:` (locally administered, unicast) followed by the four address bytes.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:fc:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn lowest_free_skips_bridge_and_reuses_released() {
        let (_d, db) = db();
        let net = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let a = allocate(&db, &net, "a", 1000).unwrap();
        let b = allocate(&db, &net, "b", 1000).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(b.ip, Ipv4Addr::new(172, 16, 0, 3));
        assert!(matches!(
            allocate(&db, &net, "a", 1000),
            Err(LeaseError::AlreadyLeased(_))
        ));
        release(&db, "a").unwrap();
        release(&db, "a").unwrap();
        assert_eq!(allocate(&db, &net, "c", 1000).unwrap().ip, a.ip);
        assert_eq!(mac_for(b.ip), "02:fc:ac:10:00:03");
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let (_d, db) = db();
        let net = Ipv4Cidr::parse("10.0.0.1/30").unwrap();
        assert_eq!(
            allocate(&db, &net, "a", 1000).unwrap().ip,
            Ipv4Addr::new(10, 0, 0, 2)
        );
        let err = allocate(&db, &net, "b", 1000).unwrap_err().to_string();
        assert!(
            err.contains("10.0.0.0/30") && err.contains("no free"),
            "{err}"
        );
    }

    #[test]
    fn hostile_table_states_are_survived() {
        let (_d, db) = db();
        let net = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        // Rows a bug or a hand edit could leave: the bridge's own address, addresses outside the
        // subnet, negative and too-large integers, and text where a number belongs.
        db.conn()
            .execute_batch(
                "INSERT INTO leases VALUES (2886729729, 'bridge', 0);
                 INSERT INTO leases VALUES (167772162, 'elsewhere', 0);
                 INSERT INTO leases VALUES (-5, 'negative', 0);
                 INSERT INTO leases VALUES (99999999999, 'huge', 0);
                 INSERT INTO leases VALUES (2886729730, 'taken', 0);",
            )
            .unwrap();
        let lease = allocate(&db, &net, "new", 1000).unwrap();
        assert_eq!(lease.ip, Ipv4Addr::new(172, 16, 0, 3));
        let listed = list(&db).unwrap();
        assert!(listed.iter().any(|l| l.vm_id == "new"));
        assert!(!listed
            .iter()
            .any(|l| l.vm_id == "negative" || l.vm_id == "huge"));
    }

    #[test]
    fn concurrent_allocations_from_separate_connections_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Db::open(&path).unwrap();
        let net = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let db = Db::open(&path).unwrap();
                    (0..10)
                        .map(|i| {
                            allocate(&db, &net, &format!("vm-{t}-{i}"), 1000)
                                .unwrap()
                                .ip
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "duplicate lease handed out");
    }

    #[test]
    fn max_vms_holds_under_concurrent_creates_from_separate_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Db::open(&path).unwrap();
        let net = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        // 34 creates at once against a limit of 32 (the default): exactly 32 get a lease.
        let handles: Vec<_> = (0..34)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let db = Db::open(&path).unwrap();
                    allocate(&db, &net, &format!("vm-{i}"), 32)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(granted, 32);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, LeaseError::TooManyVms { max: 32, live: 32 }),
                "{r:?}"
            );
            assert!(r.to_string().contains("pool.max_vms = 32"), "{r}");
        }
        assert_eq!(list(&Db::open(&path).unwrap()).unwrap().len(), 32);
        // A refused create left nothing behind, and room comes back when a VM ends.
        let db = Db::open(&path).unwrap();
        let freed = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
        release(&db, &freed.vm_id).unwrap();
        assert!(allocate(&db, &net, "late", 32).is_ok());
    }
}
