//! The systemd unit for `fireclaw runtime`.

use std::process::Command;

use anyhow::Context as _;

use crate::plan::{files, Action, Ctx, Step, StepPlan};

pub struct Unit;

pub const UNIT_NAME: &str = "fireclaw.service";
const TEMPLATE: &str = include_str!("../../recipes/fireclaw.service.in");

pub fn render_unit(binary: &str) -> anyhow::Result<String> {
    Ok(crate::template::render(
        "recipes/fireclaw.service.in",
        TEMPLATE,
        &[("binary", binary)],
    )?)
}

pub fn systemctl(args: &[String]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        anyhow::bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The group a distribution's service runs as: `Group=` (else `User=`) in the `[Service]` section
/// of its installed unit (an override in /etc first), or `default` when the unit is not installed
/// yet (the packages step installs it in the same run).
pub fn service_group(ctx: &Ctx, unit: &str, default: &str) -> String {
    [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .find_map(|dir| std::fs::read_to_string(ctx.host(&format!("{dir}/{unit}"))).ok())
    .and_then(|text| unit_group(&text))
    .unwrap_or_else(|| default.to_string())
}

fn unit_group(text: &str) -> Option<String> {
    let mut section = "";
    let (mut user, mut group) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            match line.split_once('=') {
                Some(("User", v)) => user = Some(v.trim().to_string()),
                Some(("Group", v)) => group = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    group.or(user).filter(|g| !g.is_empty())
}

pub fn is_enabled(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-enabled", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

impl Step for Unit {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn summary(&self) -> &'static str {
        "fireclaw.service running `fireclaw runtime` (enabled and started when systemd is PID 1)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let binary = format!(
            "{}/fireclaw",
            ctx.config.paths.bin_dir.trim_end_matches('/')
        );
        let path = format!(
            "{}/{UNIT_NAME}",
            ctx.config.paths.unit_dir.trim_end_matches('/')
        );
        let mut plan = StepPlan::default();
        crate::provision::layout::plan_dir_tree(
            ctx,
            &ctx.config.paths.unit_dir,
            0o755,
            &mut plan.actions,
        )?;
        // The runtime's control socket is 0660 root:fireclaw, and the runtime refuses to start
        // without the group.
        if ctx.root.is_system() {
            if !super::group::exists(super::group::GROUP)? {
                plan.actions.push(Action::CreateGroup {
                    name: super::group::GROUP.into(),
                });
            }
        } else {
            plan.notes.push(format!(
                "group {} is host-global: created only when provisioning / (the runtime needs it)",
                super::group::GROUP
            ));
        }
        let active = super::systemd_active(ctx.root);
        if let Some(mut a) =
            files::plan_file(ctx, &path, render_unit(&binary)?.into_bytes(), 0o644)?
        {
            if active {
                if let Action::WriteFile {
                    systemctl_after, ..
                } = &mut a
                {
                    *systemctl_after = vec!["daemon-reload".into()];
                }
            }
            plan.actions.push(a);
        }
        if active {
            // `--now`: an operator who ran install.sh expects the service to run, not to wait
            // for the next boot (the system tier found it enabled and inactive); the undo is
            // `disable --now`, which stops it again.
            if !is_enabled(UNIT_NAME) {
                plan.actions.push(Action::Systemctl {
                    args: vec!["enable".into(), "--now".into(), UNIT_NAME.into()],
                });
            }
        } else {
            plan.notes.push("systemd is not running here (or a root prefix is set): the unit is written, not enabled".into());
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_group_comes_from_its_unit() {
        let debian = "[Unit]\nDescription=x\n[Service]\nType=forking\nUser=irc\nGroup=irc\nExecStart=/usr/sbin/ngircd\n";
        assert_eq!(unit_group(debian).as_deref(), Some("irc"));
        assert_eq!(
            unit_group("[Service]\nUser=ircd\n").as_deref(),
            Some("ircd")
        );
        assert_eq!(unit_group("[Service]\nExecStart=/x\n"), None);
        assert_eq!(unit_group("[Install]\nGroup=wheel\n"), None);
    }

    #[test]
    fn unit_has_the_settings_the_runtime_relies_on() {
        let u = render_unit("/usr/local/bin/fireclaw").unwrap();
        for needle in [
            "ExecStart=/usr/local/bin/fireclaw runtime",
            "Type=notify",
            "NotifyAccess=main",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Documentation=man:fireclaw(1)",
            "Restart=on-failure",
            "KillMode=process",
            "After=network-online.target ngircd.service",
            "WantedBy=multi-user.target",
        ] {
            assert!(u.contains(needle), "missing {needle}");
        }
    }
}
