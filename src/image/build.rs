//! Recipe -> ext4 image, without mounting anything.
//!
//! A staging directory under the cache gets the base tree (extracted tarball or mmdebstrap), the
//! packages, users, files, services and SSH keys; every timestamp is clamped to one epoch; then
//! `mkfs.ext4 -d` packs it with a UUID and hash seed derived from the recipe hash, under
//! `E2FSPROGS_FAKE_TIME`, so the same inputs give the same bytes. `e2fsck -fn` checks the result
//! before it is renamed over the previous image: a failed build leaves the old image (or none),
//! never a partial one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use indicatif::ProgressBar;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{self, KernelRef, Manifest, SourceRecord};
use super::recipe::{self, FileEntry, Recipe, Source};
use super::Store;
use crate::archive::{self, ExtractPolicy};
use crate::fetch::{self, Cache};
use crate::root::RootPrefix;

/// Bumped when the builder's output for the same recipe changes, so old images are rebuilt.
pub const BUILDER_FORMAT: u32 = 1;

/// The timestamp every file in an image carries unless SOURCE_DATE_EPOCH says otherwise
/// (2024-01-01T00:00:00Z): any fixed value makes images reproducible.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_704_067_200;

/// Everything a build needs to know about the host. Paths are already resolved under the root
/// prefix.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub root: RootPrefix,
    /// Where recipes are read from.
    pub recipes: Store,
    /// Where the kernel's `source.toml` and config fragments are read from.
    pub kernel: Store,
    /// Downloads (by digest), staging trees, kernel sources, SSH host keys.
    pub cache_dir: PathBuf,
    /// Where images, the kernel and their manifests are written.
    pub image_dir: PathBuf,
    /// OpenSSH public key lines installed for root and for users with `ssh = true`.
    pub authorized_keys: Vec<String>,
    /// The guest agent binary for `builtin = "guest-agent"` files; default: this executable.
    pub guest_agent: Option<PathBuf>,
    /// Base URL substituted for `${ALPINE_MIRROR}` in recipes and written to /etc/apk/repositories.
    pub alpine_mirror: Option<String>,
    /// Debian mirror URL for mmdebstrap; default: the first one in the host's apt configuration.
    pub debian_mirror: Option<String>,
    pub source_date_epoch: u64,
    /// make -j for the kernel.
    pub jobs: usize,
}

