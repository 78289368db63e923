//! End to end in network namespaces (root): the lab (client, balancer,
//! three HTTP backends on a bridge), weir attached natively to the
//! balancer's veth, 300 curl requests through the VIP.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Lab, WEIR};
use common::require_root;

const CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
weight = 1
[[vip.backend]]
address = "198.18.0.12"
weight = 2
[[vip.backend]]
address = "198.18.0.13"
weight = 3
"#;

#[test]
fn three_hundred_requests_through_the_vip_follow_the_weights() {
    if !require_root("netns end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wt{}", std::process::id()));
    lab.extra_args = vec!["--metrics".into()];
    lab.start_weir(CONFIG);

    let n = 300;
    let out = lab.sh(
        "client",
        &format!("for i in $(seq {n}); do curl -s --max-time 3 http://198.18.0.100/ || echo FAILED; done"),
    );
    let body = String::from_utf8_lossy(&out.stdout);
    let count = |s: &str| body.lines().filter(|l| l.trim() == s).count();
    let (b1, b2, b3, failed) = (count("b1"), count("b2"), count("b3"), count("FAILED"));
    eprintln!("300 requests: b1={b1} b2={b2} b3={b3} failed={failed}");
    assert_eq!(failed, 0, "every request succeeds");
    assert_eq!(b1 + b2 + b3, n, "every answer names a backend");
    // Each request is a new connection (a new source port) hashed by Maglev:
    // the count per backend is binomial(n, w/6). Allow 4 standard deviations,
    // which a correct balancer exceeds with probability < 1e-4 per backend.
    for (got, w) in [(b1, 1.0), (b2, 2.0), (b3, 3.0)] {
        let p = w / 6.0;
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (got as f64 - mean).abs() <= 4.0 * sd,
            "weight {w}: {got} requests, expected {mean:.0} +- {:.0}",
            4.0 * sd
        );
    }

    // weir's own counters agree with what the client saw.
    let s = lab.stats().expect("weir stats --json");
    let vip = &s["vips"][0];
    let new_flows = vip["new_flows"].as_u64().unwrap();
    // Ephemeral ports may repeat within 300 connections; a repeat is a
    // tracked flow, not a new one.
    assert!((n as u64 - 10..=n as u64).contains(&new_flows), "VIP new flows {new_flows}");
    let backends = vip["backends"].as_array().unwrap();
    let per: Vec<u64> = backends.iter().map(|b| b["new_flows"].as_u64().unwrap()).collect();
    assert_eq!(per.iter().sum::<u64>(), new_flows);
    assert!(per.iter().all(|x| *x > 0), "every backend got flows: {per:?}");
    assert!(s["counters"]["arp_reply"].as_u64().unwrap() >= 1, "the VIP's ARP was answered by XDP");
    assert_eq!(s["counters"]["xdp_aborted"].as_u64().unwrap(), 0);
    assert_eq!(s["xdp_mode"], "native");

    // Prometheus, scraped like a Prometheus server would (loopback of the
    // balancer's namespace, the default address), agrees with the JSON.
    let m = lab.sh("lb", "curl -s --max-time 2 http://127.0.0.1:9477/metrics");
    let m = String::from_utf8_lossy(&m.stdout).to_string();
    let want = format!(
        "weir_vip_new_flows_total{{vip=\"web\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"}} {new_flows}"
    );
    assert!(m.lines().any(|l| l == want), "metrics lack `{want}`:\n{m}");
    assert!(m.contains("# TYPE weir_backend_packets_total counter"), "{m}");

    // weir trace: sampled decisions of the running instance, like tcpdump.
    let tracer = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("lb"), WEIR, "trace", "--iface", "veth6", "--count", "6", "--seconds", "15", "--port", "80", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.sh("client", "for i in 1 2 3; do curl -s --max-time 2 http://198.18.0.100/ >/dev/null; done");
    let out = tracer.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(events.len(), 6, "six traced packets: {events:?}");
    for e in &events {
        assert_eq!(e["src"], "198.18.0.1");
        assert_eq!(e["dst"], "198.18.0.100");
        assert_eq!(e["action"], "TX");
        assert!(["198.18.0.11", "198.18.0.12", "198.18.0.13"].contains(&e["backend"].as_str().unwrap()), "{e}");
    }
    assert!(events.iter().any(|e| e["flags"] == "S"), "a SYN among them: {events:?}");

    // SIGTERM detaches: nothing stays on the interface.
    let st = lab.stop_weir().expect("weir was running");
    assert!(st.success(), "weir exits 0 on SIGTERM: {st}");
    let link = lab.sh("lb", "ip link show veth6");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "program detached after SIGTERM: {link}");
}

#[test]
fn bad_config_or_interface_leaves_nothing_attached() {
    if !require_root("netns end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wu{}", std::process::id()));
    let run = |args: &[&str]| {
        Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR]).args(args).output().unwrap()
    };
    let bad = std::env::temp_dir().join(format!("{}-bad.toml", lab.prefix));
    std::fs::write(&bad, CONFIG.replace("198.18.0.12\"", "198.18.0.12\"\nmac = \"zz:00\"")).unwrap();
    let o = run(&["run", "--iface", "veth6", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("vip[0].backend[1].mac: 'zz:00' is not a MAC address"), "{err}");

    let good = std::env::temp_dir().join(format!("{}-good.toml", lab.prefix));
    std::fs::write(&good, CONFIG).unwrap();
    let o = run(&["run", "--iface", "nosuch0", "--config", good.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("interface 'nosuch0' not found in this network namespace"), "{err}");

    // (A backend that does not answer ARP no longer fails the start: it
    // starts down (unresolved); see tests/daemon_e2e.rs.)

    let link = lab.sh("lb", "ip link show veth6");
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "nothing attached after failures");
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&good);

    // kill -9 gives weir no chance to clean up: the bpf_link must still go.
    lab.start_weir(CONFIG);
    let link = lab.sh("lb", "ip link show veth6");
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdp"), "attached while running");
    let mut child = lab.weir.take().unwrap();
    child.kill().unwrap(); // SIGKILL to our own child, by PID
    child.wait().unwrap();
    let start = Instant::now();
    loop {
        let link = lab.sh("lb", "ip link show veth6");
        if !String::from_utf8_lossy(&link.stdout).contains("xdp") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "program still attached 5 s after kill -9");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dual_stack_dsr_with_curl_over_ipv6() {
    if !require_root("netns end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("w6{}", std::process::id()));
    lab.start_weir(&format!(
        "{CONFIG}\n[[vip]]\nname = \"web6\"\naddress = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"2001:2::11\"\n[[vip.backend]]\naddress = \"2001:2::12\"\n[[vip.backend]]\naddress = \"2001:2::13\"\n"
    ));
    let out = lab.sh(
        "client",
        "for i in $(seq 40); do curl -6 -s --max-time 3 'http://[2001:2::100]/' || echo FAILED; done; \
         for i in $(seq 10); do curl -4 -s --max-time 3 http://198.18.0.100/ || echo FAILED; done",
    );
    let body = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 50);
    assert!(!lines.contains(&"FAILED"), "every request over both families succeeds: {lines:?}");
    let v6: std::collections::BTreeSet<&str> = lines[..40].iter().copied().collect();
    assert!(v6.len() >= 2, "IPv6 flows spread over backends: {v6:?}");
    let s = lab.stats().unwrap();
    assert!(s["counters"]["ndp_reply"].as_u64().unwrap() >= 1, "the VIP's neighbour solicitation was answered by XDP");
    assert_eq!(s["vips"][1]["new_flows"].as_u64().unwrap(), 40, "{s}");
}
