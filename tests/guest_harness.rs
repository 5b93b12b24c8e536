//! Proves the guest harness itself: a guest boots Debian's kernel, sees the host root, runs this
//! test binary and reports its exit status. Tier `kernel` (root, QEMU, virtiofsd, a cloud kernel).

mod support;

use support::guest::{self, GuestSpec};

#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn guest_reports_the_exit_status_of_its_command() {
    if !guest::require("kernel") {
        return;
    }
    let spec = GuestSpec::new(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo hello from $(uname -r); exit 7".into(),
    ]);
    let out = guest::run_in_guest(&spec).expect("guest runs");
    assert_eq!(out.status.code(), Some(7), "console:\n{}", out.console);
    assert!(out.console.contains("hello from"), "{}", out.console);
}

/// The in-guest half runs this same binary: it must see the module it asked for, which the host
/// kernel does not have.
#[test]
#[ignore = "kernel tier: needs root, QEMU and a guest kernel; run with --include-ignored"]
fn guest_runs_this_test_binary_with_requested_modules() {
    if guest::in_guest() {
        assert!(
            std::path::Path::new("/dev/mapper/control").exists(),
            "dm-mod loaded in the guest"
        );
        assert!(std::fs::read_to_string("/proc/modules")
            .unwrap_or_default()
            .contains("dm_thin_pool"));
        // The root is shared read-only; /tmp is the guest's own scratch.
        assert!(std::fs::write("/fireclaw-should-not-exist", b"x").is_err());
        std::fs::write("/tmp/scratch", b"x").expect("scratch is writable");
        return;
    }
    guest::reinvoke_in_guest(
        "guest_runs_this_test_binary_with_requested_modules",
        "kernel",
        |s| s.modules(["dm-thin-pool"]),
    );
}
