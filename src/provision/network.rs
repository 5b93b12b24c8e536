//! The bridge every VM's tap joins, IPv4 forwarding, and fireclaw's nftables table (NAT).

use crate::net::{self, link, nft, Ipv4Cidr};
use crate::plan::{Action, Ctx, Step, StepPlan};

pub struct Network;

pub const FORWARD_SYSCTL: &str = "net.ipv4.ip_forward";

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
            nft::TableProbe::Present(listed) => !nft::table_matches(&listed, &ruleset),
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
