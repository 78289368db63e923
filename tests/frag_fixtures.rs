//! IP fragments to VIPs (bpf/frag.h) through BPF_PROG_TEST_RUN (root): in
//! order and out of order, DSR, tunnel and NAT, IPv4 and IPv6. Every
//! expected fragment is cut here from a whole datagram built with etherparse
//! (the translated one for NAT, so the first fragment's UDP checksum is the
//! whole datagram's), compared byte for byte, and the outputs are then
//! reassembled here and every checksum verified over the whole datagram.

mod common;

use common::*;
use etherparse::Icmpv4Type;

const C4: &str = "10.1.2.3";
const C6: &str = "2001:db8::7";

const CONFIG: &str = r#"
[conntrack]
size = 4096

[[vip]]
name = "dsr4"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"

[[vip]]
name = "tun4"
address = "198.18.0.110"
port = 53
protocol = "udp"
mode = "tunnel"
source_address = "198.18.0.50"
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"
[[vip.backend]]
address = "198.18.0.52"
mac = "02:00:00:00:00:34"

[[vip]]
name = "nat4"
address = "198.18.0.120"
port = 53
protocol = "udp"
mode = "nat"
source_address = "198.18.0.20"
source_ports = [30000, 30999]
[[vip.backend]]
address = "198.18.0.21"
port = 5353
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
port = 5353
mac = "02:00:00:00:00:16"

[[vip]]
name = "sh4"
address = "198.18.0.130"
port = 53
protocol = "udp"
scheduler = "source-hash"
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:00:1f"
[[vip.backend]]
address = "198.18.0.32"
mac = "02:00:00:00:00:20"
[[vip.backend]]
address = "198.18.0.33"
mac = "02:00:00:00:00:21"

[[vip]]
name = "dsr6"
address = "2001:2::100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
[[vip.backend]]
address = "2001:2::12"
mac = "02:00:00:00:06:0c"

[[vip]]
name = "tun6"
address = "2001:2::110"
port = 53
protocol = "udp"
mode = "tunnel"
source_address = "2001:2::50"
[[vip.backend]]
address = "2001:2::51"
mac = "02:00:00:00:06:33"

[[vip]]
name = "nat6"
address = "2001:2::120"
port = 53
protocol = "udp"
mode = "nat"
source_address = "2001:2::20"
source_ports = [30000, 30999]
[[vip.backend]]
address = "2001:2::21"
mac = "02:00:00:00:06:15"

# Two UDP VIPs on one address: a fragment without ports could be either's.
[[vip]]
name = "two-a"
address = "198.18.0.140"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.41"
mac = "02:00:00:00:00:29"
[[vip]]
name = "two-b"
address = "198.18.0.140"
port = 54
protocol = "udp"
[[vip.backend]]
address = "198.18.0.42"
mac = "02:00:00:00:00:2a"

[[vip]]
name = "nat-tcp"
address = "198.18.0.150"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.20"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
"#;

const DSR4: usize = 0;
const TUN4: usize = 1;
const SH4: usize = 3;
const DSR6: usize = 4;

