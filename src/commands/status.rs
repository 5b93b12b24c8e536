//! `fireclaw status`: what provision has done, at a glance.

use serde::Serialize;

use crate::cli::JsonFlag;
use crate::commands::Env;
use crate::net::link;
use crate::provision;

#[derive(Serialize)]
struct Status {
    /// The journal records provisioning. False on a host with no state database, and with one that
    /// holds no journal (created by another command before provision ran).
    provisioned: bool,
    state_db: String,
    /// The database exists but could not be read (it is root's alone): `provisioned` is unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    state_db_unreadable: bool,
    steps: Vec<StepStatus>,
    journal_entries: usize,
    bridge: Option<BridgeStatus>,
    ngircd_config: bool,
    /// Pid of a running ngircd, if any (from /proc: ngircd may run outside systemd).
    ngircd_pid: Option<u32>,
    unit_file: bool,
    /// `systemctl is-enabled` when systemd runs; `None` otherwise.
    unit_enabled: Option<bool>,
    vms: Vec<crate::vm::record::VmRecord>,
    thin_pool: ThinPoolStatus,
}

#[derive(Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ThinPoolStatus {
    /// No pool recorded (not provisioned, disabled, or no device-mapper: reflink/copy disks).
    Absent,
    /// Recorded but not active (after a reboot: the next command that needs it re-activates it).
    Inactive,
    Active {
        usage: crate::storage::thin::PoolUsage,
        data_percent: f64,
        metadata_percent: f64,
        vm_disks: usize,
        max_used_percent: u8,
    },
    Error {
        message: String,
    },
}

fn thin_pool_status(env: &Env, db: Option<&crate::state::Db>) -> ThinPoolStatus {
    use crate::storage::thin::{self, store, ThinEngine};
    let Some(db) = db else {
        return ThinPoolStatus::Absent;
    };
    if !store::has_tables(db).unwrap_or(false)
        || !matches!(store::pool(db, thin::DEFAULT_POOL_NAME), Ok(Some(_)))
    {
        return ThinPoolStatus::Absent;
    }
    let spec = match crate::storage::thin::recorded::recorded_spec(
        db,
        &env.root,
        &env.config.paths.state_dir,
        env.config.thinpool.max_used_percent,
    ) {
        Ok(s) => s,
        Err(e) => {
            return ThinPoolStatus::Error {
                message: format!("{e:#}"),
            }
        }
    };
    let engine = match ThinEngine::new(db, spec) {
        Ok(e) => e,
        Err(e) => {
            return ThinPoolStatus::Error {
                message: e.to_string(),
            }
        }
    };
    match engine.usage() {
        Ok(usage) => ThinPoolStatus::Active {
            data_percent: usage.data_percent(),
            metadata_percent: usage.metadata_percent(),
            vm_disks: engine.vm_disks().map(|d| d.len()).unwrap_or(0),
            max_used_percent: env.config.thinpool.max_used_percent,
            usage,
        },
        Err(_) => ThinPoolStatus::Inactive,
    }
}

#[derive(Serialize)]
struct StepStatus {
    name: &'static str,
    completed_at: Option<i64>,
}

#[derive(Serialize)]
struct BridgeStatus {
    name: String,
    up: bool,
    addresses: Vec<String>,
}

pub fn run(env: &Env, args: &JsonFlag) -> anyhow::Result<i32> {
    let db = env.open_db_read_only()?;
    let mut steps = Vec::new();
    let mut journal_entries = 0;
    if let Some(db) = &db {
        for name in provision::step_names() {
            steps.push(StepStatus {
                name,
                completed_at: db.step_completed_at(name)?,
            });
        }
        journal_entries = db.journal_active_newest_first()?.len();
    }
    let bridge = link::state(&env.config.network.bridge)
        .ok()
        .flatten()
        .map(|s| BridgeStatus {
            name: env.config.network.bridge.clone(),
            up: s.up,
            addresses: s.ipv4.iter().map(|c| c.to_string()).collect(),
        });
    let unit = format!(
        "{}/{}",
        env.config.paths.unit_dir,
        provision::systemd::UNIT_NAME
    );
    let status = Status {
        provisioned: journal_entries > 0,
        state_db: env.db_path().display().to_string(),
        state_db_unreadable: db.is_none() && env.db_path().exists(),
        steps,
        journal_entries,
        bridge,
        ngircd_config: env.root.host(&env.config.paths.ngircd_conf).exists(),
        ngircd_pid: process_named("ngircd"),
        unit_file: env.root.host(&unit).exists(),
        thin_pool: thin_pool_status(env, db.as_ref()),
        unit_enabled: provision::systemd_active(&env.root)
            .then(|| provision::systemd::is_enabled(provision::systemd::UNIT_NAME)),
        vms: match &db {
            Some(db) => crate::vm::record::list(db).unwrap_or_default(),
            None => Vec::new(),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    if status.state_db_unreadable {
        println!(
            "Unknown: {} is readable by root only; run `sudo fireclaw status` to see what provision did.",
            status.state_db
        );
    } else if db.is_none() {
        println!("Not provisioned ({} does not exist). Run `fireclaw provision --dry-run` to see the plan.", status.state_db);
    } else if !status.provisioned {
        println!("Not provisioned ({} records no provisioning). Run `fireclaw provision --dry-run` to see the plan.", status.state_db);
    } else {
        println!(
            "Provisioned: {} journaled change(s) in {}",
            status.journal_entries, status.state_db
        );
        for s in &status.steps {
            println!(
                "  {:<12} {}",
                s.name,
                if s.completed_at.is_some() {
                    "done"
                } else {
                    "not run"
                }
            );
        }
    }
    match &status.bridge {
        Some(b) => println!(
            "bridge {}: {} {}",
            b.name,
            if b.up { "up" } else { "DOWN" },
            b.addresses.join(", ")
        ),
        None => println!("bridge {}: absent", env.config.network.bridge),
    }
    println!(
        "ngircd: config {}, {}",
        if status.ngircd_config {
            "present"
        } else {
            "absent"
        },
        match status.ngircd_pid {
            Some(pid) => format!("running (pid {pid})"),
            None => "not running".into(),
        }
    );
    println!(
        "systemd unit: {}{}",
        if status.unit_file {
            "present"
        } else {
            "absent"
        },
        match status.unit_enabled {
            Some(true) => ", enabled",
            Some(false) => ", not enabled",
            None => "",
        }
    );
    super::gc::print_vms(&status.vms);
    match &status.thin_pool {
        ThinPoolStatus::Absent => println!("thin pool: none (VM disks are reflink/copy clones)"),
        ThinPoolStatus::Inactive => println!(
            "thin pool: recorded but not active (re-activated by the next command that needs it)"
        ),
        ThinPoolStatus::Active {
            usage,
            data_percent,
            metadata_percent,
            vm_disks,
            max_used_percent,
        } => println!(
            "thin pool: data {data_percent:.1}% ({}/{} blocks), metadata {metadata_percent:.1}% ({}/{}), {vm_disks} VM disk(s), mode {}; new VMs refused at {max_used_percent}%",
            usage.used_data_blocks,
            usage.total_data_blocks,
            usage.used_metadata_blocks,
            usage.total_metadata_blocks,
            usage.mode
        ),
        ThinPoolStatus::Error { message } => println!("thin pool: {message}"),
    }
    super::runtime::print_status(env);
    Ok(0)
}

/// The first process whose command name is `name`.
fn process_named(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim_end() == name).then_some(pid)
    })
}
