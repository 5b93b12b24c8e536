//! Network slots for clones: many VMs restored from one snapshot, running at once.
//!
//! A snapshot freezes the guest's address, gateway and MAC, and the VMM reopens the tap by the
//! name it had. So each clone runs in a network namespace of its own (a *slot*), which holds a tap
//! with the snapshot's name and gateway address, joined to the host by a veth pair from a /31 of
//! `network.clone_range`. NAT inside the namespace gives the clone a unique *outside* address:
//! the host reaches the clone there, and the clone's traffic leaves with it as source
//! (Firecracker's "network for clones" recipe; E2B's per-slot namespaces).
//!
//! Making a slot costs a few `ip`/`nft` runs; handing one out must not. So slots are made ahead
//! of time ([`SlotPool::prepare`]) and handed out from memory ([`SlotPool::acquire`]: one row
//! update, no netlink, no nft). A used slot is never reused: [`SlotPool::release`] deletes its
//! namespace, and its index is later rebuilt from nothing, so no conntrack entry, neighbour or
//! rule of one clone survives into the next.
//!
//! Every slot is recorded (state `creating`) before its namespace or veth exist, and both names
//! derive from the slot's index (`fc-slot-<n>`, `fcv<n>h`), so [`SlotPool::reconcile`] finds what a
//! crash left by row and by name. One process owns the slots of a host: reconcile tears down
//! every slot it is not told to keep, including another live process's.

pub mod plan;
pub mod store;

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use plan::{CloneRange, GuestLink, HostServices, SlotAddrs, SnapshotNet};
pub use store::{SlotRow, SlotState};

use super::policy::Policy;
use crate::config::Config;
use crate::state::{Db, StateError};
use store::AllocError;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Db(#[from] StateError),
    #[error("no prepared clone slot with policy {0}; prepare more, or make one with a SlotMaker")]
    Empty(&'static str),
    #[error("{what}: {detail}")]
    Host { what: String, detail: String },
    #[error("clone slots: {0}")]
    Config(String),
    #[error("{live} VMs are running, the most this host allows (pool.max_vms = {max} in fireclaw.toml); wait for one to end, remove kept ones with `fireclaw gc --all`, or raise pool.max_vms")]
    TooManyVms { max: u32, live: u64 },
}

fn host_err(what: impl Into<String>, detail: impl std::fmt::Display) -> SlotError {
    SlotError::Host {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Everything a pool of slots is made from.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub range: CloneRange,
    /// Slot namespaces are `<ns_prefix><index>`; [`plan::DEFAULT_NS_PREFIX`] on a host.
    pub ns_prefix: String,
    /// The namespace that plays the host; `None` is the one this process runs in. Tests pass a
    /// namespace they made.
    pub host_ns: Option<String>,
    pub host_table: String,
    pub services: HostServices,
    pub snapshot: SnapshotNet,
    pub guest_link: GuestLink,
    /// `pool.max_vms`: a slot is handed to a clone only while fewer VMs live (booted VMs'
    /// leases and clones' slots together).
    pub max_vms: u32,
}

impl SlotConfig {
    /// The host's slots for clones of a snapshot taken with `snapshot`'s network.
    pub fn from_config(config: &Config, snapshot: SnapshotNet) -> Result<SlotConfig, SlotError> {
        let range = CloneRange::parse(&config.network.clone_range)
            .map_err(|e| SlotError::Config(format!("network.clone_range: {e}")))?;
        let bridge = super::Ipv4Cidr::parse(&config.network.address)
            .map_err(|e| SlotError::Config(format!("network.address: {e}")))?;
        let ollama = port_of_url(&config.ollama.url).ok_or_else(|| {
            SlotError::Config(format!("ollama.url {:?} has no port", config.ollama.url))
        })?;
        Ok(SlotConfig {
            range,
            ns_prefix: plan::DEFAULT_NS_PREFIX.into(),
            host_ns: None,
            host_table: format!("{}_clones", config.network.nft_table),
            services: HostServices {
                bridge_ip: bridge.addr,
                ports: vec![config.irc.port, ollama],
            },
            snapshot,
            guest_link: GuestLink::Tap,
            max_vms: config.pool.max_vms,
        })
    }
}

pub use crate::values::port_of_url;

/// A slot that exists: its namespace, veth and rules are in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    /// The namespace name (`ip netns` name); the VMM runs inside it.
    pub ns: String,
    pub host_veth: String,
    pub addrs: SlotAddrs,
    pub policy: Policy,
}

impl Slot {
    /// `/run/netns/<ns>`: what `setns` opens to run the VMM inside the slot.
    pub fn ns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.ns)
    }

    /// The address the host reaches this clone at.
    pub fn outside(&self) -> std::net::Ipv4Addr {
        self.addrs.outside
    }
}

