//! The dm-thin disk engine: a thin pool on two loop-attached sparse files, one thin volume per
//! image, and one thin snapshot per VM (O(1) in the image's size).
//!
//! The state database is the source of truth: the kernel's devices (loop and dm) do not survive a
//! reboot, so [`ThinEngine::ensure_active`] rebuilds them from the `thin_pools` row whenever a
//! command needs the pool. Every kernel object is recorded before it is created, so a crash leaves
//! a row that [`ThinEngine::gc`] can finish off.
//!
//! Talks to device-mapper through its ioctl interface (the `devicemapper` crate) and never through
//! `dmsetup`, and names devices by `major:minor` in tables, so it works without udev (in a minimal
//! guest, a container, an initramfs).

pub mod adapter;
mod error;
mod loopback;
pub mod recorded;
pub mod store;
pub mod table;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devicemapper::{DevId, DmName, DmOptions, DmUuid, DM};
use nix::errno::Errno;

use crate::config::Config;
use crate::root::RootPrefix;
use crate::state::Db;
pub use error::{dm_errno, ThinError};
pub use loopback::loops_of;
use loopback::{attach_loop, detach_loops_of};
use store::{PoolRow, SnapshotRow, VolumeRow, VolumeState};
use table::{DevNo, PoolMessage};
pub use table::{PoolGeometry, PoolUsage};

/// dm names of fireclaw's devices start with this (plus the pool name), so teardown can find
/// everything that is ours and nothing that is not.
pub const DEFAULT_POOL_NAME: &str = "fireclaw";
/// Lock file inside the pool directory: one pool-changing operation at a time across processes.
const LOCK_FILE: &str = "pool.lock";
/// Chunk size for copying an image in; all-zero chunks are skipped so they use no pool space.
const COPY_CHUNK: usize = 1 << 20;

/// Where and how big the pool is: the config, resolved under the root prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Prefix of every dm device name (`<name>-pool`, `<name>-img-…`, `<name>-vm-…`).
    pub name: String,
    /// Directory of the sparse files and the lock (resolved host path).
    pub dir: PathBuf,
    pub geometry: PoolGeometry,
    pub max_used_percent: u8,
}

impl PoolSpec {
    pub fn from_config(root: &RootPrefix, config: &Config) -> Result<PoolSpec, ThinError> {
        PoolSpec::new(root, &config.paths.state_dir, &config.thinpool)
    }

    /// The pool under `state_dir` with the geometry and threshold of `t`.
    pub fn new(
        root: &RootPrefix,
        state_dir: &str,
        t: &crate::config::ThinPool,
    ) -> Result<PoolSpec, ThinError> {
        Ok(PoolSpec {
            name: DEFAULT_POOL_NAME.into(),
            dir: root.host(pool_dir(state_dir)),
            geometry: PoolGeometry::new(
                t.data_mib,
                t.metadata_mib,
                t.block_sectors,
                t.max_used_percent,
            )?,
            max_used_percent: t.max_used_percent,
        })
    }

    pub fn data_file(&self) -> PathBuf {
        self.dir.join("data.img")
    }

    pub fn metadata_file(&self) -> PathBuf {
        self.dir.join("metadata.img")
    }

    pub fn pool_dm_name(&self) -> String {
        format!("{}-pool", self.name)
    }

    fn image_dm_name(&self, image: &str, id: u64) -> String {
        format!("{}-img-{}-{id}", self.name, table::dm_name_part(image))
    }

    pub fn vm_dm_name(&self, vm_id: &str) -> String {
        format!("{}-vm-{}", self.name, table::dm_name_part(vm_id))
    }

    fn owns(&self, dm_name: &str) -> bool {
        dm_name.starts_with(&format!("{}-", self.name))
    }
}

/// The pool directory for a state directory (host path, not resolved).
pub fn pool_dir(state_dir: &str) -> String {
    format!("{}/pool", state_dir.trim_end_matches('/'))
}

/// One VM's root disk: a thin snapshot of its image's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    pub vm_id: String,
    /// Block device to hand to the VMM.
    pub path: PathBuf,
    pub dm_name: String,
    pub dev_id: u64,
    pub size_bytes: u64,
}

/// What [`ThinEngine::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub snapshots: Vec<String>,
    pub volumes: Vec<u64>,
}

