//! The bridge every VM's tap joins, IPv4 forwarding, and fireclaw's nftables table (NAT).

use crate::net::{self, link, nft, Ipv4Cidr};
use crate::plan::{Action, Check, Ctx, Step, StepPlan, Undo};

pub struct Network;

pub const FORWARD_SYSCTL: &str = "net.ipv4.ip_forward";

/// Addresses bridges must not take: a guest subnet there could never route.
fn unusable(cidr: &Ipv4Cidr) -> Option<&'static str> {
    let a = cidr.addr;
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_unspecified() || a.octets()[0] == 0 {
        Some("in 0.0.0.0/8")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_multicast() || a.octets()[0] >= 240 {
        Some("multicast or reserved")
    } else if cidr.prefix > 30 || cidr.prefix < 8 {
        Some("a prefix outside /8../30 (no room for guests, or most of the address space)")
    } else if a == cidr.network() || a == cidr.broadcast() {
        Some("the subnet's network or broadcast address")
    } else {
        None
    }
}

/// A subnet as the kernel reports it: any prefix, network addresses and /32s included (unlike
/// [`Ipv4Cidr`], which is a bridge's host address).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subnet {
    pub addr: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Option<Subnet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, p.parse().ok()?),
            None => (text, 32),
        };
        (prefix <= 32).then_some(Subnet {
            addr: addr.parse().ok()?,
            prefix,
        })
    }
}

impl From<&Ipv4Cidr> for Subnet {
    fn from(c: &Ipv4Cidr) -> Subnet {
        Subnet {
            addr: c.addr,
            prefix: c.prefix,
        }
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// True when the two subnets share any address.
pub fn overlaps(a: Subnet, b: Subnet) -> bool {
    let prefix = a.prefix.min(b.prefix);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(a.addr) & mask == u32::from(b.addr) & mask
}

/// The host's IPv4 subnets outside `bridge`: every address's subnet and every route's destination
/// (the default route aside), as `ip -j` reports them, each with where it was found.
fn host_subnets(bridge: &str) -> anyhow::Result<Vec<(Subnet, String)>> {
    fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| anyhow::anyhow!("running ip {}: {e}", args.join(" ")))?;
        if !out.status.success() {
            anyhow::bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
    let mut found = Vec::new();
    let addrs = ip_json(&["-j", "-4", "addr", "show"])?;
    for link in addrs.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or_default();
        if name == bridge {
            continue;
        }
        for info in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(prefix)) = (info["local"].as_str(), info["prefixlen"].as_u64())
            else {
                continue;
            };
            if let Some(c) = Subnet::parse(&format!("{local}/{prefix}")) {
                found.push((c, format!("address {c} on {name}")));
            }
        }
    }
    let routes = ip_json(&["-j", "-4", "route", "show", "table", "main"])?;
    for route in routes.as_array().into_iter().flatten() {
        let dev = route["dev"].as_str().unwrap_or_default();
        let dst = route["dst"].as_str().unwrap_or_default();
        if dev == bridge || dst == "default" || dst.is_empty() {
            continue;
        }
        if let Some(c) = Subnet::parse(dst) {
            found.push((c, format!("route {dst} via {dev}")));
        }
    }
    Ok(found)
}

/// Checks that the bridge address can work here: a usable unicast address whose subnet no other
/// link or route on the host already uses (the uplink's included), which would make guests
/// unreachable or cut the host off.
fn address_checks(cidr: &Ipv4Cidr, bridge: &str) -> Vec<Check> {
    let fix = "set `address` under [network] in fireclaw.toml to an address in a private subnet nothing on this host uses (for example 172.31.0.1/24, if free)";
    if let Some(why) = unusable(cidr) {
        return vec![Check {
            name: "bridge address".into(),
            ok: false,
            detail: format!("{cidr} is {why}"),
            fix: Some(fix.into()),
            required: true,
        }];
    }
    match host_subnets(bridge) {
        Ok(subnets) => subnets
            .into_iter()
            .filter(|(other, _)| overlaps(cidr.into(), *other))
            .map(|(_, what)| Check {
                name: "bridge subnet".into(),
                ok: false,
                detail: format!(
                    "{} overlaps {what} already on this host",
                    cidr.network_cidr()
                ),
                fix: Some(fix.into()),
                required: true,
            })
            .collect(),
        Err(e) => vec![Check {
            name: "bridge subnet".into(),
            ok: false,
            detail: format!("cannot list the host's addresses and routes: {e:#}"),
            fix: Some("install iproute2 (the `ip` command)".into()),
            required: false,
        }],
    }
}

