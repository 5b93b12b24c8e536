//! Agent templates: what kind of agent `!invoke TEMPLATE` makes.
//!
//! A template is a TOML file named after the template (`coder.toml`): persona (the system
//! prompt), default model, tools, vCPUs and memory, network policy and restart policy. The
//! built-in set lives in `recipes/agents/`; an operator adds or overrides templates by putting
//! files of the same shape in `/etc/fireclaw/agents/`. As in Firecracker's `vmm_config`, every
//! table denies unknown fields and every value is checked while it is parsed, so a typo or an
//! absurd value is an error naming the file, the line and the key, never a silent default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most vCPUs a template may ask for (the same bound as `fireclaw run --cpus`).
pub const MAX_VCPUS: u8 = crate::config::bounds::VCPUS.max as u8;
/// Memory bounds in MiB: below 128 the agent image does not boot with podman; the upper bound
/// keeps a typo (an extra zero or two) from reserving the host's memory.
pub const MEM_MIB_RANGE: (u32, u32) = (128, 65_536);
/// A persona is a system prompt, sent with every request: long enough for a page of
/// instructions, short enough not to crowd the model's context.
pub const MAX_PERSONA_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: the file name must be a template name ([a-z][a-z0-9-]*, at most 32 characters) ending in .toml")]
    BadFileName { path: PathBuf },
    #[error("no template named {name:?}; templates: {known}")]
    Unknown { name: String, known: String },
}

/// One agent template. Field docs are what an operator reads in `docs/agents.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// One line for `!templates`.
    pub description: String,
    /// The system prompt: who the agent is and how it behaves.
    pub persona: Persona,
    /// The Ollama model the agent starts with; empty means `[ollama] default_model`.
    #[serde(default)]
    pub model: String,
    /// Tools the agent may call. `web_search` is left out at run time when no SearXNG is set.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Virtual CPUs of the agent's VM.
    #[serde(default = "default_vcpus")]
    pub vcpus: Vcpus,
    /// Memory of the agent's VM in MiB.
    #[serde(default = "default_mem")]
    pub mem_mib: MemMib,
    /// What the agent's VM may reach: `full` (NAT out), `local` (only IRC and Ollama on the
    /// host) or `none` (nothing it starts itself).
    #[serde(default = "default_policy")]
    pub network: NetworkPolicy,
    /// What happens when the agent's VM or guest agent dies.
    #[serde(default)]
    pub restart: Restart,
}

fn default_vcpus() -> Vcpus {
    Vcpus(1)
}
fn default_mem() -> MemMib {
    MemMib(512)
}
fn default_policy() -> NetworkPolicy {
    NetworkPolicy::Local
}

/// The system prompt, non-empty and bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Persona(String);

impl Persona {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Persona {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("the persona must not be empty".into());
        }
        if s.len() > MAX_PERSONA_BYTES {
            return Err(format!(
                "the persona is {} bytes; at most {MAX_PERSONA_BYTES}",
                s.len()
            ));
        }
        if s.contains('\0') {
            return Err("the persona contains a NUL byte".into());
        }
        Ok(Persona(s))
    }
}

impl From<Persona> for String {
    fn from(p: Persona) -> String {
        p.0
    }
}

/// vCPUs, 1..=[`MAX_VCPUS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct Vcpus(u8);

impl Vcpus {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Vcpus {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u8::try_from(n) {
            Ok(v) if (1..=MAX_VCPUS).contains(&v) => Ok(Vcpus(v)),
            _ => Err(format!("expected 1 to {MAX_VCPUS} vCPUs, got {n}")),
        }
    }
}

impl From<Vcpus> for u8 {
    fn from(v: Vcpus) -> u8 {
        v.0
    }
}

/// Memory in MiB, within [`MEM_MIB_RANGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct MemMib(u32);

impl MemMib {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for MemMib {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        let (lo, hi) = MEM_MIB_RANGE;
        match u32::try_from(n) {
            Ok(v) if (lo..=hi).contains(&v) => Ok(MemMib(v)),
            _ => Err(format!("expected {lo} to {hi} MiB, got {n}")),
        }
    }
}

impl From<MemMib> for u32 {
    fn from(v: MemMib) -> u32 {
        v.0
    }
}

/// A tool the guest agent offers the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    /// A shell command as the `agent` user in `/workspace`, with a timeout and an output cap.
    RunCommand,
    /// SearXNG's JSON API.
    WebSearch,
    /// Append to `/workspace/MEMORY.md`.
    SaveMemory,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::RunCommand => "run_command",
            Tool::WebSearch => "web_search",
            Tool::SaveMemory => "save_memory",
        }
    }
}

