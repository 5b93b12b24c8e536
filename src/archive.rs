//! Safe extraction from tarballs (plain, gzip or xz). Archives come from the network: an entry with an
//! absolute path, a `..` component, or a link pointing out of the destination is refused, never
//! "sanitised", because an archive that tries it is not the archive that was pinned. Device nodes
//! are only accepted under `dev/` of a root filesystem tree.
//!
//! Two entry points: [`extract_members`] / [`read_members`] install named files from a release
//! archive; [`extract_all`] unpacks a whole tree (a minirootfs) under an [`ExtractPolicy`].

use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

use crate::fsops;
use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{archive}: entry {entry:?} escapes the destination (absolute path or `..`); refusing the archive")]
    Traversal { archive: String, entry: String },
    #[error("{archive}: member {member:?} not found")]
    MissingMember { archive: String, member: String },
    #[error("{archive}: member {member:?} is not a regular file")]
    NotAFile { archive: String, member: String },
}

/// A relative path with only normal components.
pub fn is_safe_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn open(tarball: &Path) -> anyhow::Result<tar::Archive<GzDecoder<fs::File>>> {
    let file = fs::File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    Ok(tar::Archive::new(GzDecoder::new(file)))
}

/// Installs the named regular-file members to their destinations with the given modes. The whole
/// archive is checked for traversal first, so a hostile archive installs nothing at all.
pub fn extract_members(tarball: &Path, members: &[(&str, &Path, u32)]) -> anyhow::Result<()> {
    let names: Vec<&str> = members.iter().map(|(m, _, _)| *m).collect();
    let contents = read_members(tarball, &names)?;
    for ((_, dest, mode), bytes) in members.iter().zip(contents) {
        fsops::write_atomic(dest, &bytes, *mode)?;
    }
    Ok(())
}

/// The contents of the named regular-file members, in the order asked, after checking every entry
/// of the archive for traversal.
pub fn read_members(tarball: &Path, members: &[&str]) -> anyhow::Result<Vec<Vec<u8>>> {
    let name = tarball.display().to_string();
    let mut archive = open(tarball)?;
    let mut found: Vec<(usize, Vec<u8>)> = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("reading {name}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {name}"))?;
        let path = entry
            .path()
            .with_context(|| format!("{name}: bad entry name"))?
            .into_owned();
        if !is_safe_relative(&path) {
            return Err(ArchiveError::Traversal {
                archive: name,
                entry: path.display().to_string(),
            }
            .into());
        }
        let normal: std::path::PathBuf = path
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        if let Some(i) = members.iter().position(|m| Path::new(m) == normal) {
            if !entry.header().entry_type().is_file() {
                return Err(ArchiveError::NotAFile {
                    archive: name,
                    member: members[i].to_string(),
                }
                .into());
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("{name}: reading {}", members[i]))?;
            found.push((i, bytes));
        }
    }
    members
        .iter()
        .enumerate()
        .map(|(i, member)| {
            found
                .iter()
                .position(|(j, _)| *j == i)
                .map(|k| std::mem::take(&mut found[k].1))
                .ok_or_else(|| {
                    ArchiveError::MissingMember {
                        archive: name.clone(),
                        member: member.to_string(),
                    }
                    .into()
                })
        })
        .collect()
}

/// Why [`extract_all`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{archive}: entry {entry:?}: {reason}; refusing the archive")]
    Unsafe {
        archive: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("{archive}: {what}: {source}")]
    Io {
        archive: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// What `extract_all` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractPolicy {
    /// Create character and block devices found under `dev/` (needs root). Devices anywhere else
    /// are always refused: a device node in, say, `home/` would let the guest reach raw hardware.
    pub devices_under_dev: bool,
    /// Keep the archive's uid/gid (needs root); without it files belong to the caller.
    pub preserve_ownership: bool,
}

impl ExtractPolicy {
    /// For root filesystem trees (Alpine minirootfs and the like).
    pub const ROOTFS: ExtractPolicy = ExtractPolicy {
        devices_under_dev: true,
        preserve_ownership: true,
    };
    /// For release archives of plain files.
    pub const FILES: ExtractPolicy = ExtractPolicy {
        devices_under_dev: false,
        preserve_ownership: false,
    };
}

/// What an extraction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
}

fn open_any(tarball: &Path) -> Result<Box<dyn Read>, ExtractError> {
    let io = |what: &str| {
        let archive = tarball.to_path_buf();
        let what = what.to_string();
        move |source| ExtractError::Io {
            archive,
            what,
            source,
        }
    };
    let mut f = fs::File::open(tarball).map_err(io("opening"))?;
    let mut magic = [0u8; 6];
    let mut n = 0;
    while n < magic.len() {
        let got = f.read(&mut magic[n..]).map_err(io("reading"))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    f.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    let reader = BufReader::new(f);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(GzDecoder::new(reader))),
        // The kernel source (linux-source-*.tar.xz) comes through here, so it gets the same checks
        // as every other archive instead of a `tar -xJf`.
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Ok(Box::new(
            liblzma::read::XzDecoder::new_multi_decoder(reader),
        )),
        _ => Ok(Box::new(reader)),
    }
}

