//! `/etc/fireclaw/fireclaw.toml`: every default in one place.
//!
//! Every struct denies unknown fields, so a typo in the file is an error that names the key and the
//! line instead of a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::root::RootPrefix;

/// Where the configuration lives, relative to the root prefix.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fireclaw/fireclaw.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}{}: `{key}` is invalid: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Where the key is set; `None` when the value is a default (the file does not set it).
        line: Option<usize>,
        key: &'static str,
        message: String,
    },
}

/// The range every setting with a size or a count must fall in, shared by the configuration and
/// the command-line flags that set the same thing (`run --cpus` is checked against [`VCPUS`], as
/// `pool.vcpus` is), so the two cannot disagree.
pub mod bounds {
    use std::ops::RangeInclusive;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Bound {
        pub min: u64,
        pub max: u64,
        /// Why these limits, for the error message.
        pub why: &'static str,
    }

    impl Bound {
        /// For clap's `value_parser!(..).range(..)`.
        pub const fn clap(self) -> RangeInclusive<i64> {
            self.min as i64..=self.max as i64
        }

        pub fn check(self, value: u64) -> Result<(), String> {
            if (self.min..=self.max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "expected {}..={} ({}), got {value}",
                    self.min, self.max, self.why
                ))
            }
        }
    }

    pub const VCPUS: Bound = Bound {
        min: 1,
        max: 32,
        why: "Firecracker's limit",
    };
    pub const MEM_MIB: Bound = Bound {
        min: 64,
        max: 1_048_576,
        why: "MiB: a guest kernel needs 64, and 1 TiB is past any host fireclaw targets",
    };
    pub const MAX_VMS: Bound = Bound {
        min: 1,
        max: 1023,
        why: "a Linux bridge has at most 1024 ports and the host uses one",
    };
    pub const WARM_PER_IMAGE: Bound = Bound {
        min: 0,
        max: 64,
        why: "ready VMs per image; each holds its memory while it waits",
    };
    pub const HEALTH_SECS: Bound = Bound {
        min: 2,
        max: 3600,
        why: "seconds; more often loads the guests, less often leaves a dead agent unnoticed",
    };
    pub const DATA_MIB: Bound = Bound {
        min: 64,
        max: 16_777_216,
        why: "MiB; the sparse data file can be at most 16 TiB, ext4's largest file",
    };
    pub const METADATA_MIB: Bound = Bound {
        min: 2,
        max: 16_320,
        why: "MiB, dm-thin's limits",
    };
}

/// A value `validate` refused: the key (and the array item) it is at, and why.
struct Invalid {
    key: &'static str,
    item: Option<usize>,
    message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        key,
        item: None,
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub paths: Paths,
    pub network: Network,
    pub firecracker: Firecracker,
    pub irc: Irc,
    pub ollama: Ollama,
    pub pool: Pool,
    pub thinpool: ThinPool,
    pub images: Images,
    pub agents: Agents,
}

/// Host paths. Each is absolute and is resolved under the root prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// The state database, leases, VM sockets and disks live here.
    pub state_dir: String,
    /// Verified downloads (by sha256) and build artifacts.
    pub cache_dir: String,
    /// Configuration, the guest SSH key pair and the IRC operator password.
    pub config_dir: String,
    /// Where `firecracker` and `jailer` are installed.
    pub bin_dir: String,
    /// Kernel and rootfs images that VMs boot from.
    pub image_dir: String,
    /// Sockets and pid files of running VMs.
    pub run_dir: String,
    /// Where the systemd unit is written.
    pub unit_dir: String,
    /// The ngircd configuration file fireclaw owns while provisioned.
    pub ngircd_conf: String,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_dir: "/var/lib/fireclaw".into(),
            cache_dir: "/var/cache/fireclaw".into(),
            config_dir: "/etc/fireclaw".into(),
            bin_dir: "/usr/local/bin".into(),
            image_dir: "/var/lib/fireclaw/images".into(),
            run_dir: "/run/fireclaw".into(),
            unit_dir: "/etc/systemd/system".into(),
            ngircd_conf: "/etc/ngircd/ngircd.conf".into(),
        }
    }
}

