//! Host networking: links and addresses over rtnetlink, fireclaw's nftables table, sysctls.

pub mod host;
pub mod lease;
pub mod link;
pub mod netlink;
pub mod nft;
pub mod policy;
pub mod slot;
pub mod sysctl;
pub mod tap;

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

/// An IPv4 address with prefix length, e.g. `172.16.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(text: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("expected ADDRESS/PREFIX like 172.16.0.1/24, got {text:?}"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix {prefix:?} must be a number from 8 to 30"))?;
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
}
