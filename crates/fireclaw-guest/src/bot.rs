//! The IRC half and the process's life: connect to ngircd, join, decide which messages are
//! questions, hand them to the [`Brain`] on a worker task (so PINGs are answered while the model
//! thinks), send the answers paced and sanitized, reconnect with backoff, reload on SIGHUP, QUIT on
//! SIGTERM.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use irc::client::prelude::{Client, Command, Config as IrcConfig, Response};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::agent::Brain;
use crate::config::{Config, ConfigError};
use crate::text;

/// Questions waiting for the model; more get a "busy" line.
const QUEUE: usize = 8;
/// Channels joined by invitation, at most.
const INVITED_MAX: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a QUIT may take to reach the server before the process exits anyway.
const QUIT_GRACE: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often a waiting agent looks for its config file (the host's SIGHUP wakes it sooner).
const CONFIG_POLL: Duration = Duration::from_secs(1);
/// Paced below ngircd's flood penalty (about one command a second after a short burst): at most
/// this many lines in any window of [`BURST_WINDOW_SECS`].
const BURST_LINES: u32 = 4;
const BURST_WINDOW_SECS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A question for the worker.
#[derive(Debug)]
struct Job {
    conversation: String,
    reply_to: String,
    who: String,
    text: String,
}

/// Text for the IRC side to send to `target`.
#[derive(Debug)]
struct Outgoing {
    target: String,
    text: String,
}

struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

enum End {
    /// SIGTERM/SIGINT: QUIT was sent; exit.
    Terminated,
    /// The connection is gone (or must be remade); `welcomed` says whether it had registered.
    Reconnect { reason: String, welcomed: bool },
}

/// Runs the agent until SIGTERM or SIGINT. With `wait`, a config file that does not exist yet is
/// waited for (looked at on SIGHUP and every [`CONFIG_POLL`]).
pub async fn run(config_path: PathBuf, wait: bool) -> Result<(), RunError> {
    // First: the host's SIGHUP after it writes the config must not kill a waiting agent.
    let mut signals = Signals {
        hup: signal(SignalKind::hangup()).map_err(RunError::Signals)?,
        term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
    };
    if wait && !config_path.exists() {
        tracing::info!(
            "waiting for {} (fireclaw writes it when it starts this agent)",
            config_path.display()
        );
        while !config_path.exists() {
            tokio::select! {
                _ = tokio::time::sleep(CONFIG_POLL) => {}
                _ = signals.hup.recv() => {}
                _ = signals.term.recv() => return Ok(()),
                _ = signals.int.recv() => return Ok(()),
            }
        }
    }
    let config = crate::config::load(&config_path)?;
    tracing::info!(nick = %config.nick, server = %config.irc.server, model = %config.ollama.model, "starting");
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let (job_tx, job_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    tokio::spawn(worker(config_rx, job_rx, out_tx));
    let mut state = State {
        config_path,
        config_tx,
        invited: HashSet::new(),
        answered: HashMap::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&mut state, &mut signals, &job_tx, &mut out_rx).await {
            End::Terminated => return Ok(()),
            End::Reconnect { reason, welcomed } => {
                if welcomed {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!("IRC connection lost ({reason}); reconnecting in {backoff:?}");
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = signals.term.recv() => return Ok(()),
                        _ = signals.int.recv() => return Ok(()),
                        _ = signals.hup.recv() => { state.reload(); }
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What outlives one connection.
struct State {
    config_path: PathBuf,
    config_tx: watch::Sender<Arc<Config>>,
    invited: HashSet<String>,
    /// When each sender was last answered, for the per-sender rate limit.
    answered: HashMap<String, VecDeque<Instant>>,
}

impl State {
    fn config(&self) -> Arc<Config> {
        self.config_tx.borrow().clone()
    }

    /// Re-reads the configuration; a bad file is logged and the running one kept.
    fn reload(&mut self) -> Option<(Arc<Config>, Arc<Config>)> {
        match crate::config::load(&self.config_path) {
            Ok(new) => {
                let old = self.config();
                let new = Arc::new(new);
                tracing::info!(model = %new.ollama.model, "configuration reloaded");
                self.config_tx.send_replace(new.clone());
                Some((old, new))
            }
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e}");
                None
            }
        }
    }

    /// True when `sender` may be answered now (and counts it).
    fn may_answer(&mut self, sender: &str, per_minute: u32) -> bool {
        let now = Instant::now();
        let times = self
            .answered
            .entry(sender.to_ascii_lowercase())
            .or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }
}

fn irc_config(config: &Config) -> IrcConfig {
    let (host, port) = config
        .irc
        .server
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(6667)))
        .unwrap_or((config.irc.server.clone(), 6667));
    IrcConfig {
        nickname: Some(config.nick.clone()),
        alt_nicks: vec![format!("{}_", config.nick), format!("{}__", config.nick)],
        username: Some("agent".into()),
        realname: Some(format!("fireclaw agent {}", config.nick)),
        server: Some(host),
        port: Some(port),
        channels: config.irc.channels.clone(),
        burst_window_length: Some(BURST_WINDOW_SECS),
        max_messages_in_burst: Some(BURST_LINES),
        ping_time: Some(60),
        ping_timeout: Some(30),
        version: Some(format!("fireclaw-guest {}", env!("CARGO_PKG_VERSION"))),
        ..IrcConfig::default()
    }
}

/// One connection, from connect to its end.
async fn session(
    state: &mut State,
    signals: &mut Signals,
    jobs: &mpsc::Sender<Job>,
    out: &mut mpsc::Receiver<Outgoing>,
) -> End {
    let config = state.config();
    let lost = |reason: String, welcomed| End::Reconnect { reason, welcomed };
    let mut client =
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::from_config(irc_config(&config))).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return lost(format!("connecting to {}: {e}", config.irc.server), false),
            Err(_) => {
                return lost(
                    format!("connecting to {}: timed out", config.irc.server),
                    false,
                )
            }
        };
    if let Err(e) = client.identify() {
        return lost(format!("registering: {e}"), false);
    }
    let mut stream = match client.stream() {
        Ok(s) => s,
        Err(e) => return lost(e.to_string(), false),
    };
    let mut welcomed = false;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return lost(e.to_string(), welcomed),
                    None => return lost("the server closed the connection".into(), welcomed),
                };
                match &msg.command {
                    Command::Response(Response::RPL_WELCOME, _) => {
                        welcomed = true;
                        tracing::info!(nick = %client.current_nickname(), "registered");
                    }
                    Command::Response(Response::RPL_ENDOFMOTD, _)
                    | Command::Response(Response::ERR_NOMOTD, _) => {
                        for chan in &state.invited {
                            let _ = client.send_join(chan);
                        }
                    }
                    Command::INVITE(nick, chan)
                        if nick.eq_ignore_ascii_case(client.current_nickname())
                            && crate::config::valid_channel(chan).is_ok()
                            && (state.invited.contains(chan) || state.invited.len() < INVITED_MAX) =>
                    {
                        tracing::info!(channel = %chan, by = ?msg.source_nickname(), "invited");
                        state.invited.insert(chan.clone());
                        let _ = client.send_join(chan);
                    }
                    Command::PRIVMSG(target, body) => {
                        let Some(from) = msg.source_nickname() else { continue };
                        let me = client.current_nickname().to_string();
                        let Some(job) = question(&me, from, target, body) else { continue };
                        let config = state.config();
                        if !state.may_answer(from, config.limits.answers_per_minute) {
                            tracing::warn!(from, "not answering: over limits.answers_per_minute");
                            continue;
                        }
                        if jobs.try_send(job).is_err() {
                            let reply_to = if target.starts_with(['#', '&', '+', '!']) { target.as_str() } else { from };
                            send_text(&client, &me, reply_to, "I'm busy with other questions; ask me again in a moment.", 1);
                        }
                    }
                    _ => {}
                }
            }
            Some(o) = out.recv() => {
                let config = state.config();
                send_text(&client, client.current_nickname(), &o.target, &o.text, config.limits.reply_lines);
            }
            _ = signals.hup.recv() => {
                let Some((old, new)) = state.reload() else { continue };
                if old.irc.server != new.irc.server {
                    let _ = client.send_quit("reconnecting to a new server");
                    drain_quit(&mut stream).await;
                    return lost("the server changed in the configuration".into(), true);
                }
                if old.nick != new.nick {
                    let _ = client.send(Command::NICK(new.nick.clone()));
                }
                for chan in new.irc.channels.iter().filter(|c| !old.irc.channels.contains(c)) {
                    let _ = client.send_join(chan);
                }
                for chan in old.irc.channels.iter().filter(|c| !new.irc.channels.contains(c)) {
                    let _ = client.send_part(chan);
                }
            }
            _ = signals.term.recv() => return quit(&client, &mut stream, &config.irc.quit_message).await,
            _ = signals.int.recv() => return quit(&client, &mut stream, &config.irc.quit_message).await,
        }
    }
}

