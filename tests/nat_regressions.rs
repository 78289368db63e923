//! NAT regressions (root, BPF_PROG_TEST_RUN): each test was written in review
//! to show a defect (it failed), asserts what docs/nat-tunnel.md promises,
//! and passes since the fix.
//!
//! cargo test --release --test nat_regressions -- --test-threads=1

mod common;

use std::time::Duration;

use common::*;
use etherparse::{icmpv4, Icmpv4Type, PacketBuilder};
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{bytes_of, from_bytes, NatRev};

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const BE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x29];

const VIP: [u8; 4] = [198, 18, 0, 103];
const S: [u8; 4] = [198, 18, 0, 40];
const BE: [u8; 4] = [198, 18, 0, 41];
const PORT: u16 = 41000;

#[derive(Clone, Copy)]
enum F {
    Syn,
    Ack,
    Fin,
    SynAck,
}

fn tcp(smac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, f: F) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, LB_MAC).ipv4(src, dst, 64).tcp(sport, dport, 1000, 65535);
    let b = match f {
        F::Syn => b.syn(),
        // The backend's SYN-ACK (F::SynAck) carries seq 1000: this ACK
        // acknowledges it, which completes a NAT handshake.
        F::Ack => b.ack(1001),
        F::Fin => b.fin().ack(1),
        F::SynAck => b.syn().ack(1),
    };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn delta(lb: &Lb, frame: &[u8]) -> (u32, Vec<u8>, Vec<String>) {
    let before = lb.counters();
    let (a, out) = lb.dp.run(frame).expect("test_run");
    let after = lb.counters();
    let rose = (0..after.len())
        .filter(|i| after[*i] != before[*i])
        .map(|i| format!("{}+{}", weir::skel::stat_name(i), after[i] - before[i]))
        .collect();
    (a, out, rose)
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
    let a = [10, 6, 0, 1];
    let b = [10, 6, 0, 2];
    for (what, from_backend, f) in [
        ("A SYN", false, F::Syn),
        ("backend SYN-ACK", true, F::SynAck),
        ("A ACK", false, F::Ack),
        ("A FIN", false, F::Fin),
        ("A SYN again (port reuse)", false, F::Syn),
        ("backend SYN-ACK", true, F::SynAck),
        ("A ACK", false, F::Ack),
    ] {
        let frame = if from_backend { tcp(BE_MAC, BE, S, 80, PORT, f) } else { tcp(A_MAC, a, VIP, 1111, 80, f) };
        let (act, _, rose) = delta(&lb, &frame);
        eprintln!("{what}: action {} {rose:?}", action_name(act));
        assert_eq!(act, XDP_TX, "{what}");
    }
    let (_, r) = only_rev(&lb);
    eprintln!("state of the re-opened, established connection: {} (0 SYN_SENT, 1 ESTABLISHED, 2 CLOSING, 3 SYN_RECV)", r.state);
    std::thread::sleep(Duration::from_secs(3));
    // 3 s idle: far below tcp_timeout (900 s). A's flow must still own the port.
    let (act, _, rose) = delta(&lb, &tcp(B_MAC, b, VIP, 2222, 80, F::Syn));
    eprintln!("B SYN 3 s later: action {} {rose:?}", action_name(act));
    let (act2, out2, _) = delta(&lb, &tcp(BE_MAC, BE, S, 80, PORT, F::Ack));
    eprintln!("backend's packet for A's connection: action {} to {:?}", action_name(act2), dst_ip(&out2));
    assert_eq!(r.state, 1, "re-opened connection should be ESTABLISHED, is {}", r.state);
    assert_eq!(act, XDP_DROP, "B took the port of A's open connection: {rose:?}");
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
    let a = [10, 6, 0, 1];
    let b = [10, 6, 0, 2];
    // Start early in a second so the whole case runs within it.
    loop {
        let (_, ns) = coarse_secs();
        if ns < 300_000_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s0 = coarse_secs().0;
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Syn)).0, XDP_TX);
    assert_eq!(delta(&lb, &tcp(BE_MAC, BE, S, 80, PORT, F::SynAck)).0, XDP_TX);
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Ack)).0, XDP_TX);
    let (key, mut r) = only_rev(&lb);
    eprintln!("A's flow: state {} last_seen {} (clock {s0})", r.state, r.last_seen);
    // What the reply CPU writes when its clock read already says s0 + 1.
    r.last_seen += 1;
    lb.dp.skel.maps.nat_rev.update(&key, bytes_of(&r), MapFlags::EXIST).unwrap();
    let (act, out, rose) = delta(&lb, &tcp(B_MAC, b, VIP, 2222, 80, F::Syn));
    let s1 = coarse_secs().0;
    assert_eq!(s0, s1, "the second ticked during the case: rerun");
    eprintln!("B SYN: action {} {rose:?}", action_name(act));
    let (act2, out2, _) = delta(&lb, &tcp(BE_MAC, BE, S, 80, PORT, F::Ack));
    eprintln!("backend's next packet of A's connection: {} to {:?}", action_name(act2), dst_ip(&out2));
    let _ = out;
    assert_eq!(act, XDP_DROP, "B was given the port of A's live flow: {rose:?}");
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
    let a = [10, 6, 0, 1];
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Syn)).0, XDP_TX);
    assert_eq!(delta(&lb, &tcp(BE_MAC, BE, S, 80, PORT, F::SynAck)).0, XDP_TX);
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Ack)).0, XDP_TX);
    // 4096 other clients open connections to the other VIP.
    let mut tx = 0;
    for i in 0..4096u32 {
        let src = [10, 7, (i >> 8) as u8, i as u8];
        if delta(&lb, &tcp(B_MAC, src, [198, 18, 0, 104], 3000, 80, F::Syn)).0 == XDP_TX {
            tx += 1;
        }
        // Their handshakes complete: the entries are referenced like A's.
        let _ = delta(&lb, &tcp(B_MAC, src, [198, 18, 0, 104], 3000, 80, F::Ack));
    }
    let n = lb.dp.skel.maps.nat_rev.keys().count();
    let fam: Vec<Vec<u8>> = lb.dp.skel.maps.nat_rev.keys().filter(|k| k[0..4] == BE).collect();
    eprintln!("flood: {tx} translated; nat_rev holds {n}; A's reverse entries: {fam:?}");
    let (act, _, rose) = delta(&lb, &tcp(B_MAC, [10, 6, 0, 2], VIP, 2222, 80, F::Syn));
    eprintln!("C SYN after the flood: action {} {rose:?}", action_name(act));
    let (act2, out2, _) = delta(&lb, &tcp(BE_MAC, BE, S, 80, PORT, F::Ack));
    eprintln!("backend's next packet of A's connection: {} to {:?}", action_name(act2), dst_ip(&out2));
    assert_eq!(act, XDP_DROP, "C was given the port of A's live, established flow: {rose:?}");
    assert_eq!((act2, dst_ip(&out2)), (XDP_TX, a), "the backend's packet of A's connection still goes to A");
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
    let a = [10, 6, 0, 1];
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Syn)).0, XDP_TX);
    // Quote: S:41000 -> BE:80 (IP header + 8 bytes).
    let q = PacketBuilder::ipv4(S, BE, 64).tcp(PORT, 80, 1000, 65535).syn();
    let mut quote = Vec::new();
    q.write(&mut quote, &[]).unwrap();
    quote.truncate(28);
    let icmp = PacketBuilder::ethernet2(BE_MAC, LB_MAC)
        .ipv4([203, 0, 113, 1], [10, 99, 99, 99], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host));
    let mut f = Vec::new();
    icmp.write(&mut f, &quote).unwrap();
    let (act, out, rose) = delta(&lb, &f);
    eprintln!("ICMP error to 10.99.99.99: action {} {rose:?} -> to {:?}", action_name(act), dst_ip(&out));
    assert_eq!(act, XDP_PASS, "an ICMP error to another address was translated: {rose:?}");
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
    let a = [10, 6, 0, 1];
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Syn)).0, XDP_TX);
    assert_eq!(delta(&lb, &tcp(A_MAC, a, VIP, 1111, 80, F::Fin)).0, XDP_TX);
    // A UDP flow on the other VIP stays live (600 s).
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(B_MAC, LB_MAC).ipv4([10, 7, 0, 1], [198, 18, 0, 105], 64).udp(5353, 80).write(&mut udp, b"q").unwrap();
    assert_eq!(delta(&lb, &udp).0, XDP_TX);
    assert_eq!(lb.dp.skel.maps.nat_rev.keys().count(), 2);
    assert_eq!(lb.dp.sweep_nat(0).unwrap(), 0, "nothing has expired yet");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(lb.dp.sweep_nat(0).unwrap(), 1, "the closed TCP flow expired, the UDP flow did not");
    assert_eq!(lb.dp.skel.maps.nat_rev.keys().count(), 1);
    // Forward entries are left to their LRU (the sweep deletes only what it
    // can free by compare-and-swap); A's is no longer believed.
    assert_eq!(lb.dp.skel.maps.nat_fwd.keys().count(), 2);
    // The only port is free again: another client gets it.
    let (act, out, _) = delta(&lb, &tcp(B_MAC, [10, 6, 0, 2], VIP, 2222, 80, F::Syn));
    assert_eq!(act, XDP_TX);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), PORT);
}
