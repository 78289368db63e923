//! Data-plane fixtures through BPF_PROG_TEST_RUN (root): for each case the
//! maps are set up through the same API `weir run` uses, a frame built with
//! etherparse goes in, and the XDP action, the exact output bytes and the
//! counters are checked (Katran's test table, cilium's three steps).

mod common;

use common::*;
use etherparse::Icmpv6Type;

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
    refresh_ipv4_checksum(&mut frag_mf);
    let mut frag_off = udp("10.1.2.3", "198.18.0.100", 5353, 53, b"later");
    frag_off[21] = 0x10; // offset 16 x 8 bytes: a later fragment
    refresh_ipv4_checksum(&mut frag_off);
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

    const TX_NEW: &[&str] = &["xdp_tx", "flow_new"];
    const NOT_VIP: &[&str] = &["xdp_pass", "pass_not_vip"];
    let mut cases: Vec<Case> = vec![
        Case::new(
            "TCP SYN to the VIP goes to the Maglev backend",
            syn.clone(),
            XDP_TX,
            Some(with_macs(&syn, web(40001), LB_MAC)),
            TX_NEW,
        ),
        Case::new(
            "UDP to the UDP VIP on the same address",
            udp_q.clone(),
            XDP_TX,
            Some(with_macs(&udp_q, lb.ring_mac(1, flow_hash(cli, vip, 5353, 53, 17)), LB_MAC)),
            TX_NEW,
        ),
        Case::new("IPv6 VIP", syn6.clone(), XDP_TX, Some(with_macs(&syn6, lb.ring_mac(2, h6), LB_MAC)), TX_NEW),
        // A VIP without `vlan` is served untagged only (tests/vlan_fixtures.rs).
        Case::new("802.1Q-tagged frame to a VIP without vlan passes", vlan.clone(), XDP_PASS, None, &["xdp_pass", "pass_vlan"]),
        Case::new(
            "IPv4 with options: ports read past them",
            opts.clone(),
            XDP_TX,
            Some(with_macs(&opts, web(40003), LB_MAC)),
            TX_NEW,
        ),
        Case::new(
            "port-0 VIP takes any port",
            allports.clone(),
            XDP_TX,
            Some(with_macs(&allports, lb.backend_mac(3, 0), LB_MAC)),
            TX_NEW,
        ),
        Case::new("non-VIP address passes unchanged", tcp_syn("10.1.2.3", "198.18.0.99", 40001, 80), XDP_PASS, None, NOT_VIP),
        Case::new("VIP address, port without a VIP", tcp_syn("10.1.2.3", "198.18.0.100", 40001, 81), XDP_PASS, None, NOT_VIP),
        Case::new("UDP to the TCP-only port", udp("10.1.2.3", "198.18.0.100", 40001, 80, b"x"), XDP_PASS, None, NOT_VIP),
        // Fragments ([fragments] is on by default; tests/frag_fixtures.rs has the rest).
        Case::new(
            "first fragment (MF) is balanced like its flow",
            frag_mf.clone(),
            XDP_TX,
            Some(with_macs(&frag_mf, web(40005), LB_MAC)),
            &["xdp_tx", "flow_new", "frag_balanced", "frag_tracked"],
        ),
        Case::new(
            "later fragment arriving first: the address's UDP VIP, by (src, dst, id)",
            frag_off.clone(),
            XDP_TX,
            Some(with_macs(&frag_off, lb.ring_mac(1, frag_hash(cli, vip, &frag_off[18..20], 17)), LB_MAC)),
            &["xdp_tx", "frag_early", "frag_balanced"],
        ),
        Case::new("IPv6 extension header goes to the kernel", hbh, XDP_PASS, None, &["xdp_pass", "pass_ipv6_ext"]),
        Case::new("ICMP to the VIP", icmp, XDP_PASS, None, &["xdp_pass", "pass_unknown_proto"]),
        Case::new("not IP (LLDP ethertype)", lldp, XDP_PASS, None, &["xdp_pass", "pass_not_ip"]),
        Case::new("IPv4 IHL below 5", bad_ihl, XDP_PASS, None, &["xdp_pass", "pass_malformed"]),
        Case::new(
            "VIP whose backends all have weight 0 drops",
            tcp_syn("10.1.2.3", "198.18.0.102", 40001, 80),
            XDP_DROP,
            None,
            &["xdp_drop", "drop_no_backend"],
        ),
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
            cases.push(Case::new(
                format!("{what} cut to {n} bytes"),
                frame[..n].to_vec(),
                XDP_PASS,
                None,
                &["xdp_pass", "pass_truncated"],
            ));
        }
    }

    // ARP: the VIP's is answered with the interface MAC, others pass.
    let req = arp_request([198, 18, 0, 1], [198, 18, 0, 100]);
    let reply = arp_reply([198, 18, 0, 1], [198, 18, 0, 100]);
    cases.push(Case::new("ARP request for the VIP is answered", req, XDP_TX, Some(reply), &["xdp_tx", "arp_reply"]));
    cases.push(Case::new(
        "ARP request for another address passes",
        arp_request([198, 18, 0, 1], [198, 18, 0, 10]),
        XDP_PASS,
        None,
        &["xdp_pass", "pass_arp_other"],
    ));

    run_table(&lb, &cases);

    // Per-VIP and per-backend counters saw the forwarded frames.
    let web = lb.dp.vip_traffic(0).unwrap();
    assert_eq!(web.new_flows, 3, "web VIP: SYN, options and first-fragment flows (the tagged frame passed)");
    assert_eq!(web.packets, 3);
    assert_eq!(web.bytes, (syn.len() + opts.len() + frag_mf.len()) as u64);
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
    let cli: std::net::IpAddr = "10.9.9.9".parse().unwrap();
    let vip: std::net::IpAddr = "198.18.0.100".parse().unwrap();
    let syn = tcp_syn("10.9.9.9", "198.18.0.100", 50000, 80);
    let first = lb.ring_mac(0, flow_hash(cli, vip, 50000, 80, 6));
    check(&lb, "first SYN: the hashed backend", &syn, XDP_TX, Some(&with_macs(&syn, first, LB_MAC)), &["xdp_tx", "flow_new"]);
    // Every slot now points at another backend: new flows move, this one must not.
    let other = lb.plan.vips[0].backends.iter().find(|b| lb.hops[&b.id].mac != first).unwrap();
    let other_mac = lb.hops[&other.id].mac;
    lb.dp.write_ring(0, &vec![other.id; 65537]).unwrap();
    check(
        &lb,
        "tracked flow stays on its backend",
        &syn,
        XDP_TX,
        Some(&with_macs(&syn, first, LB_MAC)),
        &["xdp_tx", "flow_hit"],
    );
    let new = tcp_syn("10.9.9.9", "198.18.0.100", 50001, 80);
    check(
        &lb,
        "a new flow follows the new table",
        &new,
        XDP_TX,
        Some(&with_macs(&new, other_mac, LB_MAC)),
        &["xdp_tx", "flow_new"],
    );

    // Its backend leaves the config: the flow is rescheduled, not blackholed.
    let gone = lb.plan.vips[0].backends.iter().find(|b| lb.hops[&b.id].mac == first).unwrap();
    lb.dp.remove_backend(gone.id).unwrap();
    check(
        &lb,
        "a flow whose backend left is rescheduled",
        &syn,
        XDP_TX,
        Some(&with_macs(&syn, other_mac, LB_MAC)),
        // A rescheduled flow is tracked afresh: flow_new as well.
        &["xdp_tx", "flow_new", "flow_rescheduled"],
    );
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
        let want = with_macs(&f, macs[usize::from(i) % 3], LB_MAC);
        let out = check(&lb, &format!("flow {i}: next backend in turn"), &f, XDP_TX, Some(&want), &["xdp_tx", "flow_new"]);
        seen.push(<[u8; 6]>::try_from(&out[0..6]).unwrap());
        // The same flow's next packet stays put, and does not advance the rotation.
        check(&lb, &format!("flow {i}: second packet same backend"), &f, XDP_TX, Some(&want), &["xdp_tx", "flow_hit"]);
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
            let f = tcp_syn(&src, "198.18.0.100", sport, 80);
            let name = format!("{src}:{sport} goes where its address hashes");
            check(&lb, &name, &f, XDP_TX, Some(&with_macs(&f, want, LB_MAC)), &["xdp_tx", "flow_new"]);
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
    let lo_backend = [0x02, 0, 0, 0, 0, 0x0b];
    let cli: std::net::IpAddr = "10.3.3.3".parse().unwrap();
    let vip: std::net::IpAddr = "198.18.0.100".parse().unwrap();
    let mut redirected = 0;
    for sport in 0..64u16 {
        let f = tcp_syn("10.3.3.3", "198.18.0.100", 20000 + sport, 80);
        let mac = lb.ring_mac(0, flow_hash(cli, vip, 20000 + sport, 80, 6));
        if mac == lo_backend {
            // Reached through the DEVMAP; the source MAC is lo's (zero).
            let name = format!("port {sport}: backend behind lo, XDP_REDIRECT");
            check(&lb, &name, &f, XDP_REDIRECT, Some(&with_macs(&f, mac, [0; 6])), &["xdp_redirect", "flow_new"]);
            redirected += 1;
        } else {
            let name = format!("port {sport}: XDP_TX");
            check(&lb, &name, &f, XDP_TX, Some(&with_macs(&f, mac, LB_MAC)), &["xdp_tx", "flow_new"]);
        }
    }
    assert!(redirected > 0, "some of 64 flows hash to the redirected backend");
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
    let out = run(&lb, "the flow's first SYN", &syn).out;
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
    let r = run(&lb, "the idle flow after the id's reuse", &syn);
    assert_eq!(action_name(r.action), "XDP_TX", "counters that rose: {}", rose(&r));
    assert_eq!(r.delta[stat("flow_rescheduled")], 1, "the idle flow is rescheduled, not handed to the id's new owner: {}", rose(&r));
}

