//! The terminal side of [`crate::report::Reporter`]: status lines and progress bars on stderr.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{Progress, Reporter};

/// Reports to stderr: plain lines, and progress bars when stderr is a terminal.
#[derive(Debug, Clone)]
pub struct Shell {
    bars: bool,
}

impl Shell {
    pub fn new() -> Shell {
        Shell {
            bars: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for Shell {
    fn default() -> Self {
        Shell::new()
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Reporter for Shell {
    fn status(&self, msg: &str) {
        eprintln!("{msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn progress(&self, label: &str, total: Option<u64>) -> Box<dyn Progress> {
        eprintln!("{label}");
        if !self.bars {
            return Box::new(Bar(ProgressBar::hidden()));
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("  {bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(Duration::from_millis(200));
                b
            }
        };
        Box::new(Bar(bar))
    }
}
