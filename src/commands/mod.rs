//! One module per command. Each takes parsed arguments and returns an exit code or an error.

pub mod agent;
pub mod audit;
pub mod completions;
pub mod config;
pub mod doctor;
pub mod engines;
pub mod exec;
pub mod gc;
pub mod image;
pub mod logs;
pub mod output;
pub mod provision;
pub mod ps;
pub mod rm;
pub mod run;
pub mod runtime;
pub mod shell;
pub mod snapshot;
pub mod status;
pub mod uninstall;

use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::{Command, GlobalArgs};
use crate::config::Config;
use crate::root::RootPrefix;
use crate::state::Db;

/// Exit codes every command shares (README, "Exit codes"). `run` has its own on top.
pub mod exit {
    pub const SUCCESS: i32 = 0;
    /// fireclaw failed, a bad configuration included.
    pub const FAILURE: i32 = 1;
    /// Bad flags or arguments.
    pub const USAGE: i32 = crate::cli::EXIT_USAGE;
    /// The plan is blocked: a required check failed and nothing was changed.
    pub const BLOCKED: i32 = 3;
    /// `--detailed-exitcode`: changes are pending (dry-run) or were made (apply).
    pub const CHANGES: i32 = 4;
}

/// An error in how fireclaw was called that clap cannot see (an unknown step name, say): it
/// exits [`exit::USAGE`] like clap's own, or 125 for `run`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What every command starts from.
pub struct Env {
    pub root: RootPrefix,
    pub config: Config,
    pub privileged: bool,
    /// `-v/--verbose`: say more.
    pub verbose: bool,
}

impl Env {
    pub fn load(global: &GlobalArgs) -> anyhow::Result<Env> {
        let root_flag = || {
            if std::env::var_os("FIRECLAW_ROOT").is_some() {
                "--root (FIRECLAW_ROOT)"
            } else {
                "--root"
            }
        };
        if !global.root.is_absolute() {
            return Err(UsageError(format!(
                "{} must be an absolute path, got {}",
                root_flag(),
                global.root.display()
            ))
            .into());
        }
        // A root that does not exist yet is for the command to judge (provision plans into it);
        // one that is not a directory can hold nothing, and every path under it would fail with
        // ENOTDIR far from the flag that caused it.
        match std::fs::metadata(&global.root) {
            Ok(m) if !m.is_dir() => anyhow::bail!(
                "{} {} is not a directory",
                root_flag(),
                global.root.display()
            ),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("{} {}: {e}", root_flag(), global.root.display())
            }
            _ => {}
        }
        // A missing root is reported by provision's preflight (a blocked step, with the fix); a
        // root that is not a directory cannot even hold the config file.
        if global.root.exists() && !global.root.is_dir() {
            anyhow::bail!("--root {} is not a directory", global.root.display());
        }
        let root = RootPrefix::new(&global.root);
        let recipes = crate::image::recipe::embedded()
            .names()
            .context("listing the built-in image recipes")?;
        let config = Config::load(&root, global.config.as_deref(), &recipes).map_err(|e| {
            let e = anyhow::Error::new(e);
            if global.config.is_none() && !root.is_system() {
                e.context(format!(
                    "reading the configuration under {} {}",
                    root_flag(),
                    global.root.display()
                ))
            } else {
                e
            }
        })?;
        Ok(Env {
            root,
            config,
            privileged: nix::unistd::geteuid().is_root(),
            verbose: global.verbose,
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.root
            .host(crate::state::db_path(&self.config.paths.state_dir))
    }

    /// The state database for reading. Without root it cannot be read (it is 0600: it holds
    /// backups of secret files); commands then go on without it and say so.
    pub fn open_db_read_only(&self) -> anyhow::Result<Option<Db>> {
        match Db::open_read_only(&self.db_path()) {
            Err(crate::state::StateError::NoPermission { path }) if !self.privileged => {
                eprintln!(
                    "note: {} is readable by root only; going on without what it records (run as root for the full picture)",
                    path.display()
                );
                Ok(None)
            }
            other => Ok(other?),
        }
    }

    /// Commands that work on a provisioned host call this before touching any state, so that on
    /// a host without one they say what to do and create nothing (opening the database would
    /// create it, after which `status` and `uninstall` would take the host for provisioned).
    pub fn require_provisioned(&self) -> anyhow::Result<()> {
        let db = self.db_path();
        if !db.exists() {
            anyhow::bail!(
                "this host is not provisioned ({} does not exist): run `fireclaw provision` first",
                db.display()
            );
        }
        Ok(())
    }

    pub fn require_root(&self, what: &str) -> anyhow::Result<()> {
        if !self.privileged {
            anyhow::bail!("{what} changes the host and needs root: run it with sudo, or add --dry-run to see the plan");
        }
        Ok(())
    }

    /// One provision or uninstall at a time per root: two would interleave journal entries and
    /// race on the same links and files. The lock is a flock on the root directory itself, so it
    /// creates no file anywhere (a lock file per root would pile up, one per test root).
    pub fn lock(&self) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
        let dir = self.root.dir();
        let file = std::fs::File::open(dir)
            .with_context(|| format!("opening {} to lock it", dir.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "another fireclaw provision/uninstall is running for root {} ({e}); wait for it to finish",
                dir.display()
            )
        })
    }
}

/// The exit code for a command's error, after printing it: 125 for `run` (fireclaw itself failed,
/// whatever the cause), 2 for a [`UsageError`], 1 otherwise.
pub fn fail(command: &Command, e: &anyhow::Error) -> i32 {
    eprintln!("error: {}", render_error(e));
    if matches!(command, Command::Run(_)) {
        crate::cli::EXIT_RUN_FAILED
    } else if e.downcast_ref::<UsageError>().is_some() {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

/// An error and its causes on one line, `outer: cause: cause`, each cause once: a message that
/// already ends with (or contains) its cause's text, as `format!("...: {e}")` contexts and
/// `#[error("...: {source}")]` variants do, does not get it repeated.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_error_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(20);
        let e = anyhow::Error::new(crate::config::ConfigError::Read {
            path: "/r/etc/fireclaw/fireclaw.toml".into(),
            source: io,
        })
        .context("reading the configuration under --root /r");
        let text = render_error(&e);
        assert_eq!(text.matches("os error 20").count(), 1, "{text}");
        assert!(
            text.starts_with("reading the configuration under --root /r: "),
            "{text}"
        );

        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(render_error(&e), "outer: middle: inner");
    }

    fn global(root: &std::path::Path) -> GlobalArgs {
        GlobalArgs {
            root: root.to_path_buf(),
            config: None,
            verbose: false,
        }
    }

    #[test]
    fn a_bad_root_is_named_as_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Env::load(&global(&file)).err().unwrap();
        let text = render_error(&err);
        assert!(
            text.contains("--root") && text.contains("not a directory"),
            "{text}"
        );

        let err = Env::load(&global(std::path::Path::new("rel")))
            .err()
            .unwrap();
        assert!(err.downcast_ref::<UsageError>().is_some());
        assert!(render_error(&err).contains("--root"));

        // A root whose configuration cannot be read says which root it was.
        std::fs::create_dir_all(dir.path().join("r/etc/fireclaw/fireclaw.toml")).unwrap();
        let err = Env::load(&global(&dir.path().join("r"))).err().unwrap();
        let text = render_error(&err);
        assert!(
            text.contains("--root") && text.contains("fireclaw.toml"),
            "{text}"
        );
    }
}
