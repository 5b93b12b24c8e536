//! What the image and kernel builders share: the build options (host paths, mirrors, keys, the
//! fixed epoch) and small helpers for running tools. Both `build` and `kernel` import from here and
//! never from each other.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};

use super::{recipe, Store};
use crate::fetch::{self, Cache};
use crate::root::RootPrefix;

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
    /// The guest agent binary (static, from the workspace's musl build of `fireclaw-guest`) for
    /// `builtin = "guest-agent"` files; never the host's own binary.
    pub guest_agent: Option<PathBuf>,
    /// Base URL substituted for `${ALPINE_MIRROR}` in recipes and written to /etc/apk/repositories.
    /// A `file://` URL (or absolute path) also serves the packages: see `build::source`.
    pub alpine_mirror: Option<String>,
    /// Debian mirror URL for mmdebstrap; default: the first one in the host's apt configuration.
    pub debian_mirror: Option<String>,
    /// The timestamp of every file in the image (`SOURCE_DATE_EPOCH` when the command sets it).
    pub source_date_epoch: u64,
    /// make -j for the kernel.
    pub jobs: usize,
}

impl BuildOptions {
    /// Options from the fireclaw config's paths, with the recipes and kernel config compiled in and
    /// the guest agent found beside this executable's build (see [`super::guest_agent::find`]).
    /// Reads no environment variables: commands apply those with [`BuildOptions::env_overrides`].
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
            kernel: kernel_store(),
            cache_dir: root.host(&config.paths.cache_dir),
            image_dir: root.host(&config.paths.image_dir),
            authorized_keys,
            guest_agent: std::env::current_exe()
                .ok()
                .and_then(|exe| super::guest_agent::find(&exe)),
            alpine_mirror: Some(config.images.alpine_mirror.clone()).filter(|s| !s.is_empty()),
            debian_mirror: None,
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    /// Applies `FIRECLAW_ALPINE_MIRROR` and `SOURCE_DATE_EPOCH` as `var` returns them (the
    /// command passes the process environment). A `SOURCE_DATE_EPOCH` that is not a number of
    /// seconds is an error, not a silent default.
    pub fn env_overrides(&mut self, var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(m) = var("FIRECLAW_ALPINE_MIRROR").filter(|s| !s.is_empty()) {
            self.alpine_mirror = Some(m);
        }
        if let Some(e) = var("SOURCE_DATE_EPOCH").filter(|s| !s.is_empty()) {
            self.source_date_epoch = e
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={e:?}: expected seconds since 1970"))?;
        }
        Ok(())
    }

    pub fn downloads(&self) -> Cache {
        Cache::new(self.cache_dir.join(fetch::DOWNLOADS_DIR))
    }
}

pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub(super) fn run_logged(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, last_lines(&text, 15));
    }
    Ok(())
}

/// Runs `cmd` with umask 022 whatever the caller's: package managers create directories that end
/// up in the image, and its bytes must not depend on who ran the build.
pub(super) fn with_fixed_umask(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: umask(2) is async-signal-safe and touches no memory; nothing else runs in the hook.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        })
    }
}

/// The kernel's `source.toml` and config fragment, compiled in (an installed fireclaw has no
/// checkout).
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("source.toml", include_str!("../../kernel/source.toml")),
    (
        "fireclaw-guest.config",
        include_str!("../../kernel/fireclaw-guest.config"),
    ),
];

pub fn kernel_store() -> Store {
    Store::Embedded {
        files: KERNEL_FILES,
        label: "kernel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_comes_only_through_env_overrides() {
        let d = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.images.alpine_mirror = "https://config.example/alpine".into();
        let mut o = BuildOptions::from_config(&RootPrefix::new(d.path()), &config);
        assert_eq!(o.source_date_epoch, DEFAULT_SOURCE_DATE_EPOCH);
        assert_eq!(
            o.alpine_mirror.as_deref(),
            Some("https://config.example/alpine")
        );
        let env = |k: &str| match k {
            "FIRECLAW_ALPINE_MIRROR" => Some("file:///srv/alpine".to_string()),
            "SOURCE_DATE_EPOCH" => Some("1700000000".to_string()),
            _ => None,
        };
        o.env_overrides(&env).unwrap();
        assert_eq!(o.alpine_mirror.as_deref(), Some("file:///srv/alpine"));
        assert_eq!(o.source_date_epoch, 1_700_000_000);
        let bad = |k: &str| (k == "SOURCE_DATE_EPOCH").then(|| "yesterday".to_string());
        let e = o.env_overrides(&bad).unwrap_err().to_string();
        assert!(
            e.contains("SOURCE_DATE_EPOCH") && e.contains("yesterday"),
            "{e}"
        );
    }
}
