//! The bodies fireclaw sends to Firecracker's API, typed as Firecracker's own `vmm_config` types
//! are: one struct per resource, a doc comment on every field, `deny_unknown_fields` so a body
//! parsed back (by a test double, or by a test) fails on a typo the way Firecracker does. The
//! contract tests in `tests/vm_firecracker.rs` validate every body against the published swagger.

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`: the kernel to boot (a cold boot only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The uncompressed kernel (vmlinux or a PVH bzImage), as Firecracker sees the path.
    pub kernel_image_path: String,
    /// The guest kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initrd, if the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1..=32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading; off so a vCPU is a whole core, as Firecracker defaults.
    pub smt: bool,
}

/// `PUT /drives/{drive_id}`: a block device, configured before boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Must equal the `{drive_id}` in the path.
    pub drive_id: String,
    /// The backing file or block device, as Firecracker sees the path.
    pub path_on_host: String,
    /// Whether the guest boots from it (`/dev/vda`).
    pub is_root_device: bool,
    /// Read-only to the guest.
    pub is_read_only: bool,
}

/// `PATCH /drives/{drive_id}`: a new backing file for a drive that exists (after boot or after a
/// snapshot load; Firecracker reopens the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Must equal the `{drive_id}` in the path.
    pub drive_id: String,
    /// The new backing file, as Firecracker sees the path.
    pub path_on_host: String,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Must equal the `{iface_id}` in the path.
    pub iface_id: String,
    /// The host's tap device.
    pub host_dev_name: String,
    /// The guest's MAC address.
    pub guest_mac: String,
}

/// What `PUT /actions` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured machine.
    InstanceStart,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// The action.
    pub action_type: ActionType,
}

/// The state `PATCH /vm` moves the machine to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs (required before a snapshot).
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state to move to.
    pub state: VmState,
}

/// The kind of snapshot `PUT /snapshot/create` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
}

/// `PUT /snapshot/create` (the machine must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full snapshots only: every clone maps the whole memory file.
    pub snapshot_type: SnapshotType,
    /// Where the device state goes, as Firecracker sees the path.
    pub snapshot_path: String,
    /// Where guest memory goes, as Firecracker sees the path.
    pub mem_file_path: String,
}

/// How `PUT /snapshot/load` gets guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Map a memory file (MAP_PRIVATE: clones share its pages until they write).
    File,
}

/// The memory source of a snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// A file; fireclaw does not use userfaultfd.
    pub backend_type: MemoryBackendType,
    /// The memory file, as Firecracker sees the path.
    pub backend_path: String,
}

/// A tap that replaces the one a snapshot was taken with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface id recorded in the snapshot.
    pub iface_id: String,
    /// This machine's tap.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load` (only on a fresh, unconfigured Firecracker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The device state, as Firecracker sees the path.
    pub snapshot_path: String,
    /// The guest memory.
    pub mem_backend: MemoryBackend,
    /// Resume at once. fireclaw says no: the drive is re-pointed at this machine's own disk
    /// first, so the guest never runs on the disk recorded in the snapshot.
    pub resume_vm: bool,
    /// Taps replacing the snapshot's.
    pub network_overrides: Vec<NetworkOverride>,
}

/// One request body. Serializes as the bare object Firecracker expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Body {
    BootSource(BootSource),
    MachineConfig(MachineConfig),
    Drive(Drive),
    PartialDrive(PartialDrive),
    NetworkInterface(NetworkInterface),
    Action(InstanceAction),
    Vm(Vm),
    SnapshotCreate(SnapshotCreate),
    SnapshotLoad(SnapshotLoad),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_serialize_as_firecracker_spells_them_and_typos_are_refused() {
        let b = Body::SnapshotLoad(SnapshotLoad {
            snapshot_path: "/snapshot/vmstate".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/snapshot/memory".into(),
            },
            resume_vm: false,
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "fc-x".into(),
            }],
        });
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({
                "snapshot_path": "/snapshot/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/snapshot/memory"},
                "resume_vm": false,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "fc-x"}],
            })
        );
        let boot = serde_json::to_value(Body::BootSource(BootSource {
            kernel_image_path: "/kernel".into(),
            boot_args: None,
            initrd_path: None,
        }))
        .unwrap();
        assert_eq!(boot, serde_json::json!({"kernel_image_path": "/kernel"}));
        assert!(serde_json::from_str::<BootSource>(
            r#"{"kernel_image_path": "/k", "bootargs": "typo"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Vm>(r#"{"state": "Running"}"#).is_err());
    }
}
