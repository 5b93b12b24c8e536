use fireclaw::cli::{self, Command};
use fireclaw::commands::{self, Env};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::parse();
    let output = commands::output::protect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&cli)));
    // Flush what the relays still hold before exiting, a panic's message included.
    output.finish();
    std::process::exit(result.unwrap_or(101));
}

fn dispatch(cli: &cli::Cli) -> i32 {
    let result = match &cli.command {
        Command::Completions(a) => commands::completions::completions(a),
        Command::Manpage => commands::completions::manpage(),
        command => Env::load(&cli.global).and_then(|env| match command {
            Command::Provision(a) => commands::provision::run(&env, a),
            Command::Uninstall(a) => commands::uninstall::run(&env, a),
            Command::Doctor(a) => commands::doctor::run(&env, a),
            Command::Status(a) => commands::status::run(&env, a),
            Command::Image(a) => commands::image::run(&env, a),
            Command::Run(a) => commands::run::run(&env, a),
            Command::Gc(a) => commands::gc::run(&env, a),
            Command::Config(a) => commands::config::run(&env, a),
            Command::Completions(_) | Command::Manpage => unreachable!("handled above"),
        }),
    };
    result.unwrap_or_else(|e| commands::fail(&cli.command, &e))
}
