//! The base tree: an extracted Alpine minirootfs plus `apk add` in a chroot, or mmdebstrap.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};

use super::super::common::{run_logged, with_fixed_umask, BuildOptions};
use super::super::manifest::SourceRecord;
use super::super::recipe::Source;
use super::plan::ImagePlan;
use super::tree::{create_dirs, resolve_in_tree, write_guest_file};
use crate::archive::{self, ExtractPolicy};
use crate::fetch;
use crate::report::Reporter;
use crate::root::RootPrefix;

pub(super) fn populate(
    opts: &BuildOptions,
    plan: &ImagePlan,
    tree: &Path,
    rep: &dyn Reporter,
) -> anyhow::Result<Vec<SourceRecord>> {
    let r = &plan.recipe;
    match &r.source {
        Source::AlpineMinirootfs { url, .. } => {
            let url = substitute_mirror(url, opts.alpine_mirror.as_deref()).with_context(|| {
                format!(
                    "{}: source.url",
                    r.chain.first().map(String::as_str).unwrap_or("recipe")
                )
            })?;
            let pin = r.source.pin().ok_or_else(|| anyhow!("source has no pin"))?;
            let tarball = opts.downloads().fetch(&url, &pin, rep)?;
            let stats = archive::extract_all(&tarball, tree, ExtractPolicy::ROOTFS, rep)?;
            rep.status(&format!(
                "image {}: extracted {} entries",
                plan.name, stats.entries
            ));
            if !tree.join("etc/alpine-release").is_file()
                || fs::symlink_metadata(tree.join("sbin/apk")).is_err()
            {
                bail!("{url}: not an Alpine minirootfs (no etc/alpine-release or sbin/apk)");
            }
            if let Some(m) = &opts.alpine_mirror {
                write_guest_file(
                    tree,
                    "/etc/apk/repositories",
                    repositories(m.trim_end_matches('/'), &alpine_branch_of(tree)).as_bytes(),
                    0o644,
                    0,
                    0,
                )?;
            }
            Ok(vec![SourceRecord {
                kind: "alpine-minirootfs".into(),
                origin: url,
                algo: pin.algo().into(),
                digest: pin.hex().into(),
            }])
        }
        Source::Debian { suite, variant } => {
            let mirror = match &opts.debian_mirror {
                Some(m) => m.clone(),
                None => debian_mirror_from_apt(&opts.root)?,
            };
            let step = rep.progress(
                &format!(
                    "image {}: mmdebstrap {suite} ({variant}, {} package(s))",
                    plan.name,
                    r.packages.len()
                ),
                None,
            );
            let mut cmd = Command::new("mmdebstrap");
            cmd.args(["--mode=root", "--format=directory", "--quiet"])
                .arg(format!("--variant={variant}"))
                .args([
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--aptopt=Acquire::Languages \"none\"",
                ])
                .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string());
            if !r.packages.is_empty() {
                cmd.arg(format!("--include={}", r.packages.join(",")));
            }
            cmd.arg(suite)
                .arg(tree)
                .arg(format!("deb {mirror} {suite} main"));
            run_logged(with_fixed_umask(&mut cmd), "mmdebstrap")?;
            drop(step);
            let status = fs::read(tree.join("var/lib/dpkg/status")).unwrap_or_default();
            Ok(vec![SourceRecord {
                kind: "debian".into(),
                origin: format!(
                    "{mirror} {suite} ({variant}); digest is of the installed dpkg status"
                ),
                algo: "sha256".into(),
                digest: fetch::sha256_hex(&status),
            }])
        }
    }
}

/// The repository branch of the extracted minirootfs (`v3.24`).
fn alpine_branch_of(tree: &Path) -> String {
    let release = fs::read_to_string(tree.join("etc/alpine-release")).unwrap_or_default();
    alpine_branch(release.trim())
}

/// /etc/apk/repositories for a mirror base (a URL or a path as apk sees it).
fn repositories(base: &str, branch: &str) -> String {
    format!("{base}/{branch}/main\n{base}/{branch}/community\n")
}

