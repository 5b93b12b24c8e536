//! The guest kernel: Debian's `linux-source-6.1` tarball (pinned by version and sha256 in
//! `kernel/source.toml`), configured as `make tinyconfig` plus fireclaw's fragment, so one vmlinux
//! boots under Firecracker (PVH entry, virtio-mmio found through ACPI) and QEMU `microvm`
//! (virtio-mmio devices on the command line). Built out of tree; the extracted source is kept in
//! the cache because extracting it costs about a minute.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::common::BuildOptions;
use super::manifest::{self, KernelManifest};
use super::Store;
use crate::archive::{self, ExtractPolicy};
use crate::fetch;
use crate::report::Reporter;

/// Bumped when the kernel build procedure changes its output for the same inputs.
pub const KERNEL_BUILDER_FORMAT: u32 = 1;

pub use super::common::KERNEL_FILES as EMBEDDED;

pub fn embedded() -> Store {
    super::common::kernel_store()
}

/// `kernel/source.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSource {
    pub source: SourcePin,
    pub config: ConfigSpec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourcePin {
    /// Debian package that installs the tarball.
    pub package: String,
    /// Package version the digest was taken from.
    pub version: String,
    /// Tarball path as the package installs it (resolved under the root prefix).
    pub path: String,
    pub sha256: String,
    /// Top-level directory inside the tarball.
    pub dir: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// make target giving the base config (`tinyconfig`).
    pub base: String,
    /// Fragment files (beside source.toml), merged in order.
    pub fragments: Vec<String>,
}

pub fn load_source(store: &Store) -> anyhow::Result<KernelSource> {
    let file = store.display("source.toml");
    let bytes = store
        .read("source.toml")
        .with_context(|| format!("reading {file}"))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{file}: not UTF-8"))?;
    let src: KernelSource = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        anyhow::anyhow!("{file}:{line}: {}", e.message().trim())
    })?;
    if !fetch::is_sha256_hex(&src.source.sha256) {
        bail!("{file}: `source.sha256`: expected 64 lowercase hex characters");
    }
    if !["tinyconfig", "allnoconfig", "defconfig"].contains(&src.config.base.as_str()) {
        bail!("{file}: `config.base`: expected tinyconfig, allnoconfig or defconfig");
    }
    for f in &src.config.fragments {
        if f.contains('/') || !f.ends_with(".config") {
            bail!("{file}: `config.fragments`: {f:?}: expected a file name ending in .config beside source.toml");
        }
    }
    Ok(src)
}

/// What building the kernel would do, computed without changing anything.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    pub source: KernelSource,
    /// Fragment contents, in order.
    pub fragments: Vec<(String, String)>,
    /// Digest of source pin + base + fragments + builder format.
    pub build_key: String,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    /// The final .config, kept beside the kernel for reference.
    pub config_path: PathBuf,
    pub manifest_path: PathBuf,
    pub up_to_date: bool,
    pub reason: String,
}

impl KernelPlan {
    pub fn describe(&self) -> String {
        format!(
            "kernel: {} {} + {} + {} -> {} and bzImage ({})",
            self.source.source.package,
            self.source.source.version,
            self.source.config.base,
            self.source.config.fragments.join(" + "),
            self.vmlinux.display(),
            self.reason
        )
    }
}

pub fn plan_kernel(opts: &BuildOptions) -> anyhow::Result<KernelPlan> {
    let source = load_source(&opts.kernel)?;
    let mut fragments = Vec::new();
    let mut h = Sha256::new();
    h.update(format!(
        "{KERNEL_BUILDER_FORMAT}\n{}\n{}\n",
        source.source.sha256, source.config.base
    ));
    for f in &source.config.fragments {
        let bytes = opts
            .kernel
            .read(f)
            .with_context(|| format!("reading {}", opts.kernel.display(f)))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{}: not UTF-8", opts.kernel.display(f)))?;
        h.update(f.as_bytes());
        h.update(text.as_bytes());
        fragments.push((f.clone(), text));
    }
    let build_key = hex::encode(h.finalize());
    let vmlinux = opts.image_dir.join("vmlinux");
    let bzimage = opts.image_dir.join("bzImage");
    let manifest_path = opts.image_dir.join("kernel.manifest.json");
    let (up_to_date, reason) = match manifest::read::<KernelManifest>(&manifest_path) {
        Ok(Some(m))
            if m.build_key == build_key
                && super::file_size(&vmlinux) == m.vmlinux_bytes
                && bzimage.is_file() =>
        {
            (true, "up to date".to_string())
        }
        Ok(Some(m)) if m.build_key != build_key => (false, "source pin or config changed".into()),
        Ok(Some(_)) => (false, "kernel files missing or changed".into()),
        Ok(None) => (false, "not built yet".into()),
        Err(e) => (false, format!("unreadable manifest: {e:#}")),
    };
    Ok(KernelPlan {
        source,
        fragments,
        build_key,
        vmlinux,
        bzimage,
        config_path: opts.image_dir.join("kernel.config"),
        manifest_path,
        up_to_date,
        reason,
    })
}

