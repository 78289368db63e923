//! The invariants every output must meet, checked with the fuzzer's own
//! parser and RFC 1071 sums (wire.rs), against the configuration (model.rs).

use std::fmt;
use std::ops::Range;

use weir::config::Mode;
use weir::skel::{stat_name, STAT_COUNT};

use crate::common::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use crate::model::{Model, NatFlow, Vip};
use crate::wire::{self, Ip, Length, Sums, L2, P_ICMP, P_ICMPV6, P_IPIP, P_IPV6, P_TCP, P_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Inv {
    /// The program returned XDP_ABORTED.
    Aborted,
    /// An action that is none of DROP / PASS / TX / REDIRECT.
    UnknownAction,
    /// XDP_PASS / XDP_DROP with an output that differs from the input.
    PassDropModified,
    /// Not exactly one action counter moved by one, the returned action's.
    CounterAction,
    /// A pass / drop with no reason counter moved.
    CounterReason,
    /// Sent (TX / REDIRECT) without a VIP, NAT flow or responder to explain it.
    UnexplainedRewrite,
    /// Sent rewritten although the input's IP length field lied.
    RewriteOfLyingLength,
    /// A rewritten output that no longer parses as the IP packet it was.
    OutputMalformed,
    /// An IP / L4 / quoted-IP checksum whose validity differs from the input's.
    ChecksumValidity,
    /// DSR changed more than the MACs.
    DsrBeyondMacs,
    /// DSR sent to a MAC that is none of the VIP's backends.
    DsrWrongBackend,
    /// NAT forward: not SNAT source -> a backend of the VIP, ports wrong.
    NatForwardAddr,
    /// NAT return / ICMP: not from the VIP, or not to the flow's client.
    NatReturnAddr,
    /// NAT changed bytes other than addresses, ports and checksums.
    NatOtherBytes,
    /// NAT changed bytes past the end of the IP datagram (the padding).
    NatBeyondDatagram,
    /// Tunnel: outer header fields (version, protocol, addresses, checksum).
    TunnelOuterHeader,
    /// Tunnel: outer IP length != the frame's bytes after the outer L2 header.
    TunnelOuterLen,
    /// Tunnel: the encapsulated packet is above the MTU.
    TunnelMtu,
    /// Tunnel: the inner packet is not the client's IP packet unchanged.
    TunnelInner,
    /// A frame built by the program (challenge, too-big, ARP, NA) malformed.
    FreshMalformed,
    /// ... with a wrong checksum.
    FreshChecksum,
    /// ... larger than the frame that caused it.
    FreshLarger,
    /// ICMP too-big for a packet that would fit once wrapped (or whose IP
    /// length lies), or on a VIP that is not a tunnel with icmp_too_big.
    TooBigUnwarranted,
    /// Served (balanced, or a NAT reply translated) for a frame on a VLAN:
    /// no VIP of the fuzz config has a `vlan`, so only untagged (or
    /// priority-tagged, VLAN id 0) frames are a VIP's (README "VLANs").
    VlanServed,
    /// A frame sent to a backend or a translated NAT reply carries a tag:
    /// nothing in the fuzz config has a `vlan`, so it must leave untagged.
    VlanTagged,
}

impl fmt::Display for Inv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What the output is, as the fuzzer reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Aborted,
    Dropped,
    Passed,
    Dsr,
    NatForward,
    NatReturn,
    NatIcmp,
    Tunnel,
    Challenge,
    TooBig,
    ArpReply,
    NdpReply,
    EchoReply,
    /// An ICMP error about a backend's reply, sent on to that backend.
    IcmpToBackend,
    Unexplained,
    UnknownAction,
}

/// Global counter indices by role.
pub struct Stats {
    pass_reasons: Vec<usize>,
    drop_reasons: Vec<usize>,
    arp_reply: usize,
    ndp_reply: usize,
    icmp_too_big: usize,
    challenged: usize,
    nat_reply: usize,
    nat_icmp: usize,
    echo_reply: usize,
    icmp_to_backend: usize,
    /// A flow (DSR, tunnel or NAT) was created.
    pub flow_new: usize,
}

