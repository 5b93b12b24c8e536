//! Typed actions: what a plan says it will do, and the undo record journaled before it is done.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::fsops;
use crate::root::RootPrefix;

/// One change to the host. Paths are host paths as configured (absolute); they are resolved under the
/// root prefix when applied.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Create the state database (and the directories above it that are missing). The engine opens
    /// it here; uninstall deletes it last, after every other change is reversed.
    CreateStateDb {
        path: String,
        dirs: Vec<String>,
    },
    CreateDir {
        path: String,
        #[serde(serialize_with = "ser_mode")]
        mode: u32,
    },
    WriteFile {
        path: String,
        #[serde(serialize_with = "ser_mode")]
        mode: u32,
        /// The group the file is given (owner root), for a configuration a daemon reads as that
        /// group; `None`: root's.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(skip)]
        content: Vec<u8>,
        /// What is on disk now (`None`: no file).
        #[serde(skip)]
        before: Option<Vec<u8>>,
        /// Secrets that must not appear in printed diffs, with the placeholder shown instead.
        #[serde(skip)]
        redact: Vec<(String, String)>,
        /// Unified diff against what is on disk (secrets redacted), filled in by the renderer.
        #[serde(skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
        /// `systemctl` arguments to run after the file changes, and again after uninstall restores
        /// it (a daemon-reload, a service restart), so the service always runs the file on disk.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        systemctl_after: Vec<String>,
    },
    /// A random secret (IRC operator password), written 0600; never printed.
    GenerateSecret {
        path: String,
        length: usize,
    },
    /// An ed25519 key pair for guests: `path` (0600) and `path.pub`.
    GenerateSshKey {
        path: String,
        comment: String,
    },
    /// Write `path.pub` (0644) from the existing private key `path`, which stays as it is.
    DerivePublicKey {
        path: String,
    },
    /// Fetch an archive pinned by sha256 (cached by digest), then install members from it.
    InstallFromArchive {
        url: String,
        sha256: String,
        members: Vec<ArchiveMember>,
        /// Verified downloads are kept here by digest (host path).
        cache_dir: String,
    },
    AptInstall {
        packages: Vec<String>,
    },
    CreateBridge {
        name: String,
    },
    AddAddress {
        link: String,
        cidr: String,
    },
    SetLinkUp {
        link: String,
    },
    SetSysctl {
        key: String,
        value: String,
    },
    /// Replace (or create) fireclaw's own nftables table with exactly this ruleset.
    NftTable {
        family: String,
        name: String,
        ruleset: String,
    },
    Systemctl {
        args: Vec<String>,
    },
    /// A system group (`groupadd --system`): `fireclaw`, whose members may use the runtime's
    /// control socket. Planned only when the group is missing, so its undo removes only a group
    /// provision created.
    CreateGroup {
        name: String,
    },
    /// Create the dm thin pool: sparse files under `<state_dir>/pool`, loop devices, the thin-pool
    /// target. Recorded in the state database, from which it is re-activated after a reboot.
    CreateThinPool {
        state_dir: String,
        data_mib: u64,
        metadata_mib: u64,
        block_sectors: u64,
        max_used_percent: u8,
    },
    /// Copy an image into a new thin volume of the pool (once per image content).
    ImportThinImage {
        state_dir: String,
        image: String,
        path: String,
        digest: String,
    },
    /// Work done by a builder (kernel, images) described in one line; `id` picks the builder.
    Build {
        id: String,
        description: String,
        /// Files the build creates, removed on uninstall.
        outputs: Vec<String>,
        /// Directories the builder creates for its own use (staging trees, sources), which did not
        /// exist when this was planned: removed whole on uninstall.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        scratch: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveMember {
    /// Path inside the archive.
    pub member: String,
    /// Host path to install it to.
    pub dest: String,
    #[serde(serialize_with = "ser_mode", deserialize_with = "de_mode")]
    pub mode: u32,
}