async fn quit(client: &Client, stream: &mut irc::client::ClientStream, message: &str) -> End {
    tracing::info!("terminating: sending QUIT");
    let _ = client.send_quit(message);
    drain_quit(stream).await;
    End::Terminated
}

/// Drives the connection until the server closes it after our QUIT (so the QUIT is written), for
/// at most [`QUIT_GRACE`].
async fn drain_quit(stream: &mut irc::client::ClientStream) {
    let _ = tokio::time::timeout(QUIT_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Sends model-ish `text` to `target` as clean PRIVMSG lines.
fn send_text(client: &Client, nick: &str, target: &str, text: &str, max_lines: usize) {
    let budget = text::payload_budget(nick, target);
    for line in text::irc_lines(text, budget, max_lines.max(1)) {
        if let Err(e) = client.send_privmsg(target, &line) {
            tracing::warn!(target, "cannot send: {e}");
            return;
        }
    }
}

/// The question in a PRIVMSG, if it is one for `me`: addressed at the start in a channel, or any
/// DM. Our own echoes and CTCP are not questions.
fn question(me: &str, from: &str, target: &str, body: &str) -> Option<Job> {
    if from.eq_ignore_ascii_case(me) || body.starts_with('\x01') {
        return None;
    }
    if target.eq_ignore_ascii_case(me) {
        let text = body.trim();
        return (!text.is_empty()).then(|| Job {
            conversation: format!("dm:{}", from.to_ascii_lowercase()),
            reply_to: from.to_string(),
            who: from.to_string(),
            text: text.to_string(),
        });
    }
    if !target.starts_with(['#', '&', '+', '!']) {
        return None;
    }
    let text = text::addressed(body, me)?;
    Some(Job {
        conversation: target.to_ascii_lowercase(),
        reply_to: target.to_string(),
        who: from.to_string(),
        text: text.to_string(),
    })
}

/// Answers questions one at a time, with the configuration current when each starts.
async fn worker(
    config: watch::Receiver<Arc<Config>>,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Outgoing>,
) {
    let mut brain = Brain::new(&config.borrow().clone());
    let mut workspace = config.borrow().workspace.clone();
    while let Some(job) = jobs.recv().await {
        let config = config.borrow().clone();
        if config.workspace != workspace {
            workspace = config.workspace.clone();
            brain.reload_memory(&config);
        }
        tracing::info!(from = %job.who, conversation = %job.conversation, "question");
        let answer = brain
            .answer(&config, &job.conversation, &job.who, &job.text)
            .await;
        record_usage(&config.usage_spool, &answer.usage);
        let text = answer.to_text();
        if out
            .send(Outgoing {
                target: job.reply_to,
                text,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

fn record_usage(spool: &Path, usage: &fireclaw_proto::UsageRecord) {
    if let Err(e) = crate::usage::append(spool, usage) {
        tracing::error!(spool = %spool.display(), "cannot record usage: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addressed_channel_messages_and_dms_are_questions() {
        let q = question("coder", "alice", "#agents", "coder: list files").unwrap();
        assert_eq!(
            (
                q.conversation.as_str(),
                q.reply_to.as_str(),
                q.text.as_str()
            ),
            ("#agents", "#agents", "list files")
        );
        let q = question("coder", "Alice", "Coder", "hi there").unwrap();
        assert_eq!(
            (q.conversation.as_str(), q.reply_to.as_str()),
            ("dm:alice", "Alice")
        );
        assert!(question("coder", "alice", "#agents", "hello all").is_none());
        assert!(question("coder", "alice", "#agents", "hey coder: x").is_none());
        assert!(question("coder", "coder", "#agents", "coder: loop").is_none());
        assert!(question("coder", "alice", "coder", "\x01VERSION\x01").is_none());
        assert!(question("coder", "alice", "coder", "   ").is_none());
        assert!(question("coder", "alice", "other", "coder: x").is_none());
    }

    #[test]
    fn the_rate_limit_bounds_answers_per_sender() {
        let (tx, _rx) = watch::channel(Arc::new(
            crate::config::parse(
                "nick='a'\npersona='p'\n[irc]\nserver='h:1'\n[ollama]\nurl='http://h'\nmodel='m'\n",
                Path::new("x"),
            )
            .unwrap(),
        ));
        let mut s = State {
            config_path: PathBuf::from("x"),
            config_tx: tx,
            invited: HashSet::new(),
            answered: HashMap::new(),
        };
        assert!(s.may_answer("bot", 2));
        assert!(s.may_answer("BOT", 2));
        assert!(!s.may_answer("bot", 2));
        assert!(s.may_answer("alice", 2));
    }
}
