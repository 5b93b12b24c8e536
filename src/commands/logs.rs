//! `fireclaw logs VM [-f]`: a VM's console through the runtime.

use std::io::Write as _;

use fireclaw_proto::control::valid_vm_id;

use crate::cli::LogsArgs;
use crate::commands::Env;
use crate::runtime::client::block_on;

pub fn run(env: &Env, args: &LogsArgs) -> anyhow::Result<i32> {
    if !valid_vm_id(&args.vm) {
        return super::runtime::fail(format!(
            "invalid VM id {:?}: expected 12 hex digits (see `fireclaw ps`)",
            args.vm
        ));
    }
    let c = super::runtime::client(env);
    let path = format!(
        "/v1/vms/{}/console{}",
        args.vm,
        if args.follow { "?follow=1" } else { "" }
    );
    let mut out = std::io::stdout().lock();
    match block_on(c.stream(&path, |chunk| {
        out.write_all(chunk)?;
        out.flush()
    }))? {
        Ok(()) => Ok(0),
        Err(e) => super::runtime::fail(e),
    }
}