/// A template's network policy (the VM layer's `net::policy::Policy` by another name: templates
/// are parsed below the VM layer's types and mapped onto them when an agent starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    Full,
    Local,
    None,
}

impl NetworkPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::Full => "full",
            NetworkPolicy::Local => "local",
            NetworkPolicy::None => "none",
        }
    }
}

/// When a dead agent is started again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    /// `on-failure` (restart when the VM crashes or its guest agent stops answering), `always`
    /// (also after a clean shutdown: the guest powered off) or `never`.
    pub policy: RestartPolicy,
    /// Seconds before the first restart; doubled after each restart in a row, capped at 300.
    pub backoff_secs: BackoffSecs,
    /// Restarts in a row after which the agent is left stopped and announced as given up.
    pub max_restarts: MaxRestarts,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::OnFailure,
            backoff_secs: BackoffSecs(5),
            max_restarts: MaxRestarts(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    OnFailure,
    Always,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::Never => "never",
        }
    }
}

/// 1..=300 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct BackoffSecs(u32);

impl BackoffSecs {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for BackoffSecs {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(v) if (1..=300).contains(&v) => Ok(BackoffSecs(v)),
            _ => Err(format!("expected 1 to 300 seconds, got {n}")),
        }
    }
}

impl From<BackoffSecs> for u32 {
    fn from(v: BackoffSecs) -> u32 {
        v.0
    }
}

/// 0..=100 restarts in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct MaxRestarts(u32);

impl MaxRestarts {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for MaxRestarts {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(v) if v <= 100 => Ok(MaxRestarts(v)),
            _ => Err(format!("expected 0 to 100 restarts, got {n}")),
        }
    }
}

impl From<MaxRestarts> for u32 {
    fn from(v: MaxRestarts) -> u32 {
        v.0
    }
}

impl Template {
    /// Parses one template file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Template, TemplateError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| crate::config::line_col(text, s.start))
                .unwrap_or((1, 1));
            TemplateError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }
}

/// Template names: what `!invoke` takes, so the same rules as a file stem that is safe to log.
pub fn is_template_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.len() <= 32
}

/// The built-in templates, compiled in so the binary needs nothing beside it on a host.
pub const BUILTIN: &[(&str, &str)] = &[
    ("coder", include_str!("../../recipes/agents/coder.toml")),
    (
        "creative",
        include_str!("../../recipes/agents/creative.toml"),
    ),
    ("quick", include_str!("../../recipes/agents/quick.toml")),
    (
        "researcher",
        include_str!("../../recipes/agents/researcher.toml"),
    ),
    ("worker", include_str!("../../recipes/agents/worker.toml")),
];

/// The templates in effect: the built-in ones, then each directory's files in order, a later
/// file replacing an earlier template of the same name.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_name: BTreeMap<String, (Template, PathBuf)>,
}

impl Templates {
    /// Loads every `*.toml` of each directory in order; a missing directory is empty (the
    /// operator's usually is). Any bad file fails the whole load: a template that silently
    /// vanished would make `!invoke` fail later with a worse message.
    pub fn load(dirs: &[&Path]) -> Result<Templates, TemplateError> {
        let mut by_name = BTreeMap::new();
        for (name, text) in BUILTIN {
            let path = PathBuf::from(format!("recipes/agents/{name}.toml"));
            let t = Template::parse(text, &path)?;
            by_name.insert(name.to_string(), (t, path));
        }
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(TemplateError::Read {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for path in files {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| is_template_name(s))
                    .ok_or_else(|| TemplateError::BadFileName { path: path.clone() })?
                    .to_string();
                let text =
                    std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let t = Template::parse(&text, &path)?;
                by_name.insert(name, (t, path));
            }
        }
        Ok(Templates { by_name })
    }

    pub fn get(&self, name: &str) -> Result<&Template, TemplateError> {
        self.by_name
            .get(name)
            .map(|(t, _)| t)
            .ok_or_else(|| TemplateError::Unknown {
                name: name.chars().take(40).collect(),
                known: self.names().join(", "),
            })
    }

