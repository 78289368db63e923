//! 802.1Q on a trunk (README "VLANs"): per-VIP and per-backend VLAN ids,
//! tags pushed, rewritten and popped in XDP, through BPF_PROG_TEST_RUN
//! (root; this kernel has no vlan driver, so no lab).
//!
//! Every expected frame is built here from scratch (`Pkt` with its `tag`,
//! etherparse computing every length and checksum); the only value read
//! back from an output is the SNAT port, checked against `source_ports`.
//! The runner (tests/common/fixture.rs) then checks the exact bytes, the
//! XDP action, that the named counters moved and no other, and recomputes
//! every checksum of a transmitted frame independently.

mod common;

use common::*;
use etherparse::{icmpv4, IcmpEchoHeader, Icmpv4Type, Icmpv6Type};

const C4: &str = "10.1.2.3";
const C6: &str = "2001:db8::7";

// DSR: untagged VIP, backend on VLAN 20 (push).
const PUSH: &str = "198.18.0.100";
const PUSH_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
// DSR: VIP on VLAN 10, backend on VLAN 20 (rewrite).
const REWRITE: &str = "198.18.0.101";
const REWRITE_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
// DSR: VIP on VLAN 10, untagged backend (pop).
const POP: &str = "198.18.0.102";
const POP_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];
// DSR, no VLAN anywhere (the path every untagged deployment takes).
const PLAIN: &str = "198.18.0.103";
const PLAIN_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0e];
// Tunnel: VIP on VLAN 10, next hop on VLAN 30.
const TUN: &str = "198.18.0.110";
const TUN_S: &str = "198.18.0.50";
const TUN_B: &str = "198.18.0.51";
const TUN_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
// NAT: VIP on VLAN 10, backend on VLAN 20.
const NAT: &str = "198.18.0.120";
const NAT_S: &str = "198.18.0.60";
const NAT_B: &str = "198.18.0.61";
const NAT_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x3d];
const NAT_RANGE: (u16, u16) = (20000, 20009);
// IPv6 DSR: VIP on VLAN 10, backend on VLAN 20.
const V6: &str = "2001:2::100";
const V6_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x0b];

const CONFIG: &str = r#"
[conntrack]
size = 4096
[maglev]
table_size = 251

[[vip]]
name = "push"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
vlan = 20

[[vip]]
name = "rewrite"
address = "198.18.0.101"
port = 80
protocol = "tcp"
vlan = 10
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
vlan = 20

[[vip]]
name = "pop"
address = "198.18.0.102"
port = 80
protocol = "tcp"
vlan = 10
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"

[[vip]]
name = "plain"
address = "198.18.0.103"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.14"
mac = "02:00:00:00:00:0e"

[[vip]]
name = "tun"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.0.50"
vlan = 10
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"
vlan = 30

[[vip]]
name = "nat"
address = "198.18.0.120"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.60"
source_ports = [20000, 20009]
vlan = 10
[[vip.backend]]
address = "198.18.0.61"
port = 8080
mac = "02:00:00:00:00:3d"
vlan = 20

[[vip]]
name = "v6"
address = "2001:2::100"
port = 443
protocol = "tcp"
vlan = 10
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
vlan = 20
"#;

const TX_NEW: &[&str] = &["xdp_tx", "flow_new"];
const PASS_VLAN: &[&str] = &["xdp_pass", "pass_vlan"];

fn load_lb() -> Option<Lb> {
    if !require_root("VLAN BPF fixtures") {
        return None;
    }
    Some(load(CONFIG))
}

/// `frame` (untagged) with an 802.1Q tag of this TCI after its MACs.
fn tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f.splice(12..12, [0x81, 0x00, (tci >> 8) as u8, tci as u8]);
    f
}

fn client(dst: &str, cport: u16) -> Pkt {
    Pkt::new(C4, dst, syn(cport, 80), b"hello").ip_fields(0x28, 0x1234, true, 60)
}

