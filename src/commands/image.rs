//! `fireclaw image build|list|bench`: the guest kernel and rootfs images from recipes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::commands::shell::Shell;
use crate::commands::Env;
use crate::image::{self, manifest, BuildOptions, Store, Target};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel and rootfs images (only those whose inputs changed).
    #[command(
        long_about = "Build the guest kernel and rootfs images from recipes.\n\n\
Names are recipe names (files `<name>.toml` in rootfs-recipes/) or `kernel`. Without names: the kernel \
and the recipes listed in the config's `images.recipes`. An image whose recipe, referenced files, pins \
and keys are unchanged since its manifest was written is not rebuilt (use --force).\n\n\
Images are packed without mounting (`mkfs.ext4 -d`), checked with `e2fsck -fn`, and described by \
`<name>.manifest.json` beside `<name>.ext4` in the image directory, including the guest's SSH host \
key. Building needs root; --dry-run does not.",
        after_help = "Examples:\n  \
fireclaw image build --dry-run              what would be built, and why\n  \
sudo fireclaw image build                   the kernel and the recipes in images.recipes\n  \
sudo fireclaw image build debian-test --recipes ./rootfs-recipes --image-dir /tmp/images"
    )]
    Build(BuildArgs),
    /// List built images and the kernel, from their manifests.
    #[command(after_help = "Examples:\n  \
fireclaw image list\n  \
fireclaw image list --json | jq -r '.images[].name'")]
    List(ListArgs),
    /// Benchmark: full build vs cached rebuild of one recipe, and its size on disk vs apparent size.
    #[command(after_help = "Examples:\n  \
sudo fireclaw image bench debian-test")]
    Bench(BenchArgs),
}

#[derive(Debug, Args, Clone)]
pub struct DirArgs {
    /// Where images and manifests go (default: the config's `paths.image_dir`, under --root).
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Print `{"image_dir", "kernel", "images"}` with the kernel's and each image's manifest.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct BuildArgs {
    /// `kernel` and/or recipe names.
    #[arg(value_name = "RECIPE")]
    pub names: Vec<String>,
    /// Print what would be built and why, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rebuild even when the manifest says the image is up to date.
    #[arg(long)]
    pub force: bool,
    /// Read recipes from this directory instead of the copy built into fireclaw.
    #[arg(long, value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Read the kernel's source.toml and config fragments from this directory instead of the built-in copy.
    #[arg(long, value_name = "DIR")]
    pub kernel_dir: Option<PathBuf>,
    /// Downloads, staging trees, kernel sources and SSH host keys (default: the config's `paths.cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub dirs: DirArgs,
    /// OpenSSH public key(s) to authorize in the image (default: the guest key in the config dir).
    #[arg(long = "authorized-key", value_name = "FILE")]
    pub authorized_keys: Vec<PathBuf>,
    /// Static guest agent binary installed for `builtin = "guest-agent"` files (default: the
    /// workspace's musl build, target/x86_64-unknown-linux-musl/release/fireclaw-guest, found
    /// from this fireclaw's own target directory; build it with
    /// `cargo build --release -p fireclaw-guest --target x86_64-unknown-linux-musl`).
    #[arg(long, value_name = "FILE")]
    pub guest_agent: Option<PathBuf>,
    /// Alpine mirror base URL for `${ALPINE_MIRROR}` in recipes and the image's apk repositories.
    #[arg(long, value_name = "URL", env = "FIRECLAW_ALPINE_MIRROR")]
    pub alpine_mirror: Option<String>,
    /// Debian mirror for mmdebstrap (default: the first in this host's apt configuration).
    #[arg(long, value_name = "URL")]
    pub debian_mirror: Option<String>,
    /// make -j for the kernel (default: number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Recipe to benchmark.
    #[arg(default_value = "debian-test")]
    pub recipe: String,
    #[command(flatten)]
    pub build: BuildArgs,
}

pub fn run(env: &Env, args: &ImageArgs) -> anyhow::Result<i32> {
    match &args.command {
        ImageCommand::Build(b) => build(env, b),
        ImageCommand::List(d) => list(env, d),
        ImageCommand::Bench(b) => bench(env, b),
    }
}

/// Build options from the config, then the environment (`FIRECLAW_ALPINE_MIRROR`,
/// `SOURCE_DATE_EPOCH`), then the flags over them.
pub fn options(env: &Env, b: &BuildArgs) -> anyhow::Result<BuildOptions> {
    let mut o = BuildOptions::from_config(&env.root, &env.config);
    o.env_overrides(&|k| std::env::var(k).ok())?;
    if let Some(d) = &b.recipes {
        o.recipes = Store::Dir(d.clone());
    }
    if let Some(d) = &b.kernel_dir {
        o.kernel = Store::Dir(d.clone());
    }
    if let Some(d) = &b.cache_dir {
        o.cache_dir = env.root.host(d);
    }
    if let Some(d) = &b.dirs.image_dir {
        o.image_dir = env.root.host(d);
    }
    if !b.authorized_keys.is_empty() {
        o.authorized_keys.clear();
        for f in &b.authorized_keys {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading --authorized-key {}", f.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if !line.starts_with("ssh-") && !line.starts_with("ecdsa-") {
                    bail!(
                        "{}: {line:?} is not an OpenSSH public key line",
                        f.display()
                    );
                }
                o.authorized_keys.push(line.to_string());
            }
        }
    }
    if b.guest_agent.is_some() {
        o.guest_agent = b.guest_agent.clone();
    }
    if b.alpine_mirror.is_some() {
        o.alpine_mirror = b.alpine_mirror.clone();
    }
    if b.debian_mirror.is_some() {
        o.debian_mirror = b.debian_mirror.clone();
    }
    if let Some(j) = b.jobs {
        o.jobs = j.max(1);
    }
    Ok(o)
}

