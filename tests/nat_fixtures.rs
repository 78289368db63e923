//! Full-NAT and tunnel data-plane fixtures through BPF_PROG_TEST_RUN (root):
//! each case checks, against docs/nat-tunnel.md, the XDP action, the exact
//! output bytes and the global counters.
//!
//! Every expected frame is built from scratch here with etherparse headers
//! (all IP, TCP, UDP, ICMP and ICMPv6 checksums computed by etherparse), never
//! derived from the program's output; the only value read back from an output
//! is the SNAT port the program chose, which is first checked against the
//! VIP's `source_ports`. Every IPv4 header / TCP / UDP / ICMP checksum of an
//! output is then verified once more by an independent recomputation.

mod common;

use std::time::Duration;

use common::*;
use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type};

// ------------------------------------------------------------ the config ---

const C4: &str = "10.1.2.3";
const C6: &str = "2001:db8::7";
/// The IPv6 client sends from another MAC: the return path must use the
/// recorded one, not a constant.
const C6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

// NAT, IPv4 TCP.
const WEB: &str = "198.18.0.100";
const WEB_S: &str = "198.18.0.10";
const WEB_B: &str = "198.18.0.11";
const WEB_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const WEB_RANGE: (u16, u16) = (20000, 29999);
// NAT, IPv4 UDP (same VIP address, port 53).
const DNS_S: &str = "198.18.0.20";
const DNS_B: &str = "198.18.0.21";
const DNS_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
const DNS_RANGE: (u16, u16) = (30000, 30999);
// NAT, IPv6 TCP.
const WEB6: &str = "2001:2::100";
const WEB6_S: &str = "2001:2::10";
const WEB6_B: &str = "2001:2::11";
const WEB6_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x0b];
const WEB6_RANGE: (u16, u16) = (1024, 32767);
// NAT with a two-port pool.
const POOL: &str = "198.18.0.102";
const POOL_S: &str = "198.18.0.30";
const POOL_B: &str = "198.18.0.31";
const POOL_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1f];
// Tunnels.
const TUN: &str = "198.18.0.110";
const TUN_QUIET: &str = "198.18.0.111";
const TUN_S: &str = "198.18.0.50";
const TUN_B: &str = "198.18.0.51";
const TUN_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
const TUN6: &str = "2001:2::110";
const TUN6_S: &str = "2001:2::50";
const TUN6_B: &str = "2001:2::51";
const TUN6_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x33];

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
name = "nat-dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
mode = "nat"
source_address = "198.18.0.20"
source_ports = [30000, 30999]
[[vip.backend]]
address = "198.18.0.21"
port = 5353
mac = "02:00:00:00:00:15"

[[vip]]
name = "nat-web6"
address = "2001:2::100"
port = 443
protocol = "tcp"
mode = "nat"
source_address = "2001:2::10"
source_ports = [1024, 32767]
[[vip.backend]]
address = "2001:2::11"
port = 8443
mac = "02:00:00:00:06:0b"

[[vip]]
name = "nat-pool2"
address = "198.18.0.102"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.30"
source_ports = [40000, 40001]
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:00:1f"

[[vip]]
name = "nat-dns6"
address = "2001:2::100"
port = 53
protocol = "udp"
mode = "nat"
source_address = "2001:2::20"
source_ports = [30000, 30999]
[[vip.backend]]
address = "2001:2::21"
port = 5353
mac = "02:00:00:00:06:15"

# Port 0 (every port), default source_ports, backend port = the client's.
[[vip]]
name = "nat-allports"
address = "198.18.0.104"
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.60"
[[vip.backend]]
address = "198.18.0.61"
mac = "02:00:00:00:00:3d"

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
name = "tun4-quiet"
address = "198.18.0.111"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.0.50"
icmp_too_big = false
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
"#;


