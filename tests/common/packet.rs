//! Frames for fixtures, built field by field with etherparse (every length
//! and checksum computed there, never by the code under test).

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Dscp,
    Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, TcpOptionElement, UdpHeader,
};

use super::{CLIENT_MAC, LB_MAC};

#[derive(Clone, Debug)]
pub enum L4 {
    /// Checksum computed at build time.
    Tcp(TcpHeader),
    /// `csum: false`: checksum field 0 (IPv4 only).
    Udp { sport: u16, dport: u16, csum: bool },
    /// ICMP header (checksum over it and the payload, the quote).
    Icmp4(Icmpv4Type),
    /// ICMPv6 header (checksum with the pseudo-header).
    Icmp6(Icmpv6Type),
    /// The payload is the whole L4 (an inner IP packet): protocol number.
    Raw(u8),
}

/// One IP packet in an Ethernet frame, described by its fields; `frame()`
/// serializes it with every length and checksum computed by etherparse.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TOS byte / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 only.
    pub id: u16,
    pub df: bool,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv6 flow label.
    pub flow: u32,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// An 802.1Q tag's TCI (priority, DEI, VLAN id) after the MACs; None:
    /// untagged.
    pub tci: Option<u16>,
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl Pkt {
    pub fn new(src: &str, dst: &str, l4: L4, payload: &[u8]) -> Pkt {
        Pkt {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            src: ip(src),
            dst: ip(dst),
            tos: 0,
            id: 0,
            df: true,
            ttl: 64,
            flow: 0,
            l4,
            payload: payload.to_vec(),
            tci: None,
        }
    }
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Pkt {
        self.eth_dst = dst;
        self.eth_src = src;
        self
    }
    pub fn addrs(mut self, src: &str, dst: &str) -> Pkt {
        self.src = ip(src);
        self.dst = ip(dst);
        self
    }
    pub fn ports(mut self, sport: u16, dport: u16) -> Pkt {
        match &mut self.l4 {
            L4::Tcp(h) => {
                h.source_port = sport;
                h.destination_port = dport;
            }
            L4::Udp { sport: s, dport: d, .. } => {
                *s = sport;
                *d = dport;
            }
            _ => panic!("ports() on a packet without ports"),
        }
        self
    }
    pub fn ip_fields(mut self, tos: u8, id: u16, df: bool, ttl: u8) -> Pkt {
        self.tos = tos;
        self.id = id;
        self.df = df;
        self.ttl = ttl;
        self
    }
    /// The TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Pkt {
        match &mut self.l4 {
            L4::Tcp(h) => h.sequence_number = seq,
            _ => panic!("seq() on a packet without TCP"),
        }
        self
    }
    /// Tagged 802.1Q with this TCI (`tci(pcp, dei, vid)`).
    pub fn tag(mut self, tci: u16) -> Pkt {
        self.tci = Some(tci);
        self
    }
    pub fn untagged(mut self) -> Pkt {
        self.tci = None;
        self
    }
    pub fn with_payload(mut self, payload: &[u8]) -> Pkt {
        self.payload = payload.to_vec();
        self
    }

    pub fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        let proto = match &self.l4 {
            L4::Tcp(h) => {
                let mut h = h.clone();
                h.checksum = match (self.src, self.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &self.payload),
                    (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &self.payload),
                    _ => panic!("mixed families"),
                }
                .unwrap();
                out.extend_from_slice(&h.to_bytes());
                6
            }
            L4::Udp { sport, dport, csum } => {
                let mut u = UdpHeader {
                    source_port: *sport,
                    destination_port: *dport,
                    length: (UdpHeader::LEN + self.payload.len()) as u16,
                    checksum: 0,
                };
                if *csum {
                    u.checksum = match (self.src, self.dst) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => {
                            u.calc_checksum_ipv4_raw(s.octets(), d.octets(), &self.payload)
                        }
                        (IpAddr::V6(s), IpAddr::V6(d)) => {
                            u.calc_checksum_ipv6_raw(s.octets(), d.octets(), &self.payload)
                        }
                        _ => panic!("mixed families"),
                    }
                    .unwrap();
                } else {
                    assert!(self.src.is_ipv4(), "UDP without checksum is IPv4 only");
                }
                out.extend_from_slice(&u.to_bytes());
                17
            }
            L4::Icmp4(t) => {
                out.extend_from_slice(&Icmpv4Header::with_checksum(t.clone(), &self.payload).to_bytes());
                1
            }
            L4::Icmp6(t) => {
                let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src, self.dst) else { panic!("ICMPv6 over IPv4") };
                let h = Icmpv6Header::with_checksum(t.clone(), s.octets(), d.octets(), &self.payload).unwrap();
                out.extend_from_slice(&h.to_bytes());
                58
            }
            L4::Raw(p) => *p,
        };
        out.extend_from_slice(&self.payload);
        (proto, out)
    }

    pub fn ip_bytes(&self) -> Vec<u8> {
        let (proto, l4) = self.l4_bytes();
        let mut out = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header {
                    dscp: Ipv4Dscp::try_new(self.tos >> 2).unwrap(),
                    ecn: Ipv4Ecn::try_new(self.tos & 3).unwrap(),
                    total_len: (Ipv4Header::MIN_LEN + l4.len()) as u16,
                    identification: self.id,
                    dont_fragment: self.df,
                    more_fragments: false,
                    fragment_offset: Default::default(),
                    time_to_live: self.ttl,
                    protocol: IpNumber(proto),
                    header_checksum: 0,
                    source: s.octets(),
                    destination: d.octets(),
                    options: Default::default(),
                };
                h.header_checksum = h.calc_header_checksum();
                out.extend_from_slice(&h.to_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header {
                    traffic_class: self.tos,
                    flow_label: Ipv6FlowLabel::try_new(self.flow).unwrap(),
                    payload_length: l4.len() as u16,
                    next_header: IpNumber(proto),
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                };
                out.extend_from_slice(&h.to_bytes());
            }
            _ => panic!("mixed families"),
        }
        out.extend_from_slice(&l4);
        out
    }

    pub fn frame(&self) -> Vec<u8> {
        let ether_type = if self.src.is_ipv4() { EtherType::IPV4 } else { EtherType::IPV6 };
        let mut f = Ethernet2Header { source: self.eth_src, destination: self.eth_dst, ether_type }.to_bytes().to_vec();
        if let Some(tci) = self.tci {
            f.splice(12..12, [0x81, 0x00, (tci >> 8) as u8, tci as u8]);
        }
        f.extend_from_slice(&self.ip_bytes());
        f
    }
}

