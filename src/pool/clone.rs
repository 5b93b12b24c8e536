//! Clones: VMs restored from a base snapshot, each in a network slot of its own, with its own
//! disk, reached by the host at the slot's outside address, and given an identity of its own
//! (clock, RNG seed, machine-id, hostname, neighbour table) before anyone uses it.
//!
//! Order is what makes a crash recoverable, as for [`crate::vm::Machine`]: the `vms` row (the
//! snapshot's tap name, the run dir, the planned disk) is written first; the slot's row then
//! names the VM; the disk, run dir and VMM follow, each recorded as it is made. Teardown runs in
//! reverse on every path (`Drop` included). After a crash, `vm::gc` removes the VM's row, disk and
//! run dir, and [`release_slots_of`] (or the runtime's slot reconcile) its slot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use super::snapshot::Snapshot;
use crate::net::policy::Policy;
use crate::net::slot::{self, Slot, SlotConfig, SlotError, SlotMaker, SlotPool, SnapshotNet};
use crate::net::Ipv4Cidr;
use crate::storage::VmDisk;
use crate::vm::identity::{refresh_script, FreshInputs};
use crate::vm::record::{self, VmRecord};
use crate::vm::{ssh, Host, KeptMachine};
use crate::vmm::{self, Boot, Instance, VmSpec, VmmKind};

