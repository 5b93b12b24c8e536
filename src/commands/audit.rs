//! `fireclaw audit`: the commands the overseer and the control socket received, who sent them and
//! what came of them (the `audit` table), newest last.

use crate::agents::store;
use crate::cli::AuditArgs;
use crate::commands::Env;

pub fn run(env: &Env, args: &AuditArgs) -> anyhow::Result<i32> {
    env.require_provisioned()?;
    let Some(db) = env.open_db_read_only()? else {
        anyhow::bail!("the audit trail is in the state database, which only root can read: run `sudo fireclaw audit`");
    };
    // A database from before the agent system has no audit table yet: nothing was audited.
    let rows = match store::audit_tail(&db, args.lines) {
        Ok(rows) => rows,
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    for r in &rows {
        println!(
            "{}  {:<6} {:<4} {:<30} {}  → {}",
            store::format_utc(r.at),
            match r.source {
                store::Source::Irc => "irc",
                store::Source::Socket => "socket",
            },
            if r.ok { "ok" } else { "FAIL" },
            r.actor,
            printable(&r.command),
            printable(&r.result)
        );
    }
    Ok(0)
}

/// What people sent can hold control characters (they are audited as received): shown escaped,
/// so the terminal shows them and is not driven by them.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("!list\r\nQUIT\0"), "!list\\r\\nQUIT\\0");
    }
}
