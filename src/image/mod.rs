//! The image builder: guest kernel and root filesystem images from recipes.
//!
//! `recipe` parses and merges recipes, `build` turns one into an ext4 image without mounting
//! anything, `kernel` builds the guest kernel from the pinned source and `manifest` describes what
//! was built. Provisioning uses the `plan_*` functions (which change nothing) and the `build_*`
//! functions (which do the work) through [`Builder`].

pub mod build;
mod common;
pub mod guest_agent;
pub mod kernel;
pub mod manifest;
pub mod recipe;

use std::path::{Path, PathBuf};

use crate::report::Reporter;

pub use build::ImagePlan;
pub use common::{BuildOptions, DEFAULT_SOURCE_DATE_EPOCH};
pub use kernel::KernelPlan;
pub use manifest::{KernelManifest, Manifest};

/// Where recipe or kernel files are read from: a directory (a checkout), or the copy compiled
/// into the binary (an installed fireclaw has no checkout).
#[derive(Debug, Clone)]
pub enum Store {
    Dir(PathBuf),
    Embedded {
        files: &'static [(&'static str, &'static str)],
        /// The repository folder the files come from, for messages.
        label: &'static str,
    },
}

impl Store {
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, std::io::Error> {
        match self {
            Store::Dir(d) => std::fs::read(d.join(rel)),
            Store::Embedded { files, .. } => files
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, c)| c.as_bytes().to_vec())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not among the built-in files",
                    )
                }),
        }
    }

    pub fn display(&self, rel: &str) -> String {
        match self {
            Store::Dir(d) => d.join(rel).display().to_string(),
            Store::Embedded { label, .. } => format!("{label}/{rel} (built in)"),
        }
    }

    /// Names of the top-level `*.toml` files, without the extension, sorted.
    pub fn names(&self) -> Result<Vec<String>, std::io::Error> {
        let mut out: Vec<String> = match self {
            Store::Dir(d) => std::fs::read_dir(d)?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".toml"))
                        .map(String::from)
                })
                .collect(),
            Store::Embedded { files, .. } => files
                .iter()
                .filter_map(|(p, _)| p.strip_suffix(".toml"))
                .filter(|p| !p.contains('/'))
                .map(String::from)
                .collect(),
        };
        out.sort();
        Ok(out)
    }
}

/// The name `fireclaw image build` gives the guest kernel among recipe names.
pub const KERNEL: &str = "kernel";

/// One thing `image build` can make.
#[derive(Debug, Clone)]
pub enum Target {
    Kernel(Box<KernelPlan>),
    Image(Box<ImagePlan>),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Kernel(_) => KERNEL,
            Target::Image(p) => &p.name,
        }
    }
    pub fn up_to_date(&self) -> bool {
        match self {
            Target::Kernel(p) => p.up_to_date,
            Target::Image(p) => p.up_to_date,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Target::Kernel(p) => p.describe(),
            Target::Image(p) => p.describe(),
        }
    }
    /// Files the build writes (removed by uninstall).
    pub fn outputs(&self) -> Vec<PathBuf> {
        match self {
            Target::Kernel(p) => vec![
                p.vmlinux.clone(),
                p.bzimage.clone(),
                p.manifest_path.clone(),
            ],
            Target::Image(p) => vec![p.image_path.clone(), p.manifest_path.clone()],
        }
    }
}

impl Target {
    /// Verified downloads the build keeps in `<cache_dir>/downloads` (removed by uninstall with
    /// the build's outputs).
    pub fn downloads(&self, cache_dir: &Path) -> Vec<PathBuf> {
        match self {
            Target::Kernel(_) => Vec::new(),
            Target::Image(p) => p
                .recipe
                .source
                .pin()
                .map(|pin| {
                    crate::fetch::Cache::new(cache_dir.join(crate::fetch::DOWNLOADS_DIR))
                        .path_for(&pin)
                })
                .into_iter()
                .collect(),
        }
    }
}

/// Plans (without changing anything) the given targets: `kernel` or recipe names.
pub fn plan(opts: &BuildOptions, names: &[String]) -> anyhow::Result<Vec<Target>> {
    names
        .iter()
        .map(|n| {
            Ok(if n == KERNEL {
                Target::Kernel(Box::new(kernel::plan_kernel(opts)?))
            } else {
                Target::Image(Box::new(build::plan_image(opts, n)?))
            })
        })
        .collect()
}

/// Builds a planned target (whether or not it is up to date: callers skip those they want to),
/// telling `rep` what it does.
pub fn build(opts: &BuildOptions, target: &Target, rep: &dyn Reporter) -> anyhow::Result<()> {
    match target {
        Target::Kernel(p) => kernel::build_kernel(opts, p, rep).map(|_| ()),
        Target::Image(p) => build::build_image(opts, p, rep).map(|_| ()),
    }
}

pub(crate) fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
