//! Valid frames of every kind the data plane meets, built with etherparse
//! (every length and checksum right): the starting points of mutation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    TcpHeader,
};
use weir::config::Mode;

use crate::common::{arp_request, neighbour_solicitation, with_vlan_tag, CLIENT_MAC, LB_MAC};
use crate::model::{Model, NatFlow, Vip};
use crate::rng::Rng;
use crate::wire::{self, P_TCP, P_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seed {
    /// TCP (SYN, SYN with options, ACK, data, FIN, RST, ...) to a TCP VIP.
    TcpToVip,
    /// UDP, with or without checksum, to a UDP VIP.
    UdpToVip,
    /// TCP near and above the MTU to a tunnel VIP, DF or not.
    TunnelBig,
    /// A backend's packet to the SNAT address of a flow seen created.
    NatReply,
    /// An ICMP error to the SNAT address quoting a forwarded packet.
    NatIcmp,
    /// ARP request for a VIP / SNAT address, or another address.
    Arp,
    /// Neighbour solicitation for an IPv6 VIP / SNAT address, or another.
    Ndp,
    /// Any of the above behind one 802.1Q / 802.1ad tag.
    Vlan,
    /// ... behind two tags.
    QinQ,
    /// An IPv4 fragment (first or later) to a VIP.
    Fragment,
    /// IPv6 to a VIP through a hop-by-hop / destination / fragment header.
    Ipv6Ext,
    /// ICMP echo to a VIP.
    IcmpToVip,
    /// An ICMP error to a VIP quoting a backend's reply (VIP -> client).
    IcmpErrorToVip,
    /// TCP / UDP to an address or port that is no VIP.
    NotVip,
    /// An Ethernet type that is neither IP nor ARP.
    NonIp,
}

const WEIGHTS: [(Seed, usize); 15] = [
    (Seed::TcpToVip, 20),
    (Seed::UdpToVip, 10),
    (Seed::TunnelBig, 6),
    (Seed::NatReply, 12),
    (Seed::NatIcmp, 8),
    (Seed::Arp, 4),
    (Seed::Ndp, 5),
    (Seed::Vlan, 6),
    (Seed::QinQ, 2),
    (Seed::Fragment, 3),
    (Seed::Ipv6Ext, 3),
    (Seed::IcmpToVip, 2),
    (Seed::IcmpErrorToVip, 4),
    (Seed::NotVip, 4),
    (Seed::NonIp, 2),
];

impl Seed {
    fn pick(rng: &mut Rng) -> Seed {
        let total: usize = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut n = rng.below(total);
        for (s, w) in WEIGHTS {
            if n < w {
                return s;
            }
            n -= w;
        }
        unreachable!()
    }
}

// ------------------------------------------------------------- datagrams ---

enum L4 {
    Tcp(TcpHeader),
    Udp { sport: u16, dport: u16, csum: bool },
    Icmp4(Icmpv4Type),
    Icmp6(Icmpv6Type),
}

struct Dgram {
    smac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    df: bool,
    l4: L4,
    payload: Vec<u8>,
}

impl Dgram {
    fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Dgram {
        Dgram { smac: CLIENT_MAC, src, dst, df: true, l4, payload: Vec::new() }
    }

    fn frame(&self) -> Vec<u8> {
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
                h.dont_fragment = self.df;
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: 0,
                    next_header: IpNumber::TCP,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                },
                Default::default(),
            ),
            _ => panic!("mixed families"),
        };
        let b = PacketBuilder::ethernet2(self.smac, LB_MAC).ip(ip);
        let mut out = Vec::new();
        match &self.l4 {
            L4::Tcp(h) => b.tcp_header(h.clone()).write(&mut out, &self.payload),
            L4::Udp { sport, dport, .. } => b.udp(*sport, *dport).write(&mut out, &self.payload),
            L4::Icmp4(t) => b.icmpv4(t.clone()).write(&mut out, &self.payload),
            L4::Icmp6(t) => b.icmpv6(*t).write(&mut out, &self.payload),
        }
        .unwrap();
        if let L4::Udp { csum: false, .. } = self.l4 {
            if self.src.is_ipv4() {
                let udp = 14 + 20;
                out[udp + 6] = 0;
                out[udp + 7] = 0;
            }
        }
        out
    }
}

