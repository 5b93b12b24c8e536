//! What the overseer does with a command, apart from IRC itself: who may run it, what to answer,
//! and where the answer goes. The IRC connection (reconnects, pacing, `+F`) hands it parsed
//! messages and sends back the [`Reply`]s; the agent manager implements [`AgentOps`]. Keeping
//! this layer pure makes every authorization and reply rule a plain unit test.

use crate::irc::command::{self, Command, Verb};
use crate::irc::mask;
use std::future::Future;

/// Who sent a message, as the server told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub nick: String,
    pub user: String,
    pub host: String,
    /// The sender is an IRC operator (seen in WHO's `*` flag or a server notice).
    pub is_oper: bool,
}

impl Sender {
    pub fn prefix(&self) -> String {
        format!("{}!{}@{}", self.nick, self.user, self.host)
    }
}

/// Where a message was said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A channel the overseer is in (commands count only in the control channel).
    Channel(String),
    /// A private message to the overseer.
    Direct,
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Channel(String),
    Nick(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub to: Target,
    pub lines: Vec<String>,
}

/// The agent manager, as the overseer sees it. Each answer is lines of plain text (one item per
/// line) or an error sentence; the overseer decides where they go.
/// (The futures are `Send` so the IRC connection can run commands on a worker task.)
pub trait AgentOps {
    fn invoke(
        &self,
        template: &str,
        name: Option<&str>,
        model: Option<&str>,
    ) -> impl Future<Output = Answer> + Send;
    fn destroy(&self, name: &str, purge: bool) -> impl Future<Output = Answer> + Send;
    fn list(&self) -> impl Future<Output = Answer> + Send;
    fn set_model(&self, name: &str, model: &str) -> impl Future<Output = Answer> + Send;
    fn models(&self) -> impl Future<Output = Answer> + Send;
    fn templates(&self) -> impl Future<Output = Answer> + Send;
    fn status(&self, name: Option<&str>) -> impl Future<Output = Answer> + Send;
    fn logs(&self, name: &str, lines: u16) -> impl Future<Output = Answer> + Send;
}

/// Lines of an answer, or the sentence saying why not.
pub type Answer = Result<Vec<String>, String>;

/// The overseer's rules.
#[derive(Debug, Clone)]
pub struct Overseer {
    /// The channel commands are taken from (besides DMs).
    pub control_channel: String,
    /// `[irc] admins`: masks allowed to change things besides IRC operators.
    pub admins: Vec<String>,
    /// Lines an answer may take in the channel; a longer one goes by DM with a pointer.
    pub max_channel_lines: usize,
}

/// What one command did: the replies and a line for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub ok: bool,
    /// What to record as the result (the first line of the answer or the refusal).
    pub summary: String,
}

impl Overseer {
    pub fn may_change(&self, who: &Sender) -> bool {
        who.is_oper || self.admins.iter().any(|m| mask::matches(m, &who.prefix()))
    }

    /// Handles one message. `None`: not for the overseer (talk, or a command in another channel).
    pub async fn handle(
        &self,
        ops: &impl AgentOps,
        who: &Sender,
        place: &Place,
        text: &str,
    ) -> Option<Outcome> {
        if let Place::Channel(c) = place {
            if !c.eq_ignore_ascii_case(&self.control_channel) {
                return None;
            }
        }
        let reply_to = match place {
            Place::Channel(c) => Target::Channel(c.clone()),
            Place::Direct => Target::Nick(who.nick.clone()),
        };
        let cmd = match command::parse(text)? {
            Ok(c) => c,
            Err(e) => return Some(self.refusal(reply_to, who, e.to_string())),
        };
        if cmd.verb().changes_state() && !self.may_change(who) {
            return Some(self.refusal(
                reply_to,
                who,
                format!(
                    "Sorry {}, only fireclaw admins and IRC operators may use !{}.",
                    who.nick,
                    cmd.verb().name()
                ),
            ));
        }
        let answer = match &cmd {
            Command::Invoke {
                template,
                name,
                model,
            } => {
                ops.invoke(template, name.as_deref(), model.as_deref())
                    .await
            }
            Command::Destroy { name, purge } => ops.destroy(name, *purge).await,
            Command::List => ops.list().await,
            Command::Model { name, model } => ops.set_model(name, model).await,
            Command::Models => ops.models().await,
            Command::Templates => ops.templates().await,
            Command::Status { name } => ops.status(name.as_deref()).await,
            Command::Logs { name, lines } => ops.logs(name, *lines).await,
            Command::Help { topic } => Ok(help(*topic)),
        };
        let (ok, lines) = match answer {
            Ok(lines) if lines.is_empty() => (true, vec!["(nothing)".to_string()]),
            Ok(lines) => (true, lines),
            Err(sentence) => (false, vec![sentence]),
        };
        let summary = lines.first().cloned().unwrap_or_default();
        Some(Outcome {
            replies: self.route(reply_to, who, lines),
            ok,
            summary,
        })
    }

    fn refusal(&self, to: Target, _who: &Sender, line: String) -> Outcome {
        Outcome {
            replies: vec![Reply {
                to,
                lines: vec![line.clone()],
            }],
            ok: false,
            summary: line,
        }
    }

    /// Short answers stay where they were asked; long ones go to the asker privately, with one
    /// line in the channel saying so, so a `!list` of fifty agents never floods `#control`.
    fn route(&self, to: Target, who: &Sender, lines: Vec<String>) -> Vec<Reply> {
        match to {
            Target::Channel(c) if lines.len() > self.max_channel_lines => vec![
                Reply {
                    to: Target::Channel(c),
                    lines: vec![format!(
                        "{}: {} lines; sent to you privately.",
                        who.nick,
                        lines.len()
                    )],
                },
                Reply {
                    to: Target::Nick(who.nick.clone()),
                    lines,
                },
            ],
            to => vec![Reply { to, lines }],
        }
    }
}

