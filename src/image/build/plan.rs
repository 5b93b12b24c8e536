//! Planning an image: load the recipe, hash every input, compare with the manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::super::common::BuildOptions;
use super::super::guest_agent;
use super::super::manifest::{self, Manifest};
use super::super::recipe::{self, Recipe, Source};
use crate::fetch;

/// Bumped when the builder's output for the same recipe changes, so old images are rebuilt
/// (2: the sshd drop-in turns off PAM, motd and last-login lookups).
pub const BUILDER_FORMAT: u32 = 2;

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
            // By content, not modification time: a fresh clone's rebuild of an identical binary
            // must not rebuild the image (5 MB hash in milliseconds).
            let p = guest_agent_path(opts, &recipe, &f.dest)?;
            let bytes = guest_agent::read_static(&p)
                .with_context(|| format!("{}: files {}", recipe_file(&recipe), f.dest))?;
            guest_agent = Some(format!("sha256 {}", fetch::sha256_hex(&bytes)));
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
            if m.recipe_hash == input_hash
                && super::super::file_size(&image_path) == m.size_bytes =>
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

pub(super) fn recipe_file(r: &Recipe) -> &str {
    r.chain.last().map(String::as_str).unwrap_or("recipe")
}

/// The guest agent for the builtin file `dest`, or an error saying how to build one.
pub(super) fn guest_agent_path(
    opts: &BuildOptions,
    r: &Recipe,
    dest: &str,
) -> anyhow::Result<PathBuf> {
    opts.guest_agent
        .clone()
        .ok_or_else(|| guest_agent::missing(recipe_file(r), dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Store;
    use crate::root::RootPrefix;
    use std::fs;

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
            kernel: crate::image::kernel::embedded(),
            cache_dir: d.path().join("cache"),
            image_dir: d.path().join("images"),
            authorized_keys: vec![],
            guest_agent: None,
            alpine_mirror: None,
            debian_mirror: None,
            source_date_epoch: crate::image::DEFAULT_SOURCE_DATE_EPOCH,
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

    /// The smallest "static" x86-64 ELF: a header with no program headers at all.
    fn tiny_static_elf(tag: u8) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18] = 62;
        b.push(tag);
        b
    }

    #[test]
    fn guest_agent_is_required_static_and_hashed_by_content() {
        let d = tempfile::tempdir().unwrap();
        let recipes = d.path().join("r");
        fs::create_dir_all(&recipes).unwrap();
        fs::write(
            recipes.join("t.toml"),
            "[source]\nkind = \"debian\"\nsuite = \"bookworm\"\n\n[[files]]\n\
             dest = \"/usr/local/bin/fireclaw-guest\"\nbuiltin = \"guest-agent\"\nmode = \"0755\"\n",
        )
        .unwrap();
        let mut opts = BuildOptions {
            root: RootPrefix::new(d.path()),
            recipes: Store::Dir(recipes.clone()),
            kernel: crate::image::kernel::embedded(),
            cache_dir: d.path().join("cache"),
            image_dir: d.path().join("images"),
            authorized_keys: vec![],
            guest_agent: None,
            alpine_mirror: None,
            debian_mirror: None,
            source_date_epoch: crate::image::DEFAULT_SOURCE_DATE_EPOCH,
            jobs: 1,
        };
        // No binary: the error says how to build one, never falls back to this executable.
        let e = format!("{:#}", plan_image(&opts, "t").unwrap_err());
        assert!(
            e.contains("t.toml")
                && e.contains(
                    "cargo build --release -p fireclaw-guest --target x86_64-unknown-linux-musl"
                )
                && e.contains("--guest-agent"),
            "{e}"
        );
        // The host's own (dynamically linked) binary is refused.
        opts.guest_agent = Some(std::env::current_exe().unwrap());
        let e = format!("{:#}", plan_image(&opts, "t").unwrap_err());
        assert!(e.contains("dynamically linked"), "{e}");

        let bin = d.path().join("fireclaw-guest");
        fs::write(&bin, tiny_static_elf(1)).unwrap();
        opts.guest_agent = Some(bin.clone());
        let first = plan_image(&opts, "t").unwrap().input_hash;
        // A rebuild of identical bytes (new mtime, as in a fresh clone) keeps the hash...
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(plan_image(&opts, "t").unwrap().input_hash, first);
        // ...and different bytes change it.
        fs::write(&bin, tiny_static_elf(2)).unwrap();
        assert_ne!(plan_image(&opts, "t").unwrap().input_hash, first);
    }
}
