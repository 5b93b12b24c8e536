//! `fireclaw snapshot ls|build|rm`: the base snapshots, straight on the state database.
//!
//! Not through the control socket: building a snapshot is a cold boot plus a write of the guest's
//! memory, which the CLI can do itself whether or not the runtime runs, and the store keeps one
//! ready snapshot per key in one transaction whoever builds it. A runtime that holds clones of a
//! snapshot removed here keeps them running (QEMU read the state once; each clone has its own
//! disk copy) and rebuilds the snapshot when it next needs one.

use std::time::Duration;

use crate::cli::{SnapshotArgs, SnapshotBuildArgs, SnapshotCommand};
use crate::commands::Env;
use crate::pool::snapshot::{self, Recipe};
use crate::pool::store;
use crate::vm::image::{self, Overrides};

pub fn run(env: &Env, args: &SnapshotArgs) -> anyhow::Result<i32> {
    if !env.privileged {
        anyhow::bail!("fireclaw snapshot reads the state database and boots VMs: run it with sudo");
    }
    env.require_provisioned()?;
    let host = super::engines::host(env)?;
    match &args.command {
        SnapshotCommand::Ls(flag) => {
            let rows = store::list(&host.db()?)?;
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            println!(
                "{:<12}  {:<16}  {:<11}  {:>4}  {:>6}  {:>9}  {:<8}  {:>9}  AGE",
                "ID", "IMAGE", "ENGINE", "VCPU", "MiB", "WORKSPACE", "STATE", "SIZE"
            );
            let now = crate::state::now_unix();
            for r in rows {
                println!(
                    "{:<12}  {:<16}  {:<11}  {:>4}  {:>6}  {:>9}  {:<8}  {:>8}M  {}",
                    r.id,
                    r.key.image,
                    r.key.engine,
                    r.key.vcpus,
                    r.key.mem_mib,
                    // An agent snapshot's second drive (its size in MiB), `-` for none.
                    match r.key.workspace_mib {
                        0 => "-".to_string(),
                        m => format!("{m}M"),
                    },
                    serde_json::to_value(r.state)?.as_str().unwrap_or("?"),
                    r.bytes >> 20,
                    super::runtime::human_duration(u64::try_from(now - r.created_at).unwrap_or(0))
                );
            }
            Ok(0)
        }
        SnapshotCommand::Build(b) => build(env, &host, b),
        SnapshotCommand::Rm { id } => {
            if store::get(&host.db()?, id)?.is_none() {
                anyhow::bail!("no snapshot {id:?} (see `fireclaw snapshot ls`)");
            }
            snapshot::remove(&host, id)?;
            println!("removed snapshot {id}");
            Ok(0)
        }
    }
}

fn build(env: &Env, host: &crate::vm::Host, b: &SnapshotBuildArgs) -> anyhow::Result<i32> {
    let image = image::resolve(
        &b.image,
        &env.root.host(&env.config.paths.image_dir),
        &Overrides {
            kernel: b.kernel.clone(),
            initrd: b.initrd.clone(),
        },
    )?;
    let recipe = Recipe {
        image,
        vmm: b.vmm.unwrap_or_else(|| super::engines::default_vmm(env)),
        vcpus: b.cpus.unwrap_or(env.config.pool.vcpus),
        mem_mib: b.mem.unwrap_or(env.config.pool.mem_mib),
        workspace_mib: 0,
    };
    let timeout = Duration::from_secs(b.timeout);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (snap, refused) = rt.block_on(async {
        if b.force {
            snapshot::build(host, &recipe, timeout)
                .await
                .map(|s| (s, None))
        } else {
            snapshot::ensure(host, &recipe, timeout).await
        }
    })?;
    if let Some(why) = &refused {
        eprintln!("fireclaw: {why}");
    }
    if b.json {
        println!("{}", serde_json::to_string_pretty(&snap.row)?);
    } else {
        println!(
            "snapshot {} of {} is ready ({} MiB in {})",
            snap.row.id,
            snap.row.key,
            snap.row.bytes >> 20,
            snap.row.dir.display()
        );
    }
    Ok(0)
}
