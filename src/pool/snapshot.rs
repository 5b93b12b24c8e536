//! Base snapshots: for one (image, engine, vCPUs, memory), boot the image cold once, wait until
//! the guest answers SSH, pause it and write its state into `<state_dir>/snapshots/<id>/`.
//!
//! A snapshot directory holds the engine's files ([`SnapshotFiles::in_dir`]), `disk` (the guest's
//! root disk as it was at the pause: the guest's page cache in the memory image describes this
//! disk, not the pristine image, so clones start from a copy of it) and `machine.json` (the
//! network and command line the guest was booted with, which a clone must reproduce: the tap
//! name, guest address, gateway and MAC are frozen in the guest's memory).
//!
//! The row is written (`building`) before the directory exists, and a failed build removes both;
//! a crash mid-build leaves a `building` row that [`reconcile`] removes with its directory.
//! Before a restore, [`check`] compares the snapshot's tag with this host: a mismatch is refused
//! with the parts that differ and the snapshot is marked stale, for [`ensure`] to rebuild.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::store::{self, SnapshotKey, SnapshotRow, SnapshotState};
use super::tag::{cpu_identity, SnapshotTag};
use crate::net::policy::Policy;
use crate::vm::image::ImageSpec;
use crate::vm::{ssh, Host, LaunchOptions, Machine};
use crate::vmm::{Boot, SnapshotFiles, VmmKind};

/// What a base snapshot is made of.
#[derive(Clone)]
pub struct Recipe {
    pub image: ImageSpec,
    pub vmm: VmmKind,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Boot with a second drive of this many MiB (an agent's workspace; 0: none). The drive is
    /// zeros, so the image's fstab mount of it fails and nothing is mounted when the snapshot is
    /// taken: each clone gets its own drive of this size, and the agent's workspace is put into
    /// it before the guest mounts it.
    pub workspace_mib: u32,
}

impl Recipe {
    pub fn key(&self) -> SnapshotKey {
        SnapshotKey {
            image: self.image.name.clone(),
            engine: self.vmm.as_str().into(),
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            workspace_mib: self.workspace_mib,
        }
    }
}

/// How the snapshotted guest was booted: what every clone of it must reproduce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    /// The tap the VMM opened; a clone's slot has a tap of this name.
    pub tap: String,
    pub mac: String,
    pub guest: Ipv4Addr,
    /// The gateway address with its prefix (`172.16.0.1/24`).
    pub gateway: String,
    pub cmdline: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The SSH login and the guest's pinned host key (OpenSSH format): the guest in the memory
    /// image is the one that booted, whatever the image's manifest says later.
    pub user: String,
    pub host_key: String,
    /// The second drive's size in MiB (0: the guest has none); a clone gets its own drive of
    /// exactly this size.
    #[serde(default)]
    pub workspace_mib: u32,
}

pub const MACHINE_FILE: &str = "machine.json";
pub const DISK_FILE: &str = "disk";
/// The zeroed second drive a workspace snapshot boots with (removed once the snapshot is taken).
pub const PLACEHOLDER_FILE: &str = "workspace-placeholder";

/// A ready snapshot's files, as a restore needs them.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub row: SnapshotRow,
    pub files: SnapshotFiles,
    pub disk: PathBuf,
    pub machine: MachineFile,
}

impl Snapshot {
    pub fn open(row: SnapshotRow) -> anyhow::Result<Snapshot> {
        let path = row.dir.join(MACHINE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let machine: MachineFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Snapshot {
            files: SnapshotFiles::in_dir(&row.dir),
            disk: row.dir.join(DISK_FILE),
            machine,
            row,
        })
    }
}

/// `<state_dir>/snapshots`.
pub fn snapshots_dir(host: &Host) -> PathBuf {
    host.root
        .host(&host.config.paths.state_dir)
        .join("snapshots")
}

