//! The command line: parsed by hand (four verbs; clap would double the binary's build).

use std::path::PathBuf;

use crate::config;

pub const USAGE: &str = "usage: fireclaw-guest COMMAND\n\n\
  run [--config PATH] [--wait-for-config]\n\
                               run the IRC agent (default config: /etc/fireclaw/agent.toml);\n\
                               with --wait-for-config, a missing config is waited for (the host\n\
                               writes it and sends SIGHUP) instead of being an error\n\
  usage --drain [--spool PATH | --config PATH]\n\
                               print the usage records as JSON lines and empty the spool\n\
  health                       print a JSON health answer and exit 0\n\
  --version                    print the version\n\n\
`run` refuses to start as root; --insecure-allow-root exists for tests only.\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    Run {
        config: PathBuf,
        allow_root: bool,
        /// Wait for a missing config file instead of failing: an agent VM boots (or is restored
        /// from a snapshot) before the host has written its configuration.
        wait: bool,
    },
    /// Drain the spool named directly, or the one a config file names.
    Drain {
        spool: Option<PathBuf>,
        config: Option<PathBuf>,
    },
    Health,
    Version,
    Help,
}

/// Parses the arguments after the program name; an error is the message for a usage error.
pub fn parse(args: &[String]) -> Result<Cli, String> {
    let mut it = args.iter().map(String::as_str);
    let verb = it.next();
    let rest: Vec<&str> = it.collect();
    let value = |i: usize, flag: &str| -> Result<PathBuf, String> {
        rest.get(i + 1)
            .filter(|v| !v.starts_with("--"))
            .map(PathBuf::from)
            .ok_or_else(|| format!("{flag} needs a path"))
    };
    match verb {
        Some("run") => {
            let mut config = PathBuf::from(config::DEFAULT_PATH);
            let (mut allow_root, mut wait) = (false, false);
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    "--config" => {
                        config = value(i, "--config")?;
                        i += 1;
                    }
                    "--insecure-allow-root" => allow_root = true,
                    "--wait-for-config" => wait = true,
                    other => return Err(format!("run: unexpected argument {other:?}")),
                }
                i += 1;
            }
            Ok(Cli::Run {
                config,
                allow_root,
                wait,
            })
        }
        Some("usage") => {
            let (mut drain, mut spool, mut config) = (false, None, None);
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    "--drain" => drain = true,
                    "--spool" => {
                        spool = Some(value(i, "--spool")?);
                        i += 1;
                    }
                    "--config" => {
                        config = Some(value(i, "--config")?);
                        i += 1;
                    }
                    other => return Err(format!("usage: unexpected argument {other:?}")),
                }
                i += 1;
            }
            if !drain {
                return Err("usage: only `usage --drain` exists".into());
            }
            if spool.is_some() && config.is_some() {
                return Err("usage: give --spool or --config, not both".into());
            }
            Ok(Cli::Drain { spool, config })
        }
        Some("health") if rest.is_empty() => Ok(Cli::Health),
        Some("--version" | "-V") if rest.is_empty() => Ok(Cli::Version),
        Some("--help" | "-h" | "help") => Ok(Cli::Help),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no command given".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn verbs_and_flags() {
        assert_eq!(
            p(&["run"]).unwrap(),
            Cli::Run {
                config: PathBuf::from("/etc/fireclaw/agent.toml"),
                allow_root: false,
                wait: false
            }
        );
        assert_eq!(
            p(&["run", "--config", "/x.toml", "--insecure-allow-root"]).unwrap(),
            Cli::Run {
                config: PathBuf::from("/x.toml"),
                allow_root: true,
                wait: false
            }
        );
        assert_eq!(
            p(&["run", "--wait-for-config"]).unwrap(),
            Cli::Run {
                config: PathBuf::from("/etc/fireclaw/agent.toml"),
                allow_root: false,
                wait: true
            }
        );
        assert_eq!(
            p(&["usage", "--drain", "--spool", "/s"]).unwrap(),
            Cli::Drain {
                spool: Some("/s".into()),
                config: None
            }
        );
        assert_eq!(p(&["health"]).unwrap(), Cli::Health);
        assert_eq!(p(&["--version"]).unwrap(), Cli::Version);
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &[][..],
            &["frobnicate"],
            &["run", "--config"],
            &["run", "--config", "--insecure-allow-root"],
            &["run", "--root"],
            &["usage"],
            &["usage", "--drain", "--spool", "a", "--config", "b"],
            &["health", "extra"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