/// 2,400 bytes of UDP payload: three fragments of 1,000 / 1,000 / 408 bytes.
fn payload() -> Vec<u8> {
    (0..2400u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// A whole UDP datagram from the client (IPv4 without DF, ID `id`).
fn dgram(src: &str, dst: &str, sport: u16, dport: u16, id: u16) -> Pkt {
    Pkt::new(src, dst, udp_l4(sport, dport, true), &payload()).ip_fields(0x28, id, false, 60)
}

/// `p`'s frame cut into fragments of `chunk` payload bytes (a multiple of
/// 8), in order. IPv6 gets a Fragment header with identification `id6`.
fn fragments(p: &Pkt, chunk: usize, id6: u32) -> Vec<Vec<u8>> {
    let f = p.frame();
    let (eth, ip) = f.split_at(14);
    let v4 = ip[0] >> 4 == 4;
    let hl = if v4 { usize::from(ip[0] & 0x0f) * 4 } else { 40 };
    let body = &ip[hl..];
    let mut out = Vec::new();
    for (i, c) in body.chunks(chunk).enumerate() {
        let off = i * chunk;
        let more = off + c.len() < body.len();
        let mut h = ip[..hl].to_vec();
        if v4 {
            h[2..4].copy_from_slice(&((hl + c.len()) as u16).to_be_bytes());
            h[6..8].copy_from_slice(&((off / 8) as u16 | if more { 0x2000 } else { 0 }).to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let s = fixture::ones_sum(&[&h]);
            h[10..12].copy_from_slice(&(!s).to_be_bytes());
        } else {
            h[4..6].copy_from_slice(&((8 + c.len()) as u16).to_be_bytes());
            h[6] = 44;
            h.push(ip[6]);
            h.push(0);
            h.extend_from_slice(&(((off / 8) as u16) << 3 | u16::from(more)).to_be_bytes());
            h.extend_from_slice(&id6.to_be_bytes());
        }
        let mut fr = eth.to_vec();
        fr.extend_from_slice(&h);
        fr.extend_from_slice(c);
        out.push(fr);
    }
    out
}

/// The tunnel VIP's outer frame around a fragment (docs/nat-tunnel.md):
/// outer ID 0, TTL 64, the inner TOS / traffic class, DF as the inner.
fn wrapped(frag: &[u8], s: &str, b: &str, bmac: [u8; 6]) -> Vec<u8> {
    let inner = &frag[14..];
    let v4 = inner[0] >> 4 == 4;
    let mut o = Pkt::new(s, b, L4::Raw(if v4 { 4 } else { 41 }), inner).macs(bmac, LB_MAC);
    o.tos = if v4 { inner[1] } else { (inner[0] << 4) | (inner[1] >> 4) };
    o.id = 0;
    o.df = v4 && inner[6] & 0x40 != 0;
    o.ttl = 64;
    o.flow = 0;
    o.frame()
}

fn ips<'a>(outs: &'a [Vec<u8>], strip: usize) -> Vec<&'a [u8]> {
    outs.iter().map(|o| &o[strip..]).collect()
}

const FIRST: &[&str] = &["xdp_tx", "flow_new", "frag_balanced", "frag_tracked"];
const LATER: &[&str] = &["xdp_tx", "frag_balanced"];
const EARLY: &[&str] = &["xdp_tx", "frag_early", "frag_balanced"];

/// A client port whose flow's backend differs from the backend an early
/// fragment of datagram `id` gets, so the tests can see who decided.
fn port_where_they_differ(lb: &Lb, vip: usize, c: &str, v: &str, id: &[u8]) -> u16 {
    let (c, v) = (ip(c), ip(v));
    let early = lb.ring_mac(vip, frag_hash(c, v, id, 17));
    (40000..41000).find(|p| lb.ring_mac(vip, flow_hash(c, v, *p, 53, 17)) != early).expect("a port")
}

#[test]
fn dsr_in_order_and_out_of_order() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    for (vip, c, v, ipv6) in [(DSR4, C4, "198.18.0.100", false), (DSR6, C6, "2001:2::100", true)] {
        let fam = if ipv6 { "IPv6" } else { "IPv4" };
        // In order: the first fragment is balanced like its flow, the rest follow.
        let id = 0x1111u16;
        let id6 = 0x0101_1111u32;
        let idb = if ipv6 { id6.to_be_bytes().to_vec() } else { id.to_be_bytes().to_vec() };
        let sport = port_where_they_differ(&lb, vip, c, v, &idb);
        let d = dgram(c, v, sport, 53, id);
        let mac = lb.ring_mac(vip, flow_hash(ip(c), ip(v), sport, 53, 17));
        let want = fragments(&d.clone().macs(mac, LB_MAC), 1000, id6);
        let mut outs = Vec::new();
        for (i, f) in fragments(&d, 1000, id6).iter().enumerate() {
            let counters = if i == 0 { FIRST } else { LATER };
            outs.push(check(&lb, &format!("{fam} DSR in order, fragment {i}"), f, XDP_TX, Some(&want[i]), counters));
        }
        reassemble(&format!("{fam} DSR in order"), &ips(&outs, 14));

        // Out of order (last, first, middle): the last places the datagram
        // by (src, dst, ID); the first follows it, not its flow's pick.
        let id = 0x2222u16;
        let id6 = 0x0202_2222u32;
        let idb = if ipv6 { id6.to_be_bytes().to_vec() } else { id.to_be_bytes().to_vec() };
        let sport = port_where_they_differ(&lb, vip, c, v, &idb);
        let d = dgram(c, v, sport, 53, id);
        let early = lb.ring_mac(vip, frag_hash(ip(c), ip(v), &idb, 17));
        assert_ne!(early, lb.ring_mac(vip, flow_hash(ip(c), ip(v), sport, 53, 17)));
        let want = fragments(&d.clone().macs(early, LB_MAC), 1000, id6);
        let frags = fragments(&d, 1000, id6);
        let mut outs = Vec::new();
        for (i, counters) in [(2, EARLY), (0, LATER), (1, LATER)] {
            outs.push(check(&lb, &format!("{fam} DSR out of order, fragment {i}"), &frags[i], XDP_TX, Some(&want[i]), counters));
        }
        reassemble(&format!("{fam} DSR out of order"), &ips(&outs, 14));
    }
}

