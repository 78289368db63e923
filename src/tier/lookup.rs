//! `weir lookup`: which backend a client's 5-tuple goes to on this node,
//! and why. `live` answers from a running data plane's maps the way
//! lb.bpf.c decides (VIP, tracked flow, then the scheduler), by key lookups
//! only; `offline` answers from a plan with every backend up, so that an
//! operator can compare a node with its config. The hashes are bpf/sched.h's
//! and bpf/jhash.h's, bit for bit (tests/consistency.rs runs both side by side).

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Mode, Protocol, Scheduler};
use crate::dataplane::Dataplane;
use crate::mapio::{addr_words, words_addr};
use crate::plan::{fmt_addr, Plan};
use crate::skel::{
    weir_backend_flags, weir_fwd_mode, weir_nat_state, weir_sched, Backend, FlowKey, HASH_SEED, NO_BACKEND,
};

/// A client's packet to look up: protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub proto: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Tuple {
    /// From the command line's words: `tcp|udp`, `ADDR:PORT` twice (IPv6
    /// as `[ADDR]:PORT`).
    pub fn parse(proto: &str, src: &str, dst: &str) -> Result<Tuple> {
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => bail!("protocol '{}': give tcp or udp", proto.escape_debug()),
        };
        let addr = |what: &str, s: &str| -> Result<SocketAddr> {
            s.parse().with_context(|| {
                format!("{what} '{}' is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT, e.g. [2001:db8::1]:443)", s.escape_debug())
            })
        };
        let (src, dst) = (addr("source", src)?, addr("destination", dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            bail!("source {src} and destination {dst} are of different address families: give two IPv4 or two IPv6 addresses");
        }
        Ok(Tuple { proto, src, dst })
    }

    /// `parse` of the three words `Display` writes (the control socket's form).
    pub fn parse_words(s: &str) -> Result<Tuple> {
        let w: Vec<&str> = s.split_whitespace().collect();
        let [proto, src, dst] = w[..] else { bail!("lookup takes PROTO SRC:PORT DST:PORT") };
        Tuple::parse(proto, src, dst)
    }

    /// The flow key the program builds for this packet (bpf/parse.h).
    pub fn key(&self) -> FlowKey {
        let (src, family) = addr_words(self.src.ip());
        let (dst, _) = addr_words(self.dst.ip());
        FlowKey {
            src,
            dst,
            sport: self.src.port().to_be(),
            dport: self.dst.port().to_be(),
            proto: self.proto.number(),
            family,
            pad: 0,
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.proto, self.src, self.dst)
    }
}

// ------------------------------------------- the hashes, as bpf/ has them ---

/// JHASH_INITVAL (bpf/jhash.h).
const JHASH_INITVAL: u32 = 0xdead_beef;

/// __jhash_final of bpf/jhash.h (lookup3's final mix): c.
fn jhash_final(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

fn jhash_nwords(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    jhash_final(a.wrapping_add(initval), b.wrapping_add(initval), c.wrapping_add(initval))
}

pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    jhash_nwords(a, b, c, initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2))
}

pub fn jhash_1word(a: u32, initval: u32) -> u32 {
    jhash_nwords(a, 0, 0, initval.wrapping_add(JHASH_INITVAL).wrapping_add(1 << 2))
}

/// bpf/sched.h flow_hash: the Maglev scheduler's hash of a flow key.
pub fn flow_hash(k: &FlowKey) -> u32 {
    let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
    let seed = HASH_SEED ^ u32::from(k.proto);
    if k.family == crate::skel::FAMILY_V4 {
        return jhash_3words(k.src[0], k.dst[0], ports, seed);
    }
    let h = jhash_3words(k.src[0], k.src[1], k.src[2], seed);
    jhash_3words(k.src[3], k.dst[0] ^ k.dst[1] ^ k.dst[2] ^ k.dst[3], ports, h)
}

