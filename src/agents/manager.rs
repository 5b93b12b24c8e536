//! The agent manager: what the overseer's commands (and, later, `fireclaw agent`) do to agents.
//! State is the database's `agents` row; each operation opens the database on a blocking thread,
//! so a slow disk never stalls the IRC connection's PING answers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::agents::{health, launch, store, template::Templates, workspace};
use crate::irc::client::Presence;
use crate::irc::command::{is_agent_name, is_model_name};
use crate::irc::overseer::{AgentOps, Answer};
use crate::vm::{Host, KeptMachine};

/// Where the manager gets the host context in effect (the runtime's, which SIGHUP may replace).
pub type HostFn = Arc<dyn Fn() -> Host + Send + Sync>;

#[derive(Clone)]
pub struct Manager {
    host: HostFn,
    /// The VMMs this runtime started, by VM id: it reaps them when they exit. (VMs re-adopted
    /// after a restart are not its children; their liveness is read from /proc.)
    children: Arc<Mutex<HashMap<String, KeptMachine>>>,
    /// The last console lines of VMs torn down before the health check looked (bounded).
    consoles: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// The warm pool, for `[agents] warm` templates (`None`: every agent starts cold).
    pool: Option<Arc<crate::pool::warm::Pool>>,
    /// Asks IRC whether a nick is on the server (`None`: no overseer, as in unit tests).
    presence: Option<Presence>,
}

/// Console tails remembered at most.
const CONSOLES: usize = 64;
/// Lines of a console tail.
const CONSOLE_LINES: usize = 3;

impl Manager {
    pub fn new(host: HostFn) -> Manager {
        Manager {
            host,
            children: Arc::new(Mutex::new(HashMap::new())),
            consoles: Arc::new(Mutex::new(HashMap::new())),
            pool: None,
            presence: None,
        }
    }

    /// Refuses new agents named after someone on IRC, asking the server through `presence`.
    pub fn with_presence(mut self, presence: Presence) -> Manager {
        self.presence = Some(presence);
        self
    }