#[test]
fn tunnel_each_fragment_encapsulated() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    // IPv4, in order and out of order.
    for (id, order) in [(0x3333u16, [0usize, 1, 2]), (0x3334, [1, 2, 0])] {
        let idb = id.to_be_bytes();
        let d = dgram(C4, "198.18.0.110", 40100, 53, id);
        let frags = fragments(&d, 1000, 0);
        let mac = if order[0] == 0 {
            lb.ring_mac(TUN4, flow_hash(ip(C4), ip("198.18.0.110"), 40100, 53, 17))
        } else {
            lb.ring_mac(TUN4, frag_hash(ip(C4), ip("198.18.0.110"), &idb, 17))
        };
        let b = if mac == [2, 0, 0, 0, 0, 0x33] { "198.18.0.51" } else { "198.18.0.52" };
        let mut outs = Vec::new();
        for (n, i) in order.iter().enumerate() {
            let counters = match (n, order[0] == 0) {
                (0, true) => FIRST,
                (0, false) => EARLY,
                _ => LATER,
            };
            let want = wrapped(&frags[*i], "198.18.0.50", b, mac);
            outs.push(check(&lb, &format!("IPIP fragment {i} (order {order:?})"), &frags[*i], XDP_TX, Some(&want), counters));
        }
        reassemble(&format!("IPIP order {order:?}"), &ips(&outs, 14 + 20));
    }
    // IPv6, out of order.
    let d = dgram(C6, "2001:2::110", 40101, 53, 0);
    let frags = fragments(&d, 1000, 0x0303_0303);
    let mut outs = Vec::new();
    for (i, counters) in [(1, EARLY), (2, LATER), (0, LATER)] {
        let want = wrapped(&frags[i], "2001:2::50", "2001:2::51", [2, 0, 0, 0, 6, 0x33]);
        outs.push(check(&lb, &format!("IP6IP6 fragment {i}"), &frags[i], XDP_TX, Some(&want), counters));
    }
    reassemble("IP6IP6 out of order", &ips(&outs, 14 + 40));
}

