//! Packets that lie (root, BPF_PROG_TEST_RUN through tests/common's fixture
//! runner): length fields that disagree with the frame, padding after the
//! datagram, an IPv6 header whose version is not 6. Each case failed before
//! its fix (found by fuzzing the configured program).
//!
//! cargo test --release --test lying_packets -- --test-threads=1

mod common;

use common::*;
use etherparse::{icmpv4, Icmpv4Type};

const C4: &str = "10.1.2.3";
const C6: &str = "2001:db8::7";
const TUN: &str = "198.18.0.110";
const TUN_S: &str = "198.18.0.50";
const TUN_B: &str = "198.18.0.51";
const TUN_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
const TUN6: &str = "2001:2::110";
const WEB: &str = "198.18.0.100";
const WEB_S: &str = "198.18.0.10";
const WEB_B: &str = "198.18.0.11";
const WEB_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const CONFIG: &str = r#"
[conntrack]
size = 4096
[maglev]
table_size = 65537

[[vip]]
name = "nat-web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.10"
source_ports = [20000, 29999]
[[vip.backend]]
address = "198.18.0.11"
port = 8080
mac = "02:00:00:00:00:0b"

[[vip]]
name = "tun4"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.0.50"
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"

[[vip]]
name = "tun6"
address = "2001:2::110"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "2001:2::50"
[[vip.backend]]
address = "2001:2::51"
mac = "02:00:00:00:06:33"
"#;

fn lb() -> Option<Lb> {
    if !require_root("BPF fixtures (lying packets)") {
        return None;
    }
    Some(load(CONFIG))
}

/// Overwrite the IPv4 total length (frame offset 16) without fixing anything else.
fn with_ipv4_len(mut f: Vec<u8>, len: u16) -> Vec<u8> {
    f[16..18].copy_from_slice(&len.to_be_bytes());
    f
}

#[test]
fn tunnel_wraps_the_datagram_not_the_padding() {
    let Some(lb) = lb() else { return };
    // A 40-byte SYN in a frame with 20 bytes of padding after it (a short
    // frame padded to the Ethernet minimum, plus some).
    let inner = Pkt::new(C4, TUN, syn(40100, 80), b"");
    let mut padded = inner.frame();
    padded.extend_from_slice(&[0xee; 20]);
    let want = ipip(&inner, TUN_S, TUN_B, TUN_BMAC).frame();
    run_table(
        &lb,
        &[Case::new(
            "padded SYN to a tunnel VIP: outer length = the datagram + 20, padding cut",
            padded,
            XDP_TX,
            Some(want),
            &["xdp_tx", "flow_new"],
        )],
    );
}

#[test]
fn tunnel_never_believes_a_length_longer_than_the_frame() {
    let Some(lb) = lb() else { return };
    let syn4 = Pkt::new(C4, TUN, syn(40101, 80), b"0123456789").frame();
    let syn6 = Pkt::new(C6, TUN6, syn(40102, 80), b"0123456789").frame();
    let mut syn6_long = syn6.clone();
    syn6_long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    run_table(
        &lb,
        &[
            // Was: encapsulated with an outer length of 1020 around 60 bytes.
            Case::new(
                "IPv4 claiming 1000 bytes in a 64-byte frame",
                with_ipv4_len(syn4.clone(), 1000),
                XDP_PASS,
                None,
                &["xdp_pass", "pass_truncated"],
            ),
            // Was: answered with an ICMP frag-needed larger than the trigger.
            Case::new(
                "IPv4 claiming 1600 bytes (above the MTU) in a 64-byte frame",
                with_ipv4_len(syn4.clone(), 1600),
                XDP_PASS,
                None,
                &["xdp_pass", "pass_truncated"],
            ),
            Case::new("IPv6 claiming 1000 payload bytes", syn6_long, XDP_PASS, None, &["xdp_pass", "pass_truncated"]),
            Case::new(
                "IPv4 total length shorter than its own header",
                with_ipv4_len(syn4.clone(), 12),
                XDP_PASS,
                None,
                &["xdp_pass", "pass_malformed"],
            ),
            Case::new(
                "IPv4 total length ends inside the TCP header",
                with_ipv4_len(syn4, 30),
                XDP_PASS,
                None,
                &["xdp_pass", "pass_malformed"],
            ),
        ],
    );
}

