//! NAT flow states and the sweep (root, BPF_PROG_TEST_RUN through the
//! fixture runner). A TCP flow is ESTABLISHED only once the client has
//! acknowledged the backend's SYN-ACK; only a SYN opens one; the sweep never
//! touches a live flow's entries. Each test failed before its fix.
//!
//! cargo test --release --test nat_states -- --test-threads=1

mod common;

use std::time::Duration;

use common::*;
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{from_bytes, NatRev};

const VIP: &str = "198.18.0.103";
const S: &str = "198.18.0.40";
const B: &str = "198.18.0.41";
const BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x29];
const X: &str = "10.6.0.1";

// enum weir_nat_state
const SYN_SENT: u8 = 0;
const ESTABLISHED: u8 = 1;
const SYN_RECV: u8 = 3;

fn lb(ct: &str, more: &str) -> Option<Lb> {
    if !require_root("NAT state fixtures") {
        return None;
    }
    Some(load(&one_port_nat(ct, more)))
}

fn states(lb: &Lb) -> Vec<u8> {
    let m = &lb.dp.skel.maps.nat_rev;
    m.keys().filter_map(|k| m.lookup(&k, MapFlags::ANY).ok().flatten()).map(|v| from_bytes::<NatRev>(&v).unwrap().state).collect()
}

fn tcp(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    Pkt::new(src, dst, l4, b"").frame()
}

fn syn_ack_from_backend(isn: u32) -> Vec<u8> {
    let mut h = etherparse::TcpHeader::new(80, 41000, isn, 64240);
    h.syn = true;
    h.ack = true;
    h.acknowledgment_number = 0x1000_0001;
    Pkt::new(B, S, L4::Tcp(h), b"").macs(LB_MAC, BMAC).frame()
}

fn client_ack(ack: u32) -> Vec<u8> {
    let mut h = etherparse::TcpHeader::new(1111, 80, 0x1000_0001, 64240);
    h.ack = true;
    h.acknowledgment_number = ack;
    Pkt::new(X, VIP, L4::Tcp(h), b"").frame()
}

/// Was: the client's first ACK made the flow ESTABLISHED (900 s) whether or
/// not the backend had ever answered: two spoofed packets pinned a SNAT port
/// for 15 minutes.
#[test]
fn established_needs_the_backend_syn_ack_acknowledged() {
    let Some(lb) = lb("size = 4096", "") else { return };
    let r = run(&lb, "SYN", &tcp(X, VIP, syn(1111, 80)));
    assert_eq!(r.action, XDP_TX, "{}", rose(&r));
    assert_eq!(states(&lb), [SYN_SENT]);
    let r = run(&lb, "blind ACK, no SYN-ACK seen", &client_ack(12345));
    assert_eq!(r.action, XDP_TX, "{}", rose(&r));
    assert_eq!(states(&lb), [SYN_SENT], "an ACK before any SYN-ACK must not establish the flow");
    let r = run(&lb, "backend SYN-ACK", &syn_ack_from_backend(7000));
    assert_eq!((r.action, stat_rose(&r, "nat_reply")), (XDP_TX, true), "{}", rose(&r));
    assert_eq!(states(&lb), [SYN_RECV]);
    run(&lb, "ACK with the wrong number", &client_ack(7002));
    assert_eq!(states(&lb), [SYN_RECV], "an ACK that does not acknowledge the SYN-ACK is blind");
    run(&lb, "ACK of the SYN-ACK", &client_ack(7001));
    assert_eq!(states(&lb), [ESTABLISHED]);
}

fn stat_rose(r: &Run, name: &str) -> bool {
    r.delta[stat(name)] > 0
}

