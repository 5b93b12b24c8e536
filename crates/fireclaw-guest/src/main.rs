//! `fireclaw-guest`: parses the command line and dispatches to the library.

use std::process::ExitCode;

use fireclaw_guest::cli::{self, Cli};
use fireclaw_guest::{bot, config, usage};
use fireclaw_proto::GuestHealth;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprint!("fireclaw-guest: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match cli {
        Cli::Version => {
            println!("fireclaw-guest {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cli::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Cli::Health => {
            match serde_json::to_string(&GuestHealth::current(env!("CARGO_PKG_VERSION"))) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cli::Drain { spool, config } => {
            init_logging();
            let spool = match (spool, config) {
                (Some(s), _) => s,
                (None, Some(c)) => match config::load(&c) {
                    Ok(c) => c.usage_spool,
                    Err(e) => return fail(e),
                },
                (None, None) => config::DEFAULT_USAGE_SPOOL.into(),
            };
            match usage::drain(&spool, &mut std::io::stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(format!("draining {}: {e}", spool.display())),
            }
        }
        Cli::Run {
            config,
            allow_root,
            wait,
        } => {
            init_logging();
            if nix::unistd::geteuid().is_root() && !allow_root {
                return fail(
                    "refusing to run as root: the agent runs as the unprivileged `agent` user",
                );
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match runtime.block_on(bot::run(config, wait)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIRECLAW_GUEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("fireclaw-guest: {e}");
    ExitCode::FAILURE
}
