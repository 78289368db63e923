//! The fuzzer's own reading of a frame: Ethernet and VLAN tags, the IP
//! header, whether its length field tells the truth, and RFC 1071 checksum
//! validity. Written from the RFCs, independent of bpf/ (and of etherparse,
//! so that the frames etherparse built are checked by something else).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_IP: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88a8;

pub const P_ICMP: u8 = 1;
pub const P_IPIP: u8 = 4;
pub const P_TCP: u8 = 6;
pub const P_UDP: u8 = 17;
pub const P_IPV6: u8 = 41;
pub const P_ICMPV6: u8 = 58;

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Ethernet header and up to two VLAN tags.
#[derive(Clone, Copy, Debug)]
pub struct L2 {
    pub len: usize,
    pub ethertype: u16,
}

pub fn l2(b: &[u8]) -> Option<L2> {
    let mut off = 12;
    let mut tags = 0;
    loop {
        if b.len() < off + 2 {
            return None;
        }
        let t = be16(b, off);
        if (t == ETH_8021Q || t == ETH_8021AD) && tags < 2 {
            off += 4;
            tags += 1;
            continue;
        }
        return Some(L2 { len: off + 2, ethertype: t });
    }
}

/// Whether the IP length field (IPv4 total length, IPv6 40 + payload
/// length) agrees with the bytes the frame carries after its L2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Exactly the bytes after the L2 header.
    Exact,
    /// Shorter: the rest is Ethernet padding (legitimate, e.g. a minimum
    /// size frame).
    Padded,
    /// Longer than the frame, or shorter than the headers it announces.
    Lies,
}

/// An IP header as the frame has it (no extension headers walked).
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub off: usize,
    pub v4: bool,
    pub version: u8,
    /// IPv4 IHL x 4 (may be < 20 in a mutated frame); IPv6: 40.
    pub hdr_len: usize,
    /// What the length field says the datagram is, header included.
    pub declared: usize,
    /// Bytes in the frame from the IP header on.
    pub avail: usize,
    /// IPv4 protocol / IPv6 next header.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 MF or fragment offset set.
    pub fragment: bool,
}

impl Ip {
    pub fn l4(&self) -> usize {
        self.off + self.hdr_len
    }
    /// Smallest datagram its headers announce: IP header and the L4 header.
    fn min_len(&self) -> usize {
        let l4 = match self.proto {
            P_TCP => 20,
            P_UDP | P_ICMP | P_ICMPV6 => 8,
            _ => 0,
        };
        self.hdr_len + if self.fragment { 0 } else { l4 }
    }
    pub fn length(&self) -> Length {
        if (self.v4 && self.hdr_len < 20) || self.declared > self.avail || self.declared < self.min_len() {
            Length::Lies
        } else if self.declared < self.avail {
            Length::Padded
        } else {
            Length::Exact
        }
    }
    /// The datagram's end in the frame, as its length field says (capped).
    pub fn end(&self) -> usize {
        self.off + self.declared.min(self.avail)
    }
    /// Source and destination ports when the L4 header is in the frame.
    pub fn ports(&self, b: &[u8]) -> Option<(u16, u16)> {
        let l4 = self.l4();
        (matches!(self.proto, P_TCP | P_UDP) && b.len() >= l4 + 4).then(|| (be16(b, l4), be16(b, l4 + 2)))
    }
}

/// The IP header at `off` of a frame whose L2 type is `ethertype`.
pub fn ip_at(b: &[u8], off: usize, ethertype: u16) -> Option<Ip> {
    let avail = b.len().checked_sub(off)?;
    let h = &b[off..];
    match ethertype {
        ETH_IP if avail >= 20 => {
            let frag = be16(h, 6);
            Some(Ip {
                off,
                v4: true,
                version: h[0] >> 4,
                hdr_len: usize::from(h[0] & 0x0f) * 4,
                declared: usize::from(be16(h, 2)),
                avail,
                proto: h[9],
                src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
                dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
                fragment: frag & 0x3fff != 0,
            })
        }
        ETH_IPV6 if avail >= 40 => {
            let a = |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[at..at + 16]).unwrap()));
            Some(Ip {
                off,
                v4: false,
                version: h[0] >> 4,
                hdr_len: 40,
                declared: 40 + usize::from(be16(h, 4)),
                avail,
                proto: h[6],
                src: a(8),
                dst: a(24),
                fragment: false,
            })
        }
        _ => None,
    }
}

