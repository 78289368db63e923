//! Off-link backends and tunnel PMTU end to end (root), in the lab
//! (lab/lab.sh):
//! - with `ROUTED_LAB=1`, a VIP whose only backend, b4 (198.19.20.14 /
//!   2001:2:0:20::14), sits behind a router: weir must hand its packets to the
//!   router's MAC, found through `ip route get` (no `mac` in the config), in
//!   tunnel mode (b4 sees the client) and in NAT mode (b4 sees the balancer);
//! - in tunnel mode, a 2 MB upload whose full-size segments do not fit once
//!   encapsulated: weir answers them with ICMP frag-needed / packet-too-big
//!   and the client's PMTU discovery shrinks its segments.
//!
//! The contract is docs/nat-tunnel.md.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::lab::{counter, Lab, NsProcess, Request};
use common::require_root;

const N: usize = 20;
const URL4: &str = "http://198.18.0.100/";
const URL6: &str = "http://[2001:2::100]/";

/// Two VIPs (198.18.0.100 and 2001:2::100, tcp, `port`) in `mode`, each
/// over `backends` (IPv4 list, IPv6 list); no MACs, no source_address.
fn config(mode: &str, port: u16, b4: &[&str], b6: &[&str]) -> String {
    let mut c = String::new();
    for (name, vip, backends) in [("v4", "198.18.0.100", b4), ("v6", "2001:2::100", b6)] {
        c += &format!("[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = {port}\nprotocol = \"tcp\"\nmode = \"{mode}\"\n");
        for b in backends {
            c += &format!("[[vip.backend]]\naddress = \"{b}\"\n");
        }
    }
    c
}

fn peers(reqs: &[&Request]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in reqs {
        *m.entry(r.peer.clone()).or_insert(0) += 1;
    }
    m
}

/// The requests (in every backend's log, b1..b4) whose line carries `?tag-`.
fn tagged(lab: &Lab, tag: &str) -> Vec<Request> {
    let t = format!("?{tag}-");
    lab.requests_of(&["b1", "b2", "b3", "b4"]).into_iter().filter(|r| r.line.contains(&t)).collect()
}

/// Start weir with `config` after emptying the balancer's neighbour table,
/// so that the router's MAC can only come from weir's own resolution
/// (`ip route get` -> gateway -> neighbour probe).
fn start_weir_cold(lab: &mut Lab, config: &str) {
    let o = lab.sh("lb", "ip neigh flush dev veth6 && ip -6 neigh flush dev veth6 && ip neigh show dev veth6");
    assert!(o.status.success(), "flushing the balancer's neighbours: {}", String::from_utf8_lossy(&o.stderr));
    let left = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!left.contains("lladdr"), "neighbour table emptied before weir starts: {left}");
    lab.start_weir(config);
}

/// `N` curls through both VIPs; all answered by b4, which logged the peer
/// `peer4` / `peer6`, and nothing else saw them. Returns what the switch
/// sent towards the router, and towards b1..b3, meanwhile.
fn through_router(lab: &Lab, what: &str, peer4: &str, peer6: &str) -> (serde_json::Value, serde_json::Value) {
    let to_rt = lab.sniff(&["p-rt"], 120);
    let to_others = lab.sniff(&["p-b1", "p-b2", "p-b3"], 120);
    let a4 = lab.curls(N, "-4", URL4, &format!("{what}4"));
    let a6 = lab.curls(N, "-6", URL6, &format!("{what}6"));
    let (seen, others) = (to_rt.finish(), to_others.finish());
    eprintln!("{what}: frames the switch sent towards the router: {seen}; towards b1..b3: {others}");
    for (fam, a) in [("IPv4", &a4), ("IPv6", &a6)] {
        let ok = a.len() == N && a.iter().all(|x| x == "b4");
        if !ok {
            panic!("{what} {fam}: not every request was answered by b4: {a:?}\n{}", lab.diagnostics_routed());
        }
        eprintln!("{what} {fam}: {N}/{N} answered by b4");
    }
    for (tag, peer) in [(format!("{what}4"), peer4), (format!("{what}6"), peer6)] {
        let r = tagged(lab, &tag);
        let rr: Vec<&Request> = r.iter().collect();
        eprintln!("{what}: {tag} requests seen by backends {:?}, peers {:?}", r.iter().map(|x| x.backend.as_str()).collect::<std::collections::BTreeSet<_>>(), peers(&rr));
        assert_eq!(r.len(), N, "every {tag} request logged once: {r:?}");
        assert!(r.iter().all(|x| x.backend == "b4"), "{tag}: only b4 served: {r:?}");
        assert!(r.iter().all(|x| x.peer == peer), "{tag}: b4 saw {peer}: {:?}", peers(&rr));
    }
    (seen, others)
}

