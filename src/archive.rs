//! Safe extraction from gzip-compressed tarballs. Archives come from the network: an entry with an
//! absolute path, a `..` component, or a link pointing out of the destination is refused, never
//! "sanitised", because an archive that tries it is not the archive that was pinned.

use std::fs;
use std::io::Read;
use std::path::{Component, Path};

use anyhow::Context as _;
use flate2::read::GzDecoder;

use crate::plan::fsops;

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
