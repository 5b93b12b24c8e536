//! One machine's life: lease an address, clone the disk, make the tap, apply the policy, start the
//! VMM, wait for SSH, run commands, and tear all of it down again on every exit path.
//!
//! Ordering is what makes crashes recoverable: the `vms` row naming every resource (tap, run dir,
//! planned disk path) is written first, each resource is recorded as it is made, and teardown
//! removes them in reverse and is idempotent. [`Machine`]'s `Drop` tears down whatever a failed
//! or cancelled run left; [`gc`] does the same from the database after fireclaw itself died.

pub mod identity;
pub mod image;
pub mod record;
pub mod ssh;
pub mod supervise;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::Config;
use crate::net::netlink::Netlink;
use crate::net::policy::{self, Policy, VmRules};
use crate::net::{lease, tap, Ipv4Cidr};
use crate::root::RootPrefix;
use crate::state::Db;
use crate::storage::clone::CloneEngine;
use crate::storage::thin::adapter::ThinDisks;
use crate::storage::{DiskEngine, VmDisk};
use crate::vmm::{self, Boot, Instance, VmSpec, VmmKind};
use image::ImageSpec;
use record::VmRecord;

/// Host-side context every machine needs.
#[derive(Clone)]
pub struct Host {
    pub root: RootPrefix,
    pub config: Config,
    pub db_path: PathBuf,
    /// How the VMM engines are run (binaries, the jailer); built by the command.
    pub engines: vmm::EngineOptions,
}

impl Host {
    pub fn db(&self) -> anyhow::Result<Db> {
        Db::open(&self.db_path).with_context(|| "opening the state database")
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root
            .host(&self.config.paths.run_dir)
            .join("vms")
            .join(id)
    }

    /// A clone's own second drive (an agent snapshot's workspace drive): beside the copy
    /// engine's disks, on the filesystem of the agents' workspaces, so that a workspace can be
    /// renamed onto it. Removed with the VM (by `gc` too) unless it became a workspace.
    pub fn clone_drive(&self, id: &str) -> PathBuf {
        self.root
            .host(&self.config.paths.state_dir)
            .join("disks")
            .join(format!("{id}.vdb"))
    }

    /// The reflink/sparse-copy engine: works everywhere.
    pub fn disk_engine(&self) -> Box<dyn DiskEngine> {
        Box::new(CloneEngine::new(
            self.root.host(&self.config.paths.state_dir).join("disks"),
        ))
    }

    /// The engine for a VM booting `image`: a thin snapshot when the thin pool holds that image
    /// (O(1) in its size), else a reflink/sparse copy.
    pub fn disk_engine_for_image(&self, image: &Path) -> Box<dyn DiskEngine> {
        let thin = ThinDisks::new(self.root.clone(), &self.config);
        if self.config.thinpool.enabled && thin.serves(image) {
            Box::new(thin)
        } else {
            self.disk_engine()
        }
    }

    /// The engine that made `disk`, by the name recorded with it.
    pub fn disk_engine_for(&self, disk: &VmDisk) -> Option<Box<dyn DiskEngine>> {
        let engines: [Box<dyn DiskEngine>; 2] = [
            self.disk_engine(),
            Box::new(ThinDisks::new(self.root.clone(), &self.config)),
        ];
        engines.into_iter().find(|e| e.name() == disk.engine)
    }

    pub fn key_path(&self) -> PathBuf {
        self.root
            .host(&self.config.paths.config_dir)
            .join("id_ed25519")
    }

    pub fn bridge_cidr(&self) -> anyhow::Result<Ipv4Cidr> {
        Ipv4Cidr::parse(&self.config.network.address).map_err(anyhow::Error::msg)
    }
}

/// What to run.
#[derive(Clone)]
pub struct LaunchOptions {
    pub vmm: VmmKind,
    pub vcpus: u8,
    pub mem_mib: u32,
    pub policy: Policy,
    pub image: ImageSpec,
    pub boot: Boot,
    /// A second disk for the guest (`/dev/vdb`), used as it is (not cloned): an agent's workspace.
    pub extra_disk: Option<PathBuf>,
}