/// The bridge every VM's tap joins, and its NAT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Bridge name (at most 15 bytes, the kernel's IFNAMSIZ - 1).
    pub bridge: String,
    /// The host's address on the bridge, with prefix length; guests get the rest of the subnet.
    pub address: String,
    /// Masquerade guest traffic leaving the host and enable IPv4 forwarding.
    pub nat: bool,
    /// The nftables table (family `inet`) that holds every rule fireclaw makes.
    pub nft_table: String,
    /// Addresses for clones of snapshots (a network, split into one /31 per clone): each clone
    /// runs in a namespace of its own and the host reaches it at one address of this range.
    /// Must not overlap `address`.
    pub clone_range: String,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "fcbr0".into(),
            address: "172.16.0.1/24".into(),
            nat: true,
            nft_table: "fireclaw".into(),
            clone_range: "10.200.0.0/16".into(),
        }
    }
}

/// The pinned Firecracker release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Firecracker {
    /// Release tag, e.g. `v1.16.1`.
    pub version: String,
    /// Release archive URL; `{version}` and `{arch}` are substituted. `file://` works for local mirrors.
    pub url: String,
    /// SHA-256 of the archive for this host's architecture. Empty means "use the built-in pin", and
    /// where there is none provision refuses to download rather than trust an unpinned file.
    pub sha256: String,
}

impl Default for Firecracker {
    fn default() -> Self {
        Firecracker {
            version: "v1.16.1".into(),
            url: "https://github.com/firecracker-microvm/firecracker/releases/download/{version}/firecracker-{version}-{arch}.tgz".into(),
            sha256: String::new(),
        }
    }
}

/// The ngircd server and the overseer's identity on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Irc {
    pub server_name: String,
    pub network: String,
    pub port: u16,
    /// Channels predefined in ngircd's configuration.
    pub channels: Vec<String>,
    /// IRC operator name the overseer uses; its password is generated into `irc-operator.pass`.
    pub operator: String,
    pub overseer_nick: String,
    /// `nick!user@host` masks (`*`, `?`) that may use the overseer's changing commands
    /// (`!invoke`, `!destroy`, `!model`) besides IRC operators.
    pub admins: Vec<String>,
}

impl Default for Irc {
    fn default() -> Self {
        Irc {
            server_name: "nyx.fireclaw.local".into(),
            network: "FireclawNet".into(),
            port: 6667,
            channels: vec!["#control".into(), "#agents".into()],
            operator: "overseer".into(),
            overseer_nick: "overseer".into(),
            admins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ollama {
    /// Where agents reach Ollama (from inside a guest, through the bridge).
    pub url: String,
    pub default_model: String,
}

impl Default for Ollama {
    fn default() -> Self {
        Ollama {
            url: "http://172.16.0.1:11434".into(),
            default_model: "qwen2.5:7b".into(),
        }
    }
}

/// The agent system: which image agents boot and how often the runtime looks at them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    /// The image agent VMs boot (it carries `fireclaw-guest` and mounts `/dev/vdb` at /workspace).
    pub image: String,
    /// Seconds between health checks (VMM alive, the guest agent answering) and usage collection.
    pub health_secs: u32,
    /// Templates kept warm: the runtime keeps one VM of each restored from a snapshot and
    /// waiting, so `!invoke` of that template takes it instead of booting one. Each costs the
    /// template's memory while it waits.
    pub warm: Vec<String>,
}

/// Templates `[agents] warm` may name.
pub const MAX_WARM_TEMPLATES: usize = 8;

impl Default for Agents {
    fn default() -> Self {
        Agents {
            image: "agent".into(),
            health_secs: 30,
            warm: Vec::new(),
        }
    }
}

/// The runtime's warm pool and VM sizing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Pre-booted VMs kept ready per image.
    pub warm_per_image: u32,
    /// Upper bound on VMs running at once.
    pub max_vms: u32,
    pub vcpus: u8,
    pub mem_mib: u32,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            warm_per_image: 2,
            max_vms: 32,
            vcpus: 1,
            mem_mib: 512,
        }
    }
}