impl Stats {
    pub fn new() -> Stats {
        let idx = |n: &str| (0..STAT_COUNT).find(|i| stat_name(*i) == n).unwrap_or_else(|| panic!("no counter {n}"));
        let events = ["shield_allowed", "shield_verified_pass", "shield_dry_run"];
        Stats {
            pass_reasons: (0..STAT_COUNT).filter(|i| stat_name(*i).starts_with("pass_")).collect(),
            drop_reasons: (0..STAT_COUNT)
                .filter(|i| {
                    let n = stat_name(*i);
                    (n.starts_with("drop_") || n.starts_with("shield_")) && !events.contains(&n)
                })
                .collect(),
            arp_reply: idx("arp_reply"),
            ndp_reply: idx("ndp_reply"),
            icmp_too_big: idx("icmp_too_big"),
            challenged: idx("shield_challenged"),
            nat_reply: idx("nat_reply"),
            nat_icmp: idx("nat_icmp"),
            echo_reply: idx("echo_reply"),
            icmp_to_backend: idx("icmp_to_backend"),
            flow_new: idx("flow_new"),
        }
    }
}

/// One frame's run: what went in, the action, what came out, and how much
/// each global counter moved.
pub struct Run<'a> {
    pub input: &'a [u8],
    pub action: u32,
    pub output: &'a [u8],
    pub delta: &'a [u64],
}

pub struct Verdict {
    pub outcome: Outcome,
    pub violations: Vec<(Inv, String)>,
}

impl Verdict {
    fn new(outcome: Outcome) -> Verdict {
        Verdict { outcome, violations: Vec::new() }
    }
    fn fail(&mut self, inv: Inv, detail: impl Into<String>) {
        self.violations.push((inv, detail.into()));
    }
    fn require(&mut self, ok: bool, inv: Inv, detail: impl FnOnce() -> String) {
        if !ok {
            self.fail(inv, detail());
        }
    }
}

pub fn check(m: &Model, st: &Stats, r: &Run) -> Verdict {
    let mut v = match r.action {
        0 => {
            let mut v = Verdict::new(Outcome::Aborted);
            v.fail(Inv::Aborted, "XDP_ABORTED");
            v
        }
        XDP_PASS | XDP_DROP => {
            let mut v = Verdict::new(if r.action == XDP_PASS { Outcome::Passed } else { Outcome::Dropped });
            v.require(r.output == r.input, Inv::PassDropModified, || first_diff(r.input, r.output));
            v
        }
        XDP_TX | XDP_REDIRECT => sent(m, st, r),
        a => {
            let mut v = Verdict::new(Outcome::UnknownAction);
            v.fail(Inv::UnknownAction, format!("action {a}"));
            v
        }
    };
    counters(st, r, &mut v);
    v
}

fn counters(st: &Stats, r: &Run, v: &mut Verdict) {
    let moved: Vec<String> =
        (0..5).filter(|i| r.delta[*i] != 0).map(|i| format!("{}+{}", stat_name(i), r.delta[i])).collect();
    let a = r.action as usize;
    let ok = a < 5 && r.delta[a] == 1 && (0..5).all(|i| i == a || r.delta[i] == 0);
    v.require(ok, Inv::CounterAction, || format!("action {a}, action counters moved: {moved:?}"));
    let reasons = match r.action {
        XDP_PASS => &st.pass_reasons,
        XDP_DROP => &st.drop_reasons,
        _ => return,
    };
    v.require(reasons.iter().any(|i| r.delta[*i] != 0), Inv::CounterReason, || {
        let all: Vec<String> = (0..r.delta.len())
            .filter(|i| r.delta[*i] != 0)
            .map(|i| format!("{}+{}", stat_name(i), r.delta[i]))
            .collect();
        format!("no reason counter moved: {all:?}")
    });
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("byte {i}: {:02x} -> {:02x} (lengths {} -> {})", a[i], b[i], a.len(), b.len()),
        None => format!("lengths {} -> {}", a.len(), b.len()),
    }
}