/// How to take one action back. Every variant is idempotent: reverting something that never happened
/// (an interrupted run's `pending` entry) is a no-op.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// Remove a directory provision created, if it is empty by then.
    RemoveDir {
        path: String,
    },
    /// Put back a file's previous content, mode and owner (kept in the journal's backup column),
    /// or remove the file when there was none.
    RestoreFile {
        path: String,
        previous_mode: Option<u32>,
        /// (uid, gid); absent in journals written before owners were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_owner: Option<(u32, u32)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        systemctl_after: Vec<String>,
    },
    RemoveFiles {
        paths: Vec<String>,
    },
    /// Put each of `paths` back as it was before the action (the journal's backup is a tar of
    /// those that existed, with mode and owner: see `fsops::save_files`); remove those that did not
    /// exist. Exact whether or not the action ran, or ran halfway.
    RestoreFiles {
        paths: Vec<String>,
    },
    /// Remove files, then directory trees that fireclaw created for itself.
    RemoveBuild {
        files: Vec<String>,
        trees: Vec<String>,
    },
    AptRemove {
        packages: Vec<String>,
    },
    DeleteLink {
        name: String,
    },
    DeleteAddress {
        link: String,
        cidr: String,
    },
    SetLinkDown {
        link: String,
    },
    RestoreSysctl {
        key: String,
        value: String,
    },
    /// Restore the table that was there before (kept as the backup) or delete ours.
    RestoreNftTable {
        family: String,
        name: String,
    },
    Systemctl {
        args: Vec<String>,
    },
    /// `groupdel`, if the group still exists.
    DeleteGroup {
        name: String,
    },
    /// Remove the thin pool's devices (VM disks, volumes, pool, loop devices), rows and files.
    DestroyThinPool {
        state_dir: String,
    },
    Nothing,
}

fn ser_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

fn de_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(&text, 8).map_err(serde::de::Error::custom)
}

impl Action {
    /// One line, as the plan prints it and the journal records it. Never contains a secret.
    pub fn describe(&self) -> String {
        match self {
            Action::CreateStateDb { path, dirs } if dirs.is_empty() => {
                format!("create state database {path}")
            }
            Action::CreateStateDb { path, dirs } => {
                format!(
                    "create state database {path} (with directories {})",
                    dirs.join(", ")
                )
            }
            Action::CreateDir { path, mode } => {
                format!("create directory {path} (mode {mode:04o})")
            }
            Action::WriteFile {
                path,
                mode,
                before,
                group,
                ..
            } => {
                let verb = if before.is_none() { "create" } else { "update" };
                match group {
                    None => format!("{verb} file {path} (mode {mode:04o})"),
                    Some(g) => format!("{verb} file {path} (root:{g}, mode {mode:04o})"),
                }
            }
            Action::GenerateSecret { path, length } => {
                format!(
                    "generate a {length}-character secret into {path} (mode 0600, never printed)"
                )
            }
            Action::GenerateSshKey { path, comment } => {
                format!(
                    "generate ed25519 key pair {path} (0600) and {path}.pub, comment {comment:?}"
                )
            }
            Action::DerivePublicKey { path } => {
                format!("write {path}.pub (0644) from the existing private key {path}")
            }
            Action::InstallFromArchive {
                url,
                sha256,
                members,
                ..
            } => {
                let list = members
                    .iter()
                    .map(|m| format!("{} -> {} ({:04o})", m.member, m.dest, m.mode))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("download {url} (sha256 {sha256}), verify, install {list}")
            }
            Action::AptInstall { packages } => {
                format!(
                    "apt-get install -y --no-install-recommends {}",
                    packages.join(" ")
                )
            }
            Action::CreateBridge { name } => format!("ip link add {name} type bridge"),
            Action::AddAddress { link, cidr } => format!("ip address add {cidr} dev {link}"),
            Action::SetLinkUp { link } => format!("ip link set {link} up"),
            Action::SetSysctl { key, value } => format!("sysctl -w {key}={value}"),
            Action::NftTable { family, name, .. } => {
                format!("nft -f - (table {family} {name}, ruleset below)")
            }
            Action::Systemctl { args } => format!("systemctl {}", args.join(" ")),
            Action::CreateGroup { name } => format!("groupadd --system {name}"),
            Action::CreateThinPool {
                state_dir,
                data_mib,
                metadata_mib,
                block_sectors,
                ..
            } => {
                let dir = crate::storage::thin::pool_dir(state_dir);
                format!(
                    "create sparse {dir}/data.img ({data_mib} MiB) and {dir}/metadata.img ({metadata_mib} MiB), attach loop devices, create dm thin-pool fireclaw-pool (block {block_sectors} sectors, discard passdown, error_if_no_space)"
                )
            }
            Action::ImportThinImage {
                image,
                path,
                digest,
                ..
            } => format!(
                "import image {image:?} from {path} into a new thin volume (content {digest})"
            ),
            Action::Build { description, .. } => description.clone(),
        }
    }