/// The device-mapper thin pool that holds per-VM disks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThinPool {
    /// Create and use the pool; when false (or device-mapper is missing) VM disks are reflink/sparse copies.
    pub enabled: bool,
    /// Size of the sparse data file, in MiB.
    pub data_mib: u64,
    /// Size of the sparse metadata file, in MiB.
    pub metadata_mib: u64,
    /// Allocation unit in 512-byte sectors (128 = 64 KiB).
    pub block_sectors: u64,
    /// Refuse to start VMs when data usage is above this percentage.
    pub max_used_percent: u8,
}

impl Default for ThinPool {
    fn default() -> Self {
        ThinPool {
            enabled: true,
            data_mib: 20 * 1024,
            metadata_mib: 256,
            block_sectors: 128,
            max_used_percent: 90,
        }
    }
}

/// Alpine's official CDN: the default mirror (the pinned digests decide what is accepted).
pub const DEFAULT_ALPINE_MIRROR: &str = "https://dl-cdn.alpinelinux.org/alpine";

/// Which images provision builds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Recipes (names in `rootfs-recipes/`) provision builds.
    pub recipes: Vec<String>,
    /// Base URL of an Alpine mirror (the directory holding `v3.24/`), for the Alpine recipes' pinned
    /// minirootfs and their packages. The pinned digests decide what is accepted, so any mirror
    /// will do. FIRECLAW_ALPINE_MIRROR, when set, overrides it; building `base`/`agent` needs one.
    /// Defaults to Alpine's official CDN.
    pub alpine_mirror: String,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            recipes: vec!["base".into(), "agent".into()],
            alpine_mirror: DEFAULT_ALPINE_MIRROR.into(),
        }
    }
}

