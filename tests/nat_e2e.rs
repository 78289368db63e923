//! Full NAT and tunnel modes end to end (root), in the lab (lab/lab.sh) with
//! `LAB_MODE=nat` / `LAB_MODE=tunnel`: 30 + 30 new connections over IPv4 and
//! IPv6 through the VIPs, what the backends saw as the peer address, and a
//! 50 MB download checked against the sha256 the lab recorded.
//! The contract is docs/nat-tunnel.md.

mod common;

use std::collections::BTreeMap;

use common::lab::{counter, Lab, Request};
use common::require_root;

const N: usize = 30;
const URL4: &str = "http://198.18.0.100/";
const URL6: &str = "http://[2001:2::100]/";

/// Two VIPs (198.18.0.100:80, [2001:2::100]:80, tcp) in `mode` over the
/// three backends: no source_address (the interface's own address is the
/// default) and no MACs (resolved from the neighbour table).
fn config(mode: &str) -> String {
    let mut c = String::new();
    for (name, vip, net) in [("web4", "198.18.0.100", "198.18.0."), ("web6", "2001:2::100", "2001:2::")] {
        c += &format!("[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n");
        for b in 11..=13 {
            c += &format!("[[vip.backend]]\naddress = \"{net}{b}\"\n");
        }
    }
    c
}

/// Answers per backend; asserts every request succeeded and named one.
fn spread(what: &str, answers: &[String], lab: &Lab) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    eprintln!("{what}: {} requests, spread {m:?}", answers.len());
    let ok = answers.len() == N && answers.iter().all(|a| ["b1", "b2", "b3"].contains(&a.as_str()));
    if !ok {
        panic!("{what}: not every request was answered by a backend: {m:?}\n{}", lab.diagnostics());
    }
    assert!(m.len() >= 2, "{what}: new connections spread over at least 2 backends: {m:?}");
    m
}

/// The requests whose line carries `?tag-`.
fn tagged<'a>(reqs: &'a [Request], tag: &str) -> Vec<&'a Request> {
    let t = format!("?{tag}-");
    reqs.iter().filter(|r| r.line.contains(&t)).collect()
}

fn peers(reqs: &[&Request]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in reqs {
        *m.entry(r.peer.clone()).or_insert(0) += 1;
    }
    m
}

/// The 50 MB big.bin through the IPv4 VIP, intact, within 60 s.
fn big_download(lab: &Lab, what: &str) {
    let want = lab.big_sha256();
    assert_eq!(want.len(), 64, "lab recorded a sha256: {want:?}");
    let d = lab.download(&format!("{URL4}big.bin"), 60);
    eprintln!(
        "{what}: 50 MB download: http {} {} bytes in {:.3} s ({:.0} MB/s)",
        d.http_code,
        d.bytes,
        d.secs,
        d.bytes as f64 / d.secs / 1e6
    );
    if d.http_code != "200" || d.bytes != 50 << 20 || d.sha256 != want {
        panic!("{what}: 50 MB download through the VIP failed or is not intact: {d:?} (want sha256 {want})\n{}", lab.diagnostics());
    }
    let served: Vec<String> = lab.requests().iter().filter(|r| r.line.contains("big.bin")).map(|r| format!("{} from {}", r.backend, r.peer)).collect();
    eprintln!("{what}: big.bin served by {served:?}");
}