/// NAT: addresses in every fragment, ports and the UDP checksum (over the
/// whole datagram) in the first; the reply's fragments follow its first
/// back to the client.
#[test]
fn nat_forward_and_reply_fragments() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let nat_mac = |b: &str| if b.ends_with(".21") { [2, 0, 0, 0, 0, 0x15] } else { [2, 0, 0, 0, 0, 0x16] };
    // In order.
    let d = dgram(C4, "198.18.0.120", 40200, 53, 0x4444);
    let frags = fragments(&d, 1000, 0);
    let r = run(&lb, "NAT first fragment", &frags[0]);
    assert_eq!(r.action, XDP_TX, "NAT first fragment: {} ({})", action_name(r.action), rose(&r));
    let port = out_sport(&r.out).unwrap();
    assert!((30000..=30999).contains(&port), "SNAT port {port}");
    let b = if r.out[30..34] == [198, 18, 0, 21] { "198.18.0.21" } else { "198.18.0.22" };
    let want = fragments(&d.clone().macs(nat_mac(b), LB_MAC).addrs("198.18.0.20", b).ports(port, 5353), 1000, 0);
    expect("NAT first fragment", &r, &frags[0], XDP_TX, Some(&want[0]), FIRST);
    let mut outs = vec![r.out];
    for i in 1..3 {
        outs.push(check(&lb, &format!("NAT fragment {i}"), &frags[i], XDP_TX, Some(&want[i]), LATER));
    }
    reassemble("NAT forward", &ips(&outs, 14));

    // The backend's 2,400-byte answer, fragmented: back to the client.
    let ans = Pkt::new(b, "198.18.0.20", udp_l4(5353, port, true), &payload())
        .macs(LB_MAC, nat_mac(b))
        .ip_fields(0, 0x5555, false, 64);
    let afr = fragments(&ans, 1000, 0);
    let back = fragments(&ans.clone().macs(CLIENT_MAC, LB_MAC).addrs("198.18.0.120", C4).ports(53, 40200), 1000, 0);
    let mut outs = Vec::new();
    for i in 0..3 {
        let counters: &[&str] =
            if i == 0 { &["xdp_tx", "nat_reply", "frag_balanced", "frag_tracked"] } else { &["xdp_tx", "nat_reply", "frag_balanced"] };
        outs.push(check(&lb, &format!("NAT reply fragment {i}"), &afr[i], XDP_TX, Some(&back[i]), counters));
    }
    reassemble("NAT reply", &ips(&outs, 14));
    // A reply's later fragment before its first: not ours to place (the
    // kernel gets it).
    let ans2 = ans.clone().ip_fields(0, 0x5556, false, 64);
    check(&lb, "NAT reply, later fragment first", &fragments(&ans2, 1000, 0)[2], XDP_PASS, None, &["xdp_pass", "pass_fragment"]);

    // Out of order: the last fragment places the datagram; the first makes
    // the NAT flow to that backend.
    let d = dgram(C4, "198.18.0.120", 40201, 53, 0x4445);
    let idb = 0x4445u16.to_be_bytes();
    let frags = fragments(&d, 1000, 0);
    let early = lb.ring_mac(2, frag_hash(ip(C4), ip("198.18.0.120"), &idb, 17));
    let b = if early == [2, 0, 0, 0, 0, 0x15] { "198.18.0.21" } else { "198.18.0.22" };
    let any_port = fragments(&d.clone().macs(early, LB_MAC).addrs("198.18.0.20", b).ports(30000, 5353), 1000, 0);
    let o2 = check(&lb, "NAT out of order, fragment 2", &frags[2], XDP_TX, Some(&any_port[2]), EARLY);
    let r = run(&lb, "NAT out of order, fragment 0", &frags[0]);
    let port = out_sport(&r.out).unwrap_or(0);
    let want = fragments(&d.clone().macs(early, LB_MAC).addrs("198.18.0.20", b).ports(port, 5353), 1000, 0);
    expect("NAT out of order, fragment 0", &r, &frags[0], XDP_TX, Some(&want[0]), &["xdp_tx", "flow_new", "frag_balanced"]);
    let o1 = check(&lb, "NAT out of order, fragment 1", &frags[1], XDP_TX, Some(&want[1]), LATER);
    reassemble("NAT out of order", &[&r.out[14..], &o1[14..], &o2[14..]]);

    // IPv6 NAT, in order.
    let d = dgram(C6, "2001:2::120", 40202, 53, 0);
    let frags = fragments(&d, 1000, 0x0606_0606);
    let r = run(&lb, "NAT6 first fragment", &frags[0]);
    // UDP after the 40-byte header and the 8-byte Fragment header.
    let port = u16::from_be_bytes([r.out[62], r.out[63]]);
    assert!((30000..=30999).contains(&port), "SNAT port {port}");
    let want = fragments(&d.clone().macs([2, 0, 0, 0, 6, 0x15], LB_MAC).addrs("2001:2::20", "2001:2::21").ports(port, 53), 1000, 0x0606_0606);
    expect("NAT6 first fragment", &r, &frags[0], XDP_TX, Some(&want[0]), FIRST);
    let mut outs = vec![r.out];
    for i in 1..3 {
        outs.push(check(&lb, &format!("NAT6 fragment {i}"), &frags[i], XDP_TX, Some(&want[i]), LATER));
    }
    reassemble("NAT6 forward", &ips(&outs, 14));
}