/// The frame's L2 header and IP header, if it has one.
pub fn ip(b: &[u8]) -> Option<(L2, Ip)> {
    let l = l2(b)?;
    Some((l, ip_at(b, l.len, l.ethertype)?))
}

// --------------------------------------------------- RFC 1071 checksums ---

/// One's-complement sum of the concatenation of `parts`, folded to 16 bits
/// (not inverted). A message with a correct checksum field sums to 0xffff.
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &byte in p.iter() {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value that makes `parts` (field zeroed) verify.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

/// Is the L4 checksum of `seg` (the datagram's payload) valid, with the
/// pseudo-header of `ip`? None when the protocol has no checksum we check.
fn l4_valid(ip: &Ip, seg: &[u8]) -> Option<bool> {
    let (s, d) = match (ip.src, ip.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => unreachable!(),
    };
    let pseudo_len: Vec<u8> =
        if ip.v4 { (seg.len() as u16).to_be_bytes().to_vec() } else { (seg.len() as u32).to_be_bytes().to_vec() };
    let pseudo = |proto: u8| -> Vec<u8> {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
        if ip.v4 {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&pseudo_len);
        } else {
            p.extend_from_slice(&pseudo_len);
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        p
    };
    match ip.proto {
        P_TCP if seg.len() >= 20 => Some(ones_sum(&[&pseudo(P_TCP), seg]) == 0xffff),
        // IPv4 UDP checksum 0: the sender did not checksum. IPv6 requires one.
        P_UDP if seg.len() >= 8 && ip.v4 && be16(seg, 6) == 0 => Some(true),
        P_UDP if seg.len() >= 8 => Some(ones_sum(&[&pseudo(P_UDP), seg]) == 0xffff),
        P_ICMP if ip.v4 && seg.len() >= 8 => Some(ones_sum(&[seg]) == 0xffff),
        P_ICMPV6 if !ip.v4 && seg.len() >= 8 => Some(ones_sum(&[&pseudo(P_ICMPV6), seg]) == 0xffff),
        _ => None,
    }
}

/// Checksum validity of a datagram, over the bytes its length field says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sums {
    /// IPv4 header checksum.
    pub ip: Option<bool>,
    /// TCP / UDP / ICMP / ICMPv6.
    pub l4: Option<bool>,
    /// The IPv4 header quoted by an ICMP error, when wholly inside.
    pub quoted_ip: Option<bool>,
}

/// Checksums of `ip` in frame `b`; all None when the length field lies.
pub fn sums(b: &[u8], ip: &Ip) -> Sums {
    if ip.length() == Length::Lies {
        return Sums::default();
    }
    let dgram = &b[ip.off..ip.off + ip.declared];
    let mut s = Sums::default();
    if ip.v4 {
        s.ip = Some(ones_sum(&[&dgram[..ip.hdr_len]]) == 0xffff);
    }
    if ip.fragment {
        return s;
    }
    let seg = &dgram[ip.hdr_len..];
    s.l4 = l4_valid(ip, seg);
    if ip.v4 && ip.proto == P_ICMP && seg.len() >= 28 && matches!(seg[0], 3 | 11) && seg[8] >> 4 == 4 {
        let q = usize::from(seg[8] & 0x0f) * 4;
        if q >= 20 && seg.len() >= 8 + q {
            s.quoted_ip = Some(ones_sum(&[&seg[8..8 + q]]) == 0xffff);
        }
    }
    s
}

/// Rewrite the IPv4 header checksum of the header at `off` (IHL as is).
pub fn fix_ipv4_checksum(b: &mut [u8], off: usize) {
    let hl = (usize::from(b[off] & 0x0f) * 4).max(20);
    if b.len() < off + hl {
        return;
    }
    b[off + 10] = 0;
    b[off + 11] = 0;
    let c = checksum(&[&b[off..off + hl]]);
    b[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
}

/// Offset (from the L4 header) of the checksum field of `proto`.
pub fn l4_checksum_at(proto: u8) -> Option<usize> {
    match proto {
        P_TCP => Some(16),
        P_UDP => Some(6),
        P_ICMP | P_ICMPV6 => Some(2),
        _ => None,
    }
}
