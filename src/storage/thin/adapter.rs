//! The small owned façade a per-VM disk trait (`DiskEngine`, from the VM lifecycle work) can be
//! implemented on: it holds paths, not a database borrow, so it is `Send + Sync + 'static`, and
//! opens the state database per call (cheap, and safe across threads and processes: the pool lock
//! serializes what the kernel needs serialized).

use std::path::{Path, PathBuf};

use super::{ThinEngine, ThinError, VmDisk};
use crate::root::RootPrefix;
use crate::state::Db;

#[derive(Debug, Clone)]
pub struct ThinDisks {
    root: RootPrefix,
    state_dir: String,
    max_used_percent: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Thin(#[from] ThinError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl ThinDisks {
    pub fn new(root: RootPrefix, config: &crate::config::Config) -> Self {
        ThinDisks {
            root,
            state_dir: config.paths.state_dir.clone(),
            max_used_percent: config.thinpool.max_used_percent,
        }
    }

    fn db_path(&self) -> PathBuf {
        self.root.host(crate::state::db_path(&self.state_dir))
    }

    fn with_engine<T>(
        &self,
        f: impl FnOnce(&ThinEngine) -> Result<T, ThinError>,
    ) -> Result<T, AdapterError> {
        let db = Db::open(&self.db_path())?;
        let spec = super::recorded::recorded_spec(
            &db,
            &self.root,
            &self.state_dir,
            self.max_used_percent,
        )?;
        let engine = ThinEngine::new(&db, spec)?;
        Ok(f(&engine)?)
    }

    /// `image` is an image name (`base`) or its file (`…/images/base.ext4`).
    pub fn clone_for_vm(&self, image: &str, vm_id: &str) -> Result<VmDisk, AdapterError> {
        let name = image_name(image);
        self.with_engine(|e| e.clone_for_vm(&name, vm_id))
    }

    pub fn destroy(&self, disk: &VmDisk) -> Result<(), AdapterError> {
        self.with_engine(|e| e.destroy_vm_disk(&disk.vm_id))
    }
}

/// Name under which VM disks made here are recorded (`VmDisk::engine`).
pub const ENGINE_NAME: &str = "thin";

impl ThinDisks {
    /// True when `image` can get thin disks: device-mapper is here, the pool is recorded and the
    /// image was imported into it. Reads only; callers fall back to the clone engine otherwise.
    pub fn serves(&self, image: &Path) -> bool {
        // File checks first: most hosts without device-mapper never touch the database here.
        // Then a normal connection, like every other writer's: a read-only one cannot take part
        // in WAL recovery and made concurrent `run`s fail with "database is locked".
        if super::probe_device_mapper().is_err() || !self.db_path().exists() {
            return false;
        }
        let Ok(db) = Db::open(&self.db_path()) else {
            return false;
        };
        let name = image_name(&image.to_string_lossy());
        // The volume must hold this very image: after a rebuild the pool still has the old one
        // until provision imports the new, and booting that would be booting a stale image.
        let Ok(digest) = super::recorded::image_identity(image) else {
            return false;
        };
        super::store::has_tables(&db).unwrap_or(false)
            && super::store::volumes(&db, super::DEFAULT_POOL_NAME)
                .map(|v| {
                    v.iter().any(|v| {
                        v.image == name
                            && v.digest == digest
                            && v.state == super::store::VolumeState::Ready
                    })
                })
                .unwrap_or(false)
    }
}

fn storage_error(e: AdapterError) -> crate::storage::StorageError {
    e.into()
}

impl crate::storage::DiskEngine for ThinDisks {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn planned_path(&self, vm_id: &str) -> Result<PathBuf, crate::storage::StorageError> {
        crate::storage::check_id(vm_id)?;
        let spec = self
            .with_engine(|e| Ok(e.spec().clone()))
            .map_err(storage_error)?;
        Ok(Path::new("/dev/mapper").join(spec.vm_dm_name(vm_id)))
    }

    fn clone_for_vm(
        &self,
        image: &Path,
        vm_id: &str,
    ) -> Result<crate::storage::VmDisk, crate::storage::StorageError> {
        crate::storage::check_id(vm_id)?;
        let disk = ThinDisks::clone_for_vm(self, &image.to_string_lossy(), vm_id)
            .map_err(storage_error)?;
        Ok(crate::storage::VmDisk {
            engine: ENGINE_NAME.into(),
            path: disk.path,
            method: crate::storage::CloneMethod::ThinSnapshot,
            // The thin engine finds a VM's snapshot by VM id.
            handle: disk.vm_id,
        })
    }

    fn destroy(&self, disk: &crate::storage::VmDisk) -> Result<(), crate::storage::StorageError> {
        if disk.engine != ENGINE_NAME {
            return Err(crate::storage::StorageError::WrongEngine {
                expected: ENGINE_NAME.into(),
                found: disk.engine.clone(),
            });
        }
        self.with_engine(|e| e.destroy_vm_disk(&disk.handle))
            .map_err(storage_error)
    }
}

fn image_name(image: &str) -> String {
    let p = Path::new(image);
    if image.contains('/') {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| image.to_string())
    } else {
        image.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_names_from_paths() {
        assert_eq!(
            super::image_name("/var/lib/fireclaw/images/base.ext4"),
            "base"
        );
        assert_eq!(super::image_name("agent"), "agent");
    }

    #[test]
    fn adapter_is_thread_safe() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<super::ThinDisks>();
    }
}