/// The entry's path relative to the archive root, with `./` prefixes dropped; refuses absolute
/// paths and `..` rather than silently rewriting them (a rewritten path is still a hostile
/// archive).
fn relative_member(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// A hard link's target is a member path, so it obeys the same rules; a symlink's target is only
/// data (the guest resolves it inside its own root) except that a relative target must not climb
/// above the archive root from where the link sits.
fn check_link(entry_rel: &Path, kind: EntryType, target: &Path) -> Result<(), &'static str> {
    if kind == EntryType::Link {
        return relative_member(target)
            .map(|_| ())
            .map_err(|_| "hard link target outside the archive");
    }
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth: i64 = entry_rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err("symlink target climbs out of the archive");
        }
    }
    Ok(())
}

/// Extracts every entry of `tarball` into `dir` (created if missing).
pub fn extract_all(
    tarball: &Path,
    dir: &Path,
    policy: ExtractPolicy,
    rep: &dyn Reporter,
) -> Result<ExtractStats, ExtractError> {
    let io = |what: String| {
        let archive = tarball.to_path_buf();
        move |source| ExtractError::Io {
            archive,
            what,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut archive = Archive::new(open_any(tarball)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(policy.preserve_ownership);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let bar = rep.progress(
        &format!(
            "extract {}",
            tarball
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
        None,
    );
    let mut stats = ExtractStats::default();
    let entries = archive.entries().map_err(io("reading entries".into()))?;
    for entry in entries {
        let mut entry = entry.map_err(io("reading entry".into()))?;
        let raw = entry
            .path()
            .map_err(io("reading entry path".into()))?
            .into_owned();
        let unsafe_entry = |reason| ExtractError::Unsafe {
            archive: tarball.to_path_buf(),
            entry: raw.display().to_string(),
            reason,
        };
        let rel = relative_member(&raw).map_err(unsafe_entry)?;
        let kind = entry.header().entry_type();
        if let Some(target) = entry
            .link_name()
            .map_err(io("reading link target".into()))?
        {
            if matches!(kind, EntryType::Link | EntryType::Symlink) {
                check_link(&rel, kind, &target).map_err(unsafe_entry)?;
            }
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            if !rel.starts_with("dev") {
                return Err(unsafe_entry("device node outside /dev"));
            }
            if !policy.devices_under_dev {
                return Err(unsafe_entry("device node (not allowed in this archive)"));
            }
            make_device(&entry, &dir.join(&rel))
                .map_err(io(format!("creating device {}", rel.display())))?;
            stats.entries += 1;
            continue;
        }
        if rel.as_os_str().is_empty() {
            // The archive's own root ("./"): permissions of `dir` stay the caller's choice.
            continue;
        }
        stats.bytes += entry.header().size().unwrap_or(0);
        let unpacked = entry
            .unpack_in(dir)
            .map_err(io(format!("unpacking {}", rel.display())))?;
        if !unpacked {
            return Err(unsafe_entry(
                "refused by the tar reader (escapes the destination)",
            ));
        }
        stats.entries += 1;
        if stats.entries % 256 == 0 {
            bar.set_message(&format!("{} entries", stats.entries));
        }
    }
    drop(bar);
    Ok(stats)
}

fn make_device<R: Read>(entry: &tar::Entry<R>, dest: &Path) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let h = entry.header();
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    let mode = h.mode()?;
    let kind = if h.entry_type() == EntryType::Char {
        SFlag::S_IFCHR
    } else {
        SFlag::S_IFBLK
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::symlink_metadata(dest).is_ok() {
        fs::remove_file(dest)?;
    }
    mknod(
        dest,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .map_err(io::Error::from)?;
    if let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) {
        let _ = nix::unistd::chown(
            dest,
            Some(nix::unistd::Uid::from_raw(uid as u32)),
            Some(nix::unistd::Gid::from_raw(gid as u32)),
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    /// Builds a .tgz with raw header names, so tests can write names `tar::Builder` would refuse.
    pub fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder =
            tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn extracts_named_members() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.tgz");
        fs::write(
            &t,
            tgz(&[
                ("rel/fc", b"FC"),
                ("rel/jailer", b"JL"),
                ("rel/other", b"x"),
            ]),
        )
        .unwrap();
        let fc = dir.path().join("firecracker");
        extract_members(&t, &[("rel/fc", &fc, 0o755)]).unwrap();
        assert_eq!(fs::read(&fc).unwrap(), b"FC");
    }

    #[test]
    fn traversal_refuses_whole_archive() {
        let dir = tempfile::tempdir().unwrap();
        for evil in ["../escape", "/etc/passwd", "rel/../../x"] {
            let t = dir.path().join("evil.tgz");
            fs::write(&t, tgz(&[("rel/fc", b"FC"), (evil, b"pwned")])).unwrap();
            let fc = dir.path().join("fc");
            let err = extract_members(&t, &[("rel/fc", &fc, 0o755)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("escapes"), "{evil}: {err}");
            assert!(!fc.exists(), "nothing is installed from a hostile archive");
        }
    }

    #[test]
    fn missing_member_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.tgz");
        fs::write(&t, tgz(&[("rel/fc", b"FC")])).unwrap();
        let err = extract_members(&t, &[("rel/nope", &dir.path().join("x"), 0o755)]).unwrap_err();
        assert!(err.to_string().contains("not found"));
        fs::write(&t, b"not a tarball").unwrap();
        assert!(extract_members(&t, &[("rel/fc", &dir.path().join("x"), 0o755)]).is_err());
    }
}

#[cfg(test)]
pub(crate) mod extract_all_tests {
    use super::*;
    use crate::report::Silent;
    use flate2::write::GzEncoder;
    use std::fs::File;
    use std::io::Write;

    /// Builds a .tar.gz from raw headers, so tests can write what `tar::Builder` would refuse.
    fn tarball(dir: &Path, entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> PathBuf {
        let path = dir.join("t.tar.gz");
        let f = File::create(&path).unwrap();
        let b = tar_of(GzEncoder::new(f, flate2::Compression::fast()), entries);
        b.finish().unwrap().flush().unwrap();
        path
    }

    /// The same as a .tar.xz (the kernel source's format).
    pub(crate) fn tar_xz(
        dir: &Path,
        entries: &[(&str, EntryType, &[u8], Option<&str>)],
    ) -> PathBuf {
        let path = dir.join("t.tar.xz");
        let f = File::create(&path).unwrap();
        let b = tar_of(liblzma::write::XzEncoder::new(f, 1), entries);
        b.finish().unwrap().flush().unwrap();
        path
    }

    fn tar_of<W: Write>(w: W, entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> W {
        let mut b = tar::Builder::new(w);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Raw bytes: set_path would reject `..` and absolute names.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.as_gnu_mut().unwrap().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn extracts_plain_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(
            d.path(),
            &[
                ("./etc/", EntryType::Directory, b"", None),
                (
                    "./etc/alpine-release",
                    EntryType::Regular,
                    b"3.24.2\n",
                    None,
                ),
                ("./bin/sh", EntryType::Symlink, b"", Some("/bin/busybox")),
                (
                    "./usr/bin/up",
                    EntryType::Symlink,
                    b"",
                    Some("../../etc/alpine-release"),
                ),
            ],
        );
        let out = d.path().join("out");
        let s = extract_all(&t, &out, ExtractPolicy::FILES, &Silent).unwrap();
        assert_eq!(s.entries, 4);
        assert_eq!(
            fs::read_to_string(out.join("etc/alpine-release")).unwrap(),
            "3.24.2\n"
        );
        assert_eq!(
            fs::read_link(out.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn xz_goes_through_the_same_checks() {
        let d = tempfile::tempdir().unwrap();
        let t = tar_xz(
            d.path(),
            &[
                ("linux/Makefile", EntryType::Regular, b"all:\n", None),
                ("linux/up", EntryType::Symlink, b"", Some("Makefile")),
            ],
        );
        let out = d.path().join("out");
        let s = extract_all(&t, &out, ExtractPolicy::FILES, &Silent).unwrap();
        assert_eq!(s.entries, 2);
        assert_eq!(fs::read(out.join("linux/Makefile")).unwrap(), b"all:\n");

        let evil = tar_xz(
            d.path(),
            &[
                ("linux/Makefile", EntryType::Regular, b"x", None),
                ("../escaped", EntryType::Regular, b"x", None),
            ],
        );
        let err = extract_all(&evil, &d.path().join("out2"), ExtractPolicy::FILES, &Silent)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`..`") && err.contains("refusing"), "{err}");
        assert!(!d.path().join("escaped").exists());
    }

    fn refused(entries: &[(&str, EntryType, &[u8], Option<&str>)], why: &str) {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(d.path(), entries);
        let out = d.path().join("out");
        let err = extract_all(&t, &out, ExtractPolicy::ROOTFS, &Silent).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(!d.path().join("escaped").exists());
    }

    #[test]
    fn refuses_parent_dir() {
        refused(&[("../escaped", EntryType::Regular, b"x", None)], "`..`");
    }

    #[test]
    fn refuses_absolute() {
        refused(
            &[("/tmp/escaped", EntryType::Regular, b"x", None)],
            "absolute",
        );
    }

    #[test]
    fn refuses_device_outside_dev() {
        refused(
            &[("home/sda", EntryType::Block, b"", None)],
            "device node outside /dev",
        );
    }

    #[test]
    fn refuses_climbing_symlink_and_hardlink() {
        refused(
            &[("a/l", EntryType::Symlink, b"", Some("../../escaped"))],
            "climbs out",
        );
        refused(
            &[("a/h", EntryType::Link, b"", Some("/etc/shadow"))],
            "hard link",
        );
    }

    #[test]
    fn refuses_writing_through_symlinked_dir() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(
            d.path(),
            &[
                ("evil", EntryType::Symlink, b"", Some("/tmp")),
                ("evil/escaped", EntryType::Regular, b"x", None),
            ],
        );
        assert!(extract_all(&t, &d.path().join("out"), ExtractPolicy::FILES, &Silent).is_err());
    }
}
