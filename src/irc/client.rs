//! The overseer's IRC connection: connect to ngircd, become an IRC operator (so it may set `+F`,
//! ngircd's relaxed flood protection, on itself), join the channels, hand each message to the
//! [`Overseer`], send the answers paced, and reconnect with backoff when the server goes away.
//!
//! Commands run one at a time on a worker task, so PINGs are answered while an `!invoke` boots a
//! VM; a burst beyond the queue is refused with one line per sender and still audited, so 100
//! commands in a second neither crash anything nor vanish from the audit trail.
//!
//! [`Presence`] lets the agent manager ask the server (`ISON`) whether a nick is on it, so an agent
//! is never named after a person who is.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use irc::client::prelude::{Client, Command as IrcCommand, Config as IrcConfig, Prefix, Response};
use tokio::sync::{mpsc, oneshot, watch};

use crate::irc::command;
use crate::irc::overseer::{AgentOps, Outcome, Overseer, Place, Reply, Sender, Target};

/// Commands waiting for the worker; beyond this a sender is told to slow down.
const QUEUE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Most lines of one answer sent anywhere; the rest is cut with a marker.
const MAX_REPLY_LINES: usize = 60;

/// Where and as whom the overseer connects.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: SocketAddr,
    pub nick: String,
    /// The `[Operator]` name in ngircd.conf and its password (from `irc-operator.pass`).
    pub oper: Option<(String, String)>,
    pub channels: Vec<String>,
}

/// Receives every command the overseer saw, refused ones included.
pub trait Audit: Send + Sync + 'static {
    fn record(&self, who: &Sender, command: &str, ok: bool, result: &str);
}

/// What the runtime says or does on IRC unasked.
#[derive(Debug, Clone)]
pub enum News {
    Say(Reply),
    /// Disconnect a nick (IRC operator rights needed): the ghost of an agent whose VM died holds
    /// its nick until ngircd's ping timeout, and the restarted agent needs it back.
    Kill {
        nick: String,
        reason: String,
    },
}

/// How long an `ISON` may take: the server answers at once, or the connection is in trouble.
const ISON_TIMEOUT: Duration = Duration::from_secs(5);
/// `ISON` questions waiting to be sent.
const ISON_QUEUE: usize = 8;

/// Asks the server whether a nick is on it, over the overseer's connection. `ISON` asks the whole
/// server at the moment of asking (people in no channel the overseer shares included), so there is
/// no membership list to keep in step with JOIN/PART/QUIT/NICK and reconnects.
#[derive(Clone)]
pub struct Presence {
    queries: mpsc::Sender<IsonQuery>,
    connected: watch::Receiver<bool>,
}

/// The connection's end of [`Presence`]: handed to [`run`].
pub struct PresenceDesk {
    queries: mpsc::Receiver<IsonQuery>,
    connected: watch::Sender<bool>,
}

struct IsonQuery {
    nick: String,
    answer: oneshot::Sender<Vec<String>>,
}

/// A [`Presence`] and the desk its questions go to.
pub fn presence() -> (Presence, PresenceDesk) {
    let (tx, rx) = mpsc::channel(ISON_QUEUE);
    let (ctx, crx) = watch::channel(false);
    (
        Presence {
            queries: tx,
            connected: crx,
        },
        PresenceDesk {
            queries: rx,
            connected: ctx,
        },
    )
}