/// An 802.1Q TCI: priority (PCP, 0-7), drop eligible (DEI), VLAN id.
pub fn tci(pcp: u16, dei: bool, vid: u16) -> u16 {
    assert!(pcp < 8 && vid < 4096);
    (pcp << 13) | (u16::from(dei) << 12) | vid
}

pub fn tcp_hdr(sport: u16, dport: u16, seq: u32, ack: Option<u32>, window: u16) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, seq, window);
    if let Some(a) = ack {
        h.ack = true;
        h.acknowledgment_number = a;
    }
    h
}

/// A client SYN as Linux sends it: MSS, SACK-permitted, timestamps, NOP,
/// window scale (20 bytes of options).
pub fn syn_opts(sport: u16, dport: u16) -> L4 {
    let mut h = tcp_hdr(sport, dport, 0x1000_0000, None, 64240);
    h.syn = true;
    h.set_options(&[
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x0102_0304, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ])
    .unwrap();
    assert_eq!(h.header_len(), 40);
    L4::Tcp(h)
}

/// The backend's SYN-ACK, with options.
pub fn synack_opts(sport: u16, dport: u16) -> L4 {
    let mut h = tcp_hdr(sport, dport, 0x2000_0000, Some(0x1000_0001), 65160);
    h.syn = true;
    h.set_options(&[
        TcpOptionElement::MaximumSegmentSize(1400),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0xaabb_ccdd, 0x0102_0304),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(9),
    ])
    .unwrap();
    L4::Tcp(h)
}

/// A client RST with sequence number `seq` (window 0).
pub fn rst(sport: u16, dport: u16, seq: u32) -> L4 {
    let mut h = tcp_hdr(sport, dport, seq, None, 0);
    h.rst = true;
    L4::Tcp(h)
}

pub fn syn(sport: u16, dport: u16) -> L4 {
    let mut h = tcp_hdr(sport, dport, 0x3000_0000, None, 64240);
    h.syn = true;
    L4::Tcp(h)
}

pub fn ack(sport: u16, dport: u16) -> L4 {
    let mut h = tcp_hdr(sport, dport, 0x3000_0001, Some(0x4000_0001), 502);
    h.psh = true;
    L4::Tcp(h)
}

pub fn fin(sport: u16, dport: u16) -> L4 {
    let mut h = tcp_hdr(sport, dport, 0x3000_0001, Some(0x4000_0001), 502);
    h.fin = true;
    L4::Tcp(h)
}

pub fn udp_l4(sport: u16, dport: u16, csum: bool) -> L4 {
    L4::Udp { sport, dport, csum }
}

/// The outer packet a tunnel VIP puts around `inner` (docs/nat-tunnel.md).
pub fn ipip(inner: &Pkt, s: &str, b: &str, bmac: [u8; 6]) -> Pkt {
    let proto = if inner.src.is_ipv4() { 4 } else { 41 };
    let mut o = Pkt::new(s, b, L4::Raw(proto), &inner.ip_bytes()).macs(bmac, LB_MAC);
    o.tos = inner.tos;
    o.id = 0;
    o.df = inner.df;
    o.ttl = 64;
    o.flow = 0;
    o
}