    /// Where a template came from (built-in or the operator's override).
    pub fn source(&self, name: &str) -> Option<&Path> {
        self.by_name.get(name).map(|(_, p)| p.as_path())
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Template)> {
        self.by_name.iter().map(|(n, (t, _))| (n.as_str(), t))
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "writes code"
persona = "You are a careful programmer."
model = "qwen2.5-coder:7b"
tools = ["run_command", "save_memory"]
vcpus = 2
mem_mib = 1024
network = "full"

[restart]
policy = "on-failure"
backoff_secs = 10
max_restarts = 3
"#;

    fn parse(text: &str) -> Result<Template, TemplateError> {
        Template::parse(text, Path::new("/etc/fireclaw/agents/x.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_template_parses() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.vcpus.get(), 2);
        assert_eq!(t.tools, [Tool::RunCommand, Tool::SaveMemory]);
        assert_eq!(t.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(t.restart.max_restarts.get(), 3);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let t = parse("description = \"d\"\npersona = \"p\"\n").unwrap();
        assert_eq!((t.vcpus.get(), t.mem_mib.get()), (1, 512));
        assert_eq!(t.network, NetworkPolicy::Local);
        assert_eq!(t.restart, Restart::default());
        assert!(t.tools.is_empty() && t.model.is_empty());
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let e = err("description = \"d\"\npersona = \"p\"\ntoolz = []\n");
        assert!(e.starts_with("/etc/fireclaw/agents/x.toml:3:"), "{e}");
        assert!(e.contains("toolz"), "{e}");
        let e = err("description = \"d\"\npersona = \"p\"\n[restart]\nbackof = 1\n");
        assert!(e.contains(":4:") && e.contains("backof"), "{e}");
    }

    #[test]
    fn absurd_values_name_the_line_and_what_is_allowed() {
        for (text, line, want) in [
            ("vcpus = 0", 3, "1 to 32"),
            ("vcpus = 255", 3, "1 to 32"),
            ("vcpus = -1", 3, "1 to 32"),
            ("mem_mib = 99999999", 3, "128 to 65536"),
            ("network = \"open\"", 3, "full"),
            ("tools = [\"rm_rf\"]", 3, "run_command"),
            ("[restart]\npolicy = \"sometimes\"", 4, "on-failure"),
            ("[restart]\nbackoff_secs = 0", 4, "1 to 300"),
            ("[restart]\nmax_restarts = 1000", 4, "0 to 100"),
        ] {
            let e = err(&format!("description = \"d\"\npersona = \"p\"\n{text}\n"));
            assert!(e.contains(&format!(":{line}:")), "{text}: {e}");
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_persona_must_say_something_and_not_too_much() {
        assert!(err("description = \"d\"\npersona = \"  \"\n").contains("must not be empty"));
        let long = "x".repeat(MAX_PERSONA_BYTES + 1);
        let e = err(&format!("description = \"d\"\npersona = \"{long}\"\n"));
        assert!(e.contains("at most 8192"), "{e}");
        assert!(err("description = \"d\"\npersona = \"a\\u0000b\"\n").contains("NUL"));
    }

    #[test]
    fn template_names() {
        for good in ["coder", "web-2", "a"] {
            assert!(is_template_name(good), "{good}");
        }
        for bad in [
            "",
            "Coder",
            "../x",
            "a b",
            "a;b",
            "1abc",
            &"a".repeat(33),
            "é",
        ] {
            assert!(!is_template_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_built_in_templates_load_and_an_operator_file_overrides_one() {
        let t = Templates::load(&[]).unwrap();
        assert_eq!(
            t.names(),
            ["coder", "creative", "quick", "researcher", "worker"]
        );
        // Every file in recipes/agents is compiled in.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/agents");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        assert_eq!(files, t.names());
        let ops = tempfile::tempdir().unwrap();
        std::fs::write(
            ops.path().join("coder.toml"),
            "description = \"ours\"\npersona = \"p\"\n",
        )
        .unwrap();
        std::fs::write(
            ops.path().join("extra.toml"),
            "description = \"new\"\npersona = \"p\"\n",
        )
        .unwrap();
        let t = Templates::load(&[ops.path(), Path::new("/nonexistent")]).unwrap();
        assert_eq!(t.get("coder").unwrap().description, "ours");
        assert_eq!(
            t.source("coder"),
            Some(ops.path().join("coder.toml").as_path())
        );
        assert!(t.get("extra").is_ok());
        let e = t.get("../etc").unwrap_err().to_string();
        assert!(e.contains("templates: coder, creative, extra"), "{e}");

        std::fs::write(ops.path().join("Bad Name.toml"), "").unwrap();
        let e = Templates::load(&[ops.path()]).unwrap_err().to_string();
        assert!(e.contains("Bad Name.toml"), "{e}");
    }
}