/// A NAT forward: the program picks the SNAT port; it must lie in `range`,
/// and the whole frame must be the client's with MACs, addresses and ports
/// rewritten as the contract says. Returns the port.
#[allow(clippy::too_many_arguments)]
fn nat_forward(
    lb: &Lb,
    name: &str,
    client: &Pkt,
    s: &str,
    b: &str,
    bport: u16,
    bmac: [u8; 6],
    range: (u16, u16),
    counters: &[&str],
) -> u16 {
    let frame = client.frame();
    let r = run(lb, name, &frame);
    let port = if r.action == XDP_TX { out_sport(&r.out).unwrap_or(0) } else { 0 };
    if !(range.0..=range.1).contains(&port) {
        panic!(
            "{name}: {} with SNAT port {port}, not in source_ports {range:?} (counters that rose: {})\n  output: {}",
            action_name(r.action),
            rose(&r),
            hex_row(&r.out)
        );
    }
    let want = client.clone().macs(bmac, LB_MAC).addrs(s, b).ports(port, bport).frame();
    expect(name, &r, &frame, XDP_TX, Some(&want), counters);
    port
}

fn load_lb(cfg: &str) -> Option<Lb> {
    if !require_root("NAT / tunnel BPF fixtures") {
        return None;
    }
    Some(load(cfg))
}

const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: weir.test\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// The client's SYN (options + payload) to the IPv4 NAT VIP, with non-default
/// TOS, ID and TTL that must survive.
fn web_client(cport: u16) -> Pkt {
    Pkt::new(C4, WEB, syn_opts(cport, 80), REQ).ip_fields(0x28, 0xbeef, true, 57)
}

// ---------------------------------------------------------------- cases ---

/// 1. NAT IPv4 TCP forward (options + payload, port 80 -> 8080) and return.
#[test]
fn nat_ipv4_tcp_forward_and_return() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let client = web_client(40001);
    let port = nat_forward(
        &lb,
        "NAT IPv4 TCP SYN forward",
        &client,
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_new"],
    );

    let reply =
        Pkt::new(WEB_B, WEB_S, synack_opts(8080, port), RESP).macs(LB_MAC, WEB_BMAC).ip_fields(0x04, 0x1234, true, 64);
    let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).ports(80, 40001);
    check(&lb, "NAT IPv4 TCP SYN-ACK return", &reply.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);

    // The client's ACK with data: same port, tracked.
    let data = Pkt::new(C4, WEB, ack(40001, 80), REQ).ip_fields(0x28, 0xbef0, true, 57);
    let want = data.clone().macs(WEB_BMAC, LB_MAC).addrs(WEB_S, WEB_B).ports(port, 8080);
    check(&lb, "NAT IPv4 TCP client ACK + data", &data.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_hit"]);
}

/// 2. NAT IPv4 UDP, with a checksum and with checksum 0.
#[test]
fn nat_ipv4_udp_forward_and_return() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let q = Pkt::new(C4, WEB, udp_l4(5353, 53, true), b"query, with a checksum").ip_fields(0, 0x0102, false, 63);
    let port =
        nat_forward(&lb, "NAT UDP forward", &q, DNS_S, DNS_B, 5353, DNS_BMAC, DNS_RANGE, &["xdp_tx", "flow_new"]);
    let a = Pkt::new(DNS_B, DNS_S, udp_l4(5353, port, true), b"the answer")
        .macs(LB_MAC, DNS_BMAC)
        .ip_fields(0, 7, false, 64);
    let want = a.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).ports(53, 5353);
    check(&lb, "NAT UDP return", &a.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);

    let q0 = Pkt::new(C4, WEB, udp_l4(5354, 53, false), b"query, no checksum").ip_fields(0, 0x0103, false, 63);
    let port0 = nat_forward(
        &lb,
        "NAT UDP checksum 0 forward (stays 0)",
        &q0,
        DNS_S,
        DNS_B,
        5353,
        DNS_BMAC,
        DNS_RANGE,
        &["xdp_tx", "flow_new"],
    );
    assert_ne!(port0, port, "two live flows, two SNAT ports");
    let a0 = Pkt::new(DNS_B, DNS_S, udp_l4(5353, port0, false), b"answer, no checksum")
        .macs(LB_MAC, DNS_BMAC)
        .ip_fields(0, 8, false, 64);
    let want = a0.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).ports(53, 5354);
    let out = check(
        &lb,
        "NAT UDP checksum 0 return (stays 0)",
        &a0.frame(),
        XDP_TX,
        Some(&want.frame()),
        &["xdp_tx", "nat_reply"],
    );
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0 stays 0");
}

