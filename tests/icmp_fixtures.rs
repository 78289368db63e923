//! ICMP to VIPs through BPF_PROG_TEST_RUN (root): errors about a DSR or
//! tunnel backend's reply go to that backend; echo requests are answered
//! (README "ICMP and ping", bpf/icmp.h).
//!
//! Every input and expected frame is built here with etherparse (lengths and
//! checksums computed by etherparse), never derived from the program's
//! output; the checksums of every XDP_TX output are verified once more with
//! an RFC 1071 sum written here. Each case also checks exactly which global
//! counters rose.
//!
//! cargo test --release --test icmp_fixtures -- --test-threads=1

mod common;

use std::net::IpAddr;

use common::*;
use etherparse::{
    icmpv4, icmpv6, EtherType, Ethernet2Header, Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Dscp, Ipv4Ecn,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
};
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{bytes_of, from_bytes, stat_name, Backend, Flow, FlowKey, STAT_COUNT};

const CONFIG: &str = r#"
[maglev]
table_size = 65537

[[vip]]
name = "dsr4"
address = "198.18.0.100"
port = 80
protocol = "tcp"
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
name = "dsr6"
address = "2001:2::100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
[[vip.backend]]
address = "2001:2::12"
mac = "02:00:00:00:06:0c"
[[vip.backend]]
address = "2001:2::13"
mac = "02:00:00:00:06:0d"

[[vip]]
name = "dsr4-udp-any-port"
address = "198.18.0.101"
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"

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
[[vip.backend]]
address = "198.18.0.52"
mac = "02:00:00:00:00:34"

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
[[vip.backend]]
address = "2001:2::52"
mac = "02:00:00:00:06:34"

[[vip]]
name = "rr4"
address = "198.18.0.120"
port = 53
protocol = "udp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:00:1f"
[[vip.backend]]
address = "198.18.0.32"
mac = "02:00:00:00:00:20"

[[vip]]
name = "quiet4"
address = "198.18.0.130"
port = 80
protocol = "tcp"
icmp_echo = false
[[vip.backend]]
address = "198.18.0.41"
mac = "02:00:00:00:00:29"

[[vip]]
name = "quiet6"
address = "2001:2::130"
port = 80
protocol = "tcp"
icmp_echo = false
[[vip.backend]]
address = "2001:2::41"
mac = "02:00:00:00:06:29"

[[vip]]
name = "nat4"
address = "198.18.0.140"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.60"
[[vip.backend]]
address = "198.18.0.61"
mac = "02:00:00:00:00:3d"
"#;

// Indexes of CONFIG's VIPs in the plan.
const DSR4: usize = 0;
const DSR6: usize = 1;
const UDP4: usize = 2;
const TUN4: usize = 3;
const TUN6: usize = 4;

const C4: &str = "10.1.2.3";
const C6: &str = "2001:db8::7";
/// A router on the client's path, the sender of the errors.
const R4: &str = "203.0.113.1";
const R6: &str = "2001:db8:ffff::1";
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An IP header with the fields the cases vary; lengths, protocol and
/// checksum are filled in by etherparse's PacketBuilder.
fn iph(src: &str, dst: &str, ttl: u8, id: u16, df: bool, tos: u8) -> IpHeaders {
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, ttl, IpNumber::TCP, s.octets(), d.octets()).unwrap();
            h.identification = id;
            h.dont_fragment = df;
            h.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
            h.ecn = Ipv4Ecn::try_new(tos & 3).unwrap();
            IpHeaders::Ipv4(h, Default::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(0x2468).unwrap(),
                payload_length: 0,
                next_header: IpNumber::TCP,
                hop_limit: ttl,
                source: s.octets(),
                destination: d.octets(),
            },
            Default::default(),
        ),
        _ => panic!("mixed families"),
    }
}

/// The backend's reply as it left the backend: an IP packet VIP:vport ->
/// client:cport carrying `len` bytes of TCP payload (ACK + PSH).
fn reply_tcp(vip: &str, vport: u16, client: &str, cport: u16, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ip(iph(vip, client, 64, 0x1234, true, 0)).tcp(vport, cport, 0x5000_0000, 502).ack(0x1000_0001).psh();
    let payload = vec![0xa5u8; len];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn reply_udp(vip: &str, vport: u16, client: &str, cport: u16, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ip(iph(vip, client, 64, 0x1235, false, 0)).udp(vport, cport);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x3cu8; len]).unwrap();
    out
}