    /// Captures what is needed to undo this action, *before* it runs: the file it will overwrite,
    /// the sysctl value it will change. Returns the undo record and an optional backup blob.
    pub fn prepare_undo(&self, root: &RootPrefix) -> anyhow::Result<(Undo, Option<Vec<u8>>)> {
        Ok(match self {
            Action::CreateStateDb { .. } => (Undo::Nothing, None),
            Action::CreateDir { path, .. } => (Undo::RemoveDir { path: path.clone() }, None),
            Action::WriteFile {
                path,
                systemctl_after,
                ..
            } => {
                let previous = fsops::read_existing(&root.host(path))?;
                let undo = Undo::RestoreFile {
                    path: path.clone(),
                    previous_mode: previous.as_ref().map(|p| p.mode),
                    previous_owner: previous.as_ref().map(|p| p.owner),
                    systemctl_after: systemctl_after.clone(),
                };
                (undo, previous.map(|p| p.content))
            }
            // Whatever these write is saved first: a file that was there (the operator's own
            // firecracker, a key) comes back as it was; one that was not is removed.
            Action::GenerateSecret { path, .. } => restore_files(root, vec![path.clone()])?,
            Action::GenerateSshKey { path, .. } => {
                restore_files(root, vec![path.clone(), format!("{path}.pub")])?
            }
            Action::DerivePublicKey { path } => restore_files(root, vec![format!("{path}.pub")])?,
            Action::InstallFromArchive {
                members,
                sha256,
                cache_dir,
                ..
            } => {
                let mut paths: Vec<String> = members.iter().map(|m| m.dest.clone()).collect();
                // A verified download this run fetches is fireclaw's and goes on uninstall; one
                // already cached is left alone (and not copied into the journal).
                let download = format!("{cache_dir}/{}/{sha256}", crate::fetch::DOWNLOADS_DIR);
                if !root.host(&download).exists() {
                    paths.push(download);
                }
                restore_files(root, paths)?
            }
            Action::AptInstall { packages } => (
                Undo::AptRemove {
                    packages: packages.clone(),
                },
                None,
            ),
            Action::CreateBridge { name } => (Undo::DeleteLink { name: name.clone() }, None),
            Action::AddAddress { link, cidr } => (
                Undo::DeleteAddress {
                    link: link.clone(),
                    cidr: cidr.clone(),
                },
                None,
            ),
            Action::SetLinkUp { link } => (Undo::SetLinkDown { link: link.clone() }, None),
            Action::SetSysctl { key, .. } => (
                Undo::RestoreSysctl {
                    key: key.clone(),
                    value: crate::net::sysctl::read(key)?,
                },
                None,
            ),
            Action::NftTable { family, name, .. } => (
                Undo::RestoreNftTable {
                    family: family.clone(),
                    name: name.clone(),
                },
                crate::net::nft::dump_table(family, name)?.map(String::into_bytes),
            ),
            Action::Systemctl { args } => (
                Undo::Systemctl {
                    args: systemctl_inverse(args),
                },
                None,
            ),
            Action::CreateGroup { name } => (Undo::DeleteGroup { name: name.clone() }, None),
            Action::Build {
                outputs, scratch, ..
            } => (
                Undo::RemoveBuild {
                    files: outputs.clone(),
                    trees: scratch.clone(),
                },
                None,
            ),
            Action::CreateThinPool { state_dir, .. } => (
                Undo::DestroyThinPool {
                    state_dir: state_dir.clone(),
                },
                None,
            ),
            // The pool's own undo removes every volume in it.
            Action::ImportThinImage { .. } => (Undo::Nothing, None),
        })
    }

