//! VM tier, end to end: `fireclaw runtime` with its overseer on a real ngircd, an agent VM from
//! the Debian agent test image under QEMU (TCG here) running `fireclaw-guest`, the Ollama double
//! on the bridge address, and a person on IRC. Needs root, ip, nft, qemu-system-x86_64, ngircd,
//! and the agent test image (FIRECLAW_TEST_AGENT_MANIFEST, default the CI cache's debian-test)
//! with the key it authorizes (FIRECLAW_TEST_SSH_KEY, default the CI key).

mod support;

use std::time::{Duration, Instant};

use fireclaw_testkit::irc::{IrcClient, Line};
use fireclaw_testkit::ollama::Reply;
use serde_json::json;
use support::agents::AgentWorld;
use support::runtime::Runtime;
use support::vm::*;

/// Waits for a line matching `pred`, looking first at what arrived since `from` (a wait for
/// something else may have read it already).
fn seen_or_wait(
    c: &mut IrcClient,
    from: usize,
    timeout: Duration,
    pred: impl Fn(&Line) -> bool,
) -> Option<Line> {
    if let Some(l) = c.seen[from.min(c.seen.len())..].iter().find(|l| pred(l)) {
        return Some(l.clone());
    }
    c.wait_for(timeout, pred)
}

/// The guest powers itself off a moment after the command returns: `poweroff -f` by the system
/// call itself (reboot(2), LINUX_REBOOT_CMD_POWER_OFF), as the Debian test image has no poweroff
/// binary and its kernel no sysrq, so fireclaw-init's own stop cannot power it off.
const POWER_OFF: &str =
    "(sleep 1; sync; perl -e 'syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)') \
                         >/dev/null 2>&1 &";

fn joined(nick: &str) -> impl Fn(&Line) -> bool + '_ {
    move |l: &Line| l.command == "JOIN" && l.nick() == Some(nick)
}

fn said_by<'a>(nick: &'a str, target: &'a str) -> impl Fn(&Line) -> bool + 'a {
    move |l: &Line| l.is_privmsg(nick, target)
}