fn help(topic: Option<Verb>) -> Vec<String> {
    match topic {
        Some(v) => vec![v.usage().to_string()],
        None => Verb::ALL.iter().map(|v| v.usage().to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn log(&self, s: String) -> Result<Vec<String>, String> {
            self.calls.lock().unwrap().push(s.clone());
            Ok(vec![s])
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl AgentOps for Fake {
        async fn invoke(
            &self,
            t: &str,
            n: Option<&str>,
            m: Option<&str>,
        ) -> Result<Vec<String>, String> {
            self.log(format!("invoke {t} {n:?} {m:?}"))
        }
        async fn destroy(&self, n: &str, p: bool) -> Result<Vec<String>, String> {
            if n == "ghost" {
                return Err("There is no agent named ghost.".into());
            }
            self.log(format!("destroy {n} {p}"))
        }
        async fn list(&self) -> Result<Vec<String>, String> {
            Ok((0..10).map(|i| format!("agent{i}")).collect())
        }
        async fn set_model(&self, n: &str, m: &str) -> Result<Vec<String>, String> {
            self.log(format!("model {n} {m}"))
        }
        async fn models(&self) -> Result<Vec<String>, String> {
            self.log("models".into())
        }
        async fn templates(&self) -> Result<Vec<String>, String> {
            Ok(vec![])
        }
        async fn status(&self, n: Option<&str>) -> Result<Vec<String>, String> {
            self.log(format!("status {n:?}"))
        }
        async fn logs(&self, n: &str, l: u16) -> Result<Vec<String>, String> {
            self.log(format!("logs {n} {l}"))
        }
    }

    fn overseer() -> Overseer {
        Overseer {
            control_channel: "#control".into(),
            admins: vec!["alice!*@*".into()],
            max_channel_lines: 3,
        }
    }

    fn who(nick: &str, oper: bool) -> Sender {
        Sender {
            nick: nick.into(),
            user: "u".into(),
            host: "172.16.0.1".into(),
            is_oper: oper,
        }
    }

    fn run(who: &Sender, place: Place, text: &str, fake: &Fake) -> Option<Outcome> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(overseer().handle(fake, who, &place, text))
    }

    fn control() -> Place {
        Place::Channel("#control".into())
    }

    #[test]
    fn admins_and_operators_may_change_things_others_may_read() {
        let fake = Fake::default();
        for (sender, allowed) in [
            (who("alice", false), true),
            (who("root", true), true),
            (who("mallory", false), false),
        ] {
            for text in ["!invoke coder bob", "!destroy bob", "!model bob m"] {
                let out = run(&sender, control(), text, &fake).unwrap();
                assert_eq!(out.ok, allowed, "{} {text}: {out:?}", sender.nick);
                if !allowed {
                    assert_eq!(out.replies.len(), 1);
                    assert!(
                        out.replies[0].lines[0].contains("only fireclaw admins"),
                        "{out:?}"
                    );
                }
            }
            let out = run(&sender, control(), "!status", &fake).unwrap();
            assert!(out.ok);
        }
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("invoke"))
                .count(),
            2,
            "mallory's !invoke never reached the manager"
        );
    }

    #[test]
    fn commands_count_only_in_control_and_in_dms() {
        let fake = Fake::default();
        let alice = who("alice", false);
        assert!(run(
            &alice,
            Place::Channel("#agents".into()),
            "!destroy bob",
            &fake
        )
        .is_none());
        assert!(run(&alice, control(), "hello !destroy bob", &fake).is_none());
        let out = run(&alice, Place::Direct, "!destroy bob", &fake).unwrap();
        assert_eq!(out.replies[0].to, Target::Nick("alice".into()));
        assert_eq!(fake.calls(), ["destroy bob false"]);
        assert!(run(&alice, Place::Channel("#CONTROL".into()), "!list", &fake).is_some());
    }

    #[test]
    fn long_answers_go_by_dm_with_a_pointer_in_the_channel() {
        let fake = Fake::default();
        let out = run(&who("bob", false), control(), "!list", &fake).unwrap();
        assert_eq!(out.replies.len(), 2);
        assert_eq!(out.replies[0].to, Target::Channel("#control".into()));
        assert_eq!(
            out.replies[0].lines,
            ["bob: 10 lines; sent to you privately."]
        );
        assert_eq!(out.replies[1].to, Target::Nick("bob".into()));
        assert_eq!(out.replies[1].lines.len(), 10);
        let out = run(&who("bob", false), Place::Direct, "!list", &fake).unwrap();
        assert_eq!(out.replies.len(), 1);
    }

    #[test]
    fn errors_and_bad_commands_are_one_line_and_audited_as_failures() {
        let fake = Fake::default();
        let alice = who("alice", false);
        let out = run(&alice, control(), "!destroy ghost", &fake).unwrap();
        assert!(!out.ok);
        assert_eq!(out.summary, "There is no agent named ghost.");
        let out = run(&alice, control(), "!destroy ../x", &fake).unwrap();
        assert!(!out.ok && out.replies[0].lines.len() == 1, "{out:?}");
        let out = run(&alice, control(), "!frob", &fake).unwrap();
        assert!(!out.ok && out.summary.contains("!help"));
        let out = run(&alice, control(), "!templates", &fake).unwrap();
        assert_eq!(out.replies[0].lines, ["(nothing)"]);
        let out = run(&alice, control(), "!help logs", &fake).unwrap();
        assert!(out.replies[0].lines[0].starts_with("!logs NAME [N]"));
    }
}
