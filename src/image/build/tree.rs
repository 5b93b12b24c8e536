//! Editing the staging tree the way the guest will see it: users, files, services, mounts.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

use super::super::common::BuildOptions;
use super::super::guest_agent;
use super::super::manifest::SourceRecord;
use super::super::recipe::{self, FileEntry, Recipe};
use super::plan::guest_agent_path;
use crate::fetch;

/// Drops files that differ from build to build and mean nothing in a fresh guest (logs, caches,
/// host keys a package generated: the builder installs its own).
pub(super) fn scrub(tree: &Path) -> anyhow::Result<()> {
    for dir in [
        "var/cache/apk",
        "var/cache/apt",
        "var/log/apt",
        "var/lib/apt/lists",
    ] {
        let d = tree.join(dir);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.file_name().is_some_and(|n| n == "partial" || n == "lock") {
                    continue;
                }
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
    for f in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/cache/ldconfig/aux-cache",
        "etc/machine-id",
    ] {
        let _ = fs::remove_file(tree.join(f));
    }
    if let Ok(rd) = fs::read_dir(tree.join("etc/ssh")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Resolves a guest path to a host path inside `tree`, following symlinks the way the guest
/// would (absolute targets restart at the tree's root, `..` stops at it), so that writing the
/// result can never touch the host: minirootfs trees hold absolute links like
/// /sbin/init -> /bin/busybox.
pub fn resolve_in_tree(tree: &Path, guest: &str, follow_last: bool) -> anyhow::Result<PathBuf> {
    let mut todo: Vec<OsString> = Path::new(guest)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let candidate = cur.join(&c);
        let last = todo.is_empty();
        let host = tree.join(&candidate);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    bail!("{guest}: too many levels of symbolic links in the image tree");
                }
                let target = fs::read_link(&host)?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => cur = candidate,
        }
    }
    Ok(tree.join(cur))
}

/// Creates `host` (a path inside `tree`) and its missing parents with mode 0755 whatever the
/// caller's umask: directories made here end up in the image, whose bytes must not depend on who
/// ran the build. Directories that exist keep their mode.
pub(super) fn create_dirs(tree: &Path, host: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut cur = host;
    while fs::symlink_metadata(cur).is_err() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) if p.starts_with(tree) => cur = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", d.display()))?;
    }
    Ok(())
}

