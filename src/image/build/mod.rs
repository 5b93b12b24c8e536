//! Recipe -> ext4 image, without mounting anything.
//!
//! A staging directory under the cache gets the base tree (extracted tarball or mmdebstrap,
//! `source`), the users, files, services (`tree`) and SSH keys (`ssh`); every timestamp is clamped
//! to one epoch; then `mkfs.ext4 -d` packs it (`pack`) with a UUID and hash seed derived from the
//! input hash (`plan`), under `E2FSPROGS_FAKE_TIME`, so the same inputs give the same bytes.
//! `e2fsck -fn` checks the result before it is renamed over the previous image: a failed build
//! leaves the old image (or none), never a partial one.

mod pack;
mod plan;
mod source;
mod ssh;
mod tree;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};

use super::manifest::{self, KernelRef, Manifest};
use super::recipe;
use crate::fetch;
use crate::report::Reporter;

pub use super::common::{BuildOptions, DEFAULT_SOURCE_DATE_EPOCH};
pub use plan::{plan_image, ImagePlan, BUILDER_FORMAT};
pub use source::{debian_mirror_from_apt, substitute_mirror};
pub use tree::resolve_in_tree;

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

/// Builds the planned image and writes its manifest. Needs root (file ownership, chroot).
pub fn build_image(
    opts: &BuildOptions,
    plan: &ImagePlan,
    rep: &dyn Reporter,
) -> anyhow::Result<Manifest> {
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
    // The tree's root becomes the image's `/`: its mode must not depend on the caller's umask.
    fs::set_permissions(tree, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", tree.display()))?;

    let mut sources = source::populate(opts, plan, tree, rep)?;
    source::install_packages(opts, plan, tree, rep)?;
    let step = rep.progress(
        &format!("image {name}: configuring users, files, services, SSH"),
        None,
    );
    tree::scrub(tree)?;
    for u in &r.users {
        tree::add_user(tree, u, opts.source_date_epoch)?;
    }
    for d in &r.dirs {
        let host = tree::resolve_in_tree(tree, &d.path, true)?;
        tree::create_dirs(tree, &host).with_context(|| format!("creating {}", d.path))?;
        let (uid, gid) = tree::owner_ids(tree, &d.owner)
            .with_context(|| format!("{}: dirs {}", plan::recipe_file(r), d.path))?;
        tree::set_meta(
            &host,
            recipe::parse_mode(&d.mode).unwrap_or(0o755),
            uid,
            gid,
        )?;
    }
    for f in &r.files {
        let bytes = tree::file_bytes(opts, r, f, &mut sources)?;
        let (uid, gid) = tree::owner_ids(tree, &f.owner)
            .with_context(|| format!("{}: files {}", plan::recipe_file(r), f.dest))?;
        tree::write_guest_file(
            tree,
            &f.dest,
            &bytes,
            recipe::parse_mode(&f.mode).unwrap_or(0o644),
            uid,
            gid,
        )?;
    }
    tree::write_guest_file(
        tree,
        "/etc/hostname",
        format!("{}\n", r.hostname).as_bytes(),
        0o644,
        0,
        0,
    )?;
    tree::write_services(tree, r)?;
    tree::write_fstab(tree, r)?;
    let host_key = match &r.ssh {
        Some(s) => {
            ssh::check_server(tree, r)?;
            Some(ssh::install(opts, tree, r, s.root_login)?)
        }
        None => None,
    };
    pack::clamp_times(tree, opts.source_date_epoch)?;
    drop(step);

    pack::check_fits(tree, r)?;

    let tmp_image = opts
        .image_dir
        .join(format!(".{name}.ext4.{}.partial", std::process::id()));
    let partial = Partial(Some(tmp_image.clone()));
    let _ = fs::remove_file(&tmp_image);
    let fs_uuid = pack::uuid_from(&plan.input_hash, 0);
    pack::pack(
        tree,
        &tmp_image,
        r,
        &fs_uuid,
        &pack::uuid_from(&plan.input_hash, 1),
        opts.source_date_epoch,
        rep,
    )?;
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
    rep.status(&format!(
        "image {name}: built in {:.1}s: {} MiB apparent, {:.1} MiB on disk, sha256 {}",
        started.elapsed().as_secs_f64(),
        m.size_bytes >> 20,
        m.disk_bytes as f64 / (1024.0 * 1024.0),
        &m.sha256[..16]
    ));
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