/// What [`SlotPool::reconcile`] removed and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Rows torn down (with whatever of their namespace and veth existed).
    pub rows: usize,
    /// Namespaces named like a slot that no row accounted for.
    pub namespaces: usize,
    /// Host veths named like a slot's that no row accounted for.
    pub links: usize,
    /// Slots kept because a live clone uses them.
    pub kept: usize,
}

fn policy_slot(p: Policy) -> usize {
    match p {
        Policy::Full => 0,
        Policy::Local => 1,
        Policy::None => 2,
    }
}

/// Makes and destroys slots: the slow half (a few `ip`/`nft` runs per slot). It holds its own
/// database connection, so a runtime can refill in the background with a maker from
/// [`SlotPool::maker`] while the pool keeps handing out slots, then [`SlotPool::add_ready`] them.
pub struct SlotMaker {
    db: Db,
    cfg: SlotConfig,
    host_rules: bool,
}

impl SlotMaker {
    pub fn new(db: Db, cfg: SlotConfig) -> Result<SlotMaker, SlotError> {
        plan::validate_ns_prefix(&cfg.ns_prefix)
            .map_err(|e| SlotError::Config(format!("namespace prefix: {e}")))?;
        if let Some(ns) = &cfg.host_ns {
            plan::validate_ns_name(ns)
                .map_err(|e| SlotError::Config(format!("host namespace: {e}")))?;
        }
        if let GuestLink::Veth { peer } = &cfg.guest_link {
            super::validate_ifname(peer)
                .map_err(|e| SlotError::Config(format!("guest veth peer: {e}")))?;
        }
        // Handing out a slot is one row update; with the default FULL it waits for an fsync of
        // the WAL (milliseconds). NORMAL keeps every commit across a crash of the process and
        // may lose the last ones on power loss, which also takes every namespace with it.
        db.conn()
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| crate::state::sqlite(db.path(), e))?;
        Ok(SlotMaker {
            db,
            cfg,
            host_rules: false,
        })
    }

    pub fn config(&self) -> &SlotConfig {
        &self.cfg
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Makes one slot (state `ready`). Everything it made is removed again if a step fails.
    pub fn make(&mut self, policy: Policy) -> Result<Slot, SlotError> {
        if !self.host_rules {
            self.install_host_rules()?;
        }
        let row = store::allocate(&self.db, &self.cfg.range, &self.cfg.ns_prefix, policy)?;
        let addrs =
            self.cfg.range.addrs(row.index).ok_or_else(|| {
                SlotError::Config(format!("slot {} is outside the range", row.index))
            })?;
        let slot = Slot {
            index: row.index,
            ns: row.ns,
            host_veth: row.host_veth,
            addrs,
            policy,
        };
        let built = self.build(&slot).and_then(|()| {
            let moved = store::transition(
                &self.db,
                slot.index,
                SlotState::Creating,
                SlotState::Ready,
                None,
            )?;
            if moved {
                Ok(())
            } else {
                Err(host_err(
                    format!("slot {}", slot.ns),
                    "its row vanished while it was being made (a concurrent reconcile?)",
                ))
            }
        });
        if let Err(e) = built {
            // The row stays (as `releasing`) if the teardown itself fails: reconcile retries.
            if let Err(again) = self.destroy(&slot) {
                tracing::warn!(slot = %slot.ns, error = %again, "could not remove a slot that failed to build");
            }
            return Err(e);
        }
        tracing::debug!(slot = %slot.ns, outside = %slot.addrs.outside, "slot ready");
        Ok(slot)
    }

    /// Tears `slot` down: marks its row `releasing`, deletes the host veth (both ends go at
    /// once; deleting the namespace alone would leave the host end until the kernel's namespace
    /// cleanup runs), the namespace, then the row. Idempotent.
    pub fn destroy(&mut self, slot: &Slot) -> Result<(), SlotError> {
        self.destroy_parts(&slot.ns, &slot.host_veth, slot.index)
    }

    fn destroy_parts(&self, ns: &str, host_veth: &str, index: u32) -> Result<(), SlotError> {
        store::mark_releasing(&self.db, index)?;
        // Names come from rows, which are external input: delete only what this index's slot
        // would be called, never a namespace or link a hand-edited row points at.
        if plan::parse_index(host_veth, plan::HOST_VETH_PREFIX, "h") == Some(index) {
            self.delete_host_link(host_veth)?;
        } else {
            tracing::warn!(
                index,
                link = host_veth,
                "slot row names a link that is not its own; left alone"
            );
        }
        if plan::parse_index(ns, &self.cfg.ns_prefix, "") == Some(index) {
            delete_netns(ns)?;
        } else {
            tracing::warn!(
                index,
                namespace = ns,
                "slot row names a namespace that is not its own; left alone"
            );
        }
        store::delete(&self.db, index)?;
        Ok(())
    }

    /// Removes what a crash left: every slot row except those in `kept` and those `in_use` by a
    /// clone `keep` names (whose namespace still exists), every namespace named `<prefix><n>` and
    /// every host veth named `fcv<n>h` that no kept row accounts for, and the host's table when
    /// no slot is left. One process owns a host's slots: run it at start, before making any.
    pub fn reconcile(
        &mut self,
        kept: &BTreeSet<u32>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<ReconcileReport, SlotError> {
        let mut report = ReconcileReport::default();
        let mut kept = kept.clone();
        for row in store::list(&self.db)? {
            if kept.contains(&row.index) {
                continue;
            }
            let in_use = row.state == Some(SlotState::InUse)
                && row.vm_id.as_deref().is_some_and(&keep)
                && Path::new(NETNS_DIR).join(&row.ns).exists();
            if in_use {
                kept.insert(row.index);
                report.kept += 1;
                continue;
            }
            self.destroy_parts(&row.ns, &row.host_veth, row.index)?;
            report.rows += 1;
        }
        // Rows whose index is no number we write name nothing we made: drop them.
        let parsed: BTreeSet<i64> = store::list(&self.db)?
            .iter()
            .map(|r| i64::from(r.index))
            .collect();
        for raw in store::list_raw_indexes(&self.db)? {
            if !parsed.contains(&raw) {
                store::delete_raw(&self.db, raw)?;
                report.rows += 1;
            }
        }
        for name in list_namespaces()? {
            let Some(index) = plan::parse_index(&name, &self.cfg.ns_prefix, "") else {
                continue;
            };
            if !kept.contains(&index) {
                delete_netns(&name)?;
                report.namespaces += 1;
            }
        }
        for name in self.host_links()? {
            let Some(index) = plan::parse_index(&name, plan::HOST_VETH_PREFIX, "h") else {
                continue;
            };
            if !kept.contains(&index) {
                self.delete_host_link(&name)?;
                report.links += 1;
            }
        }
        if store::list_raw_indexes(&self.db)?.is_empty() {
            self.remove_host_rules()?;
        }
        if report != ReconcileReport::default() {
            tracing::info!(?report, "clone slots reconciled");
        }
        Ok(report)
    }

    fn build(&self, slot: &Slot) -> Result<(), SlotError> {
        let c = &self.cfg;
        run_program("ip", &["netns", "add", &slot.ns], None)
            .map_err(|e| host_err(format!("creating namespace {}", slot.ns), e))?;
        let host_batch = plan::host_batch(slot.index, &slot.ns, &slot.addrs);
        in_netns(c.host_ns.as_deref(), || {
            run_program("ip", &["-batch", "-"], Some(&host_batch))
                .map_err(|e| host_err(format!("making veth {}", slot.host_veth), e))
        })?;
        let ns_batch = plan::ns_batch(&slot.addrs, &c.snapshot, &c.guest_link);
        let rules = plan::ns_ruleset(&slot.addrs, &c.snapshot, &c.services, slot.policy);
        in_netns(Some(&slot.ns), || {
            // Per-namespace sysctl: this thread has joined the slot, so /proc/sys/net is its.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
                .map_err(|e| host_err(format!("enabling forwarding in {}", slot.ns), e))?;
            run_program("ip", &["-batch", "-"], Some(&ns_batch))
                .map_err(|e| host_err(format!("making the tap in {}", slot.ns), e))?;
            run_program("nft", &["-f", "-"], Some(&rules))
                .map_err(|e| host_err(format!("installing the rules of {}", slot.ns), e))
        })
    }

    fn delete_host_link(&self, name: &str) -> Result<(), SlotError> {
        in_netns(self.cfg.host_ns.as_deref(), || {
            match run_program("ip", &["link", "delete", name], None) {
                Ok(()) => Ok(()),
                Err(e) if e.contains("Cannot find device") => Ok(()),
                Err(e) => Err(host_err(format!("deleting link {name}"), e)),
            }
        })
    }

    fn host_links(&self) -> Result<Vec<String>, SlotError> {
        let out = in_netns(self.cfg.host_ns.as_deref(), || {
            program_output("ip", &["-j", "link", "show"]).map_err(|e| host_err("listing links", e))
        })?;
        let links: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| host_err("reading `ip -j link show`", e))?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("ifname")?.as_str().map(str::to_string))
            .collect())
    }

    fn install_host_rules(&mut self) -> Result<(), SlotError> {
        let c = &self.cfg;
        let rules = plan::host_ruleset(&c.host_table, &c.range, &c.services);
        in_netns(c.host_ns.as_deref(), || {
            let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .map_err(|e| host_err("reading net.ipv4.ip_forward", e))?;
            if forwarding.trim() != "1" {
                return Err(host_err(
                    "clone slots",
                    "IPv4 forwarding is off on the host; run `fireclaw provision` (or the runtime's start-up) first",
                ));
            }
            run_program("nft", &["-f", "-"], Some(&rules)).map_err(|e| {
                host_err(
                    format!("installing nftables table inet {}", c.host_table),
                    e,
                )
            })
        })?;
        self.host_rules = true;
        Ok(())
    }

    /// Removes the host's table once no slot row is left (whoever installed it).
    fn remove_host_rules_if_unused(&mut self) -> Result<(), SlotError> {
        if store::list_raw_indexes(&self.db)?.is_empty() {
            self.remove_host_rules()?;
        }
        Ok(())
    }

    fn remove_host_rules(&mut self) -> Result<(), SlotError> {
        let table = self.cfg.host_table.clone();
        in_netns(self.cfg.host_ns.as_deref(), || {
            match run_program("nft", &["delete", "table", "inet", &table], None) {
                Ok(()) => Ok(()),
                Err(e) if e.contains("No such file") || e.contains("does not exist") => Ok(()),
                Err(e) => Err(host_err(format!("deleting nftables table inet {table}"), e)),
            }
        })?;
        self.host_rules = false;
        Ok(())
    }
}