/// An XDP_TX / XDP_REDIRECT: what it is, from the counters that name the
/// responders and NAT paths, else from the VIP the input was addressed to.
fn sent(m: &Model, st: &Stats, r: &Run) -> Verdict {
    let d = |i: usize| r.delta[i] != 0;
    if d(st.arp_reply) {
        return arp_reply(r);
    }
    if d(st.ndp_reply) {
        return fresh(r, Outcome::NdpReply, false);
    }
    if d(st.icmp_too_big) {
        let mut v = fresh(r, Outcome::TooBig, true);
        too_big_warranted(m, r, &mut v);
        return v;
    }
    if d(st.challenged) {
        return fresh(r, Outcome::Challenge, true);
    }
    // Nothing in the fuzz config has a `vlan`: a frame forwarded or
    // translated leaves untagged, its tag (VLAN id 0 only) popped. The
    // checks below compare it with the input without its tag.
    let tag_in = wire::l2(r.input).is_some_and(|l| l.len > 14);
    let tag_out = wire::l2(r.output).is_some_and(|l| l.len > 14);
    let echo = d(st.echo_reply);
    let vid = if tag_in { wire::be16(r.input, 14) & 0x0fff } else { 0 };
    let stripped: Vec<u8>;
    let untagged;
    let r = if tag_in && !tag_out {
        stripped = [&r.input[..12], &r.input[16..]].concat();
        untagged = Run { input: &stripped, action: r.action, output: r.output, delta: r.delta };
        &untagged
    } else {
        r
    };
    let mut v = served(m, st, r);
    v.require(vid == 0 || d(st.nat_reply) || d(st.nat_icmp), Inv::VlanServed, || format!("arrived on VLAN {vid}"));
    v.require(!tag_out || echo, Inv::VlanTagged, || "sent tagged".into());
    v
}

/// A frame balanced to a backend, translated back to a client, or echoed.
fn served(m: &Model, st: &Stats, r: &Run) -> Verdict {
    let d = |i: usize| r.delta[i] != 0;
    let Some((_, ip)) = wire::ip(r.input) else {
        let mut v = Verdict::new(Outcome::Unexplained);
        v.fail(Inv::UnexplainedRewrite, "input has no IP header");
        return v;
    };
    if d(st.nat_reply) {
        return nat_return(m, r, &ip);
    }
    if d(st.nat_icmp) {
        return nat_icmp(m, r, &ip);
    }
    if d(st.echo_reply) {
        return echo_reply(m, r, &ip);
    }
    if d(st.icmp_to_backend) {
        return icmp_to_backend(m, r, &ip);
    }
    let vip = ip.ports(r.input).and_then(|(_, dport)| m.vip_for(ip.dst, dport, ip.proto));
    match vip {
        Some(vip) if vip.mode == Mode::Dsr => dsr(vip, r, &ip),
        Some(vip) if vip.mode == Mode::Nat => nat_forward(vip, r, &ip),
        Some(vip) => tunnel(m, vip, r, &ip),
        None => {
            let mut v = Verdict::new(Outcome::Unexplained);
            v.fail(Inv::UnexplainedRewrite, format!("{} -> {} proto {}: no VIP", ip.src, ip.dst, ip.proto));
            v
        }
    }
}

fn honest_length(v: &mut Verdict, ip: &Ip) {
    v.require(ip.length() != Length::Lies, Inv::RewriteOfLyingLength, || {
        format!("IP length says {} bytes, frame has {} after L2 (header {})", ip.declared, ip.avail, ip.hdr_len)
    });
}