/// Tunnel mode, backend behind a router: the encapsulated packets go to the
/// router's MAC (resolved by weir, not configured), the router forwards
/// them, b4 decapsulates and answers the client directly (via the router)
/// from the VIP.
#[test]
fn tunnel_to_an_off_link_backend_via_the_router() {
    if !require_root("routed tunnel end-to-end test") {
        return;
    }
    let mut lab = Lab::up_routed(&format!("wrtt{}", std::process::id()), "tunnel");
    let st = lab.status();
    assert!(st.status.success(), "lab status: {}{}", String::from_utf8_lossy(&st.stdout), String::from_utf8_lossy(&st.stderr));
    start_weir_cold(&mut lab, &config("tunnel", 80, &["198.19.20.14"], &["2001:2:0:20::14"]));

    let (seen, others) = through_router(&lab, "rtun", "::ffff:198.18.0.1", "2001:2::1");
    let n = |k: &str| seen[k].as_u64().unwrap();
    // at least SYN, ACK and request per connection, all encapsulated, all
    // addressed to the router's MAC (the bridge sent them out of p-rt only)
    assert!(n("ipip") >= 3 * N as u64, "IPv4 connections reach the router in IPIP: {seen}");
    assert!(n("ip6ip6") >= 3 * N as u64, "IPv6 connections reach the router in IP6IP6: {seen}");
    assert_eq!(n("vip4_plain") + n("vip6_plain"), 0, "nothing unencapsulated to the VIP: {seen}");
    for k in ["ipip", "ip6ip6", "vip4_plain", "vip6_plain"] {
        assert_eq!(others[k].as_u64(), Some(0), "{k}: nothing of it towards b1..b3 (not flooded): {others}");
    }

    // weir found the router's MAC itself: it is in the balancer's
    // neighbour table for both gateways.
    let rt_mac = lab.sh("rt", "cat /sys/class/net/r0/address");
    let rt_mac = String::from_utf8_lossy(&rt_mac.stdout).trim().to_string();
    let neigh = lab.sh("lb", "ip neigh show dev veth6");
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    eprintln!("router r0 MAC {rt_mac}; balancer's neighbours:\n{neigh}");
    for gw in ["198.18.0.254 ", "2001:2::254 "] {
        assert!(neigh.lines().any(|l| l.starts_with(gw) && l.contains(&rt_mac)), "{gw}-> {rt_mac} in {neigh}");
    }

    let s = lab.stats().expect("weir stats --json");
    eprintln!("routed tunnel counters: {}", s["counters"]);
    assert_eq!(counter(&s, "xdp_aborted"), 0);
    assert_eq!(counter(&s, "drop_tunnel_mtu"), 0);
    for i in 0..2 {
        assert!(s["vips"][i]["new_flows"].as_u64().unwrap_or(0) >= N as u64, "{}", s["vips"][i]);
    }
}