fn default_names(env: &Env, names: &[String]) -> Vec<String> {
    if !names.is_empty() {
        return names.to_vec();
    }
    let mut v = vec![image::KERNEL.to_string()];
    v.extend(env.config.images.recipes.iter().cloned());
    v
}

fn build(env: &Env, b: &BuildArgs) -> anyhow::Result<i32> {
    let opts = options(env, b)?;
    let names = default_names(env, &b.names);
    let targets = image::plan(&opts, &names)?;
    for t in &targets {
        let mark = if t.up_to_date() && !b.force { "=" } else { "+" };
        println!("{mark} {}", t.describe());
    }
    if b.dry_run {
        return Ok(0);
    }
    let todo: Vec<&Target> = targets
        .iter()
        .filter(|t| b.force || !t.up_to_date())
        .collect();
    if todo.is_empty() {
        println!("nothing to build");
        return Ok(0);
    }
    if !env.privileged {
        bail!("building images needs root (file ownership, chroot); --dry-run shows the plan without it");
    }
    let shell = Shell::new();
    for t in todo {
        image::build(&opts, t, &shell).with_context(|| format!("building {}", t.name()))?;
    }
    Ok(0)
}

/// The first 16 hex digits of a digest, for a table; a manifest is outside input, so a short
/// digest is shown as it is rather than sliced.
fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

fn list(env: &Env, args: &ListArgs) -> anyhow::Result<i32> {
    let dir = match &args.dirs.image_dir {
        Some(p) => env.root.host(p),
        None => env.root.host(&env.config.paths.image_dir),
    };
    let kernel = manifest::read::<manifest::KernelManifest>(&dir.join("kernel.manifest.json"))?;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    let mut images = Vec::new();
    for p in entries {
        let Some(fname) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !fname.ends_with(".manifest.json") || fname == "kernel.manifest.json" {
            continue;
        }
        if let Some(m) = manifest::read::<manifest::Manifest>(&p)? {
            images.push(m);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image_dir": dir,
                "kernel": kernel,
                "images": images,
            }))?
        );
        return Ok(0);
    }
    if let Some(k) = &kernel {
        println!(
            "kernel       {} {}  vmlinux {} KiB  bzImage {} KiB  sha256 {}",
            k.source_package,
            k.source_version,
            k.vmlinux_bytes / 1024,
            k.bzimage_bytes / 1024,
            short(&k.vmlinux_sha256)
        );
    }
    for m in &images {
        println!(
            "{:<12} {:>5} MiB ({:.1} MiB on disk)  sha256 {}  {}",
            m.name,
            m.size_bytes >> 20,
            m.disk_bytes as f64 / 1048576.0,
            short(&m.sha256),
            m.description
        );
    }
    if images.is_empty() {
        println!("no images in {}", dir.display());
    }
    Ok(0)
}

fn bench(env: &Env, a: &BenchArgs) -> anyhow::Result<i32> {
    if !env.privileged {
        bail!("the image benchmark builds images and needs root");
    }
    let mut opts = options(env, &a.build)?;
    let scratch = opts.cache_dir.join(format!("bench-{}", std::process::id()));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(scratch.clone());
    opts.image_dir = scratch.join("images");
    let names = [a.recipe.clone()];

    let shell = Shell::new();
    let t0 = Instant::now();
    let plan = image::plan(&opts, &names)?;
    for t in &plan {
        image::build(&opts, t, &shell)?;
    }
    let full = t0.elapsed();

    let t1 = Instant::now();
    let plan = image::plan(&opts, &names)?;
    let skipped = plan.iter().all(Target::up_to_date);
    let cached = t1.elapsed();
    if !skipped {
        bail!("the second plan wanted a rebuild: the cache did not work");
    }

    let t2 = Instant::now();
    for t in &plan {
        image::build(&opts, t, &shell)?;
    }
    let forced = t2.elapsed();
    let m: manifest::Manifest =
        manifest::read(&opts.image_dir.join(format!("{}.manifest.json", a.recipe)))?
            .context("benchmark image has no manifest")?;
    println!("image bench: {}", a.recipe);
    println!("  full build              {:>9.2} s", full.as_secs_f64());
    println!(
        "  cached rebuild (no-op)  {:>9.4} s   {:.0}x faster",
        cached.as_secs_f64(),
        full.as_secs_f64() / cached.as_secs_f64().max(1e-6)
    );
    println!(
        "  forced rebuild          {:>9.2} s   (pinned downloads cached; mmdebstrap fetches again)",
        forced.as_secs_f64()
    );
    println!(
        "  size: {:.1} MiB apparent, {:.1} MiB on disk ({:.1}%)",
        m.size_bytes as f64 / 1048576.0,
        m.disk_bytes as f64 / 1048576.0,
        100.0 * m.disk_bytes as f64 / m.size_bytes.max(1) as f64
    );
    Ok(0)
}