// ------------------------------------------------------------- addresses ---

/// Clients come from a small pool so that flows repeat (flow hits, NAT
/// state changes) as well as start.
fn client(rng: &mut Rng, v4: bool) -> IpAddr {
    let i = rng.below(256) as u8;
    if v4 {
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, i))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, u16::from(i) + 1))
    }
}

fn client_port(rng: &mut Rng) -> u16 {
    40000 + rng.below(64) as u16
}

fn client_mac(rng: &mut Rng) -> [u8; 6] {
    if rng.one_in(2) {
        CLIENT_MAC
    } else {
        [0x02, 0, 0, 0x0c, rng.byte(), rng.byte()]
    }
}

fn random_addr(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.byte()))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, rng.u16()))
    }
}

fn vip_port(rng: &mut Rng, v: &Vip) -> u16 {
    if v.port != 0 {
        v.port
    } else {
        let any = rng.u16();
        *rng.pick(&[22, 80, 443, 8080, 1, 65535, any])
    }
}

// -------------------------------------------------------------- payloads ---

fn payload(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0..=3 => Vec::new(),
        4..=6 => rng.bytes_in(1, 64),
        _ => rng.bytes_in(65, 1400),
    }
}

/// A Linux-like SYN's options: MSS, SACK permitted, timestamps, window scale.
const SYN_OPTIONS: [u8; 20] = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];

fn tcp(rng: &mut Rng, sport: u16, dport: u16) -> (TcpHeader, Vec<u8>) {
    let mut h = TcpHeader::new(sport, dport, rng.next_u64() as u32, 64240);
    let mut data = Vec::new();
    match rng.below(9) {
        0 => h.syn = true,
        1 => {
            h.syn = true;
            h.set_options_raw(&SYN_OPTIONS).unwrap();
        }
        2 => h.ack = true,
        3 | 4 => {
            h.ack = true;
            h.psh = true;
            data = payload(rng);
        }
        5 => {
            h.fin = true;
            h.ack = true;
        }
        6 => h.rst = true,
        7 => {
            h.syn = true;
            h.ack = true;
        }
        _ => {
            let f = rng.byte();
            (h.fin, h.syn, h.rst, h.psh, h.ack, h.urg) =
                (f & 1 != 0, f & 2 != 0, f & 4 != 0, f & 8 != 0, f & 16 != 0, f & 32 != 0);
            if rng.one_in(2) {
                h.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]).unwrap();
            }
            data = payload(rng);
        }
    }
    if h.ack {
        h.acknowledgment_number = rng.next_u64() as u32;
    }
    (h, data)
}

// ------------------------------------------------------------------ seeds ---

fn vips_where(m: &Model, f: impl Fn(&Vip) -> bool) -> Vec<&Vip> {
    m.vips.iter().filter(|v| f(v)).collect()
}

fn to_vip(rng: &mut Rng, v: &Vip) -> Dgram {
    let src = client(rng, v.addr.is_ipv4());
    let (sport, dport) = (client_port(rng), vip_port(rng, v));
    let mut d = if v.proto == P_TCP {
        let (h, data) = tcp(rng, sport, dport);
        let mut d = Dgram::new(src, v.addr, L4::Tcp(h));
        d.payload = data;
        d
    } else {
        let csum = !v.addr.is_ipv4() || !rng.one_in(3);
        let mut d = Dgram::new(src, v.addr, L4::Udp { sport, dport, csum });
        d.payload = rng.bytes_of(&[0, 1, 12, 100, 512, 1200]);
        d
    };
    d.smac = client_mac(rng);
    d.df = !rng.one_in(4);
    d
}

fn tcp_to_vip(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let vips = vips_where(m, |v| v.proto == P_TCP);
    let v = *rng.pick(&vips);
    to_vip(rng, v).frame()
}