    /// Refuses a name that is a nick on the IRC server right now (a person's: agents are
    /// checked against the `agents` table first). When IRC cannot be asked (the overseer is not
    /// connected, or the server does not answer) the name passes with a log line: refusing would
    /// make `fireclaw agent start` depend on IRC being up, and an agent whose nick is taken after
    /// all registers under an alternative (`NAME_`) rather than displacing anyone.
    async fn check_not_on_irc(&self, name: &str) -> Result<(), String> {
        let Some(p) = &self.presence else {
            return Ok(());
        };
        match p.online(name).await {
            Ok(Some(nick)) => Err(format!(
                "Sorry, {nick} is someone's nick on IRC right now; choose another name for the agent."
            )),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::info!("agents: cannot ask IRC whether {name} is on it ({e}); going on");
                Ok(())
            }
        }
    }

    /// Starts `row`'s VM (blocking): in a clone the warm pool keeps ready for its template, or
    /// cold when there is none or it cannot take the agent. The workspace is made first if it
    /// does not exist. Returns the kept VM and how it started (`warm` or `cold`).
    pub fn start_vm(
        &self,
        host: &Host,
        row: &store::AgentRow,
        tpl: &crate::agents::template::Template,
    ) -> Result<(KeptMachine, &'static str), String> {
        let ws = workspace::path(&host.root.host(&host.config.paths.state_dir), &row.name);
        workspace::ensure(&ws).map_err(|e| format!("its workspace: {e}"))?;
        let key = crate::pool::warm::AgentWant::key_for(&row.template);
        if let Some((pool, vm)) = self
            .pool
            .as_ref()
            .and_then(|p| p.take(&key).map(|vm| (p, vm)))
        {
            let id = vm.id.clone();
            match launch::start_warm(host, row, tpl, vm) {
                Ok(kept) => {
                    // Still known to the pool, so `ps` says it came from there, until the
                    // agent's VM goes ([`Manager::forget_vm`]).
                    tracing::info!(agent = %row.name, vm = %id, "agents: started warm");
                    return Ok((kept, "warm"));
                }
                Err(e) => {
                    pool.forget(&id);
                    tracing::warn!(
                        agent = %row.name,
                        "agents: the warm VM {id} could not take the agent ({e:#}); booting one cold"
                    )
                }
            }
        }
        let kept = launch::start(host, row, tpl).map_err(|e| format!("{e:#}"))?;
        tracing::info!(agent = %row.name, vm = %kept.id, "agents: started cold");
        Ok((kept, "cold"))
    }

    /// An agent's VM is gone: the pool, which made it if it started warm, forgets it.
    pub fn forget_vm(&self, vm: &str) {
        if let Some(p) = &self.pool {
            p.forget(vm);
        }
    }

    /// Agents of `[agents] warm` templates start from clones this pool keeps ready.
    pub fn with_pool(mut self, pool: Arc<crate::pool::warm::Pool>) -> Manager {
        self.pool = Some(pool);
        self
    }

    /// Remembers the end of a dying VM's console before its run dir is removed.
    pub fn note_console(&self, vm: &str, path: &std::path::Path) {
        let lines = console_tail(path, CONSOLE_LINES);
        if let Ok(mut c) = self.consoles.lock() {
            if c.len() >= CONSOLES {
                c.clear();
            }
            c.insert(vm.to_string(), lines);
        }
    }

    /// The last console lines of VM `vm`: from its run dir, else as noted when it was torn down.
    pub fn console(&self, host: &Host, vm: &str) -> Vec<String> {
        let noted = self.consoles.lock().ok().and_then(|mut c| c.remove(vm));
        let live = console_tail(&host.run_dir(vm).join("console.log"), CONSOLE_LINES);
        if live.is_empty() {
            noted.unwrap_or_default()
        } else {
            live
        }
    }

    /// The host context in effect.
    pub fn host(&self) -> Host {
        (self.host)()
    }

    /// Holds a VM this runtime started (to reap it); returns its id.
    pub fn hold(&self, vm: KeptMachine) -> String {
        let id = vm.id.clone();
        if let Ok(mut c) = self.children.lock() {
            c.insert(id.clone(), vm);
        }
        id
    }

    /// Whether VM `id`'s VMM still runs; `Some(why)` once it is gone.
    pub fn vmm_exited(&self, host: &Host, id: &str) -> Option<String> {
        if let Ok(mut c) = self.children.lock() {
            if let Some(k) = c.get_mut(id) {
                let gone = k.exited();
                if gone.is_some() {
                    c.remove(id);
                }
                return gone;
            }
        }
        let db = host.db().ok()?;
        // Gone from the table: torn down (the runtime's start-up after a reboot, or its
        // supervisor) before this check looked.
        let Some(r) = crate::vm::record::get(&db, id).ok()? else {
            return Some("its VM is gone".into());
        };
        if crate::vm::processes_mentioning(&r.run_dir.to_string_lossy()).is_empty() {
            Some("its VMM is gone".into())
        } else {
            None
        }
    }

    /// The templates in effect: built-in, then the operator's `<config_dir>/agents/*.toml`.
    pub fn templates_dir(host: &Host) -> PathBuf {
        host.root.host(&host.config.paths.config_dir).join("agents")
    }

    /// Runs `f` with the host and an open database on a blocking thread; any error becomes the
    /// sentence the asker sees.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Host, &crate::state::Db) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let host = (self.host)();
        tokio::task::spawn_blocking(move || {
            let db = host
                .db()
                .map_err(|e| format!("The state database is not available: {e:#}"))?;
            f(&host, &db)
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
    }
}

fn db_err(e: rusqlite::Error) -> String {
    tracing::warn!("agents: database: {e}");
    format!("The state database failed: {e}")
}

fn no_agent(name: &str) -> String {
    format!("There is no agent named {name}; !list shows them.")
}

