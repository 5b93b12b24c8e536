//! What a snapshot depends on, and telling which part of it changed.
//!
//! A memory snapshot is only valid on the machine it describes: Firecracker documents that
//! restoring across CPU models or host kernels is unsupported and that its snapshot format
//! changes between releases; QEMU's migration stream is tied to its version and machine type; the
//! guest's memory holds the kernel it booted and the page cache of the image it mounted. So every
//! snapshot carries a tag of all of that, and a restore compares it with the host first.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything a base snapshot was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTag {
    /// `qemu` or `firecracker`.
    pub engine: String,
    /// The engine's own version line (`QEMU emulator version 7.2.x`, `Firecracker v1.16.1`).
    pub engine_version: String,
    /// sha256 of the kernel the guest booted.
    pub kernel_sha256: String,
    /// sha256 of the root image (from its manifest).
    pub image_sha256: String,
    /// `/proc/cpuinfo`'s model name.
    pub cpu_model: String,
    /// sha256 of the sorted CPU flag list (the list itself is long and only equality matters).
    pub cpu_flags_sha256: String,
    /// The host kernel's release: KVM's state layout follows it.
    pub host_kernel: String,
    /// fireclaw's version: the restore path (devices, command line) may change with it.
    pub fireclaw_version: String,
    pub vcpus: u8,
    pub mem_mib: u32,
}

/// One part of a tag that differs between a snapshot and the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub part: &'static str,
    pub snapshot: String,
    pub host: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the snapshot has {}, this host has {}",
            self.part,
            short(&self.snapshot),
            short(&self.host)
        )
    }
}

/// Digests are shown by their first 16 hex digits, like `image list` does.
fn short(s: &str) -> String {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        s[..16].to_string()
    } else {
        s.to_string()
    }
}

impl SnapshotTag {
    /// The parts of `self` (the snapshot's tag) that differ from `host`; empty when a restore
    /// may go ahead.
    pub fn differences(&self, host: &SnapshotTag) -> Vec<Difference> {
        let parts: [(&'static str, String, String); 10] = [
            ("engine", self.engine.clone(), host.engine.clone()),
            (
                "engine version",
                self.engine_version.clone(),
                host.engine_version.clone(),
            ),
            (
                "kernel",
                self.kernel_sha256.clone(),
                host.kernel_sha256.clone(),
            ),
            (
                "image",
                self.image_sha256.clone(),
                host.image_sha256.clone(),
            ),
            ("CPU model", self.cpu_model.clone(), host.cpu_model.clone()),
            (
                "CPU flags",
                self.cpu_flags_sha256.clone(),
                host.cpu_flags_sha256.clone(),
            ),
            (
                "host kernel",
                self.host_kernel.clone(),
                host.host_kernel.clone(),
            ),
            (
                "fireclaw version",
                self.fireclaw_version.clone(),
                host.fireclaw_version.clone(),
            ),
            ("vCPUs", self.vcpus.to_string(), host.vcpus.to_string()),
            (
                "memory (MiB)",
                self.mem_mib.to_string(),
                host.mem_mib.to_string(),
            ),
        ];
        parts
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(part, snapshot, host)| Difference {
                part,
                snapshot,
                host,
            })
            .collect()
    }

    /// A sentence for a refused restore: every differing part.
    pub fn refusal(&self, host: &SnapshotTag) -> Option<String> {
        let d = self.differences(host);
        if d.is_empty() {
            return None;
        }
        Some(format!(
            "the snapshot does not match this host ({}); it will be rebuilt",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

/// The CPU model and the digest of its sorted flags, from `/proc/cpuinfo`'s first processor.
pub fn cpu_identity(cpuinfo: &str) -> (String, String) {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut flags: Vec<&str> = Vec::new();
    let flag_line = field("flags");
    flags.extend(flag_line.split_whitespace());
    flags.sort_unstable();
    flags.dedup();
    let digest = hex::encode(Sha256::digest(flags.join(" ").as_bytes()));
    (field("model name"), digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> SnapshotTag {
        SnapshotTag {
            engine: "qemu".into(),
            engine_version: "QEMU emulator version 7.2.18".into(),
            kernel_sha256: "a".repeat(64),
            image_sha256: "b".repeat(64),
            cpu_model: "Intel Xeon".into(),
            cpu_flags_sha256: "c".repeat(64),
            host_kernel: "6.1.0-40-amd64".into(),
            fireclaw_version: "0.1.0".into(),
            vcpus: 1,
            mem_mib: 512,
        }
    }

    #[test]
    fn an_identical_host_restores() {
        assert!(tag().differences(&tag()).is_empty());
        assert_eq!(tag().refusal(&tag()), None);
    }

    #[test]
    fn the_refusal_names_each_part_that_differs() {
        let mut host = tag();
        host.kernel_sha256 = "d".repeat(64);
        host.engine_version = "QEMU emulator version 8.0.0".into();
        let msg = tag().refusal(&host).unwrap();
        assert!(
            msg.contains(
                "kernel: the snapshot has aaaaaaaaaaaaaaaa, this host has dddddddddddddddd"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("engine version: the snapshot has QEMU emulator version 7.2.18"),
            "{msg}"
        );
        assert!(!msg.contains("image"), "{msg}");
        assert_eq!(tag().differences(&host).len(), 2);
    }

    #[test]
    fn cpu_identity_ignores_flag_order_and_reads_the_first_processor() {
        let a = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: sse avx fpu\n\nprocessor\t: 1\nmodel name\t: other\n";
        let b = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx avx\n";
        assert_eq!(cpu_identity(a), cpu_identity(b));
        assert_eq!(cpu_identity(a).0, "Intel(R) Xeon(R)");
        let c = "model name: Intel(R) Xeon(R)\nflags: fpu sse\n";
        assert_ne!(cpu_identity(a).1, cpu_identity(c).1);
        assert_eq!(cpu_identity("").0, "");
    }

    #[test]
    fn tags_refuse_unknown_fields() {
        let mut v = serde_json::to_value(tag()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<SnapshotTag>(v).is_err());
    }
}
