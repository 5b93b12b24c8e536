//! fireclaw: provisioning, images, VM lifecycle and the agent runtime. The binary in `main.rs` only
//! parses and dispatches; everything lives here so integration tests can reach it.

pub mod agents;
pub mod archive;
pub mod cli;
pub mod commands;
pub mod config;
pub mod fetch;
pub mod fsops;
pub mod image;
pub mod irc;
pub mod net;
pub mod plan;
pub mod pool;
pub mod provision;
pub mod report;
pub mod root;
pub mod runtime;
pub mod state;
pub mod storage;
pub mod template;
pub mod values;
pub mod vm;
pub mod vmm;
