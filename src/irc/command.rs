//! The overseer's command grammar: what people type in `#control` or in a DM to the overseer.
//!
//! A command is recognised only at the very start of a message (`!invoke coder`), never in the
//! middle of one (`please !destroy bob` is talk, not a command), so quoting a command is safe.
//! Parsing is pure and total: any text gives `None` (not a command), a [`Command`], or a
//! [`CommandError`] whose message is one polite line fit to send back to IRC.

use std::fmt;

/// Most lines `!logs` sends; more goes nowhere (the overseer keeps the channel readable).
pub const MAX_LOG_LINES: u16 = 50;
/// Lines `!logs NAME` shows when no count is given.
pub const DEFAULT_LOG_LINES: u16 = 10;
/// An agent's name is its IRC nick; ngircd is configured with MaxNickLength 30, and a short
/// limit keeps names readable in `!list` and safe in file names (`workspaces/NAME.ext4`).
pub const MAX_AGENT_NAME: usize = 16;
/// Ollama model names (`qwen2.5:7b`, `library/llama3.2:3b`, `hf.co/org/model:tag`).
pub const MAX_MODEL_NAME: usize = 100;

/// One overseer command, with validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `!invoke TEMPLATE [NAME] [MODEL]`: start an agent (name defaults to the template's).
    Invoke {
        template: String,
        name: Option<String>,
        model: Option<String>,
    },
    /// `!destroy NAME [--purge]`: stop an agent; `--purge` also deletes its workspace.
    Destroy { name: String, purge: bool },
    /// `!list`: the agents, one line each.
    List,
    /// `!model NAME MODEL`: switch an agent's model without it leaving IRC.
    Model { name: String, model: String },
    /// `!models`: what Ollama has.
    Models,
    /// `!templates`: what `!invoke` can make.
    Templates,
    /// `!status [NAME]`: the runtime, or one agent (restarts, usage).
    Status { name: Option<String> },
    /// `!logs NAME [N]`: an agent's last N interactions.
    Logs { name: String, lines: u16 },
    /// `!help [COMMAND]`.
    Help { topic: Option<Verb> },
}

/// The command words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Invoke,
    Destroy,
    List,
    Model,
    Models,
    Templates,
    Status,
    Logs,
    Help,
}

impl Verb {
    pub const ALL: [Verb; 9] = [
        Verb::Invoke,
        Verb::Destroy,
        Verb::List,
        Verb::Model,
        Verb::Models,
        Verb::Templates,
        Verb::Status,
        Verb::Logs,
        Verb::Help,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Invoke => "invoke",
            Verb::Destroy => "destroy",
            Verb::List => "list",
            Verb::Model => "model",
            Verb::Models => "models",
            Verb::Templates => "templates",
            Verb::Status => "status",
            Verb::Logs => "logs",
            Verb::Help => "help",
        }
    }

    pub fn usage(self) -> &'static str {
        match self {
            Verb::Invoke => "!invoke TEMPLATE [NAME] [MODEL] — start an agent",
            Verb::Destroy => {
                "!destroy NAME [--purge] — stop an agent (--purge deletes its workspace)"
            }
            Verb::List => "!list — the agents",
            Verb::Model => "!model NAME MODEL — switch an agent's model",
            Verb::Models => "!models — the models Ollama has",
            Verb::Templates => "!templates — what !invoke can make",
            Verb::Status => "!status [NAME] — the runtime, or one agent",
            Verb::Logs => "!logs NAME [N] — an agent's last N interactions (at most 50)",
            Verb::Help => "!help [COMMAND] — this help",
        }
    }

    fn parse(word: &str) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(word))
    }

    /// Whether the command changes something (and so needs an admin or IRC operator).
    pub fn changes_state(self) -> bool {
        matches!(self, Verb::Invoke | Verb::Destroy | Verb::Model)
    }
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Invoke { .. } => Verb::Invoke,
            Command::Destroy { .. } => Verb::Destroy,
            Command::List => Verb::List,
            Command::Model { .. } => Verb::Model,
            Command::Models => Verb::Models,
            Command::Templates => Verb::Templates,
            Command::Status { .. } => Verb::Status,
            Command::Logs { .. } => Verb::Logs,
            Command::Help { .. } => Verb::Help,
        }
    }
}

