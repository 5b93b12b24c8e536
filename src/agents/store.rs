//! The agent system's rows: `agents`, `audit` and `usage` (migration 4 in `state`).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::state::{now_unix, Db};

/// What the database knows about one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    pub name: String,
    pub template: String,
    pub model: String,
    /// A persona set for this agent, replacing the template's; None: the template's.
    pub persona: Option<String>,
    pub state: AgentState,
    pub vm_id: Option<String>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Starting,
    Running,
    Stopped,
    Failed,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Stopped => "stopped",
            AgentState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> AgentState {
        match s {
            "starting" => AgentState::Starting,
            "running" => AgentState::Running,
            "stopped" => AgentState::Stopped,
            // The CHECK constraint admits nothing else.
            _ => AgentState::Failed,
        }
    }
}

const COLUMNS: &str =
    "name, template, model, persona, state, vm_id, restarts, last_error, created_at, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        name: r.get(0)?,
        template: r.get(1)?,
        model: r.get(2)?,
        persona: r.get(3)?,
        state: AgentState::parse(&r.get::<_, String>(4)?),
        vm_id: r.get(5)?,
        restarts: r.get(6)?,
        last_error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

/// Adds an agent in state `starting`. A name already taken is a constraint error: the caller
/// checks first and says so politely; the primary key makes a race between two `!invoke`s safe.
pub fn insert(db: &Db, name: &str, template: &str, model: &str) -> rusqlite::Result<()> {
    let now = now_unix();
    db.conn().execute(
        "INSERT INTO agents (name, template, model, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'starting', ?4, ?4)",
        params![name, template, model, now],
    )?;
    Ok(())
}

pub fn get(db: &Db, name: &str) -> rusqlite::Result<Option<AgentRow>> {
    db.conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM agents WHERE name = ?1"),
            [name],
            row,
        )
        .optional()
}

pub fn list(db: &Db) -> rusqlite::Result<Vec<AgentRow>> {
    let mut st = db
        .conn()
        .prepare(&format!("SELECT {COLUMNS} FROM agents ORDER BY name"))?;
    let rows = st.query_map([], row)?.collect();
    rows
}

pub fn set_state(
    db: &Db,
    name: &str,
    state: AgentState,
    vm_id: Option<&str>,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    db.conn()
        .execute(
            "UPDATE agents SET state = ?2, vm_id = ?3, last_error = ?4, updated_at = ?5
             WHERE name = ?1",
            params![name, state.as_str(), vm_id, error, now_unix()],
        )
        .map(drop)
}

pub fn set_model(db: &Db, name: &str, model: &str) -> rusqlite::Result<bool> {
    db.conn()
        .execute(
            "UPDATE agents SET model = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, model, now_unix()],
        )
        .map(|n| n == 1)
}

pub fn set_persona(db: &Db, name: &str, persona: Option<&str>) -> rusqlite::Result<bool> {
    db.conn()
        .execute(
            "UPDATE agents SET persona = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, persona, now_unix()],
        )
        .map(|n| n == 1)
}

/// Counts a restart; returns the count after it.
pub fn count_restart(db: &Db, name: &str) -> rusqlite::Result<u32> {
    db.conn().query_row(
        "UPDATE agents SET restarts = restarts + 1, updated_at = ?2 WHERE name = ?1
         RETURNING restarts",
        params![name, now_unix()],
        |r| r.get(0),
    )
}

pub fn remove(db: &Db, name: &str) -> rusqlite::Result<bool> {
    db.conn()
        .execute("DELETE FROM agents WHERE name = ?1", [name])
        .map(|n| n == 1)
}

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Irc,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub source: Source,
    pub actor: String,
    pub command: String,
    pub ok: bool,
    pub result: String,
}

/// The longest command or result text the audit keeps; the rest is cut with a marker, so a
/// flood of huge messages cannot grow the database without bound.
pub const MAX_AUDIT_TEXT: usize = 1024;

fn clip(s: &str) -> String {
    if s.len() <= MAX_AUDIT_TEXT {
        return s.to_string();
    }
    let mut end = MAX_AUDIT_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub fn audit(
    db: &Db,
    source: Source,
    actor: &str,
    command: &str,
    ok: bool,
    result: &str,
) -> rusqlite::Result<()> {
    db.conn()
        .execute(
            "INSERT INTO audit (at, source, actor, command, ok, result)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now_unix(),
                match source {
                    Source::Irc => "irc",
                    Source::Socket => "socket",
                },
                clip(actor),
                clip(command),
                ok,
                clip(result)
            ],
        )
        .map(drop)
}

/// The newest `limit` audit rows, oldest first.
pub fn audit_tail(db: &Db, limit: u32) -> rusqlite::Result<Vec<AuditRow>> {
    let mut st = db.conn().prepare(
        "SELECT id, at, source, actor, command, ok, result FROM
           (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
    )?;
    let rows = st
        .query_map([limit], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                source: if r.get::<_, String>(2)? == "irc" {
                    Source::Irc
                } else {
                    Source::Socket
                },
                actor: r.get(3)?,
                command: r.get(4)?,
                ok: r.get(5)?,
                result: r.get(6)?,
            })
        })?
        .collect();
    rows
}

/// One interaction a guest agent reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub at: i64,
    pub model: String,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub eval_tokens: u64,
    pub channel: Option<String>,
    pub asker: Option<String>,
    pub summary: Option<String>,
}

