//! weir as a tier, end to end (root, bird2): lab/tier.sh builds a client, a
//! BIRD router doing ECMP over three weir nodes (each its own /31 and /127),
//! and three backends; each node announces its VIPs through its own BIRD.
//! Measured and checked, in one lab:
//! - every node sends the same 5-tuple to the same backend (real curls, the
//!   client pinned to each node in turn), and `weir lookup` says so too;
//! - the router's route to a VIP loses a node within 200 ms of that node's
//!   weir stopping, being killed (-9), aborting, being detached, or the VIP
//!   losing its last backend, and gets it back when it recovers;
//! - `weir drain` takes a node out without breaking a download;
//! - a backend drained on every node, then a node killed: no download broken
//!   with the flow sync (and, without it, the breakage the sync prevents);
//! - NAT through each node leaves from that node's own address.
//!
//! cargo test --release --test tier_e2e -- --nocapture

mod common;
#[path = "tier/lab.rs"]
mod tier;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::require_root;
use tier::{now, Tier};

const NODES: usize = 3;
const DSR4: &str = "198.18.1.1";
const TUN4: &str = "198.18.1.2";
const NAT4: &str = "198.18.1.3";
const DSR6: &str = "2001:db8:1::1";
/// lab/tier.toml announces; the flow sync is switched on by a reload later.
const TIER: &str = "[tier]\nannounce = true\n";
const PEERS: &str = "peers = [\"10.61.1.1\", \"10.61.2.1\", \"10.61.3.1\"]\n";
/// A VIP whose only check is a port the test opens and closes on the backends.
const PROBE: &str = r#"
[[vip]]
name = "probe"
address = "198.18.1.9"
port = 80
protocol = "tcp"
mode = "dsr"
health = { kind = "tcp", port = 8099, interval_ms = 100, timeout_ms = 100, rise = 1, fall = 2 }
[[vip.backend]]
address = "10.63.0.21"
iface = "d0"
[[vip.backend]]
address = "10.63.0.22"
iface = "d0"
"#;

fn base_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/tier.toml")).unwrap()
}

fn have_bird() -> bool {
    let ok = Command::new("bird").arg("--version").output().is_ok();
    if !ok {
        assert!(std::env::var("CI").is_err(), "the tier lab needs bird2 (scripts/deps.sh installs it) and CI is set");
        eprintln!("SKIPPED: bird2 is not installed (scripts/deps.sh installs it)");
    }
    ok
}

/// Reload every node with `cfg`.
fn reload_all(t: &Tier, cfg: &str) {
    std::fs::write(&t.config, cfg).unwrap();
    for k in 1..=NODES {
        let o = t.weir(k, &["reload", "--iface", "u0"]);
        assert!(o.status.success(), "reload node {k}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// One withdrawal: `act` at time T; the router's route to `vip` changes at
/// T + x (its first route event naming the VIP). Returns x in ms.
fn withdraw_ms(t: &Tier, what: &str, vip: &str, from: usize, to: usize, act: impl FnOnce()) -> f64 {
    assert!(t.wait_nexthops(vip, from, Duration::from_secs(20)), "{what}: {vip} should have {from} next hops before");
    let w = t.watch_routes();
    let t0 = now();
    act();
    let x = w.first_after(vip, t0, Duration::from_secs(10)).unwrap_or_else(|| panic!("{what}: the route to {vip} never changed"));
    assert!(t.wait_nexthops(vip, to, Duration::from_secs(5)), "{what}: {vip} should have {to} next hops after, has {}", t.nexthops(vip));
    println!("tier: {what}: the router's route to {vip} changed {:.1} ms later ({from} -> {to} next hops)", x * 1000.0);
    x * 1000.0
}

/// Node k back (weir restarted): ms until the router has every node again.
fn back_ms(t: &Tier, k: usize, vip: &str) -> f64 {
    let w = t.watch_routes();
    let t0 = now();
    t.restart_weir(k);
    assert!(t.wait_nexthops(vip, NODES, Duration::from_secs(20)), "node {k} not re-announced");
    let x = w.first_after(vip, t0, Duration::from_secs(1)).unwrap_or(0.0);
    println!("tier: node {k} restarted: re-announced {:.0} ms after the start command", x * 1000.0);
    x * 1000.0
}

/// Detach node k's program the way `bpftool link detach` does: find the
/// bpf_link of the program attached to its u0 and detach it (weir keeps
/// running, unattached).
fn detach(t: &Tier, k: usize) {
    let o = Command::new("ip").args(["-n", &t.node(k), "-d", "link", "show", "dev", "u0"]).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let prog: u32 = s.split("prog/xdp id ").nth(1).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse().ok()).expect("an XDP program on u0");
    let mut id: u32 = 0;
    loop {
        // SAFETY: libbpf writes the next id.
        if unsafe { libbpf_sys::bpf_link_get_next_id(id, &mut id) } != 0 {
            panic!("no bpf_link for program {prog}");
        }
        // SAFETY: an fd for a link id, closed below.
        let fd = unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) };
        if fd < 0 {
            continue;
        }
        let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
        // SAFETY: info is as large as len says.
        let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd, &mut info, &mut len) };
        if rc == 0 && info.prog_id == prog {
            // SAFETY: a valid link fd.
            assert_eq!(unsafe { libbpf_sys::bpf_link_detach(fd) }, 0, "bpf_link_detach");
            unsafe { libc::close(fd) };
            return;
        }
        unsafe { libc::close(fd) };
    }
}

