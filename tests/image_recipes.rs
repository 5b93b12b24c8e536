//! Unit tier: recipes as an operator writes them, and the ways they go wrong. No root needed.

use std::fs;

use fireclaw::image::recipe::{self, RecipeStore};

fn store(files: &[(&str, &str)]) -> (tempfile::TempDir, RecipeStore) {
    let d = tempfile::tempdir().unwrap();
    for (n, c) in files {
        let p = d.path().join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, c).unwrap();
    }
    let s = RecipeStore::Dir(d.path().to_path_buf());
    (d, s)
}

const ALPINE: &str = r#"
[image]
size_mib = 256
[source]
kind = "alpine-minirootfs"
url = "file:///srv/mini.tar.gz"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

#[test]
fn shipped_recipes_are_valid() {
    let s = RecipeStore::Dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs-recipes").into());
    let names = s.names().unwrap();
    for n in ["base", "agent", "debian-test"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
        recipe::load(&s, n).unwrap_or_else(|e| panic!("{e}"));
    }
    let agent = recipe::load(&s, "agent").unwrap();
    assert!(agent.packages.iter().any(|p| p == "podman"));
    assert!(
        agent.packages.iter().any(|p| p == "openssh-server"),
        "inherited from base"
    );
    assert!(agent.mounts.iter().any(|m| m.path == "/workspace"));
    // Both agent images (Alpine `agent`, Debian `debian-test`) carry the guest agent and start it
    // as the unprivileged `agent` user.
    for n in ["agent", "debian-test"] {
        let r = recipe::load(&s, n).unwrap();
        assert!(
            r.files
                .iter()
                .any(|f| f.builtin.as_deref() == Some("guest-agent")
                    && f.dest == "/usr/local/bin/fireclaw-guest"),
            "{n}"
        );
        let svc = r
            .services
            .iter()
            .find(|s| s.name == "fireclaw-guest")
            .unwrap_or_else(|| panic!("{n}: no fireclaw-guest service"));
        assert_eq!(svc.user.as_deref(), Some("agent"), "{n}: never root");
        assert!(
            svc.command
                .contains("/usr/local/bin/fireclaw-guest run --config /etc/fireclaw/agent.toml"),
            "{n}: {}",
            svc.command
        );
        assert!(r.users.iter().any(|u| u.name == "agent"), "{n}");
        assert!(r.mounts.iter().any(|m| m.path == "/workspace"), "{n}");
    }
}

/// fireclaw-init's restart loop, run on its own with `sleep` replaced by a recorder: a service that
/// exits at once is restarted after 1, 2, 4 ... seconds, capped at 60, never in a tight loop.
#[test]
fn init_restarts_a_crashing_service_with_backoff() {
    let init = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rootfs-recipes/files/fireclaw-init"
    ))
    .unwrap();
    let begin = init.find("# BEGIN run_service").expect("marker");
    let end = init.find("# END run_service").expect("marker");
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = d.path().join("sleeps");
    // The 8th sleep ends the loop (kills the shell running it).
    let sleep = format!(
        "#!/bin/sh\necho \"$1\" >> {c}\n[ \"$(wc -l < {c})\" -ge 8 ] && kill -TERM $PPID\nexit 0\n",
        c = calls.display()
    );
    let svc = d.path().join("crashing");
    fs::write(&svc, "#!/bin/sh\nexit 3\n").unwrap();
    fs::write(bin.join("sleep"), sleep).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&svc, &bin.join("sleep")] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = format!(
        "log() {{ echo \"$*\" >&2; }}\n{}\nrun_service {}\n",
        &init[begin..end],
        svc.display()
    );
    let out = std::process::Command::new("timeout")
        .args(["20", "sh", "-c", &script])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    let delays = fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        delays.split_whitespace().collect::<Vec<_>>(),
        ["1", "2", "4", "8", "16", "32", "60", "60"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("crashing exited with status 3"));
}

#[test]
fn unknown_key_in_a_nested_table() {
    let (_d, s) = store(&[(
        "x.toml",
        &format!("{ALPINE}\n[[users]]\nname = \"agent\"\nuid = 1000\nshel = \"/bin/sh\"\n"),
    )]);
    let e = recipe::load(&s, "x").unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("x.toml:") && m.contains("shel") && m.contains("expected"),
        "{m}"
    );
    assert!(e.line.is_some());
}

#[test]
fn unknown_source_kind_lists_the_known_ones() {
    let (_d, s) = store(&[("x.toml", "[source]\nkind = \"gentoo\"\n")]);
    let m = recipe::load(&s, "x").unwrap_err().to_string();
    assert!(
        m.contains("gentoo") && m.contains("alpine-minirootfs") && m.contains("debian"),
        "{m}"
    );
}

#[test]
fn self_extension_and_long_cycles() {
    let (_d, s) = store(&[("a.toml", "[image]\nextends = \"a\"\n")]);
    assert!(recipe::load(&s, "a")
        .unwrap_err()
        .to_string()
        .contains("a -> a"));
    let (_d, s) = store(&[
        ("a.toml", "[image]\nextends = \"b\"\n"),
        ("b.toml", "[image]\nextends = \"c\"\n"),
        ("c.toml", "[image]\nextends = \"a\"\n"),
    ]);
    let m = recipe::load(&s, "a").unwrap_err().to_string();
    assert!(m.contains("a -> b -> c -> a"), "{m}");
}

#[test]
fn child_may_not_replace_the_source() {
    let (_d, s) = store(&[
        ("p.toml", ALPINE),
        (
            "c.toml",
            &format!(
                "[image]\nextends = \"p\"\n{}",
                &ALPINE[ALPINE.find("[source]").unwrap()..]
            ),
        ),
    ]);
    let e = recipe::load(&s, "c").unwrap_err();
    assert_eq!(e.key, "source", "{e}");
}

#[test]
fn both_digests_or_neither_is_an_error() {
    let (_d, s) = store(&[(
        "x.toml",
        "[source]\nkind = \"alpine-minirootfs\"\nurl = \"file:///a.tar.gz\"\n",
    )]);
    assert!(recipe::load(&s, "x")
        .unwrap_err()
        .to_string()
        .contains("exactly one of `sha256` or `sha512`"));
}

#[test]
fn uppercase_digest_is_refused() {
    let bad = ALPINE.replace(&"0".repeat(64), &"A".repeat(64));
    let (_d, s) = store(&[("x.toml", &bad)]);
    let e = recipe::load(&s, "x").unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("source.sha256", Some(7)), "{e}");
}

#[test]
fn file_src_cannot_leave_the_recipe_dir() {
    let (_d, s) = store(&[(
        "x.toml",
        &format!("{ALPINE}\n[[files]]\ndest = \"/etc/x\"\nsrc = \"../../etc/shadow\"\n"),
    )]);
    assert_eq!(recipe::load(&s, "x").unwrap_err().key, "files.src");
}

#[test]
fn duplicate_uids_are_refused() {
    let (_d, s) = store(&[(
        "x.toml",
        &format!(
            "{ALPINE}\n[[users]]\nname = \"a\"\nuid = 1000\n[[users]]\nname = \"b\"\nuid = 1000\n"
        ),
    )]);
    let m = recipe::load(&s, "x").unwrap_err().to_string();
    assert!(m.contains("uid 1000 is used by both"), "{m}");
}
