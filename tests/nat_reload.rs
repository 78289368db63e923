//! Reloads that add, change and remove a full-NAT VIP, through the
//! Dataplane API and BPF_PROG_TEST_RUN (root; no lab): the `nat_on` switch
//! follows the running plan (non-VIP packets look for NAT replies only while
//! some VIP uses NAT), a conntrack-timeout change is refused and leaves the
//! running config translating, and a new `source_address` applies to new
//! flows. The contract is docs/nat-tunnel.md.
//!
//! Expected frames are built here from scratch with common's `Pkt`
//! (checksums computed by etherparse) and checked by the one fixture runner
//! (tests/common/fixture.rs); the only value read back from an output is the
//! SNAT port the program chose, first checked against `source_ports`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use common::*;
use etherparse::TcpHeader;
use weir::config::Config;
use weir::dataplane::configured_hops;
use weir::net::Iface;
use weir::plan::Plan;
use std::os::fd::AsFd;

const CLIENT: &str = "10.9.8.7";
/// The DSR VIP (present in every config).
const DSR_VIP: &str = "198.18.0.100";
/// The NAT VIP the reloads add and remove.
const NAT_VIP: &str = "198.18.0.101";
const NAT_VPORT: u16 = 80;
/// The NAT VIP's source_address, before and after the change.
const SNAT: &str = "198.18.0.10";
const SNAT2: &str = "198.18.0.30";
const NAT_B: &str = "198.18.0.11";
const NAT_BPORT: u16 = 8080;
const NAT_BMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const RANGE: (u16, u16) = (20000, 29999);

const DSR_ONLY: &str = r#"
[conntrack]
size = 4096
[maglev]
table_size = 65537

[[vip]]
name = "dsr-web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"
"#;

/// DSR_ONLY plus a NAT VIP with `source_address` (and, optionally, extra
/// `[conntrack]` lines).
fn with_nat(source: &str, conntrack_extra: &str) -> String {
    let base = DSR_ONLY.replace("size = 4096\n", &format!("size = 4096\n{conntrack_extra}"));
    format!(
        r#"{base}
[[vip]]
name = "nat-web"
address = "{NAT_VIP}"
port = {NAT_VPORT}
protocol = "tcp"
mode = "nat"
source_address = "{source}"
source_ports = [{}, {}]
[[vip.backend]]
address = "{NAT_B}"
port = {NAT_BPORT}
mac = "02:00:00:00:00:0b"
"#,
        RANGE.0, RANGE.1
    )
}

// ---------------------------------------------------------------- frames ---

fn v4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

/// eth / IPv4 (id 0x4242, DF, ttl 64) / TCP, every checksum computed by etherparse.
fn frame(eth_dst: [u8; 6], eth_src: [u8; 6], src: &str, dst: &str, tcp: &TcpHeader, payload: &[u8]) -> Vec<u8> {
    Pkt::new(src, dst, L4::Tcp(tcp.clone()), payload).macs(eth_dst, eth_src).ip_fields(0, 0x4242, true, 64).frame()
}

fn syn(sport: u16, dport: u16) -> TcpHeader {
    let mut h = tcp_hdr(sport, dport, 0x1000_0000, None, 64240);
    h.syn = true;
    h
}

fn synack(sport: u16, dport: u16) -> TcpHeader {
    let mut h = tcp_hdr(sport, dport, 0x2000_0000, Some(0x1000_0001), 65160);
    h.syn = true;
    h
}

fn ack(sport: u16, dport: u16) -> TcpHeader {
    let mut h = tcp_hdr(sport, dport, 0x1000_0001, Some(0x2000_0001), 502);
    h.psh = true;
    h
}

/// Client -> NAT VIP.
fn client_frame(cport: u16, tcp: fn(u16, u16) -> TcpHeader, payload: &[u8]) -> Vec<u8> {
    frame(LB_MAC, CLIENT_MAC, CLIENT, NAT_VIP, &tcp(cport, NAT_VPORT), payload)
}

/// What the client frame must become: to the backend, from `snat`:`port`.
fn forwarded(cport: u16, tcp: fn(u16, u16) -> TcpHeader, payload: &[u8], snat: &str, port: u16) -> Vec<u8> {
    let mut h = tcp(cport, NAT_VPORT);
    h.source_port = port;
    h.destination_port = NAT_BPORT;
    frame(NAT_BMAC, LB_MAC, snat, NAT_B, &h, payload)
}

/// Backend -> `snat`:`port` (the reply to a forwarded packet).
fn reply_frame(snat: &str, port: u16) -> Vec<u8> {
    frame(LB_MAC, NAT_BMAC, NAT_B, snat, &synack(NAT_BPORT, port), b"")
}

