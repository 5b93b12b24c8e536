//! Image recipes: declarative TOML files in `rootfs-recipes/`.
//!
//! A recipe names its base (a pinned root filesystem tarball or a Debian suite), the packages to
//! install, users, files, directories, services and mounts, and the image size. A recipe can
//! `extends` another and adds to it. Parsing is strict (`deny_unknown_fields`): a typo is an error
//! that names the file, the line and what was expected, never a silent default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::fetch::Pin;

/// An error in a recipe: which file, where, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RecipeError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: ", self.file, l)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

/// One recipe file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Image-wide settings.
    #[serde(default)]
    pub image: ImageSection,
    /// Where the root tree comes from; inherited (and not allowed) when `image.extends` is set.
    pub source: Option<Source>,
    /// Packages installed into the tree (apk for Alpine sources, apt via mmdebstrap for Debian).
    #[serde(default)]
    pub packages: Packages,
    /// Unprivileged users to create.
    #[serde(default)]
    pub users: Vec<User>,
    /// Files copied (or written inline) into the tree.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Directories created in the tree (mount points, homes of services).
    #[serde(default)]
    pub dirs: Vec<DirEntry>,
    /// Long-running programs the init starts (and restarts) at boot.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Filesystems the init mounts at boot, written to `/etc/fstab`.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// The SSH server and its keys.
    pub ssh: Option<Ssh>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// One line shown by `fireclaw image list`.
    pub description: Option<String>,
    /// Name of the recipe this one builds on (a file `<name>.toml` beside it).
    pub extends: Option<String>,
    /// Size of the ext4 image in MiB; the file is sparse, so unused space costs no disk.
    pub size_mib: Option<u64>,
    /// The guest's hostname.
    pub hostname: Option<String>,
}

/// The base tree.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// An Alpine minirootfs tarball (gzip), pinned by sha256 or sha512. Packages go in with the
    /// tree's own `apk`.
    AlpineMinirootfs {
        url: String,
        sha256: Option<String>,
        sha512: Option<String>,
    },
    /// A Debian tree made by mmdebstrap from the mirror in the host's apt configuration.
    Debian {
        /// Suite, e.g. `bookworm`.
        suite: String,
        /// mmdebstrap variant (`minbase` is the smallest tree with apt).
        #[serde(default = "default_variant")]
        variant: String,
    },
}

fn default_variant() -> String {
    "minbase".into()
}