impl Presence {
    /// `Ok(Some(nick))` (as the server spells it) when `nick` is on the server, `Ok(None)` when
    /// not, `Err(why)` when the server cannot be asked now (the overseer is not connected, or
    /// no answer came in time).
    pub async fn online(&self, nick: &str) -> Result<Option<String>, String> {
        if !*self.connected.borrow() {
            return Err("the overseer is not connected to IRC".into());
        }
        let (tx, rx) = oneshot::channel();
        self.queries
            .try_send(IsonQuery {
                nick: nick.to_string(),
                answer: tx,
            })
            .map_err(|_| "too many questions to IRC at once".to_string())?;
        match tokio::time::timeout(ISON_TIMEOUT, rx).await {
            Ok(Ok(on)) => Ok(on.into_iter().find(|n| n.eq_ignore_ascii_case(nick))),
            Ok(Err(_)) => Err("the IRC connection ended before the server answered".into()),
            Err(_) => Err(format!(
                "the server did not answer ISON in {ISON_TIMEOUT:?}"
            )),
        }
    }
}

/// A command for the worker.
struct Job {
    who: Sender,
    place: Place,
    text: String,
}

/// Runs until `stop` turns true; then sends QUIT and returns. `announce` carries what the
/// runtime says unasked (an agent died, was restarted); it is sent while connected.
pub async fn run<O>(
    conn: Connection,
    overseer: Overseer,
    ops: Arc<O>,
    audit: Arc<dyn Audit>,
    mut announce: mpsc::Receiver<News>,
    mut desk: PresenceDesk,
    mut stop: watch::Receiver<bool>,
) where
    O: AgentOps + Send + Sync + 'static,
{
    let (job_tx, job_rx) = mpsc::channel::<Job>(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Reply>(QUEUE * 2);
    let worker = tokio::spawn(worker(overseer, ops, audit.clone(), job_rx, out_tx));
    let mut backoff = BACKOFF_MIN;
    loop {
        let (reason, welcomed) = session(
            &conn,
            &job_tx,
            &mut out_rx,
            &mut announce,
            &mut desk,
            audit.as_ref(),
            &mut stop,
        )
        .await;
        let _ = desk.connected.send(false);
        if *stop.borrow() {
            break;
        }
        if welcomed {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!("overseer: IRC connection lost ({reason}); reconnecting in {backoff:?}");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    worker.abort();
}

fn irc_config(conn: &Connection) -> IrcConfig {
    IrcConfig {
        nickname: Some(conn.nick.clone()),
        alt_nicks: vec![format!("{}_", conn.nick)],
        username: Some("overseer".into()),
        realname: Some("fireclaw overseer".into()),
        server: Some(conn.server.ip().to_string()),
        port: Some(conn.server.port()),
        // With operator rights the overseer sets +F (relaxed flood protection) and may answer a
        // burst of commands briskly; without, it stays below ngircd's flood penalty.
        burst_window_length: Some(if conn.oper.is_some() { 2 } else { 4 }),
        max_messages_in_burst: Some(if conn.oper.is_some() { 10 } else { 4 }),
        ping_time: Some(60),
        ping_timeout: Some(30),
        version: Some(format!("fireclaw overseer {}", env!("CARGO_PKG_VERSION"))),
        ..IrcConfig::default()
    }
}

/// One connection; returns why it ended and whether it had registered.
async fn session(
    conn: &Connection,
    jobs: &mpsc::Sender<Job>,
    out: &mut mpsc::Receiver<Reply>,
    announce: &mut mpsc::Receiver<News>,
    desk: &mut PresenceDesk,
    audit: &dyn Audit,
    stop: &mut watch::Receiver<bool>,
) -> (String, bool) {
    let mut client =
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::from_config(irc_config(conn))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (format!("connecting to {}: {e}", conn.server), false),
            Err(_) => return (format!("connecting to {}: timed out", conn.server), false),
        };
    if let Err(e) = client.identify() {
        return (format!("registering: {e}"), false);
    }
    let mut stream = match client.stream() {
        Ok(s) => s,
        Err(e) => return (e.to_string(), false),
    };
    let mut welcomed = false;
    // Commands from senders whose operator status is being asked with USERHOST.
    let mut pending: HashMap<String, Vec<(Place, String, Sender)>> = HashMap::new();
    let mut told = Told::new();
    // ISON questions sent, in order: the server answers them in the order asked. Dropped with
    // the session, which tells each asker the connection ended.
    let mut ison: VecDeque<oneshot::Sender<Vec<String>>> = VecDeque::new();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return (e.to_string(), welcomed),
                    None => return ("the server closed the connection".into(), welcomed),
                };
                match &msg.command {
                    IrcCommand::Response(Response::RPL_WELCOME, _) => {
                        welcomed = true;
                        tracing::info!(nick = %client.current_nickname(), "overseer: registered");
                        if let Some((name, password)) = &conn.oper {
                            let _ = client.send_oper(name, password);
                        }
                        for c in &conn.channels {
                            let _ = client.send_join(c);
                        }
                        let _ = desk.connected.send(true);
                    }
                    IrcCommand::Response(Response::RPL_ISON, args) => {
                        if let Some(asker) = ison.pop_front() {
                            // `303 me :nick nick…`; the list is empty when no one asked about is on.
                            let on = args.get(1).map(|l| l.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
                            let _ = asker.send(on);
                        }
                    }
                    IrcCommand::Response(Response::RPL_YOUREOPER, _) => {
                        let me = client.current_nickname().to_string();
                        let _ = client.send(IrcCommand::Raw("MODE".into(), vec![me, "+F".into()]));
                        tracing::info!("overseer: IRC operator; relaxed flood protection (+F) requested");
                    }
                    IrcCommand::Response(Response::ERR_PASSWDMISMATCH | Response::ERR_NOOPERHOST, _) => {
                        tracing::warn!("overseer: ngircd refused OPER: check [irc] operator and irc-operator.pass; going on without +F");
                    }
                    IrcCommand::Response(Response::RPL_USERHOST, args) => {
                        for (nick, is_oper) in args.last().map(|a| parse_userhost(a)).unwrap_or_default() {
                            for (place, text, mut who) in pending.remove(&nick.to_ascii_lowercase()).unwrap_or_default() {
                                who.is_oper = is_oper;
                                enqueue(jobs, audit, &client, &mut told, Job { who, place, text });
                            }
                        }
                    }
                    IrcCommand::PRIVMSG(target, body) => {
                        let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else { continue };
                        let place = if target.starts_with(['#', '&']) {
                            Place::Channel(target.clone())
                        } else {
                            Place::Direct
                        };
                        let who = Sender { nick: nick.clone(), user: user.clone(), host: host.clone(), is_oper: false };
                        // Only state-changing commands need to know whether the sender is an IRC
                        // operator; ask the server once for those, and only when no admin mask
                        // already allows the sender.
                        let needs_oper = matches!(command::parse(body), Some(Ok(ref c)) if c.verb().changes_state());
                        if needs_oper {
                            let key = nick.to_ascii_lowercase();
                            let first = !pending.contains_key(&key);
                            let waiting = pending.entry(key).or_default();
                            if waiting.len() < QUEUE {
                                waiting.push((place, body.clone(), who));
                            } else {
                                audit.record(&who, body, false, "throttled: too many commands at once");
                            }
                            if first {
                                let _ = client.send(IrcCommand::USERHOST(vec![nick.clone()]));
                            }
                        } else {
                            enqueue(jobs, audit, &client, &mut told, Job { who, place, text: body.clone() });
                        }
                    }
                    _ => {}
                }
            }
            Some(reply) = out.recv() => send_reply(&client, &reply),
            Some(q) = desk.queries.recv(), if welcomed => {
                if client.send(IrcCommand::ISON(vec![q.nick])).is_ok() {
                    ison.push_back(q.answer);
                }
            }
            Some(news) = announce.recv(), if welcomed => match news {
                News::Say(reply) => send_reply(&client, &reply),
                News::Kill { nick, reason } => {
                    let _ = client.send(IrcCommand::KILL(nick, reason));
                }
            },
            _ = stop.changed() => {
                let _ = client.send_quit("fireclaw runtime stopping; agents keep running");
                return ("stopping".into(), welcomed);
            }
        }
    }
}