/// DSR: tags pushed, rewritten (priority and DEI kept) and popped; the MAC
/// rewrite and everything after the tag unchanged.
#[test]
fn dsr_push_rewrite_pop() {
    let Some(lb) = load_lb() else { return };
    let v = client(PUSH, 40001);
    check(
        &lb,
        "untagged -> backend on VLAN 20: tag pushed (priority 0)",
        &v.frame(),
        XDP_TX,
        Some(&v.clone().macs(PUSH_BMAC, LB_MAC).tag(tci(0, false, 20)).frame()),
        TX_NEW,
    );
    // A priority tag (VLAN id 0) is untagged for 802.1Q: served by the VIP
    // without vlan, its priority kept on the backend's tag.
    let v = client(PUSH, 40002).tag(tci(4, false, 0));
    check(
        &lb,
        "priority-tagged -> backend on VLAN 20: id set, priority 4 kept",
        &v.frame(),
        XDP_TX,
        Some(&v.clone().macs(PUSH_BMAC, LB_MAC).tag(tci(4, false, 20)).frame()),
        TX_NEW,
    );

    let v = client(REWRITE, 40003).tag(tci(5, true, 10));
    check(
        &lb,
        "VLAN 10 -> backend on VLAN 20: id rewritten, priority 5 and DEI kept",
        &v.frame(),
        XDP_TX,
        Some(&v.clone().macs(REWRITE_BMAC, LB_MAC).tag(tci(5, true, 20)).frame()),
        TX_NEW,
    );
    // The same flow again: tracked, the same rewrite.
    let v = Pkt::new(C4, REWRITE, ack(40003, 80), b"more").tag(tci(5, true, 10));
    check(
        &lb,
        "VLAN 10 -> VLAN 20, tracked flow",
        &v.frame(),
        XDP_TX,
        Some(&v.clone().macs(REWRITE_BMAC, LB_MAC).tag(tci(5, true, 20)).frame()),
        &["xdp_tx", "flow_hit"],
    );

    let v = client(POP, 40004).tag(tci(3, false, 10));
    check(
        &lb,
        "VLAN 10 -> untagged backend: tag popped",
        &v.frame(),
        XDP_TX,
        Some(&v.clone().macs(POP_BMAC, LB_MAC).untagged().frame()),
        TX_NEW,
    );

    // 802.1ad (0x88a8) tag: its id is rewritten, its TPID kept.
    let v = client(REWRITE, 40005);
    let mut input = v.frame();
    input.splice(12..12, [0x88, 0xa8, 0x20, 10]); // priority 1, VLAN 10
    let mut want = v.clone().macs(REWRITE_BMAC, LB_MAC).frame();
    want.splice(12..12, [0x88, 0xa8, 0x20, 20]);
    check(&lb, "802.1ad VLAN 10 -> VLAN 20: TPID kept", &input, XDP_TX, Some(&want), TX_NEW);

    // No VLAN anywhere: nothing but the MACs changes (the path of every
    // untagged deployment).
    let v = client(PLAIN, 40006);
    check(&lb, "untagged, no vlan anywhere", &v.frame(), XDP_TX, Some(&v.clone().macs(PLAIN_BMAC, LB_MAC).frame()), TX_NEW);

    // IPv6, VLAN 10 -> 20.
    let mut v6 = Pkt::new(C6, V6, syn_opts(40007, 443), b"six").tag(tci(2, false, 10));
    v6.flow = 0x12345;
    check(
        &lb,
        "IPv6 VLAN 10 -> VLAN 20",
        &v6.frame(),
        XDP_TX,
        Some(&v6.clone().macs(V6_BMAC, LB_MAC).tag(tci(2, false, 20)).frame()),
        TX_NEW,
    );
}

