//! Health and usage: every `[agents] health_secs` the runtime looks at each running agent — its
//! VMM alive, `fireclaw-guest health` answering over SSH — and drains its usage spool
//! (`fireclaw-guest usage --drain`) into the `usage` table, attributed by the VM it read from.
//! A death is announced in `#control` with the console's last lines, and the agent restarted per
//! its template's policy: backoff doubling from `backoff_secs` (at most 300 s), at most
//! `max_restarts` in a row before it is left failed. A guest that powered itself off is a clean
//! stop, not a death: only `always` restarts it ([`decide`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fireclaw_proto::UsageRecord;
use tokio::sync::{mpsc, watch};

use crate::agents::launch;
use crate::agents::manager::Manager;
use crate::agents::store::{self, AgentRow, AgentState};
use crate::agents::template::{Restart, RestartPolicy, Templates};
use crate::irc::client::News;
use crate::irc::overseer::{Reply, Target};
use crate::vm::Host;

/// Probes in a row the guest agent may miss (its VMM alive) before it counts as dead: one miss
/// is a slow guest, three is a hung one.
const MISSES: u32 = 3;
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Usage record ids remembered to drop a record a failed drain printed twice.
const SEEN_IDS: usize = 4096;
/// How often the VMM is looked at while a probe waits on the guest.
const VMM_WATCH: Duration = Duration::from_millis(500);

/// What the checker remembers between rounds, per agent.
#[derive(Default)]
struct Track {
    misses: u32,
    /// Restarts in a row (reset once the agent was healthy for a whole round after a restart).
    streak: u32,
    not_before: Option<Instant>,
}

pub struct Checker {
    manager: Arc<Manager>,
    announce: mpsc::Sender<News>,
    control: String,
    track: HashMap<String, Track>,
    seen: (HashSet<String>, VecDeque<String>),
}

/// One round's finding about one agent.
enum Finding {
    Healthy(Vec<UsageRecord>),
    Missed(String),
    Dead(String),
}

impl Checker {
    pub fn new(manager: Arc<Manager>, announce: mpsc::Sender<News>, control: String) -> Checker {
        Checker {
            manager,
            announce,
            control,
            track: HashMap::new(),
            seen: (HashSet::new(), VecDeque::new()),
        }
    }