/// A source-hash VIP places an early fragment exactly where its flow goes.
#[test]
fn source_hash_early_fragment_is_the_flows_backend() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let d = dgram(C4, "198.18.0.130", 40300, 53, 0x7777);
    let mac = lb.ring_mac(SH4, source_hash(ip(C4)));
    let want = fragments(&d.clone().macs(mac, LB_MAC), 1000, 0);
    let frags = fragments(&d, 1000, 0);
    check(&lb, "source hash, fragment 2 first", &frags[2], XDP_TX, Some(&want[2]), EARLY);
    check(&lb, "source hash, fragment 0", &frags[0], XDP_TX, Some(&want[0]), LATER);
    // A whole datagram of the same flow: the same backend.
    let whole = Pkt::new(C4, "198.18.0.130", udp_l4(40300, 53, true), b"small");
    check(&lb, "source hash, a whole datagram after", &whole.frame(), XDP_TX, Some(&whole.clone().macs(mac, LB_MAC).frame()), &["xdp_tx", "flow_new"]);
}

/// What is not placed blind, and what is not ours.
#[test]
fn refusals_and_passes() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let two = fragments(&dgram(C4, "198.18.0.140", 40400, 53, 0x8888), 1000, 0);
    check(&lb, "early fragment, two UDP VIPs on the address", &two[1], XDP_DROP, None, &["xdp_drop", "drop_frag_unresolved"]);
    // Its first fragment has the port: balanced, and the rest follow.
    check(&lb, "first fragment, two UDP VIPs on the address", &two[0], XDP_TX, Some(&with_macs(&two[0], [2, 0, 0, 0, 0, 0x29], LB_MAC)), FIRST);
    check(&lb, "later fragment after it", &two[2], XDP_TX, Some(&with_macs(&two[2], [2, 0, 0, 0, 0, 0x29], LB_MAC)), LATER);

    // TCP to a NAT VIP: only a SYN opens a flow; a fragment is not placed blind.
    let tcp = Pkt::new(C4, "198.18.0.150", syn(40401, 80), &payload()).ip_fields(0, 0x9999, false, 64);
    check(&lb, "early TCP fragment to a NAT VIP", &fragments(&tcp, 1000, 0)[1], XDP_DROP, None, &["xdp_drop", "drop_frag_unresolved"]);

    // A VIP is served on its own VLAN only: a tagged later fragment for an
    // untagged VIP is the kernel's, and makes no entry.
    let tagged = with_vlan_tag(&fragments(&dgram(C4, "198.18.0.100", 40405, 53, 0xabab), 1000, 0)[1], 0x8100, 7);
    check(&lb, "later fragment on another VLAN", &tagged, XDP_PASS, None, &["xdp_pass", "pass_vlan"]);

    let other = fragments(&dgram(C4, "198.18.0.99", 40402, 53, 0xaaaa), 1000, 0);
    check(&lb, "later fragment to a non-VIP", &other[1], XDP_PASS, None, &["xdp_pass", "pass_fragment"]);
    check(&lb, "first fragment to a non-VIP", &other[0], XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);

    // An IPv6 atomic fragment (offset 0, M clear) is a whole datagram.
    let small = Pkt::new(C6, "2001:2::100", udp_l4(40403, 53, true), b"atomic");
    let mut atomic = fragments(&small, 1000, 0x0707_0707).remove(0);
    assert_eq!(&atomic[56..58], &[0, 0], "offset 0, M clear");
    let mac = lb.ring_mac(DSR6, flow_hash(ip(C6), ip("2001:2::100"), 40403, 53, 17));
    let want = with_macs(&atomic, mac, LB_MAC);
    check(&lb, "IPv6 atomic fragment", &atomic, XDP_TX, Some(&want), &["xdp_tx", "flow_new"]);
    // ... and a Fragment header with reserved bits set is malformed.
    atomic[57] |= 0x02;
    check(&lb, "IPv6 Fragment header with reserved bits", &atomic, XDP_PASS, None, &["xdp_pass", "pass_malformed"]);

    // A big ping to an address with one VIP (its datagram goes to that
    // VIP's backend: the backend answers it, the frame is too big for XDP to).
    let ping = Pkt::new(C4, "198.18.0.110", L4::Icmp4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 })), &payload())
        .ip_fields(0, 0xbbbb, false, 64);
    let pf = fragments(&ping, 1000, 0);
    let mac = lb.ring_mac(TUN4, frag_hash(ip(C4), ip("198.18.0.110"), &0xbbbbu16.to_be_bytes(), 1));
    let b = if mac == [2, 0, 0, 0, 0, 0x33] { "198.18.0.51" } else { "198.18.0.52" };
    let mut outs = Vec::new();
    for (i, counters) in [(0, EARLY), (1, LATER), (2, LATER)] {
        outs.push(check(&lb, &format!("big ping fragment {i}"), &pf[i], XDP_TX, Some(&wrapped(&pf[i], "198.18.0.50", b, mac)), counters));
    }
    reassemble("big ping through the tunnel", &ips(&outs, 34));
    // A big ping to an address with two VIPs: the kernel's, as before.
    let ping = ping.addrs(C4, "198.18.0.140");
    check(&lb, "big ping, several VIPs", &fragments(&ping, 1000, 0)[0], XDP_PASS, None, &["xdp_pass", "pass_fragment"]);

    // A tunnel fragment whose encapsulation would exceed the MTU (1500):
    // IPv4 fragments carry no DF; weir does not fragment: dropped, counted.
    let big = dgram(C4, "198.18.0.110", 40404, 53, 0xcccc);
    let bf = fragments(&big, 1480, 0);
    assert_eq!(bf[0].len(), 14 + 1500);
    // (Its flow and datagram entry were made before the send path refused
    // it, as for any tunnel packet above the MTU.)
    check(&lb, "tunnel fragment of 1500 bytes", &bf[0], XDP_DROP, None, &[
        "xdp_drop",
        "drop_tunnel_mtu",
        "flow_new",
        "frag_tracked",
        "frag_balanced",
    ]);
}

