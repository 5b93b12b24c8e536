//! `fireclaw run`: one command in a fresh microVM, then the VM is gone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::RunArgs;
use crate::commands::Env;
use crate::vm::image::{self, Overrides};
use crate::vm::ssh::{self, Exit};
use crate::vm::{self, Host, LaunchOptions, Machine};
use crate::vmm::firecracker::Jailer;
use crate::vmm::{Boot, EngineOptions, VmmKind};

/// Exit code when the timeout ends the run (as timeout(1) does).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code when fireclaw itself failed (as `docker run` does), so it cannot be mistaken for
/// the command's own failure.
pub const EXIT_FIRECLAW: i32 = 125;

#[derive(Serialize)]
struct Summary {
    vm: String,
    ip: Option<String>,
    vmm: &'static str,
    policy: &'static str,
    clone_ms: u64,
    vmm_start_ms: u64,
    boot_to_ssh_ms: u64,
    exec_ms: u64,
    total_ms: u64,
    exit_code: i32,
    outcome: String,
}

pub fn host(env: &Env) -> anyhow::Result<Host> {
    Ok(Host {
        root: env.root.clone(),
        config: env.config.clone(),
        db_path: env.db_path(),
        engines: engine_options(env)?,
    })
}

/// The engines as provision installed them, with the environment's overrides:
/// `FIRECLAW_FIRECRACKER=PATH` (the binary) and `FIRECLAW_JAILER=UID:GID` (run it under
/// `<bin_dir>/jailer`, chroots in /srv/jailer, the jailer's default).
pub fn engine_options(env: &Env) -> anyhow::Result<EngineOptions> {
    engine_options_from(&env.root.host(&env.config.paths.bin_dir), |k| {
        std::env::var_os(k)
    })
}

