//! ngircd's configuration, rendered from `recipes/ngircd.conf.in`.

use crate::config::Config;
use crate::net::Ipv4Cidr;

/// The operator password's file inside `paths.config_dir` (root's alone, 0600: read by the
/// overseer; ngircd gets the password through its own configuration).
pub const OPERATOR_PASSWORD_FILE: &str = "irc-operator.pass";

const TEMPLATE: &str = include_str!("../../recipes/ngircd.conf.in");

/// What varies between the host's configuration and a test's throwaway server.
pub struct NgircdParams<'a> {
    /// Addresses to listen on, comma-separated as ngircd wants.
    pub listen: String,
    pub port: u16,
    pub pid_file: &'a str,
    pub operator_password: &'a str,
}

impl<'a> NgircdParams<'a> {
    /// The host's: the bridge address and loopback, never a wildcard.
    pub fn for_host(config: &Config, operator_password: &'a str) -> anyhow::Result<Self> {
        let bridge = Ipv4Cidr::parse(&config.network.address).map_err(anyhow::Error::msg)?;
        Ok(NgircdParams {
            listen: format!("{},127.0.0.1", bridge.addr),
            port: config.irc.port,
            pid_file: "/run/ngircd/ngircd.pid",
            operator_password,
        })
    }
}

pub fn render(config: &Config, params: &NgircdParams) -> anyhow::Result<String> {
    let irc = &config.irc;
    let port = params.port.to_string();
    let mut text = crate::template::render(
        "recipes/ngircd.conf.in",
        TEMPLATE,
        &[
            ("server_name", &irc.server_name),
            ("network", &irc.network),
            ("listen", &params.listen),
            ("port", &port),
            ("pid_file", params.pid_file),
            ("operator", &irc.operator),
            ("operator_password", params.operator_password),
            ("operator_host_mask", "127.0.0.1"),
        ],
    )?;
    for channel in &irc.channels {
        let topic = match channel.as_str() {
            "#control" => "fireclaw overseer: !help for commands",
            "#agents" => "fireclaw agents: the common room",
            _ => "fireclaw",
        };
        // Predefined channels persist with no members (mode P) so agents always find them.
        text.push_str(&format!(
            "\n[Channel]\n\tName = {channel}\n\tTopic = {topic}\n\tModes = +ntP\n"
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_config_listens_only_on_bridge_and_loopback() {
        let config = Config::default();
        let params = NgircdParams::for_host(&config, "pw").unwrap();
        let text = render(&config, &params).unwrap();
        assert!(text.contains("Listen = 172.16.0.1,127.0.0.1\n"), "{text}");
        assert!(text.contains("Name = nyx.fireclaw.local"));
        assert!(text.contains("Network = FireclawNet"));
        assert!(text.contains("Name = #control") && text.contains("Name = #agents"));
        assert!(!text.contains("0.0.0.0"));
    }
}