impl Config {
    /// Loads the config file if it exists; defaults otherwise. A file that exists but cannot be read
    /// or parsed is an error: silently falling back to defaults would provision the wrong host.
    ///
    /// `recipes` are the image recipes that exist: `[images] recipes` may name only these.
    pub fn load(
        root: &RootPrefix,
        explicit: Option<&Path>,
        recipes: &[String],
    ) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => root.host(DEFAULT_CONFIG_PATH),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse_checked(&text, &path, Some(recipes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and validates a file's text; recipe names are checked for their form only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_checked(text, path, None)
    }

    /// Parses and validates; with `recipes`, every name in `[images] recipes` must be one of them.
    pub fn parse_checked(
        text: &str,
        path: &Path,
        recipes: Option<&[String]>,
    ) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        config
            .validate()
            .and_then(|()| config.check_recipe_names(recipes))
            .map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: value_offset(text, e.key, e.item).map(|o| line_col(text, o).0),
                key: e.key,
                message: e.message,
            })?;
        Ok(config)
    }

    fn check_recipe_names(&self, known: Option<&[String]>) -> Result<(), Invalid> {
        let Some(known) = known else { return Ok(()) };
        for (i, name) in self.images.recipes.iter().enumerate() {
            if !known.contains(name) {
                return Err(Invalid {
                    key: "images.recipes",
                    item: Some(i),
                    message: format!(
                        "there is no recipe named {name:?}; the recipes are: {}",
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), Invalid> {
        let p = &self.paths;
        for (key, value) in [
            ("paths.state_dir", &p.state_dir),
            ("paths.cache_dir", &p.cache_dir),
            ("paths.config_dir", &p.config_dir),
            ("paths.bin_dir", &p.bin_dir),
            ("paths.image_dir", &p.image_dir),
            ("paths.run_dir", &p.run_dir),
            ("paths.unit_dir", &p.unit_dir),
            ("paths.ngircd_conf", &p.ngircd_conf),
        ] {
            if !value.starts_with('/') || value.split('/').any(|c| c == "..") {
                return Err(invalid(
                    key,
                    format!("expected an absolute path without `..`, got {value:?}"),
                ));
            }
        }
        crate::values::validate_ifname(&self.network.bridge)
            .map_err(|m| invalid("network.bridge", m))?;
        let bridge = crate::values::Ipv4Cidr::parse(&self.network.address)
            .map_err(|m| invalid("network.address", m))?;
        let clones = crate::values::CloneRange::parse(&self.network.clone_range)
            .map_err(|m| invalid("network.clone_range", m))?;
        if clones.overlaps(&bridge) {
            return Err(invalid(
                "network.clone_range",
                format!(
                    "{clones} overlaps the bridge's subnet {}; choose a range apart from it",
                    bridge.network_cidr()
                ),
            ));
        }
        if !is_nft_identifier(&self.network.nft_table) {
            return Err(invalid(
                "network.nft_table",
                format!(
                    "expected letters, digits and `_` starting with a letter, got {:?}",
                    self.network.nft_table
                ),
            ));
        }
        if !self.firecracker.sha256.is_empty()
            && !crate::fetch::is_sha256_hex(&self.firecracker.sha256)
        {
            return Err(invalid(
                "firecracker.sha256",
                "expected 64 hexadecimal digits",
            ));
        }
        for (key, name) in [
            ("irc.server_name", &self.irc.server_name),
            ("irc.network", &self.irc.network),
        ] {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            {
                return Err(invalid(
                    key,
                    format!("expected a non-empty name of ASCII letters, digits, `.`, `-` and `_`, got {name:?}"),
                ));
            }
        }
        for (i, channel) in self.irc.channels.iter().enumerate() {
            if !crate::values::is_channel_name(channel) {
                return Err(Invalid {
                    key: "irc.channels",
                    item: Some(i),
                    message: format!("expected channel names like \"#agents\", got {channel:?}"),
                });
            }
        }
        for (key, nick) in [
            ("irc.operator", &self.irc.operator),
            ("irc.overseer_nick", &self.irc.overseer_nick),
        ] {
            if !crate::values::is_nick(nick) {
                return Err(invalid(
                    key,
                    format!("expected an IRC nickname, got {nick:?}"),
                ));
            }
        }
        for (i, admin) in self.irc.admins.iter().enumerate() {
            if !crate::values::is_valid_mask(admin) {
                return Err(Invalid {
                    key: "irc.admins",
                    item: Some(i),
                    message: format!(
                        "expected nick!user@host masks like \"alice!*@*\", got {admin:?}"
                    ),
                });
            }
        }
        bounds::HEALTH_SECS
            .check(self.agents.health_secs.into())
            .map_err(|m| invalid("agents.health_secs", m))?;
        if self.agents.warm.len() > MAX_WARM_TEMPLATES {
            return Err(invalid(
                "agents.warm",
                format!(
                    "at most {MAX_WARM_TEMPLATES} templates (each keeps a VM running), got {}",
                    self.agents.warm.len()
                ),
            ));
        }
        for (i, t) in self.agents.warm.iter().enumerate() {
            let ok = t.len() <= 32
                && t.starts_with(|c: char| c.is_ascii_lowercase())
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Invalid {
                    key: "agents.warm",
                    item: Some(i),
                    message: format!("expected template names like \"coder\", got {t:?}"),
                });
            }
        }
        if self.agents.image.is_empty()
            || !self
                .agents
                .image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "agents.image",
                format!(
                    "expected an image name like \"agent\", got {:?}",
                    self.agents.image
                ),
            ));
        }
        if self.irc.port == 0 {
            return Err(invalid("irc.port", "expected a port between 1 and 65535"));
        }
        let pool = &self.pool;
        bounds::VCPUS
            .check(pool.vcpus.into())
            .map_err(|m| invalid("pool.vcpus", m))?;
        bounds::MEM_MIB
            .check(pool.mem_mib.into())
            .map_err(|m| invalid("pool.mem_mib", m))?;
        bounds::MAX_VMS
            .check(pool.max_vms.into())
            .map_err(|m| invalid("pool.max_vms", m))?;
        bounds::WARM_PER_IMAGE
            .check(pool.warm_per_image.into())
            .map_err(|m| invalid("pool.warm_per_image", m))?;
        // Checked above: the address parses.
        if let Ok(cidr) = crate::values::Ipv4Cidr::parse(&self.network.address) {
            // Every VM needs an address of its own; the network, broadcast and host addresses are taken.
            let guests = (1u64 << (32 - u32::from(cidr.prefix))) - 3;
            if u64::from(pool.max_vms) > guests {
                return Err(invalid(
                    "pool.max_vms",
                    format!(
                        "{} VMs cannot all get an address: network.address {} leaves {guests} for guests; lower max_vms or widen the prefix",
                        pool.max_vms, self.network.address
                    ),
                ));
            }
        }
        let warm_total = u64::from(pool.warm_per_image) * self.images.recipes.len() as u64;
        if warm_total > u64::from(pool.max_vms) {
            return Err(invalid(
                "pool.warm_per_image",
                format!(
                    "{} warm VMs for each of {} image(s) is {warm_total}, more than pool.max_vms = {}",
                    pool.warm_per_image,
                    self.images.recipes.len(),
                    pool.max_vms
                ),
            ));
        }
        let t = &self.thinpool;
        bounds::DATA_MIB
            .check(t.data_mib)
            .map_err(|m| invalid("thinpool.data_mib", m))?;
        bounds::METADATA_MIB
            .check(t.metadata_mib)
            .map_err(|m| invalid("thinpool.metadata_mib", m))?;
        if !(128..=2_097_152).contains(&t.block_sectors) || !t.block_sectors.is_multiple_of(128) {
            return Err(invalid(
                "thinpool.block_sectors",
                format!(
                    "expected a multiple of 128 between 128 and 2097152 (dm-thin's rule), got {}",
                    t.block_sectors
                ),
            ));
        }
        if t.max_used_percent == 0 || t.max_used_percent > 100 {
            return Err(invalid("thinpool.max_used_percent", "expected 1..=100"));
        }
        let mirror = &self.images.alpine_mirror;
        let scheme_ok = ["https://", "http://", "file://"]
            .iter()
            .any(|p| mirror.starts_with(p));
        if !mirror.is_empty() && !scheme_ok {
            return Err(invalid(
                "images.alpine_mirror",
                format!("expected an https://, http:// or file:// URL, got {mirror:?}"),
            ));
        }
        for (i, recipe) in self.images.recipes.iter().enumerate() {
            if recipe.is_empty()
                || !recipe
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Invalid {
                    key: "images.recipes",
                    item: Some(i),
                    message: format!("expected recipe names like \"base\", got {recipe:?}"),
                });
            }
        }
        Ok(())
    }

    /// The documented default file, as `fireclaw config default` prints it.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }
}

