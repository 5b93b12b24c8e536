//! The binary's command line as the host and the image's init call it.

use std::process::Command;

fn guest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fireclaw-guest"))
}

#[test]
fn health_and_version_answer() {
    let out = guest().arg("health").output().unwrap();
    assert!(out.status.success());
    let h: fireclaw_proto::GuestHealth = serde_json::from_slice(&out.stdout).unwrap();
    assert!(h.ok);
    assert_eq!(h.protocol, fireclaw_proto::GUEST_PROTOCOL_VERSION);
    let out = guest().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fireclaw-guest "));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["frob"][..], &["run", "--config"], &["usage"], &[]] {
        let out = guest().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_bad_config_names_file_line_and_key_and_exits_1() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("agent.toml");
    std::fs::write(
        &path,
        "nick = \"coder\"\npersona = \"p\"\nchanels = [\"#x\"]\n[irc]\nserver = \"h:1\"\n[ollama]\nurl = \"http://h\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let out = guest()
        .args(["run", "--insecure-allow-root", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 3") && err.contains("chanels"), "{err}");
    let out = guest()
        .args(["run", "--insecure-allow-root", "--config"])
        .arg(d.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn draining_an_absent_spool_prints_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = guest()
        .args(["usage", "--drain", "--spool"])
        .arg(d.path().join("none.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
#[ignore = "host tier: needs root (to prove that root is refused); run with --include-ignored"]
fn refuses_to_run_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "host tier prerequisite missing: root"
    );
    let out = guest()
        .args(["run", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
