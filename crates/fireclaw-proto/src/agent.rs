//! `/etc/fireclaw/agent.toml`, the configuration the host writes for one agent and
//! `fireclaw-guest` reads: the host builds an [`AgentConfig`] and serializes it (TOML), the guest
//! parses it with `deny_unknown_fields` and validates it. Defaults live here, once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the image's init points `fireclaw-guest run --config`.
pub const DEFAULT_PATH: &str = "/etc/fireclaw/agent.toml";
/// Where usage records wait for the host's drain (owned by the `agent` user).
pub const DEFAULT_USAGE_SPOOL: &str = "/var/lib/fireclaw-guest/usage.jsonl";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's IRC nick, also the name it answers to (`NICK: ...`).
    pub nick: String,
    /// The system prompt: the template's persona.
    pub persona: String,
    /// The agent's own directory: `run_command` runs here and `MEMORY.md` lives here.
    #[serde(default = "default_workspace")]
    pub workspace: PathBuf,
    /// Where usage records are appended for the host to drain.
    #[serde(default = "default_usage_spool")]
    pub usage_spool: PathBuf,
    pub irc: Irc,
    pub ollama: Ollama,
    /// Absent: no `web_search` tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searxng: Option<Searxng>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Irc {
    /// `host:port` of ngircd (the bridge address in production).
    pub server: String,
    /// Channels joined at connect; `#agents` in production.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    /// The QUIT message sent on SIGTERM.
    #[serde(default = "default_quit_message")]
    pub quit_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ollama {
    /// `http://host:port` (plain http: Ollama listens on the bridge).
    pub url: String,
    /// The model every chat request names.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Searxng {
    /// `http://host:port`; `/search?q=...&format=json` is appended.
    pub url: String,
}

/// Bounds on everything a model or a user can make the agent do. Every one has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Chat requests per interaction before the agent gives up on a tool loop.
    pub tool_rounds: u32,
    /// Messages (questions and answers) kept per channel or DM.
    pub history_messages: usize,
    /// `run_command`'s longest run; the whole process group is killed after it.
    pub command_timeout_secs: u64,
    /// Bytes of a command's output handed back to the model.
    pub command_output_bytes: usize,
    /// `MEMORY.md` may not grow past this many bytes.
    pub memory_bytes: usize,
    /// Bytes of one model reply the agent reads; the rest is cut off.
    pub reply_bytes: usize,
    /// IRC lines one answer may take; the rest is dropped with a note.
    pub reply_lines: usize,
    /// Search results handed to the model.
    pub search_results: usize,
    /// Longest wait for Ollama (one chat request, all of its stream).
    pub ollama_timeout_secs: u64,
    /// Answers per minute to one sender: a backstop against two agents addressing each other
    /// forever.
    pub answers_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tool_rounds: 8,
            history_messages: 20,
            command_timeout_secs: 60,
            command_output_bytes: 8 * 1024,
            memory_bytes: 16 * 1024,
            reply_bytes: 64 * 1024,
            reply_lines: 12,
            search_results: 5,
            ollama_timeout_secs: 300,
            answers_per_minute: 6,
        }
    }
}

fn default_workspace() -> PathBuf {
    PathBuf::from("/workspace")
}
fn default_usage_spool() -> PathBuf {
    PathBuf::from(DEFAULT_USAGE_SPOOL)
}
fn default_channels() -> Vec<String> {
    vec!["#agents".into()]
}
fn default_quit_message() -> String {
    "shutting down".into()
}
