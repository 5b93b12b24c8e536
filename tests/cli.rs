//! The built binary as an operator calls it: exit codes, error messages, a closed stdout, the
//! generated man page and completions. Unit tier: nothing here needs root or changes the host
//! (every command runs against a temporary `--root` or only parses), except the one host-tier
//! test that applies a provision step into a temporary root.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fireclaw(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fireclaw"));
    c.args(args)
        .env_remove("FIRECLAW_ROOT")
        .env_remove("FIRECLAW_CONFIG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    c
}

fn output(args: &[&str]) -> Output {
    fireclaw(args).output().expect("run fireclaw")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_root() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn root_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// Runs with stdout (and, with `close_stderr`, stderr) a pipe whose reader is already gone, so
/// the very first write fails with EPIPE, as after `| head -1` has read its line.
fn with_closed_pipe(args: &[&str], close_stderr: bool) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut c = fireclaw(args);
    if close_stderr {
        c.stderr(writer.try_clone().expect("dup"));
    } else {
        c.stderr(Stdio::piped());
    }
    c.stdout(writer);
    c.spawn().expect("spawn").wait_with_output().expect("wait")
}

#[test]
fn a_closed_stdout_is_a_quiet_exit_with_the_usual_code() {
    let root = temp_root();
    let r = root_arg(root.path());
    for args in [
        &["--root", &r, "provision", "--dry-run"][..],
        &["--root", &r, "provision", "--dry-run", "--json"],
        &["--root", &r, "config"],
        &["--root", &r, "image", "list"],
        &["--root", &r, "uninstall", "--dry-run"],
        &["manpage"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let usual = fireclaw(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run");
        let closed = with_closed_pipe(args, false);
        let err = stderr(&closed);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        assert_eq!(closed.status.code(), usual.code(), "{args:?}: {err}");
        // stderr gone as well (`2>&1 | head`): the same.
        let both = with_closed_pipe(args, true);
        assert_eq!(
            both.status.code(),
            usual.code(),
            "{args:?} with stderr closed"
        );
    }
    // Nothing was created under the root by any of it.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn an_error_with_stderr_closed_still_exits_1() {
    let o = with_closed_pipe(&["--root", "/etc/hostname", "status"], true);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_2_and_run_usage_errors_exit_125() {
    for (args, code, needle) in [
        (&["provision", "--bogus"][..], 2, "--bogus"),
        (&["nosuchcommand"], 2, "nosuchcommand"),
        (&["--root", "relative", "status"], 2, "--root"),
        (&["run", "--cpus", "0", "--", "true"], 125, "--cpus"),
        (&["run", "--vmm", "kvm", "--", "true"], 125, "--vmm"),
        (&["-v", "run", "uname"], 125, "uname"),
    ] {
        let o = output(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    for args in [&["--help"][..], &["run", "--help"], &["--version"]] {
        assert_eq!(output(args).status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn a_bad_config_exits_1_naming_file_line_and_key_and_run_exits_125() {
    let root = temp_root();
    let cfg = root.path().join("fireclaw.toml");
    std::fs::write(&cfg, "[pool]\nmax_vms = 8\nvcpus = 255\n").unwrap();
    let cfg = cfg.display().to_string();
    let o = output(&["--config", &cfg, "config"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&format!("{cfg}:3: `pool.vcpus`")), "{err}");
    let o = output(&["--config", &cfg, "run", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));

    std::fs::write(
        root.path().join("fireclaw.toml"),
        "[images]\nrecipes = [\"nope\"]\n",
    )
    .unwrap();
    let err = stderr(&output(&["--config", &cfg, "config"]));
    assert!(
        err.contains(":2: `images.recipes`") && err.contains("agent, base"),
        "{err}"
    );
}

#[test]
fn errors_about_the_root_name_root_and_each_cause_once() {
    let o = output(&["--root", "/etc/hostname", "status"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("--root /etc/hostname is not a directory"),
        "{err}"
    );

    let root = temp_root();
    std::fs::create_dir_all(root.path().join("etc/fireclaw/fireclaw.toml")).unwrap();
    let o = output(&["--root", &root_arg(root.path()), "status"]);
    let err = stderr(&o);
    assert!(err.contains("--root"), "{err}");
    assert_eq!(err.matches("os error 21").count(), 1, "{err}");
}

#[test]
fn json_flags_print_json_even_with_nothing_there() {
    let root = temp_root();
    let r = root_arg(root.path());
    for args in [
        &["--root", &r, "gc", "--dry-run", "--json"][..],
        &["--root", &r, "config", "--json"],
        &["--root", &r, "image", "list", "--json"],
    ] {
        let o = output(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)));
        if args.contains(&"config") {
            assert_eq!(v["pool"]["max_vms"], 32);
        }
        if args.contains(&"list") {
            assert_eq!(v["images"], serde_json::json!([]));
        }
    }
}

#[test]
fn the_man_page_renders_and_completions_name_every_command() {
    let page = output(&["manpage"]);
    assert_eq!(page.status.code(), Some(0));
    let text = String::from_utf8(page.stdout).unwrap();
    assert!(
        text.contains(".TH fireclaw 1"),
        "{}",
        &text[..200.min(text.len())]
    );
    let dir = temp_root();
    let file = dir.path().join("fireclaw.1");
    std::fs::write(&file, &text).unwrap();
    // Rendered by man(1) where it is installed, else by groff, else only checked for its header
    // above.
    let rendered = if Path::new("/usr/bin/man").exists() {
        Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .ok()
    } else {
        Command::new("groff")
            .args(["-man", "-Tutf8", "-P-cbou"])
            .arg(&file)
            .output()
            .ok()
    };
    if let Some(r) = rendered {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let out = String::from_utf8_lossy(&r.stdout);
        for section in [
            "NAME",
            "SYNOPSIS",
            "FIRECLAW PROVISION",
            "FIRECLAW RUN",
            "EXAMPLES",
        ] {
            assert!(out.contains(section), "{section} missing from:\n{out}");
        }
    }
    let help = String::from_utf8(output(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        commands.contains(&"provision") && commands.len() >= 10,
        "{commands:?}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = output(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0));
        let script = String::from_utf8(o.stdout).unwrap();
        for c in &commands {
            assert!(script.contains(c), "{shell} completion lacks {c}");
        }
    }
}

/// `sudo fireclaw provision | true`: the reader is gone before the first line, and the apply must
/// still run to the end and exit 0 (it used to apply everything, then panic with 101).
#[test]
#[ignore = "host tier: needs root (provision applies into a temporary root); run with --include-ignored"]
fn an_apply_with_stdout_closed_finishes_and_exits_0() {
    if !support::tier("host", true, &[]) {
        return;
    }
    let dir = temp_root();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    let r = root_arg(&root);
    let o = with_closed_pipe(&["--root", &r, "provision", "--only", "layout"], true);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        root.join("etc/fireclaw/id_ed25519").is_file(),
        "layout was not applied"
    );
    assert!(root.join("var/lib/fireclaw/state.db").is_file());
    // And it is all journaled: uninstall takes it back out.
    let o = output(&["--root", &r, "uninstall"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!root.join("etc/fireclaw/id_ed25519").exists());
}