fn is_nft_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// Byte offset of the value at a dotted `key` (and array `item`) in the file's text, or `None`
/// when the file does not set it (the value is a default).
fn value_offset(text: &str, key: &str, item: Option<usize>) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        if parts.peek().is_none() {
            return match (value.get_ref(), item) {
                (DeValue::Array(items), Some(i)) => {
                    Some(items.get(i).map_or(value.span(), |v| v.span()).start)
                }
                _ => Some(value.span().start),
            };
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    None
}

/// 1-based line and column of a byte offset (for errors that name the line).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/fireclaw/fireclaw.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        assert_eq!(parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn overrides_apply() {
        let c = parse("[network]\nbridge = \"br7\"\naddress = \"10.9.0.1/16\"\n").unwrap();
        assert_eq!(c.network.bridge, "br7");
        assert_eq!(c.network.address, "10.9.0.1/16");
        assert_eq!(c.irc, Irc::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[network]\nbridge = \"fcbr0\"\nbrigde = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("brigde"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = parse("\n\n[pool]\nmax_vms = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4:"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("[network\nbridge = 1").unwrap_err().to_string();
        assert!(err.starts_with("/etc/fireclaw/fireclaw.toml:1:"), "{err}");
    }

    #[test]
    fn hostile_values_are_refused() {
        for (text, key) in [
            ("[paths]\nstate_dir = \"relative\"", "paths.state_dir"),
            ("[paths]\nbin_dir = \"/usr/../etc\"", "paths.bin_dir"),
            (
                "[network]\nbridge = \"a-name-that-is-too-long\"",
                "network.bridge",
            ),
            ("[network]\nbridge = \"br/0\"", "network.bridge"),
            ("[network]\naddress = \"172.16.0.1\"", "network.address"),
            ("[network]\naddress = \"300.1.1.1/24\"", "network.address"),
            (
                "[network]\nclone_range = \"10.200.0.1/16\"",
                "network.clone_range",
            ),
            (
                "[network]\nclone_range = \"172.16.0.0/16\"",
                "network.clone_range",
            ),
            (
                "[network]\nnft_table = \"x; flush ruleset\"",
                "network.nft_table",
            ),
            ("[firecracker]\nsha256 = \"abc\"", "firecracker.sha256"),
            ("[irc]\nchannels = [\"agents\"]", "irc.channels"),
            ("[irc]\noperator = \"a b\"", "irc.operator"),
            ("[thinpool]\nblock_sectors = 100", "thinpool.block_sectors"),
            ("[images]\nrecipes = [\"../x\"]", "images.recipes"),
            (
                "[images]\nalpine_mirror = \"ftp://x\"",
                "images.alpine_mirror",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    /// Values that parse but make no sense are refused at load time, naming file, line and key.
    #[test]
    fn absurd_values_are_refused_with_file_line_and_key() {
        for (text, key, line) in [
            ("[pool]\nmax_vms = 0", "pool.max_vms", 2),
            ("[agents]\nwarm = [\"coder\", \"../x\"]", "agents.warm", 2),
            ("[agents]\nwarm = [\"Coder\"]", "agents.warm", 2),
            (
                "[agents]\nwarm = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]",
                "agents.warm",
                2,
            ),
            ("[pool]\n\nmax_vms = 4294967295", "pool.max_vms", 3),
            ("[pool]\nmax_vms = 300", "pool.max_vms", 2),
            ("[pool]\nwarm_per_image = 1000", "pool.warm_per_image", 2),
            (
                "[pool]\nmax_vms = 3\nwarm_per_image = 2",
                "pool.warm_per_image",
                3,
            ),
            ("[pool]\nvcpus = 255", "pool.vcpus", 2),
            ("[pool]\nvcpus = 0", "pool.vcpus", 2),
            ("[pool]\nmem_mib = 99999999", "pool.mem_mib", 2),
            ("[thinpool]\ndata_mib = 0", "thinpool.data_mib", 2),
            ("[thinpool]\nmetadata_mib = 1", "thinpool.metadata_mib", 2),
            (
                "\n[network]\naddress = \"172.16.0.1\"",
                "network.address",
                3,
            ),
            ("[network]\naddress = \"10.0.0.1/30\"", "pool.max_vms", 0),
            ("[irc]\nchannels = [\"#ok\",\n  \"bad\"]", "irc.channels", 3),
            ("[irc]\nnetwork = \"\"", "irc.network", 2),
            (
                "[irc]\nadmins = [\"alice!*@*\",\n  \"bob\"]",
                "irc.admins",
                3,
            ),
            ("[agents]\nhealth_secs = 0", "agents.health_secs", 2),
            ("[agents]\n\nimage = \"../x\"", "agents.image", 3),
            (
                "[images]\nrecipes = [\"base\", \"../x\"]",
                "images.recipes",
                2,
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            let at = if line == 0 {
                "/etc/fireclaw/fireclaw.toml: ".to_string()
            } else {
                format!("/etc/fireclaw/fireclaw.toml:{line}: ")
            };
            assert!(err.starts_with(&at), "{text:?} gave {err}");
            assert!(err.contains(&format!("`{key}`")), "{text:?} gave {err}");
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let ok = "[pool]\nvcpus = 32\nmem_mib = 64\nmax_vms = 253\nwarm_per_image = 64\n\
                  [thinpool]\ndata_mib = 64\nmetadata_mib = 16320\n";
        parse(ok).unwrap();
    }

    #[test]
    fn unknown_recipes_are_refused_naming_the_ones_that_exist() {
        let known = ["agent".to_string(), "base".to_string()];
        let text = "[images]\nrecipes = [\n  \"base\",\n  \"bsae\",\n]\n";
        let err = Config::parse_checked(text, Path::new("/c.toml"), Some(&known))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/c.toml:4: `images.recipes`"), "{err}");
        assert!(
            err.contains("\"bsae\"") && err.contains("agent, base"),
            "{err}"
        );
        Config::parse_checked(
            "[images]\nrecipes = [\"agent\"]",
            Path::new("/c.toml"),
            Some(&known),
        )
        .unwrap();
    }

    /// README documents every default; this keeps it true.
    #[test]
    fn readme_configuration_block_is_the_defaults() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a toml block");
        assert_eq!(parse(block).unwrap(), Config::default());
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        assert_eq!(Config::load(&root, None, &[]).unwrap(), Config::default());
        let err = Config::load(&root, Some(&dir.path().join("nope.toml")), &[]).unwrap_err();
        assert!(err.to_string().contains("nope.toml"));
    }
}