    /// Runs rounds until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let every = Duration::from_secs(self.manager.host().config.agents.health_secs.into());
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.round().await;
        }
    }

    async fn say(&self, line: String) {
        tracing::info!("agents: {line}");
        let _ = self
            .announce
            .send(News::Say(Reply {
                to: Target::Channel(self.control.clone()),
                lines: vec![line],
            }))
            .await;
    }

    /// One look at every agent that should be running.
    pub async fn round(&mut self) {
        let host = self.manager.host();
        let h = host.clone();
        let rows = match tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<AgentRow>> {
            Ok(store::list(&h.db()?)?)
        })
        .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return tracing::warn!("agents: health round: {e:#}"),
            Err(e) => return tracing::warn!("agents: health round: {e}"),
        };
        self.track
            .retain(|name, _| rows.iter().any(|r| &r.name == name));
        for row in rows {
            if row.state != AgentState::Running && row.state != AgentState::Starting {
                continue;
            }
            // An agent whose restart is waiting out its backoff, or one still starting.
            if row.state == AgentState::Starting {
                if let Some(t) = self.track.get(&row.name) {
                    if t.not_before.is_some_and(|nb| Instant::now() >= nb) {
                        self.restart(&host, &row).await;
                    }
                }
                continue;
            }
            let Some(vm) = row.vm_id.clone() else {
                continue;
            };
            let finding = self.probe(&host, &vm).await;
            match finding {
                Finding::Healthy(records) => {
                    let t = self.track.entry(row.name.clone()).or_default();
                    t.misses = 0;
                    if t.not_before.take().is_none() {
                        t.streak = 0;
                    }
                    self.store_usage(&host, &row.name, records).await;
                }
                Finding::Missed(why) => {
                    let t = self.track.entry(row.name.clone()).or_default();
                    t.misses += 1;
                    tracing::info!(agent = %row.name, "agents: health probe missed ({}/{MISSES}): {why}", t.misses);
                    if t.misses >= MISSES {
                        self.died(
                            &host,
                            &row,
                            &vm,
                            format!("its guest agent stopped answering ({why})"),
                            None,
                        )
                        .await;
                    }
                }
                Finding::Dead(why) => {
                    let vmm = VmmEnd::from_reason(&why);
                    self.died(&host, &row, &vm, why, Some(vmm)).await
                }
            }
        }
    }

    /// Looks at one agent's VM: its VMM first, then the guest agent over SSH. The VMM is watched
    /// while the probe runs, so a VM killed mid-probe is found dead at once rather than after
    /// the SSH timeouts (a dead guest never answers).
    async fn probe(&self, host: &Host, vm: &str) -> Finding {
        if let Some(why) = self.vmm_exited(host, vm).await {
            return Finding::Dead(why);
        }
        let (h, id) = (host.clone(), vm.to_string());
        let mut exec = tokio::task::spawn_blocking(move || {
            launch::exec(&h, &id, &format!("fireclaw-guest health && {DRAIN}"))
        });
        let result = loop {
            tokio::select! {
                r = &mut exec => break r,
                _ = tokio::time::sleep(VMM_WATCH) => {
                    if let Some(why) = self.vmm_exited(host, vm).await {
                        return Finding::Dead(why);
                    }
                }
            }
        };
        let missed = match result {
            Ok(Ok((0, out))) => return Finding::Healthy(parse_drain(&out)),
            Ok(Ok((code, out))) => {
                format!("exit {code}: {}", out.lines().last().unwrap_or("").trim())
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        // The VMM may have died as the probe ended: that is a death, not a miss.
        match self.vmm_exited(host, vm).await {
            Some(why) => Finding::Dead(why),
            None => Finding::Missed(missed),
        }
    }

    async fn vmm_exited(&self, host: &Host, vm: &str) -> Option<String> {
        let (m, h, id) = (self.manager.clone(), host.clone(), vm.to_string());
        tokio::task::spawn_blocking(move || m.vmm_exited(&h, &id))
            .await
            .unwrap_or(None)
    }

    async fn store_usage(&mut self, host: &Host, agent: &str, records: Vec<UsageRecord>) {
        let fresh: Vec<UsageRecord> = records
            .into_iter()
            .filter(|r| {
                if !self.seen.0.insert(r.id.clone()) {
                    return false;
                }
                self.seen.1.push_back(r.id.clone());
                if self.seen.1.len() > SEEN_IDS {
                    if let Some(old) = self.seen.1.pop_front() {
                        self.seen.0.remove(&old);
                    }
                }
                true
            })
            .collect();
        if fresh.is_empty() {
            return;
        }
        let (h, agent) = (host.clone(), agent.to_string());
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let db = h.db()?;
            for r in fresh {
                store::add_usage(&db, &agent, &usage_row(r))?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = r.map_err(anyhow::Error::from) {
            tracing::warn!("agents: storing usage: {e:#}");
        }
    }

    /// Announces how the VM ended, removes it and restarts the agent, leaves it stopped or gives
    /// up, per [`decide`]. `vmm` is how the VMM ended, when it did (`None`: the guest hung, or a
    /// restart failed).
    async fn died(
        &mut self,
        host: &Host,
        row: &AgentRow,
        vm: &str,
        why: String,
        vmm: Option<VmmEnd>,
    ) {
        // The round listed the agents before probing them: one destroyed meanwhile (its VM
        // stopped, its row going) is not a death.
        if !self.still_current(host, &row.name, vm).await {
            tracing::info!(agent = %row.name, "agents: gone or changed since the round began; not a death");
            self.track.remove(&row.name);
            return;
        }
        let console = if vm.is_empty() {
            Vec::new()
        } else {
            self.manager.console(host, vm)
        };
        let end = match vmm {
            Some(v) => end_of(v, &console),
            None => End::Crash,
        };
        let (h, id) = (host.clone(), vm.to_string());
        let _ = tokio::task::spawn_blocking(move || crate::pool::clone::gc_vm(&h, &id)).await;
        self.manager.forget_vm(vm);
        let templates = Templates::load(&[&Manager::templates_dir(host)]);
        let restart = templates
            .as_ref()
            .ok()
            .and_then(|t| t.get(&row.template).ok())
            .map(|t| t.restart.clone());
        let t = self.track.entry(row.name.clone()).or_default();
        t.misses = 0;
        let decision = decide(restart.as_ref(), end, t.streak);
        if let Decision::Restart { after } = decision {
            t.not_before = Some(Instant::now() + after);
        }
        if end == End::Crash {
            self.say(format!(
                "Agent {} died: {why}.{}",
                row.name,
                if console.is_empty() {
                    String::new()
                } else {
                    format!(" Console: {}", console.join(" | "))
                }
            ))
            .await;
        }
        // Its connection may have died with the VM (a guest agent that had no time to QUIT), and
        // ngircd holds the nick until a ping timeout: a restarted agent needs it back, and a
        // stopped one should not seem present.
        let _ = self
            .announce
            .send(News::Kill {
                nick: row.name.clone(),
                reason: match decision {
                    Decision::Restart { .. } => "its VM ended; fireclaw restarts it",
                    _ => "its VM ended",
                }
                .into(),
            })
            .await;
        let (state, error) = match (&decision, end) {
            (Decision::Stop, _) => (AgentState::Stopped, None),
            (Decision::Restart { .. }, End::Clean) => (AgentState::Starting, None),
            (Decision::Restart { .. }, End::Crash) => (AgentState::Starting, Some(why.clone())),
            (Decision::GiveUp(_), End::Clean) => (AgentState::Failed, None),
            (Decision::GiveUp(_), End::Crash) => (AgentState::Failed, Some(why.clone())),
        };
        let (h, name) = (host.clone(), row.name.clone());
        let _ = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            store::set_state(&h.db()?, &name, state, None, error.as_deref())?;
            Ok(())
        })
        .await;
        let clean = format!(
            "{}'s VM shut down cleanly (its guest powered off)",
            row.name
        );
        let policy = restart.as_ref().map(|r| r.policy.as_str()).unwrap_or("?");
        let line = match (decision, end) {
            (Decision::Restart { after }, End::Crash) => {
                format!("{} restarts in about {} s.", row.name, eta(host, after))
            }
            (Decision::Restart { after }, End::Clean) => format!(
                "{clean}; restart policy {policy}: it restarts in about {} s.",
                eta(host, after)
            ),
            (Decision::Stop, _) => {
                format!("{clean}; restart policy {policy}: it stays stopped.")
            }
            (Decision::GiveUp(reason), End::Crash) => {
                format!("{} is left stopped: {reason}.", row.name)
            }
            (Decision::GiveUp(reason), End::Clean) => {
                format!("{clean}; it is left stopped: {reason}.")
            }
        };
        self.say(line).await;
    }

    /// Whether agent `name` still is as the round found it: running on VM `vm`, or (`vm` empty)
    /// waiting for a restart.
    async fn still_current(&self, host: &Host, name: &str, vm: &str) -> bool {
        let (h, name) = (host.clone(), name.to_string());
        let row = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<AgentRow>> {
            Ok(store::get(&h.db()?, &name)?)
        })
        .await;
        match row {
            Ok(Ok(Some(r))) => is_current(&r, vm),
            Ok(Ok(None)) => false,
            // Unknown: go on as before.
            Ok(Err(e)) => {
                tracing::warn!("agents: re-reading an agent: {e:#}");
                true
            }
            Err(e) => {
                tracing::warn!("agents: re-reading an agent: {e}");
                true
            }
        }
    }

    /// Starts a dead agent again (its workspace kept) and counts the restart.
    async fn restart(&mut self, host: &Host, row: &AgentRow) {
        let templates = match Templates::load(&[&Manager::templates_dir(host)]) {
            Ok(t) => t,
            Err(e) => return tracing::warn!("agents: restarting {}: {e}", row.name),
        };
        let Ok(tpl) = templates.get(&row.template).cloned() else {
            return;
        };
        if let Some(t) = self.track.get_mut(&row.name) {
            t.streak += 1;
            t.not_before = None;
        }
        let (h, r, m) = (host.clone(), row.clone(), self.manager.clone());
        let result =
            tokio::task::spawn_blocking(move || -> Result<Option<(String, u32)>, String> {
                let db = h.db().map_err(|e| format!("{e:#}"))?;
                // Destroyed while it waited out its backoff: nothing to restart.
                match store::get(&db, &r.name).map_err(|e| e.to_string())? {
                    Some(now) if is_current(&now, "") => {}
                    _ => return Ok(None),
                }
                let count = store::count_restart(&db, &r.name).map_err(|e| e.to_string())?;
                match m.start_vm(&h, &r, &tpl) {
                    Ok((kept, _)) => {
                        let id = m.hold(kept);
                        store::set_state(&db, &r.name, AgentState::Running, Some(&id), None)
                            .map_err(|e| e.to_string())?;
                        Ok(Some((id, count)))
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        let _ =
                            store::set_state(&db, &r.name, AgentState::Starting, None, Some(&e));
                        Err(e)
                    }
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok(None) => {
                tracing::info!(agent = %row.name, "agents: gone before its restart");
                self.track.remove(&row.name);
            }
            Ok(Some((vm, count))) => {
                // Healthy rounds from here on reset the streak.
                if let Some(t) = self.track.get_mut(&row.name) {
                    t.not_before = Some(Instant::now());
                }
                self.say(format!(
                    "{} restarted (VM {vm}; {count} restarts so far).",
                    row.name
                ))
                .await
            }
            Err(e) => {
                self.say(format!("{} could not be restarted: {e}", row.name))
                    .await;
                let vm = String::new();
                self.died(host, row, &vm, e, None).await;
            }
        }
    }
}

/// Whether `now` (the agent's row as it is) still is what the health round acted on: running on
/// VM `vm`, or, `vm` empty, waiting for a restart.
fn is_current(now: &AgentRow, vm: &str) -> bool {
    if vm.is_empty() {
        now.state == AgentState::Starting && now.vm_id.is_none()
    } else {
        now.state == AgentState::Running && now.vm_id.as_deref() == Some(vm)
    }
}

/// How an agent's VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The guest powered itself off (`poweroff`, or fireclaw-init's stop on SIGTERM).
    Clean,
    /// Anything else: the VMM killed or failing, a kernel panic, a guest that stopped answering.
    Crash,
}

