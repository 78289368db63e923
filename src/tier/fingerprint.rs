//! A fingerprint of everything that decides a new flow's backend, so that
//! the nodes of a tier (same config, behind ECMP) can see that they agree:
//! the Maglev table size, the flow hash's constants, and per VIP, in the
//! order of the VIP keys (address, port, protocol), its scheduler, its mode
//! and the table its scheduler reads, written in backend identities
//! (address and port), never in internal ids: those follow the order of the
//! config file and the reload history, which differ between nodes.
//!
//! Two of them:
//! - `config`: the tables as planned with every backend up. Nodes given the
//!   same config agree, whatever the order of its VIPs and backends; a
//!   change of a weight, a backend, `table_size` or a scheduler changes it.
//! - `live`: the tables the data plane uses now, read back from its maps
//!   (`live`), or computed from what the core thread wrote (`live_of_plan`,
//!   what `weir run` shows: no walk of the kernel's tables on that thread):
//!   backends down (failing checks, unresolved) are out of them, and entries
//!   of backends no longer active count as empty. With every backend up it
//!   equals `config`.
//!
//! Only the table a VIP's scheduler reads goes in: the Maglev table for
//! maglev and source-hash, the sequence for round-robin (whose cursor is
//! each node's own, so round-robin VIPs never agree flow by flow). A
//! backend with weight 0, or weights scaled alike, change no table and so
//! no fingerprint: they change no decision either.
//!
//! The value is FNV-1a 64 over a canonical encoding (see `combine` and
//! `vip_digest`), shown as 16 hex digits. Fixed: changing the encoding
//! changes every node's value at once, which an upgrade of the whole tier
//! tolerates.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::Result;

use crate::dataplane::Dataplane;
use crate::mapio::words_addr;
use crate::plan::Plan;
use crate::skel::{weir_backend_flags, weir_sched, HASH_SEED, NO_BACKEND};

/// A stable 64-bit fingerprint, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub u64);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A backend as a table names it: its address and port (0: the VIP's).
type Identity = (IpAddr, u16);

/// The fingerprint of a plan with every backend up.
pub fn config(plan: &Plan) -> Fingerprint {
    let vips = plan
        .vips
        .iter()
        .map(|v| {
            let sched = v.sched as u8;
            let ids = if is_rr(sched) { &v.rr } else { &v.ring };
            let who: BTreeMap<u32, Option<Identity>> =
                v.backends.iter().map(|b| (b.id, Some((b.addr, b.port.unwrap_or(0))))).collect();
            (v.addr, v.port, v.proto.number(), vip_digest(sched, v.mode as u8, ids, &who))
        })
        .collect();
    Fingerprint(combine(plan.table_size, vips))
}

/// Per VIP id: the down backends its digest was computed without, and the
/// digest (`live_of_plan`'s cache; cleared when the plan changes).
pub type PlanCache = BTreeMap<u32, (Vec<u32>, u64)>;

/// The live fingerprint computed from the tables the core thread writes
/// (`plan::tables` without the backends in `down`), not read back from the
/// kernel: a VIP with no backend down costs nothing, one with some down a
/// table build, once per down set (`cache`). Equal to `live` while the
/// data plane holds what the core wrote (tests/consistency.rs checks it).
pub fn live_of_plan(plan: &Plan, down: &BTreeSet<u32>, cache: &mut PlanCache) -> Fingerprint {
    let vips = plan
        .vips
        .iter()
        .map(|v| {
            let sched = v.sched as u8;
            let mine: Vec<u32> = v.backends.iter().map(|b| b.id).filter(|id| down.contains(id)).collect();
            let who: BTreeMap<u32, Option<Identity>> = v
                .backends
                .iter()
                .map(|b| (b.id, (!down.contains(&b.id)).then_some((b.addr, b.port.unwrap_or(0)))))
                .collect();
            let digest = if mine.is_empty() {
                vip_digest(sched, v.mode as u8, if is_rr(sched) { &v.rr } else { &v.ring }, &who)
            } else if let Some((_, d)) = cache.get(&v.id).filter(|(set, _)| *set == mine) {
                *d
            } else {
                let (ring, rr, _) = crate::plan::tables(&v.backends, plan.table_size, down);
                let d = vip_digest(sched, v.mode as u8, if is_rr(sched) { &rr } else { &ring }, &who);
                cache.insert(v.id, (mine, d));
                d
            };
            (v.addr, v.port, v.proto.number(), digest)
        })
        .collect();
    Fingerprint(combine(plan.table_size, vips))
}

