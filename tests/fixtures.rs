//! Data-plane fixtures through BPF_PROG_TEST_RUN (root): for each case the
//! maps are set up through the same API `weir run` uses, a frame built with
//! etherparse goes in, and the XDP action, the exact output bytes and the
//! counters are checked (Katran's test table, cilium's three steps).

mod common;

use common::*;
use weir::skel::{stat_name, STAT_COUNT};

const CONFIG: &str = r#"
[conntrack]
size = 4096
[maglev]
table_size = 65537

[[vip]]
name = "web"
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
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 443
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
[[vip.backend]]
address = "2001:2::12"
mac = "02:00:00:00:06:0c"

[[vip]]
name = "allports"
address = "198.18.0.101"
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:00:1f"

[[vip]]
name = "drained"
address = "198.18.0.102"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.41"
mac = "02:00:00:00:00:29"
weight = 0
"#;

struct Case {
    name: String,
    frame: Vec<u8>,
    action: u32,
    /// None: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// Global counters that must rise by exactly one; every other action
    /// and reason counter must stay.
    counters: Vec<&'static str>,
}

fn check(lb: &Lb, c: &Case) {
    let before = lb.counters();
    let (action, out) = lb.dp.run(&c.frame).unwrap_or_else(|e| panic!("{}: test_run: {e:#}", c.name));
    let after = lb.counters();
    assert_eq!(action, c.action, "{}: XDP action", c.name);
    let want = c.output.clone().unwrap_or_else(|| c.frame.clone());
    assert_eq!(out, want, "{}: output bytes", c.name);
    for i in 0..STAT_COUNT {
        let delta = after[i] - before[i];
        let expected = u64::from(c.counters.contains(&stat_name(i)));
        // flow_hit / flow_new / rescheduled are events the table names when it cares.
        let event = matches!(stat_name(i), "flow_hit" | "flow_new" | "flow_rescheduled");
        if !event || expected == 1 {
            assert_eq!(delta, expected, "{}: counter {} rose by {delta}", c.name, stat_name(i));
        }
    }
    // DSR leaves L3/L4 untouched: the output must still parse and its
    // checksums still verify, recomputed here by etherparse.
    if (c.action == XDP_TX || c.action == XDP_REDIRECT) && out[12..14] != [0x08, 0x06] {
        let p = etherparse::SlicedPacket::from_ethernet(&out)
            .unwrap_or_else(|e| panic!("{}: output does not parse: {e}", c.name));
        match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "{}: IPv4 checksum", c.name);
            }
            Some(etherparse::NetSlice::Ipv6(_)) => {}
            other => panic!("{}: output has no IP header: {other:?}", c.name),
        }
        match &p.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => {
                let want = match &p.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => t.calc_checksum_ipv4(ip.header().source(), ip.header().destination()),
                    Some(etherparse::NetSlice::Ipv6(ip)) => t.calc_checksum_ipv6(ip.header().source(), ip.header().destination()),
                    _ => unreachable!(),
                }
                .unwrap();
                assert_eq!(t.checksum(), want, "{}: TCP checksum", c.name);
            }
            Some(etherparse::TransportSlice::Udp(u)) => {
                assert_ne!(u.checksum(), 0, "{}: UDP checksum present", c.name);
            }
            // Built and checksummed independently by the case itself.
            Some(etherparse::TransportSlice::Icmpv6(_)) => {}
            other => panic!("{}: output has no L4 header: {other:?}", c.name),
        }
    }
}

