//! ICMP for DSR and tunnel VIPs end to end (root), in the lab with
//! `PMTU_LAB=1` (lab/lab.sh): the client `far` (198.19.30.1, 2001:2:0:30::1)
//! sits behind a router `crt` whose link to it has MTU 1400, and advertises
//! the MSS of a 1500-byte path. A backend's full-size reply (from the VIP,
//! straight to the client through the router) does not fit that link: the
//! router sends ICMP frag-needed / packet-too-big to the VIP, that is to
//! weir, which must pass it on to that backend (new MACs in DSR,
//! encapsulated in tunnel mode). Without it the 50 MB download stalls (a
//! PMTU black hole); with it the download completes intact and the serving
//! backend caches path MTU 1400 for the client. And `ping` to the VIPs from
//! the far client is answered by weir.
//!
//! cargo test --release --test pmtu_e2e -- --test-threads=1 --nocapture

mod common;

use std::time::Instant;

use common::lab::{counter, Lab};
use common::require_root;

const FAR4: &str = "198.19.30.1";
const FAR6: &str = "2001:2:0:30::1";

/// Two VIPs (198.18.0.100 and 2001:2::100, tcp 80) in `mode` over b1..b3;
/// no MACs (weir resolves them).
fn config(mode: &str) -> String {
    let mut c = String::new();
    for (name, vip, net) in [("v4", "198.18.0.100", "198.18.0."), ("v6", "2001:2::100", "2001:2::")] {
        c += &format!("[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n");
        for b in 11..=13 {
            c += &format!("[[vip.backend]]\naddress = \"{net}{b}\"\n");
        }
    }
    c
}

/// The path MTU `host` has cached towards `dst` (`ip route get`), if any.
fn cached_mtu(lab: &Lab, host: &str, dst: &str) -> (Option<u32>, String) {
    let o = lab.sh(host, &format!("ip route get {dst}"));
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let mtu = words.windows(2).find(|w| w[0] == "mtu").and_then(|w| w[1].parse().ok());
    (mtu, text)
}

/// `ping -c 3` from the far client to `vip`: the summary line, and whether
/// all three were answered.
fn ping(lab: &Lab, vip: &str) -> (bool, String) {
    let o = lab.sh("far", &format!("ping -c 3 -i 0.2 -W 2 {vip}"));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("received") || l.starts_with("rtt")).collect();
    (o.status.success() && text.contains(" 3 received"), summary.join("; "))
}

/// ICMP counters of the router (what it sent to the VIPs).
fn router_icmp(lab: &Lab) -> String {
    let o = lab.sh("crt", "nstat -az IcmpOutDestUnreachs Icmp6OutPktTooBigs | tail -n +2");
    String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().chunks(3).map(|c| c[..2].join(" ")).collect::<Vec<_>>().join(", ")
}

fn run(mode: &str, tag: &str) {
    let mut lab = Lab::up_pmtu(&format!("{tag}{}", std::process::id()), mode);
    let st = lab.status();
    assert!(st.status.success(), "lab status: {}{}", String::from_utf8_lossy(&st.stdout), String::from_utf8_lossy(&st.stderr));
    lab.start_weir(&config(mode));
    let mtu = lab.sh("far", "cat /sys/class/net/c0/mtu");
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1400", "the far client's link MTU");
    for b in ["b1", "b2", "b3"] {
        for dst in [FAR4, FAR6] {
            let (m, text) = cached_mtu(&lab, b, dst);
            assert_eq!(m, None, "{b}: no path MTU cached towards {dst} before the test: {text}");
        }
    }

    // Ping: answered by weir from XDP (nobody else owns the VIP there).
    let s0 = lab.stats().expect("weir stats --json");
    for vip in ["198.18.0.100", "2001:2::100"] {
        let (ok, summary) = ping(&lab, vip);
        eprintln!("{mode}: ping {vip} from the far client: {summary}");
        assert!(ok, "{mode}: ping {vip}: {summary}\n{}", lab.diagnostics_routed());
    }
    let s1 = lab.stats().expect("weir stats --json");
    let echoes = counter(&s1, "echo_reply") - counter(&s0, "echo_reply");
    eprintln!("{mode}: echo_reply +{echoes}");
    assert!(echoes >= 6, "{mode}: weir answered the 6 echo requests: {}", s1["counters"]);

    let want = lab.big_sha256();
    let mut figures = Vec::new();
    for (fam, url, far) in [("IPv4", "http://198.18.0.100/", FAR4), ("IPv6", "http://[2001:2::100]/", FAR6)] {
        let before = lab.stats().expect("weir stats --json");
        let t = Instant::now();
        let d = lab.download_in("far", &format!("{url}big.bin?{tag}-{fam}"), 40);
        let wall = t.elapsed().as_secs_f64();
        let after = lab.stats().expect("weir stats --json");
        let routed = counter(&after, "icmp_to_backend") - counter(&before, "icmp_to_backend");
        eprintln!(
            "{mode} {fam}: 50 MB download to the far client: http {} {} bytes in {:.3} s ({:.0} MB/s, {wall:.1} s wall); \
             errors weir sent on to a backend: {routed}; router: {}",
            d.http_code,
            d.bytes,
            d.secs,
            d.bytes as f64 / d.secs / 1e6,
            router_icmp(&lab)
        );
        if d.http_code != "200" || d.bytes != 50 << 20 || d.sha256 != want {
            panic!(
                "{mode} {fam}: 50 MB download failed or not intact (a PMTU black hole?): {d:?} (want {want}); weir counters {}\n{}",
                after["counters"],
                lab.diagnostics_routed()
            );
        }
        assert!(routed > 0, "{mode} {fam}: the router's errors reached a backend through weir: {}", after["counters"]);
        // The backend that served it learnt the path MTU.
        let t = format!("?{tag}-{fam}");
        let served: Vec<String> =
            lab.requests_of(&["b1", "b2", "b3"]).into_iter().filter(|r| r.line.contains(&t)).map(|r| r.backend).collect();
        assert_eq!(served.len(), 1, "{mode} {fam}: one backend served the download: {served:?}");
        let (m, text) = cached_mtu(&lab, &served[0], far);
        eprintln!("{mode} {fam}: {} (served the download): ip route get {far}: {text}", served[0]);
        assert_eq!(m, Some(1400), "{mode} {fam}: {} caches path MTU 1400 for {far}: {text}", served[0]);
        figures.push(format!("{fam} {:.2} s, PMTU {}", d.secs, m.unwrap_or(0)));
    }
    let s = lab.stats().expect("weir stats --json");
    eprintln!("{mode}: counters {}", s["counters"]);
    assert_eq!(counter(&s, "xdp_aborted"), 0);
    eprintln!("{mode}: FIGURES: {}", figures.join("; "));
}

#[test]
fn dsr_backends_learn_the_path_mtu_and_vips_answer_ping() {
    if !require_root("DSR PMTU end-to-end test") {
        return;
    }
    run("dsr", "wpmd");
}

#[test]
fn tunnel_backends_learn_the_path_mtu_and_vips_answer_ping() {
    if !require_root("tunnel PMTU end-to-end test") {
        return;
    }
    run("tunnel", "wpmu");
}