fn is_rr(sched: u8) -> bool {
    u32::from(sched) == weir_sched::WEIR_SCHED_ROUND_ROBIN.0
}

/// What `live` keeps between calls: per VIP, the digest of its table as
/// read from a block, valid while the block is not written again and its
/// backends' entries say the same.
#[derive(Debug, Default)]
pub struct LiveCache {
    vips: BTreeMap<u32, CachedVip>,
}

#[derive(Debug)]
struct CachedVip {
    /// (half, `Dataplane::block_written` of it, scheduler, mode, rr_len)
    block: (u32, u64, u8, u8, u16),
    who: BTreeMap<u32, Option<Identity>>,
    digest: u64,
}

/// The fingerprint of the tables the data plane uses now: every VIP entry
/// of its maps, the live half of each VIP's table, and the backend entries
/// that table names. A VIP's table is read again (a batched read, some
/// 20 ms for 65,537 slots) only when this data plane wrote its block since
/// the last call: after a health change, only that VIP's.
pub fn live(dp: &Dataplane, cache: &mut LiveCache) -> Result<Fingerprint> {
    let mut vips = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, meta) in dp.vip_entries()? {
        seen.insert(meta.vip_id);
        let half = meta.half & 1;
        let block = dp.block_written(meta.vip_id, half).map(|w| (half, w, meta.sched, meta.mode, meta.rr_len));
        let mut digest = None;
        if let Some(c) = cache.vips.get(&meta.vip_id).filter(|c| Some(c.block) == block) {
            if identities(dp, c.who.keys().copied())? == c.who {
                digest = Some(c.digest);
            }
        }
        let digest = match digest {
            Some(d) => d,
            None => {
                let ids = if is_rr(meta.sched) { dp.live_rr(&meta)? } else { dp.live_ring(&meta)? };
                let who = identities(dp, ids.iter().copied())?;
                let d = vip_digest(meta.sched, meta.mode, &ids, &who);
                match block {
                    Some(block) => cache.vips.insert(meta.vip_id, CachedVip { block, who, digest: d }),
                    None => cache.vips.remove(&meta.vip_id),
                };
                d
            }
        };
        vips.push((words_addr(&key.addr, key.family), u16::from_be(key.port), key.proto, digest));
    }
    cache.vips.retain(|id, _| seen.contains(id));
    Ok(Fingerprint(combine(dp.settings.ring_size, vips)))
}

/// Who each of `ids` is in the data plane: an active backend's address and
/// port, or None (the program drops a new flow there).
fn identities(dp: &Dataplane, ids: impl Iterator<Item = u32>) -> Result<BTreeMap<u32, Option<Identity>>> {
    let active = weir_backend_flags::WEIR_BACKEND_ACTIVE.0 as u8;
    let mut who = BTreeMap::new();
    for id in ids {
        if who.contains_key(&id) {
            continue;
        }
        let be = if id == NO_BACKEND { None } else { dp.backend_entry(id)? };
        let ident = be.filter(|b| b.flags & active != 0).map(|b| (words_addr(&b.addr, b.family), u16::from_be(b.port)));
        who.insert(id, ident);
    }
    Ok(who)
}

/// JHASH_INITVAL of bpf/jhash.h: the flow hash's other constant.
const JHASH_INITVAL: u32 = 0xdead_beef;

/// FNV-1a, 64 bits, fed as it goes.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) -> &mut Fnv {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    fn u32(&mut self, v: u32) -> &mut Fnv {
        self.bytes(&v.to_le_bytes())
    }
    /// Family (4 or 6) and 16 address bytes, IPv4 zero-padded.
    fn addr(&mut self, a: IpAddr) -> &mut Fnv {
        self.bytes(&addr_bytes(a))
    }
}

fn addr_bytes(a: IpAddr) -> [u8; 17] {
    let mut k = [0u8; 17];
    match a {
        IpAddr::V4(v) => {
            k[0] = 4;
            k[1..5].copy_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            k[0] = 6;
            k[1..].copy_from_slice(&v.octets());
        }
    }
    k
}

