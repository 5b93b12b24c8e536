//! VM tier: the runtime with a real guest under QEMU (TCG here) in a private namespace. A VM kept
//! by `fireclaw run --keep` is re-adopted by the runtime, answers `fireclaw exec` through the
//! control socket, and `fireclaw rm` removes all of it. Needs root, ip, nft, qemu-system-x86_64.

mod support;

use std::path::Path;

use support::runtime::{GroupGuard, Runtime};
use support::vm::*;

/// The image's manifest (and the files it names beside it) under the root's image directory,
/// where the runtime looks an image up by the name its VM row records.
fn install_manifest(root: &Path, manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let name = m["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| manifest.file_name().unwrap().to_string_lossy().into_owned());
    let images = root.join("var/lib/fireclaw/images");
    std::fs::create_dir_all(&images).unwrap();
    std::os::unix::fs::symlink(manifest, images.join(format!("{name}.manifest.json"))).unwrap();
    let beside = manifest.parent().unwrap();
    if let Some(image) = m["image"].as_str().filter(|i| !i.starts_with('/')) {
        std::os::unix::fs::symlink(beside.join(image), images.join(image)).unwrap();
    }
    name
}

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn a_kept_vm_is_readopted_and_answers_exec_through_the_runtime() {
    if !prerequisites("vm", true) {
        return;
    }
    let _lock = vm_lock();
    let _group = GroupGuard::new();
    let fx = fixture();
    let ns = Netns::new("rtvm");
    let root = TestRoot::new(&fx);
    let name = install_manifest(root.path(), &fx.manifest);
    if fx.initrd.is_none() {
        // The runtime resolves the kernel the same way (manifest, else <image_dir>/vmlinux).
        let k = root.path().join("var/lib/fireclaw/images/vmlinux");
        if !k.exists() {
            std::os::unix::fs::symlink(&fx.kernel, k).unwrap();
        }
    }
    let out = root.run_cmd(&ns, &["--keep"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = root.db().expect("state database");
    let rows = fireclaw::vm::record::list(&db).unwrap();
    assert_eq!(rows.len(), 1);
    let id = rows[0].id.clone();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].image.as_str()),
        ("kept", name.as_str())
    );

    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_fireclaw"))
        .arg("--root")
        .arg(root.path())
        .arg("runtime");
    // Its notify socket and log live outside the root, which the leak check scans for sockets.
    let rt_files = tempfile::tempdir().unwrap();
    let rt = Runtime::start(cmd, rt_files.path());
    assert!(
        rt.log_text().contains(&format!("re-adopted kept VM {id}")),
        "{}",
        rt.log_text()
    );

    let out = root.fireclaw(&ns, &["exec", &id, "--", "uname", "-s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Linux\n");
    let out = root.fireclaw(
        &ns,
        &["exec", &id, "--", "sh", "-c", "echo err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr), "err\n");
    let out = root.fireclaw(&ns, &["logs", &id]);
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "the console has the boot"
    );

    let out = root.fireclaw(&ns, &["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    root.assert_no_leaks(&ns);
}
