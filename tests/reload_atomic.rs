//! A refused reload writes nothing (issue 10): every map of the data plane,
//! dumped byte for byte before and after a reload that is refused only at
//! its last VIP, is unchanged. Root (BPF), no lab.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use libbpf_rs::{MapCore, MapFlags, MapType};
use weir::config::Config;
use weir::dataplane::configured_hops;
use weir::net::Iface;
use weir::plan::Plan;

const BEFORE: &str = r#"
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
"#;

/// Every map's every entry (per-CPU values of all CPUs), by map name.
fn dump(lb: &Lb) -> BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>> {
    use libbpf_rs::skel::Skel as _;
    let mut out = BTreeMap::new();
    for m in lb.dp.skel.object().maps() {
        let name = m.name().to_string_lossy().to_string();
        let t = m.map_type();
        if matches!(t, MapType::RingBuf) {
            continue; // no entries to read
        }
        let percpu = matches!(t, MapType::PercpuArray | MapType::PercpuHash | MapType::LruPercpuHash);
        let mut entries = Vec::new();
        for k in m.keys() {
            let v = if percpu {
                m.lookup_percpu(&k, MapFlags::ANY).unwrap().unwrap_or_default().concat()
            } else {
                m.lookup(&k, MapFlags::ANY).unwrap().unwrap_or_default()
            };
            entries.push((k, v));
        }
        out.insert(name, entries);
    }
    out
}

#[test]
fn a_refused_reload_leaves_every_map_byte_identical() {
    if !require_root("reload atomicity fixture") {
        return;
    }
    let lb = load(BEFORE);
    // VIP web's weights change (its tables would be rewritten and flipped),
    // and a tunnel VIP is added that the interface has no source address
    // for: refused, but only when its turn comes.
    let after = BEFORE.replace("mac = \"02:00:00:00:00:0c\"", "mac = \"02:00:00:00:00:0c\"\nweight = 5").to_string()
        + r#"
[[vip]]
name = "tun"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "tunnel"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"
"#;
    let new = Plan::build_after(&Config::from_toml(&after).unwrap(), Some(&lb.plan)).unwrap();
    let iface = Iface::unattached("test0", LB_MAC);
    let (hops, _) = configured_hops(&new, &iface).unwrap();
    let before = dump(&lb);
    let e = lb.dp.reload(&lb.plan, &new, &hops, &BTreeMap::new(), &BTreeSet::new()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("the interface has no global IPv4 address to send from"), "{e}");
    let after_maps = dump(&lb);
    let entries: usize = before.values().map(Vec::len).sum();
    eprintln!("compared {} maps, {entries} entries", before.len());
    for (name, entries) in &before {
        assert!(after_maps.get(name) == Some(entries), "map {name} changed by a refused reload");
    }
    assert_eq!(before.len(), after_maps.len());
}
