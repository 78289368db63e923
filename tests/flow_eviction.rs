//! A SYN flood must not evict established connections (root,
//! BPF_PROG_TEST_RUN). Was: every SYN took an entry in the one flow table;
//! a flood of 8x its size evicted established flows, and a round-robin VIP
//! (which cannot re-derive a flow's backend from a hash) sent their next
//! packets to whichever backend was next in turn: broken connections.
//!
//! cargo test --release --test flow_eviction -- --test-threads=1 --nocapture

mod common;

use common::*;
use etherparse::TcpHeader;

const CONFIG: &str = r#"
[conntrack]
size = 2048

[[vip]]
name = "rr"
address = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"
"#;

fn seg(src: &str, sport: u16, syn: bool) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, 80, 1000, 64240);
    h.syn = syn;
    h.ack = !syn;
    Pkt::new(src, "198.18.0.100", L4::Tcp(h), b"").frame()
}

#[test]
fn a_syn_flood_does_not_evict_established_round_robin_flows() {
    if !require_root("flow eviction fixtures") {
        return;
    }
    pin_to_cpu(0);
    let lb = load(CONFIG);
    // 50 established connections (SYN, then the client's ACK).
    let mut conns = Vec::new();
    for i in 0..50u16 {
        let src = format!("10.1.0.{}", 1 + i);
        let r = run(&lb, "SYN", &seg(&src, 40000 + i, true));
        assert_eq!(r.action, XDP_TX, "{}", rose(&r));
        let mac = r.out[0..6].to_vec();
        let r = run(&lb, "ACK", &seg(&src, 40000 + i, false));
        assert_eq!((r.action, &r.out[0..6]), (XDP_TX, &mac[..]), "the ACK follows the SYN: {}", rose(&r));
        conns.push((src, 40000 + i, mac));
    }
    // A SYN flood: 8x the flow table, each SYN sent twice (as a client
    // whose SYN went unanswered resends it), so its entry is used again.
    for i in 0..16384u32 {
        let src = format!("10.{}.{}.{}", 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let syn = seg(&src, 1024 + (i % 60000) as u16, true);
        for _ in 0..2 {
            assert_eq!(lb.dp.run(&syn).unwrap().0, XDP_TX);
        }
    }
    // Every established connection still reaches its backend, from the table.
    let mut moved = 0;
    for (src, sport, mac) in &conns {
        let r = run(&lb, "ACK after the flood", &seg(src, *sport, false));
        let hit = r.delta[stat("flow_hit")] == 1;
        if !(r.action == XDP_TX && r.out[0..6] == mac[..] && hit) {
            moved += 1;
        }
    }
    println!("after a 16,384-SYN flood into a 2,048-flow table: {moved} of 50 established connections lost their flow");
    assert_eq!(moved, 0, "established connections were evicted by a SYN flood");
}
