//! `fireclaw-guest`: the program inside every agent VM. An IRC agent that thinks with Ollama and
//! acts with tools, plus the small commands the host calls over SSH (`health`, `usage --drain`).
//!
//! Arrows point down: `cli` → `bot` (IRC, signals) → `agent` (context, tool loop) → {`ollama`,
//! `tools`} → {`http`, `memory`, `text`, `usage`, `config`}.

pub mod agent;
pub mod bot;
pub mod cli;
pub mod config;
pub mod http;
pub mod memory;
pub mod ollama;
pub mod tools;
pub mod usage;

/// IRC text rules shared with the host's overseer (sanitizing, splitting, addressing).
pub use fireclaw_proto::text;