#[test]
fn nat_ipv4_and_ipv6_through_the_vips() {
    if !require_root("NAT end-to-end test") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wnat{}", std::process::id()), "nat");
    lab.start_weir(&config("nat"));

    let sniffer = lab.sniff(&["p-b1", "p-b2", "p-b3"], 120);
    let a4 = lab.curls(N, "-4", URL4, "nat4");
    let a6 = lab.curls(N, "-6", URL6, "nat6");
    let seen = sniffer.finish();
    eprintln!("NAT: frames towards the backends during the requests: {seen}");
    spread("NAT IPv4", &a4, &lab);
    spread("NAT IPv6", &a6, &lab);
    // Translated: addressed to the backends, not to the VIP, not encapsulated.
    for k in ["ipip", "ip6ip6", "vip4_plain", "vip6_plain"] {
        assert_eq!(seen[k].as_u64(), Some(0), "{k}: {seen}");
    }
    assert!(seen["frames"].as_u64().unwrap() >= 6 * N as u64, "{seen}");

    // The backends only ever saw the balancer's own address (the default
    // source_address), never the client's.
    let reqs = lab.requests();
    let (r4, r6) = (tagged(&reqs, "nat4"), tagged(&reqs, "nat6"));
    eprintln!("NAT peers seen by the backends: IPv4 {:?}, IPv6 {:?}", peers(&r4), peers(&r6));
    assert_eq!(r4.len(), N, "every IPv4 request logged once: {r4:?}");
    assert_eq!(r6.len(), N, "every IPv6 request logged once: {r6:?}");
    assert!(r4.iter().all(|r| r.peer == "::ffff:198.18.0.10"), "IPv4 requests come from 198.18.0.10: {:?}", peers(&r4));
    assert!(r6.iter().all(|r| r.peer == "2001:2::10"), "IPv6 requests come from 2001:2::10: {:?}", peers(&r6));
    let from_client: Vec<&Request> = reqs.iter().filter(|r| r.peer == "::ffff:198.18.0.1" || r.peer == "2001:2::1").collect();
    assert!(from_client.is_empty(), "no backend sees the client's address under NAT: {from_client:?}");

    big_download(&lab, "NAT");

    let s = lab.stats().expect("weir stats --json");
    eprintln!("NAT counters: {}", s["counters"]);
    assert!(counter(&s, "nat_reply") > 0, "replies were translated back by XDP: {}", s["counters"]);
    assert_eq!(counter(&s, "xdp_aborted"), 0);
    for (i, vip) in ["198.18.0.100", "2001:2::100"].iter().enumerate() {
        let nf = s["vips"][i]["new_flows"].as_u64().unwrap_or(0);
        assert!(nf > 0, "VIP {vip} counted new flows: {}", s["vips"][i]);
    }
    // The download is over and no request came from the client directly:
    // the big.bin request, too, came from the balancer.
    let big: Vec<Request> = lab.requests().into_iter().filter(|r| r.line.contains("big.bin")).collect();
    assert!(!big.is_empty() && big.iter().all(|r| r.peer == "::ffff:198.18.0.10"), "{big:?}");
}

#[test]
fn tunnel_ipv4_and_ipv6_through_the_vips() {
    if !require_root("tunnel end-to-end test") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wtun{}", std::process::id()), "tunnel");
    // Every backend's decapsulator is attached and plain traffic still
    // reaches the backends through it.
    let st = lab.status();
    assert!(
        st.status.success(),
        "lab status in tunnel mode: {}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    lab.start_weir(&config("tunnel"));

    // What the switch hands the backends while the requests run: the
    // client's packets inside IPIP / IP6IP6, never bare packets to the VIP
    // (which the backends would accept too, as in DSR).
    let sniffer = lab.sniff(&["p-b1", "p-b2", "p-b3"], 120);
    let a4 = lab.curls(N, "-4", URL4, "tun4");
    let a6 = lab.curls(N, "-6", URL6, "tun6");
    let seen = sniffer.finish();
    eprintln!("tunnel: frames towards the backends during the requests: {seen}");
    spread("tunnel IPv4", &a4, &lab);
    spread("tunnel IPv6", &a6, &lab);
    let n = |k: &str| seen[k].as_u64().unwrap();
    // at least SYN, ACK and the request per connection
    assert!(n("ipip") >= 3 * N as u64, "IPv4 connections reach the backends in IPIP: {seen}");
    assert!(n("ip6ip6") >= 3 * N as u64, "IPv6 connections reach the backends in IP6IP6: {seen}");
    assert_eq!(n("vip4_plain") + n("vip6_plain"), 0, "nothing reaches a backend addressed to the VIP unencapsulated: {seen}");

    // The backends saw the client itself: the tunnel keeps the client's packet.
    let reqs = lab.requests();
    let (r4, r6) = (tagged(&reqs, "tun4"), tagged(&reqs, "tun6"));
    eprintln!("tunnel peers seen by the backends: IPv4 {:?}, IPv6 {:?}", peers(&r4), peers(&r6));
    assert_eq!(r4.len(), N, "every IPv4 request logged once: {r4:?}");
    assert_eq!(r6.len(), N, "every IPv6 request logged once: {r6:?}");
    assert!(r4.iter().all(|r| r.peer == "::ffff:198.18.0.1"), "IPv4 requests come from the client 198.18.0.1: {:?}", peers(&r4));
    assert!(r6.iter().all(|r| r.peer == "2001:2::1"), "IPv6 requests come from the client 2001:2::1: {:?}", peers(&r6));

    big_download(&lab, "tunnel");

    let s = lab.stats().expect("weir stats --json");
    eprintln!("tunnel counters: {}", s["counters"]);
    assert_eq!(counter(&s, "xdp_aborted"), 0);
    for (i, vip) in ["198.18.0.100", "2001:2::100"].iter().enumerate() {
        let nf = s["vips"][i]["new_flows"].as_u64().unwrap_or(0);
        assert!(nf > 0, "VIP {vip} counted new flows: {}", s["vips"][i]);
    }
    let big: Vec<Request> = lab.requests().into_iter().filter(|r| r.line.contains("big.bin")).collect();
    assert!(!big.is_empty() && big.iter().all(|r| r.peer == "::ffff:198.18.0.1"), "{big:?}");
}