/// Whether the journal records fireclaw installing table `inet name` (and not yet taking it back):
/// only such a table is fireclaw's to replace.
fn created_by_fireclaw(ctx: &Ctx, name: &str) -> anyhow::Result<bool> {
    let Some(db) = ctx.db else {
        return Ok(false);
    };
    Ok(crate::plan::apply::reversals(db)?.iter().any(|r| {
        matches!(&r.undo, Undo::RestoreNftTable { family, name: n } if family == "inet" && n == name)
    }))
}

impl Step for Network {
    fn name(&self) -> &'static str {
        "network"
    }

    fn summary(&self) -> &'static str {
        "bridge with the host address, IPv4 forwarding, NAT in fireclaw's nftables table"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let n = &ctx.config.network;
        let cidr = Ipv4Cidr::parse(&n.address).map_err(anyhow::Error::msg)?;
        let mut plan = StepPlan::default();
        plan.checks.extend(address_checks(&cidr, &n.bridge));
        match link::state(&n.bridge)? {
            None => {
                plan.actions.push(Action::CreateBridge {
                    name: n.bridge.clone(),
                });
                plan.actions.push(Action::AddAddress {
                    link: n.bridge.clone(),
                    cidr: cidr.to_string(),
                });
                plan.actions.push(Action::SetLinkUp {
                    link: n.bridge.clone(),
                });
            }
            Some(state) => {
                if state.kind.as_deref() != Some("bridge") {
                    anyhow::bail!(
                        "link {} exists but is a {} device, not a bridge; rename [network] bridge in fireclaw.toml or remove that link",
                        n.bridge,
                        state.kind.as_deref().unwrap_or("plain")
                    );
                }
                if !state.ipv4.contains(&cidr) {
                    plan.actions.push(Action::AddAddress {
                        link: n.bridge.clone(),
                        cidr: cidr.to_string(),
                    });
                }
                if !state.up {
                    plan.actions.push(Action::SetLinkUp {
                        link: n.bridge.clone(),
                    });
                }
            }
        }
        if n.nat && net::sysctl::read(FORWARD_SYSCTL)? != "1" {
            plan.actions.push(Action::SetSysctl {
                key: FORWARD_SYSCTL.into(),
                value: "1".into(),
            });
        }
        let ruleset = nft::provision_ruleset(&n.nft_table, &n.bridge, &cidr, n.nat);
        let needed = match nft::probe_table("inet", &n.nft_table)? {
            nft::TableProbe::Present(listed) if nft::table_matches(&listed, &ruleset) => false,
            nft::TableProbe::Present(_) if !created_by_fireclaw(ctx, &n.nft_table)? => {
                plan.checks.push(Check {
                    name: "nftables table".into(),
                    ok: false,
                    detail: format!(
                        "table inet {} exists and fireclaw did not create it; applying would replace it whole",
                        n.nft_table
                    ),
                    fix: Some(format!(
                        "set `nft_table` under [network] in fireclaw.toml to a table name nothing else uses (the default is \"fireclaw\"), or remove table inet {} yourself if nothing needs it",
                        n.nft_table
                    )),
                    required: true,
                });
                false
            }
            nft::TableProbe::Present(_) => true,
            nft::TableProbe::Absent => true,
            nft::TableProbe::NoTool => {
                plan.notes
                    .push("nft is not installed yet (the packages step installs nftables)".into());
                true
            }
            nft::TableProbe::NoPermission => {
                plan.notes.push("nftables cannot be read without root; the table is shown as it would be written".into());
                true
            }
        };
        if needed {
            plan.actions.push(Action::NftTable {
                family: "inet".into(),
                name: n.nft_table.clone(),
                ruleset,
            });
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        Subnet::parse(s).unwrap()
    }

    #[test]
    fn loopback_and_other_unusable_bridge_addresses_block() {
        for bad in [
            "127.0.0.1/8",
            "169.254.1.1/16",
            "224.0.0.1/24",
            "10.0.0.1/31",
            "10.0.0.0/24",
        ] {
            let n = net(bad);
            let cidr = Ipv4Cidr {
                addr: n.addr,
                prefix: n.prefix,
            };
            let checks = address_checks(&cidr, "fcbr0");
            assert!(
                checks
                    .iter()
                    .any(|c| c.required && !c.ok && c.fix.is_some()),
                "{bad}: {checks:?}"
            );
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlaps(net("172.16.0.1/24"), net("172.16.0.0/16")));
        assert!(overlaps(net("172.16.0.0/16"), net("172.16.0.1/24")));
        assert!(overlaps(net("10.1.2.3"), net("10.1.2.1/24")));
        assert!(!overlaps(net("172.16.0.1/24"), net("172.16.1.1/24")));
        assert!(overlaps(net("0.0.0.0/0"), net("172.16.1.1/24")));
    }
}