/// How the VMM process ended, as far as this runtime can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmEnd {
    /// It exited with this code (a VMM this runtime started and reaped).
    Code(i32),
    /// A signal killed it.
    Signal,
    /// Its exit status is not ours to see: a VM re-adopted after the runtime restarted (its
    /// parent is gone), or one the supervisor tore down first.
    Unknown,
}

impl VmmEnd {
    /// From [`Manager::vmm_exited`]'s reason (`exit code N`, `killed by SIG…`, or why it is
    /// unknown).
    pub fn from_reason(reason: &str) -> VmmEnd {
        if let Some(code) = reason.strip_prefix("exit code ") {
            return code.trim().parse().map_or(VmmEnd::Unknown, VmmEnd::Code);
        }
        if reason.starts_with("killed by ") {
            return VmmEnd::Signal;
        }
        VmmEnd::Unknown
    }
}

/// What the kernel prints last when the guest powers off (`kernel_power_off`, at emergency
/// level, so `quiet` does not hide it).
const POWER_DOWN: &str = "reboot: Power down";

/// A clean stop is a guest that powered off: its console's last lines show the kernel's power-off,
/// and the VMM, when its status is known, exited 0 (QEMU runs with `-no-reboot`). Exit code 0
/// alone is not enough: `panic=1` reboots a panicked kernel, which `-no-reboot` turns into exit 0
/// too (its console ends in the panic, not a power-off).
pub fn end_of(vmm: VmmEnd, console: &[String]) -> End {
    let powered_off = console.iter().any(|l| l.contains(POWER_DOWN));
    match vmm {
        VmmEnd::Code(0) | VmmEnd::Unknown if powered_off => End::Clean,
        _ => End::Crash,
    }
}

