//! Data-path health checks through BPF_PROG_TEST_RUN (root): weir_probe
//! (bpf/probe.h) sends a prober's packet to its backend exactly as a
//! client's packet to the VIP goes (DSR: MACs; tunnel: IPIP, checksums
//! recomputed independently by the runner), drops whatever else comes from
//! the prober namespace, and weir_lb steers backends' answers into the
//! prober veth only while probe_on is set: with it clear, the same frame
//! passes to the kernel untouched.

mod common;

use common::*;
use weir::dataplane::ProbeSlot;
use weir::skel::VipKey;

const CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
health = { via = "datapath" }
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"

[[vip]]
name = "tun"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.0.50"
health = { via = "datapath" }
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"
"#;

const PROBER: &str = "198.18.0.10";
const WEB: &str = "198.18.0.100";
const TUN: &str = "198.18.0.110";
const B12_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const B51_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
const INNER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x01];
const OUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x02];
const DSR_PORT: u16 = 61000;
const TUN_PORT: u16 = 61001;

/// weir_probe of the same object (its maps and counters are weir_lb's).
struct Probe<'a>(&'a Lb);

impl Target for Probe<'_> {
    fn exec(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        weir::dataplane::test_run(&self.0.dp.skel.progs.weir_probe, frame, 1).map(|(a, out, _)| (a, out))
    }
    fn counters(&self) -> Vec<u64> {
        self.0.counters()
    }
}

fn vip_key(addr: &str, port: u16) -> VipKey {
    let (addr, family) = weir::dataplane::addr_words(addr.parse().unwrap());
    VipKey { addr, port: port.to_be(), proto: 6, family }
}

fn backend_id(lb: &Lb, addr: &str) -> u32 {
    let a: std::net::IpAddr = addr.parse().unwrap();
    lb.plan.vips.iter().flat_map(|v| &v.backends).find(|b| b.addr == a).unwrap().id
}

/// The data plane set up as `weir run` does for data-path checks; `lo`
/// stands in for the balancer interface and the prober veth (test_run
/// does not transmit: it returns the action the program chose).
fn setup() -> Option<Lb> {
    if !require_root("data-path health-check BPF fixtures") {
        return None;
    }
    let lb = load(CONFIG);
    lb.dp.set_probe_net(PROBER.parse().unwrap(), INNER_MAC, OUTER_MAC, 1, 1).unwrap();
    lb.dp
        .set_probe_targets(&[
            ProbeSlot { port: DSR_PORT, vip: vip_key(WEB, 80), backend_id: backend_id(&lb, "198.18.0.12") },
            ProbeSlot { port: TUN_PORT, vip: vip_key(TUN, 80), backend_id: backend_id(&lb, "198.18.0.51") },
        ])
        .unwrap();
    Some(lb)
}

/// A prober's SYN as it leaves the prober namespace.
fn probe_syn(dst: &str, sport: u16) -> Pkt {
    Pkt::new(PROBER, dst, syn_opts(sport, 80), b"").macs(OUTER_MAC, INNER_MAC)
}

