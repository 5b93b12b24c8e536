//! `cargo bench --profile dev --bench agents` (as root, with the VM tier's fixtures, as `.ci/run`
//! sets them): `!invoke coder` → coder's JOIN in `#agents`, cold against warm, side by side in
//! one run through a real `fireclaw runtime`, ngircd and QEMU guests, with min/median/max and
//! the ratio. Cold runs first with `[agents] warm` empty; then `warm = ["coder"]` by SIGHUP, and
//! each warm run waits for the pool to have its clone ready before it invokes (the pool's
//! restore is not in the timed path, as it is not for an operator). Asserts nothing about time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fireclaw_testkit::irc::{IrcClient, Line};
use support::agents::AgentWorld;
use support::runtime::Runtime;

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// `!invoke coder` → its JOIN; the overseer's answer must say how it started.
fn invoke(alice: &mut IrcClient, rt: &Runtime, how: &str) -> f64 {
    let _ = alice.collect(Duration::from_millis(300));
    let t = Instant::now();
    alice.say("#control", "!invoke coder").unwrap();
    let up = alice
        .wait_for(Duration::from_secs(400), |l: &Line| {
            l.is_privmsg("overseer", "#control")
        })
        .unwrap_or_else(|| panic!("no answer to !invoke:\n{}", rt.log_text()));
    assert!(
        up.text().contains(&format!("started {how}")),
        "{up:?}\n{}",
        rt.log_text()
    );
    let joined = |l: &Line| l.command == "JOIN" && l.nick() == Some("coder");
    if !alice.seen.iter().rev().take(5).any(joined) {
        alice
            .wait_for(Duration::from_secs(120), joined)
            .unwrap_or_else(|| panic!("coder never joined:\n{}", rt.log_text()));
    }
    let secs = t.elapsed().as_secs_f64();
    alice.say("#control", "!destroy coder").unwrap();
    alice
        .wait_for(Duration::from_secs(120), |l: &Line| {
            l.is_privmsg("overseer", "#control") && l.text().contains("destroyed")
        })
        .unwrap_or_else(|| panic!("no answer to !destroy:\n{}", rt.log_text()));
    secs
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("FIRECLAW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let Some(world) = AgentWorld::new("bagt") else {
        return;
    };
    let rt = world.start_runtime();
    rt.wait_log("overseer: registered");
    let mut alice = world.person("alice");
    std::thread::sleep(Duration::from_secs(1));

    let cold: Vec<f64> = (0..runs).map(|_| invoke(&mut alice, &rt, "cold")).collect();

    world.add_agents_setting("warm = [\"coder\"]");
    rt.signal(nix::sys::signal::Signal::SIGHUP);
    let mut warm = Vec::new();
    for i in 1..=runs {
        // The i-th clone the pool made ready: one per warm run (each invoke takes one).
        let start = Instant::now();
        while rt
            .log_text()
            .matches("warm pool: agent:coder ready")
            .count()
            < i
        {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "the pool never got coder's clone ready:\n{}",
                rt.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        warm.push(invoke(&mut alice, &rt, "warm"));
    }

    let (cmin, cmed, cmax) = stats(&cold);
    let (wmin, wmed, wmax) = stats(&warm);
    println!(
        "!invoke coder → coder's JOIN in #agents (QEMU TCG, 1 vCPU, 512 MiB), {runs} runs each:"
    );
    println!("  {:<8} {:>7} {:>7} {:>7}", "", "min s", "median", "max");
    println!("  {:<8} {cmin:>7.2} {cmed:>7.2} {cmax:>7.2}", "cold");
    println!("  {:<8} {wmin:>7.2} {wmed:>7.2} {wmax:>7.2}", "warm");
    println!(
        "  ratio of medians: warm {:.1}x faster than cold",
        cmed / wmed.max(0.001)
    );
    for l in rt
        .log_text()
        .lines()
        .filter(|l| l.contains("warm VM taken"))
    {
        println!("  {}", l.split("agents: ").nth(1).unwrap_or(l));
    }
    let (exit, log) = rt.stop();
    assert!(exit.success(), "{log}");
    world.stop_irc();
    world.root.assert_no_leaks(&world.ns);
}