/// Why a message that looked like a command is not one; `Display` is the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Unknown { word: String },
    Usage { verb: Verb, problem: String },
    ControlCharacters,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown { word } => write!(
                f,
                "Sorry, I don't know !{word}. Commands: {}. Try !help.",
                Verb::ALL.map(|v| format!("!{}", v.name())).join(" ")
            ),
            CommandError::Usage { verb, problem } => {
                write!(f, "Sorry, {problem}. Usage: {}", verb.usage())
            }
            CommandError::ControlCharacters => {
                f.write_str("Sorry, that command contains control characters; I ignored it.")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// Parses a message. `None`: not a command (it does not start with `!`, or is a lone `!`).
pub fn parse(message: &str) -> Option<Result<Command, CommandError>> {
    let body = message.strip_prefix('!')?;
    if body.is_empty() || body.starts_with(char::is_whitespace) || body.starts_with('!') {
        return None;
    }
    // IRC formatting and CTCP bytes, CR/LF/NUL: never part of a command a person meant to type;
    // refusing them keeps them out of names, logs and replies.
    if body.chars().any(|c| c.is_control()) {
        return Some(Err(CommandError::ControlCharacters));
    }
    let mut words = body.split_ascii_whitespace();
    let word = words.next()?;
    let args: Vec<&str> = words.collect();
    let Some(verb) = Verb::parse(word) else {
        return Some(Err(CommandError::Unknown {
            word: word.chars().take(20).collect(),
        }));
    };
    Some(parse_args(verb, &args))
}

fn usage(verb: Verb, problem: impl Into<String>) -> CommandError {
    CommandError::Usage {
        verb,
        problem: problem.into(),
    }
}

fn arity(verb: Verb, args: &[&str], min: usize, max: usize) -> Result<(), CommandError> {
    if args.len() < min {
        return Err(usage(verb, "something is missing"));
    }
    if args.len() > max {
        return Err(usage(verb, "that is too many words"));
    }
    Ok(())
}

fn parse_args(verb: Verb, args: &[&str]) -> Result<Command, CommandError> {
    match verb {
        Verb::Invoke => {
            arity(verb, args, 1, 3)?;
            let template = template_name(verb, args[0])?;
            let name = args.get(1).map(|n| agent_name(verb, n)).transpose()?;
            let model = args.get(2).map(|m| model_name(verb, m)).transpose()?;
            Ok(Command::Invoke {
                template,
                name,
                model,
            })
        }
        Verb::Destroy => {
            arity(verb, args, 1, 2)?;
            let (flags, names): (Vec<&str>, Vec<&str>) =
                args.iter().partition(|a| a.starts_with("--"));
            let purge = match flags.as_slice() {
                [] => false,
                ["--purge"] => true,
                [other, ..] => {
                    return Err(usage(verb, format!("{} is not an option", clip(other))))
                }
            };
            let [name] = names.as_slice() else {
                return Err(usage(verb, "name exactly one agent"));
            };
            Ok(Command::Destroy {
                name: agent_name(verb, name)?,
                purge,
            })
        }
        Verb::List | Verb::Models | Verb::Templates => {
            arity(verb, args, 0, 0)?;
            Ok(match verb {
                Verb::List => Command::List,
                Verb::Models => Command::Models,
                _ => Command::Templates,
            })
        }
        Verb::Model => {
            arity(verb, args, 2, 2)?;
            Ok(Command::Model {
                name: agent_name(verb, args[0])?,
                model: model_name(verb, args[1])?,
            })
        }
        Verb::Status => {
            arity(verb, args, 0, 1)?;
            Ok(Command::Status {
                name: args.first().map(|n| agent_name(verb, n)).transpose()?,
            })
        }
        Verb::Logs => {
            arity(verb, args, 1, 2)?;
            let lines = match args.get(1) {
                None => DEFAULT_LOG_LINES,
                Some(n) => match n.parse::<u16>() {
                    Ok(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
                    _ => {
                        return Err(usage(
                            verb,
                            format!("N must be 1 to {MAX_LOG_LINES}, not {}", clip(n)),
                        ))
                    }
                },
            };
            Ok(Command::Logs {
                name: agent_name(verb, args[0])?,
                lines,
            })
        }
        Verb::Help => {
            arity(verb, args, 0, 1)?;
            let topic = match args.first() {
                None => None,
                Some(w) => Some(
                    Verb::parse(w.trim_start_matches('!'))
                        .ok_or_else(|| usage(verb, format!("there is no command {}", clip(w))))?,
                ),
            };
            Ok(Command::Help { topic })
        }
    }
}

/// At most 20 characters of what someone typed, for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(20).collect();
    if s.chars().count() > 20 {
        out.push('…');
    }
    out
}

/// An agent's name is its nick, its workspace file name and a path component on the host: a
/// letter, then letters, digits, `-` or `_`, at most [`MAX_AGENT_NAME`]. That excludes path
/// (`/`, `..`), shell (`;`, `$`, spaces, quotes) and IRC (`!`, `@`, `#`, `:`, `,`) metacharacters.
pub fn is_agent_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.len() <= MAX_AGENT_NAME
}