/// 3. NAT IPv6 TCP forward and return.
#[test]
fn nat_ipv6_tcp_forward_and_return() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let mut client = Pkt::new(C6, WEB6, syn_opts(40002, 443), REQ).macs(LB_MAC, C6_MAC);
    client.tos = 0x28;
    client.flow = 0xabcde;
    client.ttl = 55;
    let port = nat_forward(
        &lb,
        "NAT IPv6 TCP SYN forward",
        &client,
        WEB6_S,
        WEB6_B,
        8443,
        WEB6_BMAC,
        WEB6_RANGE,
        &["xdp_tx", "flow_new"],
    );

    let mut reply = Pkt::new(WEB6_B, WEB6_S, synack_opts(8443, port), RESP).macs(LB_MAC, WEB6_BMAC);
    reply.flow = 0x54321;
    let want = reply.clone().macs(C6_MAC, LB_MAC).addrs(WEB6, C6).ports(443, 40002);
    check(&lb, "NAT IPv6 TCP SYN-ACK return", &reply.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);

    let mut data = Pkt::new(C6, WEB6, ack(40002, 443), REQ).macs(LB_MAC, C6_MAC);
    data.flow = 0xabcde;
    let want = data.clone().macs(WEB6_BMAC, LB_MAC).addrs(WEB6_S, WEB6_B).ports(port, 8443);
    check(&lb, "NAT IPv6 TCP client ACK + data", &data.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_hit"]);
}

/// 4. A flow keeps its SNAT port; another client port gets another one.
#[test]
fn nat_flow_keeps_its_port() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let p1 = nat_forward(
        &lb,
        "flow 1 SYN",
        &web_client(40010),
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_new"],
    );
    let second = Pkt::new(C4, WEB, ack(40010, 80), b"more").ip_fields(0x28, 0xbef1, true, 57);
    let p1b = nat_forward(
        &lb,
        "flow 1 second packet",
        &second,
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_hit"],
    );
    assert_eq!(p1b, p1, "the second packet of a flow reuses its SNAT port");
    let p2 = nat_forward(
        &lb,
        "flow 2 SYN",
        &web_client(40011),
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_new"],
    );
    assert_ne!(p2, p1, "another client port gets another SNAT port");

    // Each port's replies go to its own client port.
    for (port, cport) in [(p1, 40010), (p2, 40011)] {
        let reply = Pkt::new(WEB_B, WEB_S, ack(8080, port), RESP).macs(LB_MAC, WEB_BMAC);
        let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).ports(80, cport);
        check(
            &lb,
            &format!("reply to SNAT port {port}"),
            &reply.frame(),
            XDP_TX,
            Some(&want.frame()),
            &["xdp_tx", "nat_reply"],
        );
    }
}

/// 5. A two-port pool: two flows get both ports, the third is dropped.
#[test]
fn nat_pool_full_drops() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let client = |cport| Pkt::new(C4, POOL, syn(cport, 80), b"");
    let a = nat_forward(
        &lb,
        "pool flow A",
        &client(1001),
        POOL_S,
        POOL_B,
        80,
        POOL_BMAC,
        (40000, 40001),
        &["xdp_tx", "flow_new"],
    );
    let b = nat_forward(
        &lb,
        "pool flow B",
        &client(1002),
        POOL_S,
        POOL_B,
        80,
        POOL_BMAC,
        (40000, 40001),
        &["xdp_tx", "flow_new"],
    );
    let mut got = [a, b];
    got.sort();
    assert_eq!(got, [40000, 40001], "the two flows hold both ports");
    check(&lb, "pool flow C: no free port", &client(1003).frame(), XDP_DROP, None, &["xdp_drop", "drop_nat_ports"]);
    // The first two still work both ways.
    for (cport, port) in [(1001u16, a), (1002, b)] {
        let next = Pkt::new(C4, POOL, ack(cport, 80), b"x");
        let want = next.clone().macs(POOL_BMAC, LB_MAC).addrs(POOL_S, POOL_B).ports(port, 80);
        check(
            &lb,
            &format!("pool flow {cport} next packet"),
            &next.frame(),
            XDP_TX,
            Some(&want.frame()),
            &["xdp_tx", "flow_hit"],
        );
        let reply = Pkt::new(POOL_B, POOL_S, ack(80, port), b"y").macs(LB_MAC, POOL_BMAC);
        let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs(POOL, C4).ports(80, cport);
        check(
            &lb,
            &format!("pool flow {cport} reply"),
            &reply.frame(),
            XDP_TX,
            Some(&want.frame()),
            &["xdp_tx", "nat_reply"],
        );
    }
    check(
        &lb,
        "pool flow C again: still no free port",
        &client(1003).frame(),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_nat_ports"],
    );
}