/// bpf/sched.h source_hash: the source-hash scheduler's hash (the client's
/// address only).
pub fn source_hash(k: &FlowKey) -> u32 {
    if k.family == crate::skel::FAMILY_V4 {
        return jhash_1word(k.src[0], HASH_SEED);
    }
    let h = jhash_3words(k.src[0], k.src[1], k.src[2], HASH_SEED);
    jhash_1word(k.src[3], h)
}

// ------------------------------------------------------------ the answer ---

/// The VIP a packet hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRef {
    pub name: String,
    pub address: String,
    /// 0: every port of the address.
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    pub mode: String,
}

/// Why the packet goes where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Why {
    /// Not a VIP: the kernel gets it.
    NotVip,
    /// Not a VIP: a backend's reply of a live NAT flow, translated back to
    /// its client (`client`, ADDR:PORT).
    NatReply { client: String },
    /// A tracked DSR or tunnel flow, in `table` (flows4 / flows6, or
    /// syn_flows4 / syn_flows6 while its handshake is in progress).
    Tracked { table: String },
    /// A live NAT flow (nat_fwd, confirmed by its reverse entry).
    NatTracked { snat_port: u16 },
    /// Not tracked: the scheduler's slot (maglev or source-hash).
    /// `rescheduled`: a flow is tracked but stale (its backend left, or the
    /// NAT flow expired), so the next packet is scheduled anew.
    Slot { scheduler: String, hash: u32, slot: u32, table_size: u32, rescheduled: bool },
    /// Not tracked, round-robin: the next turn of the node's rotation
    /// (`cursor`: the instance's; None offline). `turns`: the sequence's length.
    RoundRobin { cursor: Option<u32>, turns: u32, rescheduled: bool },
}

/// `weir lookup`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub vip: Option<VipRef>,
    /// The backend's ADDR:PORT the packet is sent to; None: not balanced
    /// (not a VIP, a NAT reply), or dropped (no backend), or (round-robin,
    /// offline) up to the node's rotation.
    pub backend: Option<String>,
    pub why: Why,
    /// "instance": a running data plane's maps; "config": a plan with every
    /// backend up.
    pub from: String,
}

impl Answer {
    fn new(t: &Tuple, from: &str, vip: Option<VipRef>, backend: Option<SocketAddr>, why: Why) -> Answer {
        Answer {
            protocol: t.proto.to_string(),
            source: t.src.to_string(),
            destination: t.dst.to_string(),
            vip,
            backend: backend.map(|b| b.to_string()),
            why,
            from: from.into(),
        }
    }

    /// One line for people.
    pub fn text(&self) -> String {
        let vip = self.vip.as_ref().map(|v| {
            let port = if v.port == 0 { "*".to_string() } else { v.port.to_string() };
            let addr = v.address.parse().map(fmt_addr).unwrap_or_else(|_| v.address.clone());
            format!("VIP {} ({addr}:{port} {})", v.name, v.protocol)
        });
        let head = match (&self.why, &self.backend, &vip) {
            (Why::NotVip | Why::NatReply { .. }, _, _) | (_, _, None) => "not a VIP".into(),
            (_, Some(b), Some(v)) => format!("backend {b} of {v}"),
            (_, None, Some(v)) => v.clone(),
        };
        let nat_tcp = self.vip.as_ref().is_some_and(|v| v.mode == "nat") && self.protocol == "tcp";
        let why = match &self.why {
            Why::NotVip => "passed to the kernel".into(),
            Why::NatReply { client } => match &vip {
                Some(v) => format!("the reply of a NAT flow of {v} (nat_rev): translated back to client {client}"),
                None => format!("the reply of a NAT flow (nat_rev): translated back to client {client}"),
            },
            Why::Tracked { table } if table.starts_with("syn_flows") => format!("tracked flow ({table} table: handshake in progress)"),
            Why::Tracked { table } => format!("tracked flow ({table} table)"),
            Why::NatTracked { snat_port } => format!("NAT flow: tracked (nat_fwd), SNAT port {snat_port}"),
            Why::Slot { scheduler, slot, table_size, rescheduled, .. } => {
                let name = if scheduler == "maglev" { "Maglev" } else { scheduler.as_str() };
                if self.backend.is_none() {
                    format!("{name} slot {slot} of {table_size} is empty: a new flow would be dropped (no backend up)")
                } else if *rescheduled && nat_tcp {
                    format!("{name} slot {slot} of {table_size} (a stale tracked flow: a SYN would open a new one there)")
                } else if *rescheduled {
                    format!("{name} slot {slot} of {table_size} (a stale tracked flow: the next packet is rescheduled there)")
                } else if nat_tcp {
                    format!("{name} slot {slot} of {table_size} (not tracked: a SYN would open a flow there)")
                } else {
                    format!("{name} slot {slot} of {table_size} (not tracked: a new flow would go there)")
                }
            }
            Why::RoundRobin { cursor: Some(c), rescheduled, .. } if self.backend.is_some() => {
                let what = if *rescheduled { "a stale tracked flow" } else { "not tracked" };
                format!("round-robin: {what}; new flows take the next backend in rotation (cursor at {c})")
            }
            Why::RoundRobin { cursor: Some(_), .. } => "round-robin: no backend up: a new flow would be dropped".into(),
            Why::RoundRobin { cursor: None, turns, .. } => format!(
                "round-robin: not tracked; new flows take the next backend in each node's own rotation ({turns} turns): \
                 ask the instance (weir lookup --iface IFACE) for its cursor"
            ),
        };
        format!("{head}: {why}")
    }
}

