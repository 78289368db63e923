//! NAT and tunnel VIPs without a source_address send from the interface's
//! address, and follow it when it changes (root, BPF_PROG_TEST_RUN). Was:
//! the address read at start stayed until a restart.
//!
//! cargo test --release --test source_follow -- --test-threads=1

mod common;

use common::*;
use weir::config::Config;
use weir::dataplane::load_configured;
use weir::net::Iface;
use weir::plan::Plan;

const CONFIG: &str = r#"
[[vip]]
name = "nat"
address = "198.18.0.100"
port = 80
protocol = "tcp"
mode = "nat"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"

[[vip]]
name = "tunnel"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "tunnel"
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"
"#;

fn src_ip(out: &[u8]) -> [u8; 4] {
    out[26..30].try_into().unwrap()
}

#[test]
fn default_sources_follow_the_interface_address() {
    if !require_root("source address fixtures") {
        return;
    }
    let plan = Plan::build(&Config::from_toml(CONFIG).unwrap()).unwrap();
    let mut iface = Iface::unattached("test0", LB_MAC);
    iface.addrs = vec!["198.18.0.10".parse().unwrap()];
    let mut dp = load_configured(&plan, &iface).expect("load (root)");
    let nat1 = Pkt::new("10.1.0.1", "198.18.0.100", syn(40001, 80), b"").frame();
    let tun1 = Pkt::new("10.1.0.1", "198.18.0.110", syn(40002, 80), b"").frame();
    let (a, out) = dp.run(&nat1).unwrap();
    assert_eq!((a, src_ip(&out)), (XDP_TX, [198, 18, 0, 10]), "NAT from the interface's address");
    let (a, out) = dp.run(&tun1).unwrap();
    assert_eq!((a, src_ip(&out)), (XDP_TX, [198, 18, 0, 10]), "tunnel outer source");

    // The interface's address changes (an operator renumbers the host).
    let lines = dp.follow_addresses(&plan, vec!["198.18.0.20".parse().unwrap()]).unwrap();
    println!("{}", lines.join("\n"));
    assert_eq!(lines.len(), 2, "both VIPs follow: {lines:?}");
    let nat2 = Pkt::new("10.1.0.2", "198.18.0.100", syn(40003, 80), b"").frame();
    let tun2 = Pkt::new("10.1.0.2", "198.18.0.110", syn(40004, 80), b"").frame();
    let (a, out) = dp.run(&nat2).unwrap();
    assert_eq!((a, src_ip(&out)), (XDP_TX, [198, 18, 0, 20]), "a new NAT flow leaves from the new address");
    let (a, out) = dp.run(&tun2).unwrap();
    assert_eq!((a, src_ip(&out)), (XDP_TX, [198, 18, 0, 20]), "tunnel outer source follows");

    // No IPv4 address left: the VIPs keep the last one, and say so.
    let lines = dp.follow_addresses(&plan, vec![]).unwrap();
    assert!(lines.iter().all(|l| l.contains("keeps its source address")), "{lines:?}");
    let (a, out) = dp.run(&tun2).unwrap();
    assert_eq!((a, src_ip(&out)), (XDP_TX, [198, 18, 0, 20]));
}