/// The host directory of a `file://` (or plain absolute path) mirror; `None` for http(s).
pub(super) fn local_mirror(m: &str) -> Option<PathBuf> {
    let p = m
        .strip_prefix("file://")
        .or_else(|| m.starts_with('/').then_some(m))?;
    Some(PathBuf::from(p.trim_end_matches('/')))
}

/// Where a local mirror appears inside the chroot while apk runs.
const MIRROR_IN_CHROOT: &str = "/.fireclaw-mirror";

/// `3.24.2` -> `v3.24` (the repository branch), `edge` stays.
fn alpine_branch(release: &str) -> String {
    let mut parts = release.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if a.chars().all(|c| c.is_ascii_digit()) => format!("v{a}.{b}"),
        _ => "edge".into(),
    }
}

/// Replaces `${ALPINE_MIRROR}` with the operator's mirror (no trailing slash).
pub fn substitute_mirror(url: &str, mirror: Option<&str>) -> anyhow::Result<String> {
    const VAR: &str = "${ALPINE_MIRROR}";
    if !url.contains(VAR) {
        return Ok(url.to_string());
    }
    let m = mirror.ok_or_else(|| {
        anyhow!(
            "{url} needs an Alpine mirror: pass --alpine-mirror URL or set FIRECLAW_ALPINE_MIRROR \
             (any mirror: the pinned digest decides what is accepted)"
        )
    })?;
    Ok(url.replace(VAR, m.trim_end_matches('/')))
}

/// The first Debian mirror in the host's apt configuration (a one-line `deb` entry in
/// sources.list or a deb822 `URIs:` stanza) whose suite is a release (not `-security`/`-updates`).
pub fn debian_mirror_from_apt(root: &RootPrefix) -> anyhow::Result<String> {
    let mut candidates: Vec<(String, Vec<String>)> = Vec::new();
    if let Ok(t) = fs::read_to_string(root.host("/etc/apt/sources.list")) {
        for line in t.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if words.first() == Some(&"deb") && words.len() >= 3 {
                candidates.push((words[1].to_string(), vec![words[2].to_string()]));
            }
        }
    }
    let dir = root.host("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(f).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                    .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let types = field("Types");
            if !types.iter().any(|t| t == "deb") {
                continue;
            }
            for uri in field("URIs") {
                candidates.push((uri, field("Suites")));
            }
        }
    }
    candidates
        .into_iter()
        .find(|(uri, suites)| uri.starts_with("http") && suites.iter().any(|s| !s.contains('-')))
        .map(|(uri, _)| uri)
        .ok_or_else(|| {
            anyhow!(
                "no Debian mirror found in {} or {}; pass --debian-mirror URL",
                root.host("/etc/apt/sources.list").display(),
                dir.display()
            )
        })
}

pub(super) fn install_packages(
    opts: &BuildOptions,
    plan: &ImagePlan,
    tree: &Path,
    rep: &dyn Reporter,
) -> anyhow::Result<()> {
    let r = &plan.recipe;
    if r.packages.is_empty() || !matches!(r.source, Source::AlpineMinirootfs { .. }) {
        return Ok(());
    }
    let local = opts.alpine_mirror.as_deref().and_then(local_mirror);
    if let Some(dir) = &local {
        if !dir.is_dir() {
            bail!(
                "Alpine mirror {}: not a directory on this host",
                dir.display()
            );
        }
    }
    let _step = rep.progress(
        &format!("image {}: apk add {}", plan.name, r.packages.join(" ")),
        None,
    );
    // apk and its scripts need a few device nodes and name resolution inside the chroot; they are
    // removed again so the image only has what the recipe asked for.
    let mut made = Vec::new();
    for (n, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("random", 1, 8),
        ("urandom", 1, 9),
    ] {
        let p = tree.join("dev").join(n);
        if fs::symlink_metadata(&p).is_err() {
            create_dirs(tree, &tree.join("dev"))?;
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .with_context(|| format!("mknod {}", p.display()))?;
            made.push(p);
        }
    }
    let resolv = resolve_in_tree(tree, "/etc/resolv.conf", false)?;
    let saved_resolv = fs::read(&resolv).ok();
    if let Ok(host) = fs::read(opts.root.host("/etc/resolv.conf")) {
        let _ = fs::remove_file(&resolv);
        fs::write(&resolv, host)?;
    }
    let result = match &local {
        None => run_logged(
            with_fixed_umask(
                Command::new("chroot")
                    .arg(tree)
                    .args(["/sbin/apk", "add", "--no-cache", "--no-progress"])
                    .args(&r.packages)
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ),
            "apk add (in the image's chroot)",
        ),
        Some(dir) => apk_from_local_mirror(tree, dir, &r.packages),
    };
    let _ = fs::remove_file(&resolv);
    if let Some(b) = saved_resolv {
        fs::write(&resolv, b)?;
    }
    for p in made {
        let _ = fs::remove_file(p);
    }
    result
}

