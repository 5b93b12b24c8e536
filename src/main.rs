use clap::Parser;

use fireclaw::cli::{Cli, Command};
use fireclaw::commands::{self, Env};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(commands::run::usage_exit_code(&e, &argv));
    });
    let code = Env::load(&cli.global).and_then(|env| match &cli.command {
        Command::Provision(a) => commands::provision::run(&env, a),
        Command::Uninstall(a) => commands::uninstall::run(&env, a),
        Command::Doctor(a) => commands::doctor::run(&env, a),
        Command::Status(a) => commands::status::run(&env, a),
        Command::Image(a) => commands::image::run(&env, a),
        Command::Run(a) => commands::run::run(&env, a),
        Command::Gc(a) => commands::gc::run(&env, a),
        Command::Config => {
            print!("{}", toml::to_string_pretty(&env.config)?);
            Ok(0)
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // run's own failures (a bad config included) must not look like the command's.
            let fireclaw_failed = match cli.command {
                Command::Run(_) => commands::run::EXIT_FIRECLAW,
                _ => 1,
            };
            std::process::exit(fireclaw_failed);
        }
    }
}