/// NAT mode, backend behind a router: translated packets to the router's
/// MAC, b4 answers the balancer's address through the router, weir
/// translates the replies back; and a 50 MB download is intact.
#[test]
fn nat_to_an_off_link_backend_via_the_router() {
    if !require_root("routed NAT end-to-end test") {
        return;
    }
    let mut lab = Lab::up_routed(&format!("wrtn{}", std::process::id()), "nat");
    start_weir_cold(&mut lab, &config("nat", 80, &["198.19.20.14"], &["2001:2:0:20::14"]));

    let (seen, others) = through_router(&lab, "rnat", "::ffff:198.18.0.10", "2001:2::10");
    let n = |k: &str| seen[k].as_u64().unwrap();
    for k in ["ipip", "ip6ip6", "vip4_plain", "vip6_plain"] {
        assert_eq!(n(k), 0, "{k}: translated, not encapsulated nor to the VIP: {seen}");
        assert_eq!(others[k].as_u64(), Some(0), "{k}: towards b1..b3: {others}");
    }
    // SYN, ACK, request, FIN, ACK at least, per connection, to the router
    assert!(n("frames") >= 5 * 2 * N as u64, "{seen}");
    // and not flooded to the other backends (a few ARP/ND broadcasts at most)
    assert!(others["frames"].as_u64().unwrap() < N as u64, "{others}");

    let want = lab.big_sha256();
    assert_eq!(want.len(), 64, "lab recorded a sha256: {want:?}");
    let d = lab.download(&format!("{URL4}big.bin"), 60);
    eprintln!(
        "routed NAT: 50 MB download: http {} {} bytes in {:.3} s ({:.0} MB/s)",
        d.http_code,
        d.bytes,
        d.secs,
        d.bytes as f64 / d.secs / 1e6
    );
    if d.http_code != "200" || d.bytes != 50 << 20 || d.sha256 != want {
        panic!("routed NAT: 50 MB download failed or not intact: {d:?} (want {want})\n{}", lab.diagnostics_routed());
    }
    let big: Vec<Request> = lab.requests_of(&["b1", "b2", "b3", "b4"]).into_iter().filter(|r| r.line.contains("big.bin")).collect();
    assert!(!big.is_empty() && big.iter().all(|r| r.backend == "b4" && r.peer == "::ffff:198.18.0.10"), "{big:?}");

    let s = lab.stats().expect("weir stats --json");
    eprintln!("routed NAT counters: {}", s["counters"]);
    assert!(counter(&s, "nat_reply") > 0, "{}", s["counters"]);
    assert_eq!(counter(&s, "xdp_aborted"), 0);
}

/// Reads each connection to EOF and answers the sha256 hex of what it read;
/// one line per connection to stdout: peer, bytes.
const SINK_PY: &str = r#"
import hashlib, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 9000))
s.listen(16)
while True:
    c, a = s.accept()
    c.settimeout(60)
    h, n = hashlib.sha256(), 0
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            h.update(d)
            n += len(d)
        c.sendall(h.hexdigest().encode() + b"\n")
    except OSError as e:
        print("error", a[0], e, flush=True)
    c.close()
    print(a[0], n, flush=True)
"#;

/// Uploads argv[2] MB of random bytes to argv[1]:9000 (bounded by a 30 s
/// socket timeout), prints the expected sha256, the answer and the time.
const UPLOAD_PY: &str = r#"
import hashlib, json, os, socket, sys, time
host, mb = sys.argv[1], int(sys.argv[2])
data = os.urandom(mb << 20)
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(30)
t0 = time.monotonic()
s.connect((host, 9000))
mss0 = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    got += d
secs = time.monotonic() - t0
mss1 = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
print(json.dumps(dict(want=hashlib.sha256(data).hexdigest(), got=got.decode().strip(), secs=secs, mss_at_connect=mss0, mss_at_end=mss1)))
"#;

