//! Shared by the root-only integration tests: the no-skip-in-CI guard, frame
//! builders (etherparse, independent of the code under test), and an
//! independent copy of the data plane's flow hash to predict backends.
#![allow(dead_code)]

pub mod fixture;
pub mod lab;
pub mod packet;

#[allow(unused_imports)]
pub use fixture::*;
#[allow(unused_imports)]
pub use packet::*;

use std::collections::BTreeMap;
use std::net::IpAddr;

use etherparse::{IpHeaders, Ipv4Header, PacketBuilder};
use weir::config::Config;
use weir::dataplane::{configured_hops, load_configured, Dataplane, NextHop};
use weir::net::Iface;
use weir::plan::Plan;
use weir::skel::{stat_name, STAT_COUNT};

/// True when the test may run. Without root it skips, unless CI is set: then
/// a skip would hide an untested data plane, so it fails.
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("{what} needs root (BPF / network namespaces) and CI is set: refusing to skip");
    }
    eprintln!("SKIPPED {what}: needs root (run `make test`, which uses sudo)");
    false
}

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

// XDP actions (linux/bpf.h, enum xdp_action).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// An XDP action by name, for assertion messages.
pub fn action_name(a: u32) -> String {
    match a {
        0 => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        n => format!("action {n}"),
    }
}

/// The index of a global counter by name (as `weir::skel::stat_name` names it).
pub fn stat(name: &str) -> usize {
    (0..STAT_COUNT)
        .find(|i| stat_name(*i) == name)
        .unwrap_or_else(|| panic!("no counter named {name} in skel::stat_name"))
}

/// A `[shield]` section with `shield` in it, over a TCP VIP on
/// 198.18.0.100:80 (backend MAC 02:00:00:00:00:0b) and its IPv6 twin
/// 2001:2::100:80: the shield tests' data plane.
pub fn shield_config(shield: &str) -> String {
    format!(
        r#"
[shield]
{shield}

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
"#
    )
}

/// Pin the calling thread to one CPU: BPF_PROG_TEST_RUN runs the program
/// there, so per-CPU maps and budgets are one CPU's.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity");
    }
}

/// Bytes as space-separated hex ("0a 1b ...").
pub fn hex_row(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

pub struct Lb {
    pub dp: Dataplane,
    pub plan: Plan,
    pub hops: BTreeMap<u32, NextHop>,
}

/// Load the data plane and configure it exactly as `weir run` does.
pub fn load(config: &str) -> Lb {
    let cfg = Config::from_toml(config).expect("test config is valid");
    let plan = Plan::build(&cfg).expect("plan");
    let iface = Iface::unattached("test0", LB_MAC);
    let (hops, _) = configured_hops(&plan, &iface).expect("test backends carry MACs");
    let dp = load_configured(&plan, &iface).expect("load BPF (root) and apply the plan");
    Lb { dp, plan, hops }
}

// ---- lookup3 (Bob Jenkins), written from the reference, not from bpf/ ----
fn rot(x: u32, k: u32) -> u32 {
    x.rotate_left(k)
}
fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(rot(b, 14));
    a ^= c;
    a = a.wrapping_sub(rot(c, 11));
    b ^= a;
    b = b.wrapping_sub(rot(a, 25));
    c ^= b;
    c = c.wrapping_sub(rot(b, 16));
    a ^= c;
    a = a.wrapping_sub(rot(c, 4));
    b ^= a;
    b = b.wrapping_sub(rot(a, 14));
    c ^= b;
    c.wrapping_sub(rot(b, 24))
}
fn jhash3(a: u32, b: u32, c: u32, init: u32) -> u32 {
    let iv = init.wrapping_add(0xdeadbeef).wrapping_add(12);
    final_mix(a.wrapping_add(iv), b.wrapping_add(iv), c.wrapping_add(iv))
}
fn jhash1(a: u32, init: u32) -> u32 {
    let iv = init.wrapping_add(0xdeadbeef).wrapping_add(4);
    final_mix(a.wrapping_add(iv), iv, iv)
}

/// An address as the data plane loads it: network-order bytes read as
/// native-endian words.
fn words(a: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match a {
        IpAddr::V4(v) => w[0] = u32::from_ne_bytes(v.octets()),
        IpAddr::V6(v) => {
            let o = v.octets();
            for i in 0..4 {
                w[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
        }
    }
    w
}

const SEED: u32 = 0x5745;

pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    let s = words(src);
    let d = words(dst);
    let sp = u16::from_ne_bytes(sport.to_be_bytes()) as u32;
    let dp = u16::from_ne_bytes(dport.to_be_bytes()) as u32;
    let ports = (sp << 16) | dp;
    if src.is_ipv4() {
        return jhash3(s[0], d[0], ports, SEED ^ u32::from(proto));
    }
    let h = jhash3(s[0], s[1], s[2], SEED ^ u32::from(proto));
    jhash3(s[3], d[0] ^ d[1] ^ d[2] ^ d[3], ports, h)
}

/// Recompute the IPv4 header checksum of an untagged frame (after a test
/// changed a header field), with the RFC 1071 sum of the fixture runner.
pub fn refresh_ipv4_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let s = fixture::ones_sum(&[&f[14..14 + ihl]]);
    f[24..26].copy_from_slice(&(!s).to_be_bytes());
}

