//! ICMP to VIPs through BPF_PROG_TEST_RUN (root): errors about a DSR or
//! tunnel backend's reply go to that backend; echo requests are answered
//! (README "ICMP and ping", bpf/icmp.h).
//!
//! Every input and expected frame is built field by field with common's
//! `Pkt` (lengths and checksums computed by etherparse), never derived from
//! the program's output, and run through the one fixture runner
//! (tests/common/fixture.rs): the checksums of every XDP_TX output,
//! quoted and tunnelled headers included, are verified once more there, and
//! each case checks exactly which global counters rose.
//!
//! cargo test --release --test icmp_fixtures -- --test-threads=1

mod common;

use common::*;
use etherparse::{icmpv4, icmpv6, IcmpEchoHeader, Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{from_bytes, Backend, Flow, FlowKey};

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

/// An IP packet with the fields the cases vary (IPv6: flow label 0x2468);
/// lengths and checksums are computed by etherparse.
fn pkt(src: &str, dst: &str, l4: L4, payload: &[u8], ttl: u8, id: u16, df: bool, tos: u8) -> Pkt {
    let mut p = Pkt::new(src, dst, l4, payload).ip_fields(tos, id, df, ttl);
    if p.src.is_ipv6() {
        p.flow = 0x2468;
    }
    p
}

/// The backend's reply as it left the backend: an IP packet VIP:vport ->
/// client:cport carrying `len` bytes of TCP payload (ACK + PSH).
fn reply_tcp(vip: &str, vport: u16, client: &str, cport: u16, len: usize) -> Vec<u8> {
    let mut h = tcp_hdr(vport, cport, 0x5000_0000, Some(0x1000_0001), 502);
    h.psh = true;
    pkt(vip, client, L4::Tcp(h), &vec![0xa5u8; len], 64, 0x1234, true, 0).ip_bytes()
}

fn reply_udp(vip: &str, vport: u16, client: &str, cport: u16, len: usize) -> Vec<u8> {
    pkt(vip, client, udp_l4(vport, cport, true), &vec![0x3cu8; len], 64, 0x1235, false, 0).ip_bytes()
}

/// A router's ICMP error (from R4 / R6) to `to`, quoting `quote`, in a
/// frame from the router's MAC. IPv4 errors go with DF clear, TOS 0xc0, as
/// Linux sends them.
fn icmp_error_pkt(to: &str, quote: &[u8], t4: Icmpv4Type, t6: Icmpv6Type) -> Pkt {
    let p = if ip(to).is_ipv4() {
        pkt(R4, to, L4::Icmp4(t4), quote, 63, 0x7a7a, false, 0xc0)
    } else {
        pkt(R6, to, L4::Icmp6(t6), quote, 63, 0, false, 0)
    };
    p.macs(LB_MAC, ROUTER_MAC)
}

fn icmp_error(to: &str, quote: &[u8], t4: Icmpv4Type, t6: Icmpv6Type) -> Vec<u8> {
    icmp_error_pkt(to, quote, t4, t6).frame()
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
}

fn too_big(mtu: u32) -> Icmpv6Type {
    Icmpv6Type::PacketTooBig { mtu }
}

fn echo_request(src: &str, dst: &str, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let e = IcmpEchoHeader { id, seq };
    let p = if ip(src).is_ipv4() {
        pkt(src, dst, L4::Icmp4(Icmpv4Type::EchoRequest(e)), payload, 57, 0x4321, true, 0)
    } else {
        pkt(src, dst, L4::Icmp6(Icmpv6Type::EchoRequest(e)), payload, 57, 0, false, 0)
    };
    p.frame()
}

/// The reply weir must send: addresses and MACs swapped, TTL / hop limit
/// 64, IPv4 ID, DF and TOS kept, IPv6 traffic class and flow label kept.
fn echo_reply(vip: &str, client: &str, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let e = IcmpEchoHeader { id, seq };
    let p = if ip(vip).is_ipv4() {
        pkt(vip, client, L4::Icmp4(Icmpv4Type::EchoReply(e)), payload, 64, 0x4321, true, 0)
    } else {
        pkt(vip, client, L4::Icmp6(Icmpv6Type::EchoReply(e)), payload, 64, 0, false, 0)
    };
    p.macs(CLIENT_MAC, LB_MAC).frame()
}

// -------------------------------------------------------------- running ---

fn load_lb() -> Option<Lb> {
    if !require_root("ICMP BPF fixtures") {
        return None;
    }
    Some(load(CONFIG))
}

const TX_ICMP: &[&str] = &["xdp_tx", "icmp_to_backend"];
const PASSED: &[&str] = &["xdp_pass", "pass_unknown_proto"];
/// A length field beyond the frame: the parser hands it to the kernel
/// (tests/lying_packets.rs) before ICMP is looked at.
const TRUNCATED: &[&str] = &["xdp_pass", "pass_truncated"];

fn flow_count(lb: &Lb) -> usize {
    weir::dataplane::FlowTables::established(&lb.dp).unwrap().count(usize::MAX)
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
    weir::dataplane::FlowTables::established(&lb.dp).unwrap().update(&key, &f).unwrap();
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
            check_exact(&lb, &name, &err, XDP_TX, Some(&with_macs(&err, bmac, LB_MAC)), TX_ICMP);
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
        check_exact(&lb, &format!("v4 frag-needed, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);
        let ttl = Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit);
        let err = icmp_error("198.18.0.100", &reply_tcp("198.18.0.100", 80, C4, cport, 8)[..28], ttl, too_big(0));
        check_exact(&lb, &format!("v4 time exceeded, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);
        let host = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host);
        let err = icmp_error("198.18.0.100", &reply_tcp("198.18.0.100", 80, C4, cport, 8)[..28], host, too_big(0));
        check_exact(&lb, &format!("v4 host unreachable, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac4, LB_MAC)), TX_ICMP);

        let (mac6, _) = hashed(&lb, DSR6, C6, cport);
        let quote = reply_tcp("2001:2::100", 80, C6, cport, 1200);
        for t6 in [
            too_big(1280),
            Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address),
            Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        ] {
            let err = icmp_error("2001:2::100", &quote[..1232], frag_needed(0), t6);
            check_exact(&lb, &format!("v6 {t6:?}, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac6, LB_MAC)), TX_ICMP);
        }

        // The port-0 UDP VIP: its VIP key has port 0, the quote any port.
        let v = &lb.plan.vips[UDP4];
        let mac = lb.ring_mac(UDP4, flow_hash(ip(C4), v.addr, cport, 5353, 17));
        let err = icmp_error("198.18.0.101", &reply_udp("198.18.0.101", 5353, C4, cport, 100), frag_needed(1400), too_big(0));
        check_exact(&lb, &format!("UDP port-0 VIP, client port {cport}"), &err, XDP_TX, Some(&with_macs(&err, mac, LB_MAC)), TX_ICMP);
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
            let err_pkt = icmp_error_pkt(vaddr, quote, frag_needed(1400), too_big(1400));
            let err = err_pkt.frame();
            let want = ipip(&err_pkt, src, &b.addr.to_string(), bmac).frame();
            let name = format!("{vaddr}: error to a tunnel VIP ({}) -> {}", if tracked { "tracked" } else { "hashed" }, b.addr);
            check_exact(&lb, &name, &err, XDP_TX, Some(&want), TX_ICMP);
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
        check_exact(&lb, name, frame, XDP_PASS, None, PASSED);
    }
    // The IP header claims more than the frame holds.
    let mut long = e("198.18.0.100", &reply[..28]);
    long[16..18].copy_from_slice(&200u16.to_be_bytes());
    long[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&[&long[14..34]]);
    long[24..26].copy_from_slice(&(!sum).to_be_bytes());
    // A length beyond the frame is the parser's (tests/lying_packets.rs).
    check_exact(&lb, "IPv4 total length beyond the frame", &long, XDP_PASS, None, TRUNCATED);
    let mut short = e("198.18.0.100", &reply[..28]);
    short[16..18].copy_from_slice(&40u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let sum = ones_sum(&[&short[14..34]]);
    short[24..26].copy_from_slice(&(!sum).to_be_bytes());
    check_exact(&lb, "IPv4 total length short of the quoted ports", &short, XDP_PASS, None, PASSED);
    let mut short6 = e("2001:2::100", &reply6[..48]);
    short6[18..20].copy_from_slice(&40u16.to_be_bytes());
    check_exact(&lb, "IPv6 payload length short of the quoted ports", &short6, XDP_PASS, None, PASSED);
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
            check_exact(&lb, &format!("echo to {vip}, id {id:#x} seq {seq}, {} bytes", payload.len()), &req, XDP_TX, Some(&want), &["xdp_tx", "echo_reply"]);
        }
    }
    // A short request arrives padded to Ethernet's 60 bytes: the reply keeps
    // the padding, the IP length says what is real.
    let mut req = echo_request(C4, "198.18.0.100", 9, 9, b"");
    let mut want = echo_reply("198.18.0.100", C4, 9, 9, b"");
    assert_eq!(req.len(), 42);
    req.resize(60, 0);
    want.resize(60, 0);
    check_exact(&lb, "padded short echo", &req, XDP_TX, Some(&want), &["xdp_tx", "echo_reply"]);
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
    // A fragment of an echo is never answered here (XDP cannot see the
    // whole datagram): the address's only VIP's backend gets it
    // (tests/frag_fixtures.rs), and it answers.
    let mut frag = r4.clone();
    frag[20] |= 0x20; // MF
    frag[24..26].copy_from_slice(&[0, 0]);
    let s = ones_sum(&[&frag[14..34]]);
    frag[24..26].copy_from_slice(&(!s).to_be_bytes());
    let r = run(&lb, "first fragment of an echo", &frag);
    let bmac = lb.ring_mac(0, frag_hash(C4.parse().unwrap(), "198.18.0.100".parse().unwrap(), &frag[18..20], 1));
    expect("first fragment of an echo", &r, &frag, XDP_TX, Some(&with_macs(&frag, bmac, LB_MAC)), &[
        "xdp_tx",
        "frag_early",
        "frag_balanced",
    ]);
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
        check_exact(&lb, name, frame, XDP_PASS, None, counters);
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
    check_exact(&lb, "echo, default config", &req, XDP_TX, Some(&echo_reply("198.18.0.100", C4, 5, 6, b"ping")), &["xdp_tx", "echo_reply"]);
    // VIPs sharing an address must agree.
    let two = "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n\
               [[vip]]\naddress = \"198.18.0.100\"\nport = 53\nprotocol = \"udp\"\nicmp_echo = false\n[[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let e = format!("{:#}", weir::config::Config::from_toml(two).unwrap_err());
    assert!(e.contains("vip[1].icmp_echo: false but vip[0] has the same address and icmp_echo = true"), "{e}");
}