/// 6. A closed flow's port is free once its FIN timeout passes, and the old
/// flow does not get it back while the new one holds it.
#[test]
fn nat_port_reused_after_close() {
    let Some(lb) = load_lb(&one_port_nat("size = 4096\ntcp_fin_timeout = 1", "")) else { return };
    const VIP: &str = "198.18.0.103";
    const S: &str = "198.18.0.40";
    const B: &str = "198.18.0.41";
    const BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x29];
    const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
    const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
    const ONE: (u16, u16) = (41000, 41000);
    let a_syn = Pkt::new("10.6.0.1", VIP, syn(1111, 80), b"").macs(LB_MAC, A_MAC);
    let b_syn = Pkt::new("10.6.0.2", VIP, syn(2222, 80), b"").macs(LB_MAC, B_MAC);

    nat_forward(&lb, "A takes the only port", &a_syn, S, B, 80, BMAC, ONE, &["xdp_tx", "flow_new"]);
    check(&lb, "B: the only port is A's", &b_syn.frame(), XDP_DROP, None, &["xdp_drop", "drop_nat_ports"]);
    let a_fin = Pkt::new("10.6.0.1", VIP, fin(1111, 80), b"").macs(LB_MAC, A_MAC);
    nat_forward(&lb, "A sends FIN", &a_fin, S, B, 80, BMAC, ONE, &["xdp_tx", "flow_hit"]);
    check(
        &lb,
        "B right after A's FIN: A is closing but live",
        &b_syn.frame(),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_nat_ports"],
    );

    std::thread::sleep(Duration::from_secs(3));
    nat_forward(&lb, "B after A's FIN timeout takes the port", &b_syn, S, B, 80, BMAC, ONE, &["xdp_tx"]);

    // The reply tuple B:80 -> S:41000 now belongs to B's flow.
    let reply = Pkt::new(B, S, synack_opts(80, 41000), b"").macs(LB_MAC, BMAC);
    let want = reply.clone().macs(B_MAC, LB_MAC).addrs(VIP, "10.6.0.2").ports(80, 2222);
    check(
        &lb,
        "reply to port 41000 goes to B's client",
        &reply.frame(),
        XDP_TX,
        Some(&want.frame()),
        &["xdp_tx", "nat_reply"],
    );

    // A's next packet is never translated to B's port: its flow is gone,
    // and a segment that is not a SYN opens none.
    let a_ack = Pkt::new("10.6.0.1", VIP, ack(1111, 80), b"late").macs(LB_MAC, A_MAC);
    check(
        &lb,
        "A after losing its port: no flow, not a SYN: dropped",
        &a_ack.frame(),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_nat_not_syn"],
    );
    // A's new connection asks for a port: B holds the only one.
    let a_syn2 = Pkt::new("10.6.0.1", VIP, syn(1112, 80), b"").macs(LB_MAC, A_MAC);
    check(&lb, "A's new SYN: no free port", &a_syn2.frame(), XDP_DROP, None, &["xdp_drop", "drop_nat_ports"]);
}