fn vip_ref(name: String, addr: IpAddr, port: u16, proto: u8, sched: u8, mode: u8) -> VipRef {
    let scheduler = match u32::from(sched) {
        s if s == weir_sched::WEIR_SCHED_ROUND_ROBIN.0 => Scheduler::RoundRobin,
        s if s == weir_sched::WEIR_SCHED_SOURCE_HASH.0 => Scheduler::SourceHash,
        _ => Scheduler::Maglev,
    };
    let mode = match u32::from(mode) {
        m if m == weir_fwd_mode::WEIR_MODE_NAT.0 => Mode::Nat,
        m if m == weir_fwd_mode::WEIR_MODE_TUNNEL.0 => Mode::Tunnel,
        _ => Mode::Dsr,
    };
    let protocol = if proto == Protocol::Udp.number() { Protocol::Udp } else { Protocol::Tcp };
    VipRef {
        name,
        address: addr.to_string(),
        port,
        protocol: protocol.to_string(),
        scheduler: scheduler.to_string(),
        mode: mode.to_string(),
    }
}

/// Where a packet of `t` leaves for backend address `addr`: NAT rewrites
/// the port to the backend's (`port`, 0: the VIP's); DSR and tunnels keep it.
fn target(t: &Tuple, addr: IpAddr, port: u16, nat: bool) -> SocketAddr {
    SocketAddr::new(addr, if nat && port != 0 { port } else { t.dst.port() })
}

/// What a slot or turn of a table holds, as the program takes it: an
/// active backend's entry, or nothing (a new flow is dropped).
fn usable(dp: &Dataplane, id: u32) -> Result<Option<Backend>> {
    if id == NO_BACKEND {
        return Ok(None);
    }
    let active = weir_backend_flags::WEIR_BACKEND_ACTIVE.0 as u8;
    Ok(dp.backend_entry(id)?.filter(|b| b.flags & active != 0))
}

/// bpf/nat.h nat_live_at, with no margin.
fn nat_live(dp: &Dataplane, last_seen: u32, state: u8, proto: u8, now: u32) -> bool {
    if last_seen == u32::MAX {
        return false;
    }
    let [tcp, syn, fin, udp] = dp.settings.nat_timeouts;
    let timeout = if proto == Protocol::Udp.number() {
        udp
    } else if u32::from(state) == weir_nat_state::WEIR_NAT_ESTABLISHED.0 {
        tcp
    } else if u32::from(state) == weir_nat_state::WEIR_NAT_CLOSING.0 {
        fin
    } else {
        syn
    };
    (now.wrapping_sub(last_seen) as i32) <= timeout as i32
}

