//! Firecracker and jailer from the pinned release archive.

use std::path::Path;

use crate::archive;
use crate::fetch;
use crate::plan::action::ArchiveMember;
use crate::plan::{Action, Check, Ctx, Step, StepPlan};
use crate::root::RootPrefix;

pub struct FirecrackerStep;

/// Published SHA-256 digests of release archives fireclaw knows, by (version, arch). Where none is
/// known the operator must set `firecracker.sha256`: an unpinned download is never trusted.
pub const KNOWN_DIGESTS: &[(&str, &str, &str)] = &[(
    "v1.16.1",
    "x86_64",
    "382a02a869e4d6d5cb14c40577f9545e8458021ea8b0b2d3fc10ec14d9c242e6",
)];

pub fn pinned_digest(version: &str, arch: &str, configured: &str) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_string());
    }
    KNOWN_DIGESTS
        .iter()
        .find(|(v, a, _)| *v == version && *a == arch)
        .map(|(_, _, d)| d.to_string())
}

pub fn release_url(template: &str, version: &str, arch: &str) -> String {
    template
        .replace("{version}", version)
        .replace("{arch}", arch)
}

/// The members of a release archive and where they go.
pub fn members(version: &str, arch: &str, bin_dir: &str) -> Vec<ArchiveMember> {
    ["firecracker", "jailer"]
        .iter()
        .map(|name| ArchiveMember {
            member: format!("release-{version}-{arch}/{name}-{version}-{arch}"),
            dest: format!("{}/{name}", bin_dir.trim_end_matches('/')),
            mode: 0o755,
        })
        .collect()
}

/// Whether every member is installed with the content the pinned archive holds. The check uses the
/// cached archive; without it, present files are taken as installed (and said so).
fn installed(ctx: &Ctx, sha256: &str, members: &[ArchiveMember]) -> anyhow::Result<Option<bool>> {
    if !members.iter().all(|m| ctx.host(&m.dest).is_file()) {
        return Ok(Some(false));
    }
    let cached = fetch::cached_path(&ctx.host(&ctx.config.paths.cache_dir), sha256);
    if !cached.is_file() {
        return Ok(None);
    }
    let names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
    let wanted = archive::read_members(&cached, &names)?;
    for (m, bytes) in members.iter().zip(&wanted) {
        if fetch::sha256_hex(bytes) != fetch::sha256_file(&ctx.host(&m.dest))? {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

/// Fetches (or reuses the cached) archive, verifies it, installs the members.
pub fn install(
    root: &RootPrefix,
    url: &str,
    sha256: &str,
    members: &[ArchiveMember],
    cache_dir: &str,
) -> anyhow::Result<()> {
    let tarball = fetch::fetch_verified(url, sha256, &root.host(cache_dir))?;
    let dests: Vec<_> = members.iter().map(|m| root.host(&m.dest)).collect();
    let spec: Vec<(&str, &Path, u32)> = members
        .iter()
        .zip(&dests)
        .map(|(m, d)| (m.member.as_str(), d.as_path(), m.mode))
        .collect();
    archive::extract_members(&tarball, &spec)
}

impl Step for FirecrackerStep {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn summary(&self) -> &'static str {
        "firecracker and jailer from the pinned release archive (sha256-verified)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let fc = &ctx.config.firecracker;
        let arch = std::env::consts::ARCH;
        let Some(sha256) = pinned_digest(&fc.version, arch, &fc.sha256) else {
            return Ok(StepPlan {
                checks: vec![Check {
                    name: "firecracker pin".into(),
                    ok: false,
                    detail: format!("no known sha256 for firecracker {} on {arch}", fc.version),
                    fix: Some(format!(
                        "get the digest from the release's firecracker-{}-{arch}.tgz.sha256.txt and set `sha256` under [firecracker] in /etc/fireclaw/fireclaw.toml",
                        fc.version
                    )),
                    required: true,
                }],
                ..Default::default()
            });
        };
        let members = members(&fc.version, arch, &ctx.config.paths.bin_dir);
        let mut plan = StepPlan::default();
        match installed(ctx, &sha256, &members)? {
            Some(true) => {}
            None => plan.notes.push(format!(
                "{} present; not re-verified (the cached archive is gone)",
                members
                    .iter()
                    .map(|m| m.dest.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(false) => {
                let downloads = format!(
                    "{}/{}",
                    ctx.config.paths.cache_dir.trim_end_matches('/'),
                    fetch::DOWNLOADS_DIR
                );
                crate::provision::layout::plan_dir_tree(ctx, &downloads, 0o755, &mut plan.actions)?;
                crate::provision::layout::plan_dir_tree(
                    ctx,
                    &ctx.config.paths.bin_dir,
                    0o755,
                    &mut plan.actions,
                )?;
                plan.actions.push(Action::InstallFromArchive {
                    url: release_url(&fc.url, &fc.version, arch),
                    sha256,
                    members,
                    cache_dir: ctx.config.paths.cache_dir.clone(),
                });
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_well_formed() {
        for (v, a, d) in KNOWN_DIGESTS {
            assert!(v.starts_with('v') && matches!(*a, "x86_64" | "aarch64"));
            assert!(fetch::is_sha256_hex(d), "{d}");
        }
        assert!(pinned_digest("v1.16.1", "aarch64", "").is_none());
        assert_eq!(
            pinned_digest("v1.16.1", "aarch64", "ab").as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn release_layout() {
        let m = members("v1.16.1", "x86_64", "/usr/local/bin/");
        assert_eq!(
            m[0].member,
            "release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64"
        );
        assert_eq!(m[0].dest, "/usr/local/bin/firecracker");
        assert_eq!(m[1].dest, "/usr/local/bin/jailer");
        let url = release_url(
            &crate::config::Firecracker::default().url,
            "v1.16.1",
            "x86_64",
        );
        assert!(
            url.ends_with("/v1.16.1/firecracker-v1.16.1-x86_64.tgz"),
            "{url}"
        );
    }
}