/// 7. To the source address without a flow: the kernel's.
#[test]
fn nat_reply_without_flow_passes() {
    let Some(lb) = load_lb(CONFIG) else { return };
    for (name, p) in [
        ("TCP to an unused SNAT port", Pkt::new(WEB_B, WEB_S, ack(8080, 25000), b"stray").macs(LB_MAC, WEB_BMAC)),
        ("TCP to a port outside source_ports", Pkt::new(WEB_B, WEB_S, ack(8080, 40000), b"").macs(LB_MAC, WEB_BMAC)),
        ("UDP to an unused SNAT port", Pkt::new(DNS_B, DNS_S, udp_l4(5353, 30500, true), b"?").macs(LB_MAC, DNS_BMAC)),
        ("IPv6 TCP to an unused SNAT port", Pkt::new(WEB6_B, WEB6_S, ack(8443, 3000), b"").macs(LB_MAC, WEB6_BMAC)),
    ] {
        check(&lb, name, &p.frame(), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    }
    // After a flow exists, a reply from the wrong backend port still passes.
    let port = nat_forward(
        &lb,
        "flow for the negative reply",
        &web_client(40020),
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_new"],
    );
    let wrong = Pkt::new(WEB_B, WEB_S, ack(8081, port), b"").macs(LB_MAC, WEB_BMAC);
    check(&lb, "reply from another backend port", &wrong.frame(), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    let stranger = Pkt::new("198.18.0.99", WEB_S, ack(8080, port), b"").macs(LB_MAC, WEB_BMAC);
    check(&lb, "reply from another address", &stranger.frame(), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
}

/// 8a. ICMPv4 errors from the backend quoting forwarded packets.
#[test]
fn nat_icmpv4_errors_are_translated() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let client = web_client(40030);
    let port = nat_forward(
        &lb,
        "TCP flow for ICMP",
        &client,
        WEB_S,
        WEB_B,
        8080,
        WEB_BMAC,
        WEB_RANGE,
        &["xdp_tx", "flow_new"],
    );
    let fwd_ip = client.clone().addrs(WEB_S, WEB_B).ports(port, 8080).ip_bytes();
    let cli_ip = client.ip_bytes();
    assert_eq!(fwd_ip.len(), cli_ip.len());
    let frag =
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
    let ttl = Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit);
    for (name, t, quote) in [
        ("frag-needed quoting IP header + 8 bytes of TCP", frag.clone(), 20 + 8),
        ("frag-needed quoting the full TCP header (checksum inside)", frag.clone(), 20 + 40),
        ("frag-needed quoting the whole packet", frag.clone(), fwd_ip.len()),
        ("time exceeded quoting IP header + 8 bytes", ttl.clone(), 20 + 8),
        ("time exceeded quoting 18 bytes of TCP (just the checksum)", ttl, 20 + 18),
    ] {
        let err = Pkt::new(WEB_B, WEB_S, L4::Icmp4(t), &fwd_ip[..quote])
            .macs(LB_MAC, WEB_BMAC)
            .ip_fields(0xc0, 0x5151, false, 64);
        let want = err.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).with_payload(&cli_ip[..quote]);
        check(&lb, name, &err.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_icmp"]);
    }

    // UDP: the checksum is in the first 8 bytes (updated when non-zero).
    let q = Pkt::new(C4, WEB, udp_l4(5400, 53, true), b"query").ip_fields(0, 0x0203, false, 63);
    let port =
        nat_forward(&lb, "UDP flow for ICMP", &q, DNS_S, DNS_B, 5353, DNS_BMAC, DNS_RANGE, &["xdp_tx", "flow_new"]);
    let q0 = Pkt::new(C4, WEB, udp_l4(5401, 53, false), b"query0").ip_fields(0, 0x0204, false, 63);
    let port0 = nat_forward(
        &lb,
        "UDP flow (checksum 0) for ICMP",
        &q0,
        DNS_S,
        DNS_B,
        5353,
        DNS_BMAC,
        DNS_RANGE,
        &["xdp_tx", "flow_new"],
    );
    let unreach = Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port);
    for (name, p, port, quote) in [
        ("port unreachable quoting the whole UDP datagram", &q, port, 0usize),
        ("port unreachable quoting UDP header only", &q, port, 28),
        ("port unreachable quoting a checksum-0 UDP datagram", &q0, port0, 0),
    ] {
        let fwd = p.clone().addrs(DNS_S, DNS_B).ports(port, 5353).ip_bytes();
        let cli = p.ip_bytes();
        let n = if quote == 0 { fwd.len() } else { quote };
        let err = Pkt::new(DNS_B, DNS_S, L4::Icmp4(unreach.clone()), &fwd[..n])
            .macs(LB_MAC, DNS_BMAC)
            .ip_fields(0xc0, 0x5252, false, 64);
        let want = err.clone().macs(CLIENT_MAC, LB_MAC).addrs(WEB, C4).with_payload(&cli[..n]);
        check(&lb, name, &err.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_icmp"]);
    }
}

/// 8b. ICMPv6 errors from the IPv6 backend.
#[test]
fn nat_icmpv6_errors_are_translated() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let mut client = Pkt::new(C6, WEB6, syn_opts(40031, 443), REQ).macs(LB_MAC, C6_MAC);
    client.flow = 0x11111;
    let port = nat_forward(
        &lb,
        "IPv6 TCP flow for ICMPv6",
        &client,
        WEB6_S,
        WEB6_B,
        8443,
        WEB6_BMAC,
        WEB6_RANGE,
        &["xdp_tx", "flow_new"],
    );
    let fwd_ip = client.clone().addrs(WEB6_S, WEB6_B).ports(port, 8443).ip_bytes();
    let cli_ip = client.ip_bytes();
    let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
    for (name, t, quote) in [
        ("packet too big quoting the whole packet", ptb.clone(), fwd_ip.len()),
        ("packet too big quoting IPv6 header + 8 bytes", ptb, 40 + 8),
        (
            "ICMPv6 unreachable (prohibited)",
            Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Prohibited),
            fwd_ip.len(),
        ),
        ("ICMPv6 time exceeded", Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded), 40 + 20),
    ] {
        let err = Pkt::new(WEB6_B, WEB6_S, L4::Icmp6(t), &fwd_ip[..quote]).macs(LB_MAC, WEB6_BMAC);
        let want = err.clone().macs(C6_MAC, LB_MAC).addrs(WEB6, C6).with_payload(&cli_ip[..quote]);
        check(&lb, name, &err.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_icmp"]);
    }
}