fn engine_options_from(
    bin_dir: &std::path::Path,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> anyhow::Result<EngineOptions> {
    let mut opts = EngineOptions::installed(bin_dir);
    if let Some(fc) = var("FIRECLAW_FIRECRACKER") {
        opts.firecracker.binary = fc.into();
    }
    if let Some(v) = var("FIRECLAW_JAILER") {
        let v = v.to_string_lossy();
        let ids = v
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
        let Some((uid, gid)) = ids else {
            anyhow::bail!("FIRECLAW_JAILER must be UID:GID (two numbers), got {v:?}");
        };
        opts.firecracker.jailer = Some(Jailer {
            binary: bin_dir.join("jailer"),
            uid,
            gid,
            chroot_base: "/srv/jailer".into(),
        });
    }
    Ok(opts)
}

pub fn run(env: &Env, args: &RunArgs) -> anyhow::Result<i32> {
    if !env.privileged {
        anyhow::bail!("fireclaw run creates a tap device and needs root: run it with sudo");
    }
    let host = host(env)?;
    // Leftovers of a fireclaw that was killed: clean them before making more.
    let report = vm::gc(&host, false, None)?;
    if !report.removed.is_empty() {
        eprintln!(
            "fireclaw: removed {} VM(s) left by an earlier fireclaw that died: {}",
            report.removed.len(),
            report.removed.join(", ")
        );
    }
    for e in &report.errors {
        eprintln!("warning: {e}");
    }
    let vmm = args.vmm.unwrap_or_else(|| default_vmm(env));
    let image = image::resolve(
        &args.image,
        &env.root.host(&env.config.paths.image_dir),
        &Overrides {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
        },
    )?;
    let opts = LaunchOptions {
        vmm,
        vcpus: args.cpus.unwrap_or(env.config.pool.vcpus),
        mem_mib: args.mem.unwrap_or(env.config.pool.mem_mib),
        policy: args.policy,
        image,
        boot: Boot::Kernel,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(run_async(host, opts, args, env.verbose)))
}

fn default_vmm(env: &Env) -> VmmKind {
    let fc = env.root.host(&env.config.paths.bin_dir).join("firecracker");
    if fc.exists() {
        VmmKind::Firecracker
    } else {
        VmmKind::Qemu
    }
}

/// Why a run ended other than by the command finishing.
enum Stop {
    Signal(&'static str, i32),
    Timeout,
    VmmDied(String),
}

async fn run_async(host: Host, opts: LaunchOptions, args: &RunArgs, verbose: bool) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let (mut int, mut term, mut hup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("error: cannot install signal handlers");
            return EXIT_FIRECLAW;
        }
    };

    // Creation is blocking work (clone, netlink, spawn). A signal during it is remembered and
    // acted on as soon as the machine exists, so there is always something to tear down in order.
    let h = host.clone();
    let o = opts.clone();
    let mut create = tokio::task::spawn_blocking(move || Machine::create(&h, &o));
    let mut pending: Option<Stop> = None;
    let created = loop {
        tokio::select! {
            r = &mut create => break r,
            _ = int.recv() => pending = Some(Stop::Signal("SIGINT", 130)),
            _ = term.recv() => pending = Some(Stop::Signal("SIGTERM", 143)),
            _ = hup.recv() => pending = Some(Stop::Signal("SIGHUP", 129)),
        }
    };
    let mut machine = match created {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            eprintln!("error: could not start the VM: {e:#}");
            return EXIT_FIRECLAW;
        }
        Err(e) => {
            eprintln!("error: VM creation task failed: {e}");
            return EXIT_FIRECLAW;
        }
    };
    let id = machine.id.clone();
    if verbose {
        eprintln!(
            "fireclaw: VM {id} ({}, {}) at {} on {}, disk {} in {} ms",
            opts.vmm.as_str(),
            opts.policy.as_str(),
            machine.ip.map(|i| i.to_string()).unwrap_or_default(),
            machine.tap,
            machine
                .disk
                .as_ref()
                .map(|d| format!("{:?}", d.method))
                .unwrap_or_default(),
            machine.timings.clone_ms
        );
    }
    let target = match machine.ssh_target() {
        Ok(t) => t,
        Err(e) => return fail(machine, &format!("{e:#}")),
    };
    let command = ssh::shell_join(&args.command);
    let keep = args.keep;
    let boot_started = Instant::now();
    let mut exec_ms = 0u64;
    // Set once SSH answers, so a timeout or error can say which phase it interrupted.
    let ready_ms = std::sync::atomic::AtomicU64::new(0);
    let work = async {
        let session = ssh::wait_ready(&target, deadline).await?;
        let ready = boot_started.elapsed();
        ready_ms.store(
            (ready.as_millis() as u64).max(1),
            std::sync::atomic::Ordering::SeqCst,
        );
        if verbose {
            eprintln!("fireclaw: SSH ready after {} ms", ready.as_millis());
        }
        let exec_start = Instant::now();
        let exit = if command.is_empty() {
            Exit::Code(0)
        } else {
            let mut out = tokio::io::stdout();
            let mut err = tokio::io::stderr();
            session.exec(&command, &mut out, &mut err).await?
        };
        let exec = exec_start.elapsed();
        session.close().await;
        Ok::<_, ssh::SshError>((exit, ready, exec))
    };
    tokio::pin!(work);
    let outcome = if let Some(stop) = pending {
        Err(stop)
    } else {
        loop {
            tokio::select! {
                r = &mut work => break Ok(r),
                _ = int.recv() => break Err(Stop::Signal("SIGINT", 130)),
                _ = term.recv() => break Err(Stop::Signal("SIGTERM", 143)),
                _ = hup.recv() => break Err(Stop::Signal("SIGHUP", 129)),
                _ = tokio::time::sleep_until(deadline.into()) => break Err(Stop::Timeout),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(why) = machine.vmm_exited() {
                        break Err(Stop::VmmDied(why));
                    }
                }
            }
        }
    };
    let booted = ready_ms.load(std::sync::atomic::Ordering::SeqCst) > 0;
    let mut boot_ms = ready_ms.load(std::sync::atomic::Ordering::SeqCst);
    let ip = machine.ip.map(|i| i.to_string());
    let (code, what) = match outcome {
        Ok(Ok((exit, ready, exec))) => {
            boot_ms = ready.as_millis() as u64;
            exec_ms = exec.as_millis() as u64;
            machine.timings.boot_to_ssh_ms = boot_ms;
            let code = exit.shell_code();
            let what = match &exit {
                Exit::Code(c) => format!("exited {c}"),
                Exit::Signal(s) => {
                    eprintln!("fireclaw: the command was killed by SIG{s}");
                    format!("killed by SIG{s}")
                }
                Exit::Unknown => {
                    eprintln!("fireclaw: the connection closed without an exit status");
                    "no exit status".into()
                }
            };
            (code, what)
        }
        Ok(Err(e)) => {
            let phase = if booted {
                "running the command"
            } else {
                "reaching the guest"
            };
            eprintln!("error: {phase}: {e}");
            print_console(&machine);
            (EXIT_FIRECLAW, format!("ssh error: {e}"))
        }
        Err(Stop::Signal(name, code)) => {
            eprintln!("fireclaw: {name} received; destroying VM {id}");
            (code, format!("interrupted by {name}"))
        }
        Err(Stop::Timeout) => {
            eprintln!(
                "fireclaw: timed out after {}s ({}); destroying VM {id}",
                args.timeout,
                if booted {
                    "the command was still running"
                } else {
                    "the guest never answered SSH"
                }
            );
            if !booted {
                print_console(&machine);
            }
            (EXIT_TIMEOUT, "timeout".into())
        }
        Err(Stop::VmmDied(why)) => {
            eprintln!("error: the VMM exited unexpectedly ({why})");
            print_console(&machine);
            (EXIT_FIRECLAW, format!("vmm died: {why}"))
        }
    };
    // Leaving the select dropped the SSH future: the connection is closed before teardown.
    let summary = Summary {
        vm: id.clone(),
        ip: ip.clone(),
        vmm: opts.vmm.as_str(),
        policy: opts.policy.as_str(),
        clone_ms: machine.timings.clone_ms,
        vmm_start_ms: machine.timings.vmm_start_ms,
        boot_to_ssh_ms: boot_ms,
        exec_ms,
        total_ms: started.elapsed().as_millis() as u64,
        exit_code: code,
        outcome: what,
    };
    let kept = keep && booted;
    if kept {
        let key = host.key_path();
        match machine.keep() {
            Ok(()) => eprintln!(
                "fireclaw: VM {id} kept running at {}: ssh -i {} {}@{}\n          remove it with: fireclaw gc --vm {id}",
                ip.clone().unwrap_or_default(),
                key.display(),
                opts.image.user,
                ip.unwrap_or_default()
            ),
            Err(e) => eprintln!("error: could not mark VM {id} kept: {e:#}"),
        }
    } else {
        let errors = tokio::task::spawn_blocking(move || machine.destroy())
            .await
            .unwrap_or_else(|e| vec![format!("teardown task failed: {e}")]);
        for e in &errors {
            eprintln!("warning: cleanup of VM {id}: {e} (run `fireclaw gc`)");
        }
    }
    if verbose {
        eprintln!(
            "fireclaw: clone {} ms, VMM start {} ms, boot to SSH {} ms, exec {} ms, total {} ms",
            summary.clone_ms,
            summary.vmm_start_ms,
            summary.boot_to_ssh_ms,
            summary.exec_ms,
            summary.total_ms
        );
    }
    if args.json {
        if let Ok(j) = serde_json::to_string(&summary) {
            eprintln!("{j}");
        }
    }
    code
}