/// Prepared slots per policy: the fast half. [`SlotPool::acquire`] is a pop and one row update.
pub struct SlotPool {
    maker: SlotMaker,
    ready: [VecDeque<Slot>; 3],
    /// Slots went through this pool, so the host's table may exist: close removes it if unused.
    touched: bool,
    closed: bool,
}

impl SlotPool {
    pub fn new(db: Db, cfg: SlotConfig) -> Result<SlotPool, SlotError> {
        Ok(SlotPool {
            maker: SlotMaker::new(db, cfg)?,
            ready: Default::default(),
            touched: false,
            closed: false,
        })
    }

    pub fn config(&self) -> &SlotConfig {
        &self.maker.cfg
    }

    pub fn db(&self) -> &Db {
        &self.maker.db
    }

    /// A maker with a connection of its own to the same database, for refilling off the lock
    /// that guards the pool.
    pub fn maker(&self) -> Result<SlotMaker, SlotError> {
        SlotMaker::new(Db::open(self.maker.db.path())?, self.maker.cfg.clone())
    }

    /// Prepared slots waiting for a clone with `policy`.
    pub fn ready(&self, policy: Policy) -> usize {
        self.ready[policy_slot(policy)].len()
    }

    /// Makes `n` slots for `policy` ahead of time, here and now. Stops at the first failure
    /// (after removing the slot that failed); the slots made before it stay prepared.
    pub fn prepare(&mut self, n: usize, policy: Policy) -> Result<(), SlotError> {
        self.touched = true;
        for _ in 0..n {
            let slot = self.maker.make(policy)?;
            self.ready[policy_slot(policy)].push_back(slot);
        }
        Ok(())
    }

