//! Supervising one machine through one job: create it, wait for SSH, run a command, and end it,
//! whatever happens first (the command finishing, a stop request, the deadline, the VMM dying).
//! The caller gets data back ([`RunReport`]) and decides what to print and which exit code it
//! means; `fireclaw run` is such a caller, the runtime's pool another.
//!
//! Stop requests are a future the caller hands in (`fireclaw run` makes it from SIGINT, SIGTERM
//! and SIGHUP, the runtime from a cancellation), so this module installs no signal handler. The
//! future is polled from the start: a request that arrives while the machine is being created is
//! remembered, and acted on once there is a whole machine to tear down in order; one that came
//! before creation starts means no machine is made at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;

use super::ssh::{self, Exit, SshError};
use super::{Host, KeptMachine, LaunchOptions, Machine, Timings};

/// Why a machine was stopped before its command finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The caller asked (`fireclaw run`: the signal's number, so 2 for SIGINT).
    Requested(i32),
    /// The deadline passed: before SSH answered (`booted` false) or while the command ran.
    Timeout,
    /// The VMM process exited on its own.
    VmmDied(String),
}

/// How the job ended.
#[derive(Debug)]
pub enum Outcome {
    /// The command ran to its end (its exit status may still be a failure).
    Finished(Exit),
    /// Stopped before the command finished; see [`RunReport::booted`] for the phase.
    Stopped(Stop),
    /// The machine could not be made (nothing of it is left), or its SSH target not built.
    Failed(anyhow::Error),
    /// SSH failed: reaching the guest (`booted` false) or while running the command.
    Ssh(SshError),
}

/// What to run in the machine.
#[derive(Debug, Clone)]
pub struct Job {
    /// A shell command line (see [`ssh::shell_join`]); empty: only wait for SSH.
    pub command: String,
    /// When to give up, counted from the caller's start.
    pub deadline: Instant,
    /// Leave the machine running afterwards, if SSH answered.
    pub keep: bool,
}

/// Progress the caller may show as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    /// The machine exists and its VMM runs.
    Created {
        id: String,
        ip: Option<std::net::Ipv4Addr>,
        tap: String,
        disk: Option<crate::storage::CloneMethod>,
        clone_ms: u64,
    },
    /// SSH answered.
    SshReady { after: Duration },
}

/// Everything about one supervised job, after the machine is gone (or kept).
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The machine's id, once it was created.
    pub vm: Option<String>,
    pub ip: Option<std::net::Ipv4Addr>,
    /// True once SSH answered.
    pub booted: bool,
    pub timings: Timings,
    pub exec_ms: u64,
    /// The guest console's last lines, kept when the outcome suggests the guest is to blame
    /// (SSH never answered, the VMM died, an SSH error). Read before the run dir is removed.
    pub console_tail: Option<String>,
    /// Set when `Job::keep` kept the machine running.
    pub kept: Option<KeptMachine>,
    /// Why keeping failed (the machine was destroyed instead; the error names what teardown
    /// could not remove).
    pub keep_error: Option<anyhow::Error>,
    /// What teardown could not remove (`gc` will).
    pub cleanup_errors: Vec<String>,
}

/// Creates a machine for `opts`, runs `job` in it while watching `stop`, the deadline and the
/// VMM, and destroys (or keeps) it. Creation and teardown run on the blocking pool, so this is
/// fine on any runtime. Command output goes to `out` and `err` as it arrives.
pub async fn run<S, O, E>(
    host: &Host,
    opts: &LaunchOptions,
    job: &Job,
    stop: Pin<&mut S>,
    out: &mut O,
    err: &mut E,
    events: &(dyn Fn(Event) + Send + Sync),
) -> RunReport
where
    S: Future<Output = i32> + ?Sized,
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    let mut stop = stop;
    let mut report = RunReport {
        outcome: Outcome::Failed(anyhow::anyhow!("not started")),
        vm: None,
        ip: None,
        booted: false,
        timings: Timings::default(),
        exec_ms: 0,
        console_tail: None,
        kept: None,
        keep_error: None,
        cleanup_errors: Vec::new(),
    };
    // A request that came before anything was made: make nothing.
    if let Some(n) = futures::FutureExt::now_or_never(stop.as_mut()) {
        report.outcome = Outcome::Stopped(Stop::Requested(n));
        return report;
    }

    let (h, o) = (host.clone(), opts.clone());
    let mut create = tokio::task::spawn_blocking(move || Machine::create(&h, &o));
    let mut pending: Option<Stop> = None;
    let created = loop {
        tokio::select! {
            r = &mut create => break r,
            n = stop.as_mut(), if pending.is_none() => pending = Some(Stop::Requested(n)),
        }
    };
    let mut machine = match created {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            report.outcome = Outcome::Failed(e.context("could not start the VM"));
            return report;
        }
        Err(e) => {
            report.outcome = Outcome::Failed(anyhow::anyhow!("VM creation task failed: {e}"));
            return report;
        }
    };
    report.vm = Some(machine.id.clone());
    report.ip = machine.ip;
    events(Event::Created {
        id: machine.id.clone(),
        ip: machine.ip,
        tap: machine.tap.clone(),
        disk: machine.disk.as_ref().map(|d| d.method),
        clone_ms: machine.timings.clone_ms,
    });

    let outcome = match pending {
        Some(stop) => Outcome::Stopped(stop),
        None => match machine.ssh_target() {
            Err(e) => Outcome::Failed(e),
            Ok(target) => {
                supervise(
                    &mut machine,
                    &target,
                    job,
                    stop.as_mut(),
                    out,
                    err,
                    events,
                    &mut report,
                )
                .await
            }
        },
    };
    let guest_to_blame = match &outcome {
        Outcome::Ssh(_) | Outcome::Stopped(Stop::VmmDied(_)) => true,
        Outcome::Stopped(Stop::Timeout) => !report.booted,
        _ => false,
    };
    if guest_to_blame {
        report.console_tail = Some(machine.console_tail());
    }
    report.outcome = outcome;
    machine.timings.boot_to_ssh_ms = report.timings.boot_to_ssh_ms;
    report.timings = machine.timings.clone();

    if job.keep && report.booted {
        // On error keep() destroys the machine, as if it had not been asked to keep it.
        match tokio::task::spawn_blocking(move || machine.keep()).await {
            Ok(Ok(k)) => report.kept = Some(k),
            Ok(Err(e)) => report.keep_error = Some(e),
            Err(e) => report
                .cleanup_errors
                .push(format!("teardown task failed: {e}")),
        }
    } else {
        report.cleanup_errors = tokio::task::spawn_blocking(move || machine.destroy())
            .await
            .unwrap_or_else(|e| vec![format!("teardown task failed: {e}")]);
    }
    report
}

