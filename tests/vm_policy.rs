//! Network policies shown by traffic from inside a real guest. The test namespace plays the host
//! (bridge 172.16.0.1 with an "IRC" listener on 6667) and a second namespace plays the outside
//! (203.0.113.2:8080, reached through NAT). Tier `vm`.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::vm::*;

/// Serves `greeting` to every connection on `addr`, from inside network namespace `ns` (the
/// thread enters it, so the socket lives there), until the returned flag is set.
fn serve_in(ns: &str, addr: &str, greeting: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let addr = addr.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !flag.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(greeting.as_bytes());
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    rx.recv().unwrap();
    stop
}

/// Prints whatever each server greets with; nc where the image has it, bash's /dev/tcp otherwise.
const PROBE: &str = "probe() { if command -v nc >/dev/null; then nc -w 3 $1 $2 </dev/null; \
                     else timeout 3 bash -c \"cat </dev/tcp/$1/$2\"; fi; echo; }; \
                     probe 172.16.0.1 6667; probe 172.16.0.1 11434; probe 172.16.0.1 2222; \
                     probe 203.0.113.2 8080; echo probed";

#[test]
#[ignore = "vm tier: needs root and QEMU; run with --include-ignored"]
fn policies_full_local_none_shape_guest_traffic() {
    if !prerequisites("vm", true) {
        return;
    }
    let _l = vm_lock();
    let fx = fixture();
    let mut ns = Netns::new("pol");
    let outside = ns.add_outside();
    let root = TestRoot::new(&fx);
    let stop_irc = serve_in(&ns.name, "172.16.0.1:6667", "irc-hi\n");
    // Ollama on the bridge address (the default [ollama] url), and a host port nothing needs.
    let stop_ollama = serve_in(&ns.name, "172.16.0.1:11434", "ollama-hi\n");
    let stop_other = serve_in(&ns.name, "172.16.0.1:2222", "other-hi\n");
    let stop_out = serve_in(&outside, "203.0.113.2:8080", "out-hi\n");

    for (policy, irc, out) in [
        ("full", true, true),
        ("local", true, false),
        ("none", false, false),
    ] {
        // Under local exactly IRC and Ollama are open on the host; full opens every host port.
        let (ollama, other) = (irc, policy == "full");
        let o = root
            .run_cmd(&ns, &["--policy", policy, "--", "sh", "-c", PROBE])
            .output()
            .unwrap();
        let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
        // SSH from the host works under every policy: the command ran to the end.
        assert_eq!(o.status.code(), Some(0), "{policy}: {stderr}");
        assert!(stdout.contains("probed"), "{policy}: {stdout}");
        assert_eq!(
            stdout.contains("irc-hi"),
            irc,
            "{policy}: host IRC port: {stdout}"
        );
        assert_eq!(
            stdout.contains("out-hi"),
            out,
            "{policy}: outside: {stdout}"
        );
        assert_eq!(
            stdout.contains("ollama-hi"),
            ollama,
            "{policy}: host Ollama port: {stdout}"
        );
        assert_eq!(
            stdout.contains("other-hi"),
            other,
            "{policy}: another host port: {stdout}"
        );
        root.assert_no_leaks(&ns);
    }
    stop_irc.store(true, Ordering::SeqCst);
    stop_ollama.store(true, Ordering::SeqCst);
    stop_other.store(true, Ordering::SeqCst);
    stop_out.store(true, Ordering::SeqCst);
}
