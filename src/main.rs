use clap::Parser;

use fireclaw::cli::{Cli, Command};
use fireclaw::commands::{self, Env};

fn main() {
    let cli = Cli::parse();
    commands::runtime::init_tracing(&cli.command);
    let code = Env::load(&cli.global).and_then(|env| match &cli.command {
        Command::Provision(a) => commands::provision::run(&env, a),
        Command::Uninstall(a) => commands::uninstall::run(&env, a),
        Command::Doctor(a) => commands::doctor::run(&env, a),
        Command::Status(a) => commands::status::run(&env, a),
        Command::Image(a) => commands::image::run(&env, a),
        Command::Run(a) => commands::run::run(&env, a),
        Command::Gc(a) => commands::gc::run(&env, a),
        Command::Runtime(a) => commands::runtime::run(&env, a, cli.global.config.as_deref()),
        Command::Ps(a) => commands::ps::run(&env, a),
        Command::Exec(a) => commands::exec::run(&env, a),
        Command::Rm(a) => commands::rm::run(&env, a),
        Command::Logs(a) => commands::logs::run(&env, a),
        Command::Config => {
            print!("{}", toml::to_string_pretty(&env.config)?);
            Ok(0)
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
