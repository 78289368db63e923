//! weir as a tier (root, BPF_PROG_TEST_RUN through the fixture runner):
//! `weir lookup`'s answers (src/tier/lookup.rs, the code the core thread
//! runs) against what the program does with the same packet, and the live
//! fingerprint against the tables the program reads.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use common::*;
use weir::config::Config;
use weir::plan::Plan;
use weir::tier::fingerprint;
use weir::tier::lookup::{self, Answer, Tuple, Why};

const CONFIG: &str = r#"
[conntrack]
size = 65536
[maglev]
table_size = 65537

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:01:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:01:0c"
weight = 2
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:01:0d"
weight = 3
[[vip.backend]]
address = "198.18.0.14"
mac = "02:00:00:00:01:0e"
[[vip.backend]]
address = "198.18.0.15"
mac = "02:00:00:00:01:0f"

[[vip]]
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:02:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:02:16"
[[vip.backend]]
address = "198.18.0.23"
mac = "02:00:00:00:02:17"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 443
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:11"
[[vip.backend]]
address = "2001:2::12"
mac = "02:00:00:00:06:12"
weight = 2
[[vip.backend]]
address = "2001:2::13"
mac = "02:00:00:00:06:13"
[[vip.backend]]
address = "2001:2::14"
mac = "02:00:00:00:06:14"

[[vip]]
name = "allports"
address = "198.18.0.101"
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:03:1f"
[[vip.backend]]
address = "198.18.0.32"
mac = "02:00:00:00:03:20"
[[vip.backend]]
address = "198.18.0.33"
mac = "02:00:00:00:03:21"

[[vip]]
name = "sticky"
address = "198.18.0.102"
port = 80
protocol = "tcp"
scheduler = "source-hash"
[[vip.backend]]
address = "198.18.0.41"
mac = "02:00:00:00:04:29"
[[vip.backend]]
address = "198.18.0.42"
mac = "02:00:00:00:04:2a"
[[vip.backend]]
address = "198.18.0.43"
mac = "02:00:00:00:04:2b"
weight = 2
[[vip.backend]]
address = "198.18.0.44"
mac = "02:00:00:00:04:2c"

[[vip]]
name = "sticky6"
address = "2001:2::102"
port = 53
protocol = "udp"
scheduler = "source-hash"
[[vip.backend]]
address = "2001:2::41"
mac = "02:00:00:00:06:41"
[[vip.backend]]
address = "2001:2::42"
mac = "02:00:00:00:06:42"
[[vip.backend]]
address = "2001:2::43"
mac = "02:00:00:00:06:43"
"#;

/// splitmix64: a seeded stream, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn seed() -> u64 {
    std::env::var("WEIR_TIER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7469_6572)
}

/// The MAC of the backend an answer names, from the plan and its next hops.
fn mac_of(lb: &Lb, a: &Answer) -> [u8; 6] {
    let vip = a.vip.as_ref().expect("a VIP");
    let v = lb.plan.vips.iter().find(|v| v.name == vip.name).expect("the VIP is the plan's");
    let addr: SocketAddr = a.backend.as_deref().expect("a backend").parse().expect("ADDR:PORT");
    let b = v.backends.iter().find(|b| b.addr == addr.ip()).unwrap_or_else(|| panic!("{} is no backend of {}", addr, vip.name));
    lb.hops[&b.id].mac
}

/// A client's first packet: a bare SYN, or a UDP datagram.
fn first_packet(t: &Tuple) -> Vec<u8> {
    let (s, d) = (t.src.ip().to_string(), t.dst.ip().to_string());
    match t.proto {
        weir::config::Protocol::Tcp => tcp_syn(&s, &d, t.src.port(), t.dst.port()),
        weir::config::Protocol::Udp => udp(&s, &d, t.src.port(), t.dst.port(), b"hello"),
    }
}