/// Which disk engine this host uses, and why: `doctor` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChoice {
    Thin,
    ReflinkCopy { reason: String },
}

/// Decides between dm-thin and reflink/copy without changing anything.
pub fn choose_engine(config: &Config) -> EngineChoice {
    if !config.thinpool.enabled {
        return EngineChoice::ReflinkCopy {
            reason: "thinpool.enabled = false".into(),
        };
    }
    match probe_device_mapper() {
        Ok(()) => EngineChoice::Thin,
        Err(e) => EngineChoice::ReflinkCopy {
            reason: e.to_string(),
        },
    }
}

/// Device-mapper and the thin-pool target present (loaded, built in, or installable as modules).
/// Looks at files only, so it answers the same without root (dry-run must plan what root applies).
pub fn probe_device_mapper() -> Result<(), ThinError> {
    let dm = Path::new("/dev/mapper/control").exists()
        || Path::new("/sys/module/dm_mod").exists()
        || module_installed("dm-mod");
    if !dm {
        return Err(ThinError::NoDeviceMapper {
            detail: "no /dev/mapper/control and no dm-mod module for this kernel".into(),
        });
    }
    if Path::new("/sys/module/dm_thin_pool").exists() || module_installed("dm-thin-pool") {
        Ok(())
    } else {
        Err(ThinError::MissingTarget)
    }
}

/// Installed as a loadable module for the running kernel, or built into it.
fn module_installed(name: &str) -> bool {
    let Ok(release) =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned())
    else {
        return false;
    };
    let needle = format!("/{name}.ko");
    ["modules.dep", "modules.builtin"].iter().any(|list| {
        std::fs::read_to_string(format!("/lib/modules/{release}/{list}"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(':').next().is_some_and(|p| p.contains(&needle)))
    })
}

fn open_dm() -> Result<DM, ThinError> {
    DM::new().map_err(|e| ThinError::NoDeviceMapper {
        detail: format!("/dev/mapper/control: {e}"),
    })
}

/// No udev rules other than dm's own node handling: VM disks are not for the host's scanners
/// (blkid, LVM, automounters), and without udev running the crate skips udev sync entirely.
fn dm_options() -> DmOptions {
    DmOptions::private()
}

/// An exclusive lock on the pool directory, held for one operation. The kernel needs these
/// serialized: two attaches can race for the same free loop device (the "device or resource
/// busy" Ignite hit), and id allocation plus `create_snap` must not interleave between processes.
pub struct PoolLock {
    _lock: nix::fcntl::Flock<File>,
}

fn lock_pool(dir: &Path) -> Result<PoolLock, ThinError> {
    std::fs::create_dir_all(dir).map_err(|source| ThinError::Io {
        what: "creating pool directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ThinError::Io {
            what: "opening lock",
            path: path.clone(),
            source,
        })?;
    let lock =
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            ThinError::Io {
                what: "locking",
                path,
                source: e.into(),
            }
        })?;
    Ok(PoolLock { _lock: lock })
}

pub struct ThinEngine<'a> {
    db: &'a Db,
    spec: PoolSpec,
    dm: DM,
}

impl<'a> ThinEngine<'a> {
    /// Opens device-mapper; fails with [`ThinError::NoDeviceMapper`] on hosts without it.
    pub fn new(db: &'a Db, spec: PoolSpec) -> Result<Self, ThinError> {
        Ok(ThinEngine {
            db,
            spec,
            dm: open_dm()?,
        })
    }

    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    fn lock(&self) -> Result<PoolLock, ThinError> {
        lock_pool(&self.spec.dir)
    }

    fn pool_row(&self) -> Result<PoolRow, ThinError> {
        store::pool(self.db, &self.spec.name)?.ok_or_else(|| ThinError::NotProvisioned {
            name: self.spec.name.clone(),
        })
    }

