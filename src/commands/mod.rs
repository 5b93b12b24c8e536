//! One module per command. Each takes parsed arguments and returns an exit code or an error.

pub mod doctor;
pub mod exec;
pub mod gc;
pub mod image;
pub mod logs;
pub mod provision;
pub mod ps;
pub mod rm;
pub mod run;
pub mod runtime;
pub mod shell;
pub mod status;
pub mod uninstall;

use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::root::RootPrefix;
use crate::state::Db;

/// What every command starts from.
pub struct Env {
    pub root: RootPrefix,
    pub config: Config,
    pub privileged: bool,
}

impl Env {
    pub fn load(global: &GlobalArgs) -> anyhow::Result<Env> {
        if !global.root.is_absolute() {
            anyhow::bail!(
                "--root must be an absolute path, got {}",
                global.root.display()
            );
        }
        let root = RootPrefix::new(&global.root);
        let config = Config::load(&root, global.config.as_deref())?;
        Ok(Env {
            root,
            config,
            privileged: nix::unistd::geteuid().is_root(),
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.host(crate::provision::state_db::db_path(
            &self.config.paths.state_dir,
        ))
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