/// Checks a name for a new agent: its form, and that no agent or the overseer already uses it
/// (IRC compares nicks case-insensitively, so the check does too).
pub fn check_new_name(host: &Host, db: &crate::state::Db, name: &str) -> Result<(), String> {
    if !is_agent_name(name) {
        return Err(format!(
            "{:?} is not a valid agent name: a letter, then letters, digits, - or _, at most 16.",
            name.chars().take(20).collect::<String>()
        ));
    }
    let irc = &host.config.irc;
    if name.eq_ignore_ascii_case(&irc.overseer_nick) || name.eq_ignore_ascii_case(&irc.operator) {
        return Err(format!(
            "{name} is the overseer's own name; choose another."
        ));
    }
    if let Some(taken) = store::list(db)
        .map_err(db_err)?
        .into_iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "An agent named {} already exists ({}); !destroy it first or choose another name.",
            taken.name,
            taken.state.as_str()
        ));
    }
    Ok(())
}

impl Manager {
    /// Pushes the agent's configuration again (with a new model, if given) and sends SIGHUP:
    /// `!model` and `fireclaw agent reload`. The agent stays on IRC.
    pub async fn reload(&self, name: &str, model: Option<&str>) -> Answer {
        if model.is_some_and(|m| !is_model_name(m)) {
            return Err("That is not a model name Ollama would know.".into());
        }
        let (name, model) = (name.to_string(), model.map(str::to_string));
        self.blocking(move |host, db| {
            let row = store::get(db, &name)
                .map_err(db_err)?
                .ok_or_else(|| no_agent(&name))?;
            if let Some(m) = &model {
                store::set_model(db, &row.name, m).map_err(db_err)?;
            }
            let row = store::get(db, &row.name)
                .map_err(db_err)?
                .ok_or_else(|| no_agent(&name))?;
            if let Some(vm) = &row.vm_id {
                let templates = Templates::load(&[&Manager::templates_dir(host)])
                    .map_err(|e| format!("The templates cannot be read: {e}"))?;
                let tpl = templates.get(&row.template).map_err(|e| e.to_string())?;
                launch::reconfigure(host, vm, &row, tpl).map_err(|e| {
                    format!(
                        "{} is set to {}, but the running agent did not take it: {e:#}",
                        row.name, row.model
                    )
                })?;
            }
            Ok(vec![match &model {
                Some(m) => format!("{} now thinks with {m}.", row.name),
                None => format!("{} reloaded its configuration.", row.name),
            }])
        })
        .await
    }
}

