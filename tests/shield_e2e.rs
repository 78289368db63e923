//! The shield under real floods in the lab (root): an attacker namespace
//! floods the VIP with hping3 (one source, random sources, ACKs) for 20 s
//! each while one client requests every 200 ms, a second client does the
//! same from behind a Linux NAT with `ct state invalid drop`, and a long
//! download runs. Replies to spoofed sources stay in the lab (sink routes).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::lab::Lab;
use common::require_root;

const CONFIG: &str = r#"
[shield]
rate = 50
burst = 100
attack = "auto"
attack_on = 2000
attack_off = 500

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
"#;

const FLOOD_SECS: u32 = 20;

fn spawn(lab: &Lab, host: &str, script: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(host), "bash", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn output(c: Child) -> String {
    let o = c.wait_with_output().expect("wait");
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Requests every 200 ms for the flood's duration: "ok fail".
fn requester(lab: &Lab, host: &str) -> Child {
    spawn(
        lab,
        host,
        &format!(
            "ok=0; fail=0; end=$((SECONDS+{})); while [ $SECONDS -lt $end ]; do \
             if [ \"$(curl -s -o /dev/null --max-time 5 -w '%{{http_code}}' http://198.18.0.100/)\" = 200 ]; \
             then ok=$((ok+1)); else fail=$((fail+1)); fi; sleep 0.2; done; echo \"$ok $fail\"",
            FLOOD_SECS + 2
        ),
    )
}

/// SYNs that reached the backends from anyone but the two clients.
fn backend_flood_syns(lab: &Lab) -> u64 {
    (1..=3)
        .map(|i| {
            let o = lab.sh(&format!("b{i}"), "nft list table inet weirtest");
            let t = String::from_utf8_lossy(&o.stdout).to_string();
            t.split("counter packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("b{i}: no nft counter in: {t}"))
        })
        .sum()
}

fn hping_sent(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hping3 statistics in: {out}"))
}

#[test]
fn floods_do_not_reach_backends_and_clients_keep_working() {
    if !require_root("shield flood test") {
        return;
    }
    let mut lab = Lab::up_with(&format!("ws{}", std::process::id()), &[("SHIELD_LAB", "1")]);
    // An independent SYN counter on every backend (nftables, not weir's).
    for i in 1..=3 {
        let o = lab.sh(
            &format!("b{i}"),
            "nft -f - <<'EOF'\ntable inet weirtest {\n chain input {\n  type filter hook input priority 0;\n  \
             tcp dport 80 tcp flags & (syn | ack) == syn ip saddr != { 198.18.0.1, 198.18.0.70 } counter\n }\n}\nEOF",
        );
        assert!(o.status.success(), "nft in b{i}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // A 24 MB file, the same on every backend, for the long download.
    let st = lab.state();
    let o = Command::new("bash")
        .args(["-c", &format!("head -c 24M /dev/urandom > {st}/big && for b in 1 2 3; do cp {st}/big {st}/www-b$b/big.bin; done; sha256sum {st}/big")])
        .output()
        .unwrap();
    let want_sha = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();

    lab.start_weir(CONFIG);
    let mut report = Vec::new();
    for (what, flags) in [("SYN flood, one source", "-S"), ("SYN flood, random sources", "-S --rand-source"), ("ACK flood, random sources", "-A --rand-source")] {
        let syns_before = backend_flood_syns(&lab);
        let c1 = requester(&lab, "client");
        let c2 = requester(&lab, "client2");
        // 24 MB at 1.2 MB/s: the download spans the whole flood.
        let dl = spawn(&lab, "client", "curl -s --max-time 60 --limit-rate 1200k http://198.18.0.100/big.bin | sha256sum");
        std::thread::sleep(Duration::from_millis(500));
        let flood = spawn(
            &lab,
            "atk",
            &format!("timeout -s INT {FLOOD_SECS} hping3 {flags} --flood -p 80 198.18.0.100 2>&1; true"),
        );
        let sent = hping_sent(&output(flood));
        let (r1, r2, got_sha) = (output(c1), output(c2), output(dl));
        let parse = |r: &str| -> (u64, u64) {
            let v: Vec<u64> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v[0], v[1])
        };
        let ((ok1, fail1), (ok2, fail2)) = (parse(&r1), parse(&r2));
        let reached = backend_flood_syns(&lab) - syns_before;
        let stats = lab.stats().expect("weir stats");
        let line = format!(
            "{what}: {sent} sent; backends saw {reached} flood SYNs ({:.3}%); client {ok1}/{} ok; NAT client {ok2}/{} ok; \
             download {}; challenged={} proven={} bucket_empty={} out_of_state={}",
            100.0 * reached as f64 / sent.max(1) as f64,
            ok1 + fail1,
            ok2 + fail2,
            if got_sha.contains(&want_sha) { "intact" } else { "BROKEN" },
            stats["counters"]["shield_challenged"],
            stats["counters"]["shield_proven"],
            stats["counters"]["shield_bucket_empty"],
            stats["counters"]["shield_out_of_state"],
        );
        eprintln!("{line}");
        report.push(line.clone());
        assert!(got_sha.contains(&want_sha), "{line}\nthe download was not intact: {got_sha}");
        for (ok, fail, who) in [(ok1, fail1, "client"), (ok2, fail2, "NAT client")] {
            assert!(ok + fail >= 50, "{who} made too few requests: {line}");
            assert!(ok * 100 >= (ok + fail) * 99, "{who}: fewer than 99% of requests succeeded: {line}");
        }
        if flags.contains("-S") {
            assert!(reached * 100 <= sent, "backends saw more than 1% of the flood's SYNs: {line}");
        }
        // Let attack mode end before the next phase.
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("--- shield flood report ---\n{}", report.join("\n"));
}