fn agent_name(verb: Verb, s: &str) -> Result<String, CommandError> {
    if is_agent_name(s) {
        Ok(s.to_string())
    } else {
        Err(usage(
            verb,
            format!(
                "{} is not a valid agent name (a letter, then letters, digits, - or _, at most {MAX_AGENT_NAME})",
                clip(s)
            ),
        ))
    }
}

fn template_name(verb: Verb, s: &str) -> Result<String, CommandError> {
    if crate::agents::template::is_template_name(s) {
        Ok(s.to_string())
    } else {
        Err(usage(verb, format!("{} is not a template name", clip(s))))
    }
}

/// Ollama model names: `[namespace/]name[:tag]` of lowercase letters, digits, `.`, `_`, `-`.
pub fn is_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_MODEL_NAME
        && !s.starts_with(['.', '/', ':', '-'])
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:/".contains(c))
}

fn model_name(verb: Verb, s: &str) -> Result<String, CommandError> {
    if is_model_name(s) {
        Ok(s.to_string())
    } else {
        Err(usage(verb, format!("{} is not a model name", clip(s))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Command {
        parse(text).unwrap().unwrap()
    }
    fn bad(text: &str) -> String {
        parse(text).unwrap().unwrap_err().to_string()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(
            ok("!invoke coder"),
            Command::Invoke {
                template: "coder".into(),
                name: None,
                model: None
            }
        );
        assert_eq!(
            ok("!invoke coder bob qwen2.5-coder:7b"),
            Command::Invoke {
                template: "coder".into(),
                name: Some("bob".into()),
                model: Some("qwen2.5-coder:7b".into())
            }
        );
        assert_eq!(
            ok("!destroy bob"),
            Command::Destroy {
                name: "bob".into(),
                purge: false
            }
        );
        assert_eq!(
            ok("!destroy bob --purge"),
            Command::Destroy {
                name: "bob".into(),
                purge: true
            }
        );
        assert_eq!(
            ok("!destroy --purge bob"),
            Command::Destroy {
                name: "bob".into(),
                purge: true
            }
        );
        assert_eq!(ok("!list"), Command::List);
        assert_eq!(
            ok("!model bob llama3.2:3b"),
            Command::Model {
                name: "bob".into(),
                model: "llama3.2:3b".into()
            }
        );
        assert_eq!(ok("!models"), Command::Models);
        assert_eq!(ok("!templates"), Command::Templates);
        assert_eq!(ok("!status"), Command::Status { name: None });
        assert_eq!(
            ok("!status bob"),
            Command::Status {
                name: Some("bob".into())
            }
        );
        assert_eq!(
            ok("!logs bob"),
            Command::Logs {
                name: "bob".into(),
                lines: 10
            }
        );
        assert_eq!(
            ok("!logs bob 50"),
            Command::Logs {
                name: "bob".into(),
                lines: 50
            }
        );
        assert_eq!(ok("!help"), Command::Help { topic: None });
        assert_eq!(
            ok("!help !invoke"),
            Command::Help {
                topic: Some(Verb::Invoke)
            }
        );
        assert_eq!(ok("!LIST"), Command::List);
        assert_eq!(ok("!list   "), Command::List);
    }

    #[test]
    fn only_the_start_of_a_message_is_a_command() {
        for talk in [
            "please !destroy bob",
            " !destroy bob",
            "hello",
            "",
            "!",
            "! destroy bob",
            "!!destroy bob",
            "coder: !destroy bob",
        ] {
            assert_eq!(parse(talk), None, "{talk:?}");
        }
    }

    #[test]
    fn control_characters_are_refused_whole() {
        for hostile in [
            "!destroy bob\r\nQUIT :bye",
            "!invoke coder\0bob",
            "!list\n",
            "!invoke \u{1}ACTION\u{1}",
            "!status \u{3}4red",
        ] {
            assert_eq!(
                parse(hostile),
                Some(Err(CommandError::ControlCharacters)),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn hostile_names_are_refused_with_the_rule() {
        for name in [
            "../etc",
            "a;b",
            "$(id)",
            "a/b",
            "bob!x@y",
            "#agents",
            "1bob",
            "a:b",
            "a,b",
            "é",
            &"a".repeat(17),
        ] {
            let e = bad(&format!("!destroy {name}"));
            assert!(e.contains("not a valid agent name"), "{name}: {e}");
            assert!(e.len() < 200, "{e}");
        }
        assert!(bad("!invoke ../coder").contains("not a template name"));
        assert!(bad("!invoke coder bob ../../m").contains("not a model name"));
        assert!(bad("!model bob Qwen").contains("not a model name"));
        assert!(bad("!model bob a;rm").contains("not a model name"));
    }

    #[test]
    fn wrong_arity_flags_and_counts_say_the_usage() {
        assert!(bad("!invoke").contains("something is missing"));
        assert!(bad("!invoke a b c d").contains("too many"));
        assert!(bad("!list all").contains("Usage: !list"));
        assert!(bad("!destroy bob --force").contains("--force is not an option"));
        assert!(bad("!destroy --purge").contains("exactly one"));
        assert!(bad("!logs bob 0").contains("1 to 50"));
        assert!(bad("!logs bob 51").contains("1 to 50"));
        assert!(bad("!logs bob -3").contains("1 to 50"));
        assert!(bad("!logs bob 99999999999999999999").contains("1 to 50"));
        assert!(bad("!help frobnicate").contains("no command frobnicate"));
    }

    #[test]
    fn unknown_commands_list_the_known_ones_and_clip_the_word() {
        let e = bad(&format!("!{}", "x".repeat(400)));
        assert!(e.contains("!invoke") && e.contains("!help"), "{e}");
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn only_invoke_destroy_and_model_change_state() {
        let changing: Vec<&str> = Verb::ALL
            .into_iter()
            .filter(|v| v.changes_state())
            .map(Verb::name)
            .collect();
        assert_eq!(changing, ["invoke", "destroy", "model"]);
    }

    #[test]
    fn very_long_messages_are_parsed_without_trouble() {
        let long = format!("!status {}", "a".repeat(100_000));
        assert!(bad(&long).contains("not a valid agent name"));
        let many = format!("!list{}", " x".repeat(10_000));
        assert!(bad(&many).contains("too many"));
    }
}