/// One VIP's digest: FNV-1a 64 over, integers little-endian, its scheduler
/// and mode (u8 each, weir.h's numbers); the backends its table names,
/// sorted: count (u32), then family (u8: 4 or 6), address (16 bytes, IPv4
/// zero-padded) and port (u16) each; its table: length (u32), then each
/// entry as the index of its backend in that list (u32; u32::MAX: empty).
fn vip_digest(sched: u8, mode: u8, ids: &[u32], who: &BTreeMap<u32, Option<Identity>>) -> u64 {
    // Dense: backend ids are below WEIR_MAX_BACKENDS; others are nobody.
    let n = crate::skel::MAX_BACKENDS as usize;
    let mut used = vec![false; n];
    for id in ids {
        if let Some(u) = used.get_mut(*id as usize) {
            *u = true;
        }
    }
    let key = |(a, p): &Identity| (addr_bytes(*a), *p);
    let mut idents: Vec<Identity> =
        who.iter().filter(|(id, _)| used.get(**id as usize) == Some(&true)).filter_map(|(_, w)| *w).collect();
    idents.sort_by_key(key);
    idents.dedup();
    let mut index = vec![u32::MAX; n];
    for (id, w) in who {
        if let (Some(slot), Some(w)) = (index.get_mut(*id as usize), w) {
            *slot = idents.binary_search_by_key(&key(w), key).map(|i| i as u32).unwrap_or(u32::MAX);
        }
    }
    let mut h = Fnv::new();
    h.bytes(&[sched, mode]).u32(idents.len() as u32);
    for (a, p) in &idents {
        h.addr(*a).bytes(&p.to_le_bytes());
    }
    h.u32(ids.len() as u32);
    for id in ids {
        h.u32(index.get(*id as usize).copied().unwrap_or(u32::MAX));
    }
    h.0
}

/// The fingerprint: FNV-1a 64 over, integers little-endian,
/// "weir-fingerprint-1", the flow hash's seed and JHASH_INITVAL (u32),
/// table_size (u32), the VIP count (u32); then per VIP, ordered by key
/// (address, port, protocol): family (u8) and address (16 bytes), port
/// (u16), protocol (u8), and its digest (u64, `vip_digest`).
fn combine(table_size: u32, mut vips: Vec<(IpAddr, u16, u8, u64)>) -> u64 {
    vips.sort_by_key(|(a, port, proto, _)| (addr_bytes(*a), *port, *proto));
    let mut h = Fnv::new();
    h.bytes(b"weir-fingerprint-1").u32(HASH_SEED).u32(JHASH_INITVAL).u32(table_size).u32(vips.len() as u32);
    for (a, port, proto, digest) in &vips {
        h.addr(*a).bytes(&port.to_le_bytes()).bytes(&[*proto]).bytes(&digest.to_le_bytes());
    }
    h.0
}

/// FNV-1a, 64 bits, of `bytes`.
#[cfg(test)]
fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv::new().bytes(bytes).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
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
weight = 2
[[vip.backend]]
address = "10.62.0.23"
mac = "02:00:00:00:00:17"

[[vip]]
name = "dns6"
address = "2001:db8::53"
port = 53
protocol = "udp"
scheduler = "source-hash"
[[vip.backend]]
address = "2001:db8::1"
mac = "02:00:00:00:06:01"
[[vip.backend]]
address = "2001:db8::2"
mac = "02:00:00:00:06:02"

