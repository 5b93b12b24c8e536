//! Taps and per-VM nftables rules against the real kernel, in a private namespace, without a
//! guest. Tier `host`: needs root, ip and nft.

mod support;

use std::os::fd::AsFd;

use fireclaw::net::policy::{self, Policy, VmRules};
use fireclaw::net::tap;
use support::vm::*;

#[test]
#[ignore = "host tier: needs root (namespaces, nftables, ngircd); run with --include-ignored"]
fn tap_on_bridge_and_policy_rules_come_and_go() {
    if !prerequisites("host", false) {
        return;
    }
    let ns = Netns::new("net");
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let name = ns.name.clone();
    std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let t = tap::tap_name("0123456789abcdef");
        tap::create(&t, "fcbr0").unwrap();
        let link = sh_ok(&format!("ip -n {name} -d link show {t}"));
        assert!(
            link.contains("master fcbr0") && link.contains("tun"),
            "{link}"
        );
        assert!(tap::list_fireclaw_taps().unwrap().contains(&t));
        // A second VM can never end up on the same tap.
        assert!(tap::create(&t, "fcbr0").is_err());
        assert!(tap::create("fc-nobridge", "nosuchbr")
            .unwrap_err()
            .to_string()
            .contains("nosuchbr"));
        assert!(!tap::list_fireclaw_taps()
            .unwrap()
            .contains(&"fc-nobridge".to_string()));

        for p in [Policy::Local, Policy::None] {
            let rules = VmRules {
                table: "fireclaw",
                bridge: "fcbr0",
                bridge_ip: "172.16.0.1".parse().unwrap(),
                irc_port: 6667,
                ollama_port: Some(11434),
                tap: &t,
                guest_ip: "172.16.0.9".parse().unwrap(),
                policy: p,
            };
            policy::install(&rules).unwrap();
            // Idempotent: a second install leaves one jump.
            policy::install(&rules).unwrap();
            let listed = sh_ok(&format!(
                "ip netns exec {name} nft list table inet fireclaw"
            ));
            assert_eq!(
                listed.matches("jump vm_fc_0123456789ab").count(),
                1,
                "{listed}"
            );
            assert_eq!(listed.matches("jump guest_egress").count(), 2, "{listed}");
            assert_eq!(
                listed.contains("tcp dport 6667 accept"),
                p == Policy::Local,
                "{listed}"
            );
            policy::remove("fireclaw", &t).unwrap();
            policy::remove("fireclaw", &t).unwrap();
            let listed = sh_ok(&format!(
                "ip netns exec {name} nft list table inet fireclaw"
            ));
            assert!(
                !listed.contains("vm_fc_") && !listed.contains("fc:"),
                "{listed}"
            );
        }
        // Without the table, restrictive policies refuse instead of running the VM open.
        sh_ok(&format!(
            "ip netns exec {name} nft delete table inet fireclaw"
        ));
        let err = policy::install(&VmRules {
            table: "fireclaw",
            bridge: "fcbr0",
            bridge_ip: "172.16.0.1".parse().unwrap(),
            irc_port: 6667,
            ollama_port: Some(11434),
            tap: &t,
            guest_ip: "172.16.0.9".parse().unwrap(),
            policy: Policy::None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("fireclaw provision"), "{err}");
        policy::remove("fireclaw", &t).unwrap();

        tap::delete(&t).unwrap();
        tap::delete(&t).unwrap();
        assert!(tap::list_fireclaw_taps().unwrap().is_empty());
    })
    .join()
    .unwrap();
}

#[test]
#[ignore = "host tier: needs root (namespaces); run with --include-ignored"]
fn link_facade_and_async_calls_work_inside_a_runtime_in_the_callers_namespace() {
    use fireclaw::net::link;
    use fireclaw::net::netlink::Netlink;
    if !prerequisites("host", false) {
        return;
    }
    let ns = Netns::new("link");
    let ns_file = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let name = ns.name.clone();
    std::thread::spawn(move || {
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // The synchronous façade, called from a worker (what provision's steps do when the
            // runtime reconciles): no runtime inside a runtime, and the namespace is the worker's.
            tokio::spawn(async {
                link::create_bridge("fctest0").unwrap();
                link::add_address("fctest0", "10.99.0.1/24").unwrap();
                link::add_address("fctest0", "10.99.0.1/24").unwrap();
                link::set_up("fctest0", true).unwrap();
            })
            .await
            .unwrap();
            let st = link::state("fctest0").unwrap().expect("the bridge exists");
            assert_eq!(st.kind.as_deref(), Some("bridge"));
            assert_eq!(st.ipv4.len(), 1);
            // The async calls, on a connection of this namespace (a private one: the shared one
            // would keep the test's namespace alive until the process ends).
            let nl = Netlink::open().unwrap();
            let cidr = fireclaw::net::Ipv4Cidr::parse("10.99.0.1/24").unwrap();
            link::delete_address_async(nl.handle(), "fctest0", &cidr)
                .await
                .unwrap();
            link::set_up_async(nl.handle(), "fctest0", false)
                .await
                .unwrap();
            let st = link::state_async(nl.handle(), "fctest0")
                .await
                .unwrap()
                .unwrap();
            assert!(st.ipv4.is_empty() && !st.up, "{st:?}");
            link::delete_async(nl.handle(), "fctest0").await.unwrap();
            link::delete_async(nl.handle(), "fctest0").await.unwrap();
            assert!(link::state("fctest0").unwrap().is_none());
        });
        // Gone from the test's namespace, and never in the host's (below).
        assert!(!sh(&format!("ip -n {name} -o link"))
            .stdout
            .windows(7)
            .any(|w| w == b"fctest0"));
    })
    .join()
    .unwrap();
    assert!(!text(&sh("ip -o link").stdout).contains("fctest0"));
}
