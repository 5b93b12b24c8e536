//! The systemd unit for `fireclaw runtime`.

use std::process::Command;

use anyhow::Context as _;

use crate::plan::{fsops, Action, Ctx, Step, StepPlan};

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
        "fireclaw.service running `fireclaw runtime` (enabled when systemd is PID 1)"
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
            fsops::plan_file(ctx, &path, render_unit(&binary)?.into_bytes(), 0o644)?
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
            if !is_enabled(UNIT_NAME) {
                plan.actions.push(Action::Systemctl {
                    args: vec!["enable".into(), UNIT_NAME.into()],
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