impl BuildOptions {
    /// Options from the fireclaw config's paths, with the recipes and kernel config compiled in.
    pub fn from_config(root: &RootPrefix, config: &crate::config::Config) -> BuildOptions {
        let key = root.host(format!("{}/id_ed25519.pub", config.paths.config_dir));
        let authorized_keys = fs::read_to_string(key)
            .map(|t| {
                t.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        BuildOptions {
            root: root.clone(),
            recipes: recipe::embedded(),
            kernel: super::kernel::embedded(),
            cache_dir: root.host(&config.paths.cache_dir),
            image_dir: root.host(&config.paths.image_dir),
            authorized_keys,
            guest_agent: None,
            alpine_mirror: std::env::var("FIRECLAW_ALPINE_MIRROR")
                .ok()
                .or_else(|| Some(config.images.alpine_mirror.clone()))
                .filter(|s| !s.is_empty()),
            debian_mirror: None,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SOURCE_DATE_EPOCH),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    pub fn downloads(&self) -> Cache {
        Cache::new(self.cache_dir.join(fetch::DOWNLOADS_DIR))
    }
}

/// What building one recipe would do, computed without changing anything.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub name: String,
    pub recipe: Recipe,
    /// Digest of every input; stored in the manifest.
    pub input_hash: String,
    pub image_path: PathBuf,
    pub manifest_path: PathBuf,
    pub up_to_date: bool,
    /// Why a build is (not) needed, for `--dry-run`.
    pub reason: String,
}

impl ImagePlan {
    pub fn describe(&self) -> String {
        let src = match &self.recipe.source {
            Source::AlpineMinirootfs { url, .. } => format!(
                "Alpine minirootfs {}",
                url.rsplit('/').next().unwrap_or(url)
            ),
            Source::Debian { suite, variant } => format!("Debian {suite} ({variant}, mmdebstrap)"),
        };
        format!(
            "image {}: {} + {} package(s), {} user(s), {} file(s), {} MiB ext4 -> {} ({})",
            self.name,
            src,
            self.recipe.packages.len(),
            self.recipe.users.len(),
            self.recipe.files.len(),
            self.recipe.size_mib,
            self.image_path.display(),
            self.reason
        )
    }
}

#[derive(Serialize)]
struct HashInput<'a> {
    builder_format: u32,
    recipe: Recipe,
    files: BTreeMap<String, String>,
    guest_agent: Option<String>,
    authorized_keys: &'a [String],
    source_date_epoch: u64,
}

/// Plans recipe `name`: loads and validates it and compares its input hash with the manifest.
pub fn plan_image(opts: &BuildOptions, name: &str) -> anyhow::Result<ImagePlan> {
    let recipe = recipe::load(&opts.recipes, name)?;
    let mut files = BTreeMap::new();
    let mut guest_agent = None;
    for f in &recipe.files {
        if let Some(src) = &f.src {
            let bytes = opts.recipes.read(src).with_context(|| {
                format!(
                    "{}: file for {}: {}",
                    recipe_file(&recipe),
                    f.dest,
                    opts.recipes.display(src)
                )
            })?;
            files.insert(src.clone(), fetch::sha256_hex(&bytes));
        }
        if f.builtin.is_some() {
            let p = guest_agent_path(opts)?;
            guest_agent = Some(binary_fingerprint(&p)?);
        }
    }
    let mut hashed = recipe.clone();
    // Where the recipe files live does not change the image.
    hashed.chain.clear();
    let input = HashInput {
        builder_format: BUILDER_FORMAT,
        recipe: hashed,
        files,
        guest_agent,
        authorized_keys: &opts.authorized_keys,
        source_date_epoch: opts.source_date_epoch,
    };
    let input_hash = hex::encode(Sha256::digest(serde_json::to_vec(&input)?));
    let image_path = opts.image_dir.join(format!("{name}.ext4"));
    let manifest_path = opts.image_dir.join(format!("{name}.manifest.json"));
    let (up_to_date, reason) = match manifest::read::<Manifest>(&manifest_path) {
        Ok(Some(m))
            if m.recipe_hash == input_hash && super::file_size(&image_path) == m.size_bytes =>
        {
            (true, "up to date".to_string())
        }
        Ok(Some(_)) if !image_path.exists() => (false, "image file missing".into()),
        Ok(Some(m)) if m.recipe_hash != input_hash => (false, "recipe or inputs changed".into()),
        Ok(Some(_)) => (false, "image file does not match its manifest".into()),
        Ok(None) => (false, "not built yet".into()),
        Err(e) => (false, format!("unreadable manifest: {e:#}")),
    };
    Ok(ImagePlan {
        name: name.to_string(),
        recipe,
        input_hash,
        image_path,
        manifest_path,
        up_to_date,
        reason,
    })
}

fn recipe_file(r: &Recipe) -> &str {
    r.chain.last().map(String::as_str).unwrap_or("recipe")
}

/// Identifies the guest agent binary for the input hash without reading it: planning runs on every
/// `provision --dry-run`, and hashing a large binary there would cost seconds. Size, modification
/// time and version change whenever the binary is rebuilt, which is what decides a rebuild; the
/// image's own sha256 in the manifest still covers the exact bytes that went in.
fn binary_fingerprint(p: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(p).with_context(|| format!("reading guest agent {}", p.display()))?;
    Ok(format!(
        "fireclaw {} size {} mtime {}.{:09}",
        env!("CARGO_PKG_VERSION"),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

fn guest_agent_path(opts: &BuildOptions) -> anyhow::Result<PathBuf> {
    match &opts.guest_agent {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("locating the fireclaw binary (the guest agent)"),
    }
}

/// Removes the staging tree on every exit path.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes a partial image unless the build got to the end.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn step(name: &str, what: &str) -> ProgressBar {
    eprintln!("image {name}: {what}");
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!("{name}: {what}"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Builds the planned image and writes its manifest. Needs root (file ownership, chroot).
pub fn build_image(opts: &BuildOptions, plan: &ImagePlan) -> anyhow::Result<Manifest> {
    let started = Instant::now();
    let r = &plan.recipe;
    let name = &plan.name;
    if !nix::unistd::geteuid().is_root() {
        bail!("building image {name} needs root (files in the image belong to root and to the recipe's users)");
    }
    if r.ssh.is_some() && opts.authorized_keys.is_empty() {
        bail!(
            "image {name}: no SSH public key to authorize; create the guest key with \
             `fireclaw provision --only layout`, or build with `fireclaw image build --authorized-key FILE`"
        );
    }
    fs::create_dir_all(&opts.image_dir)
        .with_context(|| format!("creating {}", opts.image_dir.display()))?;
    // One staging tree per build process, so two builds of the same recipe cannot interleave;
    // trees left by builds that died are removed here.
    let staging_root = opts.cache_dir.join("staging");
    remove_dead_staging(&staging_root, name);
    let staging_dir = staging_root.join(format!("{name}.{}", std::process::id()));
    if staging_dir.exists() {
        fs::remove_dir_all(&staging_dir)
            .with_context(|| format!("removing stale {}", staging_dir.display()))?;
    }
    fs::create_dir_all(&staging_dir)
        .with_context(|| format!("creating {}", staging_dir.display()))?;
    let staging = Staging(staging_dir);
    let tree = &staging.0;

    let mut sources = populate_source(opts, plan, tree)?;
    install_packages(opts, plan, tree)?;
    let bar = step(name, "configuring users, files, services, SSH");
    scrub(tree)?;
    for u in &r.users {
        add_user(tree, u, opts.source_date_epoch)?;
    }
    for d in &r.dirs {
        let host = resolve_in_tree(tree, &d.path, true)?;
        fs::create_dir_all(&host).with_context(|| format!("creating {}", d.path))?;
        let (uid, gid) = owner_ids(tree, &d.owner)
            .with_context(|| format!("{}: dirs {}", recipe_file(r), d.path))?;
        set_meta(
            &host,
            recipe::parse_mode(&d.mode).unwrap_or(0o755),
            uid,
            gid,
        )?;
    }
    for f in &r.files {
        let bytes = file_bytes(opts, f, &mut sources)?;
        let (uid, gid) = owner_ids(tree, &f.owner)
            .with_context(|| format!("{}: files {}", recipe_file(r), f.dest))?;
        write_guest_file(
            tree,
            &f.dest,
            &bytes,
            recipe::parse_mode(&f.mode).unwrap_or(0o644),
            uid,
            gid,
        )?;
    }
    write_guest_file(
        tree,
        "/etc/hostname",
        format!("{}\n", r.hostname).as_bytes(),
        0o644,
        0,
        0,
    )?;
    write_services(tree, r)?;
    write_fstab(tree, r)?;
    let host_key = match &r.ssh {
        Some(s) => Some(install_ssh(opts, tree, r, s.root_login)?),
        None => None,
    };
    clamp_times(tree, opts.source_date_epoch)?;
    bar.finish_and_clear();

    check_fits(tree, r)?;

    let tmp_image = opts
        .image_dir
        .join(format!(".{name}.ext4.{}.partial", std::process::id()));
    let partial = Partial(Some(tmp_image.clone()));
    let _ = fs::remove_file(&tmp_image);
    let fs_uuid = uuid_from(&plan.input_hash, 0);
    let hash_seed = uuid_from(&plan.input_hash, 1);
    let bar = step(
        name,
        &format!("packing {} MiB ext4 (mkfs.ext4 -d)", r.size_mib),
    );
    let label: String = name.chars().take(16).collect();
    let out = Command::new("mkfs.ext4")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-L", &label, "-U",
            &fs_uuid,
        ])
        .arg("-E")
        .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
        .arg("-d")
        .arg(tree)
        .arg(&tmp_image)
        .arg(format!("{}M", r.size_mib))
        .env("E2FSPROGS_FAKE_TIME", opts.source_date_epoch.to_string())
        .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string())
        .output()
        .context("running mkfs.ext4 (install e2fsprogs)")?;
    bar.finish_and_clear();
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
    pin_ctimes(tree, &tmp_image, opts.source_date_epoch)?;
    let bar = step(name, "verifying (e2fsck -fn)");
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&tmp_image)
        .output()
        .context("running e2fsck")?;
    bar.finish_and_clear();
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
    let sha256 = fetch::sha256_file(&tmp_image).context("hashing image")?;
    let meta = fs::metadata(&tmp_image)?;
    let kernel = kernel_ref(opts);
    let m = Manifest {
        name: name.clone(),
        description: r.description.clone(),
        recipe_hash: plan.input_hash.clone(),
        recipe_files: r.chain.clone(),
        sources,
        kernel,
        image: format!("{name}.ext4"),
        size_bytes: meta.len(),
        disk_bytes: meta.blocks() * 512,
        sha256,
        fs_uuid,
        ssh_host_key: host_key,
        users: r.users.iter().map(|u| u.name.clone()).collect(),
        source_date_epoch: opts.source_date_epoch,
        builder: format!(
            "fireclaw {} (image format {BUILDER_FORMAT})",
            env!("CARGO_PKG_VERSION")
        ),
    };
    // The manifest goes first: a crash between the renames leaves a manifest whose size check
    // fails against the old image, so the next plan rebuilds.
    manifest::write(&plan.manifest_path, &m)?;
    fs::rename(&tmp_image, &plan.image_path)
        .with_context(|| format!("renaming into {}", plan.image_path.display()))?;
    std::mem::forget(partial);
    eprintln!(
        "image {name}: built in {:.1}s: {} MiB apparent, {:.1} MiB on disk, sha256 {}",
        started.elapsed().as_secs_f64(),
        m.size_bytes >> 20,
        m.disk_bytes as f64 / (1024.0 * 1024.0),
        &m.sha256[..16]
    );
    Ok(m)
}

fn remove_dead_staging(staging_root: &Path, name: &str) {
    let Ok(rd) = fs::read_dir(staging_root) else {
        return;
    };
    for e in rd.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn kernel_ref(opts: &BuildOptions) -> Option<KernelRef> {
    let km: manifest::KernelManifest = manifest::read(&opts.image_dir.join("kernel.manifest.json"))
        .ok()
        .flatten()?;
    Some(KernelRef {
        path: opts.root.display(&opts.image_dir.join("vmlinux")),
        sha256: km.vmlinux_sha256,
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A UUID-shaped string from the input hash; `salt` separates the filesystem UUID from the
/// directory hash seed.
fn uuid_from(hash: &str, salt: u8) -> String {
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

fn run_logged(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, last_lines(&text, 15));
    }
    Ok(())
}

fn populate_source(
    opts: &BuildOptions,
    plan: &ImagePlan,
    tree: &Path,
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
            let bar = step(&plan.name, &format!("fetching {url}"));
            let tarball = opts.downloads().fetch(&url, &pin)?;
            bar.set_message(format!("{}: extracting", plan.name));
            let stats = archive::extract_all(&tarball, tree, ExtractPolicy::ROOTFS)?;
            bar.finish_and_clear();
            eprintln!("image {}: extracted {} entries", plan.name, stats.entries);
            if !tree.join("etc/alpine-release").is_file()
                || fs::symlink_metadata(tree.join("sbin/apk")).is_err()
            {
                bail!("{url}: not an Alpine minirootfs (no etc/alpine-release or sbin/apk)");
            }
            if let Some(m) = &opts.alpine_mirror {
                let release =
                    fs::read_to_string(tree.join("etc/alpine-release")).unwrap_or_default();
                let branch = alpine_branch(release.trim());
                let repos = format!("{m}/{branch}/main\n{m}/{branch}/community\n");
                write_guest_file(tree, "/etc/apk/repositories", repos.as_bytes(), 0o644, 0, 0)?;
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
            let bar = step(
                &plan.name,
                &format!(
                    "mmdebstrap {suite} ({variant}, {} package(s))",
                    r.packages.len()
                ),
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
            run_logged(&mut cmd, "mmdebstrap")?;
            bar.finish_and_clear();
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

fn install_packages(opts: &BuildOptions, plan: &ImagePlan, tree: &Path) -> anyhow::Result<()> {
    let r = &plan.recipe;
    if r.packages.is_empty() || !matches!(r.source, Source::AlpineMinirootfs { .. }) {
        return Ok(());
    }
    let bar = step(&plan.name, &format!("apk add {}", r.packages.join(" ")));
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
            fs::create_dir_all(tree.join("dev"))?;
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
    let result = run_logged(
        Command::new("chroot")
            .arg(tree)
            .args(["/sbin/apk", "add", "--no-cache", "--no-progress"])
            .args(&r.packages)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "apk add (in the image's chroot)",
    );
    let _ = fs::remove_file(&resolv);
    if let Some(b) = saved_resolv {
        fs::write(&resolv, b)?;
    }
    for p in made {
        let _ = fs::remove_file(p);
    }
    bar.finish_and_clear();
    result
}

/// Drops files that differ from build to build and mean nothing in a fresh guest (logs, caches,
/// host keys a package generated: the builder installs its own).
fn scrub(tree: &Path) -> anyhow::Result<()> {
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

fn set_meta(host: &Path, mode: u32, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(host, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", host.display()))?;
    fs::set_permissions(host, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", host.display()))
}

/// Writes a file into the tree, replacing a symlink at the destination rather than writing
/// through it.
fn write_guest_file(
    tree: &Path,
    dest: &str,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> anyhow::Result<()> {
    let host = resolve_in_tree(tree, dest, false)?;
    if let Some(parent) = host.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating the parent of {dest}"))?;
    }
    match fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => bail!("{dest}: is a directory in the image tree"),
        Ok(_) => fs::remove_file(&host).with_context(|| format!("replacing {dest}"))?,
        Err(_) => {}
    }
    fs::write(&host, bytes).with_context(|| format!("writing {dest}"))?;
    set_meta(&host, mode, uid, gid)
}

fn file_bytes(
    opts: &BuildOptions,
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
    let p = guest_agent_path(opts)?;
    let bytes = fs::read(&p).with_context(|| format!("reading guest agent {}", p.display()))?;
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
fn add_user(tree: &Path, u: &recipe::User, epoch: u64) -> anyhow::Result<()> {
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
    fs::create_dir_all(&h)?;
    set_meta(&h, 0o750, u.uid, u.uid)
}

/// uid and gid for an owner name (`root`, a number, or a user in the tree's passwd).
fn owner_ids(tree: &Path, owner: &str) -> anyhow::Result<(u32, u32)> {
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

fn write_services(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
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

fn write_fstab(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
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
        fs::create_dir_all(host)?;
    }
    write_guest_file(tree, "/etc/fstab", text.as_bytes(), 0o644, 0, 0)
}

/// Installs the SSH host key (kept per image in the cache so rebuilds give the same bytes and
/// clients keep trusting it), the authorized keys and an sshd drop-in. Returns the public host key.
fn install_ssh(
    opts: &BuildOptions,
    tree: &Path,
    r: &Recipe,
    root_login: bool,
) -> anyhow::Result<String> {
    use russh::keys::ssh_key::{rand_core::OsRng, Algorithm, LineEnding, PrivateKey};
    let dir = opts.cache_dir.join("hostkeys").join(&r.name);
    let key_path = dir.join("ssh_host_ed25519_key");
    let key = match fs::read_to_string(&key_path) {
        Ok(text) => PrivateKey::from_openssh(&text)
            .with_context(|| format!("{}: not an OpenSSH private key", key_path.display()))?,
        Err(_) => {
            fs::create_dir_all(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
            let mut k = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                .context("generating the SSH host key")?;
            k.set_comment(format!("root@{}", r.hostname));
            let text = k.to_openssh(LineEnding::LF).context("encoding host key")?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&key_path)
                .with_context(|| format!("creating {}", key_path.display()))?;
            f.write_all(text.as_bytes())?;
            k
        }
    };
    let private = key.to_openssh(LineEnding::LF)?;
    let public = key.public_key().to_openssh()?;
    write_guest_file(
        tree,
        "/etc/ssh/ssh_host_ed25519_key",
        private.as_bytes(),
        0o600,
        0,
        0,
    )?;
    write_guest_file(
        tree,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        format!("{public}\n").as_bytes(),
        0o644,
        0,
        0,
    )?;
    let conf = format!(
        "# written by fireclaw image build\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin {}\nUseDNS no\n",
        if root_login { "prohibit-password" } else { "no" }
    );
    write_guest_file(
        tree,
        "/etc/ssh/sshd_config.d/fireclaw.conf",
        conf.as_bytes(),
        0o644,
        0,
        0,
    )?;
    let keys = format!("{}\n", opts.authorized_keys.join("\n"));
    let mut homes = Vec::new();
    if root_login {
        homes.push(("/root".to_string(), 0, 0));
    }
    for u in r.users.iter().filter(|u| u.ssh) {
        homes.push((
            u.home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name)),
            u.uid,
            u.uid,
        ));
    }
    for (home, uid, gid) in homes {
        let ssh_dir = format!("{home}/.ssh");
        let host = resolve_in_tree(tree, &ssh_dir, true)?;
        fs::create_dir_all(&host)?;
        set_meta(&host, 0o700, uid, gid)?;
        write_guest_file(
            tree,
            &format!("{ssh_dir}/authorized_keys"),
            keys.as_bytes(),
            0o600,
            uid,
            gid,
        )?;
    }
    Ok(public)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Sets every timestamp in the tree to the epoch (without following symlinks): mkfs.ext4 -d
/// copies them into the image.
fn clamp_times(tree: &Path, epoch: u64) -> anyhow::Result<()> {
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
fn check_fits(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
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

    #[test]
    fn uuid_is_stable_and_distinct() {
        let a = uuid_from("abc", 0);
        assert_eq!(a, uuid_from("abc", 0));
        assert_ne!(a, uuid_from("abc", 1));
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn plan_is_pure_and_detects_changes() {
        let d = tempfile::tempdir().unwrap();
        let recipes = d.path().join("r");
        fs::create_dir_all(&recipes).unwrap();
        fs::write(
            recipes.join("t.toml"),
            "[source]\nkind = \"debian\"\nsuite = \"bookworm\"\n",
        )
        .unwrap();
        let opts = BuildOptions {
            root: RootPrefix::new(d.path()),
            recipes: Store::Dir(recipes.clone()),
            kernel: super::super::kernel::embedded(),
            cache_dir: d.path().join("cache"),
            image_dir: d.path().join("images"),
            authorized_keys: vec![],
            guest_agent: None,
            alpine_mirror: None,
            debian_mirror: None,
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            jobs: 1,
        };
        let p = plan_image(&opts, "t").unwrap();
        assert!(!p.up_to_date);
        assert!(
            !opts.cache_dir.exists() && !opts.image_dir.exists(),
            "planning must not create anything"
        );
        fs::write(
            recipes.join("t.toml"),
            "[image]\nsize_mib = 64\n[source]\nkind = \"debian\"\nsuite = \"bookworm\"\n",
        )
        .unwrap();
        assert_ne!(plan_image(&opts, "t").unwrap().input_hash, p.input_hash);
    }
}
