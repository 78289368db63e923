//! Mutation classes: what is done to a valid frame before it goes in. Each
//! frame records the class it got, so violations can be told apart by cause.

use crate::rng::Rng;
use crate::seeds::insert_ipv6_ext;
use crate::wire::{self, Ip, P_TCP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutation {
    /// The valid frame as built.
    None,
    /// Cut at a random point (at least the 14-byte Ethernet header stays:
    /// BPF_PROG_TEST_RUN refuses less).
    Truncate,
    /// 1 to 4 random bytes anywhere XORed with random values.
    ByteFlip,
    /// 1 to 3 random bits flipped in the L2 / L3 / L4 headers.
    HeaderFlip,
    /// IP version nibble not the Ethernet type's (IPv4 checksum fixed).
    BadVersion,
    /// IPv4 IHL changed (checksum fixed over the new length).
    BadIhl,
    /// TCP data offset changed.
    BadDoff,
    /// IPv4 total length / IPv6 payload length below the frame's.
    IpLenShort,
    /// ... above it.
    IpLenLong,
    /// IPv4 options (IHL 6 to 15, lengths and checksum right), or an IPv6
    /// extension header: a valid packet still.
    IpOptions,
    /// Ethernet trailing padding: the frame is longer than the IP packet.
    Padding,
    /// The IPv4 header or L4 checksum field corrupted.
    BadChecksum,
    /// Random bytes (half of them under a plausible Ethernet type).
    Garbage,
    /// Two or three of the above (not Garbage).
    Stacked,
}

const WEIGHTS: [(Mutation, usize); 14] = [
    (Mutation::None, 30),
    (Mutation::Truncate, 6),
    (Mutation::ByteFlip, 6),
    (Mutation::HeaderFlip, 8),
    (Mutation::BadVersion, 3),
    (Mutation::BadIhl, 4),
    (Mutation::BadDoff, 4),
    (Mutation::IpLenShort, 6),
    (Mutation::IpLenLong, 6),
    (Mutation::IpOptions, 5),
    (Mutation::Padding, 6),
    (Mutation::BadChecksum, 5),
    (Mutation::Garbage, 3),
    (Mutation::Stacked, 8),
];

/// Frames never grow past this: BPF_PROG_TEST_RUN takes a page minus
/// headroom and shared info (about 3.5 kB).
pub const MAX_FRAME: usize = 3000;

impl Mutation {
    pub fn pick(rng: &mut Rng) -> Mutation {
        let total: usize = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut n = rng.below(total);
        for (m, w) in WEIGHTS {
            if n < w {
                return m;
            }
            n -= w;
        }
        unreachable!()
    }

    /// Apply to `f`; false when the class does not fit the frame (no IP
    /// header, not TCP, ...), `f` then unchanged.
    fn apply_one(self, rng: &mut Rng, f: &mut Vec<u8>) -> bool {
        match self {
            Mutation::None => true,
            Mutation::Truncate => truncate(rng, f),
            Mutation::ByteFlip => byte_flip(rng, f),
            Mutation::HeaderFlip => header_flip(rng, f),
            Mutation::BadVersion => bad_version(rng, f),
            Mutation::BadIhl => bad_ihl(rng, f),
            Mutation::BadDoff => bad_doff(rng, f),
            Mutation::IpLenShort => ip_len(rng, f, false),
            Mutation::IpLenLong => ip_len(rng, f, true),
            Mutation::IpOptions => ip_options(rng, f),
            Mutation::Padding => padding(rng, f),
            Mutation::BadChecksum => bad_checksum(rng, f),
            Mutation::Garbage => garbage(rng, f),
            Mutation::Stacked => stacked(rng, f),
        }
    }

    /// Mutate `f` with this class or, when it does not fit, with ByteFlip:
    /// the class actually applied.
    pub fn apply(self, rng: &mut Rng, f: &mut Vec<u8>) -> Mutation {
        let m = if self.apply_one(rng, f) {
            self
        } else {
            byte_flip(rng, f);
            Mutation::ByteFlip
        };
        f.truncate(MAX_FRAME);
        m
    }
}

fn ip_of(f: &[u8]) -> Option<Ip> {
    wire::ip(f).map(|(_, ip)| ip)
}

/// Keep an IPv4 header's checksum right after a field change, so that the
/// field is the only thing wrong.
fn refix(f: &mut [u8], ip: &Ip) {
    if ip.v4 {
        wire::fix_ipv4_checksum(f, ip.off);
    }
}

fn truncate(rng: &mut Rng, f: &mut Vec<u8>) -> bool {
    if f.len() <= 15 {
        return false;
    }
    let hi = if rng.one_in(2) { f.len().min(100) } else { f.len() } - 1;
    let n = rng.range(14, hi);
    f.truncate(n);
    true
}

fn byte_flip(rng: &mut Rng, f: &mut [u8]) -> bool {
    for _ in 0..rng.range(1, 4) {
        let i = rng.below(f.len());
        f[i] ^= rng.range(1, 255) as u8;
    }
    true
}

fn header_flip(rng: &mut Rng, f: &mut [u8]) -> bool {
    let hi = f.len().min(14 + 8 + 60 + 40);
    if hi <= 12 {
        return false;
    }
    for _ in 0..rng.range(1, 3) {
        let i = rng.range(12, hi - 1);
        f[i] ^= 1 << rng.below(8);
    }
    true
}

fn bad_version(rng: &mut Rng, f: &mut [u8]) -> bool {
    let Some(ip) = ip_of(f) else { return false };
    let mut v = rng.below(16) as u8;
    if v == ip.version {
        v ^= 1 << rng.below(4);
    }
    f[ip.off] = (v << 4) | (f[ip.off] & 0x0f);
    refix(f, &ip);
    true
}

fn bad_ihl(rng: &mut Rng, f: &mut [u8]) -> bool {
    let Some(ip) = ip_of(f).filter(|ip| ip.v4) else { return false };
    let mut ihl = rng.below(16) as u8;
    if usize::from(ihl) * 4 == ip.hdr_len {
        ihl ^= 1 << rng.below(4);
    }
    f[ip.off] = (f[ip.off] & 0xf0) | ihl;
    refix(f, &ip);
    true
}

fn bad_doff(rng: &mut Rng, f: &mut [u8]) -> bool {
    let Some(ip) = ip_of(f).filter(|ip| ip.proto == P_TCP && !ip.fragment) else { return false };
    let at = ip.l4() + 12;
    if at >= f.len() {
        return false;
    }
    let old = f[at] >> 4;
    let mut d = rng.below(16) as u8;
    if d == old {
        d ^= 1 << rng.below(4);
    }
    f[at] = (d << 4) | (f[at] & 0x0f);
    true
}

/// Set the IP length field to say the datagram is `len` bytes (header incl.).
fn set_ip_len(f: &mut [u8], ip: &Ip, len: usize) {
    let field = if ip.v4 { len } else { len.saturating_sub(40) };
    let at = ip.off + if ip.v4 { 2 } else { 4 };
    f[at..at + 2].copy_from_slice(&(field.min(0xffff) as u16).to_be_bytes());
    refix(f, ip);
}

fn ip_len(rng: &mut Rng, f: &mut [u8], longer: bool) -> bool {
    let Some(ip) = ip_of(f) else { return false };
    let base = ip.declared;
    let floor = if ip.v4 { 0 } else { 40 };
    let len = if longer {
        if rng.one_in(2) {
            base + rng.range(1, 64)
        } else {
            rng.range(base + 1, 0xffff + floor)
        }
    } else {
        if base <= floor {
            return false;
        }
        // Half of them still cover the headers: a short but plausible datagram.
        let plausible = ip.hdr_len + 8;
        if rng.one_in(2) && base > plausible {
            rng.range(plausible, base - 1)
        } else {
            rng.range(floor, base - 1)
        }
    };
    set_ip_len(f, &ip, len);
    true
}

fn ip_options(rng: &mut Rng, f: &mut Vec<u8>) -> bool {
    let Some(ip) = ip_of(f) else { return false };
    if !ip.v4 {
        if ip.version != 6 {
            return false;
        }
        *f = insert_ipv6_ext(rng, f, ip.off);
        return true;
    }
    if ip.hdr_len < 20 || ip.hdr_len >= 60 || f.len() < ip.off + ip.hdr_len {
        return false;
    }
    let words = rng.range(1, (60 - ip.hdr_len) / 4);
    let opts = match rng.below(4) {
        0 => vec![1u8; words * 4], // NOPs
        1 => {
            // record route with room for its addresses
            let mut o = vec![7, (words * 4 - 1) as u8, 4];
            o.resize(words * 4, 0);
            o
        }
        2 => rng.bytes(words * 4),
        _ => {
            let mut o = vec![1u8; words * 4];
            o[words * 4 - 1] = 0; // EOL
            o
        }
    };
    let at = ip.off + ip.hdr_len;
    f.splice(at..at, opts);
    f[ip.off] = (f[ip.off] & 0xf0) | ((ip.hdr_len / 4 + words) as u8);
    let len = (ip.declared + words * 4).min(0xffff) as u16;
    f[ip.off + 2..ip.off + 4].copy_from_slice(&len.to_be_bytes());
    wire::fix_ipv4_checksum(f, ip.off);
    true
}

fn padding(rng: &mut Rng, f: &mut Vec<u8>) -> bool {
    let n = if f.len() < 60 && rng.one_in(2) { 60 - f.len() } else { rng.range(1, 64) };
    if rng.one_in(2) {
        f.resize(f.len() + n, 0);
    } else {
        f.extend(rng.bytes(n));
    }
    true
}

fn bad_checksum(rng: &mut Rng, f: &mut [u8]) -> bool {
    let Some(ip) = ip_of(f) else { return false };
    let l4_field = wire::l4_checksum_at(ip.proto).map(|o| ip.l4() + o).filter(|at| at + 2 <= f.len() && !ip.fragment);
    let at = match (ip.v4, l4_field) {
        (true, Some(l4)) => {
            if rng.one_in(2) {
                ip.off + 10
            } else {
                l4
            }
        }
        (true, None) => ip.off + 10,
        (false, Some(l4)) => l4,
        (false, None) => return false,
    };
    let x = (rng.range(1, 0xffff) as u16).to_be_bytes();
    f[at] ^= x[0];
    f[at + 1] ^= x[1];
    true
}

fn garbage(rng: &mut Rng, f: &mut Vec<u8>) -> bool {
    let n = rng.range(14, 1518);
    *f = rng.bytes(n);
    if rng.one_in(2) {
        let t = *rng.pick(&[wire::ETH_IP, wire::ETH_IPV6, wire::ETH_ARP, wire::ETH_8021Q]);
        f[12..14].copy_from_slice(&t.to_be_bytes());
    }
    true
}

fn stacked(rng: &mut Rng, f: &mut Vec<u8>) -> bool {
    for _ in 0..rng.range(2, 3) {
        let m = loop {
            let m = Mutation::pick(rng);
            if !matches!(m, Mutation::None | Mutation::Garbage | Mutation::Stacked) {
                break m;
            }
        };
        m.apply_one(rng, f);
    }
    true
}
