//! Maglev tables and round-robin sequences are written through a mapping of
//! their maps (BPF_F_MMAPABLE) instead of one map update per slot: what the
//! kernel then reads (syscalls, and packets through the program) is exactly
//! the plan's tables, the live half is untouched while the spare one is
//! written, and maps adopted from an older instance that made them without
//! the flag are still written (by syscalls). Root (BPF), no lab.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};

use common::*;
use libbpf_rs::{MapCore, MapHandle, MapType};
use weir::config::Config;
use weir::dataplane::{configured_hops, Dataplane, Settings};
use weir::net::Iface;
use weir::plan::Plan;
use weir::skel::{VipMeta, MAX_VIPS, RR_SLOTS};

const CONFIG: &str = r#"
[maglev]
table_size = 251
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
name = "rr"
address = "198.18.0.101"
port = 80
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"
weight = 3
"#;

/// The same VIPs with every weight changed: every table is rewritten.
fn reweighted() -> String {
    CONFIG
        .replace("mac = \"02:00:00:00:00:0b\"", "mac = \"02:00:00:00:00:0b\"\nweight = 4")
        .replace("mac = \"02:00:00:00:00:0c\"", "mac = \"02:00:00:00:00:0c\"\nweight = 2")
        .replace("weight = 3", "weight = 1")
}

fn iface() -> Iface {
    Iface::unattached("test0", LB_MAC)
}

fn meta(dp: &Dataplane, vip_id: u32) -> VipMeta {
    dp.vip_entries().unwrap().into_iter().map(|(_, m)| m).find(|m| m.vip_id == vip_id).expect("the VIP's entry")
}

/// What the kernel holds for each VIP (read by syscalls): its live half's
/// Maglev table and round-robin sequence equal the plan's.
fn assert_live_tables(dp: &Dataplane, plan: &Plan, when: &str) {
    for v in &plan.vips {
        let m = meta(dp, v.id);
        assert_eq!(dp.live_ring(&m).unwrap(), v.ring, "{when}: VIP {}'s live Maglev table (half {})", v.name, m.half);
        assert_eq!(dp.live_rr(&m).unwrap(), v.rr, "{when}: VIP {}'s live round-robin sequence", v.name);
    }
}

/// New flows to VIP web go where the plan's table says (the program reads
/// the tables, not this process). `sports`: fresh source ports, so no
/// tracked flow decides.
fn assert_packets_follow(dp: &Dataplane, plan: &Plan, sports: std::ops::Range<u16>, when: &str) {
    let web = &plan.vips[0];
    let (hops, _) = configured_hops(plan, &iface()).unwrap();
    let vip = "198.18.0.100".parse().unwrap();
    let cli = "10.1.2.3".parse().unwrap();
    let mut seen = BTreeSet::new();
    for sport in sports {
        let bid = web.ring[(flow_hash(cli, vip, sport, 80, 6) % plan.table_size) as usize];
        let want = hops[&bid].mac;
        let (action, out) = dp.run(&tcp_syn("10.1.2.3", "198.18.0.100", sport, 80)).unwrap();
        assert_eq!(action_name(action), "XDP_TX", "{when}: SYN from port {sport}");
        assert_eq!(out[..6], want, "{when}: SYN from port {sport} went to the wrong backend");
        seen.insert(want);
    }
    assert!(seen.len() > 1, "{when}: the flows spread over the backends");
}

#[test]
fn tables_written_through_the_mapping_are_what_the_kernel_reads() {
    if !require_root("table write fixture") {
        return;
    }
    let lb = load(CONFIG);
    assert!(lb.dp.tables_mapped(), "a fresh data plane writes its tables through a mapping of maglev_ring and rr_ring");
    assert_live_tables(&lb.dp, &lb.plan, "after the first load");
    assert_packets_follow(&lb.dp, &lb.plan, 41000..41064, "after the first load");
    let before: BTreeMap<u32, (u32, Vec<u32>)> = lb
        .plan
        .vips
        .iter()
        .map(|v| {
            let m = meta(&lb.dp, v.id);
            (v.id, (m.half, lb.dp.live_ring(&m).unwrap()))
        })
        .collect();

    let new = Plan::build_after(&Config::from_toml(&reweighted()).unwrap(), Some(&lb.plan)).unwrap();
    for (a, b) in lb.plan.vips.iter().zip(&new.vips) {
        assert_ne!(a.ring, b.ring, "the new weights change VIP {}'s table", a.name);
    }
    let (hops, tx) = configured_hops(&new, &iface()).unwrap();
    lb.dp.reload(&lb.plan, &new, &hops, &tx, &BTreeSet::new()).unwrap();
    assert_live_tables(&lb.dp, &new, "after a reload");
    assert_packets_follow(&lb.dp, &new, 42000..42064, "after a reload");
    // The flip went to the other half, and the old half still holds the
    // old table (what packets that read the VIP entry before the flip use).
    for (id, (half, ring)) in &before {
        let mut m = meta(&lb.dp, *id);
        assert_eq!(m.half, half ^ 1, "VIP {id} switched halves");
        m.half ^= 1;
        assert_eq!(&lb.dp.live_ring(&m).unwrap(), ring, "VIP {id}'s previous half is intact");
    }
}

