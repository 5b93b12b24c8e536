//! `fireclaw run`: one command in a fresh microVM, then the VM is gone. The work lives in
//! [`crate::vm::supervise`]; this command prepares it, hands it the signals as stop requests, and
//! prints the report and maps it to an exit code.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::RunArgs;
use crate::commands::Env;
use crate::vm::image::{self, Overrides};
use crate::vm::ssh::{self, Exit};
use crate::vm::supervise::{self, Event, Job, Outcome, RunReport, Stop};
use crate::vm::{self, Host, LaunchOptions};
use crate::vmm::Boot;

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

/// Runs the command; every error is fireclaw's own and is printed here as exit code 125.
pub fn run(env: &Env, args: &RunArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some(code) = rt.block_on(through_runtime(env, args)) {
        return Ok(code);
    }
    Ok(rt.block_on(run_async(env, args)))
}

/// When the runtime answers and the run asks for nothing a pooled VM cannot give (its own
/// kernel, size or engine, `--keep`, `--json`), the runtime serves it: a pooled VM, else a
/// restore, else its own cold boot. `None`: boot here, as without a runtime.
async fn through_runtime(env: &Env, args: &RunArgs) -> Option<i32> {
    use fireclaw_proto::control::{Origin, RunRequest, RunResult};
    let say = |m: &str| {
        if env.verbose {
            eprintln!("fireclaw: {m}");
        }
    };
    let own = [
        (args.keep, "--keep"),
        (args.json, "--json"),
        (args.kernel.is_some(), "--kernel"),
        (args.initrd.is_some(), "--initrd"),
        (args.cpus.is_some(), "--cpus"),
        (args.mem.is_some(), "--mem"),
        (args.vmm.is_some(), "--vmm"),
    ];
    if let Some((_, flag)) = own.iter().find(|(set, _)| *set) {
        say(&format!("{flag} asks for a VM of its own: booting it here"));
        return None;
    }
    if !env.config.images.recipes.contains(&args.image) {
        say(&format!(
            "image {} is not one the runtime pools: booting it here",
            args.image
        ));
        return None;
    }
    let client = super::runtime::client(env);
    if let Err(e) = client.health().await {
        say(&format!("{e}; booting a VM here (cold)"));
        return None;
    }
    let req = RunRequest {
        argv: args.command.clone(),
        image: Some(args.image.clone()),
        policy: Some(args.policy.as_str().into()),
        timeout_secs: Some(args.timeout.min(3600)),
    };
    let body = serde_json::to_vec(&req).ok()?;
    let answer = client
        .json::<RunResult>(hyper::Method::POST, "/v1/run", Some(body))
        .await;
    match answer {
        Ok(r) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(r.stdout.as_bytes());
            let _ = std::io::stderr().write_all(r.stderr.as_bytes());
            let origin = match r.origin {
                Origin::Pool => "pool",
                Origin::Restore => "restore",
                Origin::Cold => "cold",
            };
            say(&format!(
                "VM {} from the runtime (origin {origin}): {} ms to the result{}",
                r.vm_id,
                r.elapsed_ms,
                if r.truncated {
                    "; output truncated"
                } else {
                    ""
                }
            ));
            Some(r.exit_code)
        }
        Err(crate::runtime::client::ClientError::Api {
            status: 504,
            message,
        }) => {
            eprintln!("fireclaw: {message}");
            Some(EXIT_TIMEOUT)
        }
        Err(e) => {
            eprintln!("fireclaw: the runtime could not run it: {e}");
            Some(EXIT_FIRECLAW)
        }
    }
}

async fn run_async(env: &Env, args: &RunArgs) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    // Installed before anything else, so a signal at any moment ends the run as 128+N, with
    // whatever exists torn down (nothing is made once a signal has arrived).
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
    let stop = async move {
        tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
        }
    };
    tokio::pin!(stop);

    // Blocking work (database, image files): tell the runtime, which moves other tasks away.
    let prepared = tokio::task::block_in_place(|| prepare(env, args));
    // A signal that came meanwhile ends the run now, whether or not preparing worked.
    if let Some(n) = futures::FutureExt::now_or_never(stop.as_mut()) {
        eprintln!(
            "fireclaw: {} received before the VM was created",
            signal_name(n)
        );
        return 128 + n;
    }
    let (host, opts) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_FIRECLAW;
        }
    };

    let job = Job {
        command: ssh::shell_join(&args.command),
        deadline,
        keep: args.keep,
    };
    let verbose = env.verbose;
    let (vmm, policy) = (opts.vmm.as_str(), opts.policy.as_str());
    let events = move |e: Event| {
        if !verbose {
            return;
        }
        match e {
            Event::Created {
                id,
                ip,
                tap,
                disk,
                clone_ms,
            } => eprintln!(
                "fireclaw: VM {id} ({vmm}, {policy}) at {} on {tap}, disk {} in {clone_ms} ms",
                ip.map(|i| i.to_string()).unwrap_or_default(),
                disk.map(|d| format!("{d:?}")).unwrap_or_default(),
            ),
            Event::SshReady { after } => {
                eprintln!("fireclaw: SSH ready after {} ms", after.as_millis())
            }
        }
    };
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let report = supervise::run(&host, &opts, &job, stop, &mut out, &mut err, &events).await;
    finish(&host, &opts, args, verbose, report, started)
}

