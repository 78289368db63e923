//! What a node of a tier does differently, through BPF_PROG_TEST_RUN (root):
//! L2 hygiene (only frames addressed to the interface are acted on), the
//! per-address ARP/NDP switch, and the flow sync's events and insertions.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use libbpf_rs::MapHandle;
use weir::skel::{Flow, FlowKey};
use weir::tier::sync::{Index, Record};

const CONFIG: &str = r#"
[conntrack]
size = 4096

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

[[vip]]
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
"#;

/// The same VIPs, answered by BGP instead of ARP/NDP.
fn quiet_config() -> String {
    CONFIG.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\narp = false\n").replace(
        "protocol = \"udp\"\n",
        "protocol = \"udp\"\narp = false\n",
    )
}

#[test]
fn frames_for_another_mac_pass_untouched() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let syn = tcp_syn("10.1.2.3", "198.18.0.100", 40000, 80);
    let other = with_macs(&syn, [0x02, 0, 0, 0, 0, 0x77], CLIENT_MAC);
    let bcast = with_macs(&syn, [0xff; 6], CLIENT_MAC);
    let mcast = with_macs(&syn, [0x01, 0x00, 0x5e, 0, 0, 1], CLIENT_MAC);
    let v6 = tcp_syn("2001:db8::1", "2001:2::100", 40000, 80);
    let v6_other = with_macs(&v6, [0x02, 0, 0, 0, 0, 0x77], CLIENT_MAC);
    let v6_group = with_macs(&v6, [0x33, 0x33, 0, 0, 0, 1], CLIENT_MAC);
    let cases: Vec<Case<Lb>> = vec![
        // A flooding bridge delivered another node's frame: not ours to forward.
        Case::new("SYN to the VIP for another MAC", other, XDP_PASS, None, &["xdp_pass", "pass_not_our_mac"]),
        Case::new("IPv6 SYN to the VIP for another MAC", v6_other, XDP_PASS, None, &["xdp_pass", "pass_not_our_mac"]),
        Case::new("SYN to the VIP, broadcast", bcast, XDP_PASS, None, &["xdp_pass", "pass_l2_group"]),
        Case::new("SYN to the VIP, IPv4 multicast MAC", mcast, XDP_PASS, None, &["xdp_pass", "pass_l2_group"]),
        Case::new("IPv6 SYN to the VIP, multicast MAC", v6_group, XDP_PASS, None, &["xdp_pass", "pass_l2_group"]),
        // What needs a group address still works.
        Case::new(
            "ARP request (broadcast) for the VIP is answered",
            arp_request([198, 18, 0, 1], [198, 18, 0, 100]),
            XDP_TX,
            Some(arp_reply([198, 18, 0, 1], [198, 18, 0, 100])),
            &["xdp_tx", "arp_reply"],
        ),
        // Addressed to us: forwarded as before.
        Case::new(
            "SYN to the VIP for our MAC",
            syn.clone(),
            XDP_TX,
            Some(with_macs(&syn, lb.ring_mac(0, flow_hash(ip("10.1.2.3"), ip("198.18.0.100"), 40000, 80, 6)), LB_MAC)),
            &["xdp_tx", "flow_new"],
        ),
    ];
    run_table(&lb, &cases);
    // The NS for the IPv6 VIP (to its solicited-node group) is answered.
    let ns = neighbour_solicitation(CLIENT_MAC, "2001:db8::1".parse().unwrap(), "2001:2::100".parse().unwrap());
    let (action, _) = lb.dp.run(&ns).unwrap();
    assert_eq!(action_name(action), "XDP_TX", "a neighbour solicitation to a multicast MAC is still answered");
}

#[test]
fn arp_and_ndp_can_be_turned_off_per_address() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(&quiet_config());
    // Dropped, not passed: the VIP is a local address of the node (on the
    // announce device), and the kernel would answer for it on any interface.
    let cases: Vec<Case<Lb>> = vec![Case::new(
        "ARP request for a VIP with arp = false is dropped unanswered",
        arp_request([198, 18, 0, 1], [198, 18, 0, 100]),
        XDP_DROP,
        None,
        &["xdp_drop", "drop_arp_quiet"],
    )];
    run_table(&lb, &cases);
    let ns = neighbour_solicitation(CLIENT_MAC, "2001:db8::1".parse().unwrap(), "2001:2::100".parse().unwrap());
    let (action, _) = lb.dp.run(&ns).unwrap();
    assert_eq!(action_name(action), "XDP_PASS", "NS for a VIP with arp = false goes to the kernel");
    // Traffic to the VIP is forwarded as ever.
    let (action, _) = lb.dp.run(&tcp_syn("10.1.2.3", "198.18.0.100", 40000, 80)).unwrap();
    assert_eq!(action_name(action), "XDP_TX");

    // And the default follows tier.announce: announcing means not answering.
    let announcing = load(&format!("[tier]\nannounce = true\n{CONFIG}"));
    let (action, _) = announcing.dp.run(&arp_request([198, 18, 0, 1], [198, 18, 0, 100])).unwrap();
    assert_eq!(action_name(action), "XDP_DROP", "with tier.announce, ARP is off unless arp = true");
}