/// The maps a running instance hands over, as it shares them.
fn handed_over(dp: &Dataplane) -> Vec<(String, OwnedFd)> {
    dp.shareable_maps()
        .into_iter()
        .map(|(n, fd)| {
            // SAFETY: valid while `dp` lives; duplicated at once.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().unwrap();
            (n, fd)
        })
        .collect()
}

/// Hitless restart: the successor adopts the running instance's (mapped)
/// tables, writes its spare halves and flips; both see the same tables.
#[test]
fn a_successor_writes_the_adopted_tables_through_its_own_mapping() {
    if !require_root("table write fixture") {
        return;
    }
    let lb = load(CONFIG);
    let new = Plan::build_after(&Config::from_toml(&reweighted()).unwrap(), Some(&lb.plan)).unwrap();
    let dp2 = Dataplane::load_reusing(Settings::for_plan(&new, &iface()), &handed_over(&lb.dp)).unwrap();
    assert!(dp2.tables_mapped(), "the running instance's maps were made mmapable: the successor maps them too");
    dp2.adopt_live(&lb.plan).unwrap();
    let (hops, tx) = configured_hops(&new, &iface()).unwrap();
    dp2.reload(&lb.plan, &new, &hops, &tx, &BTreeSet::new()).unwrap();
    assert_live_tables(&dp2, &new, "successor, after its reload");
    assert_live_tables(&lb.dp, &new, "the old instance's view of the same maps");
    assert_packets_follow(&dp2, &new, 43000..43064, "successor");
    assert_packets_follow(&lb.dp, &new, 44000..44064, "old program on the same maps");
}

/// An older weir made maglev_ring and rr_ring without BPF_F_MMAPABLE:
/// a successor adopts them as they are (libbpf takes their flags) and
/// writes its tables by syscalls, with the same result.
#[test]
fn tables_adopted_from_an_older_instance_are_written_by_syscalls() {
    if !require_root("table write fixture") {
        return;
    }
    let cfg = Config::from_toml(CONFIG).unwrap();
    let plan = Plan::build(&cfg).unwrap();
    let settings = Settings::for_plan(&plan, &iface());
    let opts = libbpf_sys::bpf_map_create_opts { sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _, ..Default::default() };
    let ring_entries = settings.ring_size * settings.max_vips * 2;
    let old_ring = MapHandle::create(MapType::Array, Some("maglev_ring"), 4, 4, ring_entries, &opts).unwrap();
    let old_rr = MapHandle::create(MapType::Array, Some("rr_ring"), 4, 4, MAX_VIPS * RR_SLOTS * 2, &opts).unwrap();
    let reuse = vec![
        ("maglev_ring".to_string(), old_ring.as_fd().try_clone_to_owned().unwrap()),
        ("rr_ring".to_string(), old_rr.as_fd().try_clone_to_owned().unwrap()),
    ];
    let dp = Dataplane::load_reusing(settings, &reuse).unwrap();
    assert!(!dp.tables_mapped(), "maps made without BPF_F_MMAPABLE cannot be mapped: syscalls write them");
    let (hops, tx) = configured_hops(&plan, &iface()).unwrap();
    dp.apply(&plan, &hops, &tx).unwrap();
    assert_live_tables(&dp, &plan, "older maps, first write");
    assert_packets_follow(&dp, &plan, 45000..45064, "older maps, first write");
    let new = Plan::build_after(&Config::from_toml(&reweighted()).unwrap(), Some(&plan)).unwrap();
    let (hops, tx) = configured_hops(&new, &iface()).unwrap();
    dp.reload(&plan, &new, &hops, &tx, &BTreeSet::new()).unwrap();
    assert_live_tables(&dp, &new, "older maps, after a reload");
    assert_packets_follow(&dp, &new, 46000..46064, "older maps, after a reload");
    // The kernel's own maps (not this process' view) hold the tables.
    let m = meta(&dp, new.vips[0].id);
    let idx = (m.vip_id * 2 + (m.half & 1)) * new.table_size;
    let slot0 = old_ring.lookup(&idx.to_ne_bytes(), libbpf_rs::MapFlags::ANY).unwrap().unwrap();
    assert_eq!(u32::from_ne_bytes(slot0[..4].try_into().unwrap()), new.vips[0].ring[0]);
}
