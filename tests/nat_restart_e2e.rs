//! Hitless restart of a full-NAT balancer (root), in the lab with
//! `LAB_MODE=nat`: a second `weir run` on the same interface adopts the
//! running instance's maps (nat_fwd / nat_rev included) and swaps its
//! program in while a rate-limited 50 MB download runs through the NAT VIP.
//! The download must arrive intact, its replies translated by the new
//! program, and new connections work afterwards. Contract: docs/nat-tunnel.md.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{counter, Lab};
use common::require_root;

const URL: &str = "http://198.18.0.100/";

/// One NAT VIP over the three backends: no source_address (the interface's
/// 198.18.0.10), no MACs (resolved from the neighbour table).
fn config() -> String {
    let mut c = String::from(
        "[[vip]]\nname = \"web-nat\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n",
    );
    for b in 11..=13 {
        c += &format!("[[vip.backend]]\naddress = \"198.18.0.{b}\"\n");
    }
    c
}

/// TCP segments the backends retransmitted so far (their /proc/net/snmp).
fn backend_retrans(lab: &Lab) -> u64 {
    let awk = r#"awk '/^Tcp:/{if(!h){for(i=1;i<=NF;i++)n[i]=$i;h=1}else{for(i=1;i<=NF;i++)if(n[i]=="RetransSegs")print $i}}' /proc/net/snmp"#;
    ["b1", "b2", "b3"]
        .iter()
        .map(|b| String::from_utf8_lossy(&lab.sh(b, awk).stdout).trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// Wait until a backend's log names big.bin (the download reached it).
fn wait_for_big_request(lab: &Lab) -> String {
    let t = Instant::now();
    loop {
        if let Some(r) = lab.requests().into_iter().find(|r| r.line.contains("big.bin")) {
            return format!("{} from {}", r.backend, r.peer);
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the download reached no backend\n{}", lab.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_new_weir_run_takes_over_a_nat_download() {
    if !require_root("NAT hitless restart end-to-end test") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wnr{}", std::process::id()), "nat");
    let want_sha = lab.big_sha256();
    assert_eq!(want_sha.len(), 64, "lab recorded a sha256: {want_sha:?}");
    lab.start_weir(&config());
    let old_prog = lab.prog_id().expect("weir attached to veth6");

    // Warm up: one request through the NAT VIP (also proves the path).
    let a = lab.curls(1, "-4", URL, "warm");
    assert!(a.len() == 1 && a[0].starts_with('b'), "a request through the NAT VIP before the restart: {a:?}\n{}", lab.diagnostics());

    // 50 MiB at 10 MiB/s: ~5 s, the take-over happens in the middle of it.
    // Bounded: curl gives up after 40 s; the file goes to the lab's state
    // directory, is hashed there and deleted.
    let f = format!("{}/nat-restart-{}.bin", lab.state(), std::process::id());
    let dl = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c"])
        .arg(format!(
            "curl -sS --max-time 40 --limit-rate 10M -o '{f}' -w '%{{http_code}} %{{size_download}} %{{time_total}}\\n' '{URL}big.bin'; \
             sha256sum '{f}' 2>/dev/null | cut -d' ' -f1; rm -f '{f}'"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the download");
    let dl_started = Instant::now();
    let served = wait_for_big_request(&lab);
    eprintln!("NAT restart: big.bin served by {served}");
    assert!(served.ends_with("from ::ffff:198.18.0.10"), "the backend sees the balancer's address under NAT: {served}");
    std::thread::sleep(Duration::from_millis(1000));
    let before = lab.stats().expect("weir stats before the take-over");
    let reply_before = counter(&before, "nat_reply");
    assert!(reply_before > 0, "the download's replies are being translated: {}", before["counters"]);
    assert!(before["flows_tracked"].as_u64().unwrap_or(0) >= 1, "the download is a tracked flow: {before}");

    let retrans_before = backend_retrans(&lab);

    // The upgrade: a second `weir run` on the same interface and config.
    let takeover_at = dl_started.elapsed();
    let (old_status, after) = lab.take_over();
    let handed_over_at = dl_started.elapsed();
    assert!(old_status.success(), "old instance exits cleanly: {old_status}");
    let new_prog = lab.prog_id().expect("still attached after the hand-over");
    assert_ne!(new_prog, old_prog, "the new program replaced the old in place");
    let reply_at_handover = counter(&after, "nat_reply");
    assert!(reply_at_handover >= reply_before, "counters carried over: {} then {}", reply_before, reply_at_handover);
    assert!(after["flows_tracked"].as_u64().unwrap_or(0) >= 1, "NAT flow table carried over: {after}");
    eprintln!(
        "NAT restart: take-over started {:.2} s into the download, old instance gone at {:.2} s; nat_reply {reply_before} -> {reply_at_handover}",
        takeover_at.as_secs_f64(),
        handed_over_at.as_secs_f64()
    );

    // Still running when the old instance was gone? Then the rest of it
    // went through the new program only.
    let mut dl = dl;
    let still_running = dl.try_wait().unwrap().is_none();
    let out = dl.wait_with_output().expect("the download");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let w: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let (code, bytes, secs) = (
        w.first().copied().unwrap_or(""),
        w.get(1).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0),
        w.get(2).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN),
    );
    let sha = lines.next().unwrap_or("").trim().to_string();
    eprintln!("NAT restart: download http {code}, {bytes} bytes in {secs:.2} s; still running after the hand-over: {still_running}");
    if code != "200" || bytes != 50 << 20 || sha != want_sha {
        panic!(
            "the download across the restart failed or is not intact: http {code} {bytes} bytes sha256 {sha} (want {want_sha}); curl stderr: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.diagnostics()
        );
    }
    assert!(still_running, "the download ended before the old instance was gone ({:.2} s): the test proved nothing", handed_over_at.as_secs_f64());

    // Reported, not asserted: a rate-limited download may also stall on the
    // client's own pacing.
    eprintln!("NAT restart: backend TCP retransmissions during the take-over and the rest of the download: {}", backend_retrans(&lab) - retrans_before);

    let end = lab.stats().expect("weir stats after the download");
    let reply_end = counter(&end, "nat_reply");
    eprintln!("NAT restart: counters after the download: {}", end["counters"]);
    assert!(
        reply_end > reply_at_handover,
        "the new program translated the download's replies: nat_reply {reply_at_handover} -> {reply_end}"
    );
    assert_eq!(counter(&end, "xdp_aborted"), 0);

    // New connections through the new instance.
    let answers = lab.curls(20, "-4", URL, "after-restart");
    let ok = answers.len() == 20 && answers.iter().all(|a| ["b1", "b2", "b3"].contains(&a.as_str()));
    assert!(ok, "20 new connections after the take-over: {answers:?}\n{}", lab.diagnostics());
    let reqs: Vec<_> = lab.requests().into_iter().filter(|r| r.line.contains("?after-restart-")).collect();
    assert_eq!(reqs.len(), 20, "each logged once: {reqs:?}");
    assert!(reqs.iter().all(|r| r.peer == "::ffff:198.18.0.10"), "all from the SNAT address: {reqs:?}");
    let fin = lab.stats().expect("weir stats at the end");
    assert!(counter(&fin, "nat_reply") > reply_end, "the new connections' replies translated too");
}