/// The flow_sync ring's records, collected after each call.
struct Ring {
    rb: libbpf_rs::RingBuffer<'static>,
    got: Arc<Mutex<Vec<(FlowKey, u32)>>>,
}

impl Ring {
    fn open(lb: &Lb) -> Ring {
        let h: &'static MapHandle = Box::leak(Box::new(MapHandle::try_from(&lb.dp.skel.maps.flow_sync).unwrap()));
        let got: Arc<Mutex<Vec<(FlowKey, u32)>>> = Arc::default();
        let sink = got.clone();
        let mut b = libbpf_rs::RingBufferBuilder::new();
        b.add(h, move |d: &[u8]| {
            let mut k = FlowKey::default();
            plain::copy_from_bytes(&mut k, &d[..40]).unwrap();
            sink.lock().unwrap().push((k, u32::from_ne_bytes(d[40..44].try_into().unwrap())));
            0
        })
        .unwrap();
        Ring { rb: b.build().unwrap(), got }
    }
    fn take(&self) -> Vec<(FlowKey, u32)> {
        self.rb.consume().unwrap();
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

fn flow_at(lb: &Lb, key: &FlowKey) -> Option<Flow> {
    weir::dataplane::FlowTables::established(&lb.dp).unwrap().lookup(key).unwrap()
}

#[test]
fn established_flows_and_new_udp_flows_are_offered_to_the_peers_handshakes_and_stray_segments_are_not() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let ring = Ring::open(&lb);
    lb.dp.set_sync_on(true).unwrap();
    let stats_before = lb.counters();

    // A SYN makes a handshake entry: nothing for the peers (a SYN flood stays local).
    let syn = tcp_syn("10.1.2.3", "198.18.0.100", 40000, 80);
    lb.dp.run(&syn).unwrap();
    assert!(ring.take().is_empty(), "a SYN is not synced");
    // The client's ACK makes it established: one record, its backend.
    let est = Pkt::new("10.1.2.3", "198.18.0.100", ack(40000, 80), b"").frame();
    let (a, _) = lb.dp.run(&est).unwrap();
    assert_eq!(action_name(a), "XDP_TX");
    let recs = ring.take();
    assert_eq!(recs.len(), 1, "one record for the established flow");
    let f = flow_at(&lb, &recs[0].0).expect("the flow is in the flows table");
    assert_eq!(recs[0].1, f.backend_id, "the record names the flow's backend");
    assert_eq!(u16::from_be(recs[0].0.sport), 40000);
    assert_eq!(u16::from_be(recs[0].0.dport), 80);
    // Later packets of the flow: nothing more.
    lb.dp.run(&est).unwrap();
    assert!(ring.take().is_empty(), "a flow is offered once");

    // A new UDP flow is offered at once.
    lb.dp.run(&udp("10.1.2.3", "198.18.0.100", 5353, 53, b"q")).unwrap();
    let recs = ring.take();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0.proto, 17);
    assert_eq!(recs[0].1, lb.plan.vips[1].backends[0].id);

    // A TCP flow whose first packet is not a SYN (an ACK flood from random
    // sources, or a flow moved from a node that had not synced it) is served
    // but not offered: only completed handshakes are.
    let stray = Pkt::new("10.1.2.9", "198.18.0.100", ack(40009, 80), b"").frame();
    let (a, _) = lb.dp.run(&stray).unwrap();
    assert_eq!(action_name(a), "XDP_TX");
    assert!(ring.take().is_empty(), "a non-SYN first packet is not synced");

