//! The pure half of clone slots: the address range, names derived from a slot's index, and the
//! `ip`/`nft` scripts that build a slot. Nothing here touches the host.

use std::net::Ipv4Addr;

use super::super::policy::Policy;
use super::super::{validate_ifname, Ipv4Cidr};
pub use crate::values::{CloneRange, MAX_SLOTS};

/// Name of the veth end inside every slot's namespace (the namespace is the slot's own, so a
/// fixed name cannot collide).
pub const SLOT_UPLINK: &str = "fcout";
/// Name of the nftables table (family `inet`) inside every slot's namespace.
pub const SLOT_TABLE: &str = "fireclaw_slot";
/// Host-side veth names are `fcv<index>h`.
pub const HOST_VETH_PREFIX: &str = "fcv";
/// The default prefix of slot namespaces: `fc-slot-<index>`.
pub const DEFAULT_NS_PREFIX: &str = "fc-slot-";

/// The two addresses of one slot's /31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    /// On the host's veth end: what the clone's namespace routes through.
    pub host: Ipv4Addr,
    /// On the namespace's veth end: the address the host reaches the clone at.
    pub outside: Ipv4Addr,
}

impl CloneRange {
    /// The addresses of slot `index`, or `None` past the end of the range.
    pub fn addrs(&self, index: u32) -> Option<SlotAddrs> {
        if index >= self.slots() {
            return None;
        }
        let host = u32::from(self.network) + 2 * index;
        Some(SlotAddrs {
            host: Ipv4Addr::from(host),
            outside: Ipv4Addr::from(host + 1),
        })
    }
}

/// The namespace prefix must leave a name `ip netns` accepts: letters, digits, `-`, `_`.
pub fn validate_ns_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err(format!("expected 1 to 64 characters, got {prefix:?}"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{prefix:?} contains {c:?}; use letters, digits, `-` or `_`"
        ));
    }
    if prefix.ends_with(|c: char| c.is_ascii_digit()) {
        // `fc1` + `2` and `fc` + `12` would be one name: the index must start where the prefix ends.
        return Err(format!("{prefix:?} ends in a digit"));
    }
    Ok(())
}

/// A namespace name we may hand to `ip netns`: what a valid prefix plus an index can make.
pub fn validate_ns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || name.starts_with('.') {
        return Err(format!("expected 1 to 64 characters, got {name:?}"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, `-` or `_`"
        ));
    }
    Ok(())
}

pub fn ns_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index}")
}

pub fn host_veth(index: u32) -> String {
    format!("{HOST_VETH_PREFIX}{index}h")
}

/// The index in a name made by [`ns_name`] or [`host_veth`]: digits only, no sign, no leading
/// zero (so one index has exactly one name), below [`MAX_SLOTS`]. Names are external input (any
/// process can make a namespace or a link); anything else is not ours.
pub fn parse_index(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse::<u32>().ok().filter(|i| *i < MAX_SLOTS)
}

/// What the snapshot froze into the guest: the tap name the VMM opens, the gateway address (the
/// bridge's at snapshot time, with its prefix) and the guest's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotNet {
    pub tap: String,
    pub gateway: Ipv4Cidr,
    pub guest: Ipv4Addr,
}

impl SnapshotNet {
    pub fn new(tap: &str, gateway: Ipv4Cidr, guest: Ipv4Addr) -> Result<SnapshotNet, String> {
        validate_ifname(tap).map_err(|e| format!("tap: {e}"))?;
        if tap == SLOT_UPLINK {
            return Err(format!("tap: {tap:?} is the slot's own uplink name"));
        }
        if !gateway.contains(guest)
            || guest == gateway.addr
            || guest == gateway.network()
            || guest == gateway.broadcast()
        {
            return Err(format!(
                "guest address {guest} must be a host address of {} other than the gateway",
                gateway.network_cidr()
            ));
        }
        Ok(SnapshotNet {
            tap: tap.to_string(),
            gateway,
            guest,
        })
    }
}

