//! The overseer in the runtime: the IRC connection ([`crate::irc::client`]) with the agent
//! manager behind it and every command written to the `audit` table.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::agents::manager::Manager;
use crate::agents::store::{self, Source};
use crate::irc::client::{self, Audit, Connection};
use crate::irc::ngircd::OPERATOR_PASSWORD_FILE;
use crate::irc::overseer::{Overseer, Sender};
use crate::vm::Host;

/// Lines an answer may take in `#control` before it goes by DM.
const MAX_CHANNEL_LINES: usize = 4;

/// Audits into the state database, one short connection per record: commands are rare and a
/// connection held open would pin a stale file across a restore.
struct DbAudit {
    db_path: std::path::PathBuf,
}

impl Audit for DbAudit {
    fn record(&self, who: &Sender, command: &str, ok: bool, result: &str) {
        let r = crate::state::Db::open(&self.db_path)
            .map_err(|e| e.to_string())
            .and_then(|db| {
                store::audit(&db, Source::Irc, &who.prefix(), command, ok, result)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            // The audit trail is the record of who did what: its loss must be visible.
            tracing::error!(actor = %who.prefix(), command, "audit: cannot record: {e}");
        }
    }
}

/// The operator password provision generated; `None` (and a warning) when it cannot be read:
/// the overseer then works without `+F`.
fn operator(host: &Host) -> Option<(String, String)> {
    let path = host
        .root
        .host(&host.config.paths.config_dir)
        .join(OPERATOR_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => Some((host.config.irc.operator.clone(), p.trim().into())),
        Ok(_) => {
            tracing::warn!(
                "{} is empty; the overseer goes on without IRC operator rights",
                path.display()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "reading {}: {e}; the overseer goes on without IRC operator rights",
                path.display()
            );
            None
        }
    }
}

/// Where the overseer connects: ngircd's loopback listener, which its `[Operator]` entry admits.
pub fn connection(host: &Host) -> Connection {
    Connection {
        server: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), host.config.irc.port),
        nick: host.config.irc.overseer_nick.clone(),
        oper: operator(host),
        channels: host.config.irc.channels.clone(),
    }
}

/// The overseer's rules from the configuration in effect.
pub fn rules(host: &Host) -> Overseer {
    let control = host
        .config
        .irc
        .channels
        .iter()
        .find(|c| c.eq_ignore_ascii_case("#control"))
        .cloned()
        .unwrap_or_else(|| "#control".into());
    Overseer {
        control_channel: control,
        admins: host.config.irc.admins.clone(),
        max_channel_lines: MAX_CHANNEL_LINES,
    }
}

/// Runs the overseer until `stop`; `announce` carries the health checker's news, `presence` the
/// manager's questions about nicks on IRC.
pub async fn run(
    host: Host,
    manager: Arc<Manager>,
    announce: mpsc::Receiver<client::News>,
    presence: client::PresenceDesk,
    stop: watch::Receiver<bool>,
) {
    let audit = Arc::new(DbAudit {
        db_path: host.db_path.clone(),
    });
    client::run(
        connection(&host),
        rules(&host),
        manager,
        audit,
        announce,
        presence,
        stop,
    )
    .await;
}
