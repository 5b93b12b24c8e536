//! `fireclaw runtime`: the long-running service systemd starts (`Type=notify`).
//!
//! Start-up puts the host back as provision left it (bridge, address, forwarding, nft table, thin
//! pool; see [`startup`]), reconciles the `vms` table (dead VMs torn down as `gc` does, live kept
//! VMs re-adopted), then serves the control socket ([`server`]) and tells systemd it is ready once
//! the socket answers. SIGHUP reloads the configuration ([`reload`]); SIGTERM/SIGINT stop
//! accepting requests and exit 0, leaving kept (agent) VMs running for the next start to re-adopt.
//!
//! What comes next plugs in here: the warm pool implements [`pool::WarmPool`] and replaces
//! [`pool::NoPool`] in [`Service::new`]; its hand-outs and misses feed [`metrics::Metrics`].

pub mod access;
pub mod client;
mod exec;
pub mod logging;
pub mod metrics;
pub mod overseer;
pub mod pool;
pub mod reload;
mod run;
pub mod server;
pub mod startup;
mod vms;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::root::RootPrefix;
use crate::vm::Host;

/// The group whose members may use the control socket (provision creates it).
pub const SOCKET_GROUP: &str = "fireclaw";

/// The control socket's file name, in `paths.run_dir`.
pub const SOCKET_NAME: &str = "fireclaw.sock";

/// How often the supervisor looks at the VMs it adopted.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

/// The control socket of the runtime for this root and configuration.
pub fn socket_path(root: &RootPrefix, config: &Config) -> PathBuf {
    root.host(&config.paths.run_dir).join(SOCKET_NAME)
}

/// What `fireclaw runtime` was started with.
pub struct Options {
    pub root: RootPrefix,
    pub config: Config,
    /// The configuration file named on the command line, re-read on SIGHUP (else the default
    /// path under the root).
    pub config_path: Option<PathBuf>,
    pub db_path: PathBuf,
    /// The VMM engines as provision installed them (and the environment overrode).
    pub engines: crate::vmm::EngineOptions,
}

/// Everything the request handlers and background tasks share.
pub struct Service {
    pub(crate) root: RootPrefix,
    pub(crate) config_path: Option<PathBuf>,
    host: RwLock<Host>,
    pub(crate) started: Instant,
    pub(crate) startup: Mutex<Vec<String>>,
    /// Kept VMs this runtime supervises, by id, with the state it shows for them.
    pub(crate) adopted: Mutex<BTreeMap<String, vms::Adopted>>,
    pub(crate) pool: Arc<dyn pool::WarmPool>,
    /// The warm pool itself, for hand-outs (`None` in tests that run without one).
    pub(crate) warm: Option<Arc<crate::pool::warm::Pool>>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) access: access::Access,
    /// The agent manager (set once the service runs), shared by the overseer and the socket.
    pub(crate) agents: std::sync::OnceLock<Arc<crate::agents::manager::Manager>>,
    /// Set when the runtime stops: long-lived responses (console follow) end at once.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

