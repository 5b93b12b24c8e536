//! Host tier: real image builds as root (mkfs.ext4 -d, e2fsck, debugfs; no mounting), on a
//! minirootfs-shaped tarball made here, so the Alpine code path runs without Alpine's mirrors.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use fireclaw::image::{self, build, manifest::Manifest, BuildOptions, Store};
use fireclaw::report::Silent;
use fireclaw::root::RootPrefix;
use support::image::*;
use support::require;

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    opts: BuildOptions,
    tar_sha: String,
    tar_path: PathBuf,
}

fn fixture() -> Option<Fixture> {
    if !require("host", &host_prereqs()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let tree = minirootfs_tree(&base);
    let (tar_path, tar_sha) = tarball(&tree, &base.join("alpine-minirootfs-test.tar.gz"));
    let recipes = base.join("recipes");
    fs::create_dir_all(recipes.join("files")).unwrap();
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rootfs-recipes/files/fireclaw-init"
        ),
        recipes.join("files/fireclaw-init"),
    )
    .unwrap();
    fs::write(
        recipes.join("mini.toml"),
        format!(
            r#"
[image]
description = "minirootfs-shaped test image"
size_mib = 32
hostname = "mini"

[source]
kind = "alpine-minirootfs"
url = "file://{}"
sha256 = "{tar_sha}"

[packages]
install = ["openssh-server"]

[ssh]
server = "openssh"

[[files]]
dest = "/sbin/init"
src = "files/fireclaw-init"
mode = "0755"

[[services]]
name = "sshd"
command = "exec /usr/sbin/sshd -D -e"
"#,
            tar_path.display()
        ),
    )
    .unwrap();
    fs::write(
        recipes.join("mini-agent.toml"),
        r#"
[image]
extends = "mini"

[[users]]
name = "agent"
uid = 1000
groups = ["wheel"]
ssh = true

[[dirs]]
path = "/workspace"
owner = "agent"

[[mounts]]
device = "/dev/vdb"
path = "/workspace"

[[files]]
dest = "/usr/local/bin/fireclaw-guest"
builtin = "guest-agent"
mode = "0755"

[[files]]
dest = "/home/agent/notes.txt"
content = "hello\n"
owner = "agent"
mode = "0600"
"#,
    )
    .unwrap();
    // Any static x86-64 binary stands in for the guest agent; the builder refuses dynamic ones.
    let agent_bin = PathBuf::from(BUSYBOX);
    let opts = BuildOptions {
        root: RootPrefix::new(&base),
        recipes: Store::Dir(recipes),
        kernel: fireclaw::image::kernel::embedded(),
        cache_dir: base.join("cache"),
        image_dir: base.join("images"),
        authorized_keys: vec![TEST_KEY.to_string()],
        guest_agent: Some(agent_bin),
        alpine_mirror: None,
        debian_mirror: None,
        source_date_epoch: build::DEFAULT_SOURCE_DATE_EPOCH,
        jobs: 1,
    };
    Some(Fixture {
        _dir: dir,
        base,
        opts,
        tar_sha,
        tar_path,
    })
}

fn build_one(opts: &BuildOptions, name: &str) -> anyhow::Result<Manifest> {
    let plan = build::plan_image(opts, name)?;
    build::build_image(opts, &plan, &Silent)
}