/// The VM id an overseer's answer names (`... VM 0123456789ab, ...`).
fn vm_in(answer: &str) -> Option<String> {
    answer
        .split("VM ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
}

#[test]
#[ignore = "vm tier: needs root, QEMU, ngircd and the agent test image; run with --include-ignored"]
fn an_agent_in_a_vm_answers_with_its_kernel_and_remembers_across_destroy() {
    let Some(world) = AgentWorld::new("agvm") else {
        return;
    };
    let (ns, root, ollama) = (&world.ns, &world.root, &world.ollama);
    let runtime = || world.runtime_command();
    let rt_files = &world.rt_files;
    let rt = Runtime::start(runtime(), rt_files.path());
    rt.wait_log("overseer: registered");

    let mut alice = world.person("alice");
    std::thread::sleep(Duration::from_secs(1));

    // !invoke coder → the agent joins #agents.
    let invoked = Instant::now();
    let mark = alice.seen.len();
    alice.say("#control", "!invoke coder").unwrap();
    let up = alice
        .wait_for(Duration::from_secs(400), said_by("overseer", "#control"))
        .unwrap_or_else(|| panic!("no answer to !invoke:\n{}", rt.log_text()));
    // No template is kept warm yet: cold.
    assert!(
        up.text().contains("coder is up") && up.text().contains("started cold"),
        "{up:?}\n{}",
        rt.log_text()
    );
    let vm = vm_in(up.text()).expect("the answer names the VM");
    let diag = |vm: &str| {
        let out = root.fireclaw(
            ns,
            &[
                "exec", vm, "--", "sh", "-c",
                "cat /etc/fireclaw/agent.toml; ps -ef; mount | grep -E 'vd|workspace'; ls -la /workspace; ls /etc/fireclaw/services 2>&1; tail -30 /var/log/fireclaw-guest.log 2>&1",
            ],
        );
        let logs = root.fireclaw(ns, &["logs", vm]);
        format!(
            "{}{}\nconsole:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            text(&logs.stdout)
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    seen_or_wait(&mut alice, mark, Duration::from_secs(120), joined("coder")).unwrap_or_else(
        || {
            panic!(
                "coder never joined #agents:\n{}\n{}",
                rt.log_text(),
                diag(&vm)
            )
        },
    );
    let join_time = invoked.elapsed();

    // Asked its kernel, it runs `uname -a` in the VM as `agent` and answers with the result.
    ollama.push(Reply::tool_call(
        "run_command",
        json!({"command": "uname -a; id -un"}),
    ));
    ollama.push(Reply::EchoToolResult("I run on: ".into()));
    let asked = Instant::now();
    alice
        .say("#agents", "coder: what kernel are you on?")
        .unwrap();
    let answer = alice
        .wait_for(Duration::from_secs(120), said_by("coder", "#agents"))
        .unwrap_or_else(|| panic!("coder never answered:\n{}", rt.log_text()));
    let first_line = invoked.elapsed();
    let answered = asked.elapsed();
    let lines: Vec<String> = std::iter::once(answer.text().to_string())
        .chain(
            alice
                .collect(Duration::from_secs(5))
                .iter()
                .filter(|l| l.is_privmsg("coder", "#agents"))
                .map(|l| l.text().to_string()),
        )
        .collect();
    let reply = lines.join("\n");
    let kernel = root.fireclaw(ns, &["exec", &vm, "--", "uname", "-r"]);
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    let release = text(&kernel.stdout).trim().to_string();
    assert!(
        reply.contains("Linux") && reply.contains(&release),
        "the reply {reply:?} lacks the guest's kernel {release}"
    );
    assert!(reply.contains("agent"), "not run as agent: {reply:?}");

    // It saves a memory; destroyed without purge and invoked again, it still has it.
    ollama.push(Reply::tool_call(
        "save_memory",
        json!({"text": "The secret word is marmalade-42."}),
    ));
    ollama.push(Reply::text("Saved."));
    alice
        .say("#agents", "coder: remember the secret word")
        .unwrap();
    let saved = alice
        .wait_for(Duration::from_secs(120), said_by("coder", "#agents"))
        .expect("coder confirms");
    assert_eq!(saved.text(), "Saved.");
    alice.say("#control", "!destroy coder").unwrap();
    let gone = alice
        .wait_for(Duration::from_secs(120), said_by("overseer", "#control"))
        .expect("destroy answered");
    assert!(gone.text().contains("workspace kept"), "{gone:?}");
    assert!(
        alice
            .seen
            .iter()
            .any(|l| l.command == "QUIT" && l.nick() == Some("coder")),
        "coder left without QUIT: {:?}",
        alice.seen.iter().rev().take(5).collect::<Vec<_>>()
    );

    // `[agents] warm` added and SIGHUP: the pool restores a clone of the agent snapshot. Invoked
    // again, coder starts warm in it, its workspace (with the memory) moved into the clone's
    // drive.
    world.add_agents_setting("warm = [\"coder\"]");
    rt.signal(nix::sys::signal::Signal::SIGHUP);
    rt.wait_log_for("warm pool: agent:coder ready", Duration::from_secs(300));
    let mark = alice.seen.len();
    let invoked = Instant::now();
    alice.say("#control", "!invoke coder").unwrap();
    let up = alice
        .wait_for(Duration::from_secs(400), said_by("overseer", "#control"))
        .expect("second invoke answered");
    assert!(
        up.text().contains("coder is up") && up.text().contains("started warm"),
        "{up:?}\n{}",
        rt.log_text()
    );
    let warm_answer = invoked.elapsed();
    seen_or_wait(&mut alice, mark, Duration::from_secs(120), joined("coder"))
        .expect("coder joins again");
    let warm_join = invoked.elapsed();
    // `ps` says where it came from.
    let warm_vm = vm_in(up.text()).expect("the answer names the VM");
    let ps = root.fireclaw(ns, &["ps", "--json"]);
    let listed: fireclaw_proto::control::VmList =
        serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert!(
        listed
            .vms
            .iter()
            .any(|v| v.id == warm_vm && v.origin == fireclaw_proto::control::Origin::Pool),
        "ps does not show {warm_vm} from the pool: {}",
        text(&ps.stdout)
    );
    eprintln!(
        "warm: the overseer answered after {:.2} s",
        warm_answer.as_secs_f64()
    );
    eprintln!(
        "!invoke → coder in #agents: cold {:.1} s, warm {:.1} s ({:.1}x)",
        join_time.as_secs_f64(),
        warm_join.as_secs_f64(),
        join_time.as_secs_f64() / warm_join.as_secs_f64().max(0.001)
    );
    for l in rt
        .log_text()
        .lines()
        .filter(|l| l.contains("warm VM taken"))
    {
        eprintln!("{l}");
    }
    let before = ollama.chat_requests().len();
    ollama.push(Reply::text("marmalade-42"));
    alice
        .say("#agents", "coder: what is the secret word?")
        .unwrap();
    let chats = ollama.wait_chats(before + 1, Duration::from_secs(120));
    let request = chats.last().expect("a chat request").to_string();
    assert!(
        request.contains("marmalade-42"),
        "the remembered text is not in the next request: {request}"
    );

    // A warm VM that cannot take an agent (here: bob's workspace is not the size of the VM's
    // drive) is destroyed and the agent boots cold, its workspace untouched.
    let start = Instant::now();
    while rt
        .log_text()
        .matches("warm pool: agent:coder ready")
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the pool never refilled:\n{}",
            rt.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bob_ws = root.path().join("var/lib/fireclaw/workspaces/bob.ext4");
    sh_ok(&format!(
        "truncate -s 32M {p} && mkfs.ext4 -q -F -E root_owner=1000:1000 {p}",
        p = bob_ws.display()
    ));
    let bob_before = std::fs::read(&bob_ws).unwrap();
    let _ = alice.collect(Duration::from_millis(300));
    alice.say("#control", "!invoke coder bob").unwrap();
    let bob = alice
        .wait_for(Duration::from_secs(400), said_by("overseer", "#control"))
        .expect("!invoke coder bob answered");
    assert!(
        bob.text().contains("bob is up") && bob.text().contains("started cold"),
        "{bob:?}\n{}",
        rt.log_text()
    );
    assert!(
        rt.log_text().contains("could not take the agent"),
        "{}",
        rt.log_text()
    );
    alice.say("#control", "!destroy bob").unwrap();
    let gone = alice
        .wait_for(Duration::from_secs(120), said_by("overseer", "#control"))
        .expect("!destroy bob answered");
    assert!(gone.text().contains("bob destroyed"), "{gone:?}");
    let bob_after = std::fs::metadata(&bob_ws).unwrap().len();
    assert_eq!(
        bob_after,
        bob_before.len() as u64,
        "bob's workspace changed size"
    );
    sh_ok(&format!("e2fsck -fn {}", bob_ws.display()));
    std::fs::remove_file(&bob_ws).unwrap();

    eprintln!(
        "!invoke → coder in #agents (cold): {:.1} s; → its first line: {:.1} s (of which the question → answer: {:.1} s)",
        join_time.as_secs_f64(),
        first_line.as_secs_f64(),
        answered.as_secs_f64()
    );

    // Usage: the health checker drains the guest's spool into the usage table.
    let ask = |alice: &mut IrcClient, text: &str| -> String {
        let _ = alice.collect(Duration::from_millis(300));
        alice.say("#control", text).unwrap();
        alice
            .wait_for(Duration::from_secs(60), said_by("overseer", "#control"))
            .map(|l| l.text().to_string())
            .unwrap_or_default()
    };
    let start = Instant::now();
    loop {
        let status = ask(&mut alice, "!status coder");
        if alice
            .seen
            .iter()
            .rev()
            .take(3)
            .any(|l| l.text().starts_with("usage: ") && !l.text().starts_with("usage: 0 "))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no usage collected: {status}\n{}",
            rt.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // The (warm) agent's VMM dies: announced in #control, restarted, back in #agents.
    let pid = fireclaw::vm::record::get(&root.db().unwrap(), &warm_vm)
        .unwrap()
        .and_then(|r| r.vmm_pid)
        .expect("the agent VM's VMM pid");
    let mark = alice.seen.len();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let died = seen_or_wait(&mut alice, mark, Duration::from_secs(60), |l| {
        l.is_privmsg("overseer", "#control") && l.text().starts_with("Agent coder died")
    })
    .unwrap_or_else(|| panic!("no death notice:\n{}", rt.log_text()));
    eprintln!("death notice: {}", died.text());
    assert!(
        died.text().contains("Console: "),
        "the notice quotes no console lines: {died:?}"
    );
    seen_or_wait(&mut alice, mark, Duration::from_secs(400), |l| {
        l.is_privmsg("overseer", "#control") && l.text().starts_with("coder restarted")
    })
    .unwrap_or_else(|| panic!("no restart:\n{}", rt.log_text()));
    seen_or_wait(&mut alice, mark, Duration::from_secs(120), joined("coder"))
        .expect("coder back in #agents");
    eprintln!(
        "VMM killed → coder back in #agents: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let status = ask(&mut alice, "!status coder");
    assert!(status.contains("1 restarts"), "{status}");

    // The runtime stops and starts again: the agent VM is re-adopted, not restarted, and the
    // agent never leaves #agents.
    let mark = alice.seen.len();
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    let rt = Runtime::start(runtime(), rt_files.path());
    rt.wait_log("overseer: registered");
    rt.wait_log("re-adopted kept VM");
    std::thread::sleep(Duration::from_secs(2));
    let again = ask(&mut alice, "!status coder");
    assert!(
        again.contains("running") && again.contains("1 restarts"),
        "{again}"
    );
    assert_eq!(
        vm_in(&again),
        vm_in(&status),
        "the agent VM changed over the runtime's restart"
    );
    assert!(
        !alice.seen[mark..]
            .iter()
            .any(|l| l.nick() == Some("coder") && matches!(l.command.as_str(), "QUIT" | "PART")),
        "coder left over the runtime's restart"
    );

    // `kill -9` of the runtime: nothing of its own shutdown runs. The next start re-adopts the
    // agent VM as it is (not restarted), the agent never left #agents, and its workspace is whole.
    let mark = alice.seen.len();
    let killed_log = rt.kill();
    assert!(!killed_log.contains("stopping"), "{killed_log}");
    let rt = Runtime::start(runtime(), rt_files.path());
    rt.wait_log("overseer: registered");
    rt.wait_log("re-adopted kept VM");
    std::thread::sleep(Duration::from_secs(2));
    let after_kill = ask(&mut alice, "!status coder");
    assert!(
        after_kill.contains("running") && after_kill.contains("1 restarts"),
        "{after_kill}\n{}",
        rt.log_text()
    );
    assert_eq!(
        vm_in(&after_kill),
        vm_in(&status),
        "the agent VM changed over the runtime's kill -9"
    );
    // Health rounds run against the re-adopted VM without finding it dead.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        !alice.seen[mark..]
            .iter()
            .any(|l| l.nick() == Some("coder")
                && matches!(l.command.as_str(), "QUIT" | "PART" | "JOIN")),
        "coder left #agents over the runtime's kill -9"
    );
    assert!(
        !alice.seen[mark..]
            .iter()
            .any(|l| l.is_privmsg("overseer", "#control") && l.text().contains("coder restart")),
        "coder was restarted over the runtime's kill -9:\n{}",
        rt.log_text()
    );
    // The VM the restart after the VMM's kill made, re-adopted twice since.
    let vm3 = vm_in(&after_kill).expect("the answer names the VM");
    let memory = root.fireclaw(ns, &["exec", &vm3, "--", "cat", "/workspace/MEMORY.md"]);
    assert!(
        memory.status.success() && text(&memory.stdout).contains("marmalade-42"),
        "MEMORY.md after kill -9: {}{}",
        text(&memory.stdout),
        text(&memory.stderr)
    );
    // The workspace checked by e2fsck while the agent runs: frozen in the guest (ext4's freeze
    // commits the journal and marks the file system clean), read on the host, thawed.
    let ws = root.path().join("var/lib/fireclaw/workspaces/coder.ext4");
    let freeze = root.fireclaw(ns, &["exec", &vm3, "--", "fsfreeze", "-f", "/workspace"]);
    assert!(freeze.status.success(), "{}", text(&freeze.stderr));
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&ws)
        .output()
        .unwrap();
    let thaw = root.fireclaw(ns, &["exec", &vm3, "--", "fsfreeze", "-u", "/workspace"]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn of the workspace after kill -9: {}{}",
        text(&fsck.stdout),
        text(&fsck.stderr)
    );
    assert!(thaw.status.success(), "{}", text(&thaw.stderr));

    // !model: the configuration is pushed and SIGHUP sent; the agent stays on IRC and the next
    // question goes to the new model.
    let mark = alice.seen.len();
    let changed = ask(&mut alice, "!model coder qwen2.5:7b");
    assert_eq!(changed, "coder now thinks with qwen2.5:7b.");
    std::thread::sleep(Duration::from_secs(2));
    let before = ollama.chat_requests().len();
    alice.say("#agents", "coder: which model?").unwrap();
    let chats = ollama.wait_chats(before + 1, Duration::from_secs(60));
    assert_eq!(
        chats.last().and_then(|c| c["model"].as_str()),
        Some("qwen2.5:7b")
    );
    assert!(
        !alice.seen[mark..]
            .iter()
            .any(|l| l.nick() == Some("coder")
                && matches!(l.command.as_str(), "QUIT" | "PART" | "JOIN")),
        "coder left IRC for a model change"
    );

    // The guest powers itself off: a clean stop, which `on-failure` leaves stopped, saying so in
    // one line.
    // Powers VM `vm` off from inside and returns the overseer's first line about `nick` since.
    let power_off = |alice: &mut IrcClient, vm: &str, nick: &str| -> Line {
        let mark = alice.seen.len();
        let off = root.fireclaw(ns, &["exec", vm, "--", "sh", "-c", POWER_OFF]);
        assert!(off.status.success(), "{}", text(&off.stderr));
        seen_or_wait(alice, mark, Duration::from_secs(120), |l| {
            l.is_privmsg("overseer", "#control") && l.text().starts_with(nick)
        })
        .unwrap_or_else(|| panic!("no word of the clean stop:\n{}", rt.log_text()))
    };
    let mark = alice.seen.len();
    let stopped = power_off(&mut alice, &vm3, "coder");
    assert_eq!(
        stopped.text(),
        "coder's VM shut down cleanly (its guest powered off); restart policy on-failure: it stays stopped.",
        "{}",
        rt.log_text()
    );
    std::thread::sleep(Duration::from_secs(8));
    let notes: Vec<_> = alice.seen[mark..]
        .iter()
        .filter(|l| l.is_privmsg("overseer", "#control"))
        .map(|l| l.text().to_string())
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let st = ask(&mut alice, "!status coder");
    assert!(st.contains(": stopped, VM none"), "{st}");

    let gone = ask(&mut alice, "!destroy coder --purge");
    assert!(gone.contains("workspace purged"), "{gone}");

    // Under `always` a clean stop is restarted. This VM is the runtime's own child, so its
    // VMM's exit code (0) is seen as well as its console.
    let mark = alice.seen.len();
    let up = ask(&mut alice, "!invoke steady");
    assert!(up.contains("steady is up"), "{up}\n{}", rt.log_text());
    let vm4 = vm_in(&up).expect("the answer names the VM");
    seen_or_wait(&mut alice, mark, Duration::from_secs(120), joined("steady"))
        .expect("steady joins #agents");
    let mark = alice.seen.len();
    let note = power_off(&mut alice, &vm4, "steady");
    assert_eq!(
        note.text(),
        "steady's VM shut down cleanly (its guest powered off); restart policy always: it restarts in about 3 s.",
        "{}",
        rt.log_text()
    );
    seen_or_wait(&mut alice, mark, Duration::from_secs(400), |l| {
        l.is_privmsg("overseer", "#control") && l.text().starts_with("steady restarted")
    })
    .unwrap_or_else(|| panic!("steady was not restarted:\n{}", rt.log_text()));
    seen_or_wait(&mut alice, mark, Duration::from_secs(120), joined("steady"))
        .expect("steady back in #agents");
    assert!(
        !alice.seen[mark..]
            .iter()
            .any(|l| l.is_privmsg("overseer", "#control") && l.text().contains("died")),
        "a clean stop announced as a death"
    );
    let gone = ask(&mut alice, "!destroy steady --purge");
    assert!(gone.contains("workspace purged"), "{gone}");
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    world.stop_irc();
    root.assert_no_leaks(ns);
    assert!(
        !root
            .path()
            .join("var/lib/fireclaw/workspaces/coder.ext4")
            .exists(),
        "purged workspace still there"
    );
}
