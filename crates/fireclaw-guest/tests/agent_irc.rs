//! `fireclaw-guest run` against a real ngircd (started as Debian's unit starts it), the Ollama
//! double and a person on IRC, all in a network namespace; the agent runs unprivileged. Host tier.

mod support;

use std::time::Duration;

use fireclaw_testkit::ollama::{Reply, EVAL_COUNT, PROMPT_EVAL_COUNT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::{Setup, World, MODEL, NICK, PERSONA, SECS_30, SECS_5};

const QUIET: Duration = Duration::from_secs(3);

fn messages(req: &Value) -> Vec<Value> {
    req["messages"].as_array().cloned().unwrap_or_default()
}

fn contents(req: &Value) -> String {
    messages(req)
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn answers_when_addressed_and_ignores_the_rest() {
    let w = World::start("addr", Setup::default());
    let mut alice = w.person("alice");
    alice.say("#agents", "hello everyone").unwrap();
    alice
        .say("#agents", &format!("hey {NICK}: are you there?"))
        .unwrap();
    alice.say("#agents", &format!("{NICK}2: not you")).unwrap();
    std::thread::sleep(QUIET);
    assert!(
        w.ollama.chat_requests().is_empty(),
        "answered an unaddressed message"
    );

    w.ollama.push(Reply::text("Hello alice, I am here."));
    alice
        .say("#agents", &format!("{NICK}: are you there?"))
        .unwrap();
    let line = w.reply(&mut alice, "#agents", SECS_30);
    assert_eq!(line.text(), "Hello alice, I am here.");

    let chats = w.ollama.chat_requests();
    assert_eq!(chats.len(), 1);
    let req = &chats[0];
    assert_eq!(req["model"], MODEL);
    assert_eq!(req["stream"], true);
    let msgs = messages(req);
    assert_eq!(msgs[0]["role"], "system");
    assert!(msgs[0]["content"].as_str().unwrap().starts_with(PERSONA));
    assert_eq!(msgs.last().unwrap()["content"], "alice: are you there?");
    let tools: Vec<&str> = req["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["run_command", "save_memory"],
        "no web_search without SearXNG"
    );

    // Another agent (a client like any other) is ignored unless it addresses this one.
    let mut other = w.person("worker");
    other.say("#agents", "Hello alice, I am here.").unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(w.ollama.chat_requests().len(), 1);

    // Usage went to the spool, attributed by where it was drained from.
    let usage = w.drain_usage();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].model, MODEL);
    assert_eq!(usage[0].prompt_eval_count, PROMPT_EVAL_COUNT);
    assert_eq!(usage[0].eval_count, EVAL_COUNT);
    assert!(usage[0].ok);
    assert!(w.drain_usage().is_empty(), "drain empties the spool");
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn answers_direct_messages_and_keeps_their_history_apart() {
    let w = World::start("dm", Setup::default());
    let mut bob = w.person("bob");
    w.ollama.push(Reply::text("Hi bob, privately."));
    bob.say(NICK, "psst, hello").unwrap();
    assert_eq!(
        w.reply(&mut bob, "bob", SECS_30).text(),
        "Hi bob, privately."
    );
    w.ollama.push(Reply::text("Second."));
    bob.say(NICK, "and again").unwrap();
    w.reply(&mut bob, "bob", SECS_30);
    let chats = w.ollama.chat_requests();
    let second = contents(&chats[1]);
    assert!(
        second.contains("bob: psst, hello") && second.contains("Hi bob, privately."),
        "{second}"
    );
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn joins_a_channel_it_is_invited_to_and_answers_there() {
    let w = World::start("inv", Setup::default());
    let mut carol = w.person("carol");
    carol.join("#side").unwrap();
    carol.invite(NICK, "#side").unwrap();
    w.wait_agent_in(&mut carol, "#side");
    w.ollama.push(Reply::text("In the side room."));
    carol.say("#side", &format!("{NICK}, status?")).unwrap();
    assert_eq!(
        w.reply(&mut carol, "#side", SECS_30).text(),
        "In the side room."
    );
    assert_eq!(
        messages(&w.ollama.chat_requests()[0]).last().unwrap()["content"],
        "carol: status?"
    );
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn the_tool_loop_runs_a_command_as_the_agent_in_its_workspace() {
    let w = World::start("tool", Setup::default());
    let mut alice = w.person("alice");
    w.ollama.push(Reply::tool_call(
        "run_command",
        json!({"command": "echo made > proof.txt; id -u; pwd"}),
    ));
    w.ollama.push(Reply::text("Done: proof.txt exists."));
    alice
        .say("#agents", &format!("{NICK}: make a file"))
        .unwrap();
    assert_eq!(
        w.reply(&mut alice, "#agents", SECS_30).text(),
        "Done: proof.txt exists."
    );

    let proof = w.workspace.join("proof.txt");
    assert_eq!(std::fs::read_to_string(&proof).unwrap(), "made\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&proof).unwrap().uid(), support::AGENT_UID);

    let chats = w.ollama.chat_requests();
    assert_eq!(chats.len(), 2);
    let msgs = messages(&chats[1]);
    let call = &msgs[msgs.len() - 2];
    assert_eq!(call["role"], "assistant");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "run_command");
    let result = msgs.last().unwrap();
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_name"], "run_command");
    let out = result["content"].as_str().unwrap();
    assert!(out.starts_with("exit status: 0"), "{out}");
    assert!(out.contains(&support::AGENT_UID.to_string()), "{out}");
    assert!(out.contains(&w.workspace.display().to_string()), "{out}");
    let usage = w.drain_usage();
    assert_eq!(usage[0].requests, 2);
    assert_eq!(usage[0].eval_count, 2 * EVAL_COUNT);
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn saved_memory_is_in_the_next_request_and_after_a_restart() {
    let mut w = World::start("mem", Setup::default());
    let mut alice = w.person("alice");
    w.ollama.push(Reply::tool_call(
        "save_memory",
        json!({"text": "The deploy key lives in vault slot 7."}),
    ));
    w.ollama.push(Reply::text("Noted."));
    alice
        .say("#agents", &format!("{NICK}: remember slot 7"))
        .unwrap();
    assert_eq!(w.reply(&mut alice, "#agents", SECS_30).text(), "Noted.");
    let memory = std::fs::read_to_string(w.workspace.join("MEMORY.md")).unwrap();
    assert_eq!(memory, "The deploy key lives in vault slot 7.\n");
    let chats = w.ollama.chat_requests();
    assert!(
        !contents(&chats[0]).contains("vault slot 7."),
        "not before the save"
    );
    let system = messages(&chats[1])[0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        system.contains("MEMORY.md") && system.contains("vault slot 7."),
        "{system}"
    );

    // A new conversation (a DM) starts with it too.
    alice.say(NICK, "what do you remember?").unwrap();
    w.reply(&mut alice, "alice", SECS_30);
    let chats = w.ollama.chat_requests();
    assert!(messages(&chats[2])[0]["content"]
        .as_str()
        .unwrap()
        .contains("vault slot 7."));

    // A restarted agent reads it from the workspace at start.
    w.restart_guest();
    w.wait_agent_in(&mut alice, "#agents");
    alice
        .say("#agents", &format!("{NICK}: still remember?"))
        .unwrap();
    w.reply(&mut alice, "#agents", SECS_30);
    let chats = w.ollama.chat_requests();
    let restarted = messages(&chats[3]);
    assert!(restarted[0]["content"]
        .as_str()
        .unwrap()
        .contains("vault slot 7."));
    assert_eq!(
        restarted.len(),
        2,
        "history is the process's: system + question only"
    );
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn sighup_changes_the_model_without_leaving_irc() {
    let setup = Setup {
        models: vec![MODEL, "llama3.2:3b"],
        ..Setup::default()
    };
    let mut w = World::start("hup", setup);
    let mut alice = w.person("alice");
    alice.say("#agents", &format!("{NICK}: one")).unwrap();
    w.reply(&mut alice, "#agents", SECS_30);
    let before = alice.seen.len();

    w.setup.model = "llama3.2:3b".into();
    w.write_config();
    w.signal(Signal::SIGHUP);
    // A broken file on the next reload is refused and the running configuration kept.
    std::thread::sleep(Duration::from_secs(1));
    alice.say("#agents", &format!("{NICK}: two")).unwrap();
    w.reply(&mut alice, "#agents", SECS_30);
    std::fs::write(&w.config_path, "nick = \"coder\"\nbogus = 1\n").unwrap();
    w.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    alice.say("#agents", &format!("{NICK}: three")).unwrap();
    w.reply(&mut alice, "#agents", SECS_30);

    let models: Vec<Value> = w
        .ollama
        .chat_requests()
        .iter()
        .map(|r| r["model"].clone())
        .collect();
    assert_eq!(
        models,
        [json!(MODEL), json!("llama3.2:3b"), json!("llama3.2:3b")]
    );
    let left = alice.seen[before..]
        .iter()
        .filter(|l| {
            l.nick() == Some(NICK) && ["QUIT", "PART", "JOIN"].contains(&l.command.as_str())
        })
        .count();
    assert_eq!(left, 0, "{:?}", alice.seen);
    let log = w.log();
    assert!(
        log.contains("reload refused") && log.contains("bogus"),
        "{log}"
    );
    assert!(
        w.wait_exit(Duration::from_millis(10)).is_none(),
        "still running"
    );
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn sigterm_sends_quit_and_exits() {
    let mut w = World::start("term", Setup::default());
    let mut alice = w.person("alice");
    w.signal(Signal::SIGTERM);
    let quit = alice
        .wait_for(SECS_5, |l| l.command == "QUIT" && l.nick() == Some(NICK))
        .unwrap_or_else(|| panic!("no QUIT; log:\n{}", w.log()));
    // ngircd quotes a client's QUIT reason.
    assert_eq!(quit.text(), "\"coder signing off\"");
    let status = w.wait_exit(SECS_5).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn model_output_cannot_become_an_irc_command() {
    let w = World::start("inj", Setup::default());
    let mut alice = w.person("alice");
    w.ollama.push(Reply::text(
        "fine\r\nQUIT :pwned\0\rJOIN #evil\n\x01ACTION x\x01 \x02b\x0304red",
    ));
    alice
        .say("#agents", &format!("{NICK}: say something"))
        .unwrap();
    let lines = w.replies(&mut alice, "#agents", SECS_30, QUIET);
    assert_eq!(
        lines,
        ["fine", "QUIT :pwned", "JOIN #evil", "ACTION x bred"]
    );
    w.ollama.push(Reply::text("one\0two"));
    alice.say("#agents", &format!("{NICK}: again")).unwrap();
    assert_eq!(w.replies(&mut alice, "#agents", SECS_30, QUIET), ["onetwo"]);
    // Everything the agent did on the channel was PRIVMSG text; it never quit or joined #evil.
    let commands: Vec<&str> = alice
        .seen
        .iter()
        .filter(|l| l.nick() == Some(NICK))
        .map(|l| l.command.as_str())
        .collect();
    assert!(
        commands.iter().all(|c| *c == "PRIVMSG" || *c == "JOIN"),
        "{commands:?}"
    );
    assert!(!alice
        .seen
        .iter()
        .any(|l| l.raw.contains("#evil") && l.command == "JOIN"));
}

/// Each failure of item 6 is one short line on the channel and a log entry, and the agent goes on.
#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn failures_are_sentences_not_crashes() {
    let setup = Setup {
        limits: "command_timeout_secs = 2\nollama_timeout_secs = 4\nanswers_per_minute = 100\n"
            .into(),
        ..Setup::default()
    };
    let w = World::start("fail", setup);
    let mut alice = w.person("alice");
    let ask = |alice: &mut fireclaw_testkit::irc::IrcClient, script: Vec<Reply>| {
        for r in script {
            w.ollama.push(r);
        }
        alice.say("#agents", &format!("{NICK}: go")).unwrap();
        w.replies(alice, "#agents", SECS_30, QUIET)
    };

    w.ollama.set_models(&[]);
    let l = ask(&mut alice, vec![]);
    assert_eq!(
        l,
        [format!(
            "My model \"{MODEL}\" is not installed on the Ollama server."
        )]
    );
    w.ollama.set_models(&[MODEL]);

    let l = ask(
        &mut alice,
        vec![Reply::Status(500, "llama runner crashed".into())],
    );
    assert_eq!(l, ["The model server failed (500): llama runner crashed"]);

    let l = ask(
        &mut alice,
        vec![Reply::MidStreamError {
            partial: "I was say".into(),
            error: "out of memory".into(),
        }],
    );
    assert_eq!(l, ["The model failed while answering: out of memory"]);

    let l = ask(
        &mut alice,
        vec![Reply::RawLines(vec!["this is not json".into()])],
    );
    assert_eq!(l, ["The model server sent a reply I could not read."]);

    let l = ask(&mut alice, vec![Reply::text("x".repeat(1 << 20))]);
    assert_eq!(
        l[0],
        "(my reply was longer than 65536 bytes and was cut there)"
    );
    assert_eq!(l.len(), 12, "{l:?}");
    assert!(l[11].ends_with("more lines not shown]"), "{}", l[11]);

    let l = ask(
        &mut alice,
        vec![
            Reply::tool_call("launch_missiles", json!({})),
            Reply::text("Sorry."),
        ],
    );
    assert_eq!(
        l,
        [
            "unknown tool \"launch_missiles\"; available: run_command, save_memory",
            "Sorry."
        ]
    );

    let l = ask(
        &mut alice,
        vec![
            Reply::tool_call("run_command", json!({"cmd": 1})),
            Reply::text("Oops."),
        ],
    );
    assert!(
        l[0].starts_with("run_command: malformed arguments (missing field `command`"),
        "{l:?}"
    );
    assert_eq!(l[1], "Oops.");

    let l = ask(
        &mut alice,
        vec![
            Reply::tool_call("run_command", json!({"command": "sleep 600"})),
            Reply::text("It hung."),
        ],
    );
    assert_eq!(
        l,
        ["run_command timed out after 2s and was killed.", "It hung."]
    );
    let sleeping = std::process::Command::new("pgrep")
        .args(["-u", &support::AGENT_UID.to_string(), "-x", "sleep"])
        .output()
        .unwrap();
    assert!(sleeping.stdout.is_empty(), "the sleep was killed");

    let l = ask(&mut alice, vec![Reply::Hang]);
    assert_eq!(l, ["The model did not answer within 4s."]);

    // Every one of them was logged.
    let log = w.log();
    for needle in [
        "404",
        "500",
        "out of memory",
        "cut at the size limit",
        "launch_missiles",
        "timed out",
    ] {
        assert!(log.contains(needle), "{needle} not in log:\n{log}");
    }
    // And the agent is still there and well.
    let l = ask(&mut alice, vec![Reply::text("Still here.")]);
    assert_eq!(l, ["Still here."]);
    let usage = w.drain_usage();
    assert_eq!(usage.len(), 10);
    assert!(!usage[0].ok && usage[9].ok);
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn an_unreachable_ollama_is_a_sentence() {
    let w = World::start(
        "down",
        Setup {
            // Nothing listens on port 9 in a fresh namespace.
            ollama_url: Some("http://127.0.0.1:9".into()),
            ..Setup::default()
        },
    );
    let mut alice = w.person("alice");
    alice.say("#agents", &format!("{NICK}: hello?")).unwrap();
    assert_eq!(
        w.replies(&mut alice, "#agents", SECS_30, QUIET),
        ["I can't reach my model server (Ollama) right now; try again later."]
    );
    assert!(
        w.log().contains("Ollama is unreachable at 127.0.0.1:9"),
        "{}",
        w.log()
    );
}

#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn reconnects_when_the_server_comes_back() {
    let mut w = World::start("recon", Setup::default());
    let conf = w.dir.path().join("ngircd.conf");
    drop(w.ngircd.take());
    std::thread::sleep(Duration::from_secs(2));
    let addr = "127.0.0.1:6667".parse().unwrap();
    w.ngircd =
        Some(fireclaw_testkit::ngircd::Ngircd::start(&conf, &w.ns.name, addr).expect("restart"));
    // person() waits until the agent is back in #agents (backoff 1 s, 2 s, 4 s ...).
    let mut alice = w.person("alice");
    w.ollama.push(Reply::text("Back."));
    alice.say("#agents", &format!("{NICK}: back?")).unwrap();
    assert_eq!(w.reply(&mut alice, "#agents", SECS_30).text(), "Back.");
    assert!(w.log().contains("reconnecting"), "{}", w.log());
}

/// Two agents addressing each other would go on forever; a peer is answered at most
/// `limits.answers_per_minute` times a minute (default 6), the rest ignored.
#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn a_peer_that_keeps_addressing_the_agent_is_cut_off() {
    let w = World::start("loop", Setup::default());
    let mut peer = w.person("worker");
    for i in 0..9 {
        peer.say("#agents", &format!("{NICK}: round {i}")).unwrap();
    }
    let answers = w.replies(&mut peer, "#agents", SECS_30, Duration::from_secs(8));
    assert_eq!(answers.len(), 6, "{answers:?}");
    assert_eq!(w.ollama.chat_requests().len(), 6);
    assert!(w.log().contains("over limits.answers_per_minute"));
}

/// A long answer goes out paced (at most 4 lines per 5 s, under ngircd's penalty of about one
/// command a second), every line within the 512-byte limit as relayed, and the agent stays
/// connected. (Measured here: ngircd 26 throttles rather than disconnects a client that bursts 30
/// lines of 400 bytes, so this proves the pacing and the limit, not a disconnect avoided.)
#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn a_long_answer_is_paced_and_split_within_the_line_limit() {
    let w = World::start(
        "flood",
        Setup {
            limits: "reply_lines = 20\n".into(),
            ..Setup::default()
        },
    );
    let mut alice = w.person("alice");
    // 10 model lines of 900 bytes of multi-byte text: each splits into three IRC lines.
    let model_line = "日本語のテキスト ".repeat(36);
    let text = vec![model_line.clone(); 10].join("\n");
    w.ollama.push(Reply::text(text));
    alice
        .say("#agents", &format!("{NICK}: write a lot"))
        .unwrap();
    let started = std::time::Instant::now();
    let lines = w.replies(&mut alice, "#agents", SECS_30, Duration::from_secs(8));
    let took = started.elapsed();
    assert_eq!(lines.len(), 20, "{lines:?}");
    assert_eq!(lines[19], "[11 more lines not shown]");
    let raw: Vec<&String> = alice
        .seen
        .iter()
        .filter(|l| l.is_privmsg(NICK, "#agents"))
        .map(|l| &l.raw)
        .collect();
    assert!(
        raw.iter().all(|r| r.len() + 2 <= 512),
        "a relayed line over 512 bytes"
    );
    assert!(
        lines[..19].iter().all(|l| model_line.contains(l.as_str())),
        "split on character boundaries"
    );
    // 20 lines at 4 per 5 s.
    assert!(took >= Duration::from_secs(15), "not paced: {took:?}");
    w.ollama.push(Reply::text("Still connected."));
    alice.say("#agents", &format!("{NICK}: there?")).unwrap();
    assert_eq!(
        w.reply(&mut alice, "#agents", SECS_30).text(),
        "Still connected."
    );
    assert!(!w.log().contains("connection lost"), "{}", w.log());
}

/// An agent VM's init starts the agent before the host has written its config: with
/// `--wait-for-config` it waits (no exit into init's restart backoff) and starts on the host's
/// SIGHUP once the file is there.
#[test]
#[ignore = "host tier: needs root, ngircd, setpriv and network namespaces; run with --include-ignored"]
fn waits_for_its_config_and_starts_on_sighup() {
    let mut w = World::start_without_config("wait", Setup::default());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        w.wait_exit(Duration::from_millis(10)).is_none(),
        "exited without a config; log:\n{}",
        w.log()
    );
    // A SIGHUP before the file exists changes nothing: it keeps waiting.
    w.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        w.wait_exit(Duration::from_millis(10)).is_none(),
        "{}",
        w.log()
    );
    assert!(w.log().contains("waiting for"), "{}", w.log());
    w.write_config();
    w.signal(Signal::SIGHUP);
    let mut alice = w.person("alice");
    alice.say("#agents", &format!("{NICK}: hello")).unwrap();
    w.reply(&mut alice, "#agents", SECS_30);
    // And a waiting agent stops cleanly on SIGTERM.
    let mut idle = World::start_without_config("wait2", Setup::default());
    let deadline = std::time::Instant::now() + SECS_5;
    while !idle.log().contains("waiting for") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    idle.signal(Signal::SIGTERM);
    let status = idle.wait_exit(SECS_5).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}