    /// Carries the change out; long work (builds) reports its progress through `reporter`.
    pub fn execute(
        &self,
        root: &RootPrefix,
        config: &crate::config::Config,
        reporter: &dyn crate::report::Reporter,
    ) -> anyhow::Result<()> {
        match self {
            // The engine opens the database itself (it needs the handle); see plan::apply.
            Action::CreateStateDb { .. } => Ok(()),
            Action::CreateDir { path, mode } => fsops::create_dir(&root.host(path), *mode),
            Action::WriteFile {
                path,
                mode,
                group,
                content,
                systemctl_after,
                ..
            } => file_owner(group.as_deref()).and_then(|owner| {
                fsops::write_atomic_owned(&root.host(path), content, *mode, owner)?;
                if systemctl_after.is_empty() {
                    Ok(())
                } else {
                    crate::provision::systemd::systemctl(systemctl_after)
                }
            }),
            Action::GenerateSecret { path, length } => fsops::write_atomic(
                &root.host(path),
                fsops::random_secret(*length).as_bytes(),
                0o600,
            ),
            Action::GenerateSshKey { path, comment } => {
                crate::provision::keys::generate_ed25519(&root.host(path), comment)
            }
            Action::DerivePublicKey { path } => {
                crate::provision::keys::write_public_half(&root.host(path))
            }
            Action::InstallFromArchive {
                url,
                sha256,
                members,
                cache_dir,
            } => crate::provision::firecracker::install(root, url, sha256, members, cache_dir),
            Action::AptInstall { packages } => crate::provision::packages::apt_install(packages),
            Action::CreateBridge { name } => crate::net::link::create_bridge(name),
            Action::AddAddress { link, cidr } => crate::net::link::add_address(link, cidr),
            Action::SetLinkUp { link } => crate::net::link::set_up(link, true),
            Action::SetSysctl { key, value } => crate::net::sysctl::write(key, value),
            Action::NftTable { ruleset, .. } => crate::net::nft::apply(ruleset),
            Action::Systemctl { args } => crate::provision::systemd::systemctl(args),
            Action::CreateGroup { name } => crate::provision::group::create(name),
            Action::Build { id, .. } => crate::provision::build(root, config, id, reporter),
            Action::CreateThinPool {
                state_dir,
                data_mib,
                metadata_mib,
                block_sectors,
                max_used_percent,
            } => crate::provision::thinpool::create(
                root,
                state_dir,
                crate::config::ThinPool {
                    enabled: true,
                    data_mib: *data_mib,
                    metadata_mib: *metadata_mib,
                    block_sectors: *block_sectors,
                    max_used_percent: *max_used_percent,
                },
            ),
            Action::ImportThinImage {
                state_dir,
                image,
                path,
                digest,
            } => crate::provision::thinpool::import(root, state_dir, image, path, digest),
        }
        .with_context(|| format!("failed to {}", self.describe()))
    }
}

/// The undo record and backup for an action that writes `paths`.
fn restore_files(root: &RootPrefix, paths: Vec<String>) -> anyhow::Result<(Undo, Option<Vec<u8>>)> {
    let backup = fsops::save_files(&paths, |p| root.host(p))?;
    Ok((Undo::RestoreFiles { paths }, backup))
}

/// (root, `group`'s gid) for a file a daemon reads through its group; `None` leaves the owner to
/// the writer (root).
pub fn file_owner(group: Option<&str>) -> anyhow::Result<Option<(u32, u32)>> {
    let Some(name) = group else {
        return Ok(None);
    };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(Some((0, g.gid.as_raw()))),
        Ok(None) => anyhow::bail!("group {name} does not exist"),
        Err(e) => anyhow::bail!("looking up group {name}: {e}"),
    }
}

