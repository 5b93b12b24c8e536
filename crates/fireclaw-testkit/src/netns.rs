//! Network namespaces named after the test process that made them (`PREFIX-TAG-PID-N`). A test
//! deletes its own on drop; one killed before its drops ran (a timeout, SIGKILL, a panic that
//! aborts) cannot, so every new namespace first removes those whose process is gone: the
//! machine is reconciled at start, as the product reconciles its own resources.

use std::path::Path;
use std::process::Command;

const NETNS_DIR: &str = "/run/netns";

/// The pid in a name `PREFIX-TAG-PID-N` made by a process of ours, if the name has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let _tag = parts.next()?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Deletes the namespaces named `PREFIX-TAG-PID-N` whose process `PID` no longer runs. Returns
/// their names. A pid reused by another process keeps its namespaces: better left than taken.
pub fn reap_orphans(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, prefix) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let deleted = Command::new("ip")
            .args(["netns", "delete", &name])
            .status()
            .is_ok_and(|s| s.success());
        if deleted {
            reaped.push(name);
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_our_shape_yield_a_pid() {
        assert_eq!(owner_pid("fcg-fail-699-5", "fcg"), Some(699));
        assert_eq!(owner_pid("fct-a-b-c-12-0", "fct"), Some(12));
        for other in [
            "fcg-699-5",
            "fcgx-a-699-5",
            "fct-a-699-5",
            "fcg-a-x-5",
            "fcg-a-699-x",
            "fcg",
        ] {
            assert_eq!(owner_pid(other, "fcg"), None, "{other}");
        }
    }
}
