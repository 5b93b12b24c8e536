//! Types both sides of fireclaw's interfaces compile against: the control socket (runtime ↔ CLI)
//! and host ↔ guest messages. Plain data with serde only, so the static guest binary can use them
//! without pulling in anything host-specific.

pub mod control;

use serde::{Deserialize, Serialize};

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
}