/// What to do about an agent whose VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this wait.
    Restart { after: Duration },
    /// Leave it `stopped`: it shut down cleanly and its policy does not restart that.
    Stop,
    /// Leave it `failed`, for this reason.
    GiveUp(String),
}

/// The restart policy applied: `on-failure` restarts a crash, `always` a crash or a clean stop,
/// `never` nothing; restarts wait out a backoff doubling from `backoff_secs` per restart in a row
/// (`streak`), at most [`MAX_BACKOFF`], and stop after `max_restarts` in a row. `restart` is the
/// template's `[restart]` (`None`: the template is gone).
pub fn decide(restart: Option<&Restart>, end: End, streak: u32) -> Decision {
    let Some(r) = restart else {
        return Decision::GiveUp("its template is gone".into());
    };
    let restarts = match (r.policy, end) {
        (RestartPolicy::Always, _) | (RestartPolicy::OnFailure, End::Crash) => true,
        (RestartPolicy::OnFailure, End::Clean) | (RestartPolicy::Never, End::Clean) => false,
        (RestartPolicy::Never, End::Crash) => {
            return Decision::GiveUp("its template says never restart".into())
        }
    };
    if !restarts {
        return Decision::Stop;
    }
    if streak >= r.max_restarts.get() {
        return Decision::GiveUp(format!("{streak} restarts in a row, the template's limit"));
    }
    Decision::Restart {
        after: Duration::from_secs(r.backoff_secs.get().into())
            .saturating_mul(1 << streak.min(16))
            .min(MAX_BACKOFF),
    }
}

/// Seconds until a restart decided now happens: at the first health round after the backoff.
fn eta(host: &Host, backoff: Duration) -> u64 {
    let every = u64::from(host.config.agents.health_secs).max(1);
    backoff.as_secs().div_ceil(every) * every
}

/// The command that empties a guest's usage spool onto stdout.
pub const DRAIN: &str = "fireclaw-guest usage --drain --config /etc/fireclaw/agent.toml";