/// The host services a clone reaches on the bridge address (IRC, Ollama) under `full`/`local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostServices {
    /// The host's bridge address, where ngircd and Ollama listen.
    pub bridge_ip: Ipv4Addr,
    pub ports: Vec<u16>,
}

impl HostServices {
    fn port_set(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        format!("{{ {} }}", ports.join(", "))
    }
}

/// What stands where the VMM's tap will be: the tap itself, or (for tests that simulate a
/// restored guest without a VM) a veth whose other end, `peer`, the test moves into a namespace
/// that plays the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLink {
    Tap,
    Veth { peer: String },
}

/// `ip -batch` lines run in the host namespace: the veth pair, its far end born inside the slot.
pub fn host_batch(index: u32, ns: &str, addrs: &SlotAddrs) -> String {
    let veth = host_veth(index);
    format!(
        "link add {veth} type veth peer name {SLOT_UPLINK} netns {ns}\n\
         address add {}/31 dev {veth}\n\
         link set {veth} up\n",
        addrs.host
    )
}

/// `ip -batch` lines run inside the slot's namespace: uplink, the snapshot's tap with the
/// snapshot's gateway address, and the default route to the host.
pub fn ns_batch(addrs: &SlotAddrs, snap: &SnapshotNet, link: &GuestLink) -> String {
    let tap = &snap.tap;
    let make_tap = match link {
        GuestLink::Tap => format!("tuntap add dev {tap} mode tap\n"),
        GuestLink::Veth { peer } => format!("link add {tap} type veth peer name {peer}\n"),
    };
    format!(
        "link set lo up\n\
         address add {outside}/31 dev {SLOT_UPLINK}\n\
         link set {SLOT_UPLINK} up\n\
         {make_tap}\
         address add {gw} dev {tap}\n\
         link set {tap} up\n\
         route add default via {host} dev {SLOT_UPLINK}\n",
        outside = addrs.outside,
        host = addrs.host,
        gw = snap.gateway,
    )
}