/// The answer of a running data plane: lb.bpf.c's decisions, read from its
/// maps by key (the VIP, the flow tables, one table slot, one backend).
/// `plan` only names the VIP.
pub fn live(dp: &Dataplane, plan: &Plan, t: &Tuple) -> Result<Answer> {
    let k = t.key();
    let from = "instance";
    let Some((vk, meta)) = dp.find_vip(&k)? else {
        return not_a_vip(dp, plan, t, &k);
    };
    let name = plan.vips.iter().find(|v| v.id == meta.vip_id).map(|v| v.name.clone());
    let vip = Some(vip_ref(
        name.unwrap_or_else(|| format!("vip[{}]", meta.vip_id)),
        words_addr(&vk.addr, vk.family),
        u16::from_be(vk.port),
        vk.proto,
        meta.sched,
        meta.mode,
    ));
    let nat = u32::from(meta.mode) == weir_fwd_mode::WEIR_MODE_NAT.0;
    let current = |b: &Backend, generation: u16| b.generation == generation;
    let mut rescheduled = false;
    if nat {
        if let Some(f) = dp.nat_fwd_entry(&k)? {
            rescheduled = true;
            if let Some(be) = usable(dp, f.backend_id)?.filter(|b| current(b, f.generation)) {
                let rk = FlowKey {
                    src: be.addr,
                    dst: f.source,
                    sport: f.dport,
                    dport: f.sport,
                    proto: k.proto,
                    family: k.family,
                    pad: 0,
                };
                let now = dp.nat_now()?;
                if let Some(r) = dp.nat_rev_entry(&rk)? {
                    if nat_live(dp, r.last_seen, r.state, k.proto, now)
                        && r.client_port == k.sport
                        && r.vip_port == k.dport
                        && r.client == k.src
                        && r.vip == k.dst
                    {
                        let b = target(t, words_addr(&be.addr, be.family), u16::from_be(f.dport), true);
                        return Ok(Answer::new(t, from, vip, Some(b), Why::NatTracked { snat_port: u16::from_be(f.sport) }));
                    }
                }
            }
        }
    } else if let Some((f, table)) = dp.tracked_flow(&k)? {
        rescheduled = true;
        if let Some(be) = usable(dp, f.backend_id)?.filter(|b| current(b, f.generation)) {
            let b = target(t, words_addr(&be.addr, be.family), 0, false);
            return Ok(Answer::new(t, from, vip, Some(b), Why::Tracked { table: table.into() }));
        }
    }
    let to = |be: Option<Backend>| be.map(|b| target(t, words_addr(&b.addr, b.family), u16::from_be(b.port), nat));
    let sched = u32::from(meta.sched);
    if sched == weir_sched::WEIR_SCHED_ROUND_ROBIN.0 {
        let cursor = dp.rr_cursor(meta.vip_id)?;
        let be = if meta.rr_len == 0 { None } else { usable(dp, dp.rr_entry(&meta, cursor % u32::from(meta.rr_len))?)? };
        let why = Why::RoundRobin { cursor: Some(cursor), turns: u32::from(meta.rr_len), rescheduled };
        return Ok(Answer::new(t, from, vip, to(be), why));
    }
    let (scheduler, hash) = if sched == weir_sched::WEIR_SCHED_SOURCE_HASH.0 {
        (Scheduler::SourceHash, source_hash(&k))
    } else {
        (Scheduler::Maglev, flow_hash(&k))
    };
    let table_size = dp.settings.ring_size;
    let slot = hash % table_size;
    let be = usable(dp, dp.ring_slot(&meta, slot)?)?;
    let why = Why::Slot { scheduler: scheduler.to_string(), hash, slot, table_size, rescheduled };
    Ok(Answer::new(t, from, vip, to(be), why))
}

