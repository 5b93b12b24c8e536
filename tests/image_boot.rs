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

/// The guest agent in the Debian agent test image is the static musl build, and it runs inside the
/// booted guest: `--version` and `health` over SSH as `agent`, and fireclaw-init keeps its service
/// (run as `agent`) restarting with a backoff while it has no config.
#[test]
#[ignore = "vm tier: needs root, QEMU and the images from ci/build-images.sh; run with --include-ignored"]
fn debian_test_guest_runs_the_static_guest_agent() {
    let cache = ci_cache();
    let images = cache.join("images");
    let kernel = images.join("bzImage");
    let image = images.join("debian-test.ext4");
    let manifest = images.join("debian-test.manifest.json");
    let key = cache.join("ci-key");
    require(
        "vm",
        &[
            ("qemu-system-x86_64", have("qemu-system-x86_64")),
            ("ssh client", have("ssh")),
            ("debugfs", have("debugfs")),
            ("timeout", have("timeout")),
            ("python3", have("python3")),
            ("kernel from ci/build-images.sh", kernel.is_file()),
            (
                "debian-test image from ci/build-images.sh",
                image.is_file() && manifest.is_file(),
            ),
            ("CI login key", key.is_file()),
        ],
    );
    // `file`-style, on the bytes in the image: an x86-64 ELF with no interpreter and no shared
    // libraries.
    let work = tempfile::tempdir().unwrap();
    let dumped = work.path().join("fireclaw-guest");
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!(
            "dump /usr/local/bin/fireclaw-guest {}",
            dumped.display()
        ))
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(&dumped).expect("the image has /usr/local/bin/fireclaw-guest");
    fireclaw::image::guest_agent::check_static_elf(&bytes)
        .unwrap_or_else(|why| panic!("/usr/local/bin/fireclaw-guest in the image: {why}"));
    eprintln!(
        "/usr/local/bin/fireclaw-guest: ELF 64-bit x86-64, statically linked, {} bytes",
        bytes.len()
    );

    let serial = work.path().join("serial.log");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ci/boot-check.sh"))
        .args([&kernel, &image, &manifest, &key])
        .arg("agent")
        .env("BOOT_TIMEOUT", "240")
        .env("SERIAL_LOG", &serial)
        .env(
            "GUEST_CHECK",
            "/usr/local/bin/fireclaw-guest --version && fireclaw-guest health && \
             cat /etc/fireclaw/services/fireclaw-guest && sleep 4",
        )
        .output()
        .expect("running ci/boot-check.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    eprintln!("{text}");
    assert!(
        text.contains("boot-check: guest: fireclaw-guest "),
        "{text}"
    );
    assert!(
        text.contains("boot-check: guest: {") && text.contains("\"version\""),
        "health answers JSON: {text}"
    );
    assert!(
        text.contains("exec su -s /bin/sh agent -c 'exec /usr/local/bin/fireclaw-guest run"),
        "{text}"
    );
    // Without /etc/fireclaw/agent.toml the agent waits for it (the host writes it and sends
    // SIGHUP) instead of exiting into init's restart backoff.
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        console.contains("waiting for /etc/fireclaw/agent.toml")
            && !console.contains("fireclaw-guest exited with status"),
        "{console}"
    );
}
