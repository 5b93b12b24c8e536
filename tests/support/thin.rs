//! The thin pool's test fixtures, shared by the kernel-tier tests and the thin benchmark.

use std::io::Write;
use std::path::Path;

use fireclaw::storage::thin::{PoolGeometry, PoolSpec};

/// The modules a dm-thin guest loads.
pub const MODULES: &[&str] = &["dm-thin-pool", "loop"];

pub fn spec(dir: &Path, name: &str, data_mib: u64, max_used_percent: u8) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        dir: dir.join("pool"),
        geometry: PoolGeometry::new(data_mib, 64, 128, max_used_percent).expect("geometry"),
        max_used_percent,
    }
}

/// An image whose every MiB has its own byte value, so any mix-up between disks shows.
pub fn make_image(path: &Path, mib: usize, salt: u8) {
    let mut f = std::fs::File::create(path).expect("create image");
    for i in 0..mib {
        f.write_all(&vec![
            (i as u8).wrapping_mul(7).wrapping_add(salt) | 1;
            1 << 20
        ])
        .expect("write image");
    }
    f.sync_all().expect("sync image");
}