/// apk runs in the chroot, where the host path of a local mirror does not exist: the mirror is
/// bind-mounted (read-only) at [`MIRROR_IN_CHROOT`] in a private mount namespace that dies with the
/// command, so no mount outlives the install even if fireclaw is killed, and the repositories file
/// names it as apk sees it for the install only. The empty mount point is removed afterwards.
fn apk_from_local_mirror(tree: &Path, dir: &Path, packages: &[String]) -> anyhow::Result<()> {
    let repos = resolve_in_tree(tree, "/etc/apk/repositories", true)?;
    let saved = fs::read(&repos).ok();
    let mnt = tree.join(MIRROR_IN_CHROOT.trim_start_matches('/'));
    create_dirs(tree, &mnt)?;
    let result = (|| {
        write_guest_file(
            tree,
            "/etc/apk/repositories",
            repositories(MIRROR_IN_CHROOT, &alpine_branch_of(tree)).as_bytes(),
            0o644,
            0,
            0,
        )?;
        run_logged(
            with_fixed_umask(
                Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg("mount --bind -o ro -- \"$1\" \"$2\" && shift 2 && exec chroot \"$@\"")
                    .arg("sh")
                    .arg(dir)
                    .arg(&mnt)
                    .arg(tree)
                    .args(["/sbin/apk", "add", "--no-cache", "--no-progress"])
                    .args(packages)
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ),
            "apk add from the local mirror (in the image's chroot)",
        )
    })();
    let restored = match saved {
        Some(b) => fs::write(&repos, b).with_context(|| format!("restoring {}", repos.display())),
        None => fs::remove_file(&repos).or(Ok(())),
    };
    fs::remove_dir(&mnt).with_context(|| {
        format!(
            "removing the mirror mount point {} (still mounted?)",
            mnt.display()
        )
    })?;
    result.and(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_substitution() {
        assert_eq!(
            substitute_mirror("${ALPINE_MIRROR}/v3/x.tar.gz", Some("file:///m/")).unwrap(),
            "file:///m/v3/x.tar.gz"
        );
        assert!(substitute_mirror("${ALPINE_MIRROR}/x", None)
            .unwrap_err()
            .to_string()
            .contains("--alpine-mirror"));
        assert_eq!(alpine_branch("3.24.2"), "v3.24");
    }

    #[test]
    fn debian_mirror_from_deb822_and_one_line() {
        let d = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(d.path());
        fs::create_dir_all(d.path().join("etc/apt/sources.list.d")).unwrap();
        fs::write(
            d.path().join("etc/apt/sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n\
             Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
        )
        .unwrap();
        assert_eq!(
            debian_mirror_from_apt(&root).unwrap(),
            "http://mirror.example/debian"
        );
        fs::write(
            d.path().join("etc/apt/sources.list"),
            "deb [arch=amd64] http://one.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            debian_mirror_from_apt(&root).unwrap(),
            "http://one.example/debian"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(debian_mirror_from_apt(&RootPrefix::new(empty.path())).is_err());
    }
}