/// The backend a datagram was sent to leaves before its last fragment.
#[test]
fn backend_gone_between_fragments() {
    if !require_root("fragment fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let d = dgram(C4, "198.18.0.100", 40500, 53, 0xdddd);
    let frags = fragments(&d, 1000, 0);
    let r = run(&lb, "first fragment", &frags[0]);
    assert_eq!(r.action, XDP_TX);
    let b = lb.plan.vips[DSR4].backends.iter().find(|b| lb.hops[&b.id].mac == r.out[..6]).unwrap();
    expect("first fragment", &r, &frags[0], XDP_TX, Some(&with_macs(&frags[0], lb.hops[&b.id].mac, LB_MAC)), FIRST);
    lb.dp.remove_backend(b.id).unwrap();
    check(&lb, "later fragment, backend gone", &frags[1], XDP_DROP, None, &["xdp_drop", "drop_frag_backend_gone"]);
}

fn small_config(extra: &str) -> String {
    format!(
        "{extra}\n[[vip]]\nname = \"d\"\naddress = \"198.18.0.100\"\nport = 53\nprotocol = \"udp\"\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n"
    )
}

#[test]
fn table_full_timeout_sweep_and_off() {
    if !require_root("fragment fixtures") {
        return;
    }
    let to = [2, 0, 0, 0, 0, 0x0b];
    // Two datagrams in flight at most: the third is dropped, never split.
    let lb = load(&small_config("[fragments]\nmax_datagrams = 2\ntimeout_ms = 50"));
    for (n, id) in [0x10u16, 0x11].iter().enumerate() {
        let f = fragments(&dgram(C4, "198.18.0.100", 40600 + n as u16, 53, *id), 1000, 0);
        let counters: &[&str] = if n == 0 { FIRST } else { &["xdp_tx", "flow_new", "frag_balanced", "frag_tracked"] };
        check(&lb, &format!("datagram {n}"), &f[0], XDP_TX, Some(&with_macs(&f[0], to, LB_MAC)), counters);
    }
    let f = fragments(&dgram(C4, "198.18.0.100", 40602, 53, 0x12), 1000, 0);
    check(&lb, "a third datagram, table full", &f[1], XDP_DROP, None, &["xdp_drop", "drop_frag_table_full"]);
    // Past the timeout an entry is reused by a new datagram with its ID ...
    std::thread::sleep(std::time::Duration::from_millis(80));
    let again = fragments(&dgram(C4, "198.18.0.100", 40600, 53, 0x10), 1000, 0);
    check(&lb, "same ID after the timeout", &again[2], XDP_TX, Some(&with_macs(&again[2], to, LB_MAC)), &["xdp_tx", "frag_early", "frag_expired", "frag_balanced"]);
    // ... and the sweep frees the other.
    std::thread::sleep(std::time::Duration::from_millis(80));
    let before = lb.counters()[stat("frag_expired")];
    let freed = lb.dp.sweep_frags().unwrap();
    assert_eq!(freed, 2, "both entries expired");
    assert_eq!(lb.counters()[stat("frag_expired")] - before, 2);
    check(&lb, "room again", &f[1], XDP_TX, Some(&with_macs(&f[1], to, LB_MAC)), EARLY);

    // [fragments] enabled = false: every fragment to the kernel, as before.
    let off = load(&small_config("[fragments]\nenabled = false"));
    let f = fragments(&dgram(C4, "198.18.0.100", 40603, 53, 0x13), 1000, 0);
    check(&off, "first fragment, fragments off", &f[0], XDP_PASS, None, &["xdp_pass", "pass_fragment"]);
    check(&off, "later fragment, fragments off", &f[1], XDP_PASS, None, &["xdp_pass", "pass_fragment"]);
}

/// Two datagrams from one client to two VIPs of one address (ports 53 and
/// 5353) that carry the same IP ID: the second's first fragment must not
/// follow the first datagram's entry to the other VIP's backend (found by
/// the fuzzer). It is dropped as unresolved; the first datagram's later
/// fragments still follow theirs.
#[test]
fn a_first_fragment_never_follows_another_vips_datagram() {
    if !require_root("fragment fixtures") {
        return;
    }
    let cfg = format!(
        "{}\n[[vip]]\nname = \"e\"\naddress = \"198.18.0.100\"\nport = 5353\nprotocol = \"udp\"\n\
         [[vip.backend]]\naddress = \"198.18.0.12\"\nmac = \"02:00:00:00:00:0c\"\n",
        small_config("")
    );
    let lb = load(&cfg);
    let a = dgram(C4, "198.18.0.100", 40000, 53, 0x4242);
    let b = dgram(C4, "198.18.0.100", 40001, 5353, 0x4242);
    let fa = fragments(&a, 1000, 0);
    let fb = fragments(&b, 1000, 0);
    let mac_a = [0x02, 0, 0, 0, 0, 0x0b];
    check(&lb, "datagram A's first fragment (VIP d)", &fa[0], XDP_TX, Some(&fragments(&a.clone().macs(mac_a, LB_MAC), 1000, 0)[0]), FIRST);
    check(&lb, "datagram B's first fragment, same ID, VIP e", &fb[0], XDP_DROP, None, &["xdp_drop", "drop_frag_unresolved"]);
    check(&lb, "datagram A's next fragment", &fa[1], XDP_TX, Some(&fragments(&a.clone().macs(mac_a, LB_MAC), 1000, 0)[1]), LATER);
}
