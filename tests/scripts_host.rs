//! install.sh and uninstall.sh: shellcheck-clean, and a full install -> uninstall cycle on a Debian
//! layout and an Ubuntu layout (where /etc/os-release is a link into /usr/lib), in a root prefix
//! inside a private network namespace.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::{run, run_ok, snapshot_tree, tier, NetNs};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn scripts_are_shellcheck_clean() {
    if !tier("host", false, &["shellcheck"]) {
        return;
    }
    run_ok(
        Command::new("shellcheck")
            .arg(repo().join("install.sh"))
            .arg(repo().join("uninstall.sh")),
    );
}

fn layout(root: &Path, ubuntu: bool) {
    std::fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
    // As Debian and Ubuntu have them (bash-completion installed; no man1 under /usr/local).
    std::fs::create_dir_all(root.join("usr/local/share/man")).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/share/bash-completion/completions")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    if ubuntu {
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        std::fs::write(
            root.join("usr/lib/os-release"),
            "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n",
        )
        .expect("os-release");
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release"))
            .expect("symlink");
    } else {
        std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        )
        .expect("os-release");
    }
}

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn install_and_uninstall_scripts_on_debian_and_ubuntu_layouts() {
    if !tier("host", true, &["ip", "nft"]) {
        return;
    }
    for (ubuntu, distro) in [(false, "Debian GNU/Linux 12"), (true, "Ubuntu 24.04")] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let root = dir.path().join("root");
        layout(&root, ubuntu);
        let ns = NetNs::new(if ubuntu { "ubu" } else { "deb" });
        let script = |name: &str, args: &[&str]| {
            let mut all = vec![repo().join(name).to_string_lossy().into_owned()];
            all.extend(args.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            let mut c = ns.cmd("bash", &refs);
            c.env("FIRECLAW_ROOT", &root)
                .env("FIRECLAW_BIN", support::bin());
            c
        };
        // Only the steps that need nothing from outside this machine.
        let steps = ["--only", "layout,network,ngircd,systemd"];
        let before = snapshot_tree(&root);

        let out = run_ok(&mut script(
            "install.sh",
            &["--dry-run", steps[0], steps[1]],
        ));
        assert!(out.contains(distro), "{out}");
        assert!(out.contains("ip link add fcbr0 type bridge"), "{out}");
        assert_eq!(
            snapshot_tree(&root),
            before,
            "install.sh --dry-run changed the tree"
        );

        run_ok(&mut script("install.sh", &[steps[0], steps[1]]));
        assert!(root.join("usr/local/bin/fireclaw").is_file());
        let page = std::fs::read_to_string(root.join("usr/local/share/man/man1/fireclaw.1"))
            .expect("the man page the unit's Documentation= names");
        assert!(page.contains(".TH fireclaw 1"));
        let completion =
            std::fs::read_to_string(root.join("usr/share/bash-completion/completions/fireclaw"))
                .expect("bash completion");
        assert!(completion.contains("provision"));
        assert!(root.join("etc/ngircd/ngircd.conf").is_file());
        assert!(run_ok(&mut ns.cmd("ip", &["link", "show", "fcbr0"])).contains("fcbr0"));

        let out = run_ok(&mut script("uninstall.sh", &["--dry-run"]));
        assert!(out.contains("ip link delete fcbr0"), "{out}");
        run_ok(&mut script("uninstall.sh", &[]));
        assert_eq!(
            snapshot_tree(&root),
            before,
            "{distro}: uninstall.sh left the tree changed"
        );
        assert!(!run(&mut ns.cmd("ip", &["link", "show", "fcbr0"]))
            .status
            .success());
    }
}
