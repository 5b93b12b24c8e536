//! What was built: one JSON file beside each image (`<name>.manifest.json`) and one beside the
//! kernel (`kernel.manifest.json`). The VM side reads the image's SSH host key from here to pin
//! it; the builder reads `recipe_hash` to decide whether a rebuild is needed.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One input the image was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// `alpine-minirootfs`, `debian`, `file` or `guest-agent`.
    pub kind: String,
    /// Where it came from (URL, mirror + suite, or path).
    pub origin: String,
    /// `sha256` or `sha512`.
    pub algo: String,
    pub digest: String,
}

/// A rootfs image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    /// Digest of everything the build depends on (resolved recipe, referenced files, pins, keys,
    /// builder version); equal digests mean the image need not be rebuilt.
    pub recipe_hash: String,
    /// Recipe files of the `extends` chain, base first.
    pub recipe_files: Vec<String>,
    pub sources: Vec<SourceRecord>,
    /// The kernel built alongside, when there was one.
    pub kernel: Option<KernelRef>,
    /// Image file name (beside the manifest).
    pub image: String,
    /// Apparent size in bytes.
    pub size_bytes: u64,
    /// Bytes actually allocated on the host's disk (the image is sparse).
    pub disk_bytes: u64,
    /// SHA-256 of the whole image file.
    pub sha256: String,
    /// The ext4 filesystem UUID (derived from `recipe_hash`, so rebuilds are identical).
    pub fs_uuid: String,
    /// The guest's SSH host public key, one OpenSSH line (pin this when connecting).
    pub ssh_host_key: Option<String>,
    /// Users created by the recipe.
    pub users: Vec<String>,
    /// Timestamp every file in the image carries (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// `fireclaw <version>` and the builder format version.
    pub builder: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRef {
    pub path: String,
    pub sha256: String,
}

/// The guest kernel's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    /// Digest of source pin + config fragments + builder version.
    pub build_key: String,
    pub source_package: String,
    pub source_version: String,
    pub source_sha256: String,
    pub base_config: String,
    pub fragments: Vec<String>,
    /// SHA-256 of the final .config.
    pub config_sha256: String,
    pub vmlinux_sha256: String,
    pub bzimage_sha256: String,
    pub vmlinux_bytes: u64,
    pub bzimage_bytes: u64,
    pub build_seconds: u64,
    pub builder: String,
}

pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("{}: not a fireclaw manifest", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `value` as pretty JSON via a temporary file and a rename, so readers never see half.
pub fn write<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}