impl Source {
    /// The digest pin of a tarball source.
    pub fn pin(&self) -> Option<Pin> {
        match self {
            Source::AlpineMinirootfs { sha256, sha512, .. } => match (sha256, sha512) {
                (Some(h), None) => Some(Pin::Sha256(h.clone())),
                (None, Some(h)) => Some(Pin::Sha512(h.clone())),
                _ => None,
            },
            Source::Debian { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Package names, in the base's own package manager's naming.
    #[serde(default)]
    pub install: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric uid (and gid of the user's own group); fixed so images are reproducible.
    pub uid: u32,
    /// Home directory; default `/home/<name>`.
    pub home: Option<String>,
    /// Login shell; default `/bin/sh`.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Supplementary groups (must exist in the tree).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Install the operator's SSH public key(s) for this user.
    #[serde(default)]
    pub ssh: bool,
}

fn default_shell() -> String {
    "/bin/sh".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the guest.
    pub dest: String,
    /// A file beside the recipe (relative to `rootfs-recipes/`).
    pub src: Option<String>,
    /// Inline content.
    pub content: Option<String>,
    /// A file the builder provides: `guest-agent` (this crate's guest agent binary).
    pub builtin: Option<String>,
    /// Octal mode, e.g. "0644".
    #[serde(default = "default_file_mode")]
    pub mode: String,
    /// Owner: a user name from this recipe or the tree's /etc/passwd, or "root".
    #[serde(default = "default_owner")]
    pub owner: String,
}

fn default_file_mode() -> String {
    "0644".into()
}
fn default_dir_mode() -> String {
    "0755".into()
}
fn default_owner() -> String {
    "root".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub path: String,
    #[serde(default = "default_dir_mode")]
    pub mode: String,
    #[serde(default = "default_owner")]
    pub owner: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name (file name under /etc/fireclaw/services).
    pub name: String,
    /// Command line, run by `/bin/sh -c` in the foreground; the init restarts it when it exits.
    pub command: String,
    /// Run as this user instead of root.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub device: String,
    pub path: String,
    #[serde(default = "default_fstype")]
    pub fstype: String,
    #[serde(default = "default_mount_options")]
    pub options: String,
}

fn default_fstype() -> String {
    "ext4".into()
}
fn default_mount_options() -> String {
    "defaults".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// `openssh` (the only server the builder configures keys for).
    #[serde(default = "default_ssh_server")]
    pub server: String,
    /// Install the operator's key for root too.
    #[serde(default = "default_true")]
    pub root_login: bool,
}

fn default_ssh_server() -> String {
    "openssh".into()
}
fn default_true() -> bool {
    true
}

pub use super::Store as RecipeStore;

/// The recipes, and the files they reference, as shipped in the repository. Compiled in so an
/// installed `fireclaw` needs no checkout.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("base.toml", include_str!("../../rootfs-recipes/base.toml")),
    (
        "agent.toml",
        include_str!("../../rootfs-recipes/agent.toml"),
    ),
    (
        "debian-test.toml",
        include_str!("../../rootfs-recipes/debian-test.toml"),
    ),
    (
        "debian-systemd.toml",
        include_str!("../../rootfs-recipes/debian-systemd.toml"),
    ),
    (
        "files/fireclaw-init",
        include_str!("../../rootfs-recipes/files/fireclaw-init"),
    ),
];

/// The recipes compiled into the binary.
pub fn embedded() -> RecipeStore {
    RecipeStore::Embedded {
        files: EMBEDDED,
        label: "rootfs-recipes",
    }
}

/// A recipe with its `extends` chain folded in: what the builder works from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recipe {
    pub name: String,
    /// Files of the chain, base first (for messages and the manifest).
    pub chain: Vec<String>,
    pub description: String,
    pub source: Source,
    pub size_mib: u64,
    pub hostname: String,
    pub packages: Vec<String>,
    pub users: Vec<User>,
    pub files: Vec<FileEntry>,
    pub dirs: Vec<DirEntry>,
    pub services: Vec<Service>,
    pub mounts: Vec<Mount>,
    pub ssh: Option<Ssh>,
}

pub const DEFAULT_SIZE_MIB: u64 = 1024;
const MIN_SIZE_MIB: u64 = 8;
const MAX_SIZE_MIB: u64 = 64 * 1024;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_lowercase()
}

/// Parses an octal mode string such as "0755".
pub fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8).ok()?;
    (m <= 0o7777).then_some(m)
}

/// An absolute guest path without `..`, `.` tricks or the root itself.
pub fn is_guest_path(s: &str) -> bool {
    let p = Path::new(s);
    p.is_absolute()
        && p.components().count() > 1
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// 1-based line of the first line mentioning `key` (and `value` when given), for errors found
/// after deserialization (where toml's spans are gone).
fn find_line(text: &str, key: &str, value: Option<&str>) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(key)
                && t[key.len()..].trim_start().starts_with('=')
                && value.is_none_or(|v| l.contains(v))
        })
        .map(|i| i + 1)
}

fn line_of_offset(text: &str, off: usize) -> usize {
    text[..off.min(text.len())].matches('\n').count() + 1
}

/// Loads recipe `name` and everything it extends.
pub fn load(store: &RecipeStore, name: &str) -> Result<Recipe, RecipeError> {
    let mut stack: Vec<String> = Vec::new();
    load_inner(store, name, &mut stack)
}