/// 9. Tunnel encapsulation, IPv4 in IPv4 and IPv6 in IPv6.
#[test]
fn tunnel_encapsulates() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let df = Pkt::new(C4, TUN, syn_opts(40040, 80), REQ).ip_fields(0xb9, 0x3344, true, 60);
    let want = ipip(&df, TUN_S, TUN_B, TUN_BMAC);
    assert!(want.df);
    check(&lb, "IPIP, inner DF set", &df.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_new"]);
    let again = Pkt::new(C4, TUN, ack(40040, 80), b"second").ip_fields(0xb9, 0x3345, true, 60);
    check(
        &lb,
        "IPIP, tracked flow",
        &again.frame(),
        XDP_TX,
        Some(&ipip(&again, TUN_S, TUN_B, TUN_BMAC).frame()),
        &["xdp_tx", "flow_hit"],
    );

    let nodf = Pkt::new(C4, TUN, syn(40041, 80), b"no DF").ip_fields(0x10, 0x3346, false, 61);
    let want = ipip(&nodf, TUN_S, TUN_B, TUN_BMAC);
    assert!(!want.df);
    check(&lb, "IPIP, inner DF clear", &nodf.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_new"]);

    // An 802.1Q-tagged client frame to a VIP without vlan is not served
    // (VLAN tunnels: tests/vlan_fixtures.rs).
    let tagged = Pkt::new(C4, TUN, syn(40042, 80), b"vlan").ip_fields(0, 0x3347, true, 64).tag(42);
    check(&lb, "VLAN-tagged frame to a tunnel VIP without vlan", &tagged.frame(), XDP_PASS, None, &["xdp_pass", "pass_vlan"]);

    let mut six = Pkt::new(C6, TUN6, syn_opts(40043, 80), REQ).macs(LB_MAC, C6_MAC);
    six.tos = 0xb8;
    six.flow = 0x12345;
    six.ttl = 61;
    let want = ipip(&six, TUN6_S, TUN6_B, TUN6_BMAC);
    check(&lb, "IP6IP6", &six.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_new"]);
}

/// 10. Tunnel MTU (the unattached test interface has MTU 1500).
#[test]
fn tunnel_mtu() {
    let Some(lb) = load_lb(CONFIG) else { return };
    // IPv4: 20 + 20 + 1450 = 1490 bytes inner; 1510 encapsulated.
    let big = |cport: u16, dst: &str, df: bool, data: usize| {
        Pkt::new(C4, dst, ack(cport, 80), &vec![0x5a; data]).ip_fields(0x48, 0x7777, df, 50)
    };
    let b = big(40050, TUN, true, 1450);
    assert_eq!(b.ip_bytes().len(), 1490);
    let cli = b.ip_bytes();
    let answer = Pkt::new(
        TUN,
        C4,
        L4::Icmp4(Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1480,
        })),
        &cli[..28],
    )
    .macs(CLIENT_MAC, LB_MAC)
    .ip_fields(0, 0, false, 64);
    let out = check(
        &lb,
        "IPv4 1490 bytes with DF: frag-needed",
        &b.frame(),
        XDP_TX,
        Some(&answer.frame()),
        &["xdp_tx", "icmp_too_big"],
    );
    assert_eq!(out.len(), 14 + 56);

    let fits = big(40051, TUN, true, 1440);
    assert_eq!(fits.ip_bytes().len(), 1480);
    let want = ipip(&fits, TUN_S, TUN_B, TUN_BMAC);
    check(
        &lb,
        "IPv4 1480 bytes: exactly the MTU once encapsulated",
        &fits.frame(),
        XDP_TX,
        Some(&want.frame()),
        &["xdp_tx"],
    );

    check(
        &lb,
        "IPv4 1490 bytes without DF: dropped",
        &big(40052, TUN, false, 1450).frame(),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_tunnel_mtu"],
    );
    check(
        &lb,
        "icmp_too_big = false: dropped",
        &big(40053, TUN_QUIET, true, 1450).frame(),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_tunnel_mtu"],
    );

    // IPv6: payload 1460 (20 + 1440) -> 1500 inner, 1540 encapsulated.
    let big6 = |cport: u16, data: usize| {
        let mut p = Pkt::new(C6, TUN6, ack(cport, 80), &vec![0xa5; data]).macs(LB_MAC, C6_MAC);
        p.tos = 0x20;
        p.flow = 0x00777;
        p.ttl = 50;
        p
    };
    let b6 = big6(40054, 1440);
    let cli6 = b6.ip_bytes();
    assert_eq!(cli6.len(), 40 + 1460);
    let mut answer6 =
        Pkt::new(TUN6, C6, L4::Icmp6(Icmpv6Type::PacketTooBig { mtu: 1460 }), &cli6[..48]).macs(C6_MAC, LB_MAC);
    answer6.ttl = 64;
    let out = check(
        &lb,
        "IPv6 payload 1460: packet too big",
        &b6.frame(),
        XDP_TX,
        Some(&answer6.frame()),
        &["xdp_tx", "icmp_too_big"],
    );
    assert_eq!(out.len(), 14 + 40 + 56);

    let fits6 = big6(40055, 1400);
    assert_eq!(fits6.ip_bytes().len(), 1460);
    let want = ipip(&fits6, TUN6_S, TUN6_B, TUN6_BMAC);
    check(
        &lb,
        "IPv6 1460 bytes: exactly the MTU once encapsulated",
        &fits6.frame(),
        XDP_TX,
        Some(&want.frame()),
        &["xdp_tx"],
    );
}