/// Tunnel mode, plain lab: the client's full-size segments (1500 bytes)
/// would be 1520 / 1540 once encapsulated, above veth6's MTU of 1500. weir
/// answers them with ICMP frag-needed (MTU 1480) / packet-too-big (MTU
/// 1460); the client lowers its path MTU and the upload completes intact.
#[test]
fn tunnel_pmtu_upload_shrinks_segments() {
    if !require_root("tunnel PMTU end-to-end test") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wpmt{}", std::process::id()), "tunnel");
    // Declared after the lab: stopped (by PID) before the lab is torn down.
    let mut sinks: Vec<NsProcess> = Vec::new();
    for b in ["b1", "b2", "b3"] {
        let log = std::path::PathBuf::from(format!("{}/sink-{b}.log", lab.state()));
        let mut p = lab.spawn_in(b, &["python3", "-u", "-c", SINK_PY], &log);
        lab.wait_listening(b, 9000, &mut p);
        eprintln!("sink on {b}:9000 running as pid {}", p.pid());
        sinks.push(p);
    }
    lab.start_weir(&config("tunnel", 9000, &["198.18.0.11", "198.18.0.12", "198.18.0.13"], &["2001:2::11", "2001:2::12", "2001:2::13"]));

    let mtu = lab.sh("lb", "cat /sys/class/net/veth6/mtu");
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1500", "veth6's MTU");

    let mut before = 0;
    let mut report = Vec::new();
    for (fam, vip, pmtu) in [("IPv4", "198.18.0.100", "1480"), ("IPv6", "2001:2::100", "1460")] {
        let start = Instant::now();
        let o = lab.exec("client", &["timeout", "45", "python3", "-c", UPLOAD_PY, vip, "2"]);
        let wall = start.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let r: serde_json::Value = match serde_json::from_str(text.trim()) {
            Ok(v) => v,
            Err(_) => panic!(
                "{fam}: the upload through {vip}:9000 failed after {wall:.1} s: {text}{}\n{}",
                String::from_utf8_lossy(&o.stderr),
                lab.diagnostics()
            ),
        };
        eprintln!("{fam}: 2 MB upload through [{vip}]:9000: {r}");
        assert_eq!(r["got"], r["want"], "{fam}: the sink got the bytes intact");
        // The client learnt the smaller path MTU from weir's ICMP.
        let rg = lab.sh("client", &format!("ip route get {vip}"));
        let rg = String::from_utf8_lossy(&rg.stdout).to_string();
        eprintln!("{fam}: client's route to the VIP after the upload: {}", rg.trim());
        assert!(rg.contains(&format!("mtu {pmtu}")), "{fam}: client caches path MTU {pmtu} for {vip}: {rg}");
        let mss = |k: &str| r[k].as_i64().unwrap_or(0);
        assert!(mss("mss_at_end") > 0 && mss("mss_at_end") <= mss("mss_at_connect") - 20, "{fam}: MSS shrank by the tunnel's overhead: {r}");

        let s = lab.stats().expect("weir stats --json");
        let tb = counter(&s, "icmp_too_big");
        eprintln!(
            "{fam}: icmp_too_big {before} -> {tb}, drop_tunnel_mtu {}, drop_encap {}",
            counter(&s, "drop_tunnel_mtu"),
            counter(&s, "drop_encap")
        );
        assert!(tb > before, "{fam}: full-size segments were answered with ICMP too-big: {}", s["counters"]);
        assert_eq!(counter(&s, "drop_tunnel_mtu"), 0, "{fam}: nothing too big was dropped silently: {}", s["counters"]);
        assert_eq!(counter(&s, "xdp_aborted"), 0);
        before = tb;
        report.push(format!("{fam} {:.3} s", r["secs"].as_f64().unwrap_or(f64::NAN)));
    }
    for p in sinks.iter_mut() {
        p.stop();
    }
    for b in ["b1", "b2", "b3"] {
        let l = std::fs::read_to_string(format!("{}/sink-{b}.log", lab.state())).unwrap_or_default();
        eprintln!("sink {b}: {}", l.trim().replace('\n', "; "));
        assert!(!l.contains("error"), "sink {b}: {l}");
    }
    eprintln!("PMTU upload times (2 MB): {}", report.join(", "));
}
