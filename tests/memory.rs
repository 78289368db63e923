//! The memory plan (`weir check`) against the kernel's own accounting, and
//! what the data plane holds (root: data planes are loaded, never attached).
//!
//! The kernel's figure is each map's `memlock:` in /proc/self/fdinfo (what
//! `bpftool map show` prints); the plan is computed from the opened, sized
//! object before anything is loaded (src/memplan.rs).
//!
//! `ten_million_flows_fit_in_1_gib` loads a 10,000,000-flow data plane.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use common::*;
use libbpf_rs::skel::Skel as _;
use libbpf_rs::MapCore as _;
use weir::config::Config;
use weir::dataplane::{memory_plan, Dataplane, Settings};
use weir::memplan::MemPlan;
use weir::net::Iface;
use weir::plan::Plan;

const MIB: f64 = (1 << 20) as f64;

fn settings_of(toml: &str) -> Settings {
    let plan = Plan::build(&Config::from_toml(toml).expect("test config is valid")).expect("plan");
    Settings::for_plan(&plan, &Iface::unattached("test0", LB_MAC))
}

fn lab_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/weir-lab.toml")).expect("lab/weir-lab.toml")
}

/// The kernel's accounting of every map of a loaded data plane, by name.
fn kernel_memlock(dp: &Dataplane) -> BTreeMap<String, u64> {
    dp.skel
        .object()
        .maps()
        .map(|m| {
            let name = m.name().to_string_lossy().into_owned();
            let info = weir::mapio::map_info(&m.as_fd()).unwrap_or_else(|e| panic!("fdinfo of map {name}: {e:#}"));
            (name, info.memlock)
        })
        .collect()
}

/// Load `toml`'s data plane; its plan, the kernel's figures, and a table of both.
fn plan_and_kernel(what: &str, toml: &str) -> (MemPlan, BTreeMap<String, u64>) {
    let s = settings_of(toml);
    let plan = memory_plan(&s).expect("memory plan");
    let dp = Dataplane::load(s).expect("load BPF (root)");
    let kernel = kernel_memlock(&dp);
    eprintln!("{what}:\n  {:<15} {:>14} {:>14} {:>7}", "map", "plan", "kernel", "diff");
    for m in &plan.maps {
        let k = kernel.get(&m.def.name).copied().unwrap_or(0);
        let d = (m.cost.bytes as f64 - k as f64) / (k.max(1) as f64) * 100.0;
        eprintln!("  {:<15} {:>14} {:>14} {:>6.2}%", m.def.name, m.cost.bytes, k, d);
    }
    let kt: u64 = kernel.values().sum();
    eprintln!(
        "  total: plan {:.2} MiB, kernel {:.2} MiB; plan per tracked flow {:.1} bytes",
        plan.total() as f64 / MIB,
        kt as f64 / MIB,
        plan.bytes_per_flow()
    );
    (plan, kernel)
}

/// Every map of the plan is within `pct` % of the kernel's figure (or 1 KiB
/// for the smallest, whose kernel structures vary by build), and so is the total.
fn assert_close(what: &str, plan: &MemPlan, kernel: &BTreeMap<String, u64>, pct: f64) {
    assert_eq!(
        plan.maps.iter().map(|m| m.def.name.clone()).collect::<Vec<_>>().len(),
        kernel.len(),
        "{what}: the plan has every map the loader created: plan {:?}, kernel {:?}",
        plan.maps.iter().map(|m| &m.def.name).collect::<Vec<_>>(),
        kernel.keys().collect::<Vec<_>>()
    );
    for m in &plan.maps {
        let k = *kernel.get(&m.def.name).unwrap_or_else(|| panic!("{what}: the kernel has no map {}", m.def.name)) as f64;
        let p = m.cost.bytes as f64;
        let off = (p - k).abs();
        assert!(
            off <= k * pct / 100.0 || off <= 1024.0,
            "{what}: map {} planned at {p} bytes, the kernel accounts {k} ({:+.2}%)",
            m.def.name,
            (p - k) / k * 100.0
        );
    }
    let (p, k) = (plan.total() as f64, kernel.values().sum::<u64>() as f64);
    assert!((p - k).abs() <= k * pct / 100.0, "{what}: total planned at {p} bytes, the kernel accounts {k}");
}