/// A guest's record as the `usage` table keeps it.
pub fn usage_row(r: UsageRecord) -> store::Usage {
    store::Usage {
        at: i64::try_from(r.at_unix_ms / 1000).unwrap_or(i64::MAX),
        model: r.model,
        duration_ms: r.duration_ms,
        prompt_tokens: r.prompt_eval_count,
        eval_tokens: r.eval_count,
        channel: None,
        asker: None,
        summary: Some(format!(
            "{} request(s){}",
            r.requests,
            if r.ok { "" } else { ", ended in an error" }
        )),
    }
}

/// `fireclaw-guest health` then `usage --drain`: the health line, then one record per line.
/// Lines that are not records (the health answer, noise) are skipped.
pub fn parse_drain(out: &str) -> Vec<UsageRecord> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<UsageRecord>(l.trim()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_yields_the_records_and_skips_the_health_line() {
        let out = "{\"ok\":true,\"version\":\"0.1.0\",\"protocol\":1}\n\
                   {\"id\":\"1-2-3\",\"at_unix_ms\":1000,\"duration_ms\":5,\"model\":\"m\",\"prompt_eval_count\":11,\"eval_count\":7,\"requests\":2,\"ok\":true}\n\
                   garbage\n";
        let r = parse_drain(out);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].prompt_eval_count, r[0].eval_count), (11, 7));
    }

    fn restart(policy: RestartPolicy, backoff: i64, max: i64) -> Restart {
        Restart {
            policy,
            backoff_secs: backoff.try_into().unwrap(),
            max_restarts: max.try_into().unwrap(),
        }
    }

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_guest_that_powered_off_is_a_clean_stop_and_nothing_else_is() {
        let off = lines(&["fireclaw-init: stopping", "reboot: Power down"]);
        let panic = lines(&[
            "Kernel panic - not syncing: Attempted to kill init!",
            "Rebooting in 1 seconds..",
        ]);
        assert_eq!(end_of(VmmEnd::from_reason("exit code 0"), &off), End::Clean);
        // Re-adopted: no exit status to see; the console decides.
        assert_eq!(
            end_of(VmmEnd::from_reason("its VMM is gone"), &off),
            End::Clean
        );
        // panic=1 reboots and -no-reboot makes that exit 0 as well: a crash.
        assert_eq!(end_of(VmmEnd::Code(0), &panic), End::Crash);
        assert_eq!(end_of(VmmEnd::Code(0), &[]), End::Crash);
        assert_eq!(end_of(VmmEnd::Unknown, &[]), End::Crash);
        for reason in ["exit code 1", "killed by SIGKILL"] {
            assert_eq!(
                end_of(VmmEnd::from_reason(reason), &off),
                End::Crash,
                "{reason}"
            );
        }
        assert_eq!(VmmEnd::from_reason("exit code 3"), VmmEnd::Code(3));
        assert_eq!(
            VmmEnd::from_reason("not ours to wait for (ECHILD)"),
            VmmEnd::Unknown
        );
    }

    #[test]
    fn each_policy_restarts_what_it_names_and_only_that() {
        use RestartPolicy::*;
        let s = |secs| Decision::Restart {
            after: Duration::from_secs(secs),
        };
        let on_failure = restart(OnFailure, 2, 3);
        let always = restart(Always, 2, 3);
        let never = restart(Never, 2, 3);
        // A clean stop: only `always` restarts it.
        assert_eq!(decide(Some(&on_failure), End::Clean, 0), Decision::Stop);
        assert_eq!(decide(Some(&always), End::Clean, 0), s(2));
        assert_eq!(decide(Some(&never), End::Clean, 0), Decision::Stop);
        // A crash: `on-failure` and `always` restart it, `never` gives up.
        assert_eq!(decide(Some(&on_failure), End::Crash, 0), s(2));
        assert_eq!(decide(Some(&always), End::Crash, 0), s(2));
        assert!(matches!(
            decide(Some(&never), End::Crash, 0),
            Decision::GiveUp(r) if r.contains("never")
        ));
        // The same backoff and cap for both kinds of restart.
        for end in [End::Clean, End::Crash] {
            assert_eq!(decide(Some(&always), end, 2), s(8));
            assert!(matches!(
                decide(Some(&always), end, 3),
                Decision::GiveUp(r) if r.starts_with("3 restarts in a row")
            ));
        }
        assert_eq!(
            decide(Some(&restart(OnFailure, 300, 100)), End::Crash, 40),
            Decision::Restart { after: MAX_BACKOFF }
        );
        assert!(matches!(
            decide(None, End::Clean, 0),
            Decision::GiveUp(r) if r.contains("template is gone")
        ));
    }
}