pub fn add_usage(db: &Db, agent: &str, u: &Usage) -> rusqlite::Result<()> {
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    db.conn()
        .execute(
            "INSERT INTO usage (agent, at, model, duration_ms, prompt_tokens, eval_tokens,
                                channel, asker, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                agent,
                u.at,
                u.model,
                big(u.duration_ms),
                big(u.prompt_tokens),
                big(u.eval_tokens),
                u.channel,
                u.asker,
                u.summary.as_deref().map(clip)
            ],
        )
        .map(drop)
}

/// An agent's totals: interactions, duration, prompt and eval tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub interactions: u64,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub eval_tokens: u64,
}

pub fn usage_totals(db: &Db, agent: &str) -> rusqlite::Result<UsageTotals> {
    db.conn().query_row(
        "SELECT COUNT(*), COALESCE(SUM(duration_ms), 0), COALESCE(SUM(prompt_tokens), 0),
                COALESCE(SUM(eval_tokens), 0)
         FROM usage WHERE agent = ?1",
        [agent],
        |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok(UsageTotals {
                interactions: n(0)?,
                duration_ms: n(1)?,
                prompt_tokens: n(2)?,
                eval_tokens: n(3)?,
            })
        },
    )
}

/// The agent's newest `limit` interactions, oldest first (what `!logs` shows).
pub fn recent_usage(db: &Db, agent: &str, limit: u32) -> rusqlite::Result<Vec<Usage>> {
    let mut st = db.conn().prepare(
        "SELECT at, model, duration_ms, prompt_tokens, eval_tokens, channel, asker, summary FROM
           (SELECT * FROM usage WHERE agent = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
    )?;
    let rows = st
        .query_map(params![agent, limit], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok(Usage {
                at: r.get(0)?,
                model: r.get(1)?,
                duration_ms: n(2)?,
                prompt_tokens: n(3)?,
                eval_tokens: n(4)?,
                channel: r.get(5)?,
                asker: r.get(6)?,
                summary: r.get(7)?,
            })
        })?
        .collect();
    rows
}

/// UTC `YYYY-MM-DD HH:MM:SS` from Unix seconds (civil-from-days, so no date crate is needed).
pub fn format_utc(at: i64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn agents_survive_a_reopen_and_names_are_unique() {
        let (dir, db) = db();
        insert(&db, "bob", "coder", "qwen2.5-coder:7b").unwrap();
        assert!(insert(&db, "bob", "worker", "m").is_err());
        set_state(&db, "bob", AgentState::Running, Some("0123456789ab"), None).unwrap();
        assert_eq!(count_restart(&db, "bob").unwrap(), 1);
        assert!(set_model(&db, "bob", "llama3.2:3b").unwrap());
        assert!(!set_model(&db, "nobody", "m").unwrap());
        drop(db);
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let bob = get(&db, "bob").unwrap().unwrap();
        assert_eq!(bob.state, AgentState::Running);
        assert_eq!(bob.model, "llama3.2:3b");
        assert_eq!(
            (bob.restarts, bob.vm_id.as_deref()),
            (1, Some("0123456789ab"))
        );
        assert_eq!(list(&db).unwrap().len(), 1);
        assert!(remove(&db, "bob").unwrap());
        assert!(get(&db, "bob").unwrap().is_none());
    }

    #[test]
    fn audit_keeps_order_and_clips_floods() {
        let (_d, db) = db();
        for i in 0..5 {
            audit(
                &db,
                Source::Irc,
                "alice!a@h",
                &format!("!list {i}"),
                true,
                "ok",
            )
            .unwrap();
        }
        let huge = "é".repeat(5000);
        audit(&db, Source::Socket, "uid 0", &huge, false, &huge).unwrap();
        let tail = audit_tail(&db, 3).unwrap();
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].command, "!list 3");
        assert_eq!(tail[2].source, Source::Socket);
        assert!(tail[2].command.len() <= MAX_AUDIT_TEXT + 3 && tail[2].command.ends_with('…'));
    }

    #[test]
    fn usage_totals_and_recent_interactions() {
        let (_d, db) = db();
        assert_eq!(usage_totals(&db, "bob").unwrap(), UsageTotals::default());
        for i in 0..4u64 {
            let u = Usage {
                at: 100 + i as i64,
                model: "m".into(),
                duration_ms: 10,
                prompt_tokens: 5,
                eval_tokens: i,
                channel: Some("#agents".into()),
                asker: Some("alice".into()),
                summary: Some(format!("q{i}")),
            };
            add_usage(&db, "bob", &u).unwrap();
        }
        add_usage(
            &db,
            "eve",
            &Usage {
                at: 1,
                model: "m".into(),
                duration_ms: 1,
                prompt_tokens: 1,
                eval_tokens: 1,
                channel: None,
                asker: None,
                summary: None,
            },
        )
        .unwrap();
        let t = usage_totals(&db, "bob").unwrap();
        assert_eq!(
            (
                t.interactions,
                t.duration_ms,
                t.prompt_tokens,
                t.eval_tokens
            ),
            (4, 40, 20, 6)
        );
        let recent = recent_usage(&db, "bob", 2).unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|u| u.summary.clone().unwrap())
                .collect::<Vec<_>>(),
            ["q2", "q3"]
        );
    }
}