fn make(ksrc: &Path, build: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(ksrc)
        .arg(format!("O={}", build.display()))
        .arg("ARCH=x86_64")
        // Fixed build identity: the same inputs give the same kernel.
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .env("KBUILD_BUILD_USER", "fireclaw")
        .env("KBUILD_BUILD_HOST", "fireclaw")
        .env("KBUILD_BUILD_VERSION", "1");
    c
}

fn run_quiet(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.output().with_context(|| {
        format!("running {what} (install make, gcc, flex, bison, bc, libelf-dev)")
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "{what} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Options a fragment asks for that the final config lacks (Kconfig drops options whose
/// dependencies are unmet without a word).
pub fn missing_options(fragments: &[(String, String)], final_config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = final_config.lines().collect();
    let mut out = Vec::new();
    for (name, text) in fragments {
        for line in text.lines().map(str::trim) {
            if !line.starts_with("CONFIG_") || !line.contains('=') {
                continue;
            }
            // A boot parameter since 6.1 (random.trust_cpu); kept for older trees.
            if line.starts_with("CONFIG_RANDOM_TRUST_CPU=") {
                continue;
            }
            if !have.contains(line) {
                out.push(format!("{name}: {line}"));
            }
        }
    }
    out
}

pub fn build_kernel(
    opts: &BuildOptions,
    plan: &KernelPlan,
    rep: &dyn Reporter,
) -> anyhow::Result<KernelManifest> {
    let pin = &plan.source.source;
    let tarball = opts.root.host(&pin.path);
    if !tarball.is_file() {
        bail!(
            "{}: missing; install the Debian package {} (pinned version {}) with apt-get",
            tarball.display(),
            pin.package,
            pin.version
        );
    }
    rep.status(&format!("kernel: verifying {}", tarball.display()));
    let actual =
        fetch::sha256_file(&tarball).with_context(|| format!("hashing {}", tarball.display()))?;
    if actual != pin.sha256 {
        bail!(
            "{}: sha256 is {actual}, kernel/source.toml pins {} ({} {}); update the pin deliberately if the package was upgraded",
            tarball.display(),
            pin.sha256,
            pin.package,
            pin.version
        );
    }
    let tree = opts.cache_dir.join("kernel-src").join(&pin.sha256);
    let marker = tree.join(".fireclaw-extracted");
    // Same layout as before (`<tree>/<dir>` plus the marker), so a warm cache stays valid.
    if !marker.is_file() {
        rep.status(&format!(
            "kernel: extracting source into {}",
            tree.display()
        ));
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree)?;
        archive::extract_all(&tarball, &tree, ExtractPolicy::FILES, rep)
            .with_context(|| format!("extracting the kernel source {}", tarball.display()))?;
        fs::write(&marker, b"")?;
    }
    let ksrc = tree.join(&pin.dir);
    fs::create_dir_all(&opts.cache_dir)?;
    let build = opts
        .cache_dir
        .join(format!("kernel-build.{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(build.clone());

    let started = Instant::now();
    rep.status(&format!("kernel: make {}", plan.source.config.base));
    let mut c = make(&ksrc, &build);
    c.arg(&plan.source.config.base);
    run_quiet(c, "make tinyconfig")?;
    let mut frag_paths = Vec::new();
    for (name, text) in &plan.fragments {
        let p = build.join(format!("fragment-{name}"));
        fs::write(&p, text)?;
        frag_paths.push(p);
    }
    let mut c = Command::new(ksrc.join("scripts/kconfig/merge_config.sh"));
    c.current_dir(&build)
        .env("ARCH", "x86_64")
        .arg("-m")
        .arg("-O")
        .arg(&build)
        .arg(build.join(".config"))
        .args(&frag_paths);
    run_quiet(c, "merge_config.sh")?;
    let mut c = make(&ksrc, &build);
    c.arg("olddefconfig");
    run_quiet(c, "make olddefconfig")?;
    let config = fs::read_to_string(build.join(".config"))?;
    let missing = missing_options(&plan.fragments, &config);
    if !missing.is_empty() {
        bail!(
            "kernel config: options requested but dropped by Kconfig (unmet dependencies):\n  {}",
            missing.join("\n  ")
        );
    }

    let bar = rep.progress(
        &format!("kernel: make -j{} vmlinux bzImage", opts.jobs),
        None,
    );
    let mut c = make(&ksrc, &build);
    c.arg(format!("-j{}", opts.jobs))
        .args(["vmlinux", "bzImage"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("running make")?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(s) = stderr {
            for l in BufReader::new(s).lines().map_while(Result::ok) {
                lines.push(l);
            }
        }
        lines
    });
    let mut n = 0u64;
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            n += 1;
            bar.set_message(&format!("[{n}] {}", l.trim()));
        }
    }
    let status = child.wait()?;
    let errs = err_thread.join().unwrap_or_default();
    drop(bar);
    if !status.success() {
        let tail = errs[errs.len().saturating_sub(20)..].join("\n");
        bail!("kernel build failed: {tail}");
    }
    let secs = started.elapsed().as_secs();

    fs::create_dir_all(&opts.image_dir)?;
    let copy = |from: PathBuf, to: &Path| -> anyhow::Result<(String, u64)> {
        let tmp = to.with_extension("partial");
        fs::copy(&from, &tmp).with_context(|| format!("copying {}", from.display()))?;
        let sha = fetch::sha256_file(&tmp)?;
        let len = fs::metadata(&tmp)?.len();
        fs::rename(&tmp, to)?;
        Ok((sha, len))
    };
    let (vm_sha, vm_len) = copy(build.join("vmlinux"), &plan.vmlinux)?;
    let (bz_sha, bz_len) = copy(build.join("arch/x86/boot/bzImage"), &plan.bzimage)?;
    fs::write(&plan.config_path, &config)?;
    let m = KernelManifest {
        build_key: plan.build_key.clone(),
        source_package: pin.package.clone(),
        source_version: pin.version.clone(),
        source_sha256: pin.sha256.clone(),
        base_config: plan.source.config.base.clone(),
        fragments: plan.source.config.fragments.clone(),
        config_sha256: fetch::sha256_hex(config.as_bytes()),
        vmlinux_sha256: vm_sha,
        bzimage_sha256: bz_sha,
        vmlinux_bytes: vm_len,
        bzimage_bytes: bz_len,
        build_seconds: secs,
        builder: format!(
            "fireclaw {} (kernel format {KERNEL_BUILDER_FORMAT})",
            env!("CARGO_PKG_VERSION")
        ),
    };
    manifest::write(&plan.manifest_path, &m)?;
    rep.status(&format!(
        "kernel: built in {secs}s: vmlinux {vm_len} bytes, bzImage {bz_len} bytes"
    ));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_source_parses_and_pins() {
        let s = load_source(&embedded()).unwrap();
        assert_eq!(s.source.package, "linux-source-6.1");
        assert!(fetch::is_sha256_hex(&s.source.sha256));
        assert_eq!(s.config.base, "tinyconfig");
    }

    #[test]
    fn fragment_has_what_both_vmms_and_podman_need() {
        let frag = EMBEDDED[1].1;
        for opt in [
            "CONFIG_PVH=y",
            "CONFIG_ACPI=y",
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_VIRTIO_NET=y",
            "CONFIG_VIRTIO_VSOCKETS=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_EXT4_FS=y",
            "CONFIG_USER_NS=y",
            "CONFIG_CGROUPS=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_SECCOMP_FILTER=y",
            "CONFIG_VETH=y",
            "CONFIG_BRIDGE=y",
            "CONFIG_NF_TABLES=y",
        ] {
            assert!(frag.lines().any(|l| l == opt), "missing {opt}");
        }
    }

    #[test]
    fn missing_options_are_reported() {
        let frags = vec![(
            "f.config".to_string(),
            "CONFIG_A=y\nCONFIG_B=y\n# comment\n".to_string(),
        )];
        assert_eq!(
            missing_options(&frags, "CONFIG_A=y\n# CONFIG_B is not set\n"),
            ["f.config: CONFIG_B=y"]
        );
    }

    #[test]
    fn bad_source_toml_names_line() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("source.toml"),
            "[source]\npackage = \"x\"\nversoin = \"1\"\n",
        )
        .unwrap();
        let e = load_source(&Store::Dir(d.path().to_path_buf()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.toml:3") && e.contains("versoin"), "{e}");
    }

    /// A kernel dir pinning `tarball` (placed at /usr/src/linux-test.tar.xz under `root`).
    fn pinned(d: &Path, tarball: &Path) -> BuildOptions {
        let root = d.join("root");
        fs::create_dir_all(root.join("usr/src")).unwrap();
        fs::copy(tarball, root.join("usr/src/linux-test.tar.xz")).unwrap();
        let kdir = d.join("kernel");
        fs::create_dir_all(&kdir).unwrap();
        fs::write(
            kdir.join("source.toml"),
            format!(
                "[source]\npackage = \"linux-source-test\"\nversion = \"1\"\n\
                 path = \"/usr/src/linux-test.tar.xz\"\nsha256 = \"{}\"\ndir = \"linux\"\n\
                 [config]\nbase = \"tinyconfig\"\nfragments = []\n",
                fetch::sha256_file(tarball).unwrap()
            ),
        )
        .unwrap();
        BuildOptions {
            root: crate::root::RootPrefix::new(&root),
            recipes: Store::Dir(d.to_path_buf()),
            kernel: Store::Dir(kdir),
            cache_dir: d.join("cache"),
            image_dir: d.join("images"),
            authorized_keys: vec![],
            guest_agent: None,
            alpine_mirror: None,
            debian_mirror: None,
            source_date_epoch: crate::image::DEFAULT_SOURCE_DATE_EPOCH,
            jobs: 1,
        }
    }

    #[test]
    fn kernel_source_goes_through_the_safe_extractor_into_the_same_layout() {
        use tar::EntryType;
        let d = tempfile::tempdir().unwrap();
        let good = crate::archive::extract_all_tests::tar_xz(
            d.path(),
            &[(
                "linux/Makefile",
                EntryType::Regular,
                b"# no kernel here\n",
                None,
            )],
        );
        let opts = pinned(d.path(), &good);
        let plan = plan_kernel(&opts).unwrap();
        // make fails on this stand-in tree; what matters is what was extracted, and where.
        let _ = build_kernel(&opts, &plan, &crate::report::Silent);
        let sha = fetch::sha256_file(&good).unwrap();
        let tree = opts.cache_dir.join("kernel-src").join(&sha);
        assert_eq!(
            fs::read(tree.join("linux/Makefile")).unwrap(),
            b"# no kernel here\n"
        );
        assert!(tree.join(".fireclaw-extracted").is_file());

        let d = tempfile::tempdir().unwrap();
        let evil = crate::archive::extract_all_tests::tar_xz(
            d.path(),
            &[
                ("linux/Makefile", EntryType::Regular, b"x", None),
                ("linux/../../escaped", EntryType::Regular, b"x", None),
            ],
        );
        let opts = pinned(d.path(), &evil);
        let plan = plan_kernel(&opts).unwrap();
        let e = format!(
            "{:#}",
            build_kernel(&opts, &plan, &crate::report::Silent).unwrap_err()
        );
        assert!(
            e.contains("refusing the archive") && e.contains("escaped"),
            "{e}"
        );
        let sha = fetch::sha256_file(&evil).unwrap();
        let tree = opts.cache_dir.join("kernel-src").join(&sha);
        assert!(!tree.join(".fireclaw-extracted").exists());
        assert!(!opts.cache_dir.join("escaped").exists());
    }
}