fn same_sums(v: &mut Verdict, before: Sums, after: Sums) {
    let mut bad = Vec::new();
    for (name, b, a) in
        [("ip", before.ip, after.ip), ("l4", before.l4, after.l4), ("quoted ip", before.quoted_ip, after.quoted_ip)]
    {
        if let (Some(b), Some(a)) = (b, a) {
            if a != b {
                bad.push(format!("{name} checksum valid {b} -> {a}"));
            }
        }
    }
    v.require(bad.is_empty(), Inv::ChecksumValidity, || bad.join(", "));
}

fn dsr(vip: &Vip, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::Dsr);
    honest_length(&mut v, ip);
    v.require(r.output.len() == r.input.len() && r.output[12..] == r.input[12..], Inv::DsrBeyondMacs, || {
        first_diff(&r.input[12..], r.output.get(12..).unwrap_or_default())
    });
    v.require(vip.has_backend_mac(&r.output[..6]), Inv::DsrWrongBackend, || {
        format!("{}: to MAC {:02x?}", vip.name, &r.output[..6])
    });
    v
}

/// Byte ranges NAT may change in an IP packet at `ip` carrying ports.
fn l34_fields(ip: &Ip) -> Vec<Range<usize>> {
    let o = ip.off;
    let addrs = if ip.v4 { o + 10..o + 20 } else { o + 8..o + 40 };
    let mut f = vec![0..12, addrs];
    let l4 = ip.l4();
    f.push(l4..l4 + 4);
    match ip.proto {
        P_TCP => f.push(l4 + 16..l4 + 18),
        P_UDP => f.push(l4 + 6..l4 + 8),
        _ => {}
    }
    f
}

/// Every changed byte must be in `fields` and inside the datagram.
fn only_fields(v: &mut Verdict, r: &Run, ip: &Ip, fields: &[Range<usize>]) {
    if r.output.len() != r.input.len() {
        v.fail(Inv::NatOtherBytes, format!("length {} -> {}", r.input.len(), r.output.len()));
        return;
    }
    let end = ip.end();
    let changed = (0..r.input.len()).filter(|i| r.input[*i] != r.output[*i]);
    let (mut beyond, mut other) = (Vec::new(), Vec::new());
    for i in changed {
        if i >= end {
            beyond.push(i);
        } else if !fields.iter().any(|f| f.contains(&i)) {
            other.push(i);
        }
    }
    // A datagram whose length lies has no trustworthy end: that it was
    // rewritten at all is the violation (RewriteOfLyingLength).
    let honest = ip.length() != Length::Lies;
    v.require(beyond.is_empty() || !honest, Inv::NatBeyondDatagram, || {
        format!("datagram ends at {end}, changed bytes {beyond:?}")
    });
    v.require(other.is_empty(), Inv::NatOtherBytes, || format!("changed bytes {other:?}"));
}

fn rewritten(r: &Run) -> Result<(L2, Ip), String> {
    wire::ip(r.output).ok_or_else(|| "output has no IP header".into())
}

fn nat_forward(vip: &Vip, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::NatForward);
    honest_length(&mut v, ip);
    let (_, out) = match rewritten(r) {
        Ok(x) => x,
        Err(e) => {
            v.fail(Inv::OutputMalformed, e);
            return v;
        }
    };
    only_fields(&mut v, r, ip, &l34_fields(ip));
    same_sums(&mut v, wire::sums(r.input, ip), wire::sums(r.output, &out));
    let (cport, _) = ip.ports(r.input).unwrap_or_default();
    let (sport, dport) = out.ports(r.output).unwrap_or_default();
    let be = vip.backends.iter().find(|b| b.addr == out.dst);
    let want_dport =
        be.and_then(|b| b.port).unwrap_or(if vip.port == 0 { ip.ports(r.input).unwrap().1 } else { vip.port });
    let [lo, hi] = vip.source_ports;
    let ok = be.is_some() && Some(out.src) == vip.source && (lo..=hi).contains(&sport) && dport == want_dport;
    v.require(ok, Inv::NatForwardAddr, || {
        format!("{}: {}:{cport} became {}:{sport} -> {}:{dport}", vip.name, ip.src, out.src, out.dst)
    });
    v
}

