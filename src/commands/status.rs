//! `fireclaw status`: what provision has done, at a glance.

use serde::Serialize;

use crate::cli::JsonFlag;
use crate::commands::Env;
use crate::net::link;
use crate::provision;

#[derive(Serialize)]
struct Status {
    provisioned: bool,
    state_db: String,
    steps: Vec<StepStatus>,
    journal_entries: usize,
    bridge: Option<BridgeStatus>,
    ngircd_config: bool,
    /// Pid of a running ngircd, if any (from /proc: ngircd may run outside systemd).
    ngircd_pid: Option<u32>,
    unit_file: bool,
    /// `systemctl is-enabled` when systemd runs; `None` otherwise.
    unit_enabled: Option<bool>,
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
        provisioned: db.is_some(),
        state_db: env.db_path().display().to_string(),
        steps,
        journal_entries,
        bridge,
        ngircd_config: env.root.host(&env.config.paths.ngircd_conf).exists(),
        ngircd_pid: process_named("ngircd"),
        unit_file: env.root.host(&unit).exists(),
        unit_enabled: provision::systemd_active(&env.root)
            .then(|| provision::systemd::is_enabled(provision::systemd::UNIT_NAME)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    if !status.provisioned {
        println!("Not provisioned ({} does not exist). Run `fireclaw provision --dry-run` to see the plan.", status.state_db);
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
