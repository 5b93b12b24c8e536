//! `/etc/fireclaw/agent.toml`: everything the host tells one agent. The host writes it; a typo is
//! an error naming the line and key, never a silent default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the image's init points `fireclaw-guest run --config`.
pub const DEFAULT_PATH: &str = "/etc/fireclaw/agent.toml";
/// Where usage records wait for the host's drain (owned by the `agent` user).
pub const DEFAULT_USAGE_SPOOL: &str = "/var/lib/fireclaw-guest/usage.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the line, the column and the key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    #[serde(default)]
    pub searxng: Option<Searxng>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ollama {
    /// `http://host:port` (plain http: Ollama listens on the bridge).
    pub url: String,
    /// The model every chat request names.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Searxng {
    /// `http://host:port`; `/search?q=...&format=json` is appended.
    pub url: String,
}

/// Bounds on everything a model or a user can make the agent do. Every one has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        valid_nick(&self.nick).map_err(|p| bad("nick", p))?;
        for c in &self.irc.channels {
            valid_channel(c).map_err(|p| bad("irc.channels", p))?;
        }
        valid_host_port(&self.irc.server).map_err(|p| bad("irc.server", p))?;
        if has_line_breaks(&self.irc.quit_message) {
            return Err(bad(
                "irc.quit_message",
                "must be one line without control characters".into(),
            ));
        }
        valid_http_url(&self.ollama.url).map_err(|p| bad("ollama.url", p))?;
        if self.ollama.model.is_empty() || self.ollama.model.chars().any(char::is_control) {
            return Err(bad(
                "ollama.model",
                format!("must be a model name, got {:?}", self.ollama.model),
            ));
        }
        if let Some(s) = &self.searxng {
            valid_http_url(&s.url).map_err(|p| bad("searxng.url", p))?;
        }
        if !self.workspace.is_absolute() {
            return Err(bad(
                "workspace",
                format!("must be an absolute path, got {:?}", self.workspace),
            ));
        }
        if !self.usage_spool.is_absolute() {
            return Err(bad(
                "usage_spool",
                format!("must be an absolute path, got {:?}", self.usage_spool),
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.tool_rounds", l.tool_rounds as u64),
            ("limits.history_messages", l.history_messages as u64),
            ("limits.command_timeout_secs", l.command_timeout_secs),
            ("limits.command_output_bytes", l.command_output_bytes as u64),
            ("limits.memory_bytes", l.memory_bytes as u64),
            ("limits.reply_bytes", l.reply_bytes as u64),
            ("limits.reply_lines", l.reply_lines as u64),
            ("limits.search_results", l.search_results as u64),
            ("limits.ollama_timeout_secs", l.ollama_timeout_secs),
            ("limits.answers_per_minute", l.answers_per_minute as u64),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

fn has_line_breaks(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// RFC 2812's nick grammar (letter or special first, then letters, digits, specials, `-`), at
/// most 30 bytes (ngircd's ceiling for `MaxNickLength`).
pub fn valid_nick(nick: &str) -> Result<(), String> {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = nick.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || special(c));
    if !first_ok
        || nick.len() > 30
        || !chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
    {
        return Err(format!(
            "must be an IRC nick (a letter first, then letters, digits or []\\`_^{{|}}-, at most 30), got {nick:?}"
        ));
    }
    Ok(())
}

/// `#name` without spaces, commas, BEL or control characters, at most 50 bytes.
pub fn valid_channel(chan: &str) -> Result<(), String> {
    let ok = chan.len() >= 2
        && chan.len() <= 50
        && chan.starts_with(['#', '&', '+', '!'])
        && !chan
            .chars()
            .any(|c| c == ' ' || c == ',' || c == ':' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must hold channel names like \"#agents\" (no spaces, commas or control characters), got {chan:?}"
        ))
    }
}

fn valid_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '/') =>
        {
            Ok(())
        }
        _ => Err(format!("must be host:port, got {s:?}")),
    }
}

/// `http://host:port[/prefix]`; https is refused because the guest carries no TLS (the services
/// are on the bridge).
pub fn valid_http_url(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(format!(
            "must start with http:// (plain http on the bridge; no TLS in the guest), got {s:?}"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must be http://host[:port][/path], got {s:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
nick = "coder"
persona = "You write code."
[irc]
server = "172.16.0.1:6667"
[ollama]
url = "http://172.16.0.1:11434"
model = "qwen2.5-coder:7b"
"##;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/fireclaw/agent.toml"))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.irc.channels, ["#agents"]);
        assert_eq!(c.workspace, Path::new("/workspace"));
        assert_eq!(c.usage_spool, Path::new(DEFAULT_USAGE_SPOOL));
        assert!(c.searxng.is_none());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace("[ollama]\n", "[ollama]\nmodle = \"x\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("/etc/fireclaw/agent.toml"), "{e}");
        assert!(e.contains("line 7"), "{e}");
        assert!(e.contains("modle"), "{e}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let text = format!("{GOOD}[limits]\ntool_rounds = \"many\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("line 10"), "{e}");
        assert!(e.contains("tool_rounds") || e.contains("many"), "{e}");
    }

    #[test]
    fn hostile_values_are_refused_by_key() {
        for (from, to, key) in [
            ("\"coder\"", "\"co der\"", "nick"),
            ("\"coder\"", "\"coder\\r\\nQUIT\"", "nick"),
            ("\"coder\"", "\"9lives\"", "nick"),
            ("\"coder\"", "\"\"", "nick"),
            ("\"172.16.0.1:6667\"", "\"172.16.0.1\"", "irc.server"),
            ("\"172.16.0.1:6667\"", "\"h:0\"", "irc.server"),
            ("\"http://172.16.0.1:11434\"", "\"https://x\"", "ollama.url"),
            ("\"http://172.16.0.1:11434\"", "\"http://\"", "ollama.url"),
            ("\"qwen2.5-coder:7b\"", "\"\"", "ollama.model"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{to}: {e}");
        }
        let text = GOOD.replace("[irc]\n", "[irc]\nchannels = [\"#ok\", \"#a,#b\"]\n");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("irc.channels"));
        let text = GOOD.replace("[irc]\n", "[irc]\nquit_message = \"bye\\r\\nJOIN #x\"\n");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("irc.quit_message"));
        let text = format!("{GOOD}[limits]\ncommand_timeout_secs = 0\n");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("limits.command_timeout_secs"));
        let text = GOOD.replace("nick", "workspace = \"rel\"\nnick");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("`workspace`"));
    }

    #[test]
    fn searxng_section_enables_search() {
        let text = format!("{GOOD}[searxng]\nurl = \"http://10.0.0.1:8888\"\n");
        assert_eq!(
            parse(&text).unwrap().searxng.unwrap().url,
            "http://10.0.0.1:8888"
        );
    }
}