#[test]
fn packet_table() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let vip: std::net::IpAddr = "198.18.0.100".parse().unwrap();
    let cli: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let web = |sport| lb.ring_mac(0, flow_hash(cli, vip, sport, 80, 6));

    let syn = tcp_syn("10.1.2.3", "198.18.0.100", 40001, 80);
    let udp_q = udp("10.1.2.3", "198.18.0.100", 5353, 53, b"query");
    let syn6 = tcp_syn("2001:db8::7", "2001:2::100", 40001, 443);
    let h6 = flow_hash("2001:db8::7".parse().unwrap(), "2001:2::100".parse().unwrap(), 40001, 443, 6);
    let vlan = tcp_syn_vlan("10.1.2.3", "198.18.0.100", 40002, 80, 42);
    let opts = tcp_syn_ip_options("10.1.2.3", "198.18.0.100", 40003, 80);
    assert_eq!(opts[14] & 0x0f, 6, "fixture has IHL 6");
    let allports = tcp_syn("10.1.2.3", "198.18.0.101", 40004, 8443);

    let mut frag_mf = tcp_syn("10.1.2.3", "198.18.0.100", 40005, 80);
    frag_mf[20] |= 0x20; // MF: a first fragment
    let mut frag_off = udp("10.1.2.3", "198.18.0.100", 5353, 53, b"later");
    frag_off[21] = 0x10; // offset 16 x 8 bytes: a later fragment
    let mut hbh = syn6.clone();
    // Insert an 8-byte hop-by-hop header in front of TCP.
    hbh[20] = 0; // next header: hop-by-hop
    hbh.splice(54..54, [6u8, 0, 1, 4, 0, 0, 0, 0]);
    let plen = u16::from_be_bytes([hbh[18], hbh[19]]) + 8;
    hbh[18..20].copy_from_slice(&plen.to_be_bytes());
    let mut icmp = tcp_syn("10.1.2.3", "198.18.0.100", 1, 80);
    icmp[23] = 1;
    let mut lldp = syn.clone();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;

    let mut cases = vec![
        Case {
            name: "TCP SYN to the VIP goes to the Maglev backend".into(),
            output: Some(with_macs(&syn, web(40001), LB_MAC)),
            frame: syn.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "UDP to the UDP VIP on the same address".into(),
            output: Some(with_macs(&udp_q, lb.ring_mac(1, flow_hash(cli, vip, 5353, 53, 17)), LB_MAC)),
            frame: udp_q.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "IPv6 VIP".into(),
            output: Some(with_macs(&syn6, lb.ring_mac(2, h6), LB_MAC)),
            frame: syn6.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "802.1Q tag is kept".into(),
            output: Some(with_macs(&vlan, web(40002), LB_MAC)),
            frame: vlan.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "IPv4 with options: ports read past them".into(),
            output: Some(with_macs(&opts, web(40003), LB_MAC)),
            frame: opts.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "port-0 VIP takes any port".into(),
            output: Some(with_macs(&allports, lb.backend_mac(3, 0), LB_MAC)),
            frame: allports.clone(),
            action: XDP_TX,
            counters: vec!["xdp_tx", "flow_new"],
        },
        Case {
            name: "non-VIP address passes unchanged".into(),
            frame: tcp_syn("10.1.2.3", "198.18.0.99", 40001, 80),
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_not_vip"],
        },
        Case {
            name: "VIP address, port without a VIP".into(),
            frame: tcp_syn("10.1.2.3", "198.18.0.100", 40001, 81),
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_not_vip"],
        },
        Case {
            name: "UDP to the TCP-only port".into(),
            frame: udp("10.1.2.3", "198.18.0.100", 40001, 80, b"x"),
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_not_vip"],
        },
        Case {
            name: "first fragment (MF) goes to the kernel".into(),
            frame: frag_mf,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_fragment"],
        },
        Case {
            name: "later fragment goes to the kernel".into(),
            frame: frag_off,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_fragment"],
        },
        Case {
            name: "IPv6 extension header goes to the kernel".into(),
            frame: hbh,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_ipv6_ext"],
        },
        Case {
            name: "ICMP to the VIP".into(),
            frame: icmp,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_unknown_proto"],
        },
        Case {
            name: "not IP (LLDP ethertype)".into(),
            frame: lldp,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_not_ip"],
        },
        Case {
            name: "IPv4 IHL below 5".into(),
            frame: bad_ihl,
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_malformed"],
        },
        Case {
            name: "VIP whose backends all have weight 0 drops".into(),
            frame: tcp_syn("10.1.2.3", "198.18.0.102", 40001, 80),
            action: XDP_DROP,
            output: None,
            counters: vec!["xdp_drop", "drop_no_backend"],
        },
    ];

    // Truncated at every header boundary (test_run needs a whole Ethernet
    // header, so cuts start at 14 bytes).
    for (what, frame, cuts) in [
        ("IPv4/TCP", syn.clone(), vec![14, 33, 34, 53]),
        ("IPv4/UDP", udp_q.clone(), vec![41]),
        ("802.1Q", vlan.clone(), vec![17, 18, 37, 57]),
        ("IPv6/TCP", syn6.clone(), vec![53, 73]),
        ("IPv4 options", opts.clone(), vec![37, 38, 57]),
    ] {
        for n in cuts {
            cases.push(Case {
                name: format!("{what} cut to {n} bytes"),
                frame: frame[..n].to_vec(),
                action: XDP_PASS,
                output: None,
                counters: vec!["xdp_pass", "pass_truncated"],
            });
        }
    }

    // ARP: the VIP's is answered with the interface MAC, others pass.
    let req = arp_request([198, 18, 0, 1], [198, 18, 0, 100]);
    let mut reply = CLIENT_MAC.to_vec();
    reply.extend_from_slice(&LB_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&LB_MAC);
    reply.extend_from_slice(&[198, 18, 0, 100]);
    reply.extend_from_slice(&CLIENT_MAC);
    reply.extend_from_slice(&[198, 18, 0, 1]);
    cases.push(Case {
        name: "ARP request for the VIP is answered".into(),
        frame: req,
        action: XDP_TX,
        output: Some(reply),
        counters: vec!["xdp_tx", "arp_reply"],
    });
    cases.push(Case {
        name: "ARP request for another address passes".into(),
        frame: arp_request([198, 18, 0, 1], [198, 18, 0, 10]),
        action: XDP_PASS,
        output: None,
        counters: vec!["xdp_pass", "pass_arp_other"],
    });

    for c in &cases {
        check(&lb, c);
    }

    // Per-VIP and per-backend counters saw the forwarded frames.
    let web = lb.dp.vip_traffic(0).unwrap();
    assert_eq!(web.new_flows, 3, "web VIP: SYN, VLAN and options flows");
    assert_eq!(web.packets, 3);
    assert_eq!(web.bytes, (syn.len() + vlan.len() + opts.len()) as u64);
    let per_backend: u64 =
        lb.plan.vips[0].backends.iter().map(|b| lb.dp.backend_traffic(b.id).unwrap().packets).sum();
    assert_eq!(per_backend, 3);
    assert_eq!(lb.dp.vip_traffic(4).unwrap().packets, 1, "drained VIP counts its dropped packet");
}