pub(super) fn set_meta(host: &Path, mode: u32, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(host, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", host.display()))?;
    fs::set_permissions(host, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", host.display()))
}

/// Writes a file into the tree, replacing a symlink at the destination rather than writing
/// through it.
pub(super) fn write_guest_file(
    tree: &Path,
    dest: &str,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> anyhow::Result<()> {
    let host = resolve_in_tree(tree, dest, false)?;
    if let Some(parent) = host.parent() {
        create_dirs(tree, parent).with_context(|| format!("creating the parent of {dest}"))?;
    }
    match fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => bail!("{dest}: is a directory in the image tree"),
        Ok(_) => fs::remove_file(&host).with_context(|| format!("replacing {dest}"))?,
        Err(_) => {}
    }
    fs::write(&host, bytes).with_context(|| format!("writing {dest}"))?;
    set_meta(&host, mode, uid, gid)
}

pub(super) fn file_bytes(
    opts: &BuildOptions,
    r: &Recipe,
    f: &FileEntry,
    sources: &mut Vec<SourceRecord>,
) -> anyhow::Result<Vec<u8>> {
    if let Some(c) = &f.content {
        return Ok(c.as_bytes().to_vec());
    }
    if let Some(src) = &f.src {
        return opts
            .recipes
            .read(src)
            .with_context(|| format!("reading {}", opts.recipes.display(src)));
    }
    let p = guest_agent_path(opts, r, &f.dest)?;
    let bytes = guest_agent::read_static(&p)?;
    sources.push(SourceRecord {
        kind: "guest-agent".into(),
        origin: p.display().to_string(),
        algo: "sha256".into(),
        digest: fetch::sha256_hex(&bytes),
    });
    Ok(bytes)
}

fn read_db(tree: &Path, file: &str) -> Vec<String> {
    resolve_in_tree(tree, file, true)
        .ok()
        .and_then(|p| fs::read_to_string(p).ok())
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

fn write_db(tree: &Path, file: &str, lines: &[String], mode: u32) -> anyhow::Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    write_guest_file(tree, file, text.as_bytes(), mode, 0, 0)
}

/// Adds a user by editing passwd/group/shadow directly (no chroot: the tree may be for another
/// libc or lack useradd). The password field is `*`: no password login, but not "locked", which
/// OpenSSH would refuse even for key logins.
pub(super) fn add_user(tree: &Path, u: &recipe::User, epoch: u64) -> anyhow::Result<()> {
    let home = u
        .home
        .clone()
        .unwrap_or_else(|| format!("/home/{}", u.name));
    let mut passwd = read_db(tree, "/etc/passwd");
    if passwd.iter().any(|l| {
        l.split(':').nth(2) == Some(&u.uid.to_string()) && !l.starts_with(&format!("{}:", u.name))
    }) {
        bail!(
            "user {}: uid {} is already taken in the base tree's /etc/passwd",
            u.name,
            u.uid
        );
    }
    passwd.retain(|l| !l.starts_with(&format!("{}:", u.name)));
    passwd.push(format!(
        "{}:x:{}:{}:{}:{}:{}",
        u.name, u.uid, u.uid, u.name, home, u.shell
    ));
    write_db(tree, "/etc/passwd", &passwd, 0o644)?;

    let mut group = read_db(tree, "/etc/group");
    group.retain(|l| !l.starts_with(&format!("{}:", u.name)));
    group.push(format!("{}:x:{}:", u.name, u.uid));
    for g in &u.groups {
        let line = group
            .iter_mut()
            .find(|l| l.starts_with(&format!("{g}:")))
            .ok_or_else(|| anyhow!("user {}: group {g:?} does not exist in the image", u.name))?;
        if !line.ends_with(':') {
            line.push(',');
        }
        line.push_str(&u.name);
    }
    write_db(tree, "/etc/group", &group, 0o644)?;

    let mut shadow = read_db(tree, "/etc/shadow");
    shadow.retain(|l| !l.starts_with(&format!("{}:", u.name)));
    shadow.push(format!("{}:*:{}:0:99999:7:::", u.name, epoch / 86400));
    write_db(tree, "/etc/shadow", &shadow, 0o640)?;
    if let Some(g) = read_db(tree, "/etc/group")
        .iter()
        .find(|l| l.starts_with("shadow:"))
    {
        if let Some(gid) = g.split(':').nth(2).and_then(|s| s.parse().ok()) {
            let p = resolve_in_tree(tree, "/etc/shadow", true)?;
            set_meta(&p, 0o640, 0, gid)?;
        }
    }
    let h = resolve_in_tree(tree, &home, true)?;
    create_dirs(tree, &h)?;
    set_meta(&h, 0o750, u.uid, u.uid)
}

/// uid and gid for an owner name (`root`, a number, or a user in the tree's passwd).
pub(super) fn owner_ids(tree: &Path, owner: &str) -> anyhow::Result<(u32, u32)> {
    if owner == "root" {
        return Ok((0, 0));
    }
    if let Ok(n) = owner.parse::<u32>() {
        return Ok((n, n));
    }
    read_db(tree, "/etc/passwd")
        .iter()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&owner) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .ok_or_else(|| anyhow!("owner {owner:?} is not a user in the image"))
}

pub(super) fn write_services(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
    for s in &r.services {
        let body = match &s.user {
            // `su -s` works with both busybox and util-linux su.
            Some(u) => format!(
                "#!/bin/sh\nexec su -s /bin/sh {u} -c {}\n",
                sh_quote(&s.command)
            ),
            None => format!("#!/bin/sh\n{}\n", s.command),
        };
        write_guest_file(
            tree,
            &format!("/etc/fireclaw/services/{}", s.name),
            body.as_bytes(),
            0o755,
            0,
            0,
        )?;
    }
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) fn write_fstab(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
    if r.mounts.is_empty() {
        return Ok(());
    }
    let mut text =
        String::from("# written by fireclaw image build; the fireclaw init mounts these at boot\n");
    for m in &r.mounts {
        text.push_str(&format!(
            "{} {} {} {} 0 0\n",
            m.device, m.path, m.fstype, m.options
        ));
        let host = resolve_in_tree(tree, &m.path, true)?;
        create_dirs(tree, &host)?;
    }
    write_guest_file(tree, "/etc/fstab", text.as_bytes(), 0o644, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_in_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        fs::create_dir_all(t.join("bin")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", t.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/", t.join("loop")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", t.join("bin/up")).unwrap();
        fs::create_dir_all(t.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", t.join("sbin")).unwrap();
        assert_eq!(
            resolve_in_tree(t, "/bin/sh", false).unwrap(),
            t.join("bin/sh")
        );
        assert_eq!(
            resolve_in_tree(t, "/bin/sh", true).unwrap(),
            t.join("bin/busybox")
        );
        assert_eq!(
            resolve_in_tree(t, "/loop/loop/etc/x", true).unwrap(),
            t.join("etc/x")
        );
        assert_eq!(
            resolve_in_tree(t, "/bin/up/passwd", true).unwrap(),
            t.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_tree(t, "/sbin/init", false).unwrap(),
            t.join("usr/sbin/init")
        );
    }

    #[test]
    fn writing_over_an_absolute_symlink_replaces_the_link() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let outside = d.path().join("outside");
        fs::write(&outside, "host").unwrap();
        let tree = t.join("tree");
        fs::create_dir_all(tree.join("sbin")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sbin/init")).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let g = nix::unistd::getgid().as_raw();
        write_guest_file(&tree, "/sbin/init", b"guest", 0o755, me, g).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host");
        assert_eq!(fs::read_to_string(tree.join("sbin/init")).unwrap(), "guest");
    }
}