/// What the reply must become: VIP -> client.
fn reply_translated(cport: u16) -> Vec<u8> {
    frame(CLIENT_MAC, LB_MAC, NAT_VIP, CLIENT, &synack(NAT_VPORT, cport), b"")
}

// ------------------------------------------------------------- checking ---

/// A new NAT flow from `cport`: XDP_TX to the backend from `snat` with a
/// port in `source_ports`, the rest of the frame exactly the client's.
/// Returns the SNAT port.
fn nat_new_flow(lb: &Lb, name: &str, cport: u16, snat: &str) -> u16 {
    let f = client_frame(cport, syn, b"");
    let r = run(lb, name, &f);
    let out = &r.out;
    assert_eq!(action_name(r.action), "XDP_TX", "{name}: XDP action (counters that rose: {})\n  output {}", rose(&r), hex_row(out));
    assert!(out.len() >= 14 + 20 + 20, "{name}: short output {}", hex_row(&out));
    let port = u16::from_be_bytes([out[34], out[35]]);
    assert!((RANGE.0..=RANGE.1).contains(&port), "{name}: SNAT port {port} outside source_ports {RANGE:?}");
    // The rewritten IPv4 source, byte by byte, then the whole frame.
    assert_eq!(out[26..30], v4(snat), "{name}: IPv4 source is the VIP's source_address {snat}");
    assert_eq!(out[30..34], v4(NAT_B), "{name}: IPv4 destination is the backend");
    let want = forwarded(cport, syn, b"", snat, port);
    expect_exact(name, &r, &f, XDP_TX, Some(&want), &["xdp_tx", "flow_new"]);
    port
}

/// The backend's reply to `snat`:`port` goes back to the client's `cport`.
fn nat_reply(lb: &Lb, name: &str, snat: &str, port: u16, cport: u16) {
    check_exact(lb, name, &reply_frame(snat, port), XDP_TX, Some(&reply_translated(cport)), &["xdp_tx", "nat_reply"]);
}

fn plan_after(text: &str, prev: &Plan) -> Plan {
    Plan::build_after(&Config::from_toml(text).expect("test config is valid"), Some(prev)).expect("plan")
}

/// `Dataplane::reload(old, new, hops, {}, {})` as `weir reload` calls it.
fn reload(lb: &Lb, old: &Plan, new: &Plan) -> anyhow::Result<String> {
    let iface = Iface::unattached("test0", LB_MAC);
    let (hops, _) = configured_hops(new, &iface).expect("test backends carry MACs");
    lb.dp.reload(old, new, &hops, &BTreeMap::new(), &BTreeSet::new())
}

/// A DSR-only data plane that can take a NAT VIP by reload: started with
/// one (the NAT tables are sized only when some VIP uses NAT at start),
/// then reloaded to DSR only. `lb.plan` is the DSR-only plan.
fn dsr_with_nat_tables() -> Lb {
    let mut lb = load(&with_nat(SNAT, ""));
    let dsr = plan_after(DSR_ONLY, &lb.plan);
    reload(&lb, &lb.plan, &dsr).expect("reload removing the NAT VIP");
    lb.plan = dsr;
    lb
}

// ----------------------------------------------------------------- tests ---

