//! Types both sides of fireclaw's interfaces compile against: the control socket (runtime ↔ CLI)
//! and host ↔ guest messages, plus the IRC text rules both the overseer and the guest agent
//! follow. Plain data with serde and pure functions only, so the static guest binary can use them
//! without pulling in anything host-specific.

pub mod control;

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod text;

/// Version of the host ↔ guest messages; bumped on an incompatible change.
pub const GUEST_PROTOCOL_VERSION: u32 = 1;

/// What `fireclaw-guest health` answers: enough for the host to tell a live guest agent from a
/// dead or mismatched one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestHealth {
    /// Always true when the agent answers at all; present so the JSON is self-describing.
    pub ok: bool,
    /// `fireclaw-guest`'s own version (its Cargo package version).
    pub version: String,
    /// [`GUEST_PROTOCOL_VERSION`] of the binary that answered.
    pub protocol: u32,
}

impl GuestHealth {
    /// The health answer of a guest agent built from this source tree with `version`.
    pub fn current(version: &str) -> GuestHealth {
        GuestHealth {
            ok: true,
            version: version.to_string(),
            protocol: GUEST_PROTOCOL_VERSION,
        }
    }
}

/// One interaction of a guest agent (a question answered, tools included), as the guest appends it
/// to its usage spool and `fireclaw-guest usage --drain` prints it: one JSON object per line.
///
/// The record carries no agent name on purpose: the host attributes it to the VM whose spool it
/// drained over its own SSH channel, so no agent can claim another's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Unique within the VM (`<at_unix_ms>-<pid>-<n>`): a drain that the host read but could not
    /// acknowledge may be printed again, and the host drops the duplicate by this id.
    pub id: String,
    /// When the interaction ended, milliseconds since the Unix epoch (the guest's clock).
    pub at_unix_ms: u64,
    /// Wall-clock time from the question to the last line sent, in milliseconds.
    pub duration_ms: u64,
    /// The Ollama model that answered.
    pub model: String,
    /// Sum of Ollama's `prompt_eval_count` over every chat request of the interaction.
    pub prompt_eval_count: u64,
    /// Sum of Ollama's `eval_count` over every chat request of the interaction.
    pub eval_count: u64,
    /// How many `/api/chat` requests the interaction made (1 + one per tool round).
    pub requests: u32,
    /// False when the interaction ended in an error (the counts cover what was answered before).
    pub ok: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_round_trips_and_refuses_unknown_fields() {
        let h = GuestHealth::current("1.2.3");
        let json = serde_json::to_string(&h).expect("serialize");
        assert_eq!(
            serde_json::from_str::<GuestHealth>(&json).expect("parse"),
            h
        );
        let extra = r#"{"ok":true,"version":"1","protocol":1,"x":1}"#;
        assert!(serde_json::from_str::<GuestHealth>(extra).is_err());
    }

    #[test]
    fn usage_record_is_one_json_line_and_refuses_unknown_fields() {
        let r = UsageRecord {
            id: "1-2-3".into(),
            at_unix_ms: 1,
            duration_ms: 2,
            model: "m\nx".into(),
            prompt_eval_count: 3,
            eval_count: 4,
            requests: 1,
            ok: true,
        };
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(!json.contains('\n'), "{json}");
        assert_eq!(
            serde_json::from_str::<UsageRecord>(&json).expect("parse"),
            r
        );
        let forged = json.replace("\"ok\":true", "\"ok\":true,\"agent\":\"other\"");
        assert!(serde_json::from_str::<UsageRecord>(&forged).is_err());
    }
}