#[test]
fn lookup_predicts_every_backend_the_program_picks() {
    if !require_root("tier lookup fixtures") {
        return;
    }
    let lb = load(CONFIG);
    let mut rng = Rng(seed());
    eprintln!("WEIR_TIER_SEED={}", seed());
    // (VIP index in CONFIG, destination address, port (0: any), protocol)
    let vips: [(usize, &str, u16, &str); 6] = [
        (0, "198.18.0.100", 80, "tcp"),
        (1, "198.18.0.100", 53, "udp"),
        (2, "2001:2::100", 443, "tcp"),
        (3, "198.18.0.101", 0, "tcp"),
        (4, "198.18.0.102", 80, "tcp"),
        (5, "2001:2::102", 53, "udp"),
    ];
    let mut seen = HashSet::new();
    let mut per_vip = [0usize; 6];
    let mut backends_hit: BTreeSet<String> = BTreeSet::new();
    let mut n = 0;
    while n < 2000 {
        let (vi, dst, port, proto) = vips[(rng.next() % vips.len() as u64) as usize];
        let r = rng.next();
        let src: IpAddr = if dst.contains(':') {
            let (a, b) = (rng.next(), rng.next());
            let w = |x: u64, i: u32| (x >> (16 * i)) as u16;
            Ipv6Addr::from([0x2001, 0x0db8, w(a, 0), w(a, 1), w(a, 2), w(b, 0), w(b, 1), w(b, 2)]).into()
        } else {
            IpAddr::from([10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8])
        };
        let sport = 1024 + (r >> 32) as u16 % 64000;
        let dport = if port == 0 { 1 + (r >> 48) as u16 % 65535 } else { port };
        let t = Tuple::parse(proto, &SocketAddr::new(src, sport).to_string(), &SocketAddr::new(dst.parse().unwrap(), dport).to_string())
            .unwrap();
        if !seen.insert(t.to_string()) {
            continue;
        }
        n += 1;
        per_vip[vi] += 1;
        let name = format!("tuple {n} ({t})");

        // The prediction: the instance's answer (its maps), before the packet.
        let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap_or_else(|e| panic!("{name}: lookup: {e:#}"));
        let Why::Slot { slot, hash, table_size, rescheduled: false, ref scheduler } = a.why else {
            panic!("{name}: not tracked yet, the answer should be a slot: {}", a.text())
        };
        assert_eq!(a.vip.as_ref().map(|v| v.name.as_str()), Some(lb.plan.vips[vi].name.as_str()), "{name}: {}", a.text());
        assert_eq!(table_size, 65537);
        let mac = mac_of(&lb, &a);

        // The program, on the same packet: the frame leaves for that MAC,
        // exactly (every byte, every counter).
        let frame = first_packet(&t);
        check_exact(&lb, &name, &frame, XDP_TX, Some(&with_macs(&frame, mac, LB_MAC)), &["xdp_tx", "flow_new"]);

        // The independent copy of the hash (tests/common) and the plan agree.
        let want_hash = if scheduler == "source-hash" {
            source_hash(src)
        } else {
            flow_hash(src, t.dst.ip(), sport, dport, t.proto.number())
        };
        assert_eq!(hash, want_hash, "{name}: hash");
        assert_eq!(slot, hash % 65537, "{name}: slot");
        assert_eq!(lb.ring_mac(vi, hash), mac, "{name}: the planned table");
        // Offline, every backend up: the same answer.
        let off = lookup::offline(&lb.plan, &t);
        assert_eq!((&off.backend, &off.why), (&a.backend, &a.why), "{name}: offline {} / live {}", off.text(), a.text());

        // Asked again: now tracked, to the same backend.
        let again = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
        let table = match (t.proto == weir::config::Protocol::Tcp, t.dst.is_ipv4()) {
            (true, true) => "syn_flows4",
            (true, false) => "syn_flows6",
            (false, true) => "flows4",
            (false, false) => "flows6",
        };
        assert_eq!(again.why, Why::Tracked { table: table.into() }, "{name}: {}", again.text());
        assert_eq!(again.backend, a.backend, "{name}: {}", again.text());
        let b: SocketAddr = a.backend.as_deref().unwrap().parse().unwrap();
        backends_hit.insert(format!("{} {}", lb.plan.vips[vi].name, b.ip()));
    }
    eprintln!("2000 tuples: {per_vip:?} per VIP, {} backends", backends_hit.len());
    assert!(per_vip.iter().all(|n| *n > 200), "every VIP got its share: {per_vip:?}");
    let total: usize = lb.plan.vips.iter().map(|v| v.backends.len()).sum();
    assert_eq!(backends_hit.len(), total, "every backend was predicted and hit: {backends_hit:?}");
}

const MORE: &str = r#"
[conntrack]
size = 4096
[maglev]
table_size = 251

[[vip]]
name = "rr"
address = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:01:0b"
weight = 2
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:01:0c"

[[vip]]
name = "nat"
address = "198.18.0.103"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.40"
source_ports = [41000, 41099]
[[vip.backend]]
address = "198.18.0.41"
port = 8080
mac = "02:00:00:00:00:29"
[[vip.backend]]
address = "198.18.0.42"
port = 8081
mac = "02:00:00:00:00:2a"
"#;