#[test]
fn probes_go_the_way_client_packets_go() {
    let Some(lb) = setup() else { return };
    let p = Probe(&lb);
    let dsr = probe_syn(WEB, DSR_PORT);
    let tun = probe_syn(TUN, TUN_PORT).ip_fields(0, 0x1234, true, 64);
    let tun_out = ipip(&tun, "198.18.0.50", "198.18.0.51", B51_MAC);
    let data = Pkt::new(PROBER, WEB, ack(DSR_PORT, 80), b"GET / HTTP/1.0\r\n\r\n").macs(OUTER_MAC, INNER_MAC);
    let cases: Vec<Case<Probe>> = vec![
        // DSR: only the MACs change (its backend's; the balancer interface's),
        // and out of the balancer interface, never XDP_TX back to the prober.
        Case::new(
            "DSR probe to its backend's MAC",
            dsr.frame(),
            XDP_REDIRECT,
            Some(with_macs(&dsr.frame(), B12_MAC, LB_MAC)),
            &["xdp_redirect", "probe_sent"],
        ),
        Case::new(
            "DSR probe, data segment",
            data.frame(),
            XDP_REDIRECT,
            Some(with_macs(&data.frame(), B12_MAC, LB_MAC)),
            &["xdp_redirect", "probe_sent"],
        ),
        // Tunnel: IPIP from the VIP's source to the backend.
        Case::new("tunnel probe encapsulated to its backend", tun.frame(), XDP_REDIRECT, Some(tun_out.frame()), &[
            "xdp_redirect",
            "probe_sent",
        ]),
        // Anything else from the prober namespace goes nowhere.
        Case::new("a port with no target", probe_syn(WEB, 61002).frame(), XDP_DROP, None, &["xdp_drop", "drop_probe"]),
        Case::new("a port below the range", probe_syn(WEB, 40000).frame(), XDP_DROP, None, &["xdp_drop", "drop_probe"]),
        Case::new("a port above the range", probe_syn(WEB, 62024).frame(), XDP_DROP, None, &["xdp_drop", "drop_probe"]),
        Case::new(
            "the DSR probe's port to another VIP",
            probe_syn(TUN, DSR_PORT).frame(),
            XDP_DROP,
            None,
            &["xdp_drop", "drop_probe"],
        ),
        Case::new(
            "UDP from a probe port",
            Pkt::new(PROBER, WEB, udp_l4(DSR_PORT, 80, true), b"x").macs(OUTER_MAC, INNER_MAC).frame(),
            XDP_DROP,
            None,
            &["xdp_drop", "drop_probe"],
        ),
        Case::new("ARP", arp_request([198, 18, 0, 10], [169, 254, 0, 1]), XDP_DROP, None, &["xdp_drop", "drop_probe"]),
    ];
    run_table(&p, &cases);

    // A backend out of rotation (its entry cleared, as on_down = reschedule
    // does) is probed all the same: that is how it comes back.
    let id = backend_id(&lb, "198.18.0.12");
    lb.dp.remove_backend(id).unwrap();
    check(&p, "DSR probe to a backend out of rotation", &dsr.frame(), XDP_REDIRECT, Some(&with_macs(&dsr.frame(), B12_MAC, LB_MAC)), &[
        "xdp_redirect",
        "probe_sent",
    ]);
    // Targets cleared: the port probes nothing.
    lb.dp.set_probe_targets(&[]).unwrap();
    check(&p, "a cleared target", &dsr.frame(), XDP_DROP, None, &["xdp_drop", "drop_probe"]);
}

#[test]
fn replies_reach_the_prober_only_while_probe_on() {
    let Some(lb) = setup() else { return };
    // The backend's SYN-ACK, from the VIP to the prober's address.
    let reply = Pkt::new(WEB, PROBER, synack_opts(80, DSR_PORT), b"").macs(LB_MAC, B12_MAC).frame();
    let steered = with_macs(&reply, INNER_MAC, OUTER_MAC);
    let pass = &["xdp_pass", "pass_not_vip"];
    // probe_on = 0 (weir without data-path checks): the kernel's, unchanged.
    check_exact(&lb, "reply-shaped frame, probe_on = 0", &reply, XDP_PASS, None, pass);
    lb.dp.set_probe_on(true).unwrap();
    check_exact(&lb, "reply to a probe port", &reply, XDP_REDIRECT, Some(&steered), &["xdp_redirect", "probe_reply"]);
    let last = Pkt::new(WEB, PROBER, synack_opts(80, 62023), b"").macs(LB_MAC, B12_MAC).frame();
    check_exact(&lb, "reply to the range's last port", &last, XDP_REDIRECT, Some(&with_macs(&last, INNER_MAC, OUTER_MAC)), &[
        "xdp_redirect",
        "probe_reply",
    ]);
    // Not a prober's: the node's own traffic is the kernel's.
    let other_port = Pkt::new(WEB, PROBER, synack_opts(80, 40000), b"").macs(LB_MAC, B12_MAC).frame();
    check_exact(&lb, "to the prober address, an ephemeral port", &other_port, XDP_PASS, None, pass);
    let above = Pkt::new(WEB, PROBER, synack_opts(80, 62024), b"").macs(LB_MAC, B12_MAC).frame();
    check_exact(&lb, "to the prober address, above the range", &above, XDP_PASS, None, pass);
    let other_addr = Pkt::new(WEB, "198.18.0.9", synack_opts(80, DSR_PORT), b"").macs(LB_MAC, B12_MAC).frame();
    check_exact(&lb, "to another address, a probe port", &other_addr, XDP_PASS, None, pass);
    let udp_reply = Pkt::new(WEB, PROBER, udp_l4(80, DSR_PORT, true), b"x").macs(LB_MAC, B12_MAC).frame();
    check_exact(&lb, "UDP to a probe port", &udp_reply, XDP_PASS, None, pass);
    // Switched off again (the last data-path check removed by a reload).
    lb.dp.set_probe_on(false).unwrap();
    check_exact(&lb, "reply-shaped frame, probe_on = 0 again", &reply, XDP_PASS, None, pass);
}
