//! The control socket's request and response bodies (`/run/fireclaw/fireclaw.sock`, HTTP/1.1 +
//! JSON, documented in docs/api.md). The runtime serves them and the CLI reads them, both compiled
//! against this one definition. Every struct refuses unknown fields: a client and a runtime of
//! different versions fail loudly instead of dropping data. Incompatible changes get a new path
//! prefix ([`API_VERSION`]); additions within a version are optional fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The path prefix of every versioned route: `/v1/...`.
pub const API_VERSION: &str = "v1";

/// Largest request body the runtime reads; a longer one is answered 413.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest argv an exec request may carry (entries), and longest entry (bytes).
pub const MAX_EXEC_ARGS: usize = 256;
pub const MAX_EXEC_ARG_BYTES: usize = 8 * 1024;

/// Whether `id` is a VM id as fireclaw makes them: exactly 12 lowercase hexadecimal digits. A
/// request names VMs only by such ids, so it can never smuggle in a path (`../`), an interface
/// name or anything else the runtime derives names from.
pub fn valid_vm_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every error the runtime answers: the HTTP status says what kind, this says what and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub ok: bool,
    /// fireclaw's version (its Cargo package version).
    pub version: String,
    /// [`API_VERSION`] of the runtime that answered.
    pub api: String,
    /// The runtime's process id.
    pub pid: u32,
}

/// How a VM came to be: handed out from the warm pool, restored from a snapshot on demand, or
/// booted from its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Pool,
    Restore,
    Cold,
}

/// One VM as `GET /v1/vms` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// 12 hex digits (see [`valid_vm_id`]).
    pub id: String,
    /// Image name the VM booted.
    pub image: String,
    /// The guest's IPv4 address, when it has one.
    pub address: Option<String>,
    /// `creating`, `running`, `kept` as recorded; `adopted` for a kept VM the runtime supervises;
    /// `unresponsive` for a kept VM whose VMM lives but whose control socket does not answer.
    pub state: String,
    /// Seconds since the VM was recorded.
    pub age_secs: u64,
    pub origin: Origin,
    /// Who answers for it: `runtime`, `kept`, or `run pid N` (a `fireclaw run` in progress).
    pub owner: String,
    /// `qemu` or `firecracker`.
    pub vmm: String,
}

/// `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// `DELETE /v1/vms/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    pub id: String,
}

/// `POST /v1/vms/{id}/exec`: run `argv` in the guest (quoted for its shell word by word).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Give up after this many seconds (default 60, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl ExecRequest {
    /// What is wrong with the request, in words for a 400 answer.
    pub fn check(&self) -> Result<(), String> {
        if self.argv.is_empty() {
            return Err("argv is empty: give the command and its arguments".into());
        }
        if self.argv.len() > MAX_EXEC_ARGS {
            return Err(format!(
                "argv has {} entries; at most {MAX_EXEC_ARGS}",
                self.argv.len()
            ));
        }
        if let Some(i) = self.argv.iter().position(|a| a.len() > MAX_EXEC_ARG_BYTES) {
            return Err(format!(
                "argv[{i}] is longer than {MAX_EXEC_ARG_BYTES} bytes"
            ));
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(format!("argv[{i}] contains a NUL byte"));
        }
        match self.timeout_secs {
            Some(0) => Err("timeout_secs must be at least 1".into()),
            Some(t) if t > 3600 => Err(format!("timeout_secs is {t}; at most 3600")),
            _ => Ok(()),
        }
    }
}

/// The answer to an exec: how the command ended and what it printed (lossy UTF-8, each stream
/// cut at a limit the runtime sets; `truncated` says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// The command's exit code, or 128 + N when a signal N ended it, as a shell reports it.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// `POST /v1/run`: run `argv` in a fresh VM of `image` (one of the configured images) and throw
/// the VM away: a pooled one when ready, else one restored from the image's snapshot, else a
/// cold boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// An image name from the runtime's configuration; the first configured image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `full` (the default; what the pool holds), `local` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Give up after this many seconds (default 60, at most 3600), the VM's start included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl RunRequest {
    /// What is wrong with the request, in words for a 400 answer.
    pub fn check(&self) -> Result<(), String> {
        ExecRequest {
            argv: self.argv.clone(),
            timeout_secs: self.timeout_secs,
        }
        .check()?;
        match self.policy.as_deref() {
            None | Some("full") | Some("local") | Some("none") => Ok(()),
            Some(p) => Err(format!("policy {p:?}: expected full, local or none")),
        }
    }
}

/// The answer to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    pub vm_id: String,
    pub origin: Origin,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    /// From the request's arrival to the command's end.
    pub elapsed_ms: u64,
}

/// One image's warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolStatus {
    pub image: String,
    /// `[pool] warm_per_image` in effect.
    pub target: u32,
    /// VMs ready to hand out.
    pub ready: u32,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Number of VMs per state (as in [`VmInfo::state`]).
    pub vms_by_state: BTreeMap<String, u32>,
    pub pools: Vec<PoolStatus>,
    /// What start-up put back on the host (bridge, address, forwarding, nft table, thin pool)
    /// and what it did with the recorded VMs, one line each.
    pub startup: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_refuse_hostile_input() {
        assert!(valid_vm_id("0123456789ab"));
        for bad in [
            "",
            "0123456789a",
            "0123456789abc",
            "0123456789AB",
            "../../etc/pa",
            "0123456789a/",
            "0123456789a\0",
            "fc-012345678",
            "０１２３４５６７８９ab",
            "0123456789aé",
            " 123456789ab",
        ] {
            assert!(!valid_vm_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn exec_requests_are_checked() {
        let ok = |argv: &[&str]| ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_secs: None,
        };
        assert!(ok(&["true"]).check().is_ok());
        assert!(ok(&[]).check().unwrap_err().contains("empty"));
        assert!(ok(&["a\0b"]).check().unwrap_err().contains("NUL"));
        let long = "x".repeat(MAX_EXEC_ARG_BYTES + 1);
        assert!(ok(&["echo", &long])
            .check()
            .unwrap_err()
            .contains("argv[1]"));
        let many: Vec<&str> = vec!["x"; MAX_EXEC_ARGS + 1];
        assert!(ok(&many).check().is_err());
        let mut t = ok(&["true"]);
        t.timeout_secs = Some(0);
        assert!(t.check().is_err());
        t.timeout_secs = Some(3601);
        assert!(t.check().is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for bad in [
            r#"{"argv":["true"],"rm":"-rf"}"#,
            r#"{"argv":"true"}"#,
            r#"{"argv":[1]}"#,
            r#"{}"#,
            r#"{"argv":["true"],"timeout_secs":-1}"#,
        ] {
            assert!(serde_json::from_str::<ExecRequest>(bad).is_err(), "{bad}");
        }
        let r: ExecRequest = serde_json::from_str(r#"{"argv":["uname","-a"]}"#).unwrap();
        assert_eq!(r.argv, ["uname", "-a"]);
        let h = Health {
            ok: true,
            version: "1".into(),
            api: API_VERSION.into(),
            pid: 1,
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Health>(&json.replace('}', r#","x":1}"#)).is_err());
        assert_eq!(serde_json::to_string(&Origin::Pool).unwrap(), r#""pool""#);
    }
}

/// `POST /v1/agents`: start an agent (`!invoke TEMPLATE [NAME] [MODEL]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStart {
    pub template: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `POST /v1/agents/{name}/reload`: push the configuration again, with a new model if given
/// (`!model NAME MODEL`), and SIGHUP the guest agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What an agent operation answered: the lines the overseer would say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAnswer {
    pub lines: Vec<String>,
}