/// How often the VMM is checked for an unexpected exit.
const VMM_POLL: Duration = Duration::from_millis(200);

/// Waits for SSH and runs the job's command, or stops at the first of a stop request, the
/// deadline, or the VMM's death. Leaves the machine as it is (the caller ends it).
#[allow(clippy::too_many_arguments)]
pub async fn supervise<S, O, E>(
    machine: &mut Machine,
    target: &ssh::Target,
    job: &Job,
    mut stop: Pin<&mut S>,
    out: &mut O,
    err: &mut E,
    events: &(dyn Fn(Event) + Send + Sync),
    report: &mut RunReport,
) -> Outcome
where
    S: Future<Output = i32> + ?Sized,
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    let boot_started = Instant::now();
    // Set once SSH answers, so a timeout or error can say which phase it interrupted.
    let ready_ms = AtomicU64::new(0);
    let exec_ms = AtomicU64::new(0);
    let work = async {
        let session = ssh::wait_ready(target, job.deadline).await?;
        let ready = boot_started.elapsed();
        ready_ms.store((ready.as_millis() as u64).max(1), Ordering::SeqCst);
        events(Event::SshReady { after: ready });
        let exec_start = Instant::now();
        let exit = if job.command.is_empty() {
            Exit::Code(0)
        } else {
            session.exec(&job.command, out, err).await?
        };
        exec_ms.store(exec_start.elapsed().as_millis() as u64, Ordering::SeqCst);
        session.close().await;
        Ok::<_, SshError>(exit)
    };
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            r = &mut work => break work_outcome(r, ready_ms.load(Ordering::SeqCst) > 0),
            n = stop.as_mut() => break Outcome::Stopped(Stop::Requested(n)),
            _ = tokio::time::sleep_until(job.deadline.into()) => break Outcome::Stopped(Stop::Timeout),
            _ = tokio::time::sleep(VMM_POLL) => {
                if let Some(why) = machine.vmm_exited() {
                    break Outcome::Stopped(Stop::VmmDied(why));
                }
            }
        }
    };
    // Leaving the select dropped the SSH future: the connection is closed before teardown.
    let ready = ready_ms.load(Ordering::SeqCst);
    report.booted = ready > 0;
    report.timings.boot_to_ssh_ms = ready;
    report.exec_ms = exec_ms.load(Ordering::SeqCst);
    outcome
}

/// What the SSH work's own result means. `wait_ready` gives up just before the deadline, a
/// moment before the deadline's own timer would fire: that is a timeout, not an SSH failure.
fn work_outcome(r: Result<Exit, SshError>, booted: bool) -> Outcome {
    match r {
        Ok(exit) => Outcome::Finished(exit),
        Err(SshError::NotReady { .. }) if !booted => Outcome::Stopped(Stop::Timeout),
        Err(e) => Outcome::Ssh(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_that_never_answered_by_the_deadline_is_a_timeout() {
        let not_ready = || SshError::NotReady {
            addr: "172.16.0.2:22".parse().unwrap(),
            waited: Duration::from_secs(5),
            last: "connection refused".into(),
        };
        assert!(matches!(
            work_outcome(Err(not_ready()), false),
            Outcome::Stopped(Stop::Timeout)
        ));
        // Other SSH failures stay SSH failures.
        let refused = SshError::AuthRejected {
            addr: "172.16.0.2:22".parse().unwrap(),
            user: "root".into(),
        };
        assert!(matches!(
            work_outcome(Err(refused), false),
            Outcome::Ssh(SshError::AuthRejected { .. })
        ));
        assert!(matches!(
            work_outcome(Ok(Exit::Code(3)), true),
            Outcome::Finished(Exit::Code(3))
        ));
    }
}
