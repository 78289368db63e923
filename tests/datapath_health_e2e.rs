//! Data-path health checks end to end (root, lab/lab.sh in tunnel mode:
//! every backend has the VIPs on lo and runs `weir decap`, so it serves a
//! DSR VIP and a tunnel VIP alike).
//!
//! Four VIPs over the same three backends: a DSR VIP and a tunnel VIP with
//! `via = "datapath"` checks, each twinned with a VIP whose checks go
//! directly to the backends' addresses. b2 loses the DSR VIP from its
//! loopback, later b3's decapsulator stops: the direct checks keep passing
//! (the backends' servers are fine), the data-path checks take the backend
//! out within interval x fall, and no client request goes to it until it
//! is repaired; then it comes back. A reload without data-path checks
//! removes the prober veth, one with them brings it back; a hand-over
//! leaves one (the new instance's); a new interface address is followed.
//! Finally weir is killed with SIGKILL:
//! its prober veth is gone with it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{counter, Lab, WEIR};
use common::require_root;

const DSR_VIP: &str = "198.18.0.100";
const TUN_VIP: &str = "198.18.0.101";

const CONFIG: &str = r#"
[[vip]]
name = "dsr"
address = "198.18.0.100"
port = 80
protocol = "tcp"
health = { kind = "http", path = "/", interval_ms = 100, timeout_ms = 80, fall = 2, rise = 2, via = "datapath" }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"

[[vip]]
name = "dsr-direct"
address = "198.18.0.100"
port = 81
protocol = "tcp"
health = { kind = "http", port = 80, path = "/", interval_ms = 100, timeout_ms = 80, fall = 2, rise = 2 }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"

[[vip]]
name = "tun"
address = "198.18.0.101"
port = 80
protocol = "tcp"
mode = "tunnel"
health = { kind = "http", path = "/", interval_ms = 100, timeout_ms = 80, fall = 2, rise = 2, via = "datapath" }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"

[[vip]]
name = "tun-direct"
address = "198.18.0.101"
port = 81
protocol = "tcp"
mode = "tunnel"
health = { kind = "http", port = 80, path = "/", interval_ms = 100, timeout_ms = 80, fall = 2, rise = 2 }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
"#;

/// (health, packets) of backend `b` (0-based) of VIP `v`.
fn backend(lab: &Lab, v: usize, b: usize) -> Option<(String, u64)> {
    let s = lab.stats()?;
    let be = &s["vips"][v]["backends"][b];
    Some((be["health"].as_str()?.to_string(), be["packets"].as_u64()?))
}

fn health(lab: &Lab, v: usize, b: usize) -> String {
    backend(lab, v, b).map(|(h, _)| h).unwrap_or_default()
}

/// Poll until backend `b` of VIP `v` reports `want`; the time it took.
fn wait_health(lab: &Lab, v: usize, b: usize, want: &str, max: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < max {
        if health(lab, v, b) == want {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backend {b} of VIP {v} not {want} within {max:?}\n{}", lab.diagnostics());
}

/// `weir reload` with `cfg` written over the lab's config.
fn reload(lab: &mut Lab, cfg: &str) -> std::process::Output {
    std::fs::write(&lab.config, cfg).unwrap();
    Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR, "reload", "--iface", "veth6"]).output().unwrap()
}

/// Prober veths in the balancer's namespace.
fn probe_links(lab: &Lab) -> usize {
    let o = lab.exec("lb", &["ip", "-o", "link", "show"]);
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("wprobe")).count()
}

fn all_up(lab: &Lab) {
    for v in 0..4 {
        for b in 0..3 {
            wait_health(lab, v, b, "up", Duration::from_secs(3));
        }
    }
}

fn decap_attached(lab: &Lab, b: &str) -> bool {
    let o = lab.exec(b, &["ip", "-d", "link", "show", "dev", "b0"]);
    String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
}

