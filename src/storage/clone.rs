//! The first disk engine: a reflink (FICLONE) of the image where the filesystem shares extents
//! (btrfs, XFS with reflink=1, bcachefs), else a sparse copy that copies only the image's data
//! ranges (SEEK_DATA/SEEK_HOLE) so a 1 GiB image holding 150 MiB costs 150 MiB.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{check_id, CloneMethod, DiskEngine, StorageError, VmDisk};

pub const ENGINE_NAME: &str = "clone";

/// Clones images into `dir/<vm_id>.img`.
#[derive(Debug, Clone)]
pub struct CloneEngine {
    dir: PathBuf,
}

impl CloneEngine {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CloneEngine { dir: dir.into() }
    }
}

nix::ioctl_write_int!(ficlone, 0x94, 9);

impl DiskEngine for CloneEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn planned_path(&self, vm_id: &str) -> Result<PathBuf, StorageError> {
        check_id(vm_id)?;
        Ok(self.dir.join(format!("{vm_id}.img")))
    }

    fn clone_for_vm(&self, image: &Path, vm_id: &str) -> Result<VmDisk, StorageError> {
        let dest = self.planned_path(vm_id)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| StorageError::Create {
            path: self.dir.clone(),
            source,
        })?;
        let method = clone_file(image, &dest)?;
        Ok(VmDisk {
            engine: ENGINE_NAME.into(),
            path: dest,
            method,
            handle: String::new(),
        })
    }

    fn destroy(&self, disk: &VmDisk) -> Result<(), StorageError> {
        if disk.engine != ENGINE_NAME {
            return Err(StorageError::WrongEngine {
                expected: ENGINE_NAME.into(),
                found: disk.engine.clone(),
            });
        }
        match std::fs::remove_file(&disk.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Remove {
                path: disk.path.clone(),
                source,
            }),
        }
    }
}

/// Copies `src` to a new file `dest` (which must not exist), sharing extents when possible.
pub fn clone_file(src: &Path, dest: &Path) -> Result<CloneMethod, StorageError> {
    let image_err = |source| StorageError::Image {
        path: src.to_path_buf(),
        source,
    };
    let create_err = |source| StorageError::Create {
        path: dest.to_path_buf(),
        source,
    };
    let mut input = File::open(src).map_err(image_err)?;
    let len = input.metadata().map_err(image_err)?.len();
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(create_err)?;
    let result = (|| {
        // SAFETY: FICLONE takes the source descriptor as its argument; both fds are open.
        if unsafe { ficlone(output.as_raw_fd(), input.as_raw_fd() as u64) }.is_ok() {
            return Ok(CloneMethod::Reflink);
        }
        sparse_copy(&mut input, &mut output, len).map_err(create_err)?;
        output.sync_data().map_err(create_err)?;
        Ok(CloneMethod::SparseCopy)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn sparse_copy(input: &mut File, output: &mut File, len: u64) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    output.set_len(len)?;
    let mut pos: i64 = 0;
    let end = len as i64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        // ENXIO: no data after `pos`, the rest is a hole.
        let data = match lseek(&*input, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            // Filesystems without SEEK_DATA: treat everything as data.
            Err(nix::errno::Errno::EINVAL) => pos,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&*input, data, Whence::SeekHole).unwrap_or(end);
        input.seek(SeekFrom::Start(data as u64))?;
        output.seek(SeekFrom::Start(data as u64))?;
        let mut remaining = (hole - data) as u64;
        while remaining > 0 {
            let want = remaining.min(buf.len() as u64) as usize;
            let n = input.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            // Zero blocks inside a data range stay holes in the copy.
            if buf[..n].iter().all(|b| *b == 0) {
                output.seek(SeekFrom::Current(n as i64))?;
            } else {
                output.write_all(&buf[..n])?;
            }
            remaining -= n as u64;
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn clone_keeps_content_and_holes_and_destroy_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.ext4");
        let mut f = File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let engine = CloneEngine::new(dir.path().join("disks"));
        let disk = engine.clone_for_vm(&image, "vm-1").unwrap();
        assert_eq!(
            std::fs::read(&disk.path).unwrap(),
            std::fs::read(&image).unwrap()
        );
        let meta = std::fs::metadata(&disk.path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 4 << 20, "copy is not sparse");
        // A second clone for the same VM must not overwrite the first.
        assert!(engine.clone_for_vm(&image, "vm-1").is_err());
        engine.destroy(&disk).unwrap();
        engine.destroy(&disk).unwrap();
        assert!(!disk.path.exists());
    }

    #[test]
    fn hostile_ids_and_records_are_refused() {
        let engine = CloneEngine::new("/nonexistent");
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(engine.planned_path(bad).is_err(), "{bad:?}");
        }
        let foreign = VmDisk {
            engine: "thin".into(),
            path: "/etc/passwd".into(),
            method: CloneMethod::ThinSnapshot,
            handle: "x".into(),
        };
        assert!(engine.destroy(&foreign).is_err());
    }

    #[test]
    fn missing_image_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = CloneEngine::new(dir.path());
        let err = engine
            .clone_for_vm(&dir.path().join("nope.ext4"), "a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.ext4"), "{err}");
        assert!(!dir.path().join("a.img").exists());
    }
}