fn print_console(machine: &Machine) {
    let tail = machine.console_tail();
    if !tail.trim().is_empty() {
        eprintln!("guest console (last lines):\n{tail}");
    }
}

fn fail(mut machine: Machine, message: &str) -> i32 {
    eprintln!("error: {message}");
    for e in machine.destroy() {
        eprintln!("warning: cleanup of VM {}: {e}", machine.id);
    }
    EXIT_FIRECLAW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_options_come_from_the_caller_and_bad_jailer_ids_are_errors() {
        let bin = std::path::Path::new("/opt/fc");
        let none = engine_options_from(bin, |_| None).unwrap();
        assert_eq!(none.firecracker.binary, bin.join("firecracker"));
        assert!(none.firecracker.jailer.is_none());
        let set = engine_options_from(bin, |k| match k {
            "FIRECLAW_FIRECRACKER" => Some("/x/firecracker-v1.16.1-x86_64".into()),
            "FIRECLAW_JAILER" => Some("123:456".into()),
            _ => None,
        })
        .unwrap();
        let j = set.firecracker.jailer.unwrap();
        assert_eq!((j.uid, j.gid, j.binary), (123, 456, bin.join("jailer")));
        assert_eq!(
            set.firecracker.binary,
            std::path::PathBuf::from("/x/firecracker-v1.16.1-x86_64")
        );
        for bad in ["123", "a:b", "1:2:3", ""] {
            let e = engine_options_from(bin, |k| (k == "FIRECLAW_JAILER").then(|| bad.into()))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("FIRECLAW_JAILER must be UID:GID"), "{bad}: {e}");
        }
    }

    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::cli::RunArgs, String> {
        let mut argv = vec!["fireclaw", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Run(r),
                ..
            }) => Ok(r),
            Ok(_) => Err("not run".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn command_words_after_double_dash_are_kept_verbatim() {
        let r = parse(&[
            "--vmm", "qemu", "--", "sh", "-c", "exit 7", "--", "--policy",
        ])
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "exit 7", "--", "--policy"]);
        assert_eq!(r.vmm, Some(crate::vmm::VmmKind::Qemu));
        assert_eq!(r.policy, crate::net::policy::Policy::Full);
        assert_eq!(r.timeout, 300);
        let r = parse(&["--keep"]).unwrap();
        assert!(r.keep && r.command.is_empty());
    }

    #[test]
    fn hostile_arguments_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["uname"][..], "uname"),
            (&[][..], "CMD"),
            (&["--cpus", "0", "--", "true"][..], "--cpus"),
            (&["--cpus", "99", "--", "true"][..], "--cpus"),
            (&["--cpus", "-1", "--", "true"][..], "-1"),
            (&["--mem", "10", "--", "true"][..], "--mem"),
            (&["--mem", "4294967296", "--", "true"][..], "--mem"),
            (&["--timeout", "0", "--", "true"][..], "--timeout"),
            (&["--timeout", "1e3", "--", "true"][..], "--timeout"),
            (&["--policy", "FULL", "--", "true"][..], "--policy"),
            (&["--policy", "", "--", "true"][..], "--policy"),
            (&["--vmm", "kvm", "--", "true"][..], "--vmm"),
        ] {
            let err = parse(args).expect_err(&format!("{args:?} was accepted"));
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
