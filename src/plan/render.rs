//! Printing plans: text for people, JSON for scripts (schema in README, "Plan JSON").

use serde::Serialize;

use super::{Action, Check, Plan, StepStatus};

/// Version of the JSON plan schema; bump on incompatible changes.
pub const PLAN_SCHEMA: u32 = 1;

/// Fills in each WriteFile's diff (secrets redacted). Done once, before printing either format.
pub fn attach_diffs(plan: &mut Plan) {
    for step in &mut plan.steps {
        for action in &mut step.plan.actions {
            if let Action::WriteFile {
                path,
                content,
                before,
                redact,
                diff,
                ..
            } = action
            {
                *diff = Some(unified_diff(path, before.as_deref(), content, redact));
            }
        }
    }
}

fn redacted(bytes: &[u8], redact: &[(String, String)]) -> Option<String> {
    let mut text = String::from_utf8(bytes.to_vec()).ok()?;
    for (secret, placeholder) in redact {
        if !secret.is_empty() {
            text = text.replace(secret.as_str(), placeholder);
        }
    }
    Some(text)
}

pub fn unified_diff(
    path: &str,
    before: Option<&[u8]>,
    after: &[u8],
    redact: &[(String, String)],
) -> String {
    let old = before.map(|b| redacted(b, redact));
    let new = redacted(after, redact);
    match (old, new) {
        (Some(None), _) | (_, None) => format!(
            "binary content: {} bytes, sha256 {}\n",
            after.len(),
            crate::fetch::sha256_hex(after)
        ),
        (old, Some(new)) => {
            let old = old.flatten().unwrap_or_default();
            let from = if before.is_some() {
                path.to_string()
            } else {
                "/dev/null".to_string()
            };
            similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .context_radius(3)
                .header(&from, path)
                .to_string()
        }
    }
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    schema: u32,
    root: String,
    dry_run: bool,
    action_count: usize,
    blocked: bool,
    steps: Vec<JsonStep<'a>>,
}

#[derive(Serialize)]
struct JsonStep<'a> {
    name: &'a str,
    summary: &'a str,
    status: StepStatus,
    checks: &'a [Check],
    notes: &'a [String],
    actions: Vec<JsonAction<'a>>,
}

#[derive(Serialize)]
struct JsonAction<'a> {
    description: String,
    #[serde(flatten)]
    action: &'a Action,
}

pub fn to_json(plan: &Plan, root: &str, dry_run: bool) -> String {
    let doc = JsonPlan {
        schema: PLAN_SCHEMA,
        root: root.to_string(),
        dry_run,
        action_count: plan.action_count(),
        blocked: plan.is_blocked(),
        steps: plan
            .steps
            .iter()
            .map(|s| JsonStep {
                name: s.name,
                summary: s.summary,
                status: s.status,
                checks: &s.plan.checks,
                notes: &s.plan.notes,
                actions: s
                    .plan
                    .actions
                    .iter()
                    .map(|a| JsonAction {
                        description: a.describe(),
                        action: a,
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

pub fn to_text(plan: &Plan) -> String {
    let mut out = String::new();
    let total = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        let status = match step.status {
            StepStatus::Done => "already done".to_string(),
            StepStatus::Pending => format!("{} action(s)", step.plan.actions.len()),
            StepStatus::Blocked => "BLOCKED".to_string(),
            StepStatus::Skipped => "skipped".to_string(),
            StepStatus::NotApplicable => "not applicable".to_string(),
        };
        out.push_str(&format!(
            "[{}/{}] {:<12} {} — {}\n",
            i + 1,
            total,
            step.name,
            status,
            step.summary
        ));
        for check in &step.plan.checks {
            let mark = if check.ok {
                "ok  "
            } else if check.required {
                "FAIL"
            } else {
                "warn"
            };
            out.push_str(&format!("      {mark} {}: {}\n", check.name, check.detail));
            if let (false, Some(fix)) = (check.ok, &check.fix) {
                out.push_str(&format!("           fix: {fix}\n"));
            }
        }
        for note in &step.plan.notes {
            out.push_str(&format!("      note: {note}\n"));
        }
        if step.status == StepStatus::Skipped {
            continue;
        }
        for action in &step.plan.actions {
            out.push_str(&format!("      + {}\n", action.describe()));
            match action {
                Action::WriteFile { diff: Some(d), .. } => out.push_str(&indent(d, "          ")),
                Action::NftTable { ruleset, .. } => out.push_str(&indent(ruleset, "          | ")),
                _ => {}
            }
        }
    }
    let pending = plan
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Pending)
        .count();
    out.push_str(&format!("Plan: {}\n", summary(plan, pending)));
    out
}

/// The plan's last line: what will happen, and what was left out.
pub fn summary(plan: &Plan, pending_steps: usize) -> String {
    let skipped = plan.skipped();
    if plan.is_blocked() {
        "BLOCKED: nothing will be applied until the FAIL lines above are fixed.".into()
    } else if plan.is_empty() && skipped.is_empty() {
        "nothing to do; the host is provisioned.".into()
    } else if plan.is_empty() {
        format!(
            "nothing to do in the selected steps ({} skipped: {}).",
            skipped.len(),
            skipped.join(", ")
        )
    } else {
        format!(
            "{} action(s) in {} step(s).",
            plan.action_count(),
            pending_steps
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str, status: StepStatus) -> crate::plan::PlannedStep {
        crate::plan::PlannedStep {
            name,
            summary: "",
            status,
            plan: Default::default(),
        }
    }

    #[test]
    fn with_steps_skipped_an_empty_plan_does_not_claim_the_host_is_provisioned() {
        let plan = Plan {
            steps: vec![
                step("preflight", StepStatus::Done),
                step("network", StepStatus::Skipped),
                step("thinpool", StepStatus::NotApplicable),
            ],
        };
        let text = to_text(&plan);
        assert!(!text.contains("provisioned"), "{text}");
        assert!(text.contains("1 skipped: network"), "{text}");
        assert!(text.contains("thinpool     not applicable"), "{text}");
        let all = Plan {
            steps: vec![step("preflight", StepStatus::Done)],
        };
        assert!(to_text(&all).contains("the host is provisioned"));
    }

    #[test]
    fn diff_of_new_file_is_against_dev_null() {
        let d = unified_diff("/etc/a", None, b"x\ny\n", &[]);
        assert!(
            d.contains("--- /dev/null") && d.contains("+++ /etc/a") && d.contains("+y"),
            "{d}"
        );
    }

    #[test]
    fn diff_redacts_secrets_on_both_sides() {
        let d = unified_diff(
            "/etc/n",
            Some(b"Password = old-secret\n"),
            b"Password = new-secret\n",
            &[
                ("new-secret".into(), "<generated>".into()),
                ("old-secret".into(), "<previous>".into()),
            ],
        );
        assert!(
            !d.contains("new-secret") && !d.contains("old-secret"),
            "{d}"
        );
        assert!(d.contains("<generated>"), "{d}");
    }

    #[test]
    fn binary_content_is_summarised() {
        let d = unified_diff("/bin/x", None, &[0xff, 0xfe, 0x00], &[]);
        assert!(d.starts_with("binary content: 3 bytes"), "{d}");
    }
}
