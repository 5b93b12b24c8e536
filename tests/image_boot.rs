//! VM tier: the kernel and Debian test image that `ci/build-images.sh` built with fireclaw boot for
//! real under QEMU microvm (TCG): userspace comes up and SSH answers with the manifest's host key.
//! The boot itself is `ci/boot-check.sh` (QEMU always under `timeout`, torn down on every path).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{have, require};

fn ci_cache() -> PathBuf {
    std::env::var_os("FIRECLAW_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/fireclaw-ci"))
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn kernel_and_debian_test_image_boot_to_ssh() {
    let cache = ci_cache();
    let images = cache.join("images");
    let kernel = images.join("bzImage");
    let image = images.join("debian-test.ext4");
    let manifest = images.join("debian-test.manifest.json");
    let key = cache.join("ci-key");
    if !require(
        "vm",
        &[
            ("qemu-system-x86_64", have("qemu-system-x86_64")),
            ("ssh client", have("ssh")),
            ("timeout", have("timeout")),
            ("python3", have("python3")),
            ("kernel from ci/build-images.sh", kernel.is_file()),
            (
                "debian-test image from ci/build-images.sh",
                image.is_file() && manifest.is_file(),
            ),
            ("CI login key", key.is_file()),
        ],
    ) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/boot-check.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([&kernel, &image, &manifest, &key])
        .arg("agent")
        .env("BOOT_TIMEOUT", "240")
        .output()
        .expect("running ci/boot-check.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("SSH login as agent on fireclaw-test"),
        "{text}"
    );
}