/// The output checker itself (no root): clean frames pass, and one flipped
/// bit in any checksummed header is reported.
#[test]
fn checksum_verifier_catches_corruption() {
    let tcp4 = Pkt::new(C4, WEB, syn_opts(1, 80), REQ).frame();
    let udp4 = Pkt::new(C4, WEB, udp_l4(1, 53, true), b"q").frame();
    let tcp6 = Pkt::new(C6, WEB6, syn_opts(1, 443), REQ).frame();
    let icmp4 = Pkt::new(
        WEB,
        C4,
        L4::Icmp4(Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        })),
        &tcp4[14..14 + 28],
    )
    .frame();
    let icmp6 = Pkt::new(WEB6, C6, L4::Icmp6(Icmpv6Type::PacketTooBig { mtu: 1280 }), &tcp6[14..14 + 48]).frame();
    let inner = Pkt::new(C4, TUN, syn(1, 80), b"x");
    let tun4 = ipip(&inner, TUN_S, TUN_B, TUN_BMAC).frame();
    // (frame, byte offsets whose corruption must be caught)
    let table: [(&str, &Vec<u8>, Vec<usize>); 6] = [
        ("IPv4/TCP", &tcp4, vec![14 + 10, 14 + 20 + 16, 14 + 20 + 40 + 3]),
        ("IPv4/UDP", &udp4, vec![14 + 10, 14 + 20 + 6, 14 + 28]),
        ("IPv6/TCP", &tcp6, vec![14 + 8, 14 + 40 + 16, 14 + 40 + 40 + 3]),
        ("ICMP", &icmp4, vec![14 + 10, 14 + 20 + 2, 14 + 20 + 8 + 10, 14 + 20 + 8 + 12]),
        ("ICMPv6", &icmp6, vec![14 + 8, 14 + 40 + 2, 14 + 40 + 8 + 8]),
        ("IPIP", &tun4, vec![14 + 10, 14 + 20 + 10, 14 + 20 + 20 + 16]),
    ];
    for (name, f, offsets) in table {
        let mut p = Vec::new();
        verify_frame(name, f, &mut p);
        assert!(p.is_empty(), "{name}: clean frame reported {p:?}");
        for off in offsets {
            let mut bad = f.clone();
            bad[off] ^= 0x01;
            let mut p = Vec::new();
            verify_frame(name, &bad, &mut p);
            assert!(!p.is_empty(), "{name}: a flipped bit at {off} went unnoticed");
        }
    }
}