#[test]
fn established_flow_keeps_its_backend_when_the_set_changes() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let syn = tcp_syn("10.9.9.9", "198.18.0.100", 50000, 80);
    let (a, out) = lb.dp.run(&syn).unwrap();
    assert_eq!(a, XDP_TX);
    let first = <[u8; 6]>::try_from(&out[0..6]).unwrap();
    // Every slot now points at another backend: new flows move, this one must not.
    let other = lb.plan.vips[0].backends.iter().find(|b| lb.hops[&b.id].mac != first).unwrap();
    lb.dp.write_ring(0, &vec![other.id; 65537]).unwrap();
    let again = lb.counters();
    let (a, out) = lb.dp.run(&syn).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &first[..]), "tracked flow stays on its backend");
    assert_eq!(lb.counters()[stat("flow_hit")] - again[stat("flow_hit")], 1);
    let (_, out) = lb.dp.run(&tcp_syn("10.9.9.9", "198.18.0.100", 50001, 80)).unwrap();
    assert_eq!(&out[0..6], &lb.hops[&other.id].mac[..], "a new flow follows the new table");

    // Its backend leaves the config: the flow is rescheduled, not blackholed.
    let gone = lb.plan.vips[0].backends.iter().find(|b| lb.hops[&b.id].mac == first).unwrap();
    lb.dp.remove_backend(gone.id).unwrap();
    let before = lb.counters();
    let (a, out) = lb.dp.run(&syn).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &lb.hops[&other.id].mac[..]));
    assert_eq!(lb.counters()[stat("flow_rescheduled")] - before[stat("flow_rescheduled")], 1);
}