fn nat_return(m: &Model, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::NatReturn);
    honest_length(&mut v, ip);
    let (_, out) = match rewritten(r) {
        Ok(x) => x,
        Err(e) => {
            v.fail(Inv::OutputMalformed, e);
            return v;
        }
    };
    only_fields(&mut v, r, ip, &l34_fields(ip));
    same_sums(&mut v, wire::sums(r.input, ip), wire::sums(r.output, &out));
    let (bport, sport) = ip.ports(r.input).unwrap_or_default();
    let (vport, cport) = out.ports(r.output).unwrap_or_default();
    v.require(m.nat_vip_addr(out.src), Inv::NatReturnAddr, || format!("reply sent from {}, not a NAT VIP", out.src));
    if let Some(f) = m.flow(&(ip.src, bport, ip.dst, sport, ip.proto)) {
        let ok =
            (out.src, vport, out.dst, cport) == (f.vip, f.vport, f.client, f.cport) && r.output[..6] == f.client_mac;
        v.require(ok, Inv::NatReturnAddr, || {
            format!(
                "flow {}:{} -> {}:{} sent as {}:{vport} -> {}:{cport}",
                f.vip, f.vport, f.client, f.cport, out.src, out.dst
            )
        });
    }
    v
}

/// ICMP error about a NAT flow: outer addresses, the quoted packet's
/// addresses, ports and checksums, and the ICMP checksum may change.
fn nat_icmp(m: &Model, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::NatIcmp);
    honest_length(&mut v, ip);
    let (_, out) = match rewritten(r) {
        Ok(x) => x,
        Err(e) => {
            v.fail(Inv::OutputMalformed, e);
            return v;
        }
    };
    let icmp = ip.l4();
    let mut fields = vec![0..12, if ip.v4 { ip.off + 10..ip.off + 20 } else { ip.off + 8..ip.off + 40 }];
    fields.push(icmp + 2..icmp + 4);
    let quoted = wire::ip_at(r.input, icmp + 8, if ip.v4 { wire::ETH_IP } else { wire::ETH_IPV6 });
    if let Some(q) = quoted.filter(|q| q.hdr_len >= 20) {
        fields.extend(l34_fields(&q).into_iter().skip(1));
    }
    only_fields(&mut v, r, ip, &fields);
    same_sums(&mut v, wire::sums(r.input, ip), wire::sums(r.output, &out));
    let qout = wire::ip_at(r.output, icmp + 8, if ip.v4 { wire::ETH_IP } else { wire::ETH_IPV6 });
    let ok = m.nat_vip_addr(out.src) && qout.is_some_and(|q| q.dst == out.src && q.src == out.dst);
    v.require(ok, Inv::NatReturnAddr, || {
        format!("error {} -> {} quoting {:?}", out.src, out.dst, qout.map(|q| (q.src, q.dst)))
    });
    v
}

fn tunnel(m: &Model, vip: &Vip, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::Tunnel);
    honest_length(&mut v, ip);
    let (ol2, out) = match rewritten(r) {
        Ok(x) => x,
        Err(e) => {
            v.fail(Inv::OutputMalformed, e);
            return v;
        }
    };
    let (version, proto) = if ip.v4 { (4, P_IPIP) } else { (6, P_IPV6) };
    let header_ok = ol2.len == 14
        && out.v4 == ip.v4
        && out.version == version
        && out.hdr_len == if ip.v4 { 20 } else { 40 }
        && out.proto == proto
        && Some(out.src) == vip.source
        && vip.has_backend(out.dst)
        && vip.has_backend_mac(&r.output[..6])
        && (!out.v4 || wire::ones_sum(&[&r.output[14..34]]) == 0xffff);
    v.require(header_ok, Inv::TunnelOuterHeader, || {
        format!(
            "{}: outer {} -> {} proto {} version {} l2 {}",
            vip.name, out.src, out.dst, out.proto, out.version, ol2.len
        )
    });
    let after_l2 = r.output.len() - ol2.len;
    v.require(out.declared == after_l2, Inv::TunnelOuterLen, || {
        format!("outer length {} but {after_l2} bytes follow the L2 header", out.declared)
    });
    v.require(out.declared.max(after_l2) <= m.mtu, Inv::TunnelMtu, || {
        format!("outer length {}, {after_l2} bytes after L2, MTU {}", out.declared, m.mtu)
    });
    let sent = &r.input[ip.off..ip.end()];
    let inner = &r.output[(ol2.len + out.hdr_len).min(r.output.len())..];
    v.require(inner.starts_with(sent), Inv::TunnelInner, || {
        format!("inner {} bytes, the client's packet {} bytes: {}", inner.len(), sent.len(), first_diff(sent, inner))
    });
    v
}