/// DSR only -> + NAT VIP -> DSR only: NAT replies are looked for exactly
/// while a NAT VIP is configured. (The data plane starts with a NAT VIP, so
/// that its NAT tables are sized: see adding_the_first_nat_vip_needs_a_restart.)
#[test]
fn nat_on_follows_reloads() {
    if !require_root("NAT reload fixtures") {
        return;
    }
    let lb = dsr_with_nat_tables();
    let dsr = lb.plan.clone();
    // A "backend" frame to the would-be SNAT address, before any NAT VIP.
    let stray = reply_frame(SNAT, 25000);
    check_exact(&lb, "DSR only: frame to the would-be SNAT address", &stray, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    // The DSR VIP works (sanity: the program is live).
    let dsr_syn = tcp_syn(CLIENT, DSR_VIP, 40000, 80);
    let r = run(&lb, "DSR SYN", &dsr_syn);
    assert_eq!(action_name(r.action), "XDP_TX", "DSR VIP forwards ({})", rose(&r));

    // + NAT VIP.
    let nat = plan_after(&with_nat(SNAT, ""), &dsr);
    let said = reload(&lb, &dsr, &nat).expect("reload adding a NAT VIP");
    assert!(said.contains("2 VIPs (+1 -0)"), "{said}");
    let port = nat_new_flow(&lb, "after adding the NAT VIP: client SYN", 40001, SNAT);
    let reply = reply_frame(SNAT, port);
    nat_reply(&lb, "after adding the NAT VIP: backend's reply", SNAT, port, 40001);
    // The client's ACK on the tracked flow: same port, flow_hit.
    check_exact(
        &lb,
        "after adding the NAT VIP: client ACK on the tracked flow",
        &client_frame(40001, ack, b"GET / HTTP/1.1\r\n\r\n"),
        XDP_TX,
        Some(&forwarded(40001, ack, b"GET / HTTP/1.1\r\n\r\n", SNAT, port)),
        &["xdp_tx", "flow_hit"],
    );
    // The stray frame still passes (no flow on that port).
    if port != 25000 {
        check_exact(&lb, "NAT on: frame to an unused SNAT port", &stray, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    }

    // Back to DSR only: the same reply, with its flow still in the table,
    // is the kernel's again (nat_on off).
    let back = plan_after(DSR_ONLY, &nat);
    let said = reload(&lb, &nat, &back).expect("reload removing the NAT VIP");
    assert!(said.contains("1 VIPs (+0 -1)"), "{said}");
    check_exact(&lb, "back to DSR only: the reply of a live NAT flow", &reply, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    // The client's packets to the removed VIP are not translated either.
    check_exact(
        &lb,
        "back to DSR only: client to the removed NAT VIP",
        &client_frame(40001, ack, b"late"),
        XDP_PASS,
        None,
        &["xdp_pass", "pass_not_vip"],
    );
    let r = run(&lb, "DSR SYN after the reloads", &dsr_syn);
    assert_eq!(action_name(r.action), "XDP_TX", "the DSR VIP still forwards ({})", rose(&r));
}

/// A data plane started without a NAT VIP has NAT tables of one entry: a
/// reload adding a NAT VIP is refused with the reason (a restart), nothing
/// is written, and the running config serves on.
#[test]
fn adding_the_first_nat_vip_needs_a_restart() {
    if !require_root("NAT reload fixtures") {
        return;
    }
    let lb = load(DSR_ONLY);
    let dsr = lb.plan.clone();
    for m in [&lb.dp.skel.maps.nat_fwd, &lb.dp.skel.maps.nat_rev] {
        let info = weir::mapio::map_info(&m.as_fd()).expect("fdinfo");
        assert_eq!(info.max_entries, 1, "no VIP uses NAT: the NAT tables hold nothing");
    }
    let nat = plan_after(&with_nat(SNAT, ""), &dsr);
    let e = reload(&lb, &dsr, &nat).expect_err("a reload adding the first NAT VIP is refused");
    let text = format!("{e:#}");
    assert!(text.contains("needs a restart"), "{text}");
    assert!(text.contains("NAT tables were sized to nothing because no VIP used NAT at start"), "{text}");
    assert!(text.contains("nat-web") || text.contains(&nat.vips[1].name), "the refusal names the VIP: {text}");
    // Nothing written: the NAT VIP is not served, its source not answered.
    check_exact(&lb, "refused NAT VIP: client SYN", &client_frame(43001, syn, b""), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    check_exact(
        &lb,
        "refused NAT VIP: ARP for its source",
        &arp_request([198, 18, 0, 1], v4(SNAT)),
        XDP_PASS,
        None,
        &["xdp_pass", "pass_arp_other"],
    );
    let r = run(&lb, "DSR SYN after the refusal", &tcp_syn(CLIENT, DSR_VIP, 43002, 80));
    assert_eq!(action_name(r.action), "XDP_TX", "the DSR VIP forwards on ({})", rose(&r));
}

/// A conntrack-timeout change is a restart: refused with the reason,
/// nothing written, the running NAT VIP keeps translating.
#[test]
fn a_conntrack_timeout_change_is_refused_and_nat_keeps_working() {
    if !require_root("NAT reload fixtures") {
        return;
    }
    let lb = dsr_with_nat_tables();
    let dsr = lb.plan.clone();
    let nat = plan_after(&with_nat(SNAT, ""), &dsr);
    reload(&lb, &dsr, &nat).expect("reload adding a NAT VIP");
    let port = nat_new_flow(&lb, "before the refused reload", 41001, SNAT);

    for extra in ["tcp_timeout = 300\n", "tcp_syn_timeout = 5\n", "tcp_fin_timeout = 61\n", "udp_timeout = 30\n"] {
        // The new config also moves the source address: were anything
        // written before the refusal, the next new flow would show it.
        let bad = plan_after(&with_nat(SNAT2, extra), &nat);
        let e = reload(&lb, &nat, &bad).expect_err(&format!("a reload changing {} is refused", extra.trim()));
        let text = format!("{e:#}");
        assert!(text.contains("restart weir"), "{}: the refusal says to restart weir: {text}", extra.trim());
        assert!(text.contains("timeout"), "{}: the refusal names the timeout: {text}", extra.trim());
    }

    // The running config translates on: the old flow both ways, and a new one
    // still from the old source address.
    check_exact(
        &lb,
        "after the refusals: tracked flow, client side",
        &client_frame(41001, ack, b"x"),
        XDP_TX,
        Some(&forwarded(41001, ack, b"x", SNAT, port)),
        &["xdp_tx", "flow_hit"],
    );
    nat_reply(&lb, "after the refusals: tracked flow, reply", SNAT, port, 41001);
    let port2 = nat_new_flow(&lb, "after the refusals: a new flow", 41002, SNAT);
    nat_reply(&lb, "after the refusals: the new flow's reply", SNAT, port2, 41002);
    // Nothing to the would-be new address is translated.
    check_exact(&lb, "after the refusals: reply to the refused source", &reply_frame(SNAT2, port2), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
}

/// A new source_address: new flows leave from it; a flow tracked before
/// keeps the address its backend knows.
#[test]
fn a_new_source_address_applies_to_new_flows() {
    if !require_root("NAT reload fixtures") {
        return;
    }
    let lb = dsr_with_nat_tables();
    let dsr = lb.plan.clone();
    let nat = plan_after(&with_nat(SNAT, ""), &dsr);
    reload(&lb, &dsr, &nat).expect("reload adding a NAT VIP");
    let old_port = nat_new_flow(&lb, "old source: new flow", 42001, SNAT);

    let moved = plan_after(&with_nat(SNAT2, ""), &nat);
    assert_eq!(moved.vips[1].id, nat.vips[1].id, "the NAT VIP keeps its id across the reload");
    let said = reload(&lb, &nat, &moved).expect("reload changing source_address");
    assert!(said.contains("2 VIPs (+0 -0)"), "{said}");

    for (i, cport) in [42002u16, 42003, 42004].into_iter().enumerate() {
        let name = format!("new source: new flow {i}");
        let port = nat_new_flow(&lb, &name, cport, SNAT2);
        nat_reply(&lb, &format!("{name}: reply to the new source"), SNAT2, port, cport);
        // Its reply to the old address is no flow of ours.
        check_exact(&lb, &format!("{name}: reply to the old source"), &reply_frame(SNAT, port), XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
    }

    // The flow tracked before the change keeps its address both ways.
    check_exact(
        &lb,
        "old flow after the change: client side",
        &client_frame(42001, ack, b"y"),
        XDP_TX,
        Some(&forwarded(42001, ack, b"y", SNAT, old_port)),
        &["xdp_tx", "flow_hit"],
    );
    nat_reply(&lb, "old flow after the change: reply", SNAT, old_port, 42001);
}

/// A NAT source address that is not the interface's own is answered for
/// (backends must find its MAC to reply), and only while configured:
/// the responder's address set follows reloads.
#[test]
fn the_arp_responder_follows_nat_source_addresses() {
    if !require_root("NAT reload fixtures") {
        return;
    }
    let ask = |t: &str| arp_request([198, 18, 0, 1], v4(t));
    let answered = |lb: &Lb, what: &str, t: &str| {
        check_exact(lb, what, &ask(t), XDP_TX, Some(&arp_reply([198, 18, 0, 1], v4(t))), &["xdp_tx", "arp_reply"]);
    };
    let ignored = |lb: &Lb, what: &str, t: &str| {
        check_exact(lb, what, &ask(t), XDP_PASS, None, &["xdp_pass", "pass_arp_other"]);
    };
    // The test interface has no addresses: every source_address is "not its own".
    let lb = dsr_with_nat_tables();
    let dsr = lb.plan.clone();
    ignored(&lb, "DSR only: no source address yet", SNAT);
    answered(&lb, "DSR only: the VIP", DSR_VIP);

    let nat = plan_after(&with_nat(SNAT, ""), &dsr);
    reload(&lb, &dsr, &nat).expect("reload adding a NAT VIP");
    answered(&lb, "NAT VIP added: its source address", SNAT);
    answered(&lb, "NAT VIP added: its VIP", NAT_VIP);

    let moved = plan_after(&with_nat(SNAT2, ""), &nat);
    reload(&lb, &nat, &moved).expect("reload changing source_address");
    answered(&lb, "source moved: the new address", SNAT2);
    ignored(&lb, "source moved: the old address is no longer answered", SNAT);

    let back = plan_after(DSR_ONLY, &moved);
    reload(&lb, &moved, &back).expect("reload removing the NAT VIP");
    ignored(&lb, "NAT VIP removed: its source", SNAT2);
    ignored(&lb, "NAT VIP removed: its VIP", NAT_VIP);
    answered(&lb, "NAT VIP removed: the DSR VIP stays", DSR_VIP);
}