/// `enable X` is undone by `disable X`; `daemon-reload` and restarts are re-run on the way out so the
/// service manager sees the restored files.
fn systemctl_inverse(args: &[String]) -> Vec<String> {
    match args.first().map(String::as_str) {
        Some("enable") => std::iter::once("disable".to_string())
            .chain(args[1..].iter().cloned())
            .collect(),
        _ => args.to_vec(),
    }
}

impl Undo {
    pub fn describe(&self) -> String {
        match self {
            Undo::RemoveDir { path } => format!("remove directory {path} (if empty)"),
            Undo::RestoreFile {
                path,
                previous_mode: Some(mode),
                ..
            } => format!("restore previous {path} (mode {mode:04o})"),
            Undo::RestoreFile { path, .. } => format!("remove file {path}"),
            Undo::RemoveFiles { paths } => format!("remove {}", paths.join(", ")),
            Undo::RestoreFiles { paths } => {
                format!(
                    "restore {} as they were (removing any that were not there)",
                    paths.join(", ")
                )
            }
            Undo::RemoveBuild { files, trees } => {
                let all: Vec<&str> = files.iter().chain(trees).map(String::as_str).collect();
                format!("remove {}", all.join(", "))
            }
            Undo::AptRemove { packages } => format!("apt-get remove -y {}", packages.join(" ")),
            Undo::DeleteLink { name } => format!("ip link delete {name}"),
            Undo::DeleteAddress { link, cidr } => format!("ip address delete {cidr} dev {link}"),
            Undo::SetLinkDown { link } => format!("ip link set {link} down"),
            Undo::RestoreSysctl { key, value } => format!("sysctl -w {key}={value}"),
            Undo::RestoreNftTable { family, name } => {
                format!("nft delete table {family} {name} (restoring any previous table)")
            }
            Undo::Systemctl { args } => format!("systemctl {}", args.join(" ")),
            Undo::DeleteGroup { name } => format!("groupdel {name}"),
            Undo::DestroyThinPool { state_dir } => format!(
                "remove thin pool fireclaw-pool (VM disks, volumes, loop devices) and {}",
                crate::storage::thin::pool_dir(state_dir)
            ),
            Undo::Nothing => "nothing to undo".into(),
        }
    }

    pub fn revert(&self, root: &RootPrefix, backup: Option<&[u8]>) -> anyhow::Result<()> {
        match self {
            Undo::RemoveDir { path } => fsops::remove_dir_if_empty(&root.host(path)),
            Undo::RestoreFile {
                path,
                previous_mode,
                previous_owner,
                systemctl_after,
            } => {
                let resolved = root.host(path);
                match (previous_mode, backup) {
                    (Some(mode), Some(bytes)) => {
                        fsops::write_atomic_owned(&resolved, bytes, *mode, *previous_owner)
                    }
                    _ => fsops::remove_file_if_exists(&resolved),
                }?;
                if systemctl_after.is_empty() {
                    Ok(())
                } else {
                    crate::provision::systemd::systemctl(systemctl_after)
                }
            }
            Undo::RemoveFiles { paths } => paths
                .iter()
                .try_for_each(|p| fsops::remove_file_if_exists(&root.host(p))),
            Undo::RestoreFiles { paths } => fsops::restore_files(paths, backup, |p| root.host(p)),
            Undo::RemoveBuild { files, trees } => {
                files
                    .iter()
                    .try_for_each(|p| fsops::remove_file_if_exists(&root.host(p)))?;
                trees
                    .iter()
                    .try_for_each(|p| fsops::remove_tree_if_exists(&root.host(p)))
            }
            Undo::AptRemove { packages } => crate::provision::packages::apt_remove(packages),
            Undo::DeleteLink { name } => crate::net::link::delete(name),
            Undo::DeleteAddress { link, cidr } => crate::net::link::delete_address(link, cidr),
            Undo::SetLinkDown { link } => crate::net::link::set_up(link, false),
            Undo::RestoreSysctl { key, value } => crate::net::sysctl::write(key, value),
            Undo::RestoreNftTable { family, name } => {
                crate::net::nft::delete_table(family, name)?;
                match backup {
                    Some(previous) => crate::net::nft::apply(&String::from_utf8_lossy(previous)),
                    None => Ok(()),
                }
            }
            Undo::Systemctl { args } => crate::provision::systemd::systemctl(args),
            Undo::DeleteGroup { name } => crate::provision::group::delete(name),
            Undo::DestroyThinPool { state_dir } => {
                crate::provision::thinpool::destroy(root, state_dir)
            }
            Undo::Nothing => Ok(()),
        }
        .with_context(|| format!("failed to {}", self.describe()))
    }
}

