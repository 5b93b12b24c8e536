//! The staging tree -> ext4: timestamps clamped, a size check, `mkfs.ext4 -d`, ctimes pinned with
//! debugfs, `e2fsck -fn`.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};

use super::super::common::last_lines;
use super::super::recipe::Recipe;
use super::plan::recipe_file;
use crate::report::Reporter;

/// Packs `tree` into `image` (mkfs.ext4 -d), pins the timestamps mkfs took from the tree, and
/// checks the result with `e2fsck -fn`.
pub fn pack(
    tree: &Path,
    image: &Path,
    r: &Recipe,
    fs_uuid: &str,
    hash_seed: &str,
    epoch: u64,
    rep: &dyn Reporter,
) -> anyhow::Result<()> {
    let name = &r.name;
    let step = rep.progress(
        &format!(
            "image {name}: packing {} MiB ext4 (mkfs.ext4 -d)",
            r.size_mib
        ),
        None,
    );
    let label: String = name.chars().take(16).collect();
    let out = Command::new("mkfs.ext4")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-L", &label, "-U",
            fs_uuid,
        ])
        .arg("-E")
        .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}M", r.size_mib))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .output()
        .context("running mkfs.ext4 (install e2fsprogs)")?;
    drop(step);
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        if text.contains("Could not allocate block")
            || text.contains("No space left")
            || text.contains("Could not allocate inode")
        {
            bail!(
                "{}: image {name} does not fit in image.size_mib = {} (mkfs.ext4: {}); raise size_mib",
                recipe_file(r),
                r.size_mib,
                last_lines(&text, 3)
            );
        }
        bail!(
            "mkfs.ext4 failed for image {name}: {}",
            last_lines(&text, 10)
        );
    }
    pin_ctimes(tree, image, epoch)?;
    let step = rep.progress(&format!("image {name}: verifying (e2fsck -fn)"), None);
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .context("running e2fsck")?;
    drop(step);
    if !out.status.success() {
        bail!(
            "e2fsck -fn found problems in image {name}: {}",
            last_lines(
                &(String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr)),
                10
            )
        );
    }
    Ok(())
}

/// A UUID-shaped string from the input hash; `salt` separates the filesystem UUID from the
/// directory hash seed.
pub(super) fn uuid_from(hash: &str, salt: u8) -> String {
    let d = Sha256::digest(format!("{hash}:{salt}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Sets every timestamp in the tree to the epoch (without following symlinks): mkfs.ext4 -d
/// copies them into the image.
pub(super) fn clamp_times(tree: &Path, epoch: u64) -> anyhow::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(epoch as i64, 0);
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting times on {}", p.display()))?;
    }
    Ok(())
}

/// mkfs.ext4 -d (e2fsprogs 1.47.0) copies each file's ctime and atime from the staging tree; ctime
/// cannot be set from user space and reading a directory (mkfs does) moves its atime, so both are
/// pinned afterwards with debugfs, in the image file (no mounting). Paths debugfs cannot quote keep their ctime: reproducibility suffers, nothing else.
fn pin_ctimes(tree: &Path, image: &Path, epoch: u64) -> anyhow::Result<()> {
    let mut cmds = String::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        let rel = p.strip_prefix(tree).unwrap_or(&p);
        let Some(rel) = rel.to_str() else { continue };
        if rel.contains(['"', '\\', '\n']) {
            continue;
        }
        for field in ["ctime", "atime"] {
            cmds.push_str(&format!(
                "sif \"/{rel}\" {field} @{epoch}\nsif \"/{rel}\" {field}_extra 0\n"
            ));
        }
    }
    let file = image.with_extension("debugfs");
    fs::write(&file, cmds)?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&file)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .output();
    let _ = fs::remove_file(&file);
    let out = out.context("running debugfs")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        || err
            .lines()
            .any(|l| l.starts_with("sif:") || l.contains("not found"))
    {
        bail!("debugfs could not pin timestamps: {}", last_lines(&err, 5));
    }
    Ok(())
}

/// Estimates the blocks the tree needs and refuses early (before mkfs) when it cannot fit; mkfs's
/// own "could not allocate" is mapped to the same message for the cases the estimate misses.
pub(super) fn check_fits(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
    let mut bytes: u64 = 0;
    let mut inodes: u64 = 0;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        inodes += 1;
        if m.is_dir() {
            bytes += 4096;
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else if m.is_file() {
            bytes += m.len().div_ceil(4096) * 4096;
        }
    }
    let capacity = r.size_mib << 20;
    // ext4 keeps inode tables, bitmaps and the journal: about 6-8% of a small filesystem.
    let usable = capacity - capacity / 10;
    let needed = bytes + inodes * 256;
    if needed > usable {
        bail!(
            "{}: image {} needs about {} MiB but image.size_mib = {} leaves about {} MiB for files; raise size_mib",
            recipe_file(r),
            r.name,
            needed.div_ceil(1 << 20),
            r.size_mib,
            usable >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stable_and_distinct() {
        let a = uuid_from("abc", 0);
        assert_eq!(a, uuid_from("abc", 0));
        assert_ne!(a, uuid_from("abc", 1));
        assert_eq!(a.len(), 36);
    }
}
