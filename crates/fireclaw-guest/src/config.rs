//! `/etc/fireclaw/agent.toml`: everything the host tells one agent. The types and defaults are
//! `fireclaw_proto::agent` (the host writes what the guest reads); here they are parsed with line
//! and key in every error, and validated.

use std::path::{Path, PathBuf};

pub use fireclaw_proto::agent::{
    AgentConfig as Config, Irc, Limits, Ollama, Searxng, DEFAULT_PATH, DEFAULT_USAGE_SPOOL,
};

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

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates `text`, naming `path` in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    validate(&config, path)?;
    Ok(config)
}

fn validate(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &'static str, problem: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        problem,
    };
    valid_nick(&config.nick).map_err(|p| bad("nick", p))?;
    for c in &config.irc.channels {
        valid_channel(c).map_err(|p| bad("irc.channels", p))?;
    }
    valid_host_port(&config.irc.server).map_err(|p| bad("irc.server", p))?;
    if has_line_breaks(&config.irc.quit_message) {
        return Err(bad(
            "irc.quit_message",
            "must be one line without control characters".into(),
        ));
    }
    valid_http_url(&config.ollama.url).map_err(|p| bad("ollama.url", p))?;
    if config.ollama.model.is_empty() || config.ollama.model.chars().any(char::is_control) {
        return Err(bad(
            "ollama.model",
            format!("must be a model name, got {:?}", config.ollama.model),
        ));
    }
    if let Some(s) = &config.searxng {
        valid_http_url(&s.url).map_err(|p| bad("searxng.url", p))?;
    }
    if !config.workspace.is_absolute() {
        return Err(bad(
            "workspace",
            format!("must be an absolute path, got {:?}", config.workspace),
        ));
    }
    if !config.usage_spool.is_absolute() {
        return Err(bad(
            "usage_spool",
            format!("must be an absolute path, got {:?}", config.usage_spool),
        ));
    }
    let l = &config.limits;
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
        super::parse(text, Path::new("/etc/fireclaw/agent.toml"))
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

    /// What the host serializes from `fireclaw_proto::agent::AgentConfig` is what the guest reads.
    #[test]
    fn the_hosts_serialized_config_parses_back_whole() {
        let mut c = parse(GOOD).unwrap();
        for searxng in [None, Some("http://10.0.0.1:8888/")] {
            c.searxng = searxng.map(|url| Searxng { url: url.into() });
            c.persona = "Line one.\nLine \"two\" with 'quotes' and # hash.".into();
            c.limits.tool_rounds = 3;
            c.irc.channels = vec!["#agents".into(), "#ops".into()];
            let text = toml::to_string(&c).unwrap();
            assert_eq!(parse(&text).unwrap(), c, "{text}");
        }
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