fn stat_field(image: &Path, path: &str, field: &str) -> String {
    let s = debugfs(image, &format!("stat {path}"));
    let i = s
        .find(field)
        .unwrap_or_else(|| panic!("{path}: no {field} in {s}"));
    s[i + field.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn alpine_path_builds_what_the_recipe_asks_for_reproducibly() {
    let Some(fx) = fixture() else { return };
    let m = build_one(&fx.opts, "mini-agent").unwrap_or_else(|e| panic!("{e:#}"));
    let img = fx.opts.image_dir.join("mini-agent.ext4");

    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert_eq!(m.sha256, fireclaw::fetch::sha256_file(&img).unwrap());
    assert!(
        m.disk_bytes < m.size_bytes / 2,
        "sparse: {} on disk of {}",
        m.disk_bytes,
        m.size_bytes
    );
    assert_eq!(m.sources[0].digest, fx.tar_sha);
    assert_eq!(m.recipe_files.len(), 2);

    // From the base tarball, and what the package step did in the chroot.
    assert_eq!(debugfs(&img, "cat /etc/alpine-release"), "3.24.2\n");
    assert_eq!(
        debugfs(&img, "cat /var/log/fake-apk.log"),
        "apk add --no-cache --no-progress openssh-server\n"
    );
    assert!(debugfs(&img, "cat /usr/sbin/sshd").starts_with("#!/bin/sh"));
    // The temporary device nodes for the chroot are gone.
    assert!(debugfs(&img, "ls /dev")
        .split_whitespace()
        .all(|w| w != "null"));
    // The init replaced the busybox link (and the host's busybox is untouched).
    assert!(debugfs(&img, "cat /sbin/init").contains("fireclaw guest init"));
    assert_eq!(stat_field(&img, "/sbin/init", "Mode:"), "0755");
    assert!(fs::read(BUSYBOX).unwrap().starts_with(b"\x7fELF"));
    // Users.
    assert!(
        debugfs(&img, "cat /etc/passwd").contains("agent:x:1000:1000:agent:/home/agent:/bin/sh")
    );
    assert!(debugfs(&img, "cat /etc/group").contains("wheel:x:10:root,agent"));
    assert!(debugfs(&img, "cat /etc/shadow").contains("agent:*:"));
    assert_eq!(stat_field(&img, "/home/agent", "User:"), "1000");
    // SSH: host key matches the manifest, authorized keys for root and agent.
    let pubkey = debugfs(&img, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_eq!(pubkey.trim(), m.ssh_host_key.as_deref().unwrap());
    assert_eq!(
        stat_field(&img, "/etc/ssh/ssh_host_ed25519_key", "Mode:"),
        "0600"
    );
    assert_eq!(
        debugfs(&img, "cat /home/agent/.ssh/authorized_keys").trim(),
        TEST_KEY
    );
    assert_eq!(
        stat_field(&img, "/home/agent/.ssh/authorized_keys", "User:"),
        "1000"
    );
    assert_eq!(
        debugfs(&img, "cat /root/.ssh/authorized_keys").trim(),
        TEST_KEY
    );
    assert!(debugfs(&img, "cat /etc/ssh/sshd_config.d/fireclaw.conf")
        .contains("PasswordAuthentication no"));
    // Files, services, mounts, hostname.
    assert_eq!(
        stat_field(&img, "/usr/local/bin/fireclaw-guest", "Size:"),
        fs::metadata(BUSYBOX).unwrap().len().to_string()
    );
    assert_eq!(stat_field(&img, "/home/agent/notes.txt", "Mode:"), "0600");
    assert!(debugfs(&img, "cat /etc/fireclaw/services/sshd").contains("exec /usr/sbin/sshd -D -e"));
    assert!(debugfs(&img, "cat /etc/fstab").contains("/dev/vdb /workspace ext4 defaults 0 0"));
    assert_eq!(stat_field(&img, "/workspace", "User:"), "1000");
    assert_eq!(debugfs(&img, "cat /etc/hostname"), "mini\n");

    // Unchanged inputs: nothing to do. Forced rebuild: the same bytes.
    let plan = build::plan_image(&fx.opts, "mini-agent").unwrap();
    assert!(plan.up_to_date, "{}", plan.reason);
    let again = build::build_image(&fx.opts, &plan, &Silent).unwrap();
    assert_eq!(
        again.sha256, m.sha256,
        "same recipe and sources must give the same image"
    );
    // A changed recipe is seen by the plan.
    let recipes = fx.base.join("recipes/mini-agent.toml");
    let text = fs::read_to_string(&recipes)
        .unwrap()
        .replace("hello", "changed");
    fs::write(&recipes, text).unwrap();
    let plan = build::plan_image(&fx.opts, "mini-agent").unwrap();
    assert!(!plan.up_to_date);

    // Nothing left behind: no staging tree, no partial image.
    assert!(leftovers(&fx.opts.cache_dir.join("staging")).is_empty());
    assert!(leftovers(&fx.opts.image_dir)
        .iter()
        .all(|n| !n.contains("partial")));
    let _ = &fx.tar_path;
}

fn assert_no_image(fx: &Fixture, name: &str) {
    assert!(
        !fx.opts.image_dir.join(format!("{name}.ext4")).exists(),
        "a failed build left an image"
    );
    assert!(!fx
        .opts
        .image_dir
        .join(format!("{name}.manifest.json"))
        .exists());
    assert!(
        leftovers(&fx.opts.image_dir)
            .iter()
            .all(|n| !n.contains("partial")),
        "{:?}",
        leftovers(&fx.opts.image_dir)
    );
    assert!(leftovers(&fx.opts.cache_dir.join("staging")).is_empty());
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn wrong_sha256_is_refused_with_no_image() {
    let Some(fx) = fixture() else { return };
    let p = fx.base.join("recipes/mini.toml");
    let wrong = "1".repeat(64);
    fs::write(
        &p,
        fs::read_to_string(&p).unwrap().replace(&fx.tar_sha, &wrong),
    )
    .unwrap();
    let e = format!("{:#}", build_one(&fx.opts, "mini").unwrap_err());
    assert!(
        e.contains("mismatch") && e.contains(&wrong) && e.contains(&fx.tar_sha),
        "{e}"
    );
    assert_no_image(&fx, "mini");
    assert!(
        leftovers(&fx.opts.cache_dir.join("downloads")).is_empty(),
        "nothing cached"
    );
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn traversal_in_the_tarball_is_refused_with_no_image() {
    let Some(fx) = fixture() else { return };
    // A tarball holding `../escaped`, written with raw headers (tar::Builder refuses such names).
    let evil = fx.base.join("evil.tar.gz");
    {
        let f = fs::File::create(&evil).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        for (name, data) in [
            ("etc/alpine-release", &b"3.24.2\n"[..]),
            ("../escaped", &b"x"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    let sha = fireclaw::fetch::sha256_file(&evil).unwrap();
    let p = fx.base.join("recipes/mini.toml");
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace(&fx.tar_sha, &sha)
        .replace(
            &fx.tar_path.display().to_string(),
            &evil.display().to_string(),
        );
    fs::write(&p, text).unwrap();
    let e = format!("{:#}", build_one(&fx.opts, "mini").unwrap_err());
    assert!(e.contains("`..`") && e.contains("escaped"), "{e}");
    assert_no_image(&fx, "mini");
    assert!(!fx.opts.cache_dir.join("staging").join("escaped").exists());
    assert!(!fx.opts.cache_dir.join("escaped").exists());
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn recipe_that_overflows_the_image_is_refused_with_no_image() {
    let Some(fx) = fixture() else { return };
    let big = fx.base.join("recipes/files/big.bin");
    // Random-ish data so nothing could compress or dedupe it away.
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&big, data).unwrap();
    let p = fx.base.join("recipes/mini.toml");
    let mut text = fs::read_to_string(&p).unwrap();
    text.push_str("\n[[files]]\ndest = \"/big.bin\"\nsrc = \"files/big.bin\"\n");
    fs::write(&p, text).unwrap();
    let e = format!("{:#}", build_one(&fx.opts, "mini").unwrap_err());
    assert!(e.contains("size_mib") && e.contains("mini.toml"), "{e}");
    assert_no_image(&fx, "mini");
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn a_failed_rebuild_keeps_the_previous_image() {
    let Some(fx) = fixture() else { return };
    let good = build_one(&fx.opts, "mini").unwrap();
    let p = fx.base.join("recipes/mini.toml");
    fs::write(
        &p,
        fs::read_to_string(&p)
            .unwrap()
            .replace(&fx.tar_sha, &"2".repeat(64)),
    )
    .unwrap();
    assert!(build_one(&fx.opts, "mini").is_err());
    let img = fx.opts.image_dir.join("mini.ext4");
    assert_eq!(fireclaw::fetch::sha256_file(&img).unwrap(), good.sha256);
    let _ = image::KERNEL;
}

#[test]
#[ignore = "host tier: needs root, mkfs.ext4, debugfs, chroot and busybox-static; run with --include-ignored"]
fn the_callers_umask_does_not_reach_the_image() {
    let Some(fx) = fixture() else { return };
    let relaxed = build_one(&fx.opts, "mini").unwrap_or_else(|e| panic!("{e:#}"));
    let img = fx.opts.image_dir.join("mini.ext4");
    assert_eq!(stat_field(&img, "/etc/fireclaw", "Mode:"), "0755");
    // umask is per process: restored right after, and the build is the only thing this test does.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let plan = build::plan_image(&fx.opts, "mini").unwrap();
    let strict = build::build_image(&fx.opts, &plan, &Silent);
    nix::sys::stat::umask(old);
    let strict = strict.unwrap_or_else(|e| panic!("{e:#}"));
    for dir in [
        "/",
        "/etc/fireclaw",
        "/etc/fireclaw/services",
        "/etc/ssh/sshd_config.d",
    ] {
        assert_eq!(stat_field(&img, dir, "Mode:"), "0755", "{dir}");
    }
    assert_eq!(
        strict.sha256, relaxed.sha256,
        "umask 077 must give the same image as umask 022"
    );
}

#[test]
#[ignore = "host tier: needs root, mkfs.ext4, debugfs, chroot, unshare and busybox-static; run with --include-ignored"]
fn a_file_mirror_serves_the_packages_inside_the_chroot() {
    let Some(mut fx) = fixture() else { return };
    if !require("host", &[("unshare", support::have("unshare"))]) {
        return;
    }
    let (mirror, rel) = local_mirror(&fx.base, &fx.tar_path);
    let p = fx.base.join("recipes/mini.toml");
    let text = fs::read_to_string(&p).unwrap().replace(
        &format!("file://{}", fx.tar_path.display()),
        &format!("${{ALPINE_MIRROR}}/{rel}"),
    );
    fs::write(&p, text).unwrap();
    let url = format!("file://{}", mirror.display());
    fx.opts.alpine_mirror = Some(url.clone());
    let m = build_one(&fx.opts, "mini").unwrap_or_else(|e| panic!("{e:#}"));
    let img = fx.opts.image_dir.join("mini.ext4");
    assert_eq!(m.sources[0].origin, format!("{url}/{rel}"));
    // apk read both repositories' indexes from the mirror, as the chroot sees it.
    let log = debugfs(&img, "cat /var/log/fake-apk.log");
    assert!(
        log.contains("index /.fireclaw-mirror/v3.24/main\n")
            && log.contains("index /.fireclaw-mirror/v3.24/community\n"),
        "{log}"
    );
    // The image keeps the operator's mirror, not the install-time view; the mount point is gone
    // and no mount outlived the build.
    assert_eq!(
        debugfs(&img, "cat /etc/apk/repositories"),
        format!("{url}/v3.24/main\n{url}/v3.24/community\n")
    );
    assert!(!debugfs(&img, "ls /").contains(".fireclaw-mirror"));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&fx.base.display().to_string()), "{mounts}");
    assert!(leftovers(&fx.opts.cache_dir.join("staging")).is_empty());
}

#[test]
#[ignore = "host tier: needs root, mkfs.ext4, debugfs, chroot and busybox-static; run with --include-ignored"]
fn ssh_without_an_ssh_server_is_refused_naming_the_recipe() {
    let Some(fx) = fixture() else { return };
    let p = fx.base.join("recipes/mini.toml");
    // The fake apk is what drops an sshd; without packages the tree has none.
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace("[packages]\ninstall = [\"openssh-server\"]\n", "");
    fs::write(fx.base.join("recipes/nossh.toml"), text).unwrap();
    let e = format!("{:#}", build_one(&fx.opts, "nossh").unwrap_err());
    assert!(
        e.contains("nossh.toml")
            && e.contains("[ssh]")
            && e.contains("/usr/sbin/sshd")
            && e.contains("openssh-server"),
        "{e}"
    );
    assert_no_image(&fx, "nossh");
}
