//! The agent system's host side: templates, the agent manager, workspaces and health.
//!
//! An agent is a long-running VM from the `agent` image that joins IRC under its own nick and
//! thinks with the local Ollama. Templates (`recipes/agents/*.toml`, overridable in
//! `/etc/fireclaw/agents/`) say what kind of agent it is.

pub mod health;
pub mod launch;
pub mod manager;
pub mod store;
pub mod template;
pub mod workspace;