#[test]
fn round_robin_rotates_per_new_flow_not_per_packet() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(&CONFIG.replacen("protocol = \"tcp\"\n", "protocol = \"tcp\"\nscheduler = \"round-robin\"\n", 1));
    let macs: Vec<[u8; 6]> = (0..3).map(|i| lb.backend_mac(0, i)).collect();
    let mut seen = Vec::new();
    for i in 0..6u16 {
        let f = tcp_syn("10.1.1.1", "198.18.0.100", 30000 + i, 80);
        let (a, out) = lb.dp.run(&f).unwrap();
        assert_eq!(a, XDP_TX);
        seen.push(<[u8; 6]>::try_from(&out[0..6]).unwrap());
        // The same flow's next packet stays put, and does not advance the rotation.
        let (_, out2) = lb.dp.run(&f).unwrap();
        assert_eq!(&out2[0..6], &out[0..6], "flow {i}: second packet same backend");
    }
    assert_eq!(seen, [macs[0], macs[1], macs[2], macs[0], macs[1], macs[2]], "strict rotation in address order");
}

#[test]
fn source_hash_sticks_per_client_address() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(&CONFIG.replacen("protocol = \"tcp\"\n", "protocol = \"tcp\"\nscheduler = \"source-hash\"\n", 1));
    let mut backends_used = std::collections::BTreeSet::new();
    for c in 0..32u8 {
        let src = format!("10.2.0.{}", c + 1);
        let want = lb.ring_mac(0, source_hash(src.parse().unwrap()));
        for sport in [1000u16, 2000, 3000, 4000] {
            let (a, out) = lb.dp.run(&tcp_syn(&src, "198.18.0.100", sport, 80)).unwrap();
            assert_eq!(a, XDP_TX);
            assert_eq!(&out[0..6], &want[..], "{src}:{sport} goes where its address hashes");
        }
        backends_used.insert(want);
    }
    assert_eq!(backends_used.len(), 3, "32 clients spread over all 3 backends");
}

#[test]
fn redirect_through_a_devmap() {
    if !require_root("BPF fixtures") {
        return;
    }
    // `lo` exists in every namespace; test_run does not transmit, it only
    // returns the action the program chose.
    let lb = load(&CONFIG.replacen("mac = \"02:00:00:00:00:0b\"", "mac = \"02:00:00:00:00:0b\"\niface = \"lo\"", 1));
    let before = lb.counters();
    let mut redirected = 0;
    for sport in 0..64u16 {
        let f = tcp_syn("10.3.3.3", "198.18.0.100", 20000 + sport, 80);
        let (a, out) = lb.dp.run(&f).unwrap();
        if out[0..6] == [0x02, 0, 0, 0, 0, 0x0b] {
            assert_eq!(a, XDP_REDIRECT, "backend behind lo is reached through the DEVMAP");
            assert_eq!(&out[6..12], &[0u8; 6][..], "source MAC is lo's");
            redirected += 1;
        } else {
            assert_eq!(a, XDP_TX);
        }
    }
    assert!(redirected > 0, "some of 64 flows hash to the redirected backend");
    assert_eq!(lb.counters()[stat("xdp_redirect")] - before[stat("xdp_redirect")], redirected);
}