/// The port of `[ollama] url` when it points at the bridge address (where guests reach it);
/// `None` for an Ollama elsewhere, which `local` does not open.
pub fn ollama_port_on(url: &str, bridge: std::net::Ipv4Addr) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, _) = rest.split('/').next()?.rsplit_once(':')?;
    (host.parse::<std::net::Ipv4Addr>().ok()? == bridge)
        .then(|| crate::values::port_of_url(url))
        .flatten()
}

/// A fresh VM id: 12 hex digits, random, so concurrent runs never pick the same names.
pub fn new_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

/// The guest's kernel command line. `ip=` in the kernel's own format
/// (`client::gateway:netmask:hostname:device:autoconf`), which a kernel with CONFIG_IP_PNP applies
/// itself and fireclaw's guest init applies otherwise.
pub fn kernel_cmdline(ip: Ipv4Addr, bridge: &Ipv4Cidr, vmm: VmmKind, extra: &str) -> String {
    let mask = Ipv4Addr::from(bridge.mask());
    // console on the first serial port (captured for error messages); reboot=k and panic=1 turn a
    // guest crash into a VMM exit fireclaw notices; trust_cpu seeds the RNG at once so the SSH
    // server does not stall on entropy.
    let mut s = format!(
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw random.trust_cpu=on quiet ip={ip}::{}:{mask}::eth0:off",
        bridge.addr
    );
    if vmm == VmmKind::Qemu {
        // Debian kernels can hang calibrating the TSC under emulation; tell them its rate.
        if let Some(khz) = host_tsc_khz() {
            s.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

/// The host's TSC frequency in kHz (from /proc/cpuinfo), for `tsc_early_khz=`: under TCG a guest
/// kernel otherwise can hang calibrating it.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

/// A machine and everything it holds. Every method, `Drop` included, is safe on any thread, a
/// tokio worker among them (netlink runs on its own connection thread); `create` and `destroy`
/// block for as long as the work takes, so async callers run them under `spawn_blocking`.
pub struct Machine {
    host: Host,
    /// The connection of the namespace the machine was created in: its tap lives there, whichever
    /// thread tears it down.
    net: Option<Netlink>,
    pub id: String,
    pub ip: Option<Ipv4Addr>,
    pub tap: String,
    pub run_dir: PathBuf,
    pub disk: Option<VmDisk>,
    pub policy: Policy,
    pub image: ImageSpec,
    instance: Option<Box<dyn Instance>>,
    recorded: bool,
    tap_made: bool,
    finished: bool,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub clone_ms: u64,
    pub vmm_start_ms: u64,
    pub boot_to_ssh_ms: u64,
}

impl Machine {
    /// Makes every resource and starts the VMM. On error, whatever was made is torn down before
    /// the error is returned.
    pub fn create(host: &Host, opts: &LaunchOptions) -> anyhow::Result<Machine> {
        let id = new_id();
        let mut m = Machine {
            host: host.clone(),
            net: None,
            tap: tap::tap_name(&id),
            run_dir: host.run_dir(&id),
            id,
            ip: None,
            disk: None,
            policy: opts.policy,
            image: opts.image.clone(),
            instance: None,
            recorded: false,
            tap_made: false,
            finished: false,
            timings: Timings::default(),
        };
        match m.build(opts) {
            Ok(()) => Ok(m),
            Err(e) => {
                let cleanup = m.destroy();
                if cleanup.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(format!("and cleanup failed: {}", cleanup.join("; "))))
                }
            }
        }
    }

    fn build(&mut self, opts: &LaunchOptions) -> anyhow::Result<()> {
        let host = self.host.clone();
        let db = host.db()?;
        let engine = host.disk_engine_for_image(&opts.image.rootfs);
        let bridge = host.bridge_cidr()?;
        record::insert(
            &db,
            &VmRecord {
                id: self.id.clone(),
                vmm: opts.vmm.as_str().into(),
                state: "creating".into(),
                owner_pid: Some(std::process::id() as i64),
                owner_start: record::process_start_time(std::process::id()),
                vmm_pid: None,
                tap: self.tap.clone(),
                ip: None,
                run_dir: self.run_dir.clone(),
                disk_planned: engine.planned_path(&self.id)?,
                disk: None,
                policy: opts.policy.as_str().into(),
                image: opts.image.name.clone(),
                created_at: 0,
            },
        )
        .context("recording the VM")?;
        self.recorded = true;

        let l = lease::allocate(&db, &bridge, &self.id, host.config.pool.max_vms)?;
        self.ip = Some(l.ip);
        record::set_ip(&db, &self.id, l.ip)?;

        let t = Instant::now();
        let disk = engine
            .clone_for_vm(&opts.image.rootfs, &self.id)
            .context("cloning the root disk")?;
        self.timings.clone_ms = t.elapsed().as_millis() as u64;
        // Held before it is recorded: if recording fails, destroy() still removes the disk.
        self.disk = Some(disk.clone());
        record::set_disk(&db, &self.id, &disk)?;

        std::fs::create_dir_all(&self.run_dir)
            .with_context(|| format!("creating {}", self.run_dir.display()))?;

        let net = Netlink::shared().context("opening netlink")?;
        self.net = Some(net.clone());
        self.tap_made = true;
        net.block_on(tap::create_in(&net, &self.tap, &host.config.network.bridge))?;
        policy::install(&VmRules {
            table: &host.config.network.nft_table,
            bridge: &host.config.network.bridge,
            bridge_ip: bridge.addr,
            irc_port: host.config.irc.port,
            ollama_port: ollama_port_on(&host.config.ollama.url, bridge.addr),
            tap: &self.tap,
            guest_ip: l.ip,
            policy: opts.policy,
        })?;

        let spec = VmSpec {
            id: self.id.clone(),
            vcpus: opts.vcpus,
            mem_mib: opts.mem_mib,
            kernel: opts.image.kernel.clone(),
            initrd: opts.image.initrd.clone(),
            cmdline: kernel_cmdline(l.ip, &bridge, opts.vmm, &opts.image.cmdline_extra),
            root_disk: disk.path.clone(),
            extra_disk: opts.extra_disk.clone(),
            tap: self.tap.clone(),
            mac: lease::mac_for(l.ip),
            run_dir: self.run_dir.clone(),
            boot: opts.boot.clone(),
        };
        let t = Instant::now();
        let inst = vmm::engine(opts.vmm, &host.engines).start(&spec)?;
        self.timings.vmm_start_ms = t.elapsed().as_millis() as u64;
        record::set_vmm_pid(&db, &self.id, inst.pid())?;
        self.instance = Some(inst);
        Ok(())
    }

    pub fn ssh_target(&self) -> anyhow::Result<ssh::Target> {
        let ip = self.ip.context("VM has no address")?;
        let key = ssh::load_private_key(&self.host.key_path())?;
        Ok(ssh::Target {
            addr: SocketAddr::new(ip.into(), 22),
            user: self.image.user.clone(),
            key: Arc::new(key),
            host_key: self.image.host_key.clone(),
        })
    }

    /// `Some(reason)` once the VMM process has died.
    pub fn vmm_exited(&mut self) -> Option<String> {
        self.instance.as_mut().and_then(|i| i.exited())
    }

    pub fn console_tail(&self) -> String {
        self.instance
            .as_ref()
            .map(|i| i.console_tail())
            .unwrap_or_default()
    }

    pub fn instance(&mut self) -> Option<&mut (dyn Instance + 'static)> {
        self.instance.as_deref_mut()
    }

    /// Leaves the machine running beyond this handle; `fireclaw gc --vm ID` removes it. The VMM
    /// stays fireclaw's child: the returned [`KeptMachine`] reaps it, so a service that keeps
    /// machines for hours holds no zombie and no open monitor socket. On error the machine is
    /// destroyed instead (the error names what teardown could not remove, if anything).
    pub fn keep(mut self) -> anyhow::Result<KeptMachine> {
        let marked = self
            .host
            .db()
            .and_then(|db| Ok(record::set_kept(&db, &self.id)?));
        let inst = match (marked, self.instance.take()) {
            (Ok(()), Some(inst)) => inst,
            (marked, inst) => {
                self.instance = inst;
                let e = marked
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("VM {} has no running VMM", self.id));
                let cleanup = self.destroy();
                return Err(if cleanup.is_empty() {
                    e
                } else {
                    e.context(format!("and cleanup failed: {}", cleanup.join("; ")))
                });
            }
        };
        let mut inst = inst;
        let pid = inst.pid();
        inst.detach();
        // Closes the monitor connection; detached, the VMM is not killed.
        drop(inst);
        self.finished = true;
        Ok(KeptMachine {
            id: self.id.clone(),
            ip: self.ip,
            tap: self.tap.clone(),
            pid,
            reaped: false,
        })
    }

    /// Tears everything down, in reverse order of creation. Returns what could not be removed.
    pub fn destroy(&mut self) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut errors = Vec::new();
        if let Some(mut inst) = self.instance.take() {
            if let Err(e) = inst.kill() {
                errors.push(e.to_string());
            }
        }
        let db = match self.host.db() {
            Ok(db) => Some(db),
            Err(e) => {
                errors.push(format!("{e:#}"));
                None
            }
        };
        teardown(
            &self.host,
            self.net.as_ref(),
            &Resources {
                id: &self.id,
                tap: self.tap_made.then_some(self.tap.as_str()),
                run_dir: &self.run_dir,
                disk: self.disk.as_ref(),
                planned_disk: None,
            },
            db.as_ref().filter(|_| self.recorded),
            &mut errors,
        );
        errors
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for e in self.destroy() {
            tracing::warn!(vm = %self.id, "cleanup failed (run `fireclaw gc`): {e}");
        }
    }
}

