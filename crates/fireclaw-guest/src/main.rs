//! `fireclaw-guest`: the program inside every agent VM.
//!
//! For now it answers `--version` and `health` (a JSON health probe the host runs over SSH); the
//! IRC agent, its Ollama client and its tools come with the guest-agent issue.

use std::process::ExitCode;

use fireclaw_proto::GuestHealth;

const USAGE: &str = "usage: fireclaw-guest [--version | health]\n\n\
  --version   print the version\n\
  health      print a JSON health answer and exit 0\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version"] | ["-V"] => {
            println!("fireclaw-guest {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["health"] => match serde_json::to_string(&GuestHealth::current(env!("CARGO_PKG_VERSION")))
        {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fireclaw-guest: {e}");
                ExitCode::FAILURE
            }
        },
        ["--help"] | ["-h"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
