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
    #[error("{path}: `{key}` is invalid: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
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
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "fcbr0".into(),
            address: "172.16.0.1/24".into(),
            nat: true,
            nft_table: "fireclaw".into(),
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
    pub fn load(root: &RootPrefix, explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => root.host(DEFAULT_CONFIG_PATH),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
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
        crate::net::validate_ifname(&self.network.bridge)
            .map_err(|m| invalid("network.bridge", m))?;
        crate::net::Ipv4Cidr::parse(&self.network.address)
            .map_err(|m| invalid("network.address", m))?;
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
                "expected 64 hexadecimal digits".into(),
            ));
        }
        for name in [&self.irc.server_name, &self.irc.network] {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            {
                return Err(invalid(
                    "irc",
                    format!("server_name and network must be non-empty ASCII names, got {name:?}"),
                ));
            }
        }
        for channel in &self.irc.channels {
            if !crate::irc::is_channel_name(channel) {
                return Err(invalid(
                    "irc.channels",
                    format!("expected channel names like \"#agents\", got {channel:?}"),
                ));
            }
        }
        for (key, nick) in [
            ("irc.operator", &self.irc.operator),
            ("irc.overseer_nick", &self.irc.overseer_nick),
        ] {
            if !crate::irc::is_nick(nick) {
                return Err(invalid(
                    key,
                    format!("expected an IRC nickname, got {nick:?}"),
                ));
            }
        }
        if self.irc.port == 0 {
            return Err(invalid(
                "irc.port",
                "expected a port between 1 and 65535".into(),
            ));
        }
        if self.pool.vcpus == 0 || self.pool.mem_mib < 64 {
            return Err(invalid(
                "pool",
                "vcpus must be at least 1 and mem_mib at least 64".into(),
            ));
        }
        let t = &self.thinpool;
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
            return Err(invalid(
                "thinpool.max_used_percent",
                "expected 1..=100".into(),
            ));
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
        for recipe in &self.images.recipes {
            if recipe.is_empty()
                || !recipe
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    "images.recipes",
                    format!("expected recipe names like \"base\", got {recipe:?}"),
                ));
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

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
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
        assert_eq!(Config::load(&root, None).unwrap(), Config::default());
        let err = Config::load(&root, Some(&dir.path().join("nope.toml"))).unwrap_err();
        assert!(err.to_string().contains("nope.toml"));
    }
}