/// The engine's own version line (`QEMU emulator version 7.2.x`, `Firecracker v1.16.1`).
pub fn engine_version(host: &Host, vmm: VmmKind) -> anyhow::Result<String> {
    let binary = match vmm {
        VmmKind::Qemu => host.engines.qemu.binary.clone(),
        VmmKind::Firecracker => host.engines.firecracker.binary.clone(),
    };
    let out = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match (out.status.success(), line) {
        (true, Some(l)) => Ok(l.to_string()),
        _ => anyhow::bail!(
            "{} --version printed no version ({})",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// What a snapshot of `recipe` made on this host, now, is tagged with.
pub fn host_tag(host: &Host, recipe: &Recipe) -> anyhow::Result<SnapshotTag> {
    let (cpu_model, cpu_flags_sha256) =
        cpu_identity(&std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?);
    let image_sha256 = match &recipe.image.sha256 {
        Some(d) => d.clone(),
        // An image without a recorded digest is hashed here (slow for big images, but correct).
        None => crate::fetch::sha256_file(&recipe.image.rootfs)?,
    };
    Ok(SnapshotTag {
        engine: recipe.vmm.as_str().into(),
        engine_version: engine_version(host, recipe.vmm)?,
        kernel_sha256: crate::fetch::sha256_file(&recipe.image.kernel)?,
        image_sha256,
        cpu_model,
        cpu_flags_sha256,
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
        fireclaw_version: env!("CARGO_PKG_VERSION").into(),
        vcpus: recipe.vcpus,
        mem_mib: recipe.mem_mib,
    })
}

/// A restore refused because the snapshot no longer matches the host.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {id}: {message}")]
pub struct Refused {
    pub id: String,
    pub message: String,
}

/// Compares `row`'s tag with `host`: on a mismatch the snapshot is marked stale and the refusal
/// names every part that differs.
pub fn check(host: &Host, row: &SnapshotRow, host_tag: &SnapshotTag) -> anyhow::Result<()> {
    let message = match &row.tag {
        Some(tag) => tag.refusal(host_tag),
        None => Some(
            "the snapshot's tag is unreadable (made by another fireclaw); it will be rebuilt"
                .into(),
        ),
    };
    if let Some(message) = message {
        store::set_state(&host.db()?, &row.id, SnapshotState::Stale)?;
        return Err(Refused {
            id: row.id.clone(),
            message,
        }
        .into());
    }
    Ok(())
}

/// The ready snapshot of `recipe`, checked against this host. A missing one is built; a refused
/// one is rebuilt, and the refusal comes back beside the new snapshot.
pub async fn ensure(
    host: &Host,
    recipe: &Recipe,
    timeout: Duration,
) -> anyhow::Result<(Snapshot, Option<String>)> {
    let tag = host_tag(host, recipe)?;
    let mut refusal = None;
    if let Some(row) = store::ready(&host.db()?, &recipe.key())? {
        match check(host, &row, &tag) {
            Ok(()) => return Ok((Snapshot::open(row)?, None)),
            Err(e) => {
                tracing::warn!("{e}");
                refusal = Some(e.to_string());
                remove(host, &row.id)?;
            }
        }
    }
    let snap = build_tagged(host, recipe, tag, timeout).await?;
    Ok((snap, refusal))
}

/// Builds a new base snapshot of `recipe` (retiring the previous ready one).
pub async fn build(host: &Host, recipe: &Recipe, timeout: Duration) -> anyhow::Result<Snapshot> {
    let tag = host_tag(host, recipe)?;
    build_tagged(host, recipe, tag, timeout).await
}

async fn build_tagged(
    host: &Host,
    recipe: &Recipe,
    tag: SnapshotTag,
    timeout: Duration,
) -> anyhow::Result<Snapshot> {
    let id = crate::vm::new_id();
    let dir = snapshots_dir(host).join(&id);
    let key = recipe.key();
    store::begin(&host.db()?, &id, &key, &tag, &dir)?;
    let made = make_files(host, recipe, &dir, timeout).await;
    let bytes = match made {
        Ok(b) => b,
        Err(e) => {
            let cleanup = remove(host, &id);
            return Err(match cleanup {
                Ok(()) => e,
                Err(c) => e.context(format!("and removing the failed snapshot failed: {c:#}")),
            });
        }
    };
    let db = host.db()?;
    if let Some(old) = store::finish(&db, &id, bytes)? {
        // A QEMU clone read the state file once at start and has its own disk copy; a
        // Firecracker clone maps the memory file, and an unlinked file stays mapped. So the
        // retired snapshot's files can go now.
        if let Err(e) = remove(host, &old) {
            tracing::warn!("removing retired snapshot {old}: {e:#}");
        }
    }
    let row = store::get(&db, &id)?.context("the snapshot row vanished")?;
    Snapshot::open(row)
}

/// Boots, waits for SSH, snapshots, copies the disk, records the machine; returns the bytes on
/// disk. The machine is destroyed on every path.
async fn make_files(
    host: &Host,
    recipe: &Recipe,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let placeholder = match recipe.workspace_mib {
        0 => None,
        mib => {
            let p = dir.join(PLACEHOLDER_FILE);
            crate::fsops::sparse_file(&p, u64::from(mib) << 20)
                .with_context(|| format!("making {}", p.display()))?;
            Some(p)
        }
    };
    let opts = LaunchOptions {
        vmm: recipe.vmm,
        vcpus: recipe.vcpus,
        mem_mib: recipe.mem_mib,
        // The base guest needs nothing but the host's SSH.
        policy: Policy::None,
        image: recipe.image.clone(),
        boot: Boot::Kernel,
        extra_disk: placeholder.clone(),
    };
    let h = host.clone();
    let mut machine = tokio::task::spawn_blocking(move || Machine::create(&h, &opts))
        .await
        .context("the VM creation task failed")??;
    let result = snapshot_machine(host, &mut machine, recipe, dir, timeout).await;
    let destroyed = tokio::task::spawn_blocking(move || machine.destroy())
        .await
        .context("the VM teardown task failed")?;
    if let Some(p) = placeholder {
        // Clones get drives of their own; the VMM that read this one is gone.
        let _ = std::fs::remove_file(p);
    }
    let bytes = result?;
    if !destroyed.is_empty() {
        anyhow::bail!(
            "tearing down the snapshot's VM failed: {}",
            destroyed.join("; ")
        );
    }
    Ok(bytes)
}

async fn snapshot_machine(
    host: &Host,
    machine: &mut Machine,
    recipe: &Recipe,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let target = machine.ssh_target()?;
    let deadline = Instant::now() + timeout;
    let session = ssh::wait_ready(&target, deadline)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", machine.console_tail()))?;
    session.close().await;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = SnapshotFiles::in_dir(dir);
    let inst = machine
        .instance()
        .context("the snapshot's VM has no running VMM")?;
    inst.snapshot(&files)
        .with_context(|| format!("snapshotting into {}", dir.display()))?;
    let disk = machine
        .disk
        .as_ref()
        .context("the snapshot's VM has no disk")?;
    crate::storage::clone::clone_file(&disk.path, &dir.join(DISK_FILE))
        .context("copying the paused guest's disk")?;
    let bridge = host.bridge_cidr()?;
    let ip = machine.ip.context("the snapshot's VM has no address")?;
    let file = MachineFile {
        tap: machine.tap.clone(),
        mac: crate::net::lease::mac_for(ip),
        guest: ip,
        gateway: format!("{}/{}", bridge.addr, bridge.prefix),
        cmdline: crate::vm::kernel_cmdline(ip, &bridge, recipe.vmm, &recipe.image.cmdline_extra),
        kernel: recipe.image.kernel.clone(),
        initrd: recipe.image.initrd.clone(),
        user: recipe.image.user.clone(),
        host_key: recipe
            .image
            .host_key
            .to_openssh()
            .context("encoding the guest's host key")?,
        workspace_mib: recipe.workspace_mib,
    };
    let path = dir.join(MACHINE_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(dir_bytes(dir))
}

/// Bytes allocated on disk under `dir` (sparse and shared extents counted as the filesystem
/// reports them).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Removes a snapshot's directory, then its row. Idempotent.
pub fn remove(host: &Host, id: &str) -> anyhow::Result<()> {
    crate::storage::check_id(id).map_err(|e| anyhow::anyhow!("snapshot id: {e}"))?;
    let db = host.db()?;
    let dir = match store::get(&db, id)? {
        Some(row) => row.dir,
        None => snapshots_dir(host).join(id),
    };
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    store::remove(&db, id)?;
    Ok(())
}

/// Removes what a crash mid-build left: `building` rows (with their directories) and directories
/// under `snapshots/` that no row names. Only one process builds snapshots: the runtime calls
/// this at start, before it builds any.
pub fn reconcile(host: &Host) -> anyhow::Result<Vec<String>> {
    let db = host.db()?;
    let mut removed = Vec::new();
    let rows = store::list(&db)?;
    for r in rows.iter().filter(|r| r.state == SnapshotState::Building) {
        remove(host, &r.id)?;
        removed.push(r.id.clone());
    }
    let dir = snapshots_dir(host);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !rows.iter().any(|r| r.id == name) {
                let p = e.path();
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                removed.push(name);
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_files_round_trip_and_refuse_unknown_fields() {
        let m = MachineFile {
            tap: "fc-0123456789ab".into(),
            mac: "02:fc:ac:10:00:02".into(),
            guest: Ipv4Addr::new(172, 16, 0, 2),
            gateway: "172.16.0.1/24".into(),
            cmdline: "console=ttyS0".into(),
            kernel: "/k".into(),
            initrd: None,
            user: "root".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            workspace_mib: 64,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MachineFile>(&text).unwrap(), m);
        // A machine file from before workspace drives: none.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("workspace_mib");
        assert_eq!(
            serde_json::from_value::<MachineFile>(old)
                .unwrap()
                .workspace_mib,
            0
        );
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["disk_path"] = "/elsewhere".into();
        assert!(serde_json::from_value::<MachineFile>(v).is_err());
    }

    #[test]
    fn reconcile_removes_half_built_snapshots_and_unnamed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host {
            root: crate::root::RootPrefix::new(dir.path()),
            config: crate::config::Config::default(),
            db_path: dir.path().join("state.db"),
            engines: crate::vmm::EngineOptions::installed(dir.path()),
        };
        let db = host.db().unwrap();
        let tag: SnapshotTag = serde_json::from_value(serde_json::json!({
            "engine": "qemu", "engine_version": "v", "kernel_sha256": "k", "image_sha256": "i",
            "cpu_model": "c", "cpu_flags_sha256": "f", "host_kernel": "h",
            "fireclaw_version": "0", "vcpus": 1, "mem_mib": 256
        }))
        .unwrap();
        let key = SnapshotKey {
            image: "img".into(),
            engine: "qemu".into(),
            vcpus: 1,
            mem_mib: 256,
            workspace_mib: 0,
        };
        let snaps = snapshots_dir(&host);
        for (id, ready) in [("aaaaaaaaaaaa", true), ("bbbbbbbbbbbb", false)] {
            store::begin(&db, id, &key, &tag, &snaps.join(id)).unwrap();
            std::fs::create_dir_all(snaps.join(id)).unwrap();
            if ready {
                store::finish(&db, id, 1).unwrap();
            }
        }
        std::fs::create_dir_all(snaps.join("cccccccccccc")).unwrap();
        let mut removed = reconcile(&host).unwrap();
        removed.sort();
        assert_eq!(removed, vec!["bbbbbbbbbbbb", "cccccccccccc"]);
        assert!(snaps.join("aaaaaaaaaaaa").exists());
        assert!(!snaps.join("bbbbbbbbbbbb").exists());
        assert_eq!(store::list(&db).unwrap().len(), 1);

        // A stale tag is refused by name and marked stale.
        let mut host_tag = tag.clone();
        host_tag.kernel_sha256 = "other".into();
        let row = store::get(&db, "aaaaaaaaaaaa").unwrap().unwrap();
        let err = check(&host, &row, &host_tag).unwrap_err().to_string();
        assert!(
            err.contains("kernel: the snapshot has k, this host has other"),
            "{err}"
        );
        assert_eq!(
            store::get(&db, "aaaaaaaaaaaa").unwrap().unwrap().state,
            SnapshotState::Stale
        );
        remove(&host, "aaaaaaaaaaaa").unwrap();
        assert!(!snaps.join("aaaaaaaaaaaa").exists());
        assert!(store::list(&db).unwrap().is_empty());
        remove(&host, "aaaaaaaaaaaa").unwrap();
    }
}