#[test]
fn datapath_checks_see_a_lost_vip_and_a_stopped_decapsulator() {
    if !require_root("data-path health-check end-to-end test") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wdp{}", std::process::id() % 100000), "tunnel");
    for b in ["b1", "b2", "b3"] {
        let o = lab.exec(b, &["ip", "addr", "add", &format!("{TUN_VIP}/32"), "dev", "lo"]);
        assert!(o.status.success(), "adding the tunnel VIP to {b}'s lo: {}", String::from_utf8_lossy(&o.stderr));
    }
    lab.start_weir(CONFIG);
    all_up(&lab);
    assert_eq!(probe_links(&lab), 1, "one prober veth");

    // ~24 s of requests, alternating the two VIPs, each line
    // "<ms since start when sent> <vip> <body or FAILED>".
    let client = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c"])
        .arg(format!(
            "start=$(date +%s%3N); end=$((start+24000)); \
             while [ $(date +%s%3N) -lt $end ]; do for v in {DSR_VIP} {TUN_VIP}; do \
               s=$(( $(date +%s%3N) - start )); r=$(curl -s --max-time 1 http://$v/ || echo FAILED); \
               echo \"$s $v $r\"; done; sleep 0.05; done"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ms = || t0.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_secs(3));

    // 1. DSR: b2 loses the VIP from its loopback.
    let o = lab.exec("b2", &["ip", "addr", "del", &format!("{DSR_VIP}/32"), "dev", "lo"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dsr_broken = ms();
    let dsr_down = wait_health(&lab, 0, 1, "down", Duration::from_secs(5));
    eprintln!("DSR: b2 left rotation {} ms after the VIP left its loopback (interval 100 ms x fall 2)", dsr_down.as_millis());
    assert!(dsr_down <= Duration::from_millis(1500), "interval x fall is 200 ms; took {dsr_down:?}");
    let dsr_out = ms();
    std::thread::sleep(Duration::from_millis(300));
    let (_, pk_before) = backend(&lab, 0, 1).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(health(&lab, 1, 1), "up", "the direct check of b2 passes all along (its server is fine)");
    let (h, pk_after) = backend(&lab, 0, 1).unwrap();
    assert_eq!(h, "down");
    assert_eq!(pk_after, pk_before, "client packets went to b2 while it was out of rotation");
    let o = lab.exec("b2", &["ip", "addr", "add", &format!("{DSR_VIP}/32"), "dev", "lo"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dsr_fixed = ms();
    let dsr_up = wait_health(&lab, 0, 1, "up", Duration::from_secs(5));
    eprintln!("DSR: b2 back in rotation {} ms after the VIP returned (rise 2)", dsr_up.as_millis());
    std::thread::sleep(Duration::from_secs(2));

    // 2. Tunnel: b3's decapsulator stops (it detaches on SIGTERM).
    let pid_file = format!("{}/b3-decap.pid", lab.state());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: signalling the lab's own decapsulator by its recorded PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let tun_broken = ms();
    let t = Instant::now();
    while decap_attached(&lab, "b3") {
        assert!(t.elapsed() < Duration::from_secs(5), "b3's decapsulator did not detach");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tun_down = wait_health(&lab, 2, 2, "down", Duration::from_secs(5));
    let tun_down_total = t.elapsed();
    eprintln!(
        "tunnel: b3 left rotation {} ms after its decapsulator detached ({} ms after SIGTERM)",
        tun_down.as_millis(),
        tun_down_total.as_millis()
    );
    assert!(tun_down <= Duration::from_millis(1500), "interval x fall is 200 ms; took {tun_down:?}");
    let tun_out = ms();
    std::thread::sleep(Duration::from_millis(300));
    let (_, pk_before) = backend(&lab, 2, 2).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(health(&lab, 3, 2), "up", "the direct check of b3 passes all along");
    assert_eq!(health(&lab, 0, 2), "up", "b3 still serves the DSR VIP (no decapsulation needed there)");
    let (h, pk_after) = backend(&lab, 2, 2).unwrap();
    assert_eq!(h, "down");
    assert_eq!(pk_after, pk_before, "client packets went to b3 while it was out of rotation");
    let log = std::path::PathBuf::from(format!("{}/b3-decap-again.log", lab.state()));
    let mut decap = lab.spawn_in("b3", &[WEIR, "decap", "--iface", "b0"], &log);
    let t = Instant::now();
    while !decap_attached(&lab, "b3") {
        assert!(t.elapsed() < Duration::from_secs(10), "b3's decapsulator did not attach again");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tun_fixed = ms();
    let tun_up = wait_health(&lab, 2, 2, "up", Duration::from_secs(5));
    eprintln!("tunnel: b3 back in rotation {} ms after its decapsulator attached again (rise 2)", tun_up.as_millis());

    let out = client.wait_with_output().unwrap();
    let lines: Vec<(u64, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_string(), w.next().unwrap_or("").to_string()))
        })
        .collect();
    let n = lines.len();
    let failed: Vec<_> = lines.iter().filter(|(_, _, b)| b == "FAILED").collect();
    eprintln!("{n} requests, {} failed: {failed:?}", failed.len());
    assert!(n >= 100, "too few requests: {n}");
    // Requests sent while the backend was out of rotation (from its
    // removal to its repair) neither reached it nor failed.
    for (t, vip, body) in &lines {
        if vip == DSR_VIP && *t > dsr_out && *t < dsr_fixed {
            assert_ne!(body, "b2", "b2 answered the DSR VIP at {t} ms while out of rotation");
            assert_ne!(body, "FAILED", "a DSR request failed at {t} ms after b2 left rotation");
        }
        if vip == TUN_VIP && *t > tun_out && *t < tun_fixed {
            assert_ne!(body, "b3", "b3 answered the tunnel VIP at {t} ms while out of rotation");
            assert_ne!(body, "FAILED", "a tunnel request failed at {t} ms after b3 left rotation");
        }
    }
    // Before the checks noticed, requests to the broken backend failed: the
    // breakage was real for clients (the direct checks did not see it).
    eprintln!(
        "failed requests between breakage and removal: DSR {}, tunnel {}",
        lines.iter().filter(|(t, v, b)| v == DSR_VIP && b == "FAILED" && *t >= dsr_broken && *t <= dsr_out).count(),
        lines.iter().filter(|(t, v, b)| v == TUN_VIP && b == "FAILED" && *t >= tun_broken && *t <= tun_out).count()
    );
    assert!(lines.iter().any(|(t, v, b)| v == DSR_VIP && b == "b2" && *t > dsr_fixed), "b2 serves the DSR VIP again");

    let s = lab.stats().expect("stats");
    let (sent, replies, dropped) = (counter(&s, "probe_sent"), counter(&s, "probe_reply"), counter(&s, "drop_probe"));
    eprintln!("probe_sent {sent}, probe_reply {replies}, drop_probe {dropped}");
    assert!(sent > 0 && replies > 0);
    assert_eq!(dropped, 0, "frames from the prober namespace that were no probe");

    // A reload without data-path checks removes the prober veth and
    // stops the probes; one with them brings both back.
    let direct = CONFIG.replace(", via = \"datapath\"", "");
    let o = reload(&mut lab, &direct);
    assert!(o.status.success(), "reload: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(probe_links(&lab), 0, "the prober veth left with the last data-path check");
    let sent = counter(&lab.stats().unwrap(), "probe_sent");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counter(&lab.stats().unwrap(), "probe_sent"), sent, "no probe after the reload");
    let o = reload(&mut lab, CONFIG);
    assert!(o.status.success(), "reload: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(probe_links(&lab), 1);
    std::thread::sleep(Duration::from_millis(500));
    let s = lab.stats().unwrap();
    assert!(counter(&s, "probe_reply") > replies, "probes answered again after the reload");
    all_up(&lab);

    // A hand-over: the new instance has its own prober veth, the old one's is gone.
    let (st, _) = lab.take_over();
    assert!(st.success(), "the old instance exited with {st}");
    let t = Instant::now();
    while probe_links(&lab) != 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "prober veths after the hand-over: {}", probe_links(&lab));
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = counter(&lab.stats().unwrap(), "probe_reply");
    std::thread::sleep(Duration::from_millis(500));
    assert!(counter(&lab.stats().unwrap(), "probe_reply") > before, "the new instance's probes are answered");
    all_up(&lab);
    assert_eq!(counter(&lab.stats().unwrap(), "drop_probe"), 0);

    // The interface's address changes: probes from the old one would go
    // unanswered (nobody has it now), so the prober follows within the
    // second weir takes to notice.
    // (promote_secondaries: deleting the primary keeps the new address.)
    for cmd in [
        "sysctl -qw net.ipv4.conf.veth6.promote_secondaries=1",
        "ip addr add 198.18.0.9/24 dev veth6",
        "ip addr del 198.18.0.10/24 dev veth6",
    ] {
        let o = lab.sh("lb", cmd);
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let before = counter(&lab.stats().unwrap(), "probe_reply");
    std::thread::sleep(Duration::from_millis(500));
    assert!(counter(&lab.stats().unwrap(), "probe_reply") > before, "probes from the new address are answered");
    all_up(&lab);
    assert_eq!(probe_links(&lab), 1);

    // SIGKILL: the prober namespace dies with the process, its veth too.
    let child = lab.weir.as_mut().unwrap();
    let wpid = child.id() as i32;
    // SAFETY: our own child (ip netns exec execs weir), by PID.
    unsafe { libc::kill(wpid, libc::SIGKILL) };
    let _ = child.wait();
    lab.weir = None;
    let t = Instant::now();
    loop {
        let o = lab.exec("lb", &["ip", "-o", "link", "show"]);
        let links = String::from_utf8_lossy(&o.stdout).to_string();
        if !links.contains("wprobe") {
            eprintln!("prober veth gone {} ms after SIGKILL", t.elapsed().as_millis());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "prober veth left behind after SIGKILL:\n{links}");
        std::thread::sleep(Duration::from_millis(20));
    }
    decap.stop();
}