    // New UDP flows from random sources: at most the burst (2,000) per CPU
    // reaches the ring at once; the rest is counted as sync_limited.
    common::pin_to_cpu(0);
    let before = lb.counters();
    let t0 = std::time::Instant::now();
    for i in 0..3000u32 {
        let src = format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
        lb.dp.run(&udp(&src, "198.18.0.100", 5353, 53, b"q")).unwrap();
    }
    let offered = ring.take().len();
    let limited = (lb.counters()[stat("sync_limited")] - before[stat("sync_limited")]) as usize;
    println!("3000 new UDP flows on one CPU: {offered} offered, {limited} over the budget");
    // The burst, plus what the budget refilled while the loop ran (20,000/s).
    let refill = (t0.elapsed().as_secs_f64() * 20_000.0).ceil() as usize + 1;
    assert!(offered >= 2000 && offered <= 2000 + refill, "the burst and its refill: {offered} (refill {refill})");
    assert_eq!(offered + limited, 3000);

    // Off: nothing is offered.
    lb.dp.set_sync_on(false).unwrap();
    lb.dp.run(&udp("10.1.2.4", "198.18.0.100", 5353, 53, b"q")).unwrap();
    assert!(ring.take().is_empty(), "sync off: no record");
    let d = lb.counters();
    assert_eq!(d[stat("sync_lost")] - stats_before[stat("sync_lost")], 0);
}

#[test]
fn a_peers_flow_is_kept_and_never_overwrites_a_local_one() {
    if !require_root("BPF fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let ix = Index::of(&lb.plan);
    let flows = weir::dataplane::FlowTables::established(&lb.dp).unwrap();
    let web = &lb.plan.vips[0];
    // A client whose hash picks b1 on this node; a peer says it is on b2
    // (the peer's table differed when the flow started).
    let (cport, mine, theirs) = (41000..42000u16)
        .find_map(|p| {
            let m = lb.ring_mac(0, flow_hash(ip("10.7.7.7"), ip("198.18.0.100"), p, 80, 6));
            let mine = web.backends.iter().find(|b| lb.hops[&b.id].mac == m)?;
            let theirs = web.backends.iter().find(|b| b.id != mine.id)?;
            Some((p, mine.clone(), theirs.clone()))
        })
        .unwrap();
    let ack_frame = Pkt::new("10.7.7.7", "198.18.0.100", ack(cport, 80), b"").frame();
    // The key as the data plane builds it (addresses and ports in network order).
    let mut key = FlowKey::default();
    key.src[0] = u32::from_ne_bytes([10, 7, 7, 7]);
    key.dst[0] = u32::from_ne_bytes([198, 18, 0, 100]);
    key.sport = cport.to_be();
    key.dport = 80u16.to_be();
    key.proto = 6;
    key.family = weir::skel::weir_const::WEIR_FAMILY_V4.0 as u8;

    let rec = Record { key, backend: theirs.addr, port: 0 };
    let (vip_id, id) = ix.resolve(&rec).expect("the peer's backend is known here");
    assert_eq!((vip_id, id), (web.id, theirs.id));
    let f = Flow { backend_id: id, vip_id: vip_id as u16, generation: 0 };
    assert!(flows.insert_new(&key, &f).unwrap(), "the flow was not tracked yet");
    let (a, out) = lb.dp.run(&ack_frame).unwrap();
    assert_eq!(action_name(a), "XDP_TX");
    assert_eq!(out[..6], lb.hops[&theirs.id].mac, "the flow goes where the peer sent it, not where this node's table says");
    assert_ne!(lb.hops[&theirs.id].mac, lb.hops[&mine.id].mac);

    // A flow this node has: a peer's record does not replace it.
    let mut other = key;
    other.sport = (cport + 1).to_be();
    let ack2 = Pkt::new("10.7.7.7", "198.18.0.100", ack(cport + 1, 80), b"").frame();
    let (_, out_local) = lb.dp.run(&ack2).unwrap();
    let local_mac: [u8; 6] = out_local[..6].try_into().unwrap();
    let wrong = web.backends.iter().find(|b| lb.hops[&b.id].mac != local_mac).unwrap();
    let f = Flow { backend_id: wrong.id, vip_id: web.id as u16, generation: 0 };
    assert!(!flows.insert_new(&other, &f).unwrap(), "NOEXIST refuses");
    let (_, again) = lb.dp.run(&ack2).unwrap();
    assert_eq!(again[..6], local_mac, "the local flow keeps its backend");

    // Unknown backends and VIPs are not resolved (configs differ).
    assert!(ix.resolve(&Record { key, backend: ip("192.0.2.99"), port: 0 }).is_none());
    let mut elsewhere = key;
    elsewhere.dport = 8080u16.to_be();
    assert!(ix.resolve(&Record { key: elsewhere, backend: theirs.addr, port: 0 }).is_none());
}