/// Too big means: an honest datagram to a tunnel VIP that asks for ICMP,
/// above the MTU once the outer header is added.
fn too_big_warranted(m: &Model, r: &Run, v: &mut Verdict) {
    let Some((_, ip)) = wire::ip(r.input) else {
        v.fail(Inv::TooBigUnwarranted, "input has no IP header");
        return;
    };
    let vip = ip.ports(r.input).and_then(|(_, dport)| m.vip_for(ip.dst, dport, ip.proto));
    let asks = vip.is_some_and(|v| v.mode == Mode::Tunnel && v.icmp_too_big);
    let outer = if ip.v4 { 20 } else { 40 };
    let big = ip.length() != Length::Lies && ip.declared + outer > m.mtu;
    v.require(asks && big, Inv::TooBigUnwarranted, || {
        format!(
            "to {:?}: IP length {} ({:?}), {} bytes after L2, MTU {}",
            vip.map(|v| &v.name),
            ip.declared,
            ip.length(),
            ip.avail,
            m.mtu
        )
    });
}

fn arp_reply(r: &Run) -> Verdict {
    let mut v = Verdict::new(Outcome::ArpReply);
    v.require(r.output.len() <= r.input.len(), Inv::FreshLarger, || {
        format!("{} -> {} bytes", r.input.len(), r.output.len())
    });
    let ok = wire::l2(r.output).is_some_and(|l| {
        l.ethertype == wire::ETH_ARP && r.output.len() >= l.len + 28 && wire::be16(r.output, l.len + 6) == 2
    });
    v.require(ok, Inv::FreshMalformed, || "not an ARP reply".into());
    v
}

/// A frame the program built: the IP header well-formed, its length the
/// frame's, every checksum valid, no larger than what caused it.
fn fresh(r: &Run, outcome: Outcome, exact_len: bool) -> Verdict {
    let mut v = Verdict::new(outcome);
    v.require(r.output.len() <= r.input.len(), Inv::FreshLarger, || {
        format!("{} -> {} bytes", r.input.len(), r.output.len())
    });
    let Some((_, ip)) = wire::ip(r.output) else {
        v.fail(Inv::FreshMalformed, "no IP header");
        return v;
    };
    let want_proto = match outcome {
        Outcome::Challenge => P_TCP,
        _ if ip.v4 => P_ICMP,
        _ => P_ICMPV6,
    };
    let len = ip.length();
    let ok = ip.version == if ip.v4 { 4 } else { 6 }
        && (!ip.v4 || ip.hdr_len == 20)
        && ip.proto == want_proto
        && (len == Length::Exact || (len == Length::Padded && !exact_len));
    v.require(ok, Inv::FreshMalformed, || {
        format!(
            "version {} header {} proto {} length {} of {} ({len:?})",
            ip.version, ip.hdr_len, ip.proto, ip.declared, ip.avail
        )
    });
    let s = wire::sums(r.output, &ip);
    let sums_ok = s.ip != Some(false) && s.l4 == Some(true);
    v.require(sums_ok, Inv::FreshChecksum, || format!("{s:?}"));
    v
}