/// Who was last told to slow down, and when: one notice per sender per [`NOTICE_EVERY`], so a
/// flood of commands does not become a flood of answers.
type Told = HashMap<String, std::time::Instant>;
const NOTICE_EVERY: Duration = Duration::from_secs(10);

/// Queues a command, or tells the sender to slow down (and audits the refusal).
fn enqueue(
    jobs: &mpsc::Sender<Job>,
    audit: &dyn Audit,
    client: &Client,
    told: &mut Told,
    job: Job,
) {
    if command::parse(&job.text).is_none() {
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
        jobs.try_send(job)
    {
        audit.record(
            &job.who,
            &job.text,
            false,
            "throttled: too many commands at once",
        );
        let key = job.who.nick.to_ascii_lowercase();
        if told.get(&key).is_none_or(|t| t.elapsed() >= NOTICE_EVERY) {
            told.insert(key, std::time::Instant::now());
            let _ = client.send_notice(
                &job.who.nick,
                "I'm working through a burst of commands; some of yours were not run. Send them again in a moment.",
            );
        }
    }
}

/// `RPL_USERHOST`'s reply list: `nick*=+user@host` where `*` marks an IRC operator.
fn parse_userhost(list: &str) -> Vec<(String, bool)> {
    list.split_whitespace()
        .filter_map(|item| {
            let (left, _) = item.split_once('=')?;
            let oper = left.ends_with('*');
            Some((left.trim_end_matches('*').to_string(), oper))
        })
        .collect()
}

async fn worker<O>(
    overseer: Overseer,
    ops: Arc<O>,
    audit: Arc<dyn Audit>,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Reply>,
) where
    O: AgentOps + Send + Sync + 'static,
{
    while let Some(job) = jobs.recv().await {
        let Some(Outcome {
            replies,
            ok,
            summary,
        }) = overseer
            .handle(ops.as_ref(), &job.who, &job.place, &job.text)
            .await
        else {
            continue;
        };
        audit.record(&job.who, &job.text, ok, &summary);
        for r in replies {
            if out.send(r).await.is_err() {
                return;
            }
        }
    }
}

fn send_reply(client: &Client, reply: &Reply) {
    let target = match &reply.to {
        Target::Channel(c) => c.as_str(),
        Target::Nick(n) => n.as_str(),
    };
    let budget = fireclaw_proto::text::payload_budget(client.current_nickname(), target);
    let text = reply.lines.join("\n");
    for line in fireclaw_proto::text::irc_lines(&text, budget, MAX_REPLY_LINES) {
        if let Err(e) = client.send_privmsg(target, &line) {
            tracing::warn!(target, "overseer: cannot send: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userhost_replies_mark_operators() {
        assert_eq!(
            parse_userhost("alice*=+a@172.16.0.1 bob=-b@h"),
            [("alice".to_string(), true), ("bob".to_string(), false)]
        );
        assert!(parse_userhost("").is_empty());
        assert!(parse_userhost("garbage").is_empty());
    }

    #[test]
    fn presence_answers_from_ison_in_any_case_and_not_while_disconnected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (p, mut desk) = presence();
            assert!(p.online("alice").await.is_err(), "asked while disconnected");
            desk.connected.send(true).unwrap();
            let server = tokio::spawn(async move {
                // The server as ngircd answers: the nicks that are on, as they registered.
                while let Some(q) = desk.queries.recv().await {
                    let on = if q.nick.eq_ignore_ascii_case("alice") {
                        vec!["Alice".to_string()]
                    } else {
                        Vec::new()
                    };
                    let _ = q.answer.send(on);
                }
            });
            assert_eq!(p.online("ALICE").await, Ok(Some("Alice".to_string())));
            assert_eq!(p.online("bob").await, Ok(None));
            server.abort();
        });
    }
}
