//! `fireclaw config [--json]`: the configuration in effect, defaults merged with the file.

use crate::cli::JsonFlag;
use crate::commands::Env;

pub fn run(env: &Env, args: &JsonFlag) -> anyhow::Result<i32> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&env.config)?);
    } else {
        print!("{}", toml::to_string_pretty(&env.config)?);
    }
    Ok(super::exit::SUCCESS)
}
