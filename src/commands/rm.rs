//! `fireclaw rm VM`: remove a VM through the runtime.

use fireclaw_proto::control::{valid_vm_id, Removed};

use crate::cli::RmArgs;
use crate::commands::Env;
use crate::runtime::client::block_on;

pub fn run(env: &Env, args: &RmArgs) -> anyhow::Result<i32> {
    if !valid_vm_id(&args.vm) {
        return super::runtime::fail(format!(
            "invalid VM id {:?}: expected 12 hex digits (see `fireclaw ps`)",
            args.vm
        ));
    }
    let c = super::runtime::client(env);
    let path = format!("/v1/vms/{}", args.vm);
    match block_on(c.json::<Removed>(hyper::Method::DELETE, &path, None))? {
        Ok(r) => {
            println!("removed VM {}", r.id);
            Ok(0)
        }
        Err(e) => super::runtime::fail(e),
    }
}