/// NAT IPv6 UDP forward and return.
#[test]
fn nat_ipv6_udp_forward_and_return() {
    let Some(lb) = load_lb(CONFIG) else { return };
    const S: &str = "2001:2::20";
    const B: &str = "2001:2::21";
    const BMAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x15];
    let mut q = Pkt::new(C6, WEB6, udp_l4(5353, 53, true), b"query over IPv6").macs(LB_MAC, C6_MAC);
    q.flow = 0x2468a;
    let port = nat_forward(&lb, "NAT IPv6 UDP forward", &q, S, B, 5353, BMAC, (30000, 30999), &["xdp_tx", "flow_new"]);
    let a = Pkt::new(B, S, udp_l4(5353, port, true), b"answer over IPv6").macs(LB_MAC, BMAC);
    let want = a.clone().macs(C6_MAC, LB_MAC).addrs(WEB6, C6).ports(53, 5353);
    check(&lb, "NAT IPv6 UDP return", &a.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);
}

/// A port-0 NAT VIP: the backend port is the client's destination port, and
/// the SNAT port comes from the default range [1024, 32767].
#[test]
fn nat_port_zero_vip_keeps_the_client_port() {
    let Some(lb) = load_lb(CONFIG) else { return };
    const VIP: &str = "198.18.0.104";
    const S: &str = "198.18.0.60";
    const B: &str = "198.18.0.61";
    const BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x3d];
    for (cport, vport) in [(40060u16, 8443u16), (40061, 22)] {
        let c = Pkt::new(C4, VIP, syn_opts(cport, vport), REQ).ip_fields(0, 0x0606, true, 64);
        let name = format!("port-0 NAT VIP, port {vport}");
        let port = nat_forward(&lb, &name, &c, S, B, vport, BMAC, (1024, 32767), &["xdp_tx", "flow_new"]);
        let r = Pkt::new(B, S, synack_opts(vport, port), b"").macs(LB_MAC, BMAC);
        let want = r.clone().macs(CLIENT_MAC, LB_MAC).addrs(VIP, C4).ports(vport, cport);
        check(&lb, &format!("{name}: return"), &r.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);
    }
}

/// The address filter knows NAT VIPs and their SNAT sources (replies come
/// to those) but not as DSR addresses: a NAT packet does not look for an
/// established DSR flow first (lb.bpf.c).
#[test]
fn nat_addresses_are_in_the_filter_but_not_as_dsr() {
    let Some(lb) = load_lb(CONFIG) else { return };
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let dsr_bits: std::collections::BTreeSet<u32> = lb
        .plan
        .vips
        .iter()
        .filter(|v| v.mode == weir::config::Mode::Dsr)
        .map(|v| weir::dataplane::filter_bit(v.addr))
        .collect();
    for a in ["198.18.0.100", "2001:2::100", "198.18.0.10", "198.18.0.20"] {
        assert!(lb.dp.filter_says_maybe(ip(a)).unwrap(), "{a}: in the filter");
        if !dsr_bits.contains(&weir::dataplane::filter_bit(ip(a))) {
            assert!(!lb.dp.filter_says_dsr(ip(a)).unwrap(), "{a}: not a DSR VIP's address");
        }
    }
}