    /// Queues a slot a [`SlotMaker`] made.
    pub fn add_ready(&mut self, slot: Slot) {
        self.touched = true;
        self.ready[policy_slot(slot.policy)].push_back(slot);
    }

    /// Hands out a prepared slot for `vm_id` in O(1): a pop and one row update, no netlink, no
    /// nft. An empty queue is [`SlotError::Empty`]: the caller makes one with a maker, or waits.
    pub fn acquire(&mut self, policy: Policy, vm_id: &str) -> Result<Slot, SlotError> {
        let slot = self.ready[policy_slot(policy)]
            .pop_front()
            .ok_or(SlotError::Empty(policy.as_str()))?;
        match store::take_for_vm(&self.maker.db, slot.index, vm_id, self.maker.cfg.max_vms) {
            Ok(store::Taken::Taken) => Ok(slot),
            Ok(store::Taken::Full { live }) => {
                self.ready[policy_slot(policy)].push_front(slot);
                Err(SlotError::TooManyVms {
                    max: self.maker.cfg.max_vms,
                    live,
                })
            }
            Ok(store::Taken::Lost) => {
                // Its row is gone or moved on (a reconcile meanwhile): never hand it out, and
                // do not tear it down either, as its index may already name a newer slot.
                tracing::warn!(slot = %slot.ns, "prepared slot lost its row; dropped from the pool");
                Err(host_err(
                    format!("slot {}", slot.ns),
                    "it was no longer ready (released or reconciled meanwhile)",
                ))
            }
            Err(e) => {
                self.ready[policy_slot(policy)].push_front(slot);
                Err(e.into())
            }
        }
    }

