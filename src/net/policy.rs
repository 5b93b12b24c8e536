//! Per-VM network policy in fireclaw's nftables table.
//!
//! Guest traffic reaches the table's `guest_egress` chain two ways: forwarded traffic through the
//! provisioned `forward` chain, and traffic to the host itself through `guest_input` (an input-hook
//! chain this module keeps in place). Each VM whose policy is not `full` gets its own chain,
//! `vm_<tap>`, and one jump into it at the head of `guest_egress`, matched on the VM's leased source
//! address and tagged with the comment `fc:<tap>` so it can be found and removed by tap name.
//!
//! - `full`: no rules; everything the provisioned table allows (NAT to the outside) works.
//! - `local`: replies to connections made to the guest (so the host's SSH works), and new
//!   connections only to the host's IRC port on the bridge address.
//! - `none`: replies only; the guest can open no connection at all.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Unrestricted (NAT to the outside, as provisioned).
    Full,
    /// Only the host's IRC and Ollama ports on the bridge address.
    Local,
    /// No new connections from the guest.
    None,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Full => "full",
            Policy::Local => "local",
            Policy::None => "none",
        }
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        match text {
            "full" => Ok(Policy::Full),
            "local" => Ok(Policy::Local),
            "none" => Ok(Policy::None),
            other => Err(format!(
                "unknown policy {other:?}; expected full, local or none"
            )),
        }
    }
}

/// What a VM's rules are made from.
#[derive(Debug, Clone)]
pub struct VmRules<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub bridge_ip: Ipv4Addr,
    pub irc_port: u16,
    /// Ollama's port on the bridge address, when Ollama is there: an agent under `local` thinks
    /// with it, so `local` opens it beside IRC.
    pub ollama_port: Option<u16>,
    pub tap: &'a str,
    pub guest_ip: Ipv4Addr,
    pub policy: Policy,
}

/// `vm_` + the tap name with `-` folded to `_` (nft identifiers allow no `-`).
pub fn chain_name(tap: &str) -> String {
    format!("vm_{}", tap.replace('-', "_"))
}

fn comment(tap: &str) -> String {
    format!("fc:{tap}")
}

/// The input-hook chain that sends guest traffic addressed to the host through `guest_egress`.
/// Flushed and refilled in one transaction, so running it any number of times (also concurrently)
/// leaves exactly one jump.
pub fn base_script(table: &str, bridge: &str) -> String {
    format!(
        "add chain inet {table} guest_input {{ type filter hook input priority filter; policy accept; }}\n\
         flush chain inet {table} guest_input\n\
         add rule inet {table} guest_input iifname \"{bridge}\" jump guest_egress\n"
    )
}

/// The script that installs a VM's rules; `None` for `full` (nothing to install).
pub fn install_script(r: &VmRules) -> Option<String> {
    let t = r.table;
    let chain = chain_name(r.tap);
    let mut s = match r.policy {
        Policy::Full => return None,
        _ => base_script(t, r.bridge),
    };
    s.push_str(&format!(
        "add chain inet {t} {chain}\nflush chain inet {t} {chain}\n"
    ));
    s.push_str(&format!(
        "add rule inet {t} {chain} ct state established,related accept\n"
    ));
    if r.policy == Policy::Local {
        for port in std::iter::once(r.irc_port).chain(r.ollama_port) {
            s.push_str(&format!(
                "add rule inet {t} {chain} ip daddr {} tcp dport {port} accept\n",
                r.bridge_ip
            ));
        }
    }
    s.push_str(&format!("add rule inet {t} {chain} drop\n"));
    s.push_str(&format!(
        "insert rule inet {t} guest_egress ip saddr {} jump {chain} comment \"{}\"\n",
        r.guest_ip,
        comment(r.tap)
    ));
    Some(s)
}

/// Handles of rules in an `nft -a list chain` listing whose comment is exactly `fc:<tap>`.
/// The listing is external input: lines that do not parse are skipped, never trusted.
pub fn handles_for(listing: &str, tap: &str) -> Vec<u64> {
    let wanted = format!("comment \"{}\"", comment(tap));
    listing
        .lines()
        .filter_map(|line| {
            let (rule, handle) = line.rsplit_once("# handle ")?;
            let rule = rule.trim_end();
            if !rule.ends_with(&wanted) {
                return None;
            }
            handle.trim().parse::<u64>().ok()
        })
        .collect()
}