fn udp_to_vip(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let vips = vips_where(m, |v| v.proto == P_UDP);
    let v = *rng.pick(&vips);
    to_vip(rng, v).frame()
}

/// IP packets from 40 bytes under to 40 over what fits the MTU once wrapped.
fn tunnel_big(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let vips = vips_where(m, |v| v.mode == Mode::Tunnel);
    let v = rng.pick(&vips);
    let mut d = to_vip(rng, v);
    let outer = if v.addr.is_ipv4() { 20 } else { 40 };
    let headers = if v.addr.is_ipv4() { 20 } else { 40 } + if v.proto == P_TCP { 20 } else { 8 };
    let ip_len = m.mtu - outer + rng.range(0, 80) - 40;
    if let L4::Tcp(h) = &mut d.l4 {
        h.set_options_raw(&[]).unwrap();
        h.syn = false;
        h.ack = true;
    }
    d.payload = rng.bytes(ip_len - headers);
    d.frame()
}

fn nat_reply(rng: &mut Rng, m: &Model) -> Option<Vec<u8>> {
    let f = rng.pick(m.flows()).clone();
    let smac = m.vips.iter().flat_map(|v| &v.backends).find(|b| b.addr == f.backend).map(|b| b.mac)?;
    let mut d = if f.proto == P_TCP {
        let (mut h, data) = tcp(rng, f.bport, f.sport);
        if rng.one_in(4) {
            (h.syn, h.ack) = (true, true);
        }
        let mut d = Dgram::new(f.backend, f.snat, L4::Tcp(h));
        d.payload = data;
        d
    } else {
        let csum = !f.snat.is_ipv4() || !rng.one_in(3);
        let mut d = Dgram::new(f.backend, f.snat, L4::Udp { sport: f.bport, dport: f.sport, csum });
        d.payload = rng.bytes_of(&[0, 1, 30, 512]);
        d
    };
    d.smac = smac;
    Some(d.frame())
}

/// An ICMP error from a router on the way to the backend, quoting (the start
/// of) a packet the forward path sent for flow `f`.
fn nat_icmp(rng: &mut Rng, m: &Model) -> Option<Vec<u8>> {
    let f: &NatFlow = rng.pick(m.flows());
    let ip_hdr = if f.snat.is_ipv4() { 20 } else { 40 };
    let l4_hdr = if f.proto == P_TCP { 20 } else { 8 };
    let n = match rng.below(3) {
        0 => ip_hdr + 8,
        1 => ip_hdr + l4_hdr,
        _ => f.sent.len(),
    }
    .min(f.sent.len());
    let quote = &f.sent[..n];
    let l4 = if f.snat.is_ipv4() {
        L4::Icmp4(match rng.below(4) {
            0 => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
            1 => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
            2 => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            }),
            _ => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        })
    } else {
        L4::Icmp6(match rng.below(3) {
            0 => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
            1 => Icmpv6Type::PacketTooBig { mtu: 1280 },
            _ => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        })
    };
    let router = random_addr(rng, f.snat.is_ipv4());
    let mut d = Dgram::new(router, f.snat, l4);
    d.smac = [0x02, 0, 0, 0, 0x0e, 0x01];
    d.payload = quote.to_vec();
    Some(d.frame())
}

fn neighbour_target(rng: &mut Rng, m: &Model, v4: bool) -> IpAddr {
    let ours = m.neighbour_addrs(v4);
    if rng.one_in(4) || ours.is_empty() {
        random_addr(rng, v4)
    } else {
        *rng.pick(&ours)
    }
}

fn arp(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let IpAddr::V4(t) = neighbour_target(rng, m, true) else { unreachable!() };
    let IpAddr::V4(s) = client(rng, true) else { unreachable!() };
    arp_request(s.octets(), t.octets())
}

fn ndp(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let IpAddr::V6(t) = neighbour_target(rng, m, false) else { unreachable!() };
    let IpAddr::V6(s) = client(rng, false) else { unreachable!() };
    neighbour_solicitation(client_mac(rng), s, t)
}