impl AgentOps for Manager {
    async fn invoke(&self, template: &str, name: Option<&str>, model: Option<&str>) -> Answer {
        let template = template.to_string();
        let name = name.unwrap_or(&template).to_string();
        let model = model.map(str::to_string);
        if model.as_deref().is_some_and(|m| !is_model_name(m)) {
            return Err("That is not a model name Ollama would know.".into());
        }
        let checked = name.clone();
        self.blocking(move |host, db| check_new_name(host, db, &checked))
            .await?;
        self.check_not_on_irc(&name).await?;
        let (row, tpl) = self
            .blocking(move |host, db| {
                // Again: another invoke may have taken the name meanwhile.
                check_new_name(host, db, &name)?;
                let templates = Templates::load(&[&Manager::templates_dir(host)])
                    .map_err(|e| format!("The templates cannot be read: {e}"))?;
                let tpl = templates.get(&template).map_err(|e| e.to_string())?.clone();
                let model = model
                    .or_else(|| (!tpl.model.is_empty()).then(|| tpl.model.clone()))
                    .unwrap_or_else(|| host.config.ollama.default_model.clone());
                store::insert(db, &name, &template, &model).map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        format!("An agent named {name} already exists.")
                    }
                    e => db_err(e),
                })?;
                let row = store::get(db, &name)
                    .map_err(db_err)?
                    .ok_or_else(|| no_agent(&name))?;
                Ok((row, tpl))
            })
            .await?;
        let name = row.name.clone();
        let me = self.clone();
        let started = self
            .blocking(move |host, db| {
                let result = me.start_vm(host, &row, &tpl);
                match result {
                    Ok((vm, how)) => {
                        let vm = me.hold(vm);
                        store::set_state(
                            db,
                            &row.name,
                            store::AgentState::Running,
                            Some(&vm),
                            None,
                        )
                        .map_err(db_err)?;
                        Ok(Ok((vm, row.model, how)))
                    }
                    Err(e) => {
                        store::set_state(db, &row.name, store::AgentState::Failed, None, Some(&e))
                            .map_err(db_err)?;
                        Ok(Err(e))
                    }
                }
            })
            .await?;
        match started {
            Ok((vm, model, how)) => Ok(vec![format!(
                "{name} is up (VM {vm}, model {model}, started {how}); it joins #agents in a moment."
            )]),
            Err(e) => Err(format!("{name} could not start: {e}")),
        }
    }

    async fn destroy(&self, name: &str, purge: bool) -> Answer {
        let name = name.to_string();
        let me = self.clone();
        self.blocking(move |host, db| {
            let row = store::get(db, &name)
                .map_err(db_err)?
                .ok_or_else(|| no_agent(&name))?;
            let mut notes = Vec::new();
            // Stopped before its VM goes, so the health checker does not take the stop for a
            // death (the row goes below whatever happens).
            store::set_state(db, &row.name, store::AgentState::Stopped, None, None)
                .map_err(db_err)?;
            if let Some(vm) = &row.vm_id {
                // What it did since the last health round counts too.
                if let Ok((0, out)) = launch::exec(host, vm, health::DRAIN) {
                    for r in health::parse_drain(&out) {
                        if let Err(e) = store::add_usage(db, &row.name, &health::usage_row(r)) {
                            tracing::warn!("agents: storing usage of {}: {e}", row.name);
                        }
                    }
                }
                if let Err(e) = launch::stop(host, vm) {
                    notes.push(format!("stopping its VM: {e:#}"));
                }
                // Killed by the stop: reap it.
                if let Ok(mut c) = me.children.lock() {
                    if let Some(mut k) = c.remove(vm) {
                        let _ = k.exited();
                    }
                }
                me.forget_vm(vm);
            }
            if purge {
                let path =
                    workspace::path(&host.root.host(&host.config.paths.state_dir), &row.name);
                if let Err(e) = workspace::purge(&path) {
                    notes.push(format!("purging its workspace: {e}"));
                }
            }
            store::remove(db, &row.name).map_err(db_err)?;
            let kept = if purge {
                "workspace purged"
            } else {
                "workspace kept"
            };
            if notes.is_empty() {
                Ok(vec![format!("{} destroyed ({kept}).", row.name)])
            } else {
                Err(format!("{} destroyed, but {}", row.name, notes.join("; ")))
            }
        })
        .await
    }

    async fn list(&self) -> Answer {
        self.blocking(|_, db| {
            let rows = store::list(db).map_err(db_err)?;
            if rows.is_empty() {
                return Ok(vec!["No agents; !invoke TEMPLATE starts one.".into()]);
            }
            Ok(rows
                .iter()
                .map(|a| {
                    format!(
                        "{} ({}, {}): {}{}",
                        a.name,
                        a.template,
                        a.model,
                        a.state.as_str(),
                        if a.restarts > 0 {
                            format!(", {} restarts", a.restarts)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect())
        })
        .await
    }

    async fn set_model(&self, name: &str, model: &str) -> Answer {
        self.reload(name, Some(model)).await
    }

    async fn models(&self) -> Answer {
        let url = format!(
            "{}/api/tags",
            (self.host)().config.ollama.url.trim_end_matches('/')
        );
        tokio::task::spawn_blocking(move || ollama_models(&url))
            .await
            .map_err(|e| format!("internal error: {e}"))?
    }

    async fn templates(&self) -> Answer {
        self.blocking(|host, _| {
            let templates = Templates::load(&[&Manager::templates_dir(host)])
                .map_err(|e| format!("The templates cannot be read: {e}"))?;
            Ok(templates
                .iter()
                .map(|(n, t)| format!("{n}: {}", t.description))
                .collect())
        })
        .await
    }

    async fn status(&self, name: Option<&str>) -> Answer {
        let name = name.map(str::to_string);
        self.blocking(move |_, db| match name {
            None => {
                let rows = store::list(db).map_err(db_err)?;
                let count = |s: store::AgentState| rows.iter().filter(|a| a.state == s).count();
                Ok(vec![format!(
                    "{} agents: {} running, {} starting, {} failed, {} stopped.",
                    rows.len(),
                    count(store::AgentState::Running),
                    count(store::AgentState::Starting),
                    count(store::AgentState::Failed),
                    count(store::AgentState::Stopped)
                )])
            }
            Some(name) => {
                let a = store::get(db, &name)
                    .map_err(db_err)?
                    .ok_or_else(|| no_agent(&name))?;
                let u = store::usage_totals(db, &a.name).map_err(db_err)?;
                let mut lines = vec![format!(
                    "{} ({}, {}): {}, VM {}, {} restarts",
                    a.name,
                    a.template,
                    a.model,
                    a.state.as_str(),
                    a.vm_id.as_deref().unwrap_or("none"),
                    a.restarts
                )];
                lines.push(format!(
                    "usage: {} interactions, {} prompt + {} eval tokens, {:.1} s thinking",
                    u.interactions,
                    u.prompt_tokens,
                    u.eval_tokens,
                    u.duration_ms as f64 / 1000.0
                ));
                if let Some(e) = &a.last_error {
                    lines.push(format!("last error: {e}"));
                }
                Ok(lines)
            }
        })
        .await
    }

    async fn logs(&self, name: &str, lines: u16) -> Answer {
        let name = name.to_string();
        self.blocking(move |_, db| {
            let a = store::get(db, &name)
                .map_err(db_err)?
                .ok_or_else(|| no_agent(&name))?;
            let rows = store::recent_usage(db, &a.name, lines.into()).map_err(db_err)?;
            if rows.is_empty() {
                return Ok(vec![format!("{} has not answered anyone yet.", a.name)]);
            }
            Ok(rows
                .iter()
                .map(|u| {
                    format!(
                        "{} {}: {:.1} s, {} prompt + {} eval tokens{}",
                        crate::agents::store::format_utc(u.at),
                        u.model,
                        u.duration_ms as f64 / 1000.0,
                        u.prompt_tokens,
                        u.eval_tokens,
                        u.summary
                            .as_deref()
                            .map(|s| format!(", {s}"))
                            .unwrap_or_default()
                    )
                })
                .collect())
        })
        .await
    }
}

/// Ollama's `/api/tags`: the model names, one per line.
fn ollama_models(url: &str) -> Answer {
    #[derive(serde::Deserialize)]
    struct Tags {
        models: Vec<Tag>,
    }
    #[derive(serde::Deserialize)]
    struct Tag {
        name: String,
    }
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .new_agent();
    let text = agent
        .get(url)
        .call()
        .map_err(|e| format!("Ollama did not answer: {e}"))?
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_string()
        .map_err(|e| format!("Ollama's model list could not be read: {e}"))?;
    let tags: Tags = serde_json::from_str(&text)
        .map_err(|e| format!("Ollama's model list is not what I expected: {e}"))?;
    if tags.models.is_empty() {
        return Ok(vec![
            "Ollama has no models; `ollama pull MODEL` adds one.".into()
        ]);
    }
    Ok(tags.models.into_iter().map(|t| t.name).collect())
}

/// The last `n` non-empty lines of a console log, printable only.
fn console_tail(path: &std::path::Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| fireclaw_proto::text::sanitize_line(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    lines
}
