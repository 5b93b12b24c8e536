//! How library code tells the operator what it is doing without printing.
//!
//! Long work (downloads, extraction, kernel and image builds, applying a plan) reports through a
//! [`Reporter`] the command hands in, the way cargo's `ops` report through its `Shell`. The CLI
//! implements it for a terminal (`commands::shell`); the runtime sends the same events to
//! `tracing` (journald under systemd); tests use [`Silent`] or collect the lines.

use std::sync::Mutex;

/// Where library code sends messages and progress.
pub trait Reporter: Send + Sync {
    /// A line worth showing the operator ("image agent: packing").
    fn status(&self, msg: &str);
    /// Something went wrong but the work goes on ("cleanup of VM x failed: ...").
    fn warn(&self, msg: &str);
    /// A unit of long work. `total` is in units the caller chooses (bytes, actions) when known.
    fn progress(&self, label: &str, total: Option<u64>) -> Box<dyn Progress>;
}

/// One piece of long work in flight; finished when dropped.
pub trait Progress: Send {
    /// Replace the message shown beside the progress.
    fn set_message(&self, msg: &str);
    /// Advance by `n` units.
    fn inc(&self, n: u64);
}

/// Discards everything: for tests and callers that want no output.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

struct NoProgress;

impl Progress for NoProgress {
    fn set_message(&self, _: &str) {}
    fn inc(&self, _: u64) {}
}

impl Reporter for Silent {
    fn status(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn progress(&self, _: &str, _: Option<u64>) -> Box<dyn Progress> {
        Box::new(NoProgress)
    }
}

/// Sends messages to `tracing` (the runtime's logs). Progress is logged once, when it starts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tracing;

impl Reporter for Tracing {
    fn status(&self, msg: &str) {
        tracing::info!("{msg}");
    }
    fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
    }
    fn progress(&self, label: &str, _: Option<u64>) -> Box<dyn Progress> {
        tracing::info!("{label}");
        Box::new(NoProgress)
    }
}

/// Collects messages as lines (`status: ...`, `warn: ...`): for tests that assert on what an
/// operator would have been told.
#[derive(Debug, Default)]
pub struct Collect {
    lines: Mutex<Vec<String>>,
}

impl Collect {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
    fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }
}

impl Reporter for Collect {
    fn status(&self, msg: &str) {
        self.push(format!("status: {msg}"));
    }
    fn warn(&self, msg: &str) {
        self.push(format!("warn: {msg}"));
    }
    fn progress(&self, label: &str, _: Option<u64>) -> Box<dyn Progress> {
        self.push(format!("progress: {label}"));
        Box::new(NoProgress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_keeps_lines_in_order() {
        let c = Collect::default();
        c.status("a");
        c.warn("b");
        let p = c.progress("c", Some(3));
        p.inc(1);
        assert_eq!(c.lines(), ["status: a", "warn: b", "progress: c"]);
    }
}