/// Was: a first packet that is not a SYN created an ESTABLISHED flow.
#[test]
fn only_a_syn_opens_a_tcp_flow() {
    let Some(lb) = lb("size = 4096", "") else { return };
    run_table(
        &lb,
        &[
            Case::new("ACK of no flow", client_ack(1), XDP_DROP, None, &["xdp_drop", "drop_nat_not_syn"]),
            Case::new("SYN-ACK to the VIP", tcp(X, VIP, synack_opts(1111, 80)), XDP_DROP, None, &[
                "xdp_drop",
                "drop_nat_not_syn",
            ]),
            Case::new("FIN of no flow", tcp(X, VIP, fin(1111, 80)), XDP_DROP, None, &[
                "xdp_drop",
                "drop_nat_not_syn",
            ]),
        ],
    );
    assert!(states(&lb).is_empty(), "no flow may be created");
    // UDP has no handshake: its first datagram opens the flow.
    let more = r#"
[[vip]]
name = "nat-dns"
address = "198.18.0.105"
port = 53
protocol = "udp"
mode = "nat"
source_address = "198.18.0.60"
[[vip.backend]]
address = "198.18.0.61"
mac = "02:00:00:00:00:3d"
"#;
    let lb = load(&one_port_nat("size = 4096", more));
    let q = Pkt::new(X, "198.18.0.105", L4::Udp { sport: 5000, dport: 53, csum: true }, b"q").frame();
    assert_eq!(run(&lb, "UDP", &q).action, XDP_TX);
    assert_eq!(states(&lb), [ESTABLISHED]);
}

/// Was: the sweep matched forward entries by SNAT address and port but not
/// by backend, so a client rescheduled to another backend on the same port
/// lost its live forward entry when its old flow's reverse entry expired,
/// and its next packet took another port (a broken connection).
#[test]
fn the_sweep_leaves_a_rescheduled_flow_alone() {
    let second = r#"
[[vip.backend]]
address = "198.18.0.42"
port = 80
mac = "02:00:00:00:00:2a"
"#;
    let Some(lb) = lb("size = 4096\ntcp_syn_timeout = 1", second) else { return };
    let x_syn = tcp(X, VIP, syn(1111, 80));
    let r = run(&lb, "X SYN", &x_syn);
    assert_eq!(r.action, XDP_TX, "{}", rose(&r));
    let first_port = out_sport(&r.out).unwrap();
    let first_mac: [u8; 6] = r.out[0..6].try_into().unwrap();
    // The backend X went to goes down: X's next SYN is rescheduled.
    let (old, _) = lb.plan.vips[0].backends.iter().map(|b| (b.id, lb.hops[&b.id].mac)).find(|(_, m)| *m == first_mac).unwrap();
    lb.dp.remove_backend(old).unwrap();
    // As a health check does: the VIP's table without it.
    let vip = &lb.plan.vips[0];
    let survivor = vip.backends.iter().find(|b| b.id != old).unwrap().id;
    lb.dp.write_ring(vip.id, &vec![survivor; lb.plan.table_size as usize]).unwrap();
    let r = run(&lb, "X SYN again, rescheduled", &x_syn);
    assert_eq!(r.action, XDP_TX, "{}", rose(&r));
    assert_eq!(out_sport(&r.out), Some(first_port), "one-port pool: the same port, another backend");
    let new_mac: [u8; 6] = r.out[0..6].try_into().unwrap();
    assert_ne!(new_mac, first_mac);
    let new_backend: &str = if new_mac == BMAC { B } else { "198.18.0.42" };
    // Complete the handshake with the new backend: ESTABLISHED (900 s).
    let mut h = etherparse::TcpHeader::new(80, first_port, 9000, 64240);
    h.syn = true;
    h.ack = true;
    h.acknowledgment_number = 0x1000_0001;
    run(&lb, "new backend SYN-ACK", &Pkt::new(new_backend, S, L4::Tcp(h), b"").macs(LB_MAC, new_mac).frame());
    run(&lb, "X ACK", &client_ack(9001));
    // The old flow (SYN_SENT, 1 s) expires; the new one does not.
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(lb.dp.sweep_nat(0).unwrap(), 1, "the old, expired flow is freed");
    let r = run(&lb, "X data after the sweep", &client_ack(9001));
    assert_eq!(r.action, XDP_TX, "{}", rose(&r));
    assert!(stat_rose(&r, "flow_hit"), "X's live flow must still be found: {}", rose(&r));
    assert_eq!(out_sport(&r.out), Some(first_port), "X keeps its port");
}
