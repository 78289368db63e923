//! NAT regressions (root, BPF_PROG_TEST_RUN): each test was written in review
//! to show a defect (it failed), asserts what docs/nat-tunnel.md promises,
//! and passes since the fix.
//!
//! cargo test --release --test nat_regressions -- --test-threads=1

mod common;

use std::time::Duration;

use common::*;
use etherparse::{icmpv4, Icmpv4Type};
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{bytes_of, from_bytes, NatRev};

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const BE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x29];

const VIP: &str = "198.18.0.103";
const S: &str = "198.18.0.40";
const BE: &str = "198.18.0.41";
const PORT: u16 = 41000;

/// The client's ACK of the backend's SYN-ACK (`synack_opts`, ISN
/// 0x2000_0000): it completes a NAT handshake.
fn ack_of_synack(sport: u16, dport: u16) -> L4 {
    L4::Tcp(tcp_hdr(sport, dport, 0x1000_0001, Some(0x2000_0001), 502))
}

/// A TCP frame from `smac` to the balancer.
fn tcp(smac: [u8; 6], src: &str, dst: &str, l4: L4) -> Vec<u8> {
    Pkt::new(src, dst, l4, b"").macs(LB_MAC, smac).frame()
}

/// The frame's action through the fixture runner, and the counters that rose.
fn act(lb: &Lb, name: &str, frame: &[u8]) -> Run {
    let r = run(lb, name, frame);
    eprintln!("{name}: action {} ({})", action_name(r.action), rose(&r));
    r
}

fn a4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn dst_ip(out: &[u8]) -> [u8; 4] {
    [out[30], out[31], out[32], out[33]]
}

fn only_rev(lb: &Lb) -> (Vec<u8>, NatRev) {
    let keys: Vec<Vec<u8>> = lb.dp.skel.maps.nat_rev.keys().collect();
    assert_eq!(keys.len(), 1, "one NAT flow expected");
    let v = lb.dp.skel.maps.nat_rev.lookup(&keys[0], MapFlags::ANY).unwrap().unwrap();
    (keys[0].clone(), from_bytes::<NatRev>(&v).unwrap())
}