[[vip]]
name = "rr"
address = "198.18.1.2"
port = 443
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "10.62.0.31"
mac = "02:00:00:00:00:1f"
weight = 3
[[vip.backend]]
address = "10.62.0.32"
mac = "02:00:00:00:00:20"
"#;

    fn fp(toml: &str) -> Fingerprint {
        config(&Plan::build(&Config::from_toml(toml).expect("valid test config")).expect("plan"))
    }

    /// `BASE` with its VIP blocks, and the backends within each, in reverse
    /// order: other ids for everything, the same tables.
    fn reordered() -> String {
        let (head, rest) = BASE.split_at(BASE.find("[[vip]]").unwrap());
        let mut vips: Vec<String> = rest
            .split("[[vip]]")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let mut parts: Vec<&str> = b.split("[[vip.backend]]").collect();
                let vip = parts.remove(0);
                parts.reverse();
                format!("[[vip]]{vip}{}", parts.iter().map(|p| format!("[[vip.backend]]{p}")).collect::<String>())
            })
            .collect();
        vips.reverse();
        format!("{head}{}", vips.concat())
    }

    #[test]
    fn the_same_config_in_another_order_gives_the_same_fingerprint() {
        let r = reordered();
        assert_ne!(r, BASE);
        let (a, b) = (Plan::build(&Config::from_toml(BASE).unwrap()).unwrap(), Plan::build(&Config::from_toml(&r).unwrap()).unwrap());
        assert_ne!(a.vips[0].addr, b.vips[0].addr, "VIPs are in another order");
        assert_ne!(a.vips[0].backends[0].id, b.vips[2].backends[0].id, "and carry other ids");
        assert_eq!(config(&a), config(&b), "reordered:\n{r}");
        // Names are labels, not decisions.
        assert_eq!(fp(BASE), fp(&BASE.replace("name = \"web\"", "name = \"www\"")));
        // The same plan twice (two nodes): the same value.
        assert_eq!(fp(BASE), fp(BASE));
        assert_eq!(fp(BASE).to_string().len(), 16);
    }

    #[test]
    fn ids_from_a_reload_history_do_not_matter() {
        let cfg = Config::from_toml(BASE).unwrap();
        let fresh = Plan::build(&cfg).unwrap();
        let other = Config::from_toml(&BASE.replace("10.62.0.21", "10.62.0.99")).unwrap();
        let after = Plan::build_after(&cfg, Some(&Plan::build(&other).unwrap())).unwrap();
        assert_ne!(
            fresh.vips[0].backends.iter().map(|b| b.id).collect::<Vec<_>>(),
            after.vips[0].backends.iter().map(|b| b.id).collect::<Vec<_>>()
        );
        assert_eq!(config(&fresh), config(&after));
    }

    #[test]
    fn every_change_that_moves_flows_changes_it() {
        let base = fp(BASE);
        let changed = [
            ("a weight", BASE.replacen("weight = 2", "weight = 3", 1)),
            ("a round-robin weight", BASE.replace("weight = 3", "weight = 2")),
            ("a backend address", BASE.replace("10.62.0.23", "10.62.0.24")),
            (
                "a backend added",
                BASE.replace("[[vip]]\nname = \"dns6\"", "[[vip.backend]]\naddress = \"10.62.0.24\"\n[[vip]]\nname = \"dns6\""),
            ),
            ("table_size", BASE.replace("table_size = 251", "table_size = 257")),
            ("a scheduler", BASE.replace("scheduler = \"source-hash\"", "scheduler = \"maglev\"")),
            ("a VIP port", BASE.replace("port = 443", "port = 444")),
            ("a protocol", BASE.replace("port = 53\nprotocol = \"udp\"", "port = 53\nprotocol = \"tcp\"")),
        ];
        for (what, toml) in &changed {
            assert_ne!(fp(toml), base, "{what} changed, the fingerprint did not");
        }
        // A NAT backend's port is part of its identity.
        let nat = |p: u16| {
            format!(
                "[[vip]]\naddress = \"198.18.1.3\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\nsource_address = \"198.18.1.9\"\n\
                 [[vip.backend]]\naddress = \"10.62.0.41\"\nport = {p}\nmac = \"02:00:00:00:00:29\"\n"
            )
        };
        assert_ne!(fp(&nat(8080)), fp(&nat(8081)));
    }

    #[test]
    fn a_down_backend_is_the_same_as_a_drained_one() {
        // What `live` sees with backend .22 down: the tables without it.
        let plan = Plan::build(&Config::from_toml(BASE).unwrap()).unwrap();
        let mut down = plan.clone();
        let web = &mut down.vips[0];
        let gone: BTreeSet<u32> = [web.backends[1].id].into_iter().collect();
        let (ring, rr, _) = crate::plan::tables(&web.backends, plan.table_size, &gone);
        (web.ring, web.rr) = (ring, rr);
        let drained = fp(&BASE.replacen("weight = 2", "weight = 0", 1));
        assert_eq!(config(&down), drained);
        assert_ne!(config(&down), config(&plan));
    }

    #[test]
    fn fnv_is_the_reference_fnv1a() {
        // Test vectors of the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
