//! fireclaw's own nftables table. Everything fireclaw filters or translates lives in one table
//! (`inet fireclaw` by default), so uninstall removes it whole and never touches anyone else's rules.
//! The `nft` program is the interface: its script syntax is what operators read in the dry-run.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use super::Ipv4Cidr;

/// The ruleset provision installs: NAT for the guests' subnet and forwarding to and from the bridge.
/// The script first creates then deletes the table so that applying it replaces any older version in
/// one atomic transaction.
pub fn provision_ruleset(table: &str, bridge: &str, cidr: &Ipv4Cidr, nat: bool) -> String {
    let subnet = cidr.network_cidr();
    let mut s = format!("table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    s.push_str(&format!(
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname \"{bridge}\" accept\n\
         \t\toifname \"{bridge}\" ct state established,related accept\n\
         \t\tiifname \"{bridge}\" jump guest_egress\n\
         \t}}\n\
         \tchain guest_egress {{\n\
         \t\taccept\n\
         \t}}\n\
         \tchain guest_input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" jump guest_egress\n\
         \t}}\n"
    ));
    if nat {
        s.push_str(&format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
             \t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// Runs `nft` with `args`, feeding `stdin` when given; the one place fireclaw starts nft.
pub fn run(args: &[&str], stdin: Option<&str>) -> anyhow::Result<std::process::Output> {
    let program = nft_path().unwrap_or_else(|| "nft".into());
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).context("writing to nft")?;
    }
    child.wait_with_output().context("waiting for nft")
}

pub fn apply(ruleset: &str) -> anyhow::Result<()> {
    let out = run(&["-f", "-"], Some(ruleset))?;
    if !out.status.success() {
        anyhow::bail!(
            "nft rejected the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What a probe learned about a table.
#[derive(Debug, PartialEq)]
pub enum TableProbe {
    Absent,
    Present(String),
    /// nft needs CAP_NET_ADMIN even to list; a dry-run as an ordinary user cannot know.
    NoPermission,
    /// The nft program is not installed (yet: the packages step installs it).
    NoTool,
}

pub fn probe_table(family: &str, name: &str) -> anyhow::Result<TableProbe> {
    if !nft_installed() {
        return Ok(TableProbe::NoTool);
    }
    let out = run(&["list", "table", family, name], None)?;
    if out.status.success() {
        return Ok(TableProbe::Present(
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Operation not permitted") || err.contains("Permission denied") {
        Ok(TableProbe::NoPermission)
    } else if err.contains("No such file or directory") || err.contains("does not exist") {
        Ok(TableProbe::Absent)
    } else {
        anyhow::bail!("nft list table {family} {name}: {}", err.trim())
    }
}

/// Where `nft` is: on PATH, or in the sbin directories an ordinary user's PATH often lacks.
fn nft_path() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

fn nft_installed() -> bool {
    nft_path().is_some()
}

/// The table's current ruleset (for restoring it on uninstall), or `None` if there is none.
pub fn dump_table(family: &str, name: &str) -> anyhow::Result<Option<String>> {
    match probe_table(family, name)? {
        TableProbe::Present(text) => Ok(Some(text)),
        TableProbe::Absent => Ok(None),
        TableProbe::NoPermission => anyhow::bail!("nft needs root to read table {family} {name}"),
        TableProbe::NoTool => anyhow::bail!("nft is not installed (package nftables)"),
    }
}

pub fn delete_table(family: &str, name: &str) -> anyhow::Result<()> {
    if matches!(
        probe_table(family, name)?,
        TableProbe::Absent | TableProbe::NoTool
    ) {
        return Ok(());
    }
    let out = run(&["delete", "table", family, name], None)?;
    if !out.status.success() {
        anyhow::bail!(
            "nft delete table {family} {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// True when the installed table already holds what `ruleset` would install. nft prints rules in
/// its own canonical form, so compare the meaningful lines, not bytes.
pub fn table_matches(listed: &str, ruleset: &str) -> bool {
    fn canon(text: &str) -> Vec<String> {
        without_vm_rules(text)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty() && !l.starts_with("delete table"))
            // The first two script lines (`table inet x` / `delete table inet x`) only make the
            // replace atomic; the listing starts at `table inet x {`.
            .filter(|l| !l.starts_with("table ") || l.ends_with('{'))
            .collect()
    }
    canon(listed) == canon(ruleset)
}

/// The listing minus what running VMs add at run time (their `vm_*` chains and the jumps tagged
/// `fc:<tap>`, see `net::policy`): those are not provision's, and must not make provision think its
/// table changed (replacing the table would drop the running VMs' rules).
fn without_vm_rules(listing: &str) -> String {
    let mut out = String::new();
    let mut in_vm_chain = false;
    for line in listing.lines() {
        let t = line.trim();
        if in_vm_chain {
            in_vm_chain = t != "}";
            continue;
        }
        if t.starts_with("chain vm_") && t.ends_with('{') {
            in_vm_chain = true;
            continue;
        }
        if t.contains("comment \"fc:") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_bridge_subnet_and_table() {
        let cidr = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let r = provision_ruleset("fireclaw", "fcbr0", &cidr, true);
        assert!(r.starts_with("table inet fireclaw\ndelete table inet fireclaw\n"));
        assert!(r.contains("ip saddr 172.16.0.0/24 oifname != \"fcbr0\" masquerade"));
        let no_nat = provision_ruleset("fireclaw", "fcbr0", &cidr, false);
        assert!(!no_nat.contains("masquerade"));
    }

    #[test]
    fn matching_ignores_whitespace_and_replace_preamble() {
        let cidr = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let r = provision_ruleset("fireclaw", "fcbr0", &cidr, true);
        let listed: String = r.lines().skip(2).map(|l| format!("  {l}  \n")).collect();
        assert!(table_matches(&listed, &r));
        assert!(!table_matches(&listed.replace("fcbr0", "other"), &r));
    }

    #[test]
    fn running_vms_rules_do_not_count_as_drift() {
        let cidr = Ipv4Cidr::parse("172.16.0.1/24").unwrap();
        let r = provision_ruleset("fireclaw", "fcbr0", &cidr, true);
        let listed: String = r.lines().skip(2).map(|l| format!("{l}\n")).collect();
        let with_vm = listed.replace(
            "\tchain guest_egress {\n",
            "\tchain guest_egress {\n\t\tip saddr 172.16.0.2 jump vm_fctap1 comment \"fc:fctap1\"\n",
        ) + "\tchain vm_fctap1 {\n\t\tct state established,related accept\n\t\tdrop\n\t}\n";
        assert_ne!(with_vm, listed);
        assert!(table_matches(&with_vm, &r));
        // A hand-added rule that is not a VM's still counts.
        let tampered = listed.replace(
            "\t\taccept\n\t}\n\tchain guest_input",
            "\t\tdrop\n\t}\n\tchain guest_input",
        );
        assert!(!table_matches(&tampered, &r));
    }
}
