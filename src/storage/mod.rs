//! Per-VM root disks. Every VM boots from its own copy-on-write view of an image, made by a
//! [`DiskEngine`]: reflink/sparse copies first ([`clone::CloneEngine`]); dm-thin snapshots plug in
//! behind the same trait. What an engine made is described by a [`VmDisk`], which the state database
//! records before the disk exists so that `fireclaw gc` can remove it after a crash.

pub mod clone;
pub mod thin;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("image {path} cannot be read: {source}")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create VM disk {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove VM disk {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM id {0:?} is not usable in a file name (expected letters, digits, `-`)")]
    BadId(String),
    /// The thin pool has no room (or went read-only): refuse new VMs until space is freed;
    /// retrying at once will not help.
    #[error(transparent)]
    PoolFull(thin::table::SpaceError),
    /// A device is held open (by a VM that is still going, or another tool): retry later.
    #[error("device {device} is busy (still open, by a running VM or another tool): retry once it is released")]
    Busy { device: String },
    /// Any other thin-pool failure; the cause is kept whole.
    #[error("thin pool: {0}")]
    Thin(#[source] Box<thin::adapter::AdapterError>),
    #[error("disk record belongs to engine {found:?}, not {expected:?}")]
    WrongEngine { expected: String, found: String },
}

impl StorageError {
    /// Worth retrying later: something holds a device that will be released.
    pub fn is_busy(&self) -> bool {
        matches!(self, StorageError::Busy { .. })
    }

    /// The pool cannot take another disk: refuse, do not retry.
    pub fn is_pool_full(&self) -> bool {
        matches!(self, StorageError::PoolFull(_))
    }
}

impl From<thin::adapter::AdapterError> for StorageError {
    fn from(e: thin::adapter::AdapterError) -> StorageError {
        use thin::adapter::AdapterError;
        use thin::ThinError;
        match e {
            AdapterError::Thin(ThinError::Space(s)) => StorageError::PoolFull(s),
            AdapterError::Thin(ThinError::Busy { device }) => StorageError::Busy { device },
            other => StorageError::Thin(Box::new(other)),
        }
    }
}

/// How a disk was made; reported by `--verbose` and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMethod {
    /// Shared extents (FICLONE): O(1) in the image size.
    Reflink,
    /// Data ranges copied, holes kept: O(allocated bytes).
    SparseCopy,
    /// A device-mapper thin snapshot.
    ThinSnapshot,
}

/// One VM's disk as an engine made it. Serialized into the `vms` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// Engine name (`clone`, `thin`): which engine must destroy it.
    pub engine: String,
    /// What the VMM opens: a file or a block device.
    pub path: PathBuf,
    pub method: CloneMethod,
    /// Engine-specific handle (a dm device name, a thin id); empty for plain files.
    #[serde(default)]
    pub handle: String,
}

/// Makes and removes per-VM disks. Implementations must be idempotent on `destroy` (a disk that
/// is already gone is not an error): cleanup after a crash may run it twice.
pub trait DiskEngine: Send + Sync {
    fn name(&self) -> &'static str;
    /// Where the disk for `vm_id` will live, known before it is made so it can be recorded first.
    fn planned_path(&self, vm_id: &str) -> Result<PathBuf, StorageError>;
    fn clone_for_vm(&self, image: &Path, vm_id: &str) -> Result<VmDisk, StorageError>;
    fn destroy(&self, disk: &VmDisk) -> Result<(), StorageError>;
}

/// VM ids become file and device names: keep them to a safe alphabet.
pub fn check_id(vm_id: &str) -> Result<(), StorageError> {
    if vm_id.is_empty()
        || vm_id.len() > 64
        || !vm_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(StorageError::BadId(vm_id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thin::adapter::AdapterError;
    use super::thin::table::SpaceError;
    use super::thin::ThinError;
    use super::StorageError;

    #[test]
    fn pool_full_and_busy_are_told_apart_from_other_thin_failures() {
        let full = StorageError::from(AdapterError::Thin(ThinError::Space(SpaceError::DataFull {
            used: 95.0,
            limit: 90,
        })));
        assert!(full.is_pool_full() && !full.is_busy());
        assert!(
            full.to_string().contains("thinpool.max_used_percent"),
            "{full}"
        );
        let busy = StorageError::from(AdapterError::Thin(ThinError::Busy {
            device: "fireclaw-vm-a".into(),
        }));
        assert!(busy.is_busy() && !busy.is_pool_full());
        assert!(busy.to_string().contains("fireclaw-vm-a"), "{busy}");
        let other = StorageError::from(AdapterError::Thin(ThinError::MissingTarget));
        assert!(!other.is_busy() && !other.is_pool_full());
        // The cause stays reachable for callers that match deeper.
        assert!(matches!(
            &other,
            StorageError::Thin(b) if matches!(**b, AdapterError::Thin(ThinError::MissingTarget))
        ));
    }
}
