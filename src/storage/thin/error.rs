//! What can go wrong with the thin pool. `Busy` and `Space` are the two a caller acts on
//! differently (retry later vs refuse new VMs); see `storage::StorageError` for how they surface.

use std::path::PathBuf;

use devicemapper::DmError;
use nix::errno::Errno;

use super::table;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    #[error("device-mapper is not available ({detail}): load it with `modprobe dm_mod dm_thin_pool` (package dmsetup, kernel CONFIG_DM_THIN_PROVISIONING); until then fireclaw uses reflink/copy disks")]
    NoDeviceMapper { detail: String },
    #[error("the kernel has no `thin-pool` device-mapper target: run `modprobe dm_thin_pool` (kernel CONFIG_DM_THIN_PROVISIONING)")]
    MissingTarget,
    #[error("device {device} is busy (still open, by a running VM or another tool): stop its user, then retry")]
    Busy { device: String },
    #[error("device-mapper {op} on {device} failed: {source}")]
    Dm {
        op: String,
        device: String,
        #[source]
        source: DmError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach {} to a loop device: {source} (is the `loop` module loaded? `modprobe loop`)", file.display())]
    Loop {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Geometry(#[from] table::GeometryError),
    #[error(transparent)]
    Status(#[from] table::StatusError),
    #[error(transparent)]
    Space(#[from] table::SpaceError),
    #[error("thin pool {name:?} is not in the state database: run `fireclaw provision` first")]
    NotProvisioned { name: String },
    #[error("thin pool file {} is missing: the pool cannot be re-activated; run `fireclaw uninstall` and `fireclaw provision` again", path.display())]
    PoolFileMissing { path: PathBuf },
    #[error("image {image:?} has no thin volume in pool {pool:?}: provision imports images (`fireclaw provision --only thinpool`)")]
    UnknownImage { image: String, pool: String },
    #[error("VM {vm_id:?} already has a thin disk")]
    DiskExists { vm_id: String },
    #[error("VM {vm_id:?} has no thin disk")]
    NoDisk { vm_id: String },
    #[error("thin pool {pool:?} has used all 2^24 device ids; destroy VMs or run `fireclaw gc`")]
    IdsExhausted { pool: String },
    #[error("device node {} for {device} did not appear (is /dev a devtmpfs?)", path.display())]
    NoDeviceNode { device: String, path: PathBuf },
}

impl ThinError {
    pub(super) fn dm(op: impl Into<String>, device: &str, source: DmError) -> ThinError {
        let errno = dm_errno(&source);
        ThinError::classify(op, device, errno, source)
    }

    /// EBUSY gets its own message: it is the error operators hit (a VM still holds the disk).
    pub(super) fn classify(
        op: impl Into<String>,
        device: &str,
        errno: Option<Errno>,
        source: DmError,
    ) -> ThinError {
        if errno == Some(Errno::EBUSY) {
            return ThinError::Busy {
                device: device.to_string(),
            };
        }
        ThinError::Dm {
            op: op.into(),
            device: device.to_string(),
            source,
        }
    }
}

/// The errno behind a device-mapper ioctl failure, if that is what it was.
pub fn dm_errno(e: &DmError) -> Option<Errno> {
    match e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            Some(Errno::from_raw(**errno as i32))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ioctl_becomes_a_busy_error_naming_the_device() {
        let src = || DmError::Dm(devicemapper::ErrorEnum::Invalid, "ioctl".into());
        let t =
            ThinError::classify("remove", "fireclaw-vm-a", Some(Errno::EBUSY), src()).to_string();
        assert!(t.contains("fireclaw-vm-a is busy"), "{t}");
        let t = ThinError::classify("load table", "fireclaw-pool", Some(Errno::EINVAL), src())
            .to_string();
        assert!(t.contains("load table on fireclaw-pool failed"), "{t}");
    }

    #[test]
    fn missing_device_mapper_says_how_to_fix_it() {
        let t = ThinError::NoDeviceMapper {
            detail: "/dev/mapper/control: No such file".into(),
        }
        .to_string();
        assert!(
            t.contains("modprobe dm_mod dm_thin_pool") && t.contains("reflink/copy"),
            "{t}"
        );
        assert!(ThinError::MissingTarget
            .to_string()
            .contains("modprobe dm_thin_pool"));
    }
}