fn shield_bytes(plan: &MemPlan, kernel: &BTreeMap<String, u64>) -> u64 {
    plan.maps.iter().filter(|m| m.note.contains("[shield]") || m.note.contains("shield.")).map(|m| kernel[&m.def.name]).sum()
}

/// The plan is the kernel's accounting, map by map, for the lab's config,
/// with [shield], with fragments off, and without a NAT VIP.
#[test]
fn the_plan_is_the_kernels_accounting() {
    if !require_root("memory plan vs the kernel") {
        return;
    }
    let lab = lab_config();
    let (plan, kernel) = plan_and_kernel("lab config", &lab);
    assert_close("lab config", &plan, &kernel, 2.0);

    let shielded = format!("[shield]\nsources = 100000\nchallenges = 300000\n{lab}");
    let (plan, kernel) = plan_and_kernel("lab config + [shield]", &shielded);
    assert_close("lab config + [shield]", &plan, &kernel, 2.0);
    let sh = plan.get("syn_challenge").expect("the plan names the challenge table");
    assert_eq!(sh.def.max_entries, 300000, "shield.challenges sizes it");

    let dsr_only: String = lab.split("[[vip]]").take(2).collect::<Vec<_>>().join("[[vip]]");
    assert!(!dsr_only.contains("\"nat\""), "the lab's first VIP is DSR");
    let dsr_only = format!("[fragments]\nenabled = false\n{dsr_only}");
    let (plan, kernel) = plan_and_kernel("DSR only, fragments off", &dsr_only);
    assert_close("DSR only, fragments off", &plan, &kernel, 2.0);
    for m in plan.maps.iter().filter(|m| m.note.starts_with("off:")) {
        assert_eq!(m.def.max_entries, 1, "{} ({}) is sized to nothing", m.def.name, m.note);
        assert!(kernel[&m.def.name] < 4096, "{} holds {} bytes while off", m.def.name, kernel[&m.def.name]);
    }
    let off: Vec<&str> = plan.maps.iter().filter(|m| m.note.starts_with("off:")).map(|m| m.def.name.as_str()).collect();
    assert!(off.len() >= 6, "NAT, fragment and shield tables are off: {off:?}");
}

/// The lab's config (no [shield]) no longer holds the shield's tables:
/// before, they were allocated at their defaults whether or not the shield
/// was on (the same sizes as `[shield]` with its defaults gives them now).
#[test]
fn the_lab_config_holds_no_shield_tables() {
    if !require_root("lab config memory") {
        return;
    }
    let lab = lab_config();
    let (plan, kernel) = plan_and_kernel("lab config", &lab);
    let (with_plan, with_kernel) = plan_and_kernel("lab config + [shield] (defaults)", &format!("[shield]\n{lab}"));
    let (now, before) = (kernel.values().sum::<u64>(), with_kernel.values().sum::<u64>());
    let (sh_now, sh_before) = (shield_bytes(&plan, &kernel), shield_bytes(&with_plan, &with_kernel));
    eprintln!(
        "lab config, kernel accounting: {:.1} MiB now; {:.1} MiB with the shield's tables at their defaults (as before: \
         shield tables {:.1} MiB then, {:.1} KiB now)",
        now as f64 / MIB,
        before as f64 / MIB,
        sh_before as f64 / MIB,
        sh_now as f64 / 1024.0
    );
    assert!(sh_before > 40 << 20, "the shield's default tables are ~42 MiB: {sh_before}");
    assert!(sh_now < 16 << 10, "without [shield] its tables hold {sh_now} bytes");
    assert!(now + (40 << 20) < before, "{now} vs {before}");
    assert!(now < 50 << 20, "the lab config holds {:.1} MiB (85 MiB before)", now as f64 / MIB);
}

fn flows_config(n: u32) -> String {
    format!(
        "[conntrack]\nsize = {n}\n[fragments]\nenabled = false\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n"
    )
}

