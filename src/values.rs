//! Validated values the configuration checks and the layers above it use: interface names, IPv4
//! networks, IRC names. They sit at the bottom of the dependency chain (beside `config`) so that
//! `config` can validate a value with the same code that later uses it, without importing the
//! layers above it (see tests/layering.rs).

use std::net::Ipv4Addr;

/// Linux interface names: 1..=15 bytes, no `/`, whitespace or `:` (IFNAMSIZ is 16 with the NUL).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "expected 1 to 15 characters, got {name:?} ({} bytes)",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// `A.B.C.D/P` with a prefix of 8 to 30 (a /31 or /32 leaves no room for hosts); `shape` is
/// what the error says was expected.
fn split_cidr(text: &str, shape: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("expected {shape}, got {text:?}"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("prefix {prefix:?} must be a number from 8 to 30"))?;
    Ok((addr, prefix))
}

/// An IPv4 address with prefix length, e.g. `172.16.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(text: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = split_cidr(text, "ADDRESS/PREFIX like 172.16.0.1/24")?;
        let cidr = Ipv4Cidr { addr, prefix };
        if addr == cidr.network() || addr == cidr.broadcast() {
            return Err(format!(
                "{text} is the network or broadcast address; use a host address"
            ));
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// `172.16.0.0/24`, as nftables and routes want it.
    pub fn network_cidr(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// RFC 2812 channel names as fireclaw uses them: `#` then 1..49 characters without space, comma,
/// BEL or colon.
pub fn is_channel_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('#') else {
        return false;
    };
    !rest.is_empty()
        && rest.len() < 50
        && !rest
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ':')
}

/// Nicknames: a letter or special first, then letters, digits, specials or `-`; at most 30.
pub fn is_nick(s: &str) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || special(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
        && s.len() <= 30
}

/// The range outside addresses come from: a network address with a prefix length, split into
/// /31s, one per slot (host side even, clone side odd, RFC 3021 point-to-point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneRange {
    pub(crate) network: Ipv4Addr,
    pub(crate) prefix: u8,
}

/// The most slots one range may hold: names stay within IFNAMSIZ and a pool stays a pool.
pub const MAX_SLOTS: u32 = 65_536;

impl CloneRange {
    /// `10.200.0.0/16`: a network address (host bits zero) with a prefix of 8 to 30.
    pub fn parse(text: &str) -> Result<CloneRange, String> {
        let (network, prefix) = split_cidr(text, "NETWORK/PREFIX like 10.200.0.0/16")?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "{text} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(CloneRange { network, prefix })
    }

    /// How many /31 slots the range holds (capped at [`MAX_SLOTS`]).
    pub fn slots(&self) -> u32 {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (size / 2).min(u64::from(MAX_SLOTS)) as u32
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// True when the two ranges share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - u32::from(p));
        u32::from(self.network) & mask == u32::from(other.addr) & mask
    }
}

impl std::fmt::Display for CloneRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether a configured IRC hostmask (`[irc] admins`) is well-formed: `nick!user@host`, each part non-empty, no spaces or
/// control characters.
pub fn is_valid_mask(mask: &str) -> bool {
    let Some((nick, rest)) = mask.split_once('!') else {
        return false;
    };
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    [nick, user, host].iter().all(|p| !p.is_empty())
        && !host.contains(['!', '@'])
        && !mask.chars().any(|c| c.is_whitespace() || c.is_control())
        && mask.len() <= 200
}

/// The port of an `http://host:port/...` URL (80/443 when it names none).
pub fn port_of_url(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((_, port)) => port.parse().ok().filter(|p| *p != 0),
        None => match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        assert!(validate_ifname("fcbr0").is_ok());
        assert!(validate_ifname("fc-tap-123456789").is_err());
        for bad in ["", "a/b", "a b", "a:b", "..", "ünï"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidr_parse_and_math() {
        let c = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        assert_eq!(c.network_cidr(), "172.16.0.0/24");
        assert_eq!(c.broadcast(), Ipv4Addr::new(172, 16, 0, 255));
        assert!(c.contains(Ipv4Addr::new(172, 16, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(172, 16, 1, 1)));
        assert_eq!(c.to_string(), "172.16.0.1/24");
    }

    #[test]
    fn cidr_rejects_malformed() {
        for bad in [
            "172.16.0.1",
            "172.16.0.1/",
            "172.16.0.1/33",
            "172.16.0.1/x",
            "1.2.3/24",
            "172.16.0.0/24",
            "172.16.0.255/24",
            "/24",
            "172.16.0.1/24/1",
            "172.16.0.1/31",
        ] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channel_names() {
        assert!(is_channel_name("#agents"));
        for bad in ["agents", "#", "#a b", "#a,b", "#a:b", "#a\u{7}"] {
            assert!(!is_channel_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn nicks() {
        assert!(is_nick("overseer"));
        assert!(is_nick("agent-1"));
        for bad in ["", "1abc", "a b", "a!b", "a@b", &"x".repeat(31)] {
            assert!(!is_nick(bad), "{bad:?}");
        }
    }
}