    /// Creates the sparse files, loop devices and pool, and records it; a no-op (beyond
    /// re-activation) when the pool exists. Idempotent, and safe to re-run after an interruption:
    /// files without a database row were never used and are made afresh.
    pub fn create_pool(&self) -> Result<(), ThinError> {
        let _lock = self.lock()?;
        if store::pool(self.db, &self.spec.name)?.is_some() {
            return self.activate_locked().map(drop);
        }
        let g = self.spec.geometry;
        // A half-created pool from an interrupted run: nothing in it is recorded, so start over.
        self.remove_owned_devices()?;
        for (path, sectors) in [
            (self.spec.metadata_file(), g.metadata_sectors),
            (self.spec.data_file(), g.data_sectors),
        ] {
            detach_loops_of(&path)?;
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| ThinError::Io {
                    what: "creating",
                    path: path.clone(),
                    source,
                })?;
            // Sparse: the pool takes disk space only as VMs write.
            file.set_len(sectors * 512)
                .map_err(|source| ThinError::Io {
                    what: "sizing",
                    path: path.clone(),
                    source,
                })?;
        }
        let row = PoolRow {
            name: self.spec.name.clone(),
            data_file: self.spec.data_file().to_string_lossy().into_owned(),
            metadata_file: self.spec.metadata_file().to_string_lossy().into_owned(),
            data_sectors: g.data_sectors,
            metadata_sectors: g.metadata_sectors,
            block_sectors: g.block_sectors,
            low_water_blocks: g.low_water_blocks,
        };
        self.start_pool(&row)?;
        store::insert_pool(self.db, &row)?;
        Ok(())
    }

    /// Makes sure the pool device exists, re-attaching the loop devices and reloading the pool
    /// table from the state database after a reboot. Returns true when it had to re-activate.
    pub fn ensure_active(&self) -> Result<bool, ThinError> {
        if self.device_exists(&self.spec.pool_dm_name())? {
            return Ok(false);
        }
        let _lock = self.lock()?;
        self.activate_locked()
    }

    fn activate_locked(&self) -> Result<bool, ThinError> {
        if self.device_exists(&self.spec.pool_dm_name())? {
            return Ok(false);
        }
        let row = self.pool_row()?;
        for f in [&row.data_file, &row.metadata_file] {
            if !Path::new(f).is_file() {
                return Err(ThinError::PoolFileMissing { path: f.into() });
            }
        }
        self.start_pool(&row)?;
        Ok(true)
    }

    /// Attaches both files and loads the pool table. The loop devices are attached with
    /// autoclear and kept open here until the pool holds them, so removing the pool releases them
    /// and a crash in between leaks nothing.
    fn start_pool(&self, row: &PoolRow) -> Result<(), ThinError> {
        let meta = attach_loop(Path::new(&row.metadata_file))?;
        let data = attach_loop(Path::new(&row.data_file))?;
        let g = PoolGeometry {
            data_sectors: row.data_sectors,
            metadata_sectors: row.metadata_sectors,
            block_sectors: row.block_sectors,
            low_water_blocks: row.low_water_blocks,
        };
        let line = table::pool_table(meta.devno, data.devno, &g);
        self.create_device(&self.spec.pool_dm_name(), "pool", &line)
            .map_err(|e| match e {
                ThinError::Dm { ref source, .. }
                    if dm_errno(source) == Some(Errno::EINVAL) && !self.has_thin_target() =>
                {
                    ThinError::MissingTarget
                }
                other => other,
            })?;
        drop((meta, data));
        Ok(())
    }

    fn has_thin_target(&self) -> bool {
        self.dm
            .list_versions()
            .map(|v| v.iter().any(|(n, ..)| n == "thin-pool"))
            .unwrap_or(false)
    }

    fn device_exists(&self, name: &str) -> Result<bool, ThinError> {
        let dm_name = DmName::new(name).map_err(|e| ThinError::dm("name", name, e))?;
        match self.dm.device_info(&DevId::Name(dm_name)) {
            Ok(_) => Ok(true),
            Err(e) if dm_errno(&e) == Some(Errno::ENXIO) => Ok(false),
            Err(e) => Err(ThinError::dm("info", name, e)),
        }
    }

    /// Creates a dm device with one table line and resumes it; removes it again if that fails.
    fn create_device(
        &self,
        name: &str,
        kind: &str,
        line: &table::TableLine,
    ) -> Result<DevNo, ThinError> {
        let dm_name = DmName::new(name).map_err(|e| ThinError::dm("name", name, e))?;
        let uuid_text = format!("FIRECLAW-{kind}-{name}");
        let uuid = DmUuid::new(&uuid_text).map_err(|e| ThinError::dm("uuid", name, e))?;
        let id = DevId::Name(dm_name);
        let info = self
            .dm
            .device_create(dm_name, Some(uuid), dm_options())
            .map_err(|e| ThinError::dm("create", name, e))?;
        let loaded = self
            .dm
            .table_load(&id, &[line.as_tuple()], dm_options())
            .map_err(|e| ThinError::dm(format!("load table `{line}`"), name, e))
            .and_then(|_| {
                self.dm
                    .device_suspend(&id, dm_options())
                    .map_err(|e| ThinError::dm("resume", name, e))
            });
        if let Err(e) = loaded {
            let _ = self.dm.device_remove(&id, dm_options());
            return Err(e);
        }
        let dev = info.device();
        Ok(DevNo {
            major: dev.major,
            minor: dev.minor,
        })
    }

    fn remove_device(&self, name: &str) -> Result<(), ThinError> {
        let dm_name = DmName::new(name).map_err(|e| ThinError::dm("name", name, e))?;
        match self.dm.device_remove(&DevId::Name(dm_name), dm_options()) {
            Ok(_) => Ok(()),
            Err(e) if dm_errno(&e) == Some(Errno::ENXIO) => Ok(()),
            Err(e) => Err(ThinError::dm("remove", name, e)),
        }
    }

    fn message(&self, msg: PoolMessage) -> Result<(), ThinError> {
        let name = self.spec.pool_dm_name();
        let dm_name = DmName::new(&name).map_err(|e| ThinError::dm("name", &name, e))?;
        self.dm
            .target_msg(&DevId::Name(dm_name), None, &msg.to_string())
            .map(drop)
            .map_err(|e| ThinError::dm(format!("message `{msg}`"), &name, e))
    }

    /// `delete <id>` that treats "no such device id" as done: undo records must be idempotent.
    fn delete_id(&self, id: u64) -> Result<(), ThinError> {
        match self.message(PoolMessage::Delete { id }) {
            Err(ThinError::Dm { ref source, .. })
                if matches!(dm_errno(source), Some(Errno::ENODATA | Errno::EINVAL)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn pool_devno(&self) -> Result<DevNo, ThinError> {
        let name = self.spec.pool_dm_name();
        let dm_name = DmName::new(&name).map_err(|e| ThinError::dm("name", &name, e))?;
        let info = self
            .dm
            .device_info(&DevId::Name(dm_name))
            .map_err(|e| ThinError::dm("info", &name, e))?;
        Ok(DevNo {
            major: info.device().major,
            minor: info.device().minor,
        })
    }

    fn activate_thin(&self, name: &str, id: u64, sectors: u64) -> Result<PathBuf, ThinError> {
        let pool = self.pool_devno()?;
        let dev = self.create_device(name, "thin", &table::thin_table(pool, id, sectors))?;
        wait_for_node(name, dev)
    }

    /// Data and metadata usage from the kernel.
    pub fn usage(&self) -> Result<PoolUsage, ThinError> {
        let name = self.spec.pool_dm_name();
        let dm_name = DmName::new(&name).map_err(|e| ThinError::dm("name", &name, e))?;
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(dm_name), dm_options())
            .map_err(|e| ThinError::dm("status", &name, e))?;
        let params = lines.first().map(|l| l.3.clone()).unwrap_or_default();
        Ok(table::parse_pool_status(&params)?)
    }

    fn next_id(&self) -> Result<u64, ThinError> {
        table::next_dev_id(&store::used_ids(self.db, &self.spec.name)?).ok_or_else(|| {
            ThinError::IdsExhausted {
                pool: self.spec.name.clone(),
            }
        })
    }

    /// The volume VMs of `image` are cloned from: the newest ready import.
    pub fn image_volume(&self, image: &str) -> Result<Option<VolumeRow>, ThinError> {
        Ok(store::volumes(self.db, &self.spec.name)?
            .into_iter()
            .filter(|v| v.image == image && v.state == VolumeState::Ready)
            .max_by_key(|v| v.dev_id))
    }

    /// Imports an image file as a new thin volume, unless one with this `digest` exists already.
    /// A new digest (a rebuilt recipe) makes a new volume; the old one is retired and deleted once
    /// no VM disk uses it. All-zero chunks are skipped: they cost no pool space.
    pub fn import_image(
        &self,
        image: &str,
        digest: &str,
        src: &Path,
    ) -> Result<VolumeRow, ThinError> {
        self.ensure_active()?;
        let _lock = self.lock()?;
        if let Some(v) = store::volumes(self.db, &self.spec.name)?
            .into_iter()
            .find(|v| v.image == image && v.digest == digest && v.state == VolumeState::Ready)
        {
            return Ok(v);
        }
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ThinError::Io { what, path, source }
        };
        let mut input = File::open(src).map_err(io_err("opening image", src))?;
        let len = input
            .metadata()
            .map_err(io_err("reading image size of", src))?
            .len();
        let sectors = len.div_ceil(512).max(1);
        let id = self.next_id()?;
        let mut row = VolumeRow {
            dev_id: id,
            image: image.to_string(),
            digest: digest.to_string(),
            size_sectors: sectors,
            state: VolumeState::Creating,
        };
        store::insert_volume(self.db, &self.spec.name, &row)?;
        self.message(PoolMessage::CreateThin { id })?;
        let name = self.spec.image_dm_name(image, id);
        let path = self.activate_thin(&name, id, sectors)?;
        let copied = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("opening", &path))?;
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut offset = 0u64;
            loop {
                let n = read_full(&mut input, &mut buf).map_err(io_err("reading", src))?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|&b| b != 0) {
                    out.seek(SeekFrom::Start(offset))
                        .and_then(|_| out.write_all(&buf[..n]))
                        .map_err(io_err("writing", &path))?;
                }
                offset += n as u64;
            }
            out.sync_all().map_err(io_err("syncing", &path))
        })();
        // The volume is only ever an origin: deactivate it so snapshots need no suspend.
        let removed = self.remove_device(&name);
        copied?;
        removed?;
        for old in store::volumes(self.db, &self.spec.name)? {
            if old.image == image && old.state == VolumeState::Ready {
                store::set_volume_state(
                    self.db,
                    &self.spec.name,
                    old.dev_id,
                    VolumeState::Retired,
                )?;
            }
        }
        store::set_volume_state(self.db, &self.spec.name, id, VolumeState::Ready)?;
        row.state = VolumeState::Ready;
        self.delete_unused_retired()?;
        Ok(row)
    }

    /// Retired volumes no snapshot refers to, and volumes whose import a crash cut short.
    fn delete_unused_retired(&self) -> Result<Vec<u64>, ThinError> {
        let snaps = store::snapshots(self.db, &self.spec.name)?;
        let mut deleted = Vec::new();
        for v in store::volumes(self.db, &self.spec.name)? {
            let unused = !snaps.iter().any(|s| s.origin == v.dev_id);
            let doomed = match v.state {
                VolumeState::Retired => unused,
                VolumeState::Creating => true,
                VolumeState::Ready => false,
            };
            if doomed {
                self.remove_device(&self.spec.image_dm_name(&v.image, v.dev_id))?;
                self.delete_id(v.dev_id)?;
                store::delete_volume(self.db, &self.spec.name, v.dev_id)?;
                deleted.push(v.dev_id);
            }
        }
        Ok(deleted)
    }

    /// The VM's root disk: a thin snapshot of its image's current volume, activated. Takes the
    /// same time whatever the image's size (one metadata message). Refused, with the reason, when
    /// the pool is past `max_used_percent`.
    pub fn clone_for_vm(&self, image: &str, vm_id: &str) -> Result<VmDisk, ThinError> {
        self.ensure_active()?;
        // The pool's status is read under the lock: ensure_active's unlocked fast path sees a
        // pool device another process is still activating (created, table not yet live), whose
        // status is empty; activation holds the lock until the table is live.
        let _lock = self.lock()?;
        table::check_space(&self.usage()?, self.spec.max_used_percent)?;
        if store::snapshot_for_vm(self.db, vm_id)?.is_some() {
            return Err(ThinError::DiskExists {
                vm_id: vm_id.to_string(),
            });
        }
        let origin = self
            .image_volume(image)?
            .ok_or_else(|| ThinError::UnknownImage {
                image: image.to_string(),
                pool: self.spec.name.clone(),
            })?;
        let id = self.next_id()?;
        let row = SnapshotRow {
            dev_id: id,
            origin: origin.dev_id,
            vm_id: vm_id.to_string(),
            owner_pid: std::process::id(),
            size_sectors: origin.size_sectors,
            active: false,
        };
        store::insert_snapshot(self.db, &self.spec.name, &row)?;
        let made = self
            .message(PoolMessage::CreateSnap {
                id,
                origin: origin.dev_id,
            })
            .and_then(|()| self.activate_thin(&self.spec.vm_dm_name(vm_id), id, row.size_sectors));
        let path = match made {
            Ok(p) => p,
            Err(e) => {
                // Nothing half-made is left for a VM that will never run.
                let _ = self.teardown_snapshot(&row);
                return Err(e);
            }
        };
        store::mark_snapshot_active(self.db, &self.spec.name, id)?;
        Ok(VmDisk {
            vm_id: vm_id.to_string(),
            path,
            dm_name: self.spec.vm_dm_name(vm_id),
            dev_id: id,
            size_bytes: row.size_sectors * 512,
        })
    }

    /// Re-activates an existing VM disk (after a reboot, for a VM being re-adopted).
    pub fn activate_vm_disk(&self, vm_id: &str) -> Result<VmDisk, ThinError> {
        self.ensure_active()?;
        let _lock = self.lock()?;
        let (_, row) =
            store::snapshot_for_vm(self.db, vm_id)?.ok_or_else(|| ThinError::NoDisk {
                vm_id: vm_id.to_string(),
            })?;
        let name = self.spec.vm_dm_name(vm_id);
        let path = if self.device_exists(&name)? {
            let dm_name = DmName::new(&name).map_err(|e| ThinError::dm("name", &name, e))?;
            let info = self
                .dm
                .device_info(&DevId::Name(dm_name))
                .map_err(|e| ThinError::dm("info", &name, e))?;
            wait_for_node(
                &name,
                DevNo {
                    major: info.device().major,
                    minor: info.device().minor,
                },
            )?
        } else {
            self.activate_thin(&name, row.dev_id, row.size_sectors)?
        };
        Ok(VmDisk {
            vm_id: vm_id.to_string(),
            path,
            dm_name: name,
            dev_id: row.dev_id,
            size_bytes: row.size_sectors * 512,
        })
    }

    /// Removes the VM's disk: device, thin id (its blocks return to the pool) and row. Then
    /// deletes its image's volume if that was retired and this was its last user.
    pub fn destroy_vm_disk(&self, vm_id: &str) -> Result<(), ThinError> {
        self.ensure_active()?;
        let _lock = self.lock()?;
        let Some((_, row)) = store::snapshot_for_vm(self.db, vm_id)? else {
            return Ok(());
        };
        self.teardown_snapshot(&row)?;
        self.delete_unused_retired()?;
        Ok(())
    }

    fn teardown_snapshot(&self, row: &SnapshotRow) -> Result<(), ThinError> {
        let name = self.spec.vm_dm_name(&row.vm_id);
        if row.active && self.device_exists(&name)? {
            // Deleting a thin id frees its blocks in the pool but tells the loop device nothing;
            // a discard first lets dm-thin pass it down, so the sparse file shrinks on the host.
            discard_whole(&name, row.size_sectors * 512);
        }
        self.remove_device(&name)?;
        self.delete_id(row.dev_id)?;
        store::delete_snapshot(self.db, &self.spec.name, row.dev_id)?;
        Ok(())
    }

    /// Deletes VM disks whose VM is gone (`is_live` says false) or whose creation a crash
    /// interrupted, and image volumes nothing needs any more.
    pub fn gc(&self, is_live: &dyn Fn(&SnapshotRow) -> bool) -> Result<GcReport, ThinError> {
        self.ensure_active()?;
        let _lock = self.lock()?;
        let mut report = GcReport::default();
        for s in store::snapshots(self.db, &self.spec.name)? {
            if !s.active || !is_live(&s) {
                self.teardown_snapshot(&s)?;
                report.snapshots.push(s.vm_id);
            }
        }
        report.volumes = self.delete_unused_retired()?;
        Ok(report)
    }

    /// The VM disks recorded in the database.
    pub fn vm_disks(&self) -> Result<Vec<SnapshotRow>, ThinError> {
        Ok(store::snapshots(self.db, &self.spec.name)?)
    }

    /// Removes every device of this pool (VM disks, image volumes, the pool) and so its loop
    /// devices; keeps files and rows. What a reboot does, and what shutdown of the host wants.
    pub fn deactivate(&self) -> Result<(), ThinError> {
        let _lock = self.lock()?;
        self.remove_owned_devices()?;
        for f in [self.spec.data_file(), self.spec.metadata_file()] {
            detach_loops_of(&f)?;
        }
        Ok(())
    }

    fn remove_owned_devices(&self) -> Result<(), ThinError> {
        let pool = self.spec.pool_dm_name();
        let devices = self
            .dm
            .list_devices()
            .map_err(|e| ThinError::dm("list", "devices", e))?;
        let mut names: Vec<String> = devices
            .iter()
            .map(|(n, ..)| n.to_string())
            .filter(|n| self.spec.owns(n) && *n != pool)
            .collect();
        // Thin devices first: the pool cannot go while they hold it.
        names.push(pool);
        for n in names {
            self.remove_device(&n)?;
        }
        Ok(())
    }

    /// Uninstall: deactivates everything, forgets the pool and deletes its files and directory.
    pub fn destroy_pool(&self) -> Result<(), ThinError> {
        self.deactivate()?;
        store::delete_pool(self.db, &self.spec.name)?;
        for f in [
            self.spec.data_file(),
            self.spec.metadata_file(),
            self.spec.dir.join(LOCK_FILE),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ThinError::Io {
                        what: "removing",
                        path: f,
                        source,
                    })
                }
            }
        }
        let _ = std::fs::remove_dir(&self.spec.dir);
        Ok(())
    }
}