fn tagged(rng: &mut Rng, m: &Model, tags: usize) -> Vec<u8> {
    let mut f = match rng.below(5) {
        0 => tcp_to_vip(rng, m),
        1 => udp_to_vip(rng, m),
        2 => arp(rng, m),
        3 => ndp(rng, m),
        _ => nat_reply(rng, m).unwrap_or_else(|| tcp_to_vip(rng, m)),
    };
    for i in 0..tags {
        let tpid = if i + 1 == tags && rng.one_in(2) { wire::ETH_8021AD } else { wire::ETH_8021Q };
        f = with_vlan_tag(&f, tpid, rng.u16());
    }
    f
}

/// An IPv4 datagram to a VIP with MF and / or a fragment offset set.
fn fragment(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let vips = vips_where(m, |v| v.addr.is_ipv4());
    let v = *rng.pick(&vips);
    let mut f = to_vip(rng, v).frame();
    let (mf, offset) = match rng.below(3) {
        0 => (true, 0),
        1 => (true, rng.range(1, 0x1fff) as u16),
        _ => (false, rng.range(1, 0x1fff) as u16),
    };
    let v = (u16::from(mf) << 13) | offset | (wire::be16(&f, 20) & 0x4000);
    f[20..22].copy_from_slice(&v.to_be_bytes());
    wire::fix_ipv4_checksum(&mut f, 14);
    f
}

/// An IPv6 extension header between the IPv6 header and the upper layer.
fn ipv6_ext(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let vips = vips_where(m, |v| !v.addr.is_ipv4());
    let v = *rng.pick(&vips);
    let f = to_vip(rng, v).frame();
    insert_ipv6_ext(rng, &f, 14)
}

/// Insert one 8-byte extension header (hop-by-hop, destination options or
/// an atomic fragment header) after the IPv6 header at `l3`: the upper-layer
/// checksum stays valid (the pseudo-header's length is the upper layer's).
pub fn insert_ipv6_ext(rng: &mut Rng, f: &[u8], l3: usize) -> Vec<u8> {
    let next = f[l3 + 6];
    let (kind, body): (u8, [u8; 6]) = match rng.below(3) {
        0 => (0, [1, 4, 0, 0, 0, 0]),              // hop-by-hop, PadN
        1 => (60, [1, 4, 0, 0, 0, 0]),             // destination options, PadN
        _ => (44, [0, 0, 0x12, 0x34, 0x56, 0x78]), // fragment, offset 0, M = 0
    };
    let mut out = f[..l3 + 40].to_vec();
    out[l3 + 6] = kind;
    let plen = wire::be16(f, l3 + 4).wrapping_add(8);
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[next, 0]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&f[l3 + 40..]);
    out
}

fn icmp_to_vip(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let v = rng.pick(&m.vips);
    let src = client(rng, v.addr.is_ipv4());
    let mut d = if v.addr.is_ipv4() {
        Dgram::new(src, v.addr, L4::Icmp4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 7, seq: 1 })))
    } else {
        Dgram::new(src, v.addr, L4::Icmp6(Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 7, seq: 1 })))
    };
    d.payload = rng.bytes(56);
    d.frame()
}

/// A router's error about a reply a backend sent from the VIP to a client:
/// frag-needed / packet-too-big mostly, quoting the IP header and 8 bytes or
/// the whole reply.
fn icmp_error_to_vip(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let v = rng.pick(&m.vips);
    let v4 = v.addr.is_ipv4();
    let cli = client(rng, v4);
    let vport = if v.port == 0 { 1 + rng.below(65000) as u16 } else { v.port };
    let cport = client_port(rng);
    let l4 = if v.proto == P_TCP {
        L4::Tcp(tcp(rng, vport, cport).0)
    } else {
        L4::Udp { sport: vport, dport: cport, csum: true }
    };
    let mut reply = Dgram::new(v.addr, cli, l4);
    let n = rng.below(64);
    reply.payload = rng.bytes(n);
    let sent = reply.frame();
    let ip = &sent[14..];
    let n = if rng.one_in(2) { if v4 { 28 } else { 48 } } else { ip.len() };
    let l4 = if v4 {
        L4::Icmp4(if rng.one_in(4) {
            Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
        } else {
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 })
        })
    } else {
        L4::Icmp6(if rng.one_in(4) {
            Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
        } else {
            Icmpv6Type::PacketTooBig { mtu: 1280 }
        })
    };
    let mut d = Dgram::new(random_addr(rng, v4), v.addr, l4);
    d.smac = [0x02, 0, 0, 0, 0x0e, 0x02];
    d.payload = ip[..n.min(ip.len())].to_vec();
    d.frame()
}

