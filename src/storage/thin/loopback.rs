//! The loop devices under the pool: its two sparse files attached with autoclear, found again
//! through sysfs, and detached on teardown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use super::table::DevNo;
use super::ThinError;

/// An attached loop device, kept open until the pool table holds it.
pub(super) struct Attached {
    /// Held only to keep the device open (see [`ThinEngine::start_pool`]).
    _device: loopdev::LoopDevice,
    pub(super) devno: DevNo,
}

/// Attaches `file` to a free loop device with autoclear. Reuses a loop device that already backs
/// the file (an earlier attempt that got no further). Retries when another process took the free
/// device first: our lock does not cover other tools (losetup, LVM).
pub(super) fn attach_loop(file: &Path) -> Result<Attached, ThinError> {
    let loop_err = |source| ThinError::Loop {
        file: file.to_path_buf(),
        source,
    };
    if let Some(dev) = loops_of(file).into_iter().next() {
        let ld = loopdev::LoopDevice::open(&dev).map_err(loop_err)?;
        let no = devno_of(&ld).map_err(loop_err)?;
        return Ok(Attached {
            _device: ld,
            devno: no,
        });
    }
    let control = loopdev::LoopControl::open().map_err(loop_err)?;
    let mut attempt = 0;
    loop {
        let ld = control.next_free().map_err(loop_err)?;
        match ld.with().autoclear(true).attach(file) {
            Ok(()) => {
                let no = devno_of(&ld).map_err(loop_err)?;
                return Ok(Attached {
                    _device: ld,
                    devno: no,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc_ebusy()) && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20 * attempt));
            }
            Err(e) => return Err(loop_err(e)),
        }
    }
}

fn libc_ebusy() -> i32 {
    Errno::EBUSY as i32
}

fn devno_of(ld: &loopdev::LoopDevice) -> std::io::Result<DevNo> {
    Ok(DevNo {
        major: ld.major()?,
        minor: ld.minor()?,
    })
}

/// Loop devices (as `/dev/loopN`) whose backing file is `file`, from sysfs.
pub fn loops_of(file: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        if Path::new(backing) == want || backing.strip_suffix(" (deleted)") == want.to_str() {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out.sort();
    out
}

pub(super) fn detach_loops_of(file: &Path) -> Result<(), ThinError> {
    for dev in loops_of(file) {
        let ld = loopdev::LoopDevice::open(&dev).map_err(|source| ThinError::Loop {
            file: file.to_path_buf(),
            source,
        })?;
        match ld.detach() {
            Ok(()) => {}
            // Autoclear already released it between our scan and the detach.
            Err(e) if e.raw_os_error() == Some(Errno::ENXIO as i32) => {}
            Err(e) if e.raw_os_error() == Some(libc_ebusy()) => {
                return Err(ThinError::Busy {
                    device: dev.display().to_string(),
                })
            }
            Err(source) => {
                return Err(ThinError::Loop {
                    file: file.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}
