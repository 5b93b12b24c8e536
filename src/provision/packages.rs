//! Host packages from `recipes/packages/<distro>.toml`, installed with apt-get. Packages are
//! host-global, so under a root prefix other than `/` this step only reports.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context as _;
use serde::Deserialize;

use super::preflight;
use crate::plan::{Action, Ctx, Step, StepPlan};

pub struct Packages;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageList {
    common: Vec<String>,
    #[serde(default)]
    releases: BTreeMap<String, Release>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    #[serde(default)]
    extra: Vec<String>,
}

fn recipe_for(distro: &str) -> Option<(&'static str, &'static str)> {
    match distro {
        "debian" => Some((
            "recipes/packages/debian.toml",
            include_str!("../../recipes/packages/debian.toml"),
        )),
        "ubuntu" => Some((
            "recipes/packages/ubuntu.toml",
            include_str!("../../recipes/packages/ubuntu.toml"),
        )),
        _ => None,
    }
}

/// The packages fireclaw wants on `distro` `version`.
pub fn wanted(distro: &str, version: &str) -> anyhow::Result<Vec<String>> {
    let (name, text) = recipe_for(distro)
        .with_context(|| format!("no package list for distribution {distro:?}"))?;
    let list: PackageList = toml::from_str(text).with_context(|| format!("parsing {name}"))?;
    let mut packages = list.common;
    if let Some(r) = list.releases.get(version) {
        packages.extend(r.extra.iter().cloned());
    }
    for p in &packages {
        if !is_package_name(p) {
            anyhow::bail!("{name}: {p:?} is not a valid Debian package name");
        }
    }
    Ok(packages)
}

/// Debian policy 5.6.1: lower case letters, digits, `+ - .`, at least two characters, starting
/// alphanumeric. Checked because these names end up in an apt-get command line.
pub fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// Which of `packages` dpkg reports as installed.
pub fn installed(packages: &[String]) -> anyhow::Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(packages)
        .output()
        .context("running dpkg-query (is this a Debian-based host?)")?;
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status
                .starts_with("ii")
                .then(|| name.split(':').next().unwrap_or(name).to_string())
        })
        .collect())
}

fn apt(args: &[&str], packages: &[String]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        anyhow::bail!(
            "apt-get {} {} failed ({status})",
            args.join(" "),
            packages.join(" ")
        );
    }
    Ok(())
}

pub fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    apt(
        &["install", "-y", "-q", "--no-install-recommends"],
        packages,
    )
}

pub fn apt_remove(packages: &[String]) -> anyhow::Result<()> {
    let still = installed(packages)?;
    if still.is_empty() {
        return Ok(());
    }
    apt(&["remove", "-y", "-q"], &still)
}

impl Step for Packages {
    fn name(&self) -> &'static str {
        "packages"
    }

    fn summary(&self) -> &'static str {
        "host packages from recipes/packages (apt-get)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let Some(os) = preflight::os_release(ctx) else {
            return Ok(StepPlan::not_applicable(
                "no os-release: cannot pick a package list",
            ));
        };
        let Ok(wanted) = wanted(&os.id, &os.version_id) else {
            return Ok(StepPlan::not_applicable(format!(
                "no package list for {}",
                os.id
            )));
        };
        if !ctx.root.is_system() {
            return Ok(StepPlan::not_applicable(format!(
                "root prefix {}: packages are host-global and not managed here ({})",
                ctx.root.dir().display(),
                wanted.join(" ")
            )));
        }
        let have = installed(&wanted)?;
        let missing: Vec<String> = wanted.into_iter().filter(|p| !have.contains(p)).collect();
        if missing.is_empty() {
            return Ok(StepPlan::default());
        }
        Ok(StepPlan::with_actions(vec![Action::AptInstall {
            packages: missing,
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_lists_parse_for_every_supported_release() {
        for (distro, versions) in preflight::SUPPORTED {
            for v in *versions {
                let list = wanted(distro, v).unwrap();
                assert!(list.contains(&"ngircd".to_string()), "{distro} {v}");
            }
        }
    }

    #[test]
    fn package_names_are_policed() {
        assert!(is_package_name("qemu-system-x86"));
        assert!(is_package_name("libc6"));
        for bad in ["", "a", "-rf", "Foo", "a b", "x;rm", "pkg/../"] {
            assert!(!is_package_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn under_a_root_prefix_packages_are_not_applicable_rather_than_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/os-release"),
            "ID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        let root = crate::root::RootPrefix::new(dir.path());
        let config = crate::config::Config::default();
        let ctx = Ctx::new(&root, &config, None, true);
        let steps: Vec<Box<dyn Step>> = vec![Box::new(Packages)];
        let plan = crate::plan::make_plan(&steps, &ctx, &Default::default()).unwrap();
        assert_eq!(plan.steps[0].status, crate::plan::StepStatus::NotApplicable);
    }

    #[test]
    fn unknown_distro_is_an_error() {
        assert!(wanted("fedora", "40").is_err());
    }
}