fn not_vip(rng: &mut Rng, m: &Model) -> Vec<u8> {
    let v4 = rng.one_in(2);
    // A VIP address on a port it does not serve, a SNAT address on a port no
    // flow has, or some other address.
    let dst = match rng.below(3) {
        0 => m.vips.iter().filter(|v| v.addr.is_ipv4() == v4 && v.port != 0).map(|v| v.addr).next(),
        1 => m.vips.iter().filter_map(|v| v.source).find(|a| a.is_ipv4() == v4),
        _ => None,
    }
    .unwrap_or_else(|| random_addr(rng, v4));
    let src = client(rng, v4);
    let l4 = if rng.one_in(2) {
        let sport = client_port(rng);
        L4::Tcp(tcp(rng, sport, 7).0)
    } else {
        L4::Udp { sport: client_port(rng), dport: 9, csum: true }
    };
    Dgram::new(src, dst, l4).frame()
}

fn non_ip(rng: &mut Rng) -> Vec<u8> {
    let mut f = LB_MAC.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    let t = *rng.pick(&[0x88cc, 0x8035, 0x88e5, 0x8863, 0x0842, 0x22f0]);
    f.extend_from_slice(&u16::to_be_bytes(t));
    f.extend(rng.bytes_in(46, 200));
    f
}

/// A valid frame of a random kind; the kind actually built (NAT replies and
/// errors need a flow seen first: until then they are TCP to a VIP).
pub fn generate(rng: &mut Rng, m: &Model) -> (Seed, Vec<u8>) {
    let seed = Seed::pick(rng);
    let frame = match seed {
        Seed::TcpToVip => Some(tcp_to_vip(rng, m)),
        Seed::UdpToVip => Some(udp_to_vip(rng, m)),
        Seed::TunnelBig => Some(tunnel_big(rng, m)),
        Seed::NatReply if !m.flows().is_empty() => nat_reply(rng, m),
        Seed::NatIcmp if !m.flows().is_empty() => nat_icmp(rng, m),
        Seed::NatReply | Seed::NatIcmp => None,
        Seed::Arp => Some(arp(rng, m)),
        Seed::Ndp => Some(ndp(rng, m)),
        Seed::Vlan => Some(tagged(rng, m, 1)),
        Seed::QinQ => Some(tagged(rng, m, 2)),
        Seed::Fragment => Some(fragment(rng, m)),
        Seed::Ipv6Ext => Some(ipv6_ext(rng, m)),
        Seed::IcmpToVip => Some(icmp_to_vip(rng, m)),
        Seed::IcmpErrorToVip => Some(icmp_error_to_vip(rng, m)),
        Seed::NotVip => Some(not_vip(rng, m)),
        Seed::NonIp => Some(non_ip(rng)),
    };
    match frame {
        Some(f) => (seed, f),
        None => (Seed::TcpToVip, tcp_to_vip(rng, m)),
    }
}

/// A valid client packet to NAT VIP `v` (the fuzzer opens flows with these
/// before it starts, so replies and errors have flows to aim at).
pub fn to_nat_vip(rng: &mut Rng, v: &Vip, syn: bool) -> Vec<u8> {
    let mut d = to_vip(rng, v);
    if let L4::Tcp(h) = &mut d.l4 {
        (h.syn, h.ack, h.fin, h.rst) = (syn, !syn, false, false);
    }
    d.frame()
}
