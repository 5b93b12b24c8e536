//! `fireclaw agent`: the overseer's agent operations over the control socket (the socket's group
//! authorizes, as for every route; the runtime audits each call with the caller's uid).

use fireclaw_proto::control::{AgentAnswer, AgentReload, AgentStart};
use hyper::Method;

use crate::cli::{AgentArgs, AgentCommand};
use crate::commands::Env;
use crate::runtime::client::block_on;

pub fn run(env: &Env, args: &AgentArgs) -> anyhow::Result<i32> {
    let (method, path, body) = match &args.command {
        AgentCommand::Start {
            template,
            name,
            model,
        } => (
            Method::POST,
            "/v1/agents".to_string(),
            Some(serde_json::to_vec(&AgentStart {
                template: template.clone(),
                name: name.clone(),
                model: model.clone(),
            })?),
        ),
        AgentCommand::Stop { name } => (
            Method::DELETE,
            format!("/v1/agents/{}", path_part(name)),
            None,
        ),
        AgentCommand::Rm { name, purge } => (
            Method::DELETE,
            format!("/v1/agents/{}?purge={purge}", path_part(name)),
            None,
        ),
        AgentCommand::Ls => (Method::GET, "/v1/agents".to_string(), None),
        AgentCommand::Reload { name, model } => (
            Method::POST,
            format!("/v1/agents/{}/reload", path_part(name)),
            Some(serde_json::to_vec(&AgentReload {
                model: model.clone(),
            })?),
        ),
        AgentCommand::Logs { name, lines } => (
            Method::GET,
            format!(
                "/v1/agents/{}/logs{}",
                path_part(name),
                lines.map(|n| format!("?n={n}")).unwrap_or_default()
            ),
            None,
        ),
    };
    let c = super::runtime::client(env);
    match block_on(c.json::<AgentAnswer>(method, &path, body))? {
        Ok(a) => {
            for line in a.lines {
                println!("{line}");
            }
            Ok(0)
        }
        Err(e) => super::runtime::fail(e),
    }
}

/// A name as one path segment: anything but letters, digits, `-` and `_` is percent-encoded, so
/// a hostile name reaches the runtime's check as it was typed instead of changing the path.
fn path_part(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_one_path_segment() {
        assert_eq!(path_part("coder-1"), "coder-1");
        assert_eq!(path_part("../x y"), "%2E%2E%2Fx%20y");
    }
}