/// A VIP is served on its VLAN only: other tags and untagged frames go to
/// the kernel unchanged, counted as pass_vlan, with no flow made.
#[test]
fn vip_vlan_mismatch_passes() {
    let Some(lb) = load_lb() else { return };
    let cases: Vec<Case> = vec![
        Case::new("VIP on VLAN 10, frame on VLAN 11", client(REWRITE, 41001).tag(tci(0, false, 11)).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new("VIP on VLAN 10, untagged frame", client(REWRITE, 41002).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new("VIP on VLAN 10, priority-tagged frame", client(POP, 41003).tag(tci(6, false, 0)).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new("untagged VIP, frame on VLAN 10", client(PUSH, 41004).tag(tci(0, false, 10)).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new("tunnel VIP on VLAN 10, frame on VLAN 30", client(TUN, 41005).tag(tci(0, false, 30)).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new("NAT VIP on VLAN 10, frame on VLAN 20", client(NAT, 41006).tag(tci(0, false, 20)).frame(), XDP_PASS, None, PASS_VLAN),
        Case::new(
            "IPv6 VIP on VLAN 10, untagged",
            Pkt::new(C6, V6, syn(41007, 443), b"").frame(),
            XDP_PASS,
            None,
            PASS_VLAN,
        ),
    ];
    run_table(&lb, &cases);
    for (i, v) in lb.plan.vips.iter().enumerate() {
        assert_eq!(lb.dp.vip_traffic(v.id).unwrap().packets, 0, "vip[{i}] {} counted a passed frame", v.name);
    }
}

/// Tunnel: the outer frame carries the next hop's tag (VLAN 30) with the
/// client frame's priority; the inner packet is the client's, unchanged.
#[test]
fn tunnel_outer_frame_is_tagged() {
    let Some(lb) = load_lb() else { return };
    let inner = Pkt::new(C4, TUN, syn_opts(42001, 80), b"tunnelled").ip_fields(0xb8, 0x4242, true, 61).tag(tci(3, false, 10));
    let want = ipip(&inner, TUN_S, TUN_B, TUN_BMAC).tag(tci(3, false, 30));
    check(&lb, "IPIP, VLAN 10 -> outer on VLAN 30", &inner.frame(), XDP_TX, Some(&want.frame()), TX_NEW);
    let again = Pkt::new(C4, TUN, ack(42001, 80), b"second").ip_fields(0, 0x4243, true, 61).tag(tci(0, false, 10));
    let want = ipip(&again, TUN_S, TUN_B, TUN_BMAC).tag(tci(0, false, 30));
    check(&lb, "IPIP, tracked flow", &again.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_hit"]);
}

/// NAT: the forward frame leaves on the backend's VLAN (20), the translated
/// reply (and an ICMP error about the flow) goes back on the client's (the
/// VIP's, 10), whatever tag the backend's side sent it with; priorities are
/// the frame's own.
#[test]
fn nat_forward_and_return_across_vlans() {
    let Some(lb) = load_lb() else { return };
    let c = Pkt::new(C4, NAT, syn_opts(43001, 80), b"GET /").ip_fields(0x28, 0xbeef, true, 57).tag(tci(2, false, 10));
    let frame = c.frame();
    let r = run(&lb, "NAT forward", &frame);
    let port = out_sport(&r.out).unwrap_or(0);
    assert!(
        r.action == XDP_TX && (NAT_RANGE.0..=NAT_RANGE.1).contains(&port),
        "NAT forward: {} with SNAT port {port} (counters that rose: {})\n  output: {}",
        action_name(r.action),
        rose(&r),
        hex_row(&r.out)
    );
    let want = c.clone().macs(NAT_BMAC, LB_MAC).addrs(NAT_S, NAT_B).ports(port, 8080).tag(tci(2, false, 20));
    expect("NAT forward: VLAN 10 -> VLAN 20, SNAT", &r, &frame, XDP_TX, Some(&want.frame()), TX_NEW);

    // The backend's SYN-ACK, tagged 20 with priority 6: back on VLAN 10.
    let reply = Pkt::new(NAT_B, NAT_S, synack_opts(8080, port), b"HTTP/1.1 200")
        .macs(LB_MAC, NAT_BMAC)
        .ip_fields(0x04, 0x5678, true, 64)
        .tag(tci(6, false, 20));
    let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs(NAT, C4).ports(80, 43001).tag(tci(6, false, 10));
    check(&lb, "NAT return: VLAN 20 -> client's VLAN 10", &reply.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);

    // An untagged reply of the same flow: the client's tag is pushed.
    let reply = Pkt::new(NAT_B, NAT_S, ack(8080, port), b"body").macs(LB_MAC, NAT_BMAC).ip_fields(0, 0x5679, true, 64);
    let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs(NAT, C4).ports(80, 43001).tag(tci(0, false, 10));
    check(&lb, "NAT return, untagged: client's tag pushed", &reply.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);

    // The client's next segment: tracked, same translation, same tag.
    let d = Pkt::new(C4, NAT, ack(43001, 80), b"more").tag(tci(1, false, 10));
    let want = d.clone().macs(NAT_BMAC, LB_MAC).addrs(NAT_S, NAT_B).ports(port, 8080).tag(tci(1, false, 20));
    check(&lb, "NAT forward, tracked flow", &d.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_hit"]);

    // An ICMP error about the flow from the backend's side (VLAN 20,
    // priority 5), quoting the forwarded SYN: translated, and sent on the
    // client's VLAN 10 with its own priority.
    let fwd_ip = c.clone().addrs(NAT_S, NAT_B).ports(port, 8080).ip_bytes();
    let cli_ip = c.ip_bytes();
    let frag =
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
    let err = Pkt::new(NAT_B, NAT_S, L4::Icmp4(frag), &fwd_ip[..20 + 8])
        .macs(LB_MAC, NAT_BMAC)
        .ip_fields(0xc0, 0x5151, false, 64)
        .tag(tci(5, false, 20));
    let want = err.clone().macs(CLIENT_MAC, LB_MAC).addrs(NAT, C4).with_payload(&cli_ip[..20 + 8]).tag(tci(5, false, 10));
    check(&lb, "NAT ICMP error: VLAN 20 -> client's VLAN 10", &err.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_icmp"]);
}

/// ARP and NDP for a VIP on a VLAN: answered only when the request came
/// with the VIP's tag, and the reply keeps that tag; NAT source addresses
/// are answered on any VLAN (backends on several VLANs resolve them).
#[test]
fn arp_and_ndp_on_the_vips_vlan() {
    let Some(lb) = load_lb() else { return };
    let vip = [198, 18, 0, 101];
    let who = [198, 18, 0, 1];
    let q = tci(7, false, 10);
    let cases: Vec<Case> = vec![
        Case::new(
            "ARP for a VLAN 10 VIP on VLAN 10: answered, tag kept",
            tagged(&arp_request(who, vip), q),
            XDP_TX,
            Some(tagged(&arp_reply(who, vip), q)),
            &["xdp_tx", "arp_reply"],
        ),
        Case::new("ARP for a VLAN 10 VIP on VLAN 11", tagged(&arp_request(who, vip), tci(0, false, 11)), XDP_PASS, None, PASS_VLAN),
        Case::new("ARP for a VLAN 10 VIP, untagged", arp_request(who, vip), XDP_PASS, None, PASS_VLAN),
        Case::new(
            "ARP for an untagged VIP, untagged: answered",
            arp_request(who, [198, 18, 0, 100]),
            XDP_TX,
            Some(arp_reply(who, [198, 18, 0, 100])),
            &["xdp_tx", "arp_reply"],
        ),
        Case::new(
            "ARP for an untagged VIP on VLAN 10",
            tagged(&arp_request(who, [198, 18, 0, 100]), tci(0, false, 10)),
            XDP_PASS,
            None,
            PASS_VLAN,
        ),
        Case::new(
            "ARP for the NAT source address on the backend's VLAN 20: answered",
            tagged(&arp_request([198, 18, 0, 61], [198, 18, 0, 60]), tci(0, false, 20)),
            XDP_TX,
            Some(tagged(&arp_reply([198, 18, 0, 61], [198, 18, 0, 60]), tci(0, false, 20))),
            &["xdp_tx", "arp_reply"],
        ),
    ];
    run_table(&lb, &cases);

    let client: std::net::Ipv6Addr = C6.parse().unwrap();
    let target: std::net::Ipv6Addr = V6.parse().unwrap();
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&LB_MAC);
    let na = Icmpv6Type::Unknown { type_u8: 136, code_u8: 0, bytes5to8: [0x60, 0, 0, 0] };
    let want = Pkt::new(V6, C6, L4::Icmp6(na), &body).macs(CLIENT_MAC, LB_MAC).ip_fields(0, 0, false, 255).tag(q).frame();
    let ns = neighbour_solicitation(CLIENT_MAC, client, target);
    check(&lb, "NS for a VLAN 10 VIP on VLAN 10: NA, tag kept", &tagged(&ns, q), XDP_TX, Some(&want), &["xdp_tx", "ndp_reply"]);
    check(&lb, "NS for a VLAN 10 VIP on VLAN 12", &tagged(&ns, tci(0, false, 12)), XDP_PASS, None, PASS_VLAN);
    check(&lb, "NS for a VLAN 10 VIP, untagged", &ns, XDP_PASS, None, PASS_VLAN);
}

/// Config: `vlan` is 1 to 4094 on VIPs and backends, alike on VIPs that
/// share an address; errors name the field.
#[test]
fn vlan_config_errors_name_the_field() {
    let err = |t: &str| format!("{:#}", weir::config::Config::from_toml(t).unwrap_err());
    let base = "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\nVIPVLAN\n[[vip.backend]]\naddress = \"198.18.0.11\"\nBEVLAN\n";
    let cfg = |v: &str, b: &str| base.replace("VIPVLAN", v).replace("BEVLAN", b);
    let e = err(&cfg("vlan = 0", ""));
    assert!(e.contains("vip[0].vlan: 0 is not a VLAN id: 1 to 4094"), "{e}");
    let e = err(&cfg("vlan = 4095", ""));
    assert!(e.contains("vip[0].vlan: 4095 is not a VLAN id"), "{e}");
    let e = err(&cfg("", "vlan = 5000"));
    assert!(e.contains("vip[0].backend[0].vlan: 5000 is not a VLAN id"), "{e}");
    let e = err(&cfg("vlan = -1", ""));
    assert!(e.contains("vlan"), "{e}");
    let two = format!("{}{}", cfg("vlan = 10", ""), cfg("vlan = 11", "").replace("port = 80", "port = 81"));
    let e = err(&two);
    assert!(e.contains("vip[1].vlan: 11 but vip[0] has the same address and vlan 10"), "{e}");
    let two = format!("{}{}", cfg("vlan = 10", ""), cfg("", "").replace("port = 80", "port = 81"));
    let e = err(&two);
    assert!(e.contains("vip[1].vlan: none (untagged) but vip[0] has the same address and vlan 10"), "{e}");
    assert!(weir::config::Config::from_toml(&cfg("vlan = 4094", "vlan = 1")).is_ok());
}

/// A NAT port taken over from an expired flow of another VIP (nat_claim
/// rewrites the entry in place, under its compare-and-swap): the new
/// flow's replies go to its own VIP's VLAN, not the old flow's.
#[test]
fn a_taken_over_nat_port_carries_the_new_flows_vlan() {
    if !require_root("VLAN BPF fixtures") {
        return;
    }
    // Two NAT VIPs on VLANs 10 and 11 sharing one SNAT address and port,
    // and one backend: their flows have the same reverse key.
    let vip = |name: &str, addr: &str, vlan: u16| {
        format!(
            r#"
[[vip]]
name = "{name}"
address = "{addr}"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.70"
source_ports = [41000, 41000]
vlan = {vlan}
[[vip.backend]]
address = "198.18.0.71"
mac = "02:00:00:00:00:47"
vlan = 20
"#
        )
    };
    let cfg = format!(
        "[conntrack]\nsize = 1024\ntcp_fin_timeout = 1\n[maglev]\ntable_size = 251\n{}{}",
        vip("a", "198.18.0.130", 10),
        vip("b", "198.18.0.131", 11)
    );
    let lb = load(&cfg);
    const BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x47];
    let a = Pkt::new(C4, "198.18.0.130", syn(44001, 80), b"").tag(tci(0, false, 10));
    let want = a.clone().macs(BMAC, LB_MAC).addrs("198.18.0.70", "198.18.0.71").ports(41000, 80).tag(tci(0, false, 20));
    check(&lb, "VIP a (VLAN 10): SYN", &a.frame(), XDP_TX, Some(&want.frame()), TX_NEW);
    let a = Pkt::new(C4, "198.18.0.130", fin(44001, 80), b"").tag(tci(0, false, 10));
    let want = a.clone().macs(BMAC, LB_MAC).addrs("198.18.0.70", "198.18.0.71").ports(41000, 80).tag(tci(0, false, 20));
    check(&lb, "VIP a: FIN (closing: 1 s timeout)", &a.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "flow_hit"]);
    std::thread::sleep(std::time::Duration::from_millis(2600));

    let b = Pkt::new("10.1.2.4", "198.18.0.131", syn(44002, 80), b"").tag(tci(0, false, 11));
    let want = b.clone().macs(BMAC, LB_MAC).addrs("198.18.0.70", "198.18.0.71").ports(41000, 80).tag(tci(0, false, 20));
    check(&lb, "VIP b (VLAN 11): SYN takes the expired port over", &b.frame(), XDP_TX, Some(&want.frame()), TX_NEW);
    let reply = Pkt::new("198.18.0.71", "198.18.0.70", synack_opts(80, 41000), b"")
        .macs(LB_MAC, BMAC)
        .tag(tci(0, false, 20));
    let want = reply.clone().macs(CLIENT_MAC, LB_MAC).addrs("198.18.0.131", "10.1.2.4").ports(80, 44002).tag(tci(0, false, 11));
    check(&lb, "reply of b's flow: VLAN 11, not a's 10", &reply.frame(), XDP_TX, Some(&want.frame()), &["xdp_tx", "nat_reply"]);
}

/// What weir builds in the client's own frame goes back on the client's
/// VLAN: ICMP too-big for a tunnel VIP (the tag pushed again in front of
/// the new headers, with the client frame's priority) and echo replies
/// (the tag kept); a ping on another VLAN goes to the kernel.
#[test]
fn too_big_and_ping_answer_on_the_vips_vlan() {
    let Some(lb) = load_lb() else { return };
    // 20 + 20 + 1450 = 1490 bytes inner: 1510 encapsulated, above MTU 1500.
    let big = Pkt::new(C4, TUN, ack(45001, 80), &vec![0x5a; 1450]).ip_fields(0x48, 0x7777, true, 50).tag(tci(3, false, 10));
    let cli = big.ip_bytes();
    let answer = Pkt::new(
        TUN,
        C4,
        L4::Icmp4(Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1480,
        })),
        &cli[..28],
    )
    .macs(CLIENT_MAC, LB_MAC)
    .ip_fields(0, 0, false, 64)
    .tag(tci(3, false, 10));
    check(&lb, "too big on VLAN 10: frag-needed on VLAN 10", &big.frame(), XDP_TX, Some(&answer.frame()), &["xdp_tx", "icmp_too_big"]);

    let echo = IcmpEchoHeader { id: 7, seq: 1 };
    let req = Pkt::new(C4, REWRITE, L4::Icmp4(Icmpv4Type::EchoRequest(echo)), b"ping").ip_fields(0, 0x4321, true, 57);
    let reply = Pkt::new(REWRITE, C4, L4::Icmp4(Icmpv4Type::EchoReply(echo)), b"ping")
        .macs(CLIENT_MAC, LB_MAC)
        .ip_fields(0, 0x4321, true, 64);
    let q = tci(6, false, 10);
    check_exact(&lb, "ping on the VIP's VLAN 10: answered, tag kept", &req.clone().tag(q).frame(), XDP_TX, Some(&reply.tag(q).frame()), &["xdp_tx", "echo_reply"]);
    check_exact(&lb, "ping on VLAN 11", &req.clone().tag(tci(0, false, 11)).frame(), XDP_PASS, None, &["xdp_pass", "pass_unknown_proto"]);
    check_exact(&lb, "ping untagged", &req.frame(), XDP_PASS, None, &["xdp_pass", "pass_unknown_proto"]);
}

/// A tracked DSR flow is sent on from its backend entry without the VIP's
/// (lb.bpf.c, flow first): the VIP's VLAN still rules. The flow's next
/// packet on its VLAN is a table hit; the same tuple on another VLAN, or
/// untagged, is passed like any frame off the VIP's VLAN and counted for
/// no VIP or backend.
#[test]
fn a_tracked_flow_on_another_vlan_passes() {
    let Some(lb) = load_lb() else { return };
    let first = client(REWRITE, 42001).tag(tci(0, false, 10)).frame();
    let r = run(&lb, "the flow's SYN, on the VIP's VLAN", &first);
    assert_eq!(action_name(r.action), "XDP_TX", "{}", rose(&r));
    // The client's ACK makes it established (flows4), where flow first looks.
    let est = |tag: Option<u16>| {
        let p = Pkt::new(C4, REWRITE, ack(42001, 80), b"data");
        match tag {
            Some(t) => p.tag(t).frame(),
            None => p.frame(),
        }
    };
    let on = est(Some(tci(0, false, 10)));
    let _ = run(&lb, "the ACK that ends the handshake", &on);
    let again = run(&lb, "its next packet", &on);
    assert_eq!(action_name(again.action), "XDP_TX", "{}", rose(&again));
    assert_eq!(again.delta[stat("flow_hit")], 1, "a table hit: {}", rose(&again));
    let before: u64 = lb.plan.vips.iter().map(|v| lb.dp.vip_traffic(v.id).unwrap().packets).sum();
    for (what, f) in [
        ("the same tuple on VLAN 11", est(Some(tci(0, false, 11)))),
        ("the same tuple untagged", est(None)),
    ] {
        let r = run(&lb, what, &f);
        assert_eq!(action_name(r.action), "XDP_PASS", "{what}: {}", rose(&r));
        assert_eq!(r.delta[stat("pass_vlan")], 1, "{what}: {}", rose(&r));
        assert_eq!(r.delta[stat("flow_hit")], 0, "{what}: {}", rose(&r));
    }
    let after: u64 = lb.plan.vips.iter().map(|v| lb.dp.vip_traffic(v.id).unwrap().packets).sum();
    assert_eq!(after, before, "passed frames are no VIP's traffic");
}