/// Everything before the VM exists; any failure here is fireclaw's (125) and leaves nothing.
fn prepare(env: &Env, args: &RunArgs) -> anyhow::Result<(Host, LaunchOptions)> {
    if !env.privileged {
        anyhow::bail!("fireclaw run creates a tap device and needs root: run it with sudo");
    }
    // Before anything opens (and so creates) the state database.
    env.require_provisioned()?;
    let host = super::engines::host(env)?;
    // Leftovers of a fireclaw that was killed: clean them before making more.
    let report = vm::gc(&host, false, None).context("cleaning up after an earlier fireclaw")?;
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
    let vmm = args.vmm.unwrap_or_else(|| super::engines::default_vmm(env));
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
        extra_disk: None,
    };
    Ok((host, opts))
}

fn signal_name(n: i32) -> &'static str {
    match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Prints what happened and returns the exit code (docs/run.md's table).
fn finish(
    host: &Host,
    opts: &LaunchOptions,
    args: &RunArgs,
    verbose: bool,
    report: RunReport,
    started: Instant,
) -> i32 {
    let id = report.vm.clone().unwrap_or_default();
    let print_console = || {
        if let Some(tail) = report
            .console_tail
            .as_ref()
            .filter(|t| !t.trim().is_empty())
        {
            eprintln!("guest console (last lines):\n{tail}");
        }
    };
    let (code, what) = match &report.outcome {
        Outcome::Finished(exit) => {
            let what = match exit {
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
            (exit.shell_code(), what)
        }
        Outcome::Failed(e) => {
            eprintln!("error: {e:#}");
            (EXIT_FIRECLAW, format!("failed: {e}"))
        }
        Outcome::Ssh(e) => {
            let phase = if report.booted {
                "running the command"
            } else {
                "reaching the guest"
            };
            eprintln!("error: {phase}: {e}");
            print_console();
            (EXIT_FIRECLAW, format!("ssh error: {e}"))
        }
        Outcome::Stopped(Stop::Requested(n)) => {
            let name = signal_name(*n);
            if report.vm.is_some() {
                eprintln!("fireclaw: {name} received; destroyed VM {id}");
            } else {
                eprintln!("fireclaw: {name} received before the VM was created");
            }
            (128 + n, format!("interrupted by {name}"))
        }
        Outcome::Stopped(Stop::Timeout) => {
            eprintln!(
                "fireclaw: timed out after {}s ({}); destroyed VM {id}",
                args.timeout,
                if report.booted {
                    "the command was still running"
                } else {
                    "the guest never answered SSH"
                }
            );
            print_console();
            (EXIT_TIMEOUT, "timeout".into())
        }
        Outcome::Stopped(Stop::VmmDied(why)) => {
            eprintln!("error: the VMM exited unexpectedly ({why})");
            print_console();
            (EXIT_FIRECLAW, format!("vmm died: {why}"))
        }
    };
    let ip = report.ip.map(|i| i.to_string());
    if let Some(k) = &report.kept {
        let ip = ip.clone().unwrap_or_default();
        eprintln!(
            "fireclaw: VM {id} kept running at {ip}: ssh -i {} {}@{ip}\n          remove it with: fireclaw gc --vm {id}",
            host.key_path().display(),
            opts.image.user,
        );
        tracing::debug!(pid = k.pid(), "kept VMM");
    }
    if let Some(e) = &report.keep_error {
        eprintln!("error: could not mark VM {id} kept, so it was destroyed: {e:#}");
    }
    for e in &report.cleanup_errors {
        eprintln!("warning: cleanup of VM {id}: {e} (run `fireclaw gc`)");
    }
    let summary = Summary {
        vm: id,
        ip,
        vmm: opts.vmm.as_str(),
        policy: opts.policy.as_str(),
        clone_ms: report.timings.clone_ms,
        vmm_start_ms: report.timings.vmm_start_ms,
        boot_to_ssh_ms: report.timings.boot_to_ssh_ms,
        exec_ms: report.exec_ms,
        total_ms: started.elapsed().as_millis() as u64,
        exit_code: code,
        outcome: what,
    };
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

#[cfg(test)]
mod tests {

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