    /// Tears `slot` down (namespace, veth, rules, row), whatever state it is in.
    pub fn release(&mut self, slot: &Slot) -> Result<(), SlotError> {
        for q in &mut self.ready {
            q.retain(|s| s.index != slot.index);
        }
        self.maker.destroy(slot)
    }

    /// [`SlotMaker::reconcile`], keeping the slots this pool holds prepared.
    pub fn reconcile(&mut self, keep: impl Fn(&str) -> bool) -> Result<ReconcileReport, SlotError> {
        let mine: BTreeSet<u32> = self.ready.iter().flatten().map(|s| s.index).collect();
        self.maker.reconcile(&mine, keep)
    }

    /// Releases every prepared (unused) slot, and removes the host's table when no slot is left.
    pub fn close(mut self) -> Result<(), SlotError> {
        self.closed = true;
        self.release_prepared()
    }

    fn release_prepared(&mut self) -> Result<(), SlotError> {
        let mut first_err = None;
        let slots: Vec<Slot> = self.ready.iter_mut().flat_map(|q| q.drain(..)).collect();
        for slot in slots {
            if let Err(e) = self.maker.destroy(&slot) {
                first_err.get_or_insert(e);
            }
        }
        if self.touched {
            if let Err(e) = self.maker.remove_host_rules_if_unused() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for SlotPool {
    /// Prepared slots are this process's alone: a pool dropped without [`SlotPool::close`] (an
    /// error path) still removes them. Slots in use stay for their clones (reconcile's job).
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.release_prepared() {
                tracing::warn!(error = %e, "releasing prepared clone slots");
            }
        }
    }
}

/// Names in /run/netns (none when the directory does not exist yet).
fn list_namespaces() -> Result<Vec<String>, SlotError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(host_err(format!("listing {NETNS_DIR}"), e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

fn delete_netns(name: &str) -> Result<(), SlotError> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    run_program("ip", &["netns", "delete", name], None)
        .map_err(|e| host_err(format!("deleting namespace {name}"), e))
}

/// Runs `f` on a thread that has joined namespace `ns` (`None`: right here). setns changes only
/// the calling thread, and programs it starts inherit that thread's namespace: this is how a
/// clone's VMM is started inside its slot (`in_netns(Some(&slot.ns), || spawn the VMM)`), unless
/// the jailer's `--netns` does it.
pub fn in_netns<T: Send>(
    ns: Option<&str>,
    f: impl FnOnce() -> Result<T, SlotError> + Send,
) -> Result<T, SlotError> {
    let Some(ns) = ns else {
        return f();
    };
    let path = Path::new(NETNS_DIR).join(ns);
    let file = std::fs::File::open(&path)
        .map_err(|e| host_err(format!("opening namespace {}", path.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| host_err(format!("joining namespace {ns}"), e))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(host_err(
                format!("in namespace {ns}"),
                "the worker thread panicked",
            ))
        })
    })
}

