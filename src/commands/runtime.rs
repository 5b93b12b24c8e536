//! `fireclaw runtime`: start the service (the work is in `crate::runtime`), and the runtime's
//! section of `fireclaw status`.

use std::path::Path;

use crate::cli::{Command, RuntimeArgs};
use crate::commands::Env;
use crate::runtime::{self, client};

/// `_args` is read by [`init_tracing`] before the environment is loaded.
pub fn run(env: &Env, _args: &RuntimeArgs, config_path: Option<&Path>) -> anyhow::Result<i32> {
    if !env.privileged {
        anyhow::bail!(
            "fireclaw runtime manages links, nftables rules and VMs and needs root: \
             `sudo systemctl start fireclaw`, or `sudo fireclaw runtime` in a terminal"
        );
    }
    runtime::run(runtime::Options {
        root: env.root.clone(),
        config: env.config.clone(),
        config_path: config_path.map(Path::to_path_buf),
        db_path: env.db_path(),
        engines: super::engines::engine_options(env)?,
    })?;
    Ok(0)
}

/// Logging for every command: RUST_LOG as usual; the runtime logs at `info` unless told
/// otherwise (`--log-level` over RUST_LOG), with journald priorities under systemd.
pub fn init_tracing(command: &Command) {
    use tracing_subscriber::EnvFilter;
    let filter = match command {
        Command::Runtime(a) => match (&a.log_level, std::env::var("RUST_LOG")) {
            // Validated by clap already.
            (Some(level), _) => {
                EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
            }
            (None, Ok(env)) if !env.is_empty() => EnvFilter::from_default_env(),
            // rtnetlink's parser warns about every attribute newer than itself: noise for operators.
            (None, _) => EnvFilter::new("info,netlink_packet_route=error"),
        },
        _ => EnvFilter::from_default_env(),
    };
    runtime::logging::init(filter, std::env::var_os("JOURNAL_STREAM").is_some());
}

/// The control socket's client for this root and configuration.
pub fn client(env: &Env) -> client::Client {
    client::Client::new(runtime::socket_path(&env.root, &env.config))
}

/// `fireclaw status`'s runtime lines: up (pid, uptime, VMs by state, pools) or not running.
pub fn print_status(env: &Env) {
    use fireclaw_proto::control::RuntimeStatus;
    let c = client(env);
    let got = client::block_on(c.json::<RuntimeStatus>(hyper::Method::GET, "/v1/status", None));
    match got {
        Ok(Ok(s)) => {
            let vms: Vec<String> = s
                .vms_by_state
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            println!(
                "runtime: up (pid {}, uptime {}), VMs: {}",
                s.pid,
                human_duration(s.uptime_secs),
                if vms.is_empty() {
                    "none".into()
                } else {
                    vms.join(", ")
                }
            );
            for p in &s.pools {
                println!("  pool {}: {}/{} ready", p.image, p.ready, p.target);
            }
        }
        Ok(Err(e)) if e.not_running() => println!("runtime: not running"),
        Ok(Err(e)) => println!("runtime: {e}"),
        Err(e) => println!("runtime: {e:#}"),
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A client error as the CLI reports it: the message, exit 1.
pub fn fail(e: impl std::fmt::Display) -> anyhow::Result<i32> {
    eprintln!("error: {e}");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(7322), "2h2m");
        assert_eq!(human_duration(90_000), "1d1h");
    }
}