/// The slot's own firewall and NAT, applied inside its namespace in one transaction.
///
/// - Host → clone: anything addressed to the outside address is DNATed to the guest, under
///   every policy (exec over SSH).
/// - Clone → host services: the gateway's IRC and Ollama ports are DNATed to the host's veth
///   address (the host's table then DNATs them to the bridge address, where the services listen).
/// - Clone → anything: SNAT to the outside address, forwarded as the policy allows:
///   `full` everything, `local` only the host services, `none` nothing new.
/// - The namespace itself answers the guest nothing but replies.
pub fn ns_ruleset(
    addrs: &SlotAddrs,
    snap: &SnapshotNet,
    services: &HostServices,
    policy: Policy,
) -> String {
    let t = SLOT_TABLE;
    let up = SLOT_UPLINK;
    let tap = &snap.tap;
    let (out, host, guest, gw) = (addrs.outside, addrs.host, snap.guest, snap.gateway.addr);
    let ports = services.port_set();
    let service_dnat = match policy {
        Policy::None => String::new(),
        _ if services.ports.is_empty() => String::new(),
        _ => format!("\t\tiifname \"{tap}\" ip daddr {gw} tcp dport {ports} dnat ip to {host}\n"),
    };
    let egress = match policy {
        Policy::Full => format!("\t\tiifname \"{tap}\" oifname \"{up}\" ip saddr {guest} accept\n"),
        Policy::Local if !services.ports.is_empty() => format!(
            "\t\tiifname \"{tap}\" oifname \"{up}\" ip saddr {guest} ip daddr {host} tcp dport {ports} accept\n"
        ),
        _ => String::new(),
    };
    format!(
        "table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{up}\" ip daddr {out} dnat ip to {guest}\n\
         {service_dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{up}\" ip saddr {guest} snat ip to {out}\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{up}\" oifname \"{tap}\" ip daddr {guest} ct status dnat accept\n\
         {egress}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{tap}\" ct state established,related accept\n\
         \t\tiifname \"{tap}\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The host's table for all slots: the service DNAT to the bridge address, and masquerade of
/// clone traffic leaving the host other than to another slot. Replaces any older version at once.
pub fn host_ruleset(table: &str, range: &CloneRange, services: &HostServices) -> String {
    let veths = format!("{HOST_VETH_PREFIX}*");
    let dnat = if services.ports.is_empty() {
        String::new()
    } else {
        format!(
            "\t\tiifname \"{veths}\" ip saddr {range} ip daddr {range} fib daddr type local tcp dport {} dnat ip to {}\n",
            services.port_set(),
            services.bridge_ip
        )
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {range} oifname != \"{veths}\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> SnapshotNet {
        SnapshotNet::new(
            "fc-snap",
            Ipv4Cidr::parse("172.16.0.1/24").unwrap(),
            Ipv4Addr::new(172, 16, 0, 2),
        )
        .unwrap()
    }

    fn services() -> HostServices {
        HostServices {
            bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
            ports: vec![6667, 11434],
        }
    }

    #[test]
    fn range_splits_into_slash_31s() {
        let r = CloneRange::parse("10.200.0.0/16").unwrap();
        assert_eq!(r.slots(), 32_768);
        let a = r.addrs(0).unwrap();
        assert_eq!(
            (a.host, a.outside),
            (Ipv4Addr::new(10, 200, 0, 0), Ipv4Addr::new(10, 200, 0, 1))
        );
        let last = r.addrs(32_767).unwrap();
        assert_eq!(last.outside, Ipv4Addr::new(10, 200, 255, 255));
        assert!(r.addrs(32_768).is_none());
        assert!(r.addrs(u32::MAX).is_none());
        assert!(r.contains(last.host) && !r.contains(Ipv4Addr::new(10, 201, 0, 0)));
        let small = CloneRange::parse("10.9.0.4/30").unwrap();
        assert_eq!(small.slots(), 2);
        assert_eq!(small.addrs(1).unwrap().outside, Ipv4Addr::new(10, 9, 0, 7));
        // A /8 would be 8 million slots; the cap keeps names and counts sane.
        assert_eq!(CloneRange::parse("10.0.0.0/8").unwrap().slots(), MAX_SLOTS);
    }

    #[test]
    fn range_rejects_hostile_values() {
        for bad in [
            "",
            "10.200.0.0",
            "10.200.0.1/16",
            "10.200.0.0/31",
            "10.200.0.0/32",
            "10.200.0.0/7",
            "10.200.0.0/-1",
            "10.200.0.0/16/1",
            "10.200.0/16",
            "300.0.0.0/16",
            "10.200.0.0/ 16",
            "10.200.0.0/1e1",
        ] {
            assert!(CloneRange::parse(bad).is_err(), "{bad:?}");
        }
        let err = CloneRange::parse("10.200.3.0/16").unwrap_err();
        assert!(err.contains("10.200.0.0/16"), "{err}");
    }

    #[test]
    fn overlap_with_the_bridge() {
        let r = CloneRange::parse("10.200.0.0/16").unwrap();
        assert!(r.overlaps(&Ipv4Cidr::parse("10.200.5.1/24").unwrap()));
        assert!(r.overlaps(&Ipv4Cidr::parse("10.1.0.1/8").unwrap()));
        assert!(!r.overlaps(&Ipv4Cidr::parse("172.16.0.1/24").unwrap()));
    }

    #[test]
    fn names_derive_from_the_index_and_back() {
        assert_eq!(ns_name(DEFAULT_NS_PREFIX, 7), "fc-slot-7");
        assert_eq!(host_veth(65_535), "fcv65535h");
        assert!(validate_ifname(&host_veth(MAX_SLOTS - 1)).is_ok());
        assert_eq!(parse_index("fc-slot-7", DEFAULT_NS_PREFIX, ""), Some(7));
        assert_eq!(parse_index("fcv12h", HOST_VETH_PREFIX, "h"), Some(12));
        assert_eq!(parse_index("fc-slot-0", DEFAULT_NS_PREFIX, ""), Some(0));
        for hostile in [
            "fc-slot-",
            "fc-slot-07",
            "fc-slot-+7",
            "fc-slot--7",
            "fc-slot-7 ",
            "fc-slot-7x",
            "fc-slot-99999999999999999999",
            "fc-slot-65536",
            "fc-slot-٣",
            "xfc-slot-7",
            "fc-slot-7/../x",
        ] {
            assert_eq!(
                parse_index(hostile, DEFAULT_NS_PREFIX, ""),
                None,
                "{hostile:?}"
            );
        }
        assert_eq!(parse_index("fcv1", HOST_VETH_PREFIX, "h"), None);
        assert_eq!(parse_index("fcvh", HOST_VETH_PREFIX, "h"), None);
    }

    #[test]
    fn ns_prefixes() {
        assert!(validate_ns_prefix(DEFAULT_NS_PREFIX).is_ok());
        for bad in ["", "a/b", "a b", "fc-1", "../x", "ä", &"x".repeat(65)] {
            assert!(validate_ns_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ns_name("fc-slot-12").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\0", &"x".repeat(65)] {
            assert!(validate_ns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_net_rejects_hostile_values() {
        let gw = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        assert!(SnapshotNet::new("fc-snap", gw, Ipv4Addr::new(172, 16, 0, 2)).is_ok());
        for (tap, guest) in [
            ("tap;rm", Ipv4Addr::new(172, 16, 0, 2)),
            ("a-name-far-too-long", Ipv4Addr::new(172, 16, 0, 2)),
            ("", Ipv4Addr::new(172, 16, 0, 2)),
            ("fcout", Ipv4Addr::new(172, 16, 0, 2)),
            ("tap0", Ipv4Addr::new(172, 16, 0, 1)),
            ("tap0", Ipv4Addr::new(172, 16, 0, 255)),
            ("tap0", Ipv4Addr::new(172, 16, 0, 0)),
            ("tap0", Ipv4Addr::new(10, 0, 0, 2)),
        ] {
            assert!(SnapshotNet::new(tap, gw, guest).is_err(), "{tap:?} {guest}");
        }
    }

    #[test]
    fn scripts_carry_the_slot_and_the_policy() {
        let r = CloneRange::parse("10.200.0.0/16").unwrap();
        let a = r.addrs(3).unwrap();
        let host = host_batch(3, "fc-slot-3", &a);
        assert!(host.contains("link add fcv3h type veth peer name fcout netns fc-slot-3"));
        assert!(host.contains("address add 10.200.0.6/31 dev fcv3h"));
        let inside = ns_batch(&a, &snap(), &GuestLink::Tap);
        assert!(inside.contains("tuntap add dev fc-snap mode tap"));
        assert!(inside.contains("address add 172.16.0.1/24 dev fc-snap"));
        assert!(inside.contains("route add default via 10.200.0.6 dev fcout"));
        let veth = ns_batch(&a, &snap(), &GuestLink::Veth { peer: "g".into() });
        assert!(veth.contains("link add fc-snap type veth peer name g"));

        let full = ns_ruleset(&a, &snap(), &services(), Policy::Full);
        assert!(full.contains("iifname \"fcout\" ip daddr 10.200.0.7 dnat ip to 172.16.0.2"));
        assert!(full.contains("oifname \"fcout\" ip saddr 172.16.0.2 snat ip to 10.200.0.7"));
        assert!(full.contains("tcp dport { 6667, 11434 } dnat ip to 10.200.0.6"));
        assert!(full.contains("oifname \"fcout\" ip saddr 172.16.0.2 accept"));
        let local = ns_ruleset(&a, &snap(), &services(), Policy::Local);
        assert!(local.contains("ip daddr 10.200.0.6 tcp dport { 6667, 11434 } accept"));
        assert!(!local.contains("ip saddr 172.16.0.2 accept"));
        let none = ns_ruleset(&a, &snap(), &services(), Policy::None);
        assert!(!none.contains("dport"));
        assert!(none.contains("ct status dnat accept"));
        assert!(none.contains("policy drop"));

        let h = host_ruleset("fireclaw_clones", &r, &services());
        assert!(h.contains("fib daddr type local tcp dport { 6667, 11434 } dnat ip to 172.16.0.1"));
        assert!(h.contains("ip saddr 10.200.0.0/16 oifname != \"fcv*\" masquerade"));
    }
}
