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
            format_time(r.at),
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

/// UTC `YYYY-MM-DD HH:MM:SS` from Unix seconds (civil-from-days, so no date crate is needed).
fn format_time(at: i64) -> String {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("!list\r\nQUIT\0"), "!list\\r\\nQUIT\\0");
    }
}