fn load_inner(
    store: &RecipeStore,
    name: &str,
    stack: &mut Vec<String>,
) -> Result<Recipe, RecipeError> {
    let rel = format!("{name}.toml");
    let file = store.display(&rel);
    let err = |line: Option<usize>, key: &str, message: String| RecipeError {
        file: file.clone(),
        line,
        key: key.to_string(),
        message,
    };
    if stack.iter().any(|n| n == name) {
        let mut cycle = stack.clone();
        cycle.push(name.to_string());
        return Err(err(
            None,
            "image.extends",
            format!("cycle in `extends`: {}", cycle.join(" -> ")),
        ));
    }
    if !is_name(name) {
        return Err(err(
            None,
            "",
            format!("{name:?} is not a recipe name (lowercase letters, digits, `-`, `_`)"),
        ));
    }
    let bytes = store
        .read(&rel)
        .map_err(|e| err(None, "", format!("cannot read recipe: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| err(None, "", "not UTF-8".into()))?;
    let raw: RecipeFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(&text, s.start));
        err(line, "", e.message().trim().to_string())
    })?;
    validate(&raw, &text, &err)?;

    stack.push(name.to_string());
    let mut recipe = match &raw.image.extends {
        Some(parent) => {
            if raw.source.is_some() {
                return Err(err(
                    find_line(&text, "[source]", None).or_else(|| find_line(&text, "kind", None)),
                    "source",
                    format!(
                        "this recipe extends {parent:?} and inherits its source; remove [source]"
                    ),
                ));
            }
            load_inner(store, parent, stack).map_err(|mut e| {
                if e.message.starts_with("cannot read recipe") {
                    e.message = format!("{} (named by `image.extends` in {file})", e.message);
                }
                e
            })?
        }
        None => {
            let source = raw.source.clone().ok_or_else(|| {
                err(
                    None,
                    "source",
                    "missing: a recipe without `image.extends` needs a [source] table".into(),
                )
            })?;
            Recipe {
                name: name.to_string(),
                chain: Vec::new(),
                description: String::new(),
                source,
                size_mib: DEFAULT_SIZE_MIB,
                hostname: "fireclaw".into(),
                packages: Vec::new(),
                users: Vec::new(),
                files: Vec::new(),
                dirs: Vec::new(),
                services: Vec::new(),
                mounts: Vec::new(),
                ssh: None,
            }
        }
    };
    stack.pop();
    merge(&mut recipe, name, &file, raw);
    Ok(recipe)
}

/// Child over parent: scalars replace, lists extend, and an entry with the same identity (user
/// name, file destination, service name, mount path) replaces the parent's.
fn merge(r: &mut Recipe, name: &str, file: &str, raw: RecipeFile) {
    r.name = name.to_string();
    r.chain.push(file.to_string());
    if let Some(d) = raw.image.description {
        r.description = d;
    }
    if let Some(s) = raw.image.size_mib {
        r.size_mib = s;
    }
    if let Some(h) = raw.image.hostname {
        r.hostname = h;
    }
    for p in raw.packages.install {
        if !r.packages.contains(&p) {
            r.packages.push(p);
        }
    }
    fn upsert<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
        match list.iter().position(|x| same(x, &item)) {
            Some(i) => list[i] = item,
            None => list.push(item),
        }
    }
    for u in raw.users {
        upsert(&mut r.users, u, |a, b| a.name == b.name);
    }
    for f in raw.files {
        upsert(&mut r.files, f, |a, b| a.dest == b.dest);
    }
    for d in raw.dirs {
        upsert(&mut r.dirs, d, |a, b| a.path == b.path);
    }
    for s in raw.services {
        upsert(&mut r.services, s, |a, b| a.name == b.name);
    }
    for m in raw.mounts {
        upsert(&mut r.mounts, m, |a, b| a.path == b.path);
    }
    if raw.ssh.is_some() {
        r.ssh = raw.ssh;
    }
}

type ErrFn<'a> = &'a dyn Fn(Option<usize>, &str, String) -> RecipeError;