/// The NAT flow a valid client packet opened, read from what the forward
/// path sent (the fuzzer then aims replies and errors at it).
pub fn observed_flow(m: &Model, input: &[u8], output: &[u8]) -> Option<NatFlow> {
    let (_, i) = wire::ip(input)?;
    let (_, o) = wire::ip(output)?;
    let (cport, vport) = i.ports(input)?;
    let (sport, bport) = o.ports(output)?;
    m.vip_for(i.dst, vport, i.proto).filter(|v| v.mode == Mode::Nat)?;
    Some(NatFlow {
        proto: i.proto,
        client: i.src,
        cport,
        client_mac: input[6..12].try_into().unwrap(),
        vip: i.dst,
        vport,
        backend: o.dst,
        bport,
        snat: o.src,
        sport,
        sent: output[o.off..o.end().min(o.off + o.hdr_len + 40)].to_vec(),
    })
}

/// An echo request to a VIP answered in its own frame: same length, the
/// addresses swapped, type 0 / 129, identifier, sequence and data as they
/// were, the ICMP checksum valid iff the request's was.
fn echo_reply(m: &Model, r: &Run, ip: &Ip) -> Verdict {
    let mut v = Verdict::new(Outcome::EchoReply);
    honest_length(&mut v, ip);
    v.require(m.vips.iter().any(|x| x.addr == ip.dst), Inv::UnexplainedRewrite, || format!("echo to {}: no VIP", ip.dst));
    v.require(r.output.len() <= r.input.len(), Inv::FreshLarger, || {
        format!("{} -> {} bytes", r.input.len(), r.output.len())
    });
    let (_, out) = match rewritten(r) {
        Ok(x) => x,
        Err(e) => {
            v.fail(Inv::FreshMalformed, e);
            return v;
        }
    };
    let (req, rep) = if ip.v4 { (8, 0) } else { (128, 129) };
    let (il4, ol4) = (ip.l4(), out.l4());
    let end = ip.end().min(r.input.len());
    let shape = out.src == ip.dst
        && out.dst == ip.src
        && out.proto == ip.proto
        && out.declared == ip.declared
        && r.input.get(il4) == Some(&req)
        && r.output.get(ol4) == Some(&rep)
        && r.output.get(ol4 + 4..ol4 + (end - il4)) == r.input.get(il4 + 4..end);
    v.require(shape, Inv::FreshMalformed, || {
        format!("{} -> {} proto {} type {:?}", out.src, out.dst, out.proto, r.output.get(ol4))
    });
    same_sums(&mut v, wire::sums(r.input, ip), wire::sums(r.output, &out));
    v
}

/// An ICMP error to a DSR or tunnel VIP, quoting the backend's reply (VIP
/// -> client): sent to a backend of that VIP as client packets are (DSR:
/// MACs only; tunnel: wrapped whole).
fn icmp_to_backend(m: &Model, r: &Run, ip: &Ip) -> Verdict {
    let q = ip.l4() + 8;
    let quoted = r.input.get(q).map(|b| b >> 4);
    let (qhl, qproto) = match quoted {
        Some(4) => (usize::from(r.input[q] & 0x0f) * 4, r.input.get(q + 9).copied()),
        Some(6) => (40, r.input.get(q + 6).copied()),
        _ => (0, None),
    };
    let sport = r.input.get(q + qhl..q + qhl + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let vip = match (qproto, sport) {
        (Some(p), Some(sp)) => m.vip_for(ip.dst, sp, p),
        _ => None,
    };
    let mut v = match vip {
        Some(vip) if vip.mode == Mode::Dsr => dsr(vip, r, ip),
        Some(vip) if vip.mode == Mode::Tunnel => tunnel(m, vip, r, ip),
        _ => {
            let mut v = Verdict::new(Outcome::IcmpToBackend);
            v.fail(Inv::UnexplainedRewrite, format!("ICMP to {} quoting port {sport:?}: no DSR or tunnel VIP", ip.dst));
            v
        }
    };
    v.outcome = Outcome::IcmpToBackend;
    v
}
