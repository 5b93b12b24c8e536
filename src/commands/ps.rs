//! `fireclaw ps`: the VMs the runtime knows.

use fireclaw_proto::control::{Origin, VmList};

use crate::cli::PsArgs;
use crate::commands::Env;
use crate::runtime::client::block_on;

pub fn run(env: &Env, args: &PsArgs) -> anyhow::Result<i32> {
    let c = super::runtime::client(env);
    let list = match block_on(c.json::<VmList>(hyper::Method::GET, "/v1/vms", None))? {
        Ok(l) => l,
        Err(e) => return super::runtime::fail(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<12}  {:<12}  {:<15}  {:<12}  {:>7}  {:<7}  OWNER",
        "ID", "IMAGE", "ADDRESS", "STATE", "AGE", "ORIGIN"
    );
    for v in &list.vms {
        println!(
            "{:<12}  {:<12}  {:<15}  {:<12}  {:>7}  {:<7}  {}",
            v.id,
            v.image,
            v.address.as_deref().unwrap_or("-"),
            v.state,
            super::runtime::human_duration(v.age_secs),
            match v.origin {
                Origin::Pool => "pool",
                Origin::Restore => "restore",
                Origin::Cold => "cold",
            },
            v.owner
        );
    }
    Ok(0)
}
