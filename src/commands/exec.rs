//! `fireclaw exec VM -- CMD`: run a command in a VM through the runtime.

use std::io::Write as _;

use fireclaw_proto::control::{valid_vm_id, ExecRequest, ExecResult};

use crate::cli::ExecArgs;
use crate::commands::Env;
use crate::runtime::client::{block_on, ClientError};

pub fn run(env: &Env, args: &ExecArgs) -> anyhow::Result<i32> {
    if !valid_vm_id(&args.vm) {
        return super::runtime::fail(format!(
            "invalid VM id {:?}: expected 12 hex digits (see `fireclaw ps`)",
            args.vm
        ));
    }
    let req = ExecRequest {
        argv: args.command.clone(),
        timeout_secs: Some(args.timeout),
    };
    let c = super::runtime::client(env);
    let path = format!("/v1/vms/{}/exec", args.vm);
    let res = block_on(c.json::<ExecResult>(
        hyper::Method::POST,
        &path,
        Some(serde_json::to_vec(&req)?),
    ))?;
    match res {
        Ok(r) => {
            std::io::stdout().write_all(r.stdout.as_bytes())?;
            std::io::stderr().write_all(r.stderr.as_bytes())?;
            if r.truncated {
                eprintln!("fireclaw: output was cut at 1 MiB per stream");
            }
            Ok(r.exit_code)
        }
        Err(ClientError::Api {
            status: 504,
            message,
        }) => {
            eprintln!("error: {message}");
            Ok(124)
        }
        Err(e) => super::runtime::fail(e),
    }
}