/// The flow-tracking maps (flow tables and the handshake table) of a
/// 10,000,000-flow table: planned, and as the kernel accounts them.
fn ten_million() -> (MemPlan, u64) {
    let (plan, kernel) = plan_and_kernel("conntrack.size = 10000000", &flows_config(10_000_000));
    assert_close("conntrack.size = 10000000", &plan, &kernel, 2.0);
    let flows: u64 = plan.maps.iter().filter(|m| m.per_flow).map(|m| kernel[&m.def.name]).sum();
    eprintln!(
        "10,000,000 flows: flow-tracking maps {:.1} MiB by the kernel ({:.1} bytes per flow; planned {:.1}), \
         data plane total {:.1} MiB",
        flows as f64 / MIB,
        flows as f64 / 1e7,
        plan.bytes_per_flow(),
        kernel.values().sum::<u64>() as f64 / MIB
    );
    (plan, flows)
}

/// 10 million tracked IPv4 flows (the scale Katran is configured for) fit
/// in 1 GiB by the kernel's own accounting: the flow tables (16-byte IPv4
/// key, bpf/flows.h), and the whole data plane with them.
#[test]
fn ten_million_flows_fit_in_1_gib() {
    if !require_root("10M-flow data plane") {
        return;
    }
    let (plan, flows) = ten_million();
    assert!(plan.maps.iter().any(|m| m.per_flow), "the plan marks the flow-tracking maps");
    assert!(flows > 10_000_000 * 16, "a tracked flow costs more than its key");
    assert!(flows <= 1 << 30, "10M flows hold {:.1} MiB of flow tables", flows as f64 / MIB);
    let total = plan.total();
    assert!(total <= 1 << 30, "the 10M-flow data plane holds {:.1} MiB in all", total as f64 / MIB);
}

/// The maps of `dp` as a hitless restart hands them over.
fn handed_over(dp: &Dataplane) -> Vec<(String, std::os::fd::OwnedFd)> {
    dp.shareable_maps()
        .into_iter()
        .map(|(n, fd)| {
            // SAFETY: the fd is one of dp's maps, open while dp lives (it does, here).
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            (n, b.try_clone_to_owned().expect("dup a map fd"))
        })
        .collect()
}

fn map_id(dp: &Dataplane, name: &str) -> (u32, u32) {
    let m = dp.skel.object().maps().find(|m| m.name() == name).unwrap_or_else(|| panic!("no map {name}"));
    let i = weir::mapio::map_info(&m.as_fd()).expect("fdinfo");
    (i.map_id, i.max_entries)
}

/// A hitless restart adopts every map whose size is the same; the tables
/// of a feature switched on (here NAT, sized to nothing before) are made
/// anew at their size; a size change of a table in use is refused, naming
/// the setting.
#[test]
fn a_hitless_restart_makes_switched_tables_anew_and_refuses_size_changes() {
    if !require_root("hitless restart sizes") {
        return;
    }
    let lab = lab_config();
    let dsr_only: String = lab.split("[[vip]]").take(2).collect::<Vec<_>>().join("[[vip]]");
    let old = Dataplane::load(settings_of(&dsr_only)).expect("load BPF (root)");
    assert_eq!(map_id(&old, "nat_fwd").1, 1, "no NAT VIP: nothing in the NAT table");

    // Restart with the lab config (a NAT VIP): flows adopted, NAT tables new.
    let new = Dataplane::load_reusing(settings_of(&lab), &handed_over(&old)).expect("a restart that adds a NAT VIP");
    assert_eq!(map_id(&new, "flows4"), map_id(&old, "flows4"), "the flow table is taken over");
    assert_eq!(map_id(&new, "maglev_ring"), map_id(&old, "maglev_ring"));
    let (nat_id, nat_n) = map_id(&new, "nat_fwd");
    assert_ne!(nat_id, map_id(&old, "nat_fwd").0, "the NAT table is made anew");
    assert_eq!(nat_n, 65536, "at the flow table's size");
    drop(new);

    // A shield size change is a plain restart: refused, naming the setting.
    let shielded = |n: u32| format!("[shield]\nsources = {n}\n{lab}");
    let old = Dataplane::load(settings_of(&shielded(70000))).expect("load BPF (root)");
    let e = Dataplane::load_reusing(settings_of(&shielded(80000)), &handed_over(&old))
        .err()
        .expect("a restart changing shield.sources is refused");
    let text = format!("{e:#}");
    assert!(text.contains("syn_bucket") || text.contains("syn_verified"), "{text}");
    assert!(text.contains("shield.sources"), "{text}");
    let again = Dataplane::load_reusing(settings_of(&shielded(70000)), &handed_over(&old)).expect("same sizes");
    assert_eq!(map_id(&again, "syn_challenge"), map_id(&old, "syn_challenge"), "the shield's tables are taken over");
}