#[test]
fn neighbour_solicitation_for_an_ipv6_vip_is_answered() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let client: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let vip: std::net::Ipv6Addr = "2001:2::100".parse().unwrap();
    // The advertisement (RFC 4861 4.4): solicited + override, target, target
    // link-layer address option; hop limit 255.
    let mut body = vip.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&LB_MAC);
    let na = Icmpv6Type::Unknown { type_u8: 136, code_u8: 0, bytes5to8: [0x60, 0, 0, 0] };
    let want = Pkt::new("2001:2::100", "2001:db8::7", L4::Icmp6(na), &body)
        .macs(CLIENT_MAC, LB_MAC)
        .ip_fields(0, 0, false, 255)
        .frame();
    check(
        &lb,
        "NS for the IPv6 VIP: NA with the interface MAC",
        &neighbour_solicitation(CLIENT_MAC, client, vip),
        XDP_TX,
        Some(&want),
        &["xdp_tx", "ndp_reply"],
    );
    check(
        &lb,
        "NS for another address goes to the kernel",
        &neighbour_solicitation(CLIENT_MAC, client, "2001:2::10".parse().unwrap()),
        XDP_PASS,
        None,
        // Sent to a multicast MAC and not ours to answer: an L2 group frame.
        &["xdp_pass", "pass_l2_group"],
    );
}