#[test]
fn a_reused_backend_id_does_not_inherit_idle_flows() {
    if !require_root("BPF fixtures") {
        return;
    }
    use std::collections::BTreeSet;
    use weir::config::Config;
    use weir::plan::Plan;
    let lb = load(CONFIG);
    let syn = tcp_syn("10.4.4.4", "198.18.0.100", 51000, 80);
    let (_, out) = lb.dp.run(&syn).unwrap();
    let first = lb.plan.vips[0].backends.iter().find(|b| lb.hops[&b.id].mac[..] == out[0..6]).unwrap();
    let freed = first.id;
    let iface = weir::net::Iface::unattached("test0", LB_MAC);
    let apply = |text: &str, prev: &Plan| {
        let p = Plan::build_after(&Config::from_toml(text).unwrap(), Some(prev)).unwrap();
        let (hops, tx) = weir::dataplane::configured_hops(&p, &iface).unwrap();
        lb.dp.reload(prev, &p, &hops, &tx, &BTreeSet::new()).unwrap();
        p
    };
    // Reload 1 removes the flow's backend; reload 2 adds one that gets its id.
    let removed = CONFIG.replace(&format!("address = \"{}\"\nmac", first.addr), "address = \"198.18.0.200\"\nmac");
    let b = apply(&removed, &lb.plan);
    let again = CONFIG.replace(&format!("address = \"{}\"\nmac", first.addr), "address = \"198.18.0.201\"\nmac");
    let c = apply(&again, &b);
    let newcomer = c.vips[0].backends.iter().find(|x| x.addr.to_string() == "198.18.0.201").unwrap();
    assert_eq!(newcomer.id, freed, "the freed id is reused two reloads later (the case under test)");
    assert_eq!(lb.dp.backend_traffic(freed).unwrap().packets, 0, "the newcomer's counters start at zero");
    let before = lb.counters();
    let (a, _) = lb.dp.run(&syn).unwrap();
    assert_eq!(a, XDP_TX);
    assert_eq!(lb.counters()[stat("flow_rescheduled")] - before[stat("flow_rescheduled")], 1, "the idle flow is rescheduled, not handed to the id's new owner");
}

/// RFC 1071 over the IPv6 pseudo-header and an ICMPv6 message, written here
/// independently of bpf/csum.h.
fn icmpv6_checksum(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for ch in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
        }
    };
    add(&src);
    add(&dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn nd_frame(eth_dst: [u8; 6], eth_src: [u8; 6], src: [u8; 16], dst: [u8; 16], icmp: &mut Vec<u8>) -> Vec<u8> {
    let ck = icmpv6_checksum(src, dst, icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(icmp);
    f
}

#[test]
fn neighbour_solicitation_for_an_ipv6_vip_is_answered() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let client: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let vip: std::net::Ipv6Addr = "2001:2::100".parse().unwrap();
    let solicited_node: std::net::Ipv6Addr = "ff02::1:ff00:100".parse().unwrap();
    let ns = |target: std::net::Ipv6Addr| {
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&CLIENT_MAC);
        nd_frame([0x33, 0x33, 0xff, 0, 0x01, 0x00], CLIENT_MAC, client.octets(), solicited_node.octets(), &mut icmp)
    };
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend_from_slice(&vip.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&LB_MAC);
    let want = nd_frame(CLIENT_MAC, LB_MAC, vip.octets(), client.octets(), &mut na);
    check(
        &lb,
        &Case {
            name: "NS for the IPv6 VIP: NA with the interface MAC".into(),
            frame: ns(vip),
            action: XDP_TX,
            output: Some(want),
            counters: vec!["xdp_tx", "ndp_reply"],
        },
    );
    check(
        &lb,
        &Case {
            name: "NS for another address goes to the kernel".into(),
            frame: ns("2001:2::10".parse().unwrap()),
            action: XDP_PASS,
            output: None,
            counters: vec!["xdp_pass", "pass_unknown_proto"],
        },
    );
}
