//! Health and usage: every `[agents] health_secs` the runtime looks at each running agent — its
//! VMM alive, `fireclaw-guest health` answering over SSH — and drains its usage spool
//! (`fireclaw-guest usage --drain`) into the `usage` table, attributed by the VM it read from.
//! A death is announced in `#control` with the console's last lines, and the agent restarted per
//! its template's policy: backoff doubling from `backoff_secs` (at most 300 s), at most
//! `max_restarts` in a row before it is left failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fireclaw_proto::UsageRecord;
use tokio::sync::{mpsc, watch};

use crate::agents::manager::Manager;
use crate::agents::store::{self, AgentRow, AgentState};
use crate::agents::template::{RestartPolicy, Templates};
use crate::agents::{launch, workspace};
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
                        )
                        .await;
                    }
                }
                Finding::Dead(why) => self.died(&host, &row, &vm, why).await,
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

    /// Announces a death, removes the dead VM and restarts or gives up per the template.
    async fn died(&mut self, host: &Host, row: &AgentRow, vm: &str, why: String) {
        let console = if vm.is_empty() {
            Vec::new()
        } else {
            self.manager.console(host, vm)
        };
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
        let (h, id) = (host.clone(), vm.to_string());
        let _ = tokio::task::spawn_blocking(move || crate::pool::clone::gc_vm(&h, &id)).await;
        // Its connection died with the VM, but ngircd holds the nick until a ping timeout.
        let _ = self
            .announce
            .send(News::Kill {
                nick: row.name.clone(),
                reason: "its VM died; fireclaw restarts it".into(),
            })
            .await;
        let templates = Templates::load(&[&Manager::templates_dir(host)]);
        let restart = templates
            .as_ref()
            .ok()
            .and_then(|t| t.get(&row.template).ok())
            .map(|t| t.restart.clone());
        let t = self.track.entry(row.name.clone()).or_default();
        t.misses = 0;
        let give_up = match &restart {
            None => Some("its template is gone".to_string()),
            Some(r) if r.policy == RestartPolicy::Never => {
                Some("its template says never restart".into())
            }
            Some(r) if t.streak >= r.max_restarts.get() => Some(format!(
                "{} restarts in a row, the template's limit",
                t.streak
            )),
            Some(_) => None,
        };
        let state = if give_up.is_some() {
            AgentState::Failed
        } else {
            AgentState::Starting
        };
        if let Some(r) = restart.as_ref().filter(|_| give_up.is_none()) {
            let backoff = Duration::from_secs(r.backoff_secs.get().into())
                .saturating_mul(1 << t.streak.min(16))
                .min(MAX_BACKOFF);
            t.not_before = Some(Instant::now() + backoff);
        }
        let (h, name, err) = (host.clone(), row.name.clone(), why.clone());
        let _ = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            store::set_state(&h.db()?, &name, state, None, Some(&err))?;
            Ok(())
        })
        .await;
        match give_up {
            Some(reason) => {
                self.say(format!("{} is left stopped: {reason}.", row.name))
                    .await
            }
            None => {
                let wait = t_wait(self.track.get(&row.name));
                self.say(format!("{} restarts in {wait} s.", row.name))
                    .await;
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
        let result = tokio::task::spawn_blocking(move || -> Result<(String, u32), String> {
            let db = h.db().map_err(|e| format!("{e:#}"))?;
            let count = store::count_restart(&db, &r.name).map_err(|e| e.to_string())?;
            let ws = workspace::path(&h.root.host(&h.config.paths.state_dir), &r.name);
            workspace::ensure(&ws).map_err(|e| e.to_string())?;
            match launch::start(&h, &r, &tpl) {
                Ok(kept) => {
                    let id = m.hold(kept);
                    store::set_state(&db, &r.name, AgentState::Running, Some(&id), None)
                        .map_err(|e| e.to_string())?;
                    Ok((id, count))
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    let _ = store::set_state(&db, &r.name, AgentState::Starting, None, Some(&e));
                    Err(e)
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok((vm, count)) => {
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
                self.died(host, row, &vm, e).await;
            }
        }
    }
}

fn t_wait(t: Option<&Track>) -> u64 {
    t.and_then(|t| t.not_before)
        .map(|nb| nb.saturating_duration_since(Instant::now()).as_secs())
        .unwrap_or(0)
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
}