/// The address filter (bpf/maps.h addr_filter): a packet to an address
/// that is no VIP's goes to the kernel on the filter's word alone; an
/// address that shares a VIP's filter bit is still looked up (and passed);
/// a VIP added by a reload is served, a VIP removed by one has its bit
/// cleared.
#[test]
fn the_address_filter_decides_not_ours_and_follows_reloads() {
    if !require_root("BPF fixtures") {
        return;
    }
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use weir::config::Config;
    use weir::dataplane::filter_bit;
    use weir::plan::Plan;
    let lb = load(CONFIG);
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    for v in ["198.18.0.100", "198.18.0.101", "198.18.0.102", "2001:2::100"] {
        assert!(lb.dp.filter_says_maybe(ip(v)).unwrap(), "VIP address {v}: its filter bit is set");
        assert!(lb.dp.filter_says_dsr(ip(v)).unwrap(), "DSR VIP address {v}: its bit in the DSR half is set");
    }
    let vip_bits: BTreeSet<u32> = lb.plan.vips.iter().map(|v| filter_bit(v.addr)).collect();
    // An address whose bit no VIP has: passed as not a VIP.
    let clear = (1..=250u8).map(|i| format!("203.0.113.{i}")).find(|a| !vip_bits.contains(&filter_bit(ip(a)))).unwrap();
    assert!(!lb.dp.filter_says_maybe(ip(&clear)).unwrap());
    let f = tcp_syn("10.1.1.1", &clear, 40000, 80);
    check_exact(&lb, "a packet to an address the filter does not know", &f, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    // An address that shares 198.18.0.100's bit (a false "maybe"): looked
    // up, not a VIP, passed the same way.
    let shared = (0..=u32::MAX)
        .step_by(7919)
        .map(|x| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff))))
        .find(|a| filter_bit(*a) == filter_bit(ip("198.18.0.100")))
        .expect("some 10/8 address shares the VIP's filter bit");
    let f = tcp_syn("10.1.1.1", &shared.to_string(), 40000, 80);
    check_exact(&lb, "a packet to an address sharing a VIP's filter bit", &f, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);

    // Reload: a new VIP on `clear`; "drained" (198.18.0.102) removed.
    let iface = weir::net::Iface::unattached("test0", LB_MAC);
    let text = CONFIG.replace("address = \"198.18.0.102\"", &format!("address = \"{clear}\""));
    let p = Plan::build_after(&Config::from_toml(&text).unwrap(), Some(&lb.plan)).unwrap();
    let (hops, tx) = weir::dataplane::configured_hops(&p, &iface).unwrap();
    lb.dp.reload(&lb.plan, &p, &hops, &tx, &BTreeSet::new()).unwrap();
    assert!(lb.dp.filter_says_maybe(ip(&clear)).unwrap(), "the new VIP's bit is set");
    if !p.vips.iter().any(|v| filter_bit(v.addr) == filter_bit(ip("198.18.0.102"))) {
        assert!(!lb.dp.filter_says_maybe(ip("198.18.0.102")).unwrap(), "the removed VIP's bit is cleared");
    }
    // The new VIP has one backend of weight 0 (the drained VIP's): it is
    // found (not passed as "not a VIP") and dropped for want of a backend.
    let f = tcp_syn("10.1.1.1", &clear, 40000, 80);
    let r = run(&lb, "a SYN to the VIP added by the reload", &f);
    assert_eq!(r.delta[stat("pass_not_vip")], 0, "the new VIP is found: {}", rose(&r));
}