/// A datagram's hash without ports (bpf/frag.h frag_hash): `id` as the
/// header carries it (IPv4: the 16-bit identification, read into the low
/// half of a native word; IPv6: the 32-bit one).
pub fn frag_hash(src: IpAddr, dst: IpAddr, id_be: &[u8], proto: u8) -> u32 {
    let s = words(src);
    let d = words(dst);
    let mut b = [0u8; 4];
    b[..id_be.len()].copy_from_slice(id_be);
    let id = u32::from_ne_bytes(b);
    if src.is_ipv4() {
        return jhash3(s[0], d[0], id, SEED ^ u32::from(proto));
    }
    let h = jhash3(s[0], s[1], s[2], SEED ^ u32::from(proto));
    jhash3(s[3], d[0] ^ d[1] ^ d[2] ^ d[3], id, h)
}

pub fn source_hash(src: IpAddr) -> u32 {
    let s = words(src);
    if src.is_ipv4() {
        return jhash1(s[0], SEED);
    }
    jhash1(s[3], jhash3(s[0], s[1], s[2], SEED))
}

impl Lb {
    /// The backend MAC Maglev must pick for this hash on VIP `vip`.
    pub fn ring_mac(&self, vip: usize, hash: u32) -> [u8; 6] {
        let v = &self.plan.vips[vip];
        let bid = v.ring[(hash % self.plan.table_size) as usize];
        self.hops[&bid].mac
    }
    pub fn backend_mac(&self, vip: usize, idx: usize) -> [u8; 6] {
        self.hops[&self.plan.vips[vip].backends[idx].id].mac
    }
    pub fn counters(&self) -> Vec<u64> {
        self.dp.global_counters().expect("counters")
    }
}

// ---------------------------------------------------------------- frames ---
// Shorthands over `packet::Pkt` (the one frame builder).

/// A bare SYN (ISN 0x1000_0000, window 64240, no options).
pub fn tcp_syn(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    tcp_payload(src, dst, sport, dport, &[])
}

pub fn tcp_payload(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    Pkt::new(src, dst, syn(sport, dport), payload).seq(0x1000_0000).frame()
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    Pkt::new(src, dst, udp_l4(sport, dport, true), payload).frame()
}

pub fn tcp_syn_vlan(src: &str, dst: &str, sport: u16, dport: u16, vid: u16) -> Vec<u8> {
    with_vlan_tag(&Pkt::new(src, dst, syn(sport, dport), b"").seq(7).frame(), 0x8100, vid)
}

/// IPv4 (IHL 6: one NOP-padded option word) + TCP SYN.
pub fn tcp_syn_ip_options(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let s: std::net::Ipv4Addr = src.parse().unwrap();
    let d: std::net::Ipv4Addr = dst.parse().unwrap();
    let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, s.octets(), d.octets()).unwrap();
    ip.options = [1u8, 1, 1, 0][..].try_into().unwrap(); // NOP NOP NOP EOL
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 7, 64240)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// What DSR must make of `frame`: the same bytes with new MACs.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// An ARP request (who-has `target` tell `sender`).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// The balancer's ARP reply to `arp_request(sender, target)`: `target` is
/// at LB_MAC.
pub fn arp_reply(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = CLIENT_MAC.to_vec();
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&target);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender);
    f
}

/// A NAT VIP (198.18.0.103:80 -> 198.18.0.41:80) with a single SNAT port
/// (41000 from 198.18.0.40); `ct_extra` goes in [conntrack], `more` after.
pub fn one_port_nat(ct_extra: &str, more: &str) -> String {
    format!(
        r#"
[conntrack]
{ct_extra}
[maglev]
table_size = 65537

[[vip]]
name = "nat-one-port"
address = "198.18.0.103"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.0.40"
source_ports = [41000, 41000]
[[vip.backend]]
address = "198.18.0.41"
port = 80
mac = "02:00:00:00:00:29"
{more}
"#
    )
}

/// A neighbour solicitation (RFC 4861) from `src` (MAC `src_mac`) for
/// `target`, to its solicited-node group, with a source link-layer address
/// option; ICMPv6 checksum computed by etherparse.
pub fn neighbour_solicitation(src_mac: [u8; 6], src: std::net::Ipv6Addr, target: std::net::Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group: std::net::Ipv6Addr = [0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(t[13]), u16::from_be_bytes([t[14], t[15]])].into();
    let mut body = t.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src_mac);
    let b = PacketBuilder::ethernet2(src_mac, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(src.octets(), group.octets(), 255)
        .icmpv6_raw(135, 0, [0; 4]);
    let mut out = Vec::new();
    b.write(&mut out, &body).unwrap();
    out
}

/// `frame` with an 802.1Q (0x8100) or 802.1ad (0x88a8) tag inserted after
/// its MACs, outside any tag it already has.
pub fn with_vlan_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}