/// Not a VIP: the reply of a live NAT flow (while some VIP is NAT), or the
/// kernel's.
fn not_a_vip(dp: &Dataplane, plan: &Plan, t: &Tuple, k: &FlowKey) -> Result<Answer> {
    if dp.nat_on()? {
        if let Some(r) = dp.nat_rev_entry(k)? {
            if nat_live(dp, r.last_seen, r.state, k.proto, dp.nat_now()?) {
                let family = k.family;
                let client = SocketAddr::new(words_addr(&r.client, family), u16::from_be(r.client_port));
                let vip = plan
                    .vips
                    .iter()
                    .find(|v| v.id == u32::from(r.vip_id))
                    .map(|v| vip_ref(v.name.clone(), v.addr, v.port, v.proto.number(), v.sched as u8, v.mode as u8));
                return Ok(Answer::new(t, "instance", vip, None, Why::NatReply { client: client.to_string() }));
            }
        }
    }
    Ok(Answer::new(t, "instance", None, None, Why::NotVip))
}

/// The answer of a plan with every backend up, without a data plane: the
/// VIP (its port, else the address's port 0), then the scheduler's slot in
/// the planned table. Nothing is tracked here.
pub fn offline(plan: &Plan, t: &Tuple) -> Answer {
    let from = "config";
    let proto = t.proto;
    let find = |port: u16| plan.vips.iter().find(|v| v.addr == t.dst.ip() && v.port == port && v.proto == proto);
    let Some(v) = find(t.dst.port()).or_else(|| find(0)) else {
        return Answer::new(t, from, None, None, Why::NotVip);
    };
    let vip = Some(vip_ref(v.name.clone(), v.addr, v.port, v.proto.number(), v.sched as u8, v.mode as u8));
    let nat = v.mode == Mode::Nat;
    let to = |id: u32| {
        v.backends.iter().find(|b| b.id == id).map(|b| target(t, b.addr, b.port.unwrap_or(0), nat))
    };
    let k = t.key();
    match v.sched {
        Scheduler::RoundRobin => {
            let why = Why::RoundRobin { cursor: None, turns: v.rr.len() as u32, rescheduled: false };
            Answer::new(t, from, vip, None, why)
        }
        s => {
            let hash = if s == Scheduler::SourceHash { source_hash(&k) } else { flow_hash(&k) };
            let slot = hash % plan.table_size;
            let be = v.ring.get(slot as usize).copied().and_then(to);
            let why = Why::Slot { scheduler: s.to_string(), hash, slot, table_size: plan.table_size, rescheduled: false };
            Answer::new(t, from, vip, be, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CFG: &str = r#"
[maglev]
table_size = 251

[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "10.62.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "10.62.0.22"
mac = "02:00:00:00:00:16"

[[vip]]
name = "any"
address = "198.18.1.2"
protocol = "udp"
scheduler = "round-robin"
[[vip.backend]]
address = "10.62.0.31"
mac = "02:00:00:00:00:1f"

[[vip]]
name = "nat6"
address = "2001:db8::80"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "2001:db8::9"
[[vip.backend]]
address = "2001:db8::41"
port = 8080
mac = "02:00:00:00:00:29"
"#;

    fn plan() -> Plan {
        Plan::build(&Config::from_toml(CFG).unwrap()).unwrap()
    }

    #[test]
    fn tuples_parse_and_refuse_with_the_reason() {
        let t = Tuple::parse("TCP", "10.1.2.3:4000", "198.18.1.1:80").unwrap();
        assert_eq!(t.to_string(), "tcp 10.1.2.3:4000 198.18.1.1:80");
        assert_eq!(Tuple::parse_words(&t.to_string()).unwrap(), t);
        let t6 = Tuple::parse("udp", "[2001:db8::7]:5353", "[2001:db8::80]:53").unwrap();
        assert_eq!(t6.to_string(), "udp [2001:db8::7]:5353 [2001:db8::80]:53");
        let k = t6.key();
        assert_eq!((k.family, u16::from_be(k.sport), u16::from_be(k.dport)), (6, 5353, 53));
        let e = |r: Result<Tuple>| format!("{:#}", r.unwrap_err());
        assert!(e(Tuple::parse("icmp", "10.1.2.3:1", "10.1.2.4:2")).contains("give tcp or udp"));
        assert!(e(Tuple::parse("tcp", "2001:db8::7:80", "[2001:db8::80]:53")).contains("IPv6 as [ADDRESS]:PORT"));
        assert!(e(Tuple::parse("tcp", "10.1.2.3:1", "[2001:db8::80]:53")).contains("different address families"));
        assert!(e(Tuple::parse_words("tcp 10.1.2.3:1")).contains("PROTO SRC:PORT DST:PORT"));
    }

    #[test]
    fn jhash_matches_bpf_jhash_h() {
        // Values of bpf/jhash.h compiled for the host (gcc -O2); the BPF
        // program itself is checked against this code in tests/consistency.rs.
        assert_eq!(jhash_3words(0, 0, 0, 0), 0x1b68_e557);
        assert_eq!(jhash_3words(1, 2, 3, 0x5745), 0x6cb4_2c42);
        assert_eq!(jhash_3words(0xdead_beef, 0x0102_0304, 0xffff_ffff, 0x5745 ^ 6), 0xd4f9_31eb);
        assert_eq!(jhash_1word(0, 0), 0x0493_96b8);
        assert_eq!(jhash_1word(0x0302_a8c0, 0x5745), 0xa62f_ebb6);
    }

    #[test]
    fn offline_lookup_follows_the_plan() {
        let p = plan();
        let t = Tuple::parse("tcp", "10.1.2.3:4000", "198.18.1.1:80").unwrap();
        let a = offline(&p, &t);
        let Why::Slot { slot, table_size, hash, .. } = a.why.clone() else { panic!("{a:?}") };
        assert_eq!((table_size, slot), (251, flow_hash(&t.key()) % 251));
        assert_eq!(hash, flow_hash(&t.key()));
        let web = &p.vips[0];
        let id = web.ring[slot as usize];
        let want = web.backends.iter().find(|b| b.id == id).unwrap().addr;
        assert_eq!(a.backend, Some(format!("{want}:80")));
        assert_eq!(
            a.text(),
            format!("backend {want}:80 of VIP web (198.18.1.1:80 tcp): Maglev slot {slot} of 251 (not tracked: a new flow would go there)")
        );
        // Another port of a port-0 VIP; round-robin has no backend offline.
        let rr = offline(&p, &Tuple::parse("udp", "10.1.2.3:4000", "198.18.1.2:9999").unwrap());
        assert_eq!(rr.vip.as_ref().unwrap().name, "any");
        assert!(rr.backend.is_none());
        assert!(rr.text().starts_with("VIP any (198.18.1.2:* udp): round-robin: not tracked"), "{}", rr.text());
        // NAT: the backend's own port.
        let n = offline(&p, &Tuple::parse("tcp", "[2001:db8::7]:4000", "[2001:db8::80]:80").unwrap());
        assert_eq!(n.backend.as_deref(), Some("[2001:db8::41]:8080"));
        assert!(n.text().contains("of VIP nat6 ([2001:db8::80]:80 tcp): Maglev slot"), "{}", n.text());
        assert!(n.text().ends_with("(not tracked: a SYN would open a flow there)"), "{}", n.text());
        // Not a VIP: another port, the other protocol.
        for t in [("tcp", "198.18.1.1:81"), ("udp", "198.18.1.1:80")] {
            let a = offline(&p, &Tuple::parse(t.0, "10.1.2.3:4000", t.1).unwrap());
            assert_eq!(a.why, Why::NotVip);
            assert_eq!(a.text(), "not a VIP: passed to the kernel");
        }
    }

    #[test]
    fn answers_survive_json() {
        let a = offline(&plan(), &Tuple::parse("tcp", "10.1.2.3:4000", "198.18.1.1:80").unwrap());
        let j = serde_json::to_string(&a).unwrap();
        assert!(j.contains("\"kind\":\"slot\""), "{j}");
        assert_eq!(serde_json::from_str::<Answer>(&j).unwrap(), a);
    }
}
