//! ngircd as the agents' IRC server: fireclaw's configuration and the operator password.

use crate::fsops::{self, Existing};
use crate::irc::ngircd::{render, NgircdParams};
use crate::plan::files;
use crate::plan::{Check, Ctx, Step, StepPlan};

pub struct Ngircd;

/// ngircd's unit, whose `Group=` may read the configuration.
pub const UNIT: &str = "ngircd.service";

/// Debian's base-passwd user and group ngircd runs as, when its unit is not installed yet.
pub const DEFAULT_GROUP: &str = "irc";

pub use crate::irc::ngircd::OPERATOR_PASSWORD_FILE;

const PASSWORD_LENGTH: usize = 32;

impl Step for Ngircd {
    fn name(&self) -> &'static str {
        "ngircd"
    }

    fn summary(&self) -> &'static str {
        "ngircd configured for the agents (bridge + loopback only, #control and #agents)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let pass_path = format!("{}/{OPERATOR_PASSWORD_FILE}", ctx.config.paths.config_dir);
        let mut plan = StepPlan::default();
        // Debian's and Ubuntu's unit start ngircd as `irc` from the first instruction: the
        // configuration must be readable by that group, and by no one else (it holds the operator
        // password).
        let group = super::systemd::service_group(ctx, UNIT, DEFAULT_GROUP);
        if crate::plan::action::file_owner(Some(&group)).is_err() {
            plan.checks.push(Check {
                name: "ngircd group".into(),
                ok: false,
                detail: format!("group {group} ({UNIT} runs ngircd as it) does not exist"),
                fix: Some(format!(
                    "install ngircd (`apt-get install ngircd`), which runs as {group}, then run provision again"
                )),
                required: true,
            });
            return Ok(plan);
        }
        // Reuse the password on disk, so a re-run is a no-op; generate one (now, at plan time, so
        // the config written matches the password file written) when there is none.
        let password = match fsops::probe_file(&ctx.host(&pass_path)) {
            Existing::File { content, .. } => String::from_utf8_lossy(&content).trim().to_string(),
            Existing::Unreadable => {
                plan.notes.push(format!("{pass_path} is not readable without root; run as root to check ngircd's configuration"));
                return Ok(plan);
            }
            _ => fsops::random_secret(PASSWORD_LENGTH),
        };
        let mut redact = vec![(
            password.clone(),
            format!("<operator password from {pass_path}>"),
        )];
        // The configuration on disk may hold an older password (its file was deleted since): the
        // diff must not print that one either.
        if let Existing::File { content, .. } =
            fsops::probe_file(&ctx.host(&ctx.config.paths.ngircd_conf))
        {
            for line in String::from_utf8_lossy(&content).lines() {
                if let Some((key, value)) = line.split_once('=') {
                    let value = value.trim();
                    if key.trim().eq_ignore_ascii_case("password")
                        && !value.is_empty()
                        && value != password
                    {
                        redact.push((value.to_string(), "<previous password>".into()));
                    }
                }
            }
        }
        crate::provision::layout::plan_dir_tree(
            ctx,
            &ctx.config.paths.config_dir,
            0o755,
            &mut plan.actions,
        )?;
        if let Some(a) = files::plan_file_redacted(
            ctx,
            &pass_path,
            format!("{password}\n").into_bytes(),
            0o600,
            redact.clone(),
        )? {
            plan.actions.push(a);
        }
        let text = render(ctx.config, &NgircdParams::for_host(ctx.config, &password)?)?;
        let conf = &ctx.config.paths.ngircd_conf;
        if let Some(dir) = std::path::Path::new(conf).parent() {
            crate::provision::layout::plan_dir_tree(
                ctx,
                &dir.to_string_lossy(),
                0o755,
                &mut plan.actions,
            )?;
        }
        if let Some(mut a) =
            files::plan_service_config(ctx, conf, text.into_bytes(), &group, redact)?
        {
            if super::systemd_active(ctx.root) {
                if let crate::plan::Action::WriteFile {
                    systemctl_after, ..
                } = &mut a
                {
                    *systemctl_after = vec!["restart".into(), "ngircd.service".into()];
                }
            }
            plan.actions.push(a);
        }
        Ok(plan)
    }
}