nix::ioctl_write_ptr_bad!(blkdiscard, 0x1277, [u64; 2]);

/// Best effort: a failed discard only means the host file keeps its blocks until reused.
fn discard_whole(name: &str, bytes: u64) {
    let path = PathBuf::from(format!("/dev/mapper/{name}"));
    let dev = if path.exists() {
        Some(path)
    } else {
        DM::new().ok().and_then(|dm| {
            let n = DmName::new(name).ok()?;
            let info = dm.device_info(&DevId::Name(n)).ok()?;
            Some(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
        })
    };
    let Some(dev) = dev else { return };
    let Ok(file) = OpenOptions::new().write(true).open(&dev) else {
        return;
    };
    let range = [0u64, bytes];
    // SAFETY: BLKDISCARD reads two u64s (offset, length) from the pointer, which outlives the call.
    if let Err(e) = unsafe { blkdiscard(std::os::fd::AsRawFd::as_raw_fd(&file), &range) } {
        tracing::debug!("discard of {} failed: {e}", dev.display());
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `/dev/dm-<minor>`: devtmpfs creates it without udev; dm names its disks after the minor.
fn wait_for_node(name: &str, dev: DevNo) -> Result<PathBuf, ThinError> {
    let path = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(ThinError::NoDeviceNode {
                device: name.to_string(),
                path,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(path)
}

/// Default liveness for `gc` when no VM table says otherwise: the process that created the disk
/// still runs. A crashed fireclaw leaves disks whose owner is gone.
pub fn owner_alive(row: &SnapshotRow) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(row.owner_pid as i32), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_from_config_resolves_under_root_and_names_devices() {
        let root = RootPrefix::new("/tmp/r");
        let spec = PoolSpec::from_config(&root, &Config::default()).unwrap();
        assert_eq!(spec.dir, PathBuf::from("/tmp/r/var/lib/fireclaw/pool"));
        assert_eq!(
            spec.data_file(),
            PathBuf::from("/tmp/r/var/lib/fireclaw/pool/data.img")
        );
        assert_eq!(spec.pool_dm_name(), "fireclaw-pool");
        assert_eq!(spec.vm_dm_name("vm/1"), "fireclaw-vm-vm_1");
        assert_eq!(spec.image_dm_name("base", 3), "fireclaw-img-base-3");
        assert!(spec.owns("fireclaw-vm-x") && !spec.owns("other-pool"));
    }

    #[test]
    fn engine_choice_respects_config() {
        let mut c = Config::default();
        c.thinpool.enabled = false;
        assert_eq!(
            choose_engine(&c),
            EngineChoice::ReflinkCopy {
                reason: "thinpool.enabled = false".into()
            }
        );
    }
}
