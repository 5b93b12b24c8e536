//! Planning files and directories: compare what is on disk with what is wanted, and plan the
//! action that closes the gap (nothing when there is none).

use std::fs;

use crate::fsops::{probe_file, Existing};

use super::{Action, Ctx};

/// Plans a file so that it holds `content` with `mode`: `None` when it already does.
pub fn plan_file(
    ctx: &Ctx,
    path: &str,
    content: Vec<u8>,
    mode: u32,
) -> anyhow::Result<Option<Action>> {
    plan_file_redacted(ctx, path, content, mode, Vec::new())
}

pub fn plan_file_redacted(
    ctx: &Ctx,
    path: &str,
    content: Vec<u8>,
    mode: u32,
    redact: Vec<(String, String)>,
) -> anyhow::Result<Option<Action>> {
    plan_file_owned(ctx, path, content, mode, None, redact)
}

/// The configuration of a daemon that reads it as an unprivileged user: owner root, group the
/// daemon's `group`, mode 0640. The daemon can read it and change nothing; no one else can read
/// it (it may hold secrets, like ngircd's operator password). Every service fireclaw configures
/// gets its files this way.
pub fn plan_service_config(
    ctx: &Ctx,
    path: &str,
    content: Vec<u8>,
    group: &str,
    redact: Vec<(String, String)>,
) -> anyhow::Result<Option<Action>> {
    plan_file_owned(ctx, path, content, 0o640, Some(group.to_string()), redact)
}

fn plan_file_owned(
    ctx: &Ctx,
    path: &str,
    content: Vec<u8>,
    mode: u32,
    group: Option<String>,
    redact: Vec<(String, String)>,
) -> anyhow::Result<Option<Action>> {
    let before = match probe_file(&ctx.host(path)) {
        Existing::Absent => None,
        Existing::File {
            content: existing,
            mode: existing_mode,
            owner,
        } => {
            let owner_ok = match &group {
                None => true,
                Some(g) => super::action::file_owner(Some(g))? == Some(owner),
            };
            if existing == content && existing_mode == mode && owner_ok {
                return Ok(None);
            }
            Some(existing)
        }
        Existing::Unreadable => {
            // Without the rights to read it we cannot know it is right; say so and plan the write,
            // which is exactly what a privileged run does if the content differs.
            Some(b"<unreadable without root: shown as if replaced>\n".to_vec())
        }
        Existing::NotAFile => {
            anyhow::bail!("{path} exists and is not a regular file; move it aside and run again")
        }
    };
    Ok(Some(Action::WriteFile {
        path: path.to_string(),
        mode,
        group,
        content,
        before,
        redact,
        diff: None,
        systemctl_after: Vec::new(),
    }))
}

/// Plans a directory: `None` when it exists.
pub fn plan_dir(ctx: &Ctx, path: &str, mode: u32) -> anyhow::Result<Option<Action>> {
    match fs::symlink_metadata(ctx.host(path)) {
        Ok(meta) if meta.is_dir() => Ok(None),
        Ok(_) => anyhow::bail!("{path} exists and is not a directory; move it aside and run again"),
        Err(_) => Ok(Some(Action::CreateDir {
            path: path.to_string(),
            mode,
        })),
    }
}
