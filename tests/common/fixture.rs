//! The one fixture runner for BPF tests (BPF_PROG_TEST_RUN): run a frame,
//! take the counter deltas, and check the XDP action, the exact output bytes,
//! the counters that must move (and that nothing else moves), and every
//! checksum of a transmitted frame, recomputed independently here (RFC 1071
//! and etherparse; never bpf/), inner (tunnelled) and quoted (ICMP) headers
//! included. Katran's PacketAttributes table, in Rust: see `Case`.

use std::borrow::Cow;

use etherparse::{Ipv4Header, Ipv6Header, TcpHeader, UdpHeader};
use weir::skel::stat_name;

use super::{action_name, hex_row, stat, Lb, XDP_REDIRECT, XDP_TX};

// ------------------------------------------------ independent checksums ---

/// RFC 1071 one's-complement sum, folded (written here, not from etherparse
/// or bpf/).
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for p in parts {
        for ch in p.chunks(2) {
            sum += u64::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True when a message's embedded checksum verifies (the sum is all ones).
pub fn sums_ok(parts: &[&[u8]]) -> bool {
    ones_sum(parts) == 0xffff
}

pub fn pseudo4(ip: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = ip[12..20].to_vec();
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

pub fn pseudo6(ip: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = ip[8..40].to_vec();
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// Verify every checksum in an IP packet: the IPv4 header (etherparse and
/// RFC 1071), TCP and UDP (etherparse and RFC 1071), ICMP / ICMPv6 (RFC 1071),
/// recursing into tunnelled packets and into ICMP quotes (whose L4 is
/// truncated: only the quoted IPv4 header checksum is verifiable there).
pub fn verify_ip(what: &str, pkt: &[u8], whole: bool, problems: &mut Vec<String>) {
    let bad = |problems: &mut Vec<String>, m: String| problems.push(format!("{what}: {m}"));
    if pkt.is_empty() {
        return bad(problems, "empty IP packet".into());
    }
    let v4 = pkt[0] >> 4 == 4;
    let (proto, l4): (u8, &[u8]) = match pkt[0] >> 4 {
        4 => {
            let h = match Ipv4Header::from_slice(pkt) {
                Ok((h, _)) => h,
                Err(e) => return bad(problems, format!("IPv4 header does not parse: {e:?}")),
            };
            if h.header_checksum != h.calc_header_checksum() {
                bad(
                    problems,
                    format!(
                        "IPv4 header checksum {:#06x}, etherparse computes {:#06x}",
                        h.header_checksum,
                        h.calc_header_checksum()
                    ),
                );
            }
            if !sums_ok(&[&pkt[..h.header_len()]]) {
                bad(problems, "IPv4 header checksum fails the RFC 1071 sum".into());
            }
            if !whole {
                return;
            }
            if usize::from(h.total_len) != pkt.len() {
                return bad(problems, format!("IPv4 total_len {} but {} bytes", h.total_len, pkt.len()));
            }
            // A fragment: its L4 checksum covers the whole datagram, checked
            // by the test over the reassembled datagram (reassemble).
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return;
            }
            (h.protocol.0, &pkt[h.header_len()..])
        }
        6 => {
            if !whole {
                return;
            }
            let h = match Ipv6Header::from_slice(pkt) {
                Ok((h, _)) => h,
                Err(e) => return bad(problems, format!("IPv6 header does not parse: {e:?}")),
            };
            if usize::from(h.payload_length) + 40 != pkt.len() {
                return bad(problems, format!("IPv6 payload_len {} but {} bytes", h.payload_length, pkt.len()));
            }
            if h.next_header.0 == 44 {
                return; // a fragment: as for IPv4
            }
            (h.next_header.0, &pkt[40..])
        }
        v => return bad(problems, format!("IP version {v}")),
    };
    let pseudo = |p: u8| if v4 { pseudo4(pkt, p, l4.len()) } else { pseudo6(pkt, p, l4.len()) };
    let (s4, d4): ([u8; 4], [u8; 4]) =
        if v4 { (pkt[12..16].try_into().unwrap(), pkt[16..20].try_into().unwrap()) } else { ([0; 4], [0; 4]) };
    let (s6, d6): ([u8; 16], [u8; 16]) =
        if v4 { ([0; 16], [0; 16]) } else { (pkt[8..24].try_into().unwrap(), pkt[24..40].try_into().unwrap()) };
    match proto {
        6 => {
            match TcpHeader::from_slice(l4) {
                Ok((t, data)) => {
                    let want = if v4 {
                        t.calc_checksum_ipv4_raw(s4, d4, data)
                    } else {
                        t.calc_checksum_ipv6_raw(s6, d6, data)
                    }
                    .unwrap();
                    if t.checksum != want {
                        bad(problems, format!("TCP checksum {:#06x}, etherparse computes {want:#06x}", t.checksum));
                    }
                }
                Err(e) => bad(problems, format!("TCP header does not parse: {e:?}")),
            }
            if !sums_ok(&[&pseudo(6), l4]) {
                bad(problems, "TCP checksum fails the RFC 1071 sum".into());
            }
        }
        17 => match UdpHeader::from_slice(l4) {
            Ok((u, data)) => {
                // Checksum 0 on IPv4 means none (the cases pin it exactly).
                if u.checksum != 0 || !v4 {
                    let want = if v4 {
                        u.calc_checksum_ipv4_raw(s4, d4, data)
                    } else {
                        u.calc_checksum_ipv6_raw(s6, d6, data)
                    }
                    .unwrap();
                    if u.checksum != want {
                        bad(problems, format!("UDP checksum {:#06x}, etherparse computes {want:#06x}", u.checksum));
                    }
                    if !sums_ok(&[&pseudo(17), l4]) {
                        bad(problems, "UDP checksum fails the RFC 1071 sum".into());
                    }
                }
                if usize::from(u.length) != l4.len() {
                    bad(problems, format!("UDP length {} but {} bytes", u.length, l4.len()));
                }
            }
            Err(e) => bad(problems, format!("UDP header does not parse: {e:?}")),
        },
        1 => {
            if !sums_ok(&[l4]) {
                bad(problems, "ICMP checksum fails the RFC 1071 sum".into());
            }
            if l4.len() > 8 && matches!(l4[0], 3 | 11) {
                verify_ip(&format!("{what} (ICMP quote)"), &l4[8..], false, problems);
            }
        }
        58 => {
            if !sums_ok(&[&pseudo(58), l4]) {
                bad(problems, "ICMPv6 checksum fails the RFC 1071 sum (with pseudo-header)".into());
            }
        }
        4 | 41 => verify_ip(&format!("{what} (inner)"), l4, true, problems),
        p => bad(problems, format!("unexpected protocol {p}")),
    }
}

/// The IP datagram the fragments `frags` (IP packets, any order) make
/// together, reassembled here (RFC 791 / RFC 8200, independent of bpf/), and
/// every checksum of it verified over the whole: the L4 checksum of a
/// fragmented datagram is only checkable so. Panics naming the problem.
pub fn reassemble(what: &str, frags: &[&[u8]]) -> Vec<u8> {
    let mut parts: Vec<(usize, bool, Vec<u8>)> = Vec::new();
    let mut head: Option<Vec<u8>> = None;
    let mut next_proto = 0u8;
    for f in frags {
        let (off, more, hdr, data) = if f[0] >> 4 == 4 {
            let ihl = usize::from(f[0] & 0x0f) * 4;
            let fo = u16::from_be_bytes([f[6], f[7]]);
            (usize::from(fo & 0x1fff) * 8, fo & 0x2000 != 0, f[..ihl].to_vec(), f[ihl..].to_vec())
        } else {
            assert_eq!(f[6], 44, "{what}: an IPv6 packet without a Fragment header right after the fixed one");
            let fo = u16::from_be_bytes([f[42], f[43]]);
            next_proto = f[40];
            (usize::from(fo >> 3) * 8, fo & 1 != 0, f[..40].to_vec(), f[48..].to_vec())
        };
        if off == 0 {
            head = Some(hdr);
        }
        parts.push((off, more, data));
    }
    parts.sort_by_key(|p| p.0);
    let mut body = Vec::new();
    for (off, _, data) in &parts {
        assert_eq!(*off, body.len(), "{what}: fragments leave a hole or overlap at byte {off}");
        body.extend_from_slice(data);
    }
    assert!(!parts.last().unwrap().1, "{what}: the last fragment has M set");
    let mut ip = head.unwrap_or_else(|| panic!("{what}: no first fragment"));
    if ip[0] >> 4 == 4 {
        let len = (ip.len() + body.len()) as u16;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        ip[6..8].copy_from_slice(&[0, 0]);
        ip[10..12].copy_from_slice(&[0, 0]);
        let s = ones_sum(&[&ip]);
        ip[10..12].copy_from_slice(&(!s).to_be_bytes());
    } else {
        ip[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        ip[6] = next_proto;
    }
    ip.extend_from_slice(&body);
    let mut problems = Vec::new();
    verify_ip(&format!("{what} (reassembled)"), &ip, true, &mut problems);
    assert!(problems.is_empty(), "{what}: {problems:?}");
    ip
}

pub fn verify_frame(what: &str, f: &[u8], problems: &mut Vec<String>) {
    if f.len() < 14 {
        problems.push(format!("{what}: {} bytes, no Ethernet header", f.len()));
        return;
    }
    // 802.1Q / 802.1ad tags (any number) before the ethertype.
    let mut off = 12;
    while f.len() >= off + 6 && matches!(u16::from_be_bytes([f[off], f[off + 1]]), 0x8100 | 0x88a8) {
        off += 4;
    }
    let ip = &f[off + 2..];
    // Bytes after the datagram are Ethernet padding: legal, and not part of
    // any checksum. A datagram longer than the frame is an error.
    let len = match u16::from_be_bytes([f[off], f[off + 1]]) {
        0x0800 if ip.len() >= 4 => usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        0x86dd if ip.len() >= 6 => 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        // ARP (RFC 826) for Ethernet / IPv4: no checksum; the fixed 28 bytes.
        0x0806 => {
            if ip.len() < 28 || ip[..6] != [0, 1, 0x08, 0, 6, 4] {
                problems.push(format!("{what}: not an Ethernet/IPv4 ARP packet"));
            }
            return;
        }
        et => return problems.push(format!("{what}: ethertype {et:#06x}, or no IP header")),
    };
    if len > ip.len() {
        return problems.push(format!("{what}: the IP header claims {len} bytes, the frame has {}", ip.len()));
    }
    verify_ip(what, &ip[..len], true, problems)
}

// ------------------------------------------------------------- checking ---

/// Any XDP program the runner can run: one frame through
/// BPF_PROG_TEST_RUN, and the program's global counters (indexed as
/// `weir::skel::stat_name`; empty: the program has none).
pub trait Target {
    fn exec(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)>;
    fn counters(&self) -> Vec<u64>;
}

/// The load balancer (`weir_lb`).
impl Target for Lb {
    fn exec(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        self.dp.run(frame)
    }
    fn counters(&self) -> Vec<u64> {
        Lb::counters(self)
    }
}

/// The standalone shield (`weir shield`'s `weir_shield`).
impl Target for weir::shield::Standalone {
    fn exec(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        weir::dataplane::test_run(&self.skel.progs.weir_shield, frame, 1).map(|(a, out, _)| (a, out))
    }
    fn counters(&self) -> Vec<u64> {
        weir::shield::Standalone::counters(self).expect("shield counters")
    }
}

/// Any other program (e.g. `weir decap`'s `xdp_decap`): no counters.
impl Target for libbpf_rs::ProgramMut<'_> {
    fn exec(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        weir::dataplane::test_run(self, frame, 1).map(|(a, out, _)| (a, out))
    }
    fn counters(&self) -> Vec<u64> {
        Vec::new()
    }
}

pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    /// Counter deltas (empty: the program has no counters).
    pub delta: Vec<u64>,
}

pub fn run<T: Target + ?Sized>(t: &T, name: &str, frame: &[u8]) -> Run {
    let before = t.counters();
    let (action, out) = t.exec(frame).unwrap_or_else(|e| panic!("{name}: test_run: {e:#}"));
    let after = t.counters();
    let delta = after.iter().zip(&before).map(|(a, b)| a.wrapping_sub(*b)).collect();
    Run { action, out, delta }
}

/// Rows (16 bytes) where `want` and `got` differ, both shown.
pub fn hexdiff(want: &[u8], got: &[u8]) -> String {
    let mut s = format!("    length: want {} got {}\n", want.len(), got.len());
    let rows = want.len().max(got.len()).div_ceil(16);
    let mut shown = 0;
    for r in 0..rows {
        let w = &want[(r * 16).min(want.len())..(r * 16 + 16).min(want.len())];
        let g = &got[(r * 16).min(got.len())..(r * 16 + 16).min(got.len())];
        if w != g {
            let marks: String = (0..16)
                .map(|i| if w.get(i) != g.get(i) { "^^ " } else { "   " })
                .collect::<String>()
                .trim_end()
                .to_string();
            s += &format!(
                "    {:04x} want {}\n         got  {}\n              {}\n",
                r * 16,
                hex_row(w),
                hex_row(g),
                marks
            );
            shown += 1;
            if shown >= 24 {
                s += "    ...\n";
                break;
            }
        }
    }
    s
}

pub fn rose(r: &Run) -> String {
    let v: Vec<String> =
        (0..r.delta.len()).filter(|i| r.delta[*i] != 0).map(|i| format!("{}+{}", stat_name(i), r.delta[i])).collect();
    v.join(", ")
}

/// Flow events are checked when a case names one of them (then all three
/// exactly), like tests/fixtures.rs; every other counter is always exact.
pub const EVENTS: [&str; 3] = ["flow_new", "flow_hit", "flow_rescheduled"];

/// Action, exact bytes (None: unchanged), counters, output checksums.
///
/// `counters`: each named counter must rise by the number of times it is
/// named (once: by one); every other counter must stay (flow events: see
/// `EVENTS`). A program without counters takes an empty list.
pub fn expect(name: &str, r: &Run, frame: &[u8], action: u32, output: Option<&[u8]>, counters: &[&str]) {
    expect_counting(name, r, frame, action, output, counters, false)
}

/// `expect`, with the flow events held to `counters` too (unnamed: they
/// must stay), named or not.
pub fn expect_exact(name: &str, r: &Run, frame: &[u8], action: u32, output: Option<&[u8]>, counters: &[&str]) {
    expect_counting(name, r, frame, action, output, counters, true)
}

fn expect_counting(
    name: &str,
    r: &Run,
    frame: &[u8],
    action: u32,
    output: Option<&[u8]>,
    counters: &[&str],
    events_exact: bool,
) {
    for c in counters {
        stat(c); // every named counter exists
    }
    assert!(
        !r.delta.is_empty() || counters.is_empty(),
        "{name}: the program has no counters, the case names {counters:?}"
    );
    let mut problems = Vec::new();
    if r.action != action {
        problems.push(format!("XDP action {} (want {})", action_name(r.action), action_name(action)));
    }
    let want = output.unwrap_or(frame);
    if r.out != want {
        problems.push(format!(
            "output bytes differ{}:\n{}",
            if output.is_none() { " (want the input unchanged)" } else { "" },
            hexdiff(want, &r.out)
        ));
    }
    let events_named = events_exact || counters.iter().any(|c| EVENTS.contains(c));
    for i in 0..r.delta.len() {
        let n = stat_name(i);
        if EVENTS.contains(&n) && !events_named {
            continue;
        }
        let expected = counters.iter().filter(|c| **c == n).count() as u64;
        if r.delta[i] != expected {
            problems.push(format!("counter {n} rose by {} (want {expected})", r.delta[i]));
        }
    }
    if action == XDP_TX || action == XDP_REDIRECT {
        // Self-check of the fixture, then the real check of the output.
        let mut own = Vec::new();
        verify_frame("expected frame", want, &mut own);
        assert!(own.is_empty(), "{name}: the test's own expected frame is inconsistent: {own:?}");
        if r.action == action {
            verify_frame("output", &r.out, &mut problems);
        }
    }
    if !problems.is_empty() {
        panic!(
            "{name}:\n  - {}\n  (counters that rose: {})\n  input:  {}\n",
            problems.join("\n  - "),
            rose(r),
            hex_row(frame)
        );
    }
}

pub fn check<T: Target + ?Sized>(t: &T, name: &str, f: &[u8], a: u32, o: Option<&[u8]>, c: &[&str]) -> Vec<u8> {
    let r = run(t, name, f);
    expect(name, &r, f, a, o, c);
    r.out
}

/// `check` with every counter exact, flow events included (`expect_exact`).
pub fn check_exact<T: Target + ?Sized>(t: &T, name: &str, f: &[u8], a: u32, o: Option<&[u8]>, c: &[&str]) -> Vec<u8> {
    let r = run(t, name, f);
    expect_exact(name, &r, f, a, o, c);
    r.out
}

/// The L4 source port of an output frame (the SNAT port), read at the
/// offset the IP header gives.
pub fn out_sport(out: &[u8]) -> Option<u16> {
    // After one 802.1Q / 802.1ad tag, if there is one.
    let mut et = 12;
    if matches!(u16::from_be_bytes([*out.get(12)?, *out.get(13)?]), 0x8100 | 0x88a8) {
        et += 4;
    }
    let l3 = et + 2;
    let l4 = match u16::from_be_bytes([*out.get(et)?, *out.get(et + 1)?]) {
        0x0800 => l3 + usize::from(out.get(l3)? & 0x0f) * 4,
        0x86dd => l3 + 40,
        _ => return None,
    };
    Some(u16::from_be_bytes([*out.get(l4)?, *out.get(l4 + 1)?]))
}


/// One row of a fixture table: what to set up, the frame, and everything the
/// run must show. `output: None` means the frame must come out unchanged.
pub struct Case<'a, T: ?Sized = Lb> {
    pub name: Cow<'a, str>,
    /// Map writes (or earlier packets) the row needs, as data for the runner.
    pub setup: Option<&'a dyn Fn(&T)>,
    pub input: Vec<u8>,
    pub action: u32,
    pub output: Option<Vec<u8>>,
    /// Counters that must rise, each by the number of times it is named;
    /// every other stays (flow events are only checked when the row names
    /// one of them).
    pub counters: &'a [&'a str],
}

impl<'a, T: ?Sized> Case<'a, T> {
    pub fn new(
        name: impl Into<Cow<'a, str>>,
        input: Vec<u8>,
        action: u32,
        output: Option<Vec<u8>>,
        counters: &'a [&'a str],
    ) -> Self {
        Case { name: name.into(), setup: None, input, action, output, counters }
    }
    pub fn with_setup(mut self, setup: &'a dyn Fn(&T)) -> Self {
        self.setup = Some(setup);
        self
    }
}

/// Run every row in order on one program; the first failing row panics
/// with its name, a hex diff and the counters that moved.
pub fn run_table<T: Target + ?Sized>(t: &T, cases: &[Case<T>]) {
    for c in cases {
        if let Some(setup) = c.setup {
            setup(t);
        }
        check(t, &c.name, &c.input, c.action, c.output.as_deref(), c.counters);
    }
}