#[test]
fn lookup_explains_round_robin_nat_and_other_packets() {
    if !require_root("tier lookup fixtures") {
        return;
    }
    let lb = load(MORE);
    let tcp = |s: &str, d: &str| Tuple::parse("tcp", s, d).unwrap();

    // Round-robin: the next turn, then the one after.
    for (i, sport) in [40001u16, 40002, 40003].into_iter().enumerate() {
        let t = tcp(&format!("10.1.2.3:{sport}"), "198.18.0.100:80");
        let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
        assert_eq!(a.why, Why::RoundRobin { cursor: Some(i as u32), turns: 3, rescheduled: false }, "{}", a.text());
        let want = format!("round-robin: not tracked; new flows take the next backend in rotation (cursor at {i})");
        assert!(a.text().ends_with(&want), "{}", a.text());
        let frame = first_packet(&t);
        check_exact(&lb, &format!("rr {i}"), &frame, XDP_TX, Some(&with_macs(&frame, mac_of(&lb, &a), LB_MAC)), &["xdp_tx", "flow_new"]);
        let again = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
        assert_eq!((again.why, again.backend), (Why::Tracked { table: "syn_flows4".into() }, a.backend));
    }
    let off = lookup::offline(&lb.plan, &tcp("10.1.2.3:1", "198.18.0.100:80"));
    assert!(off.backend.is_none() && off.text().contains("each node's own rotation (3 turns)"), "{}", off.text());

    // NAT: the backend's own port, then the tracked flow with its SNAT port.
    let t = tcp("10.1.2.3:40010", "198.18.0.103:80");
    let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    assert!(a.text().ends_with("(not tracked: a SYN would open a flow there)"), "{}", a.text());
    let backend: SocketAddr = a.backend.as_deref().unwrap().parse().unwrap();
    assert_eq!(backend.port(), if backend.ip().to_string() == "198.18.0.41" { 8080 } else { 8081 });
    let frame = first_packet(&t);
    let r = run(&lb, "nat SYN", &frame);
    let snat = out_sport(&r.out).expect("a translated frame");
    let want = Pkt::new("198.18.0.40", &backend.ip().to_string(), syn(snat, backend.port()), b"")
        .seq(0x1000_0000)
        .macs(mac_of(&lb, &a), LB_MAC)
        .frame();
    expect(&lb.plan.vips[1].name, &r, &frame, XDP_TX, Some(&want), &["xdp_tx"]);
    let again = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    assert_eq!(again.why, Why::NatTracked { snat_port: snat }, "{}", again.text());
    assert_eq!(again.backend, a.backend);
    assert!(again.text().ends_with(&format!("NAT flow: tracked (nat_fwd), SNAT port {snat}")), "{}", again.text());
    // The backend's reply, to the SNAT address: not a VIP, translated back.
    let reply = Tuple { proto: t.proto, src: backend, dst: SocketAddr::new("198.18.0.40".parse().unwrap(), snat) };
    let ra = lookup::live(&lb.dp, &lb.plan, &reply).unwrap();
    assert_eq!(ra.why, Why::NatReply { client: "10.1.2.3:40010".into() }, "{}", ra.text());
    assert_eq!(
        ra.text(),
        "not a VIP: the reply of a NAT flow of VIP nat (198.18.0.103:80 tcp) (nat_rev): translated back to client 10.1.2.3:40010"
    );

    // Not a VIP (another address, another port): the kernel's.
    for (dst, name) in [("198.18.0.200:80", "other address"), ("198.18.0.100:81", "other port")] {
        let t = tcp("10.1.2.3:40020", dst);
        let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
        assert_eq!(a.text(), "not a VIP: passed to the kernel");
        let frame = first_packet(&t);
        check_exact(&lb, name, &frame, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    }
}

#[test]
fn live_fingerprint_is_the_tables_the_program_uses() {
    if !require_root("tier fingerprint fixtures") {
        return;
    }
    let lb = load(CONFIG);
    // Read with the cache the instance keeps, and checked against a cold
    // read each time: the cache hides no change.
    let mut cache = fingerprint::LiveCache::default();
    let mut live = || {
        let t = std::time::Instant::now();
        let warm = fingerprint::live(&lb.dp, &mut cache).unwrap();
        let took = t.elapsed();
        assert_eq!(warm, fingerprint::live(&lb.dp, &mut fingerprint::LiveCache::default()).unwrap(), "cached = cold");
        (warm, took)
    };
    let t = std::time::Instant::now();
    let config = fingerprint::config(&lb.plan);
    let took_config = t.elapsed();
    let (first, took_cold) = live();
    assert_eq!(first, config, "every backend up: live = config");
    // What weir run shows is computed from the tables the core writes, not
    // read back: it must agree with the kernel's tables.
    let mut pc = fingerprint::PlanCache::default();
    assert_eq!(fingerprint::live_of_plan(&lb.plan, &Default::default(), &mut pc), first, "in memory = read back, all up");
    let (_, took_warm) = live();
    eprintln!(
        "{} VIPs x 65537 slots: config fingerprint {took_config:?}; live {took_cold:?} cold, {took_warm:?} with nothing written",
        lb.plan.vips.len()
    );

    // 198.18.0.12 of web down: its VIP's tables without it, as a health
    // change writes them. The same tables as the config with it drained.
    let web = &lb.plan.vips[0];
    let gone = web.backends.iter().find(|b| b.addr.to_string() == "198.18.0.12").unwrap();
    let (ring, rr, _) = weir::plan::tables(&web.backends, lb.plan.table_size, &[gone.id].into_iter().collect());
    let writes = lb.dp.table_writes();
    lb.dp.write_tables(web.id, &ring, &rr).unwrap();
    assert!(lb.dp.table_writes() > writes, "a table write is counted");
    let (down, took) = live();
    eprintln!("live after one VIP's tables were written: {took:?}");
    assert_ne!(down, config);
    let gone_set = [gone.id].into_iter().collect();
    assert_eq!(fingerprint::live_of_plan(&lb.plan, &gone_set, &mut pc), down, "in memory = read back, one down");
    assert_eq!(fingerprint::live_of_plan(&lb.plan, &gone_set, &mut pc), down, "cached = computed");
    let drained = CONFIG.replacen("mac = \"02:00:00:00:01:0c\"\nweight = 2", "mac = \"02:00:00:00:01:0c\"\nweight = 0", 1);
    assert_ne!(drained, CONFIG);
    assert_eq!(down, fingerprint::config(&Plan::build(&Config::from_toml(&drained).unwrap()).unwrap()));
    lb.dp.write_tables(web.id, &web.ring, &web.rr).unwrap();
    assert_eq!(live().0, config, "back up: the same tables, the same value");

    // A backend entry taken out (still in the table): its slots drop new
    // flows, in the program, in lookup, and in the live fingerprint.
    let dns = &lb.plan.vips[1];
    let t = (1..)
        .map(|p| Tuple::parse("udp", &format!("10.9.9.9:{p}"), "198.18.0.100:53").unwrap())
        .find(|t| lookup::live(&lb.dp, &lb.plan, t).unwrap().backend.as_deref() == Some("198.18.0.22:53"))
        .unwrap();
    let id = dns.backends.iter().find(|b| b.addr.to_string() == "198.18.0.22").unwrap().id;
    lb.dp.remove_backend(id).unwrap();
    let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    assert!(a.backend.is_none() && a.text().contains("is empty: a new flow would be dropped"), "{}", a.text());
    check_exact(&lb, "slot of a removed backend", &first_packet(&t), XDP_DROP, None, &["xdp_drop", "drop_no_backend"]);
    assert_ne!(live().0, config);
    lb.dp.restore_backend(id).unwrap();
    assert_eq!(live().0, config);

    // Its flow tracked, then the backend down as a health change takes it
    // out (tables without it, its entry cleared): the flow is stale, and
    // lookup reschedules it where the program does.
    let frame = first_packet(&t);
    let was = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    check_exact(&lb, "a flow to 198.18.0.22", &frame, XDP_TX, Some(&with_macs(&frame, mac_of(&lb, &was), LB_MAC)), &["xdp_tx", "flow_new"]);
    let (ring, rr, _) = weir::plan::tables(&dns.backends, lb.plan.table_size, &[id].into_iter().collect());
    lb.dp.write_tables(dns.id, &ring, &rr).unwrap();
    lb.dp.remove_backend(id).unwrap();
    let a = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    assert!(matches!(a.why, Why::Slot { rescheduled: true, .. }), "{}", a.text());
    assert!(a.text().ends_with("(a stale tracked flow: the next packet is rescheduled there)"), "{}", a.text());
    assert_ne!(a.backend, was.backend);
    let mac = mac_of(&lb, &a);
    let moved = with_macs(&frame, mac, LB_MAC);
    check_exact(&lb, "the stale flow rescheduled", &frame, XDP_TX, Some(&moved), &["xdp_tx", "flow_new", "flow_rescheduled"]);
    let now = lookup::live(&lb.dp, &lb.plan, &t).unwrap();
    assert_eq!((now.why, now.backend), (Why::Tracked { table: "flows4".into() }, a.backend));
}