/// `ip` and `nft` live in sbin, which an ordinary PATH may lack.
fn program_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}

/// Runs a program to completion; the error is its stderr (or why it did not start).
fn run_program(name: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    program(name, args, stdin).map(drop)
}

fn program_output(name: &str, args: &[&str]) -> Result<String, String> {
    program(name, args, None)
}

fn program(name: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program_path(name))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {name}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_urls() {
        assert_eq!(port_of_url("http://172.16.0.1:11434"), Some(11434));
        assert_eq!(port_of_url("http://172.16.0.1:11434/api"), Some(11434));
        assert_eq!(port_of_url("http://ollama"), Some(80));
        assert_eq!(port_of_url("https://ollama/x"), Some(443));
        for bad in [
            "",
            "172.16.0.1:11434",
            "http://h:0",
            "http://h:99999",
            "ftp://h",
            "http://h:x",
        ] {
            assert_eq!(port_of_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_gives_the_hosts_services() {
        let snap = SnapshotNet::new(
            "fc-snap",
            super::super::Ipv4Cidr::parse("172.16.0.1/24").unwrap(),
            std::net::Ipv4Addr::new(172, 16, 0, 2),
        )
        .unwrap();
        let cfg = SlotConfig::from_config(&Config::default(), snap).unwrap();
        assert_eq!(cfg.services.ports, vec![6667, 11434]);
        assert_eq!(
            cfg.services.bridge_ip,
            std::net::Ipv4Addr::new(172, 16, 0, 1)
        );
        assert_eq!(cfg.range.to_string(), "10.200.0.0/16");
        assert_eq!(cfg.ns_prefix, "fc-slot-");
        // Apart from provision's table, so provision never sees it as drift.
        assert_eq!(cfg.host_table, "fireclaw_clones");
    }

    #[test]
    fn empty_pool_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let snap = SnapshotNet::new(
            "fc-snap",
            super::super::Ipv4Cidr::parse("172.16.0.1/24").unwrap(),
            std::net::Ipv4Addr::new(172, 16, 0, 2),
        )
        .unwrap();
        let cfg = SlotConfig::from_config(&Config::default(), snap).unwrap();
        let mut pool = SlotPool::new(db, cfg).unwrap();
        let err = pool.acquire(Policy::Local, "vm").unwrap_err().to_string();
        assert!(err.contains("policy local"), "{err}");
        // Nothing was made, so closing touches nothing on the host (and needs no root).
        pool.close().unwrap();
    }

    #[test]
    fn hostile_pool_settings_are_refused() {
        let snap = SnapshotNet::new(
            "fc-snap",
            super::super::Ipv4Cidr::parse("172.16.0.1/24").unwrap(),
            std::net::Ipv4Addr::new(172, 16, 0, 2),
        )
        .unwrap();
        for (prefix, host_ns, peer) in [
            ("../etc", None, None),
            ("fc-slot-", Some("a/b"), None),
            ("fc-slot-", None, Some("bad name")),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(&dir.path().join("state.db")).unwrap();
            let mut cfg = SlotConfig::from_config(&Config::default(), snap.clone()).unwrap();
            cfg.ns_prefix = prefix.into();
            cfg.host_ns = host_ns.map(str::to_string);
            if let Some(p) = peer {
                cfg.guest_link = GuestLink::Veth { peer: p.into() };
            }
            assert!(
                SlotPool::new(db, cfg).is_err(),
                "{prefix} {host_ns:?} {peer:?}"
            );
        }
    }
}