/// The slot configuration for clones of `snap` on this host.
pub fn slot_config(host: &Host, snap: &Snapshot) -> anyhow::Result<SlotConfig> {
    let m = &snap.machine;
    let gateway = Ipv4Cidr::parse(&m.gateway).map_err(anyhow::Error::msg)?;
    let net = SnapshotNet::new(&m.tap, gateway, m.guest).map_err(anyhow::Error::msg)?;
    Ok(SlotConfig::from_config(&host.config, net)?)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CloneTimings {
    pub slot_ms: u64,
    pub disk_ms: u64,
    pub vmm_restore_ms: u64,
    pub ssh_ms: u64,
    pub identity_ms: u64,
}

/// A restored VM and everything it holds.
pub struct ClonedVm {
    host: Host,
    pub id: String,
    pub vmm: VmmKind,
    pub image: String,
    pub slot: Option<Slot>,
    /// Its own connection, to release the slot whatever thread tears the clone down.
    slots: SlotMaker,
    pub run_dir: PathBuf,
    pub disk: Option<VmDisk>,
    /// Its own second drive when the snapshot has one (`Host::clone_drive`), zeros until an
    /// agent's workspace is put into it.
    pub drive: Option<PathBuf>,
    instance: Option<Box<dyn Instance>>,
    target: ssh::Target,
    /// Open once [`ClonedVm::ready`] returned: the hand-out's channel to the guest.
    pub session: Option<ssh::Session>,
    recorded: bool,
    finished: bool,
    pub timings: CloneTimings,
}

impl ClonedVm {
    /// Records the VM, takes a slot (a prepared one, else makes one), clones the snapshot's
    /// disk and starts the VMM inside the slot's namespace from the snapshot. Blocking: async
    /// callers run it under `spawn_blocking`. On error everything made is torn down first.
    pub fn start(
        host: &Host,
        snap: &Snapshot,
        slots: &mut SlotPool,
        policy: Policy,
    ) -> anyhow::Result<ClonedVm> {
        let id = crate::vm::new_id();
        let vmm = match snap.row.key.engine.as_str() {
            "qemu" => VmmKind::Qemu,
            "firecracker" => VmmKind::Firecracker,
            other => anyhow::bail!("snapshot {} is for unknown engine {other:?}", snap.row.id),
        };
        let key = ssh::load_private_key(&host.key_path())?;
        let host_key = ssh::parse_host_key(&snap.machine.host_key)
            .with_context(|| format!("snapshot {}: its pinned host key", snap.row.id))?;
        let mut c = ClonedVm {
            host: host.clone(),
            run_dir: host.run_dir(&id),
            id,
            vmm,
            image: snap.row.key.image.clone(),
            slot: None,
            slots: slots.maker()?,
            disk: None,
            drive: None,
            instance: None,
            target: ssh::Target {
                addr: SocketAddr::from(([0, 0, 0, 0], 22)),
                user: snap.machine.user.clone(),
                key: Arc::new(key),
                host_key,
            },
            session: None,
            recorded: false,
            finished: false,
            timings: CloneTimings::default(),
        };
        match c.build(snap, slots, policy) {
            Ok(()) => Ok(c),
            Err(e) => {
                let cleanup = c.destroy();
                if cleanup.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(format!("and cleanup failed: {}", cleanup.join("; "))))
                }
            }
        }
    }

    fn build(
        &mut self,
        snap: &Snapshot,
        slots: &mut SlotPool,
        policy: Policy,
    ) -> anyhow::Result<()> {
        let host = self.host.clone();
        let db = host.db()?;
        let engine = host.disk_engine();
        record::insert(
            &db,
            &VmRecord {
                id: self.id.clone(),
                vmm: self.vmm.as_str().into(),
                state: "creating".into(),
                owner_pid: Some(i64::from(std::process::id())),
                owner_start: record::process_start_time(std::process::id()),
                vmm_pid: None,
                // The tap lives in the slot's namespace and goes with it; on the host there is
                // none of that name, so `gc`'s tap removal finds nothing.
                tap: snap.machine.tap.clone(),
                ip: None,
                run_dir: self.run_dir.clone(),
                disk_planned: engine.planned_path(&self.id)?,
                disk: None,
                policy: policy.as_str().into(),
                image: snap.row.key.image.clone(),
                created_at: 0,
            },
        )
        .context("recording the clone")?;
        self.recorded = true;

        let t = Instant::now();
        let slot = match slots.acquire(policy, &self.id) {
            Ok(s) => s,
            Err(SlotError::Empty(_)) => {
                let made = slots.maker()?.make(policy)?;
                slots.add_ready(made);
                slots.acquire(policy, &self.id)?
            }
            Err(e) => return Err(e.into()),
        };
        self.target.addr = SocketAddr::new(slot.outside().into(), 22);
        record::set_ip(&db, &self.id, slot.outside())?;
        self.slot = Some(slot.clone());
        self.timings.slot_ms = t.elapsed().as_millis() as u64;

        let t = Instant::now();
        let disk = engine
            .clone_for_vm(&snap.disk, &self.id)
            .context("cloning the snapshot's disk")?;
        self.disk = Some(disk.clone());
        record::set_disk(&db, &self.id, &disk)?;
        self.timings.disk_ms = t.elapsed().as_millis() as u64;

        std::fs::create_dir_all(&self.run_dir)
            .with_context(|| format!("creating {}", self.run_dir.display()))?;
        let m = &snap.machine;
        if m.workspace_mib > 0 {
            let drive = host.clone_drive(&self.id);
            self.drive = Some(drive.clone());
            crate::fsops::sparse_file(&drive, u64::from(m.workspace_mib) << 20)
                .with_context(|| format!("making {}", drive.display()))?;
        }
        let spec = VmSpec {
            id: self.id.clone(),
            vcpus: snap.row.key.vcpus,
            mem_mib: snap.row.key.mem_mib,
            kernel: m.kernel.clone(),
            initrd: m.initrd.clone(),
            cmdline: m.cmdline.clone(),
            root_disk: disk.path.clone(),
            tap: m.tap.clone(),
            mac: m.mac.clone(),
            run_dir: self.run_dir.clone(),
            boot: Boot::Snapshot(snap.files.clone()),
            extra_disk: self.drive.clone(),
        };
        let t = Instant::now();
        let engines = host.engines.clone();
        let kind = self.vmm;
        // The VMM opens the tap by name in the namespace it starts in: the slot's.
        let inst = slot::in_netns(Some(&slot.ns), move || {
            Ok(vmm::engine(kind, &engines).start(&spec))
        })
        .map_err(|e| anyhow::anyhow!("entering slot {}: {e}", slot.ns))??;
        self.timings.vmm_restore_ms = t.elapsed().as_millis() as u64;
        let pid = inst.pid();
        self.instance = Some(inst);
        record::set_vmm_pid(&db, &self.id, pid)?;
        Ok(())
    }

    /// Waits until the guest answers SSH at the slot's outside address, then gives it its own
    /// identity. The session stays open for the caller.
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        let session = ssh::wait_ready(&self.target, Instant::now() + timeout)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.console_tail()))?;
        self.timings.ssh_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        let inputs = FreshInputs::for_vm(&self.id)?;
        let script = refresh_script(&inputs.at(SystemTime::now()))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = session.exec(&script, &mut out, &mut err).await?;
        if exit != ssh::Exit::Code(0) {
            anyhow::bail!(
                "refreshing the clone's identity failed ({exit:?}): {}",
                String::from_utf8_lossy(&err).trim()
            );
        }
        self.timings.identity_ms = t.elapsed().as_millis() as u64;
        self.session = Some(session);
        Ok(())
    }

    /// Runs `command` (a shell command line) on the open session.
    pub async fn exec<O, E>(
        &self,
        command: &str,
        out: &mut O,
        err: &mut E,
    ) -> anyhow::Result<ssh::Exit>
    where
        O: tokio::io::AsyncWrite + Unpin,
        E: tokio::io::AsyncWrite + Unpin,
    {
        let s = self
            .session
            .as_ref()
            .context("the clone has no open session (call ready first)")?;
        Ok(s.exec(command, out, err).await?)
    }

    pub fn outside(&self) -> Option<std::net::Ipv4Addr> {
        self.slot.as_ref().map(Slot::outside)
    }

    pub fn vmm_pid(&self) -> Option<u32> {
        self.instance.as_ref().map(|i| i.pid())
    }

    /// `Some(reason)` once the VMM has died.
    pub fn vmm_exited(&mut self) -> Option<String> {
        self.instance.as_mut().and_then(|i| i.exited())
    }

    pub fn console_tail(&self) -> String {
        self.instance
            .as_ref()
            .map(|i| i.console_tail())
            .unwrap_or_default()
    }

    /// Keeps the clone running past this process, as [`crate::vm::Machine::keep`] keeps a
    /// booted VM: its row becomes `kept` (the next runtime re-adopts it), its slot stays in use
    /// (released with the VM by [`gc_vm`]), and the VMM, still this process's child, is reaped
    /// by the returned handle. The open session is closed by the caller first.
    pub fn keep(mut self) -> anyhow::Result<KeptMachine> {
        let db = self.host.db()?;
        record::set_kept(&db, &self.id).context("marking the clone kept")?;
        let mut inst = self
            .instance
            .take()
            .with_context(|| format!("clone {} has no running VMM", self.id))?;
        let pid = inst.pid();
        inst.detach();
        drop(inst);
        self.session = None;
        self.finished = true;
        Ok(KeptMachine::from_child(
            self.id.clone(),
            self.outside(),
            String::new(),
            pid,
        ))
    }

    /// Tears everything down in reverse order. Returns what could not be removed.
    pub fn destroy(&mut self) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        // The session's connection is dropped (not closed politely): the VM is going away.
        self.session = None;
        let mut errors = Vec::new();
        if let Some(mut inst) = self.instance.take() {
            if let Err(e) = inst.kill() {
                errors.push(e.to_string());
            }
        }
        if let Some(slot) = self.slot.take() {
            if let Err(e) = self.slots.destroy(&slot) {
                errors.push(format!("releasing slot {}: {e}", slot.ns));
            }
        }
        if let Some(d) = self.disk.take() {
            match self.host.disk_engine_for(&d) {
                Some(engine) => {
                    if let Err(e) = engine.destroy(&d) {
                        errors.push(e.to_string());
                    }
                }
                None => errors.push(format!("no engine {:?} for {}", d.engine, d.path.display())),
            }
        }
        errors.extend(
            vmm::remove_leftovers(&self.host.engines, &self.id)
                .into_iter()
                .map(|e| e.to_string()),
        );
        match std::fs::remove_dir_all(&self.run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", self.run_dir.display())),
        }
        if let Some(d) = self.drive.take() {
            match std::fs::remove_file(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", d.display())),
            }
        }
        if self.recorded && errors.is_empty() {
            match self.host.db() {
                Ok(db) => {
                    if let Err(e) = record::delete(&db, &self.id) {
                        errors.push(e.to_string());
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        errors
    }
}

impl Drop for ClonedVm {
    fn drop(&mut self) {
        for e in self.destroy() {
            tracing::warn!(vm = %self.id, "clone cleanup failed (run `fireclaw gc`): {e}");
        }
    }
}

/// Removes one VM as `vm::gc` does and then the slot it held, if it was a clone: what removing
/// a kept VM means wherever it is done (an agent's stop, its death, the runtime's supervisor).
pub fn gc_vm(host: &Host, id: &str) -> anyhow::Result<crate::vm::GcReport> {
    let mut report = crate::vm::gc(host, false, Some(id))?;
    if report.errors.is_empty() {
        if let Err(e) = release_slots_of_gone_vms(host) {
            report
                .errors
                .push(format!("releasing its clone slot: {e:#}"));
        }
    }
    Ok(report)
}

/// Releases the slots held by VMs that no longer have a row (after `vm::gc` removed them): the
/// slot rows name their VM. Returns the namespaces released.
pub fn release_slots_of_gone_vms(host: &Host) -> anyhow::Result<Vec<String>> {
    release_slots_of_gone_vms_in(host, release_config(host)?)
}

/// [`release_slots_of_gone_vms`] for slots made with `cfg` (its namespace prefix and host).
pub fn release_slots_of_gone_vms_in(host: &Host, cfg: SlotConfig) -> anyhow::Result<Vec<String>> {
    let db = host.db()?;
    let live: std::collections::HashSet<String> =
        record::list(&db)?.into_iter().map(|r| r.id).collect();
    let mut released = Vec::new();
    let rows = slot::store::list(&db)?;
    if rows.is_empty() {
        return Ok(released);
    }
    let mut maker = SlotMaker::new(host.db()?, cfg.clone())?;
    for r in rows {
        let gone = r.state == Some(slot::SlotState::InUse)
            && r.vm_id.as_ref().is_some_and(|id| !live.contains(id));
        if !gone {
            continue;
        }
        let Some(addrs) = cfg.range.addrs(r.index) else {
            continue;
        };
        let s = Slot {
            index: r.index,
            ns: r.ns.clone(),
            host_veth: r.host_veth.clone(),
            addrs,
            policy: r.policy.unwrap_or(Policy::None),
        };
        maker.destroy(&s)?;
        released.push(r.ns);
    }
    Ok(released)
}

/// The slot configuration for releasing slots: the snapshot network only shapes new slots;
/// releasing needs the names and the range.
fn release_config(host: &Host) -> anyhow::Result<SlotConfig> {
    let bridge = Ipv4Cidr::parse(&host.config.network.address).map_err(anyhow::Error::msg)?;
    let guest = first_other_host(&bridge).context("the bridge network has no room")?;
    Ok(SlotConfig::from_config(
        &host.config,
        SnapshotNet::new("fc-release", bridge, guest).map_err(anyhow::Error::msg)?,
    )?)
}

/// At the runtime's start, before it makes any slot: removes every slot (row, namespace, host
/// veth) except those in use by a VM that still has a row.
pub fn reconcile_slots(host: &Host) -> anyhow::Result<slot::ReconcileReport> {
    let db = host.db()?;
    let live: std::collections::HashSet<String> =
        record::list(&db)?.into_iter().map(|r| r.id).collect();
    let mut maker = SlotMaker::new(db, release_config(host)?)?;
    Ok(maker.reconcile(&Default::default(), |id| live.contains(id))?)
}

/// A host address of `net` other than its own address (for a placeholder guest address).
fn first_other_host(net: &Ipv4Cidr) -> Option<std::net::Ipv4Addr> {
    let base = u32::from(net.network());
    (1..4u32)
        .map(|i| std::net::Ipv4Addr::from(base + i))
        .find(|a| *a != net.addr && net.contains(*a) && *a != net.broadcast())
}