impl Action {
    /// Files and directories this action creates, for tests and `status`.
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Action::CreateStateDb { path, dirs } => dirs
                .iter()
                .chain(std::iter::once(path))
                .map(PathBuf::from)
                .collect(),
            Action::CreateDir { path, .. }
            | Action::WriteFile { path, .. }
            | Action::GenerateSecret { path, .. } => vec![PathBuf::from(path)],
            Action::GenerateSshKey { path, .. } => {
                vec![PathBuf::from(path), PathBuf::from(format!("{path}.pub"))]
            }
            Action::DerivePublicKey { path } => vec![PathBuf::from(format!("{path}.pub"))],
            Action::InstallFromArchive { members, .. } => {
                members.iter().map(|m| PathBuf::from(&m.dest)).collect()
            }
            Action::Build { outputs, .. } => outputs.iter().map(PathBuf::from).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_records_round_trip_through_json() {
        for undo in [
            Undo::RemoveDir { path: "/a".into() },
            Undo::RestoreFile {
                path: "/b".into(),
                previous_mode: Some(0o644),
                previous_owner: Some((0, 39)),
                systemctl_after: vec!["daemon-reload".into()],
            },
            Undo::RestoreNftTable {
                family: "inet".into(),
                name: "fireclaw".into(),
            },
            Undo::Systemctl {
                args: vec!["disable".into(), "fireclaw.service".into()],
            },
        ] {
            let json = serde_json::to_string(&undo).unwrap();
            assert_eq!(serde_json::from_str::<Undo>(&json).unwrap(), undo);
        }
    }

    #[test]
    fn enable_is_undone_by_disable() {
        let args = vec!["enable".to_string(), "fireclaw.service".to_string()];
        assert_eq!(
            systemctl_inverse(&args),
            vec!["disable", "fireclaw.service"]
        );
        let now: Vec<String> = ["enable", "--now", "fireclaw.service"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            systemctl_inverse(&now),
            vec!["disable", "--now", "fireclaw.service"]
        );
        let reload = vec!["daemon-reload".to_string()];
        assert_eq!(systemctl_inverse(&reload), reload);
    }

    #[test]
    fn descriptions_never_hold_secret_content() {
        let a = Action::WriteFile {
            path: "/etc/x".into(),
            mode: 0o600,
            group: None,
            content: b"hunter2".to_vec(),
            before: None,
            redact: vec![("hunter2".into(), "<secret>".into())],
            diff: None,
            systemctl_after: vec![],
        };
        assert!(!a.describe().contains("hunter2"));
        assert!(!serde_json::to_string(&a).unwrap().contains("hunter2"));
    }

    #[test]
    fn file_write_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/keep"), b"original\n").unwrap();
        let write = Action::WriteFile {
            path: "/etc/keep".into(),
            mode: 0o640,
            group: None,
            content: b"ours\n".to_vec(),
            before: Some(b"original\n".to_vec()),
            redact: vec![],
            diff: None,
            systemctl_after: vec![],
        };
        let (undo, backup) = write.prepare_undo(&root).unwrap();
        write
            .execute(
                &root,
                &crate::config::Config::default(),
                &crate::report::Silent,
            )
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/keep")).unwrap(),
            b"ours\n"
        );
        undo.revert(&root, backup.as_deref()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/keep")).unwrap(),
            b"original\n"
        );
        // Idempotent: reverting twice changes nothing more.
        undo.revert(&root, backup.as_deref()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/keep")).unwrap(),
            b"original\n"
        );
    }
}