/// A hitless upgrade from a weir whose flow tables were one `flows` and one
/// `syn_flows` for both families (40-byte keys): their entries are copied
/// into flows4 / flows6 (syn_flows4 / syn_flows6) before the new program
/// serves, so tracked flows keep their backends.
#[test]
fn an_upgrade_copies_the_old_single_flow_table() {
    if !require_root("hitless restart of data planes") {
        return;
    }
    use libbpf_rs::{MapFlags, MapHandle, MapType};
    use weir::dataplane::FlowTables;
    use weir::skel::{Flow, FlowKey};
    let cfg = "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n\
               [[vip]]\naddress = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"2001:2::11\"\nmac = \"02:00:00:00:00:0c\"\n";
    let opts = libbpf_sys::bpf_map_create_opts { sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _, ..Default::default() };
    let old_table = |name: &str| MapHandle::create(MapType::LruHash, Some(name), 40, 8, 1024, &opts).expect("an old-layout flow table");
    let (flows, syn) = (old_table("flows"), old_table("syn_flows"));
    let key = |src: [u32; 4], dst: [u32; 4], sport: u16, family: u8| FlowKey { src, dst, sport: sport.to_be(), dport: 80u16.to_be(), proto: 6, family, ..Default::default() };
    let v4 = key([u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0], [u32::from_ne_bytes([198, 18, 0, 100]), 0, 0, 0], 40000, 4);
    let v6 = key([0x0120, 0, 0, 0x0100_0000], [0x0220, 0, 0, 0x0001_0000], 40001, 6);
    let hs = key([u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0], [u32::from_ne_bytes([198, 18, 0, 100]), 0, 0, 0], 40002, 4);
    let f = |b: u32| Flow { backend_id: b, vip_id: 0, generation: 0 };
    // SAFETY: FlowKey and Flow are Plain (weir::skel).
    let bytes = |k: &FlowKey| unsafe { plain::as_bytes(k) }.to_vec();
    let fb = |x: &Flow| unsafe { plain::as_bytes(x) }.to_vec();
    flows.update(&bytes(&v4), &fb(&f(7)), MapFlags::ANY).unwrap();
    flows.update(&bytes(&v6), &fb(&f(8)), MapFlags::ANY).unwrap();
    syn.update(&bytes(&hs), &fb(&f(9)), MapFlags::ANY).unwrap();
    let reuse: Vec<(String, std::os::fd::OwnedFd)> = [("flows", &flows), ("syn_flows", &syn)]
        .iter()
        .map(|(n, m)| (n.to_string(), m.as_fd().try_clone_to_owned().unwrap()))
        .collect();
    let dp = Dataplane::load_reusing(settings_of(cfg), &reuse).expect("a restart over an old-layout flow table");
    let est = FlowTables::established(&dp).unwrap();
    assert_eq!(est.lookup(&v4).unwrap().map(|x| x.backend_id), Some(7), "the IPv4 flow is in flows4");
    assert_eq!(est.lookup(&v6).unwrap().map(|x| x.backend_id), Some(8), "the IPv6 flow is in flows6");
    assert!(est.lookup(&hs).unwrap().is_none(), "the handshake is not an established flow");
    let hand = FlowTables::handshakes(&dp).unwrap();
    assert_eq!(hand.lookup(&hs).unwrap().map(|x| x.backend_id), Some(9), "the handshake is in syn_flows4");
}
