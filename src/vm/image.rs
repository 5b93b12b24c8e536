//! Which kernel, root image and pinned host key a VM boots with. Images are described by the
//! image builder's manifest (`<image_dir>/<name>.manifest.json`): `image` names the root filesystem
//! file beside it and `ssh_host_key` is the guest's host public key, which fireclaw pins. A
//! manifest without a host key is refused: fireclaw never trusts a guest key on first use.

use std::path::{Path, PathBuf};

use russh::keys::PublicKey;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{what} {path} does not exist{hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },
}

#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub host_key: PublicKey,
    /// Login for `run` (the manifest's `ssh_user`, default root).
    pub user: String,
    /// Appended to the kernel command line (the manifest's `kernel_cmdline`).
    pub cmdline_extra: String,
    /// The root image's sha256 as the builder recorded it (the manifest's `sha256`); snapshots
    /// are tagged with it.
    pub sha256: Option<String>,
}

/// The fields fireclaw reads; the builder writes more, which are ignored here on purpose (the
/// manifest belongs to the image builder and grows with it).
#[derive(Debug, Deserialize)]
struct ManifestView {
    name: Option<String>,
    image: String,
    ssh_host_key: Option<String>,
    #[serde(default)]
    ssh_user: Option<String>,
    #[serde(default)]
    kernel: Option<KernelRef>,
    #[serde(default)]
    kernel_cmdline: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KernelRef {
    path: String,
}

/// Why a manifest without a host key cannot be run. Such an image comes from a recipe without an
/// `[ssh]` section (no SSH server is set up, no host key made): rebuilding it as it is changes
/// nothing, so the advice is to add the section.
const NO_HOST_KEY: &str = "has no ssh_host_key: its recipe has no [ssh] section, so the image has no SSH server fireclaw can reach (fireclaw pins the guest's host key and never trusts one on first use); add an [ssh] section to the recipe and build the image again, or run an image whose recipe has one";

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// `name` is an image name (looked up in `image_dir`) or a path to a manifest file.
pub fn manifest_path(name: &str, image_dir: &Path) -> PathBuf {
    if name.contains('/') || name.ends_with(".json") {
        PathBuf::from(name)
    } else {
        image_dir.join(format!("{name}.manifest.json"))
    }
}

pub fn resolve(name: &str, image_dir: &Path, o: &Overrides) -> Result<ImageSpec, ImageError> {
    let path = manifest_path(name, image_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| ImageError::Manifest {
        path: path.clone(),
        message: format!(
            "{e} (build it with `fireclaw image build`, or pass --image PATH/TO/x.manifest.json)"
        ),
    })?;
    parse(&text, &path, image_dir, o)
}

pub fn parse(
    text: &str,
    path: &Path,
    image_dir: &Path,
    o: &Overrides,
) -> Result<ImageSpec, ImageError> {
    let bad = |message: String| ImageError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let m: ManifestView = serde_json::from_str(text)
        .map_err(|e| bad(format!("not a fireclaw image manifest: {e}")))?;
    let key_line = m
        .ssh_host_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| bad(NO_HOST_KEY.into()))?;
    let host_key = super::ssh::parse_host_key(&key_line).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let beside = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    if m.image.is_empty() || m.image.contains('\0') {
        return Err(bad("`image` is empty".into()));
    }
    let rootfs = beside(&m.image);
    let kernel = o
        .kernel
        .clone()
        .or_else(|| m.kernel.as_ref().map(|k| beside(&k.path)))
        .unwrap_or_else(|| image_dir.join("vmlinux"));
    let user = m.ssh_user.unwrap_or_else(|| "root".into());
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(bad(format!("ssh_user {user:?} is not a user name")));
    }
    let spec = ImageSpec {
        name: m.name.unwrap_or_else(|| {
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        rootfs,
        kernel,
        initrd: o.initrd.clone(),
        host_key,
        user,
        cmdline_extra: m.kernel_cmdline.unwrap_or_default(),
        sha256: m.sha256.filter(|d| !d.is_empty()),
    };
    for (what, p) in [("root image", &spec.rootfs), ("kernel", &spec.kernel)] {
        if !p.exists() {
            return Err(ImageError::Missing {
                what,
                path: p.clone(),
                hint: if what == "kernel" {
                    " (pass --kernel, or build it with `fireclaw image build`)".into()
                } else {
                    String::new()
                },
            });
        }
    }
    if let Some(i) = &spec.initrd {
        if !i.exists() {
            return Err(ImageError::Missing {
                what: "initrd",
                path: i.clone(),
                hint: String::new(),
            });
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvuTJJdT3OfA7BKZQTs1gYDKuRMi3YTdnr1c2nLLh4v";

    #[test]
    fn resolves_builder_manifests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.ext4"), b"").unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"").unwrap();
        let text = format!(
            r#"{{"name": "base", "image": "base.ext4", "ssh_host_key": "{KEY}", "recipe_hash": "x", "users": []}}"#
        );
        std::fs::write(dir.path().join("base.manifest.json"), &text).unwrap();
        let spec = resolve("base", dir.path(), &Overrides::default()).unwrap();
        assert_eq!(spec.rootfs, dir.path().join("base.ext4"));
        assert_eq!(spec.kernel, dir.path().join("vmlinux"));
        assert_eq!(spec.user, "root");
    }

    #[test]
    fn hostile_manifests_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.manifest.json");
        let o = Overrides::default();
        let cases = [
            ("", "not a fireclaw image manifest"),
            ("[]", "not a fireclaw image manifest"),
            (r#"{"image": "a"}"#, "no ssh_host_key"),
            (r#"{"image": "a", "ssh_host_key": null}"#, "no ssh_host_key"),
            (r#"{"image": "a", "ssh_host_key": "  "}"#, "no ssh_host_key"),
            (
                r#"{"image": "a", "ssh_host_key": "ssh-ed25519 garbage"}"#,
                "OpenSSH",
            ),
            (
                r#"{"image": 5, "ssh_host_key": "x"}"#,
                "not a fireclaw image manifest",
            ),
            (
                &format!(r#"{{"image": "", "ssh_host_key": "{KEY}"}}"#),
                "empty",
            ),
            (
                &format!(r#"{{"image": "nope.ext4", "ssh_host_key": "{KEY}"}}"#),
                "does not exist",
            ),
            (
                &format!(r#"{{"image": "a", "ssh_host_key": "{KEY}", "ssh_user": "r;m"}}"#),
                "not a user name",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, &p, dir.path(), &o).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let err = resolve("missing", dir.path(), &o).unwrap_err().to_string();
        assert!(err.contains("missing.manifest.json"), "{err}");
    }

    #[test]
    fn an_image_without_ssh_says_to_add_the_recipe_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.manifest.json");
        let err = parse(r#"{"image": "a"}"#, &p, dir.path(), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[ssh] section"), "{err}");
        assert!(!err.contains("(rebuild the image)"), "{err}");
    }
}