/// A machine left running by [`Machine::keep`]: its resources stay recorded (state `kept`) for
/// `gc`; this handle only owns the VMM process, as fireclaw's child, and reaps it.
#[derive(Debug)]
pub struct KeptMachine {
    pub id: String,
    pub ip: Option<Ipv4Addr>,
    pub tap: String,
    pid: u32,
    reaped: bool,
}

impl KeptMachine {
    /// A kept VM whose VMM (`pid`, a child of this process) was started elsewhere than
    /// [`Machine::keep`]: a clone restored from a snapshot.
    pub fn from_child(id: String, ip: Option<Ipv4Addr>, tap: String, pid: u32) -> KeptMachine {
        KeptMachine {
            id,
            ip,
            tap,
            pid,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(description)` once the VMM has exited; reaps it.
    pub fn exited(&mut self) -> Option<String> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if self.reaped {
            return Some("reaped".into());
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(WaitStatus::Exited(_, c)) => {
                self.reaped = true;
                Some(format!("exit code {c}"))
            }
            Ok(WaitStatus::Signaled(_, s, _)) => {
                self.reaped = true;
                Some(format!("killed by {s}"))
            }
            Ok(_) => None,
            // ECHILD: not (or no longer) our child; someone else reaped it.
            Err(e) => {
                self.reaped = true;
                Some(format!("not ours to wait for ({e})"))
            }
        }
    }
}

impl Drop for KeptMachine {
    /// Not killed (it is kept), and not left a zombie either: a thread waits for it. When
    /// fireclaw exits first, init inherits and reaps it.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{}", self.pid))
            .spawn(move || {
                let _ = nix::sys::wait::waitpid(pid, None);
            });
        if let Err(e) = spawned {
            tracing::warn!(vm = %self.id, "cannot start a thread to reap VMM {}: {e}", self.pid);
        }
    }
}

struct Resources<'a> {
    id: &'a str,
    tap: Option<&'a str>,
    run_dir: &'a Path,
    disk: Option<&'a VmDisk>,
    /// For a crash mid-clone: the file the clone engine was writing.
    planned_disk: Option<&'a Path>,
}

fn teardown(
    host: &Host,
    net: Option<&Netlink>,
    r: &Resources,
    db: Option<&Db>,
    errors: &mut Vec<String>,
) {
    if let Some(t) = r.tap {
        if let Err(e) = policy::remove(&host.config.network.nft_table, t) {
            errors.push(format!("{e:#}"));
        }
        let deleted = match net {
            Some(nl) => nl.block_on(tap::delete_in(nl, t)),
            None => tap::delete(t),
        };
        if let Err(e) = deleted {
            errors.push(e.to_string());
        }
    }
    match r.disk {
        Some(d) => match host.disk_engine_for(d) {
            Some(engine) => {
                if let Err(e) = engine.destroy(d) {
                    errors.push(e.to_string());
                }
            }
            None => errors.push(format!(
                "disk {} was made by engine {:?}, which this fireclaw does not have",
                d.path.display(),
                d.engine
            )),
        },
        None => {
            // Only the copy engine's planned path is a plain file of ours; a thin disk's is a
            // device node that the thin pool's own gc deals with.
            let copy_dir = host.root.host(&host.config.paths.state_dir).join("disks");
            if let Some(p) = r.planned_disk.filter(|p| p.starts_with(&copy_dir)) {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => errors.push(format!("removing {}: {e}", p.display())),
                }
            }
        }
    }
    match std::fs::remove_file(host.clone_drive(r.id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!(
            "removing {}: {e}",
            host.clone_drive(r.id).display()
        )),
    }
    errors.extend(
        vmm::remove_leftovers(&host.engines, r.id)
            .into_iter()
            .map(|e| e.to_string()),
    );
    match std::fs::remove_dir_all(r.run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("removing {}: {e}", r.run_dir.display())),
    }
    if let Some(db) = db {
        if let Err(e) = lease::release(db, r.id) {
            errors.push(e.to_string());
        }
        // The row goes last and only when everything else went: a failed teardown stays visible
        // to `status` and `gc`.
        if errors.is_empty() {
            if let Err(e) = record::delete(db, r.id) {
                errors.push(e.to_string());
            }
        }
    }
}

/// Processes whose command line mentions `needle` (a VM's run dir): the VMM, even if its pid was
/// never recorded because fireclaw died between spawning it and writing the pid.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

fn kill_and_wait(pid: u32) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGKILL);
    let start = Instant::now();
    // Not our child (fireclaw that spawned it is gone): poll until the kernel has removed it.
    while Path::new(&format!("/proc/{pid}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        if zombie {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("process {pid} did not die after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What `gc` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub kept_running: Vec<String>,
    pub errors: Vec<String>,
    pub orphan_leases: usize,
}

/// Cleans up VMs whose owner is gone. `all` also removes VMs whose owner lives and kept VMs;
/// `only` restricts to one VM id.
pub fn gc(host: &Host, all: bool, only: Option<&str>) -> anyhow::Result<GcReport> {
    let db = host.db()?;
    let mut report = GcReport::default();
    // One connection for the whole sweep; without one, each tap is deleted over its own.
    let net = Netlink::open().ok();
    for r in record::list(&db)? {
        if only.is_some_and(|id| id != r.id) {
            continue;
        }
        // A kept VM is alive while a process still mentions its run dir (its VMM).
        let kept_alive =
            r.state == "kept" && !processes_mentioning(&r.run_dir.to_string_lossy()).is_empty();
        let collect = all || only.is_some() || (!record::owner_alive(&r) && !kept_alive);
        if !collect {
            if r.state == "kept" {
                report.kept_running.push(r.id.clone());
            }
            continue;
        }
        let mut errors = Vec::new();
        // The run dir is unique to this VM, so a process mentioning it is this VM's VMM.
        for pid in processes_mentioning(&r.run_dir.to_string_lossy()) {
            if let Err(e) = kill_and_wait(pid) {
                errors.push(e);
            }
        }
        teardown(
            host,
            net.as_ref(),
            &Resources {
                id: &r.id,
                tap: Some(&r.tap),
                run_dir: &r.run_dir,
                disk: r.disk.as_ref(),
                planned_disk: Some(&r.disk_planned),
            },
            Some(&db),
            &mut errors,
        );
        if errors.is_empty() {
            report.removed.push(r.id.clone());
        } else {
            report
                .errors
                .extend(errors.into_iter().map(|e| format!("VM {}: {e}", r.id)));
        }
    }
    if only.is_none() {
        // Leases whose VM row is gone (a crash between the two deletes).
        report.orphan_leases = db.conn().execute(
            "DELETE FROM leases WHERE vm_id NOT IN (SELECT id FROM vms)",
            [],
        )?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_on_the_bridge_gets_its_port_opened_and_nothing_else_does() {
        let bridge = std::net::Ipv4Addr::new(172, 16, 0, 1);
        assert_eq!(
            ollama_port_on("http://172.16.0.1:11434", bridge),
            Some(11434)
        );
        assert_eq!(
            ollama_port_on("http://172.16.0.1:8080/", bridge),
            Some(8080)
        );
        for other in [
            "http://10.0.0.1:11434",
            "https://172.16.0.1:11434",
            "http://172.16.0.1",
            "",
            "http://172.16.0.1:x",
        ] {
            assert_eq!(ollama_port_on(other, bridge), None, "{other}");
        }
    }

    #[test]
    fn disks_are_destroyed_by_the_engine_that_made_them_and_unimported_images_get_copies() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host {
            root: RootPrefix::new(dir.path()),
            config: Config::default(),
            db_path: dir.path().join("state.db"),
            engines: vmm::EngineOptions::installed(dir.path()),
        };
        let disk = |engine: &str| VmDisk {
            engine: engine.into(),
            path: "/x".into(),
            method: crate::storage::CloneMethod::SparseCopy,
            handle: String::new(),
        };
        assert_eq!(
            host.disk_engine_for(&disk("thin")).map(|e| e.name()),
            Some("thin")
        );
        assert_eq!(
            host.disk_engine_for(&disk("clone")).map(|e| e.name()),
            Some("clone")
        );
        assert!(host.disk_engine_for(&disk("zfs")).is_none());
        // No pool recorded: the clone engine, whatever the image.
        assert_eq!(
            host.disk_engine_for_image(Path::new("/img/base.ext4"))
                .name(),
            "clone"
        );
    }

    #[test]
    fn ids_are_distinct_and_name_safe() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 12);
            assert!(crate::storage::check_id(id).is_ok());
            assert!(crate::net::validate_ifname(&tap::tap_name(id)).is_ok());
        }
    }

    #[test]
    fn cmdline_carries_guest_addressing() {
        let b = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let c = kernel_cmdline(
            Ipv4Addr::new(172, 16, 0, 7),
            &b,
            VmmKind::Firecracker,
            " init=/sbin/init ",
        );
        assert!(
            c.contains("ip=172.16.0.7::172.16.0.1:255.255.255.0::eth0:off"),
            "{c}"
        );
        assert!(c.ends_with(" init=/sbin/init"));
        assert!(!c.contains("tsc_early_khz"));
    }

    #[test]
    fn gc_of_a_crashed_creation_removes_planned_disk_lease_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.network.nft_table = "fireclaw_test_absent".into();
        let host = Host {
            root: RootPrefix::new(dir.path()),
            config,
            db_path: dir.path().join("state.db"),
            engines: vmm::EngineOptions::installed(dir.path()),
        };
        let db = host.db().unwrap();
        let id = "deadbeef0001";
        let planned = host.disk_engine().planned_path(id).unwrap();
        std::fs::create_dir_all(planned.parent().unwrap()).unwrap();
        std::fs::write(&planned, b"half a clone").unwrap();
        let run_dir = host.run_dir(id);
        std::fs::create_dir_all(&run_dir).unwrap();
        record::insert(
            &db,
            &VmRecord {
                id: id.into(),
                vmm: "qemu".into(),
                state: "creating".into(),
                // A pid that cannot exist: the owner is dead.
                owner_pid: Some(i64::from(i32::MAX)),
                owner_start: Some(1),
                vmm_pid: None,
                tap: "fc-gc-test-x".into(),
                ip: None,
                run_dir: run_dir.clone(),
                disk_planned: planned.clone(),
                disk: None,
                policy: "full".into(),
                image: "x".into(),
                created_at: 0,
            },
        )
        .unwrap();
        lease::allocate(&db, &host.bridge_cidr().unwrap(), id, 32).unwrap();
        lease::allocate(&db, &host.bridge_cidr().unwrap(), "orphan", 32).unwrap();
        let report = gc(&host, false, None).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.removed, vec![id.to_string()]);
        assert_eq!(report.orphan_leases, 1);
        assert!(!planned.exists() && !run_dir.exists());
        assert!(lease::list(&db).unwrap().is_empty());
        assert!(record::list(&db).unwrap().is_empty());
    }
}