fn validate(raw: &RecipeFile, text: &str, err: ErrFn) -> Result<(), RecipeError> {
    let at = |key: &str, value: Option<&str>| find_line(text, key, value);
    if let Some(p) = &raw.image.extends {
        if !is_name(p) {
            return Err(err(
                at("extends", None),
                "image.extends",
                format!("{p:?} is not a recipe name"),
            ));
        }
    }
    if let Some(s) = raw.image.size_mib {
        if !(MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&s) {
            return Err(err(
                at("size_mib", None),
                "image.size_mib",
                format!("{s} is out of range: expected {MIN_SIZE_MIB}..={MAX_SIZE_MIB} MiB"),
            ));
        }
    }
    if let Some(h) = &raw.image.hostname {
        if h.is_empty()
            || h.len() > 63
            || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err(
                at("hostname", None),
                "image.hostname",
                format!("{h:?} is not a hostname"),
            ));
        }
    }
    match &raw.source {
        Some(Source::AlpineMinirootfs {
            url,
            sha256,
            sha512,
        }) => {
            let scheme_ok = ["https://", "http://", "file://", "${ALPINE_MIRROR}/"]
                .iter()
                .any(|p| url.starts_with(p));
            if !scheme_ok || url.contains("/../") || url.chars().any(char::is_whitespace) {
                return Err(err(
                    at("url", None),
                    "source.url",
                    format!("{url:?}: expected an https://, http:// or file:// URL, or one starting with ${{ALPINE_MIRROR}}/"),
                ));
            }
            match (sha256, sha512) {
                (Some(h), None) if !crate::fetch::is_sha256_hex(h) => {
                    return Err(err(
                        at("sha256", None),
                        "source.sha256",
                        format!("{h:?}: expected 64 lowercase hex characters"),
                    ));
                }
                (None, Some(h)) if !crate::fetch::is_sha512_hex(h) => {
                    return Err(err(
                        at("sha512", None),
                        "source.sha512",
                        format!("{h:?}: expected 128 lowercase hex characters"),
                    ));
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(err(
                        at("url", None),
                        "source",
                        "expected exactly one of `sha256` or `sha512` to pin the tarball".into(),
                    ));
                }
            }
        }
        Some(Source::Debian { suite, variant }) => {
            if !is_name(suite) {
                return Err(err(
                    at("suite", None),
                    "source.suite",
                    format!("{suite:?} is not a suite name"),
                ));
            }
            if ![
                "minbase",
                "essential",
                "apt",
                "required",
                "buildd",
                "important",
                "standard",
            ]
            .contains(&variant.as_str())
            {
                return Err(err(
                    at("variant", None),
                    "source.variant",
                    format!("{variant:?}: expected an mmdebstrap variant such as \"minbase\""),
                ));
            }
        }
        None => {}
    }
    for p in &raw.packages.install {
        if p.is_empty()
            || p.starts_with('-')
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._:=<>~".contains(&b))
        {
            return Err(err(
                at("install", None),
                "packages.install",
                format!("{p:?} is not a package name"),
            ));
        }
    }
    let mut uids = BTreeMap::new();
    for u in &raw.users {
        let line = at("name", Some(&format!("\"{}\"", u.name)));
        if !is_name(&u.name) || u.name.len() > 32 {
            return Err(err(
                line,
                "users.name",
                format!("{:?} is not a user name", u.name),
            ));
        }
        if u.name == "root" || !(1000..=60000).contains(&u.uid) {
            return Err(err(
                line,
                "users.uid",
                format!("user {:?}: uid {} is outside 1000..=60000", u.name, u.uid),
            ));
        }
        if let Some(other) = uids.insert(u.uid, u.name.clone()) {
            return Err(err(
                line,
                "users.uid",
                format!("uid {} is used by both {other:?} and {:?}", u.uid, u.name),
            ));
        }
        for p in u.home.iter().chain(std::iter::once(&u.shell)) {
            if !is_guest_path(p) {
                return Err(err(
                    line,
                    "users",
                    format!("{p:?}: expected an absolute guest path"),
                ));
            }
        }
    }
    for f in &raw.files {
        let line = at("dest", Some(&f.dest));
        if !is_guest_path(&f.dest) {
            return Err(err(
                line,
                "files.dest",
                format!("{:?}: expected an absolute guest path without `..`", f.dest),
            ));
        }
        let n = [f.src.is_some(), f.content.is_some(), f.builtin.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            return Err(err(
                line,
                "files",
                format!(
                    "{}: expected exactly one of `src`, `content`, `builtin`",
                    f.dest
                ),
            ));
        }
        if let Some(s) = &f.src {
            let p = Path::new(s);
            if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(err(
                    at("src", Some(s)),
                    "files.src",
                    format!("{s:?}: expected a path relative to rootfs-recipes/ without `..`"),
                ));
            }
        }
        if let Some(b) = &f.builtin {
            if b != "guest-agent" {
                return Err(err(
                    at("builtin", Some(b)),
                    "files.builtin",
                    format!("{b:?}: expected \"guest-agent\""),
                ));
            }
        }
        if parse_mode(&f.mode).is_none() {
            return Err(err(
                at("mode", Some(&f.mode)),
                "files.mode",
                format!("{:?}: expected an octal mode such as \"0644\"", f.mode),
            ));
        }
    }
    for d in &raw.dirs {
        if !is_guest_path(&d.path) {
            return Err(err(
                at("path", Some(&d.path)),
                "dirs.path",
                format!("{:?}: expected an absolute guest path", d.path),
            ));
        }
        if parse_mode(&d.mode).is_none() {
            return Err(err(
                at("mode", Some(&d.mode)),
                "dirs.mode",
                format!("{:?}: expected an octal mode such as \"0755\"", d.mode),
            ));
        }
    }
    for s in &raw.services {
        if !is_name(&s.name) {
            return Err(err(
                at("name", Some(&s.name)),
                "services.name",
                format!("{:?} is not a service name", s.name),
            ));
        }
        if s.command.trim().is_empty() {
            return Err(err(
                at("command", None),
                "services.command",
                "empty command".into(),
            ));
        }
    }
    for m in &raw.mounts {
        if !is_guest_path(&m.path) || !m.device.starts_with("/dev/") {
            return Err(err(
                at("path", Some(&m.path)),
                "mounts",
                format!(
                    "{} on {}: expected a /dev/ device and an absolute path",
                    m.device, m.path
                ),
            ));
        }
        for v in [&m.device, &m.path, &m.fstype, &m.options] {
            if v.chars().any(char::is_whitespace) || v.is_empty() {
                return Err(err(
                    at("path", Some(&m.path)),
                    "mounts",
                    format!("{v:?}: fstab fields cannot be empty or contain spaces"),
                ));
            }
        }
    }
    if let Some(s) = &raw.ssh {
        if s.server != "openssh" {
            return Err(err(
                at("server", None),
                "ssh.server",
                format!("{:?}: expected \"openssh\"", s.server),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(files: &[(&str, &str)]) -> (tempfile::TempDir, RecipeStore) {
        let d = tempfile::tempdir().unwrap();
        for (n, c) in files {
            std::fs::write(d.path().join(n), c).unwrap();
        }
        let s = RecipeStore::Dir(d.path().to_path_buf());
        (d, s)
    }

    const BASE: &str = r#"
[image]
size_mib = 64
[source]
kind = "debian"
suite = "bookworm"
[packages]
install = ["openssh-server"]
[[files]]
dest = "/etc/motd"
content = "hi"
"#;

    #[test]
    fn embedded_recipes_load() {
        for n in embedded().names().unwrap() {
            let r = load(&embedded(), &n).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.name, n);
        }
        let agent = load(&embedded(), "agent").unwrap();
        assert_eq!(agent.chain.len(), 2);
        assert!(agent.users.iter().any(|u| u.name == "agent"));
    }

    #[test]
    fn pinned_alpine_urls_are_well_formed() {
        for n in ["base", "agent"] {
            let r = load(&embedded(), n).unwrap();
            let Source::AlpineMinirootfs { url, .. } = &r.source else {
                panic!("{n}: not alpine")
            };
            // The mirror is the operator's choice; the path below it and the digest are pinned.
            assert!(
                url.starts_with("${ALPINE_MIRROR}/v3.24/releases/x86_64/"),
                "{url}"
            );
            let url =
                crate::image::build::substitute_mirror(url, Some("https://mirror.example/alpine/"))
                    .unwrap();
            assert!(
                url.starts_with("https://mirror.example/alpine/v3.24/"),
                "{url}"
            );
            assert!(url.ends_with("-x86_64.tar.gz"), "{url}");
            let pin = r.source.pin().unwrap();
            pin.validate().unwrap();
            // The published 3.24.2 sha512 pins from the docker-alpine checksums file.
            assert_eq!(pin.algo(), "sha512");
            assert!(url.contains(&format!("alpine-minirootfs-{}", "3.24.2")));
        }
    }

    #[test]
    fn extends_merges() {
        let (_d, s) = store(&[
            ("base.toml", BASE),
            ("child.toml", "[image]\nextends = \"base\"\n[packages]\ninstall = [\"git\"]\n[[files]]\ndest = \"/etc/motd\"\ncontent = \"child\"\n"),
        ]);
        let r = load(&s, "child").unwrap();
        assert_eq!(r.packages, ["openssh-server", "git"]);
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].content.as_deref(), Some("child"));
        assert_eq!(r.size_mib, 64);
    }

    #[test]
    fn unknown_key_names_file_line_and_expected() {
        let (_d, s) = store(&[("bad.toml", "[image]\nsize_mib = 64\nsizee = 1\n")]);
        let e = load(&s, "bad").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("bad.toml:3:") && msg.contains("sizee") && msg.contains("expected"),
            "{msg}"
        );
    }

    #[test]
    fn extends_cycle_is_an_error() {
        let (_d, s) = store(&[
            ("a.toml", "[image]\nextends = \"b\"\n"),
            ("b.toml", "[image]\nextends = \"a\"\n"),
        ]);
        let e = load(&s, "a").unwrap_err();
        assert!(
            e.to_string().contains("cycle in `extends`: a -> b -> a"),
            "{e}"
        );
    }

    #[test]
    fn bad_sha_is_an_error_with_line() {
        let (_d, s) = store(&[(
            "x.toml",
            "[source]\nkind = \"alpine-minirootfs\"\nurl = \"https://example.invalid/a.tar.gz\"\nsha256 = \"abc\"\n",
        )]);
        let e = load(&s, "x").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(4), "source.sha256"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        for (body, key) in [
            (
                "[image]\nsize_mib = 1\n[source]\nkind = \"debian\"\nsuite = \"bookworm\"\n",
                "image.size_mib",
            ),
            (
                &format!("{BASE}[[files]]\ndest = \"/etc/../x\"\ncontent = \"\"\n"),
                "files.dest",
            ),
            (
                &format!("{BASE}[[files]]\ndest = \"/x\"\ncontent = \"\"\nmode = \"999\"\n"),
                "files.mode",
            ),
            (
                &format!("{BASE}[[users]]\nname = \"agent\"\nuid = 0\n"),
                "users.uid",
            ),
            ("[image]\nsize_mib = 64\n", "source"),
        ] {
            let (_d, s) = store(&[("x.toml", body)]);
            let e = load(&s, "x").unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn missing_parent_is_named() {
        let (_d, s) = store(&[("x.toml", "[image]\nextends = \"nope\"\n")]);
        let e = load(&s, "x").unwrap_err();
        assert!(
            e.to_string().contains("nope.toml") && e.to_string().contains("x.toml"),
            "{e}"
        );
    }
}