/// Put a `size`-byte file in every backend's web root.
fn big_file(t: &Tier, size: usize) -> String {
    for j in 1..=3 {
        let dir = format!("/run/weir-lab/{}/www-b{j}", t.prefix);
        std::fs::write(format!("{dir}/big.bin"), vec![b'w'; size]).unwrap();
    }
    "big.bin".into()
}

#[test]
fn a_tier_of_three_nodes_behind_ecmp() {
    if !require_root("the tier lab") || !have_bird() {
        return;
    }
    let prefix = format!("wt{}", std::process::id() % 100000);
    let cfg = base_config();
    assert!(cfg.contains(TIER), "lab/tier.toml announces");
    let t = Tier::up(&prefix, NODES, &cfg);
    for vip in [DSR4, TUN4, NAT4, DSR6] {
        assert!(t.wait_nexthops(vip, NODES, Duration::from_secs(20)), "{vip}: every node announced");
    }


    // ---- 1. the same backend on every node, for the same 5-tuple
    let mut answers: BTreeMap<(String, u16), Vec<String>> = BTreeMap::new();
    let mut reqs: Vec<(&str, u16)> = Vec::new();
    for (vip, n) in [(DSR4, 60u16), (TUN4, 20), (DSR6, 20)] {
        reqs.extend((0..n).map(|i| (vip, 20000 + i)));
    }
    for k in 1..=NODES {
        t.pin(k);
        for ((vip, port), who) in reqs.iter().zip(t.fetch_many(&reqs)) {
            answers.entry((vip.to_string(), *port)).or_default().push(who.unwrap_or_else(|| "(no answer)".into()));
        }
    }
    t.unpin();
    let agree = answers.values().filter(|w| w.iter().all(|x| x == &w[0]) && !w[0].starts_with('(')).count();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for w in answers.values() {
        *per_backend.entry(w[0].as_str()).or_default() += 1;
    }
    println!("tier: {agree}/{} fixed 5-tuples answered by the same backend through each of {NODES} nodes ({per_backend:?})", answers.len());
    assert_eq!(agree, answers.len(), "every node picks the same backend: {answers:?}");
    // weir lookup agrees on every node.
    let look = |k: usize| {
        let o = t.weir(k, &["lookup", "--iface", "u0", "tcp", "10.60.0.2:31000", &format!("{DSR4}:80")]);
        String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().split(':').next().unwrap_or_default().to_string()
    };
    let l1 = look(1);
    assert!(l1.starts_with("backend "), "lookup: {l1}");
    assert!((2..=NODES).all(|k| look(k) == l1), "lookup differs between nodes");
    println!("tier: weir lookup on every node: {l1}");

    // ---- 2. withdrawal: stop, kill -9, abort, detach; each node back after
    let mut worst: f64 = 0.0;
    worst = worst.max(withdraw_ms(&t, "weir stop on node 1", DSR4, 3, 2, || {
        assert!(t.weir(1, &["stop", "--iface", "u0"]).status.success());
    }));
    back_ms(&t, 1, DSR4);
    worst = worst.max(withdraw_ms(&t, "kill -9 of weir on node 2", DSR4, 3, 2, || t.kill_weir(2, libc::SIGKILL)));
    back_ms(&t, 2, DSR4);
    worst = worst.max(withdraw_ms(&t, "weir aborting (a crash) on node 3", DSR4, 3, 2, || t.kill_weir(3, libc::SIGABRT)));
    back_ms(&t, 3, DSR4);
    worst = worst.max(withdraw_ms(&t, "weir's program detached on node 1", DSR4, 3, 2, || detach(&t, 1)));
    t.kill_weir(1, libc::SIGTERM);
    back_ms(&t, 1, DSR4);
    // A hitless restart (a new `weir run` takes over the running one's maps,
    // link and announce device): the router sees no change at all.
    let w = t.watch_routes();
    let t0 = now();
    let old = t.weir_pid(1);
    t.restart_weir(1);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(old, t.weir_pid(1), "a new process serves node 1");
    assert!(w.first_after(DSR4, t0, Duration::from_millis(10)).is_none(), "a hand-over changed the router's routes");
    assert_eq!(t.nexthops(DSR4), NODES);
    println!("tier: hitless restart of node 1: no route change at the router in 2 s");
    drop(w);
    // The VIP loses its last backend: every node withdraws it.
    reload_all(&t, &format!("{cfg}{PROBE}"));
    let listen = "nohup timeout 120 python3 -c 'import socket,time\ns=socket.socket(socket.AF_INET6)\ns.bind((\"::\",8099))\ns.listen(64)\ntime.sleep(600)' >/dev/null 2>&1 & echo $!";
    let pids: Vec<String> = (1..=2).map(|j| String::from_utf8_lossy(&t.sh(&t.ns(&format!("b{j}")), listen).stdout).trim().to_string()).collect();
    assert!(t.wait_nexthops("198.18.1.9", NODES, Duration::from_secs(20)), "the probe VIP is announced once its backends pass");
    let detect_ms = 100.0 * 2.0 + 100.0; // interval x fall, plus one probe's timeout
    let lost = withdraw_ms(&t, "the probe VIP's last backend failed (checks every 100 ms, fall 2)", "198.18.1.9", 3, 0, || {
        for (j, pid) in pids.iter().enumerate() {
            t.sh(&t.ns(&format!("b{}", j + 1)), &format!("kill {pid}"));
        }
    });
    println!("tier: (the checks alone need up to {detect_ms:.0} ms to tell: interval 100 x fall 2, plus a probe's timeout)");
    assert!(lost < detect_ms + 200.0, "withdrawn {lost:.0} ms after the backend died");
    let pids: Vec<String> = (1..=2).map(|j| String::from_utf8_lossy(&t.sh(&t.ns(&format!("b{j}")), listen).stdout).trim().to_string()).collect();
    assert!(t.wait_nexthops("198.18.1.9", NODES, Duration::from_secs(10)), "re-announced when a backend returns");
    for (j, pid) in pids.iter().enumerate() {
        t.sh(&t.ns(&format!("b{}", j + 1)), &format!("kill {pid}"));
    }
    println!("tier: worst withdrawal on a weir event: {worst:.1} ms (limit 200)");
    assert!(worst < 200.0, "a withdrawal took {worst:.1} ms");

    // ---- 3. flow sync on; drain a node under 20 downloads
    let synced = cfg.replace(TIER, &format!("{TIER}{PEERS}"));
    reload_all(&t, &synced);
    let size = 600_000usize;
    let file = big_file(&t, size);
    let reqs: Vec<(&str, u16)> = (0..20u16).map(|i| (if i % 2 == 0 { DSR4 } else { TUN4 }, 33000 + i)).collect();
    let d = t.slow_downloads(&reqs, &file, 100_000);
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let o = t.weir(1, &["drain", "--iface", "u0", "--quiet", "1", "--wait"]);
    assert!(o.status.success(), "drain: {}", String::from_utf8_lossy(&o.stderr));
    let (ok, bad) = d.finish(size);
    println!("tier: weir drain on node 1 (stopped after {:.1} s): {ok}/20 downloads whole, {bad} broken", t0.elapsed().as_secs_f64());
    assert_eq!(bad, 0, "a drain broke downloads");
    back_ms(&t, 1, DSR4);

    // ---- 4. a backend drained on every node, then a node lost
    let run = |label: &str, config: &str, base_port: u16| -> usize {
        reload_all(&t, config);
        for vip in [DSR4, TUN4] {
            assert!(t.wait_nexthops(vip, NODES, Duration::from_secs(20)));
        }
        let reqs: Vec<(&str, u16)> = (0..30u16).map(|i| (if i % 2 == 0 { DSR4 } else { TUN4 }, base_port + i)).collect();
        let d = t.slow_downloads(&reqs, &file, 80_000);
        std::thread::sleep(Duration::from_secs(2));
        // b1 (10.63.0.21 / 10.62.0.21) drained everywhere: weight 0.
        let drained = config.replace("address = \"10.63.0.21\"\n", "address = \"10.63.0.21\"\nweight = 0\n").replace(
            "address = \"10.62.0.21\"\n",
            "address = \"10.62.0.21\"\nweight = 0\n",
        );
        reload_all(&t, &drained);
        std::thread::sleep(Duration::from_millis(500));
        let new_flows = |k: usize| t.stats(k).map(|s| s["counters"]["flow_new"].as_u64().unwrap_or(0)).unwrap_or(0);
        let before = [new_flows(1), new_flows(3)];
        t.kill_weir(2, libc::SIGKILL);
        std::thread::sleep(Duration::from_secs(2));
        let moved = new_flows(1) + new_flows(3) - before[0] - before[1];
        let (ok, bad) = d.finish(size);
        println!(
            "tier: {label}: b1 drained on every node, then node 2 killed: {ok}/30 downloads whole, {bad} broken \
             (nodes 1 and 3 scheduled {moved} flows they had not seen)"
        );
        t.restart_weir(2);
        bad
    };
    let with_sync = run("flow sync on", &synced, 35000);
    let stats = t.stats(1).unwrap();
    println!("tier: node 1 flow sync: {}", stats["tier"]["sync"]);
    let without = run("flow sync off (control)", &cfg, 37000);
    assert_eq!(with_sync, 0, "with the flow sync, no connection may break");
    println!("tier: without the sync {without} broke (the state the sync carries)");

    // ---- 5. NAT: through each node, from that node's address
    reload_all(&t, &synced);
    for k in 1..=NODES {
        t.pin(k);
        for i in 0..5 {
            let got = t.curl(&format!("--local-port {}", 39000 + 10 * k as u16 + i), &format!("http://{NAT4}/"));
            assert!(got.is_some(), "NAT through node {k}");
        }
    }
    t.unpin();
    let logs: String = (1..=3).map(|j| std::fs::read_to_string(format!("/run/weir-lab/{}/b{j}.log", t.prefix)).unwrap_or_default()).collect();
    for k in 1..=NODES {
        let src = format!("10.61.{k}.1 ");
        assert!(logs.lines().any(|l| l.starts_with(&src) || l.starts_with(&format!("::ffff:{src}"))), "a backend saw node {k}'s NAT source {src}");
    }
    println!("tier: NAT through each node: the backends saw 10.61.1.1, 10.61.2.1, 10.61.3.1");
}
