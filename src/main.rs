use fireclaw::cli::{self, Command};
use fireclaw::commands::{self, Env};

fn main() {
    let cli = cli::parse();
    commands::runtime::init_tracing(&cli.command);
    // The service's stderr is journald's socket and its VMs outlive it: no relay in between (see
    // commands::output for why the other commands have one).
    let output = (!matches!(cli.command, Command::Runtime(_))).then(commands::output::protect);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&cli)));
    // Flush what the relays still hold before exiting, a panic's message included.
    if let Some(output) = output {
        output.finish();
    }
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
            Command::Runtime(a) => commands::runtime::run(&env, a, cli.global.config.as_deref()),
            Command::Ps(a) => commands::ps::run(&env, a),
            Command::Snapshot(a) => commands::snapshot::run(&env, a),
            Command::Exec(a) => commands::exec::run(&env, a),
            Command::Rm(a) => commands::rm::run(&env, a),
            Command::Logs(a) => commands::logs::run(&env, a),
            Command::Audit(a) => commands::audit::run(&env, a),
            Command::Agent(a) => commands::agent::run(&env, a),
            Command::Completions(_) | Command::Manpage => unreachable!("handled above"),
        }),
    };
    result.unwrap_or_else(|e| commands::fail(&cli.command, &e))
}