impl Service {
    pub fn new(opts: &Options, access: access::Access) -> Service {
        Service {
            root: opts.root.clone(),
            config_path: opts.config_path.clone(),
            host: RwLock::new(Host {
                root: opts.root.clone(),
                config: opts.config.clone(),
                db_path: opts.db_path.clone(),
                engines: opts.engines.clone(),
            }),
            started: Instant::now(),
            startup: Mutex::new(Vec::new()),
            adopted: Mutex::new(BTreeMap::new()),
            pool: Arc::new(pool::NoPool),
            warm: None,
            metrics: metrics::Metrics::new(),
            access,
            agents: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The warm pool this service reports and shuts down (the default is [`pool::NoPool`]).
    pub fn with_pool(mut self, pool: Arc<dyn pool::WarmPool>) -> Service {
        self.pool = pool;
        self
    }

    /// The warm pool of [`crate::pool::warm`]: reported, resized, stopped and handing out VMs.
    pub fn with_warm_pool(mut self, warm: Arc<crate::pool::warm::Pool>) -> Service {
        self.pool = Arc::new(pool::Warm(warm.clone()));
        self.warm = Some(warm);
        self
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A snapshot of the host context with the configuration in effect.
    pub fn host(&self) -> Host {
        match self.host.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_config(&self, config: Config) {
        match self.host.write() {
            Ok(mut h) => h.config = config,
            Err(poisoned) => poisoned.into_inner().config = config,
        }
    }

    pub(crate) fn startup_lines(&self) -> Vec<String> {
        self.startup.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Runs the service until SIGTERM or SIGINT. Builds its own multi-threaded tokio runtime.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fireclaw-runtime")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(opts))
}

async fn serve(opts: Options) -> anyhow::Result<()> {
    // First of all: a SIGTERM during start-up must stop us cleanly, not kill us half-way.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    if !opts.db_path.exists() {
        anyhow::bail!(
            "this host is not provisioned ({} does not exist): run `fireclaw provision` first",
            opts.db_path.display()
        );
    }
    let access = access::Access::from_system(SOCKET_GROUP)?;
    let socket = socket_path(&opts.root, &opts.config);
    let listener = server::bind(&socket, &access).await?;
    let service = Service::new(&opts, access);
    let (restore, build) = (
        service.metrics.restore_seconds.clone(),
        service.metrics.snapshot_build_seconds.clone(),
    );
    let warm = Arc::new(crate::pool::warm::Pool::new(
        service.host(),
        move |e| match e {
            crate::pool::warm::Event::Restored { ms } => restore.observe(ms as f64 / 1000.0),
            crate::pool::warm::Event::SnapshotBuilt { ms } => build.observe(ms as f64 / 1000.0),
        },
    ));
    let service = Arc::new(service.with_warm_pool(warm.clone()));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "fireclaw runtime starting");

    // Put the host back and reconcile the VMs before answering: a `ps` must not list VMs that
    // died with the last boot.
    let svc = service.clone();
    let lines = tokio::task::spawn_blocking(move || startup::startup(&svc))
        .await
        .context("start-up task")?;
    if let Ok(mut l) = service.startup.lock() {
        *l = lines;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(server::accept_loop(
        listener,
        service.clone(),
        stop_rx.clone(),
    ));
    // READY only once the socket answers a real request, as a client would send it.
    client::Client::new(socket.clone())
        .health()
        .await
        .context("the control socket did not answer its own health check")?;
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving the control socket"),
    ]);
    tracing::info!(socket = %socket.display(), "ready");

    let supervisor = tokio::spawn(vms::supervise(service.clone(), stop_rx.clone()));
    // After start-up's reconcile: the pool's slots and snapshots are made on a clean host.
    let refill = tokio::spawn(warm.clone().refill());
    let svc = service.clone();
    let (presence, presence_desk) = crate::irc::client::presence();
    let manager = Arc::new(
        crate::agents::manager::Manager::new(Arc::new(move || svc.host()))
            .with_presence(presence)
            .with_pool(warm.clone()),
    );
    set_agent_wants(&service.host(), &warm);
    let _ = service.agents.set(manager.clone());
    let (announce_tx, announce_rx) = tokio::sync::mpsc::channel(64);
    let checker = crate::agents::health::Checker::new(
        manager.clone(),
        announce_tx,
        overseer::rules(&service.host()).control_channel,
    );
    let health = tokio::spawn(checker.run(stop_rx.clone()));
    let overseer = tokio::spawn(overseer::run(
        service.host(),
        manager,
        announce_rx,
        presence_desk,
        stop_rx.clone(),
    ));

    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                let svc = service.clone();
                let _ = tokio::task::spawn_blocking(move || reload::reload(&svc)).await;
            }
        }
    };
    tracing::info!("{why}: stopping; kept VMs stay running for the next start to re-adopt");
    notify(&[sd_notify::NotifyState::Stopping]);
    service
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    // In-flight requests get a moment to finish; the socket stops accepting at once.
    let _ = tokio::time::timeout(Duration::from_secs(10), accept).await;
    let _ = supervisor.await;
    let _ = health.await;
    // The overseer says QUIT; agents stay in the channel.
    let _ = tokio::time::timeout(Duration::from_secs(5), overseer).await;
    service.pool.shutdown().await;
    let _ = refill.await;
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", socket.display()),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells the warm pool which agents to keep ready (`[agents] warm`), saying what it skips.
pub(crate) fn set_agent_wants(host: &crate::vm::Host, warm: &crate::pool::warm::Pool) {
    let (wants, notes) = crate::agents::launch::warm_wants(host);
    for n in notes {
        tracing::warn!("agents: {n}");
    }
    if !wants.is_empty() {
        tracing::info!(
            "agents: keeping warm: {}",
            wants
                .iter()
                .map(|w| w.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    warm.set_agent_wants(wants);
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) how the service is doing.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}