#[test]
fn a_solicitation_whose_version_is_not_6_is_not_answered() {
    let Some(lb) = lb() else { return };
    let client: std::net::Ipv6Addr = C6.parse().unwrap();
    let vip: std::net::Ipv6Addr = TUN6.parse().unwrap();
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&CLIENT_MAC);
    let sum = {
        let mut pseudo = client.octets().to_vec();
        pseudo.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0x01, 0x10]);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        !ones_sum(&[&pseudo, &icmp])
    };
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let frame = |version: u8| {
        let mut f = vec![0x33, 0x33, 0xff, 0, 0x01, 0x10];
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&[0x86, 0xdd, version << 4, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&client.octets());
        f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0x01, 0x10]);
        f.extend_from_slice(&icmp);
        f
    };
    // The same solicitation with version 6 is answered (the cases below
    // differ from it in the version nibble alone).
    let r = run(&lb, "well-formed NS", &frame(6));
    assert_eq!((r.action, r.out.get(14 + 40).copied()), (XDP_TX, Some(136)), "an NA expected: {}", rose(&r));
    run_table(
        &lb,
        &[
            // Not answered; sent to a multicast MAC and not a valid NDP
            // message, it passes as an L2 group frame before any IP parsing.
            Case::new("NS with IP version 4 in an IPv6 frame", frame(4), XDP_PASS, None, &["xdp_pass", "pass_l2_group"]),
            Case::new("NS with IP version 7", frame(7), XDP_PASS, None, &["xdp_pass", "pass_l2_group"]),
        ],
    );
}

/// An ICMP error about a NAT flow whose IP datagram ends before the frame
/// does: the bytes after it (padding that happens to sit where the quoted
/// TCP checksum would be) are not part of the error and stay as they are.
#[test]
fn nat_icmp_leaves_the_bytes_after_the_datagram_alone() {
    let Some(lb) = lb() else { return };
    let client = Pkt::new(C4, WEB, syn(40200, 80), b"");
    let r = run(&lb, "NAT SYN", &client.frame());
    assert_eq!(r.action, XDP_TX, "the SYN opens a NAT flow: {}", rose(&r));
    let port = out_sport(&r.out).expect("SNAT port");
    // The packet weir sent to the backend, as a router would quote it: IP
    // header + the first 8 bytes of TCP (ports and sequence number).
    let sent = client.clone().macs(WEB_BMAC, LB_MAC).addrs(WEB_S, WEB_B).ports(port, 8080).frame();
    let frag_needed =
        L4::Icmp4(Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        }));
    let err = Pkt::new(WEB_B, WEB_S, frag_needed.clone(), &sent[14..14 + 28]).macs(LB_MAC, WEB_BMAC);
    let mut frame = err.frame();
    let padding = [0xab; 24];
    frame.extend_from_slice(&padding);
    // What the client must get: the error about its own packet, from the
    // VIP, and the padding untouched.
    let quoted_then = client.clone().frame();
    let mut want = Pkt::new(WEB_B, C4, frag_needed, &quoted_then[14..14 + 28])
        .addrs(WEB, C4)
        .macs(CLIENT_MAC, LB_MAC)
        .frame();
    want.extend_from_slice(&padding);
    check(&lb, "frag-needed quoting 8 bytes of TCP, with padding after it", &frame, XDP_TX, Some(&want), &[
        "xdp_tx",
        "nat_icmp",
    ]);
}


/// Too-big answers go to whatever source a packet claims: at most a burst
/// of 50, then 1000 per second, per CPU (the kernel's own ICMP budget).
#[test]
fn icmp_too_big_answers_are_rate_limited() {
    let Some(lb) = lb() else { return };
    pin_to_cpu(0);
    let big = Pkt::new(C4, TUN, syn(40300, 80), &[0x5a; 1460]).frame();
    let before = lb.counters();
    for _ in 0..200 {
        let (action, _) = lb.dp.run(&big).expect("test_run");
        assert!(action == XDP_TX || action == XDP_DROP, "{}", action_name(action));
    }
    let after = lb.counters();
    let sent = after[stat("icmp_too_big")] - before[stat("icmp_too_big")];
    let dropped = after[stat("drop_tunnel_mtu")] - before[stat("drop_tunnel_mtu")];
    println!("200 oversized DF packets: {sent} too-big answers, {dropped} dropped unanswered");
    assert_eq!(sent + dropped, 200);
    // 200 test_run calls take well under 100 ms: at most 50 + 100 refills.
    assert!((50..150).contains(&sent), "{sent} answers: the budget is not applied");
    assert!(dropped > 0);
}