/// A router's ICMP error (from R4 / R6) to `to`, quoting `quote`, in a
/// frame from the router's MAC. IPv4 errors go with DF clear, TOS 0xc0, as
/// Linux sends them.
fn icmp_error(to: &str, quote: &[u8], t4: Icmpv4Type, t6: Icmpv6Type) -> Vec<u8> {
    let v4 = ip(to).is_ipv4();
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC);
    let mut out = Vec::new();
    if v4 {
        eth.ip(iph(R4, to, 63, 0x7a7a, false, 0xc0)).icmpv4(t4).write(&mut out, quote).unwrap();
    } else {
        eth.ip(iph(R6, to, 63, 0, false, 0)).icmpv6(t6).write(&mut out, quote).unwrap();
    }
    out
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
}

fn too_big(mtu: u32) -> Icmpv6Type {
    Icmpv6Type::PacketTooBig { mtu }
}

/// What a tunnel VIP makes of `frame` (docs/nat-tunnel.md): its IP packet
/// inside IPv4 (protocol 4: TOS and DF of the inner header, ID 0, TTL 64)
/// or IPv6 (next header 41: the inner traffic class, flow label 0, hop
/// limit 64), from `source` to the backend's MAC and address.
fn encapsulated(frame: &[u8], source: &str, backend: &str, bmac: [u8; 6]) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = Vec::new();
    match (ip(source), ip(backend)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (ih, _) = Ipv4Header::from_slice(inner).unwrap();
            let mut h = Ipv4Header::new(inner.len() as u16, 64, IpNumber(4), s.octets(), d.octets()).unwrap();
            h.identification = 0;
            h.dont_fragment = ih.dont_fragment;
            h.dscp = ih.dscp;
            h.ecn = ih.ecn;
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&Ethernet2Header { source: LB_MAC, destination: bmac, ether_type: EtherType::IPV4 }.to_bytes());
            out.extend_from_slice(&h.to_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (ih, _) = Ipv6Header::from_slice(inner).unwrap();
            let h = Ipv6Header {
                traffic_class: ih.traffic_class,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: inner.len() as u16,
                next_header: IpNumber(41),
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            out.extend_from_slice(&Ethernet2Header { source: LB_MAC, destination: bmac, ether_type: EtherType::IPV6 }.to_bytes());
            out.extend_from_slice(&h.to_bytes());
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(inner);
    out
}

fn echo_request(src: &str, dst: &str, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    if ip(src).is_ipv4() {
        eth.ip(iph(src, dst, 57, 0x4321, true, 0)).icmpv4_echo_request(id, seq).write(&mut out, payload).unwrap();
    } else {
        eth.ip(iph(src, dst, 57, 0, false, 0)).icmpv6_echo_request(id, seq).write(&mut out, payload).unwrap();
    }
    out
}

/// The reply weir must send: addresses and MACs swapped, TTL / hop limit
/// 64, IPv4 ID, DF and TOS kept, IPv6 traffic class and flow label kept.
fn echo_reply(vip: &str, client: &str, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
    let mut out = Vec::new();
    if ip(vip).is_ipv4() {
        eth.ip(iph(vip, client, 64, 0x4321, true, 0)).icmpv4_echo_reply(id, seq).write(&mut out, payload).unwrap();
    } else {
        eth.ip(iph(vip, client, 64, 0, false, 0)).icmpv6_echo_reply(id, seq).write(&mut out, payload).unwrap();
    }
    out
}

// ------------------------------------------------ independent checksums ---

/// RFC 1071 one's-complement sum, folded.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for p in parts {
        for ch in p.chunks(2) {
            sum += u64::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Every checksum of an IP packet verifies: the IPv4 header, ICMP /
/// ICMPv6 (with its pseudo-header), and those of an encapsulated packet.
fn verify_ip(what: &str, pkt: &[u8], problems: &mut Vec<String>) {
    let (proto, l4, pseudo): (u8, &[u8], Vec<u8>) = match pkt[0] >> 4 {
        4 => {
            let hl = usize::from(pkt[0] & 15) * 4;
            if ones_sum(&[&pkt[..hl]]) != 0xffff {
                problems.push(format!("{what}: IPv4 header checksum"));
            }
            let tl = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if tl != pkt.len() {
                problems.push(format!("{what}: IPv4 total length {tl}, {} bytes", pkt.len()));
                return;
            }
            (pkt[9], &pkt[hl..], Vec::new())
        }
        6 => {
            let pl = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if pl + 40 != pkt.len() {
                problems.push(format!("{what}: IPv6 payload length {pl}, {} bytes", pkt.len()));
                return;
            }
            let mut ps = pkt[8..40].to_vec();
            ps.extend_from_slice(&(pl as u32).to_be_bytes());
            ps.extend_from_slice(&[0, 0, 0, pkt[6]]);
            (pkt[6], &pkt[40..], ps)
        }
        v => {
            problems.push(format!("{what}: IP version {v}"));
            return;
        }
    };
    match proto {
        1 if ones_sum(&[l4]) != 0xffff => problems.push(format!("{what}: ICMP checksum")),
        58 if ones_sum(&[&pseudo, l4]) != 0xffff => problems.push(format!("{what}: ICMPv6 checksum")),
        4 | 41 => verify_ip(&format!("{what} (inner)"), l4, problems),
        _ => {}
    }
}

// -------------------------------------------------------------- running ---

/// The IP packet of a frame: all after Ethernet, but for the padding of a
/// 60-byte frame (an IPv4 packet shorter than 46 bytes).
fn ip_part(f: &[u8]) -> &[u8] {
    let p = &f[14..];
    if f.len() == 60 && p[0] >> 4 == 4 {
        let tl = usize::from(u16::from_be_bytes([p[2], p[3]]));
        return &p[..tl.min(p.len())];
    }
    p
}

fn load_lb() -> Option<Lb> {
    if !require_root("ICMP BPF fixtures") {
        return None;
    }
    Some(load(CONFIG))
}

/// Run `frame`; check the action, the exact output (None: unchanged), that
/// exactly `counters` rose (by one each), and the output's checksums.
fn check(lb: &Lb, name: &str, frame: &[u8], action: u32, want: Option<&[u8]>, counters: &[&str]) -> Vec<u8> {
    for c in counters {
        stat(c);
    }
    let before = lb.counters();
    let (a, out) = lb.dp.run(frame).unwrap_or_else(|e| panic!("{name}: test_run: {e:#}"));
    let after = lb.counters();
    let mut problems = Vec::new();
    if a != action {
        problems.push(format!("XDP action {} (want {})", action_name(a), action_name(action)));
    }
    let want = want.unwrap_or(frame);
    if out != want {
        problems.push(format!("output differs:\n    want {}\n    got  {}", hex_row(want), hex_row(&out)));
    }
    let mut rose = Vec::new();
    for i in 0..STAT_COUNT {
        let d = after[i].wrapping_sub(before[i]);
        if d != 0 {
            rose.push(format!("{}+{d}", stat_name(i)));
        }
        let expected = u64::from(counters.contains(&stat_name(i)));
        if d != expected {
            problems.push(format!("counter {} rose by {d} (want {expected})", stat_name(i)));
        }
    }
    if action == XDP_TX {
        let mut own = Vec::new();
        verify_ip("expected frame", ip_part(want), &mut own);
        assert!(own.is_empty(), "{name}: the test's own expected frame is inconsistent: {own:?}");
        if a == XDP_TX {
            verify_ip("output", ip_part(&out), &mut problems);
        }
    }
    if !problems.is_empty() {
        panic!("{name}:\n  - {}\n  counters that rose: {}\n  input: {}", problems.join("\n  - "), rose.join(", "), hex_row(frame));
    }
    out
}

const TX_ICMP: &[&str] = &["xdp_tx", "icmp_to_backend"];
const PASSED: &[&str] = &["xdp_pass", "pass_unknown_proto"];
/// An IP length beyond the frame: the parser stops there, before ICMP.
const TRUNCATED: &[&str] = &["xdp_pass", "pass_truncated"];

fn flow_count(lb: &Lb) -> usize {
    lb.dp.skel.maps.flows.keys().count()
}

fn port_be(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

/// Track the client's flow (client -> VIP) on backend `idx` of VIP `vip`,
/// as if an earlier packet had been scheduled there.
fn track(lb: &Lb, vip: usize, client: &str, cport: u16, idx: usize) {
    let v = &lb.plan.vips[vip];
    let (src, family) = weir::dataplane::addr_words(ip(client));
    let (dst, _) = weir::dataplane::addr_words(v.addr);
    let key = FlowKey { src, dst, sport: port_be(cport), dport: port_be(v.port), proto: v.proto.number(), family, ..Default::default() };
    let bid = v.backends[idx].id;
    let be: Backend = from_bytes(&lb.dp.skel.maps.backends.lookup(&bid.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap()).unwrap();
    let f = Flow { backend_id: bid, vip_id: v.id as u16, generation: be.generation };
    lb.dp.skel.maps.flows.update(bytes_of(&key), bytes_of(&f), MapFlags::ANY).unwrap();
}

/// The backend of VIP `vip` the client's tuple hashes to (Maglev), and one
/// other backend's index.
fn hashed(lb: &Lb, vip: usize, client: &str, cport: u16) -> ([u8; 6], usize) {
    let v = &lb.plan.vips[vip];
    let mac = lb.ring_mac(vip, flow_hash(ip(client), v.addr, cport, v.port, v.proto.number()));
    let other = (0..v.backends.len()).find(|i| lb.backend_mac(vip, *i) != mac).unwrap();
    (mac, other)
}

// ---------------------------------------------------------------- cases ---

/// frag-needed / packet-too-big about a DSR backend's reply: to the backend
/// of the tracked flow (not the one the tuple hashes to), the frame
/// unchanged but for its MACs.
#[test]
fn dsr_errors_go_to_the_tracked_flows_backend() {
    let Some(lb) = load_lb() else { return };
    for (vip, vaddr, client, cport) in [(DSR4, "198.18.0.100", C4, 40001), (DSR6, "2001:2::100", C6, 40002)] {
        let (hash_mac, other) = hashed(&lb, vip, client, cport);
        track(&lb, vip, client, cport, other);
        let bmac = lb.backend_mac(vip, other);
        assert_ne!(bmac, hash_mac);
        let reply = reply_tcp(vaddr, 80, client, cport, 1400);
        let hdr = if vip == DSR4 { 20 } else { 40 };
        for (what, quote) in [("IP header + 8 bytes", &reply[..hdr + 8]), ("whole TCP header", &reply[..hdr + 20]), ("576-byte quote", &reply[..548 - hdr])] {
            let err = icmp_error(vaddr, quote, frag_needed(1400), too_big(1400));
            let name = format!("{vaddr}: error quoting the reply ({what}) -> tracked backend");
            check(&lb, &name, &err, XDP_TX, Some(&with_macs(&err, bmac, LB_MAC)), TX_ICMP);
        }
    }
}

/// No tracked flow: the backend Maglev gives the client's tuple, and no
/// flow is made. Other error types of the set, and a port-0 UDP VIP.
#[test]
fn untracked_errors_go_to_the_hashed_backend() {
    let Some(lb) = load_lb() else { return };
    let before = flow_count(&lb);
    for cport in [41000u16, 41001, 41002, 41003, 41004, 41005] {
        let (mac4, _) = hashed(&lb, DSR4, C4, cport);
        let err = icmp_error("198.18.0.100", &reply_tcp("198.18.0.100", 80, C4, cport, 8)[..28], frag_needed(1400), too_big(0));
        check(&lb, &format!("v4 frag-needed, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);
        let ttl = Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit);
        let err = icmp_error("198.18.0.100", &reply_tcp("198.18.0.100", 80, C4, cport, 8)[..28], ttl, too_big(0));
        check(&lb, &format!("v4 time exceeded, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);
        let host = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host);
        let err = icmp_error("198.18.0.100", &reply_tcp("198.18.0.100", 80, C4, cport, 8)[..28], host, too_big(0));
        check(&lb, &format!("v4 host unreachable, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);

        let (mac6, _) = hashed(&lb, DSR6, C6, cport);
        let quote = reply_tcp("2001:2::100", 80, C6, cport, 1200);
        for t6 in [
            too_big(1280),
            Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address),
            Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        ] {
            let err = icmp_error("2001:2::100", &quote[..1232], frag_needed(0), t6);
            check(&lb, &format!("v6 {t6:?}, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac6, LB_MAC)), TX_ICMP);
        }

        // The port-0 UDP VIP: its VIP key has port 0, the quote any port.
        let v = &lb.plan.vips[UDP4];
        let mac = lb.ring_mac(UDP4, flow_hash(ip(C4), v.addr, cport, 5353, 17));
        let err = icmp_error("198.18.0.101", &reply_udp("198.18.0.101", 5353, C4, cport, 100), frag_needed(1400), too_big(0));
        check(&lb, &format!("UDP port-0 VIP, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac, LB_MAC)), TX_ICMP);
    }
    assert_eq!(flow_count(&lb), before, "errors about untracked flows made no flow");
}

/// Tunnel VIPs: the error is encapsulated to the flow's backend like a
/// client packet.
#[test]
fn tunnel_errors_are_encapsulated_to_the_backend() {
    let Some(lb) = load_lb() else { return };
    for (vip, vaddr, client, src, hdr) in [(TUN4, "198.18.0.110", C4, "198.18.0.50", 20), (TUN6, "2001:2::110", C6, "2001:2::50", 40)] {
        for (cport, tracked) in [(42000u16, true), (42001, false)] {
            let (hash_mac, other) = hashed(&lb, vip, client, cport);
            let idx = if tracked {
                track(&lb, vip, client, cport, other);
                other
            } else {
                (0..2).find(|i| lb.backend_mac(vip, *i) == hash_mac).unwrap()
            };
            let b = &lb.plan.vips[vip].backends[idx];
            let bmac = lb.backend_mac(vip, idx);
            let reply = reply_tcp(vaddr, 80, client, cport, 1300);
            let quote = if hdr == 20 { &reply[..548] } else { &reply[..1232] };
            let err = icmp_error(vaddr, quote, frag_needed(1400), too_big(1400));
            let want = encapsulated(&err, src, &b.addr.to_string(), bmac);
            let name = format!("{vaddr}: error to a tunnel VIP ({}) -> {}", if tracked { "tracked" } else { "hashed" }, b.addr);
            check(&lb, &name, &err, XDP_TX, Some(&want), TX_ICMP);
        }
    }
}

/// What is not an error about a DSR / tunnel reply stays with the kernel,
/// unchanged.
#[test]
fn other_errors_pass_unchanged() {
    let Some(lb) = load_lb() else { return };
    let before = flow_count(&lb);
    let reply = reply_tcp("198.18.0.100", 80, C4, 43000, 100);
    let fnd = frag_needed(1400);
    let e = |to: &str, q: &[u8]| icmp_error(to, q, fnd.clone(), too_big(1280));
    // Garbled quotes.
    let mut wrong_src = reply.clone();
    wrong_src[12..16].copy_from_slice(&[198, 18, 0, 99]);
    let mut later_fragment = reply.clone();
    later_fragment[6..8].copy_from_slice(&[0x00, 0x10]);
    let mut icmp_quote = reply.clone();
    icmp_quote[9] = 1;
    let mut not_v4 = reply.clone();
    not_v4[0] = 0x65;
    let mut other_port = reply.clone();
    other_port[20..22].copy_from_slice(&81u16.to_be_bytes());
    let reply6 = reply_tcp("2001:2::100", 80, C6, 43000, 100);
    let mut ext6 = reply6.clone();
    ext6[6] = 0; // hop-by-hop options header: the ports are not where TCP's would be
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("error to a non-VIP address", e("198.18.0.99", &reply[..28])),
        ("quote from another address than the error's destination", e("198.18.0.100", &wrong_src[..28])),
        ("quote of a later fragment (no ports)", e("198.18.0.100", &later_fragment[..28])),
        ("quote of an ICMP packet", e("198.18.0.100", &icmp_quote[..28])),
        ("quote that is not IPv4", e("198.18.0.100", &not_v4[..28])),
        ("quote cut inside the ports", e("198.18.0.100", &reply[..22])),
        ("quote cut inside the IP header", e("198.18.0.100", &reply[..16])),
        ("quote of a port that is no VIP", e("198.18.0.100", &other_port[..28])),
        ("IPv6: quote behind an extension header", e("2001:2::100", &ext6[..48])),
        ("IPv6: error to a non-VIP address", e("2001:2::99", &reply6[..48])),
        // Round-robin keeps no trace of an untracked flow's backend.
        ("untracked flow of a round-robin VIP", e("198.18.0.120", &reply_udp("198.18.0.120", 53, C4, 43001, 20))),
        // NAT VIPs' replies come back through weir (nat.h); not handled here.
        ("error to a NAT VIP", e("198.18.0.140", &reply_tcp("198.18.0.140", 80, C4, 43002, 8)[..28])),
        (
            "parameter problem (not in the set)",
            icmp_error("198.18.0.100", &reply[..28], Icmpv4Type::ParameterProblem(icmpv4::ParameterProblemHeader::PointerIndicatesError(0)), too_big(0)),
        ),
    ];
    for (name, frame) in &cases {
        check(&lb, name, frame, XDP_PASS, None, PASSED);
    }
    // The IP header claims more than the frame holds.
    let mut long = e("198.18.0.100", &reply[..28]);
    long[16..18].copy_from_slice(&200u16.to_be_bytes());
    long[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&[&long[14..34]]);
    long[24..26].copy_from_slice(&(!sum).to_be_bytes());
    // The parser believes no length beyond the frame: truncated.
    check(&lb, "IPv4 total length beyond the frame", &long, XDP_PASS, None, TRUNCATED);
    let mut short = e("198.18.0.100", &reply[..28]);
    short[16..18].copy_from_slice(&40u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&[&short[14..34]]);
    short[24..26].copy_from_slice(&(!sum).to_be_bytes());
    check(&lb, "IPv4 total length short of the quoted ports", &short, XDP_PASS, None, PASSED);
    let mut short6 = e("2001:2::100", &reply6[..48]);
    short6[18..20].copy_from_slice(&40u16.to_be_bytes());
    check(&lb, "IPv6 payload length short of the quoted ports", &short6, XDP_PASS, None, PASSED);
    assert_eq!(flow_count(&lb), before);
}

/// Echo requests to VIPs: the exact reply, from XDP.
#[test]
fn echo_is_answered() {
    let Some(lb) = load_lb() else { return };
    let data: Vec<u8> = (0..56u8).collect();
    for (vip, client) in [("198.18.0.100", C4), ("2001:2::100", C6), ("198.18.0.110", C4), ("2001:2::110", C6), ("198.18.0.140", C4), ("198.18.0.101", C4)] {
        for (id, seq, payload) in [(0x1f2e, 1u16, &data[..]), (0xffff, 0xfffe, &data[..0]), (7, 3, &[0xffu8; 1400][..])] {
            let req = echo_request(client, vip, id, seq, payload);
            let want = echo_reply(vip, client, id, seq, payload);
            check(&lb, &format!("echo to {vip}, id {id:#x} seq {seq}, {} bytes", payload.len()), &req, XDP_TX, Some(&want), &["xdp_tx", "echo_reply"]);
        }
    }
    // A short request arrives padded to Ethernet's 60 bytes: the reply keeps
    // the padding, the IP length says what is real.
    let mut req = echo_request(C4, "198.18.0.100", 9, 9, b"");
    let mut want = echo_reply("198.18.0.100", C4, 9, 9, b"");
    assert_eq!(req.len(), 42);
    req.resize(60, 0);
    want.resize(60, 0);
    check(&lb, "padded short echo", &req, XDP_TX, Some(&want), &["xdp_tx", "echo_reply"]);
}

/// Echo that must not be answered stays with the kernel, unchanged.
#[test]
fn echo_not_answered() {
    let Some(lb) = load_lb() else { return };
    let r4 = echo_request(C4, "198.18.0.100", 1, 1, b"abcdefgh");
    let mut cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("echo to a VIP with icmp_echo = false", echo_request(C4, "198.18.0.130", 1, 1, b"x"), PASSED),
        ("IPv6 echo to a VIP with icmp_echo = false", echo_request(C6, "2001:2::130", 1, 1, b"x"), PASSED),
        ("echo to a non-VIP address", echo_request(C4, "198.18.0.99", 1, 1, b"x"), PASSED),
        ("echo to a NAT source address", echo_request(C4, "198.18.0.60", 1, 1, b"x"), PASSED),
        ("IPv6 echo to a non-VIP address", echo_request(C6, "2001:2::99", 1, 1, b"x"), PASSED),
        ("echo from a multicast source", echo_request("224.0.0.5", "198.18.0.100", 1, 1, b"x"), PASSED),
        ("echo from 0.0.0.0", echo_request("0.0.0.0", "198.18.0.100", 1, 1, b"x"), PASSED),
        ("IPv6 echo from a multicast source", echo_request("ff02::1", "2001:2::100", 1, 1, b"x"), PASSED),
        ("IPv6 echo from ::", echo_request("::", "2001:2::100", 1, 1, b"x"), PASSED),
    ];
    // Lengths that disagree with the frame: trailing bytes that are no
    // padding; an IP length beyond the frame (IPv4: header checksum fixed).
    let mut trailing = r4.clone();
    trailing.extend_from_slice(&[0; 30]);
    cases.push(("frame longer than the IPv4 packet", trailing, PASSED));
    let mut short = r4.clone();
    short.truncate(short.len() - 4);
    cases.push(("frame shorter than the IPv4 packet", short, TRUNCATED));
    let mut long6 = echo_request(C6, "2001:2::100", 1, 1, b"abcdefgh");
    long6[18..20].copy_from_slice(&100u16.to_be_bytes());
    cases.push(("IPv6 payload length beyond the frame", long6, TRUNCATED));
    // A fragment: the parser hands it to the kernel before ICMP is looked at.
    let mut frag = r4.clone();
    frag[20] |= 0x20; // MF
    frag[24..26].copy_from_slice(&[0, 0]);
    let s = ones_sum(&[&frag[14..34]]);
    frag[24..26].copy_from_slice(&(!s).to_be_bytes());
    cases.push(("first fragment of an echo", frag, &["xdp_pass", "pass_fragment"]));
    // A bad IPv4 header checksum.
    let mut badsum = r4.clone();
    badsum[24] ^= 0x55;
    cases.push(("IPv4 header checksum wrong", badsum, PASSED));
    // Not a request: an echo reply, and code 1.
    let mut reply = r4.clone();
    reply[34] = 0;
    cases.push(("an echo reply", reply, PASSED));
    let mut code1 = r4.clone();
    code1[35] = 1;
    cases.push(("echo with code 1", code1, PASSED));
    // IPv4 options: the reply would have to handle them; left to the kernel.
    let mut opts = Vec::new();
    let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, [10, 1, 2, 3], [198, 18, 0, 100]).unwrap();
    h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ip(IpHeaders::Ipv4(h, Default::default())).icmpv4_echo_request(1, 1).write(&mut opts, b"x").unwrap();
    cases.push(("echo with IPv4 options", opts, PASSED));
    for (name, frame, counters) in &cases {
        check(&lb, name, frame, XDP_PASS, None, counters);
    }
}

/// Echo defaults to on: a config that does not mention it answers.
#[test]
fn echo_default_on_and_per_address() {
    if !require_root("ICMP BPF fixtures") {
        return;
    }
    let lb = load("[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n");
    let req = echo_request(C4, "198.18.0.100", 5, 6, b"ping");
    check(&lb, "echo, default config", &req, XDP_TX, Some(&echo_reply("198.18.0.100", C4, 5, 6, b"ping")), &["xdp_tx", "echo_reply"]);
    // VIPs sharing an address must agree.
    let two = "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n\
               [[vip]]\naddress = \"198.18.0.100\"\nport = 53\nprotocol = \"udp\"\nicmp_echo = false\n[[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let e = format!("{:#}", weir::config::Config::from_toml(two).unwrap_err());
    assert!(e.contains("vip[1].icmp_echo: false but vip[0] has the same address and icmp_echo = true"), "{e}");
}