/// Installs a VM's rules. `local`/`none` need the provisioned table: without it there is nothing
/// to enforce them with, and running the VM unrestricted would be wrong.
pub fn install(r: &VmRules) -> anyhow::Result<()> {
    let Some(script) = install_script(r) else {
        return Ok(());
    };
    let probe = super::nft::run(&["list", "chain", "inet", r.table, "guest_egress"], None)?;
    if !probe.status.success() {
        anyhow::bail!(
            "policy {} needs chain guest_egress in nftables table inet {} (run `fireclaw provision`): {}",
            r.policy.as_str(),
            r.table,
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    // Installing twice (a retry) must not stack a second jump: start from nothing. The VM is
    // not running yet, so the moment without rules lets nothing through.
    remove(r.table, r.tap)?;
    let out = super::nft::run(&["-f", "-"], Some(&script))?;
    if !out.status.success() {
        anyhow::bail!(
            "nft rejected the rules for {}: {}",
            r.tap,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes whatever rules `tap` has. Missing table, chain or rules are not errors: cleanup runs
/// after crashes and may run twice.
pub fn remove(table: &str, tap: &str) -> anyhow::Result<()> {
    let listing = match super::nft::run(
        &["-a", "list", "chain", "inet", table, "guest_egress"],
        None,
    ) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(_) => return Ok(()),
        // No nft at all: there can be no rules either.
        Err(_) => return Ok(()),
    };
    let mut script = String::new();
    for handle in handles_for(&listing, tap) {
        script.push_str(&format!(
            "delete rule inet {table} guest_egress handle {handle}\n"
        ));
    }
    let chain = chain_name(tap);
    let has_chain = super::nft::run(&["list", "chain", "inet", table, &chain], None)
        .map(|o| o.status.success())
        .unwrap_or(false);
    if has_chain {
        script.push_str(&format!("delete chain inet {table} {chain}\n"));
    }
    if script.is_empty() {
        return Ok(());
    }
    let out = super::nft::run(&["-f", "-"], Some(&script))?;
    if !out.status.success() {
        anyhow::bail!(
            "removing nftables rules of {tap}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: Policy) -> VmRules<'static> {
        VmRules {
            table: "fireclaw",
            bridge: "fcbr0",
            bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
            irc_port: 6667,
            ollama_port: Some(11434),
            tap: "fc-abc",
            guest_ip: Ipv4Addr::new(172, 16, 0, 5),
            policy,
        }
    }

    #[test]
    fn scripts_per_policy() {
        assert!(install_script(&rules(Policy::Full)).is_none());
        let local = install_script(&rules(Policy::Local)).unwrap();
        assert!(local.contains(
            "add rule inet fireclaw vm_fc_abc ip daddr 172.16.0.1 tcp dport 6667 accept"
        ));
        assert!(local.contains(
            "add rule inet fireclaw vm_fc_abc ip daddr 172.16.0.1 tcp dport 11434 accept"
        ));
        assert!(local.contains("insert rule inet fireclaw guest_egress ip saddr 172.16.0.5 jump vm_fc_abc comment \"fc:fc-abc\""));
        let none = install_script(&rules(Policy::None)).unwrap();
        assert!(!none.contains("dport"));
        assert!(none.contains("vm_fc_abc drop"));
        assert!(none.contains("established,related accept"));
    }

    #[test]
    fn handles_from_hostile_listings() {
        let listing = "table inet fireclaw {\n\
            \tchain guest_egress { # handle 3\n\
            \t\tip saddr 172.16.0.5 jump vm_fc_abc comment \"fc:fc-abc\" # handle 17\n\
            \t\tip saddr 172.16.0.6 jump vm_fc_abcd comment \"fc:fc-abcd\" # handle 18\n\
            \t\tip saddr 172.16.0.7 jump x comment \"fc:fc-abc\" # handle notanumber\n\
            \t\tip saddr 172.16.0.7 jump x comment \"fc:fc-abc\" # handle 99999999999999999999999\n\
            \t\tcomment \"fc:fc-abc\"\n\
            \t\taccept # handle 4\n\
            \t}\n}\n";
        assert_eq!(handles_for(listing, "fc-abc"), vec![17]);
        assert_eq!(handles_for(listing, "fc-abcd"), vec![18]);
        assert!(handles_for("", "fc-abc").is_empty());
        assert!(handles_for("\u{0}\u{ffff} # handle # handle 5", "fc-abc").is_empty());
    }

    #[test]
    fn policy_names() {
        for p in [Policy::Full, Policy::Local, Policy::None] {
            assert_eq!(Policy::parse(p.as_str()), Ok(p));
        }
        assert!(Policy::parse("FULL").is_err());
        assert!(Policy::parse("").is_err());
    }
}