fn coarse_secs() -> (i64, i64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

/// R1, fixed: a client SYN on a CLOSING flow resets it to SYN. Was: a client re-opens a connection (SYN) on a tuple whose flow is CLOSING
/// (the client port is reused within tcp_fin_timeout). The new connection
/// stays CLOSING for ever, so after tcp_fin_timeout of idle (not
/// tcp_timeout) its SNAT port is handed to another client, and the backend's
/// packets for the still-open connection go to that other client.
#[test]
fn a_reopened_connection_is_timed_as_new() {
    if !require_root("review repro") {
        return;
    }
    let lb = load(&one_port_nat("size = 4096\ntcp_fin_timeout = 1", ""));
    let (a, b) = ("10.6.0.1", "10.6.0.2");
    for (what, from_backend, l4) in [
        ("A SYN", false, syn(1111, 80)),
        ("backend SYN-ACK", true, synack_opts(80, PORT)),
        ("A ACK", false, ack_of_synack(1111, 80)),
        ("A FIN", false, fin(1111, 80)),
        ("A SYN again (port reuse)", false, syn(1111, 80)),
        ("backend SYN-ACK", true, synack_opts(80, PORT)),
        ("A ACK", false, ack_of_synack(1111, 80)),
    ] {
        let frame = if from_backend { tcp(BE_MAC, BE, S, l4) } else { tcp(A_MAC, a, VIP, l4) };
        let r = act(&lb, what, &frame);
        assert_eq!(action_name(r.action), "XDP_TX", "{what}: {}", rose(&r));
    }
    let (_, st) = only_rev(&lb);
    eprintln!("state of the re-opened, established connection: {} (0 SYN_SENT, 1 ESTABLISHED, 2 CLOSING, 3 SYN_RECV)", st.state);
    std::thread::sleep(Duration::from_secs(3));
    // 3 s idle: far below tcp_timeout (900 s). A's flow must still own the port.
    let r = act(&lb, "B SYN 3 s later", &tcp(B_MAC, b, VIP, syn(2222, 80)));
    let r2 = act(&lb, "backend's packet for A's connection", &tcp(BE_MAC, BE, S, ack(80, PORT)));
    eprintln!("  to {:?}", dst_ip(&r2.out));
    assert_eq!(st.state, 1, "re-opened connection should be ESTABLISHED, is {}", st.state);
    assert_eq!(r.action, XDP_DROP, "B took the port of A's open connection: {}", rose(&r));
}

/// R2, fixed: the comparison is signed. Was: nat_live() compares `now - last_seen` unsigned. Another CPU that read
/// the coarse clock just after a second boundary writes last_seen = now + 1;
/// this CPU (still at `now`) then sees the live flow as expired: a client
/// packet is rescheduled, and nat_claim deletes the live entry and hands its
/// port to a new flow. Simulated by writing last_seen = now + 1.
#[test]
fn a_last_seen_ahead_of_now_is_live() {
    if !require_root("review repro") {
        return;
    }
    let lb = load(&one_port_nat("size = 4096", ""));
    let (a, b) = ("10.6.0.1", "10.6.0.2");
    // Start early in a second so the whole case runs within it.
    loop {
        let (_, ns) = coarse_secs();
        if ns < 300_000_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s0 = coarse_secs().0;
    assert_eq!(act(&lb, "A SYN", &tcp(A_MAC, a, VIP, syn(1111, 80))).action, XDP_TX);
    assert_eq!(act(&lb, "backend SYN-ACK", &tcp(BE_MAC, BE, S, synack_opts(80, PORT))).action, XDP_TX);
    assert_eq!(act(&lb, "A ACK", &tcp(A_MAC, a, VIP, ack_of_synack(1111, 80))).action, XDP_TX);
    let (key, mut st) = only_rev(&lb);
    eprintln!("A's flow: state {} last_seen {} (clock {s0})", st.state, st.last_seen);
    // What the reply CPU writes when its clock read already says s0 + 1.
    st.last_seen += 1;
    lb.dp.skel.maps.nat_rev.update(&key, bytes_of(&st), MapFlags::EXIST).unwrap();
    let r = act(&lb, "B SYN", &tcp(B_MAC, b, VIP, syn(2222, 80)));
    let s1 = coarse_secs().0;
    assert_eq!(s0, s1, "the second ticked during the case: rerun");
    let r2 = act(&lb, "backend's next packet of A's connection", &tcp(BE_MAC, BE, S, ack(80, PORT)));
    eprintln!("  to {:?}", dst_ip(&r2.out));
    assert_eq!(r.action, XDP_DROP, "B was given the port of A's live flow: {}", rose(&r));
}

/// R3, fixed: nat_rev is a plain hash (full: drop_nat_ports), swept by weir. Was: LRU eviction: NAT flows of another VIP fill nat_rev; A's live,
/// established flow is evicted without expiring, its port is handed to a new
/// client, and the backend's packets of A's still-open connection go to it.
#[test]
fn a_full_reverse_table_drops_instead_of_evicting_a_live_flow() {
    if !require_root("review repro") {
        return;
    }
    let more = r#"
[[vip]]
name = "busy"
address = "198.18.0.104"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.50"
source_ports = [1024, 65000]
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"
"#;
    let lb = load(&one_port_nat("size = 64", more));
    let a = "10.6.0.1";
    assert_eq!(act(&lb, "A SYN", &tcp(A_MAC, a, VIP, syn(1111, 80))).action, XDP_TX);
    assert_eq!(act(&lb, "backend SYN-ACK", &tcp(BE_MAC, BE, S, synack_opts(80, PORT))).action, XDP_TX);
    assert_eq!(act(&lb, "A ACK", &tcp(A_MAC, a, VIP, ack_of_synack(1111, 80))).action, XDP_TX);
    // 4096 other clients open connections to the other VIP.
    let mut tx = 0;
    for i in 0..4096u32 {
        let src = format!("10.7.{}.{}", (i >> 8) as u8, i as u8);
        if run(&lb, "flood SYN", &tcp(B_MAC, &src, "198.18.0.104", syn(3000, 80))).action == XDP_TX {
            tx += 1;
        }
        // Their handshakes complete: the entries are referenced like A's.
        let _ = run(&lb, "flood ACK", &tcp(B_MAC, &src, "198.18.0.104", ack_of_synack(3000, 80)));
    }
    let n = lb.dp.skel.maps.nat_rev.keys().count();
    let fam: Vec<Vec<u8>> = lb.dp.skel.maps.nat_rev.keys().filter(|k| k[0..4] == a4(BE)).collect();
    eprintln!("flood: {tx} translated; nat_rev holds {n}; A's reverse entries: {fam:?}");
    let r = act(&lb, "C SYN after the flood", &tcp(B_MAC, "10.6.0.2", VIP, syn(2222, 80)));
    let r2 = act(&lb, "backend's next packet of A's connection", &tcp(BE_MAC, BE, S, ack(80, PORT)));
    eprintln!("  to {:?}", dst_ip(&r2.out));
    assert_eq!(r.action, XDP_DROP, "C was given the port of A's live, established flow: {}", rose(&r));
    assert_eq!((r2.action, dst_ip(&r2.out)), (XDP_TX, a4(a)), "the backend's packet of A's connection still goes to A");
}

/// R4, fixed: the outer destination must be the quoted source. Was: the contract translates ICMP errors "addressed to the source
/// address"; nat_icmp never looks at the outer destination, so an error sent
/// to any address (transit traffic, another host) is translated and sent to
/// the client as XDP_TX.
#[test]
fn icmp_errors_not_addressed_to_the_source_pass() {
    if !require_root("review repro") {
        return;
    }
    let lb = load(&one_port_nat("size = 4096", ""));
    assert_eq!(act(&lb, "A SYN", &tcp(A_MAC, "10.6.0.1", VIP, syn(1111, 80))).action, XDP_TX);
    // Quote: S:41000 -> BE:80 (IP header + 8 bytes).
    let quote = Pkt::new(S, BE, syn(PORT, 80), b"").ip_bytes()[..28].to_vec();
    let host = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host);
    let f = Pkt::new("203.0.113.1", "10.99.99.99", L4::Icmp4(host), &quote).macs(LB_MAC, BE_MAC).frame();
    // Stricter than the repro: unchanged, to the kernel as no NAT reply.
    check(&lb, "ICMP error to 10.99.99.99 (not the quoted source)", &f, XDP_PASS, None, &["xdp_pass", "pass_unknown_proto"]);
}

/// weir's sweep frees a NAT flow that timed out (both entries) and leaves a
/// live one alone; the freed port then serves another client.
#[test]
fn the_sweep_frees_expired_flows_only() {
    if !require_root("NAT sweep") {
        return;
    }
    let more = r#"
[[vip]]
name = "nat-other"
address = "198.18.0.105"
port = 80
protocol = "udp"
mode = "nat"
source_address = "198.18.0.60"
[[vip.backend]]
address = "198.18.0.61"
mac = "02:00:00:00:00:3d"
"#;
    let lb = load(&one_port_nat("tcp_fin_timeout = 1\nudp_timeout = 600", more));
    let a = "10.6.0.1";
    assert_eq!(act(&lb, "A SYN", &tcp(A_MAC, a, VIP, syn(1111, 80))).action, XDP_TX);
    assert_eq!(act(&lb, "A FIN", &tcp(A_MAC, a, VIP, fin(1111, 80))).action, XDP_TX);
    // A UDP flow on the other VIP stays live (600 s).
    let udp = Pkt::new("10.7.0.1", "198.18.0.105", udp_l4(5353, 80, true), b"q").macs(LB_MAC, B_MAC).frame();
    assert_eq!(act(&lb, "UDP to the other NAT VIP", &udp).action, XDP_TX);
    assert_eq!(lb.dp.skel.maps.nat_rev.keys().count(), 2);
    assert_eq!(lb.dp.sweep_nat(0).unwrap(), 0, "nothing has expired yet");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(lb.dp.sweep_nat(0).unwrap(), 1, "the closed TCP flow expired, the UDP flow did not");
    assert_eq!(lb.dp.skel.maps.nat_rev.keys().count(), 1);
    // Forward entries are left to their LRU (the sweep deletes only what it
    // can free by compare-and-swap); A's is no longer believed.
    assert_eq!(lb.dp.skel.maps.nat_fwd.keys().count(), 2);
    // The only port is free again: another client gets it.
    let r = act(&lb, "B SYN", &tcp(B_MAC, "10.6.0.2", VIP, syn(2222, 80)));
    assert_eq!(r.action, XDP_TX);
    assert_eq!(out_sport(&r.out), Some(PORT));
}
