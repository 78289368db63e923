//! A validated config turned into what the maps will hold: ids, resolved
//! MACs, Maglev and round-robin tables. Built without touching the kernel
//! maps, so `weir check` prints exactly what `weir run` would load.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::config::{format_mac, Config, Mode, Protocol, Scheduler};
use crate::maglev;
use crate::rr;
use crate::skel::NO_BACKEND;

#[derive(Debug, Clone)]
pub struct PlannedBackend {
    /// Index in the `backends` map and `backend_stats`.
    pub id: u32,
    pub addr: IpAddr,
    pub weight: u32,
    pub mac: Option<[u8; 6]>,
    pub iface: Option<String>,
    /// Slots of the VIP's Maglev table it owns.
    pub slots: u32,
    pub check: Option<crate::config::Check>,
    /// nat: the backend's port (None: the VIP's).
    pub port: Option<u16>,
    /// 802.1Q VLAN id its frames leave with; 0: untagged.
    pub vlan: u16,
}

#[derive(Debug, Clone)]
pub struct PlannedVip {
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub sched: Scheduler,
    pub mode: Mode,
    pub backends: Vec<PlannedBackend>,
    /// Backend ids, `table_size` long (NO_BACKEND when all weights are 0).
    pub ring: Vec<u32>,
    /// Backend ids in round-robin order.
    pub rr: Vec<u32>,
    pub shield: Option<crate::config::VipShield>,
    pub on_down: crate::config::OnDown,
    /// nat / tunnel: the configured source address (None: the interface's).
    pub source: Option<IpAddr>,
    /// nat: SNAT ports [first, last].
    pub source_ports: [u16; 2],
    /// tunnel: answer too-big packets with ICMP.
    pub icmp_too_big: bool,
    /// Answer ping to its address (README "ICMP and ping").
    pub icmp_echo: bool,
    /// Answer ARP / NDP for its address.
    pub arp: bool,
    /// 802.1Q VLAN id it is served on; 0: untagged frames only.
    pub vlan: u16,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub table_size: u32,
    pub conntrack_size: u32,
    /// conntrack.lru_per_cpu: the flow tables' LRU lists per CPU.
    pub lru_per_cpu: bool,
    pub vips: Vec<PlannedVip>,
    pub shield: Option<crate::config::Shield>,
    /// NAT idle timeouts, seconds: tcp, tcp_syn, tcp_fin, udp.
    pub nat_timeouts: [u32; 4],
    /// `[fragments]`: constants of the loaded program and the table's size.
    pub fragments: crate::config::Fragments,
    /// `[tier]`: announcing and flow sync.
    pub tier: crate::config::Tier,
    /// `health.datapath_source` (None: the interface's first IPv4 address).
    pub probe_source: Option<IpAddr>,
}

/// The identity Maglev hashes: the backend's address bytes.
fn identity(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

impl Plan {
    /// Some VIP uses full NAT (its tables are sized only then).
    pub fn uses_nat(&self) -> bool {
        self.vips.iter().any(|v| v.mode == Mode::Nat)
    }

    pub fn build(cfg: &Config) -> Result<Plan> {
        Plan::build_after(cfg, None)
    }

    /// A plan for `cfg` that keeps the ids `prev` gave to the same VIPs
    /// (address, port, protocol) and backends (VIP, address): the flow table
    /// and the counters refer to ids, so a reload must not shuffle them. New
    /// ones get ids that neither plan uses, so an id freed now is not reused
    /// until the next reload.
    pub fn build_after(cfg: &Config, prev: Option<&Plan>) -> Result<Plan> {
        cfg.validate()?;
        let m = cfg.maglev.table_size;
        let vkey = |v: &crate::config::Vip| (v.ip(), v.port, v.protocol);
        let mut used_vips: BTreeSet<u32> = prev.map(|p| p.vips.iter().map(|v| v.id).collect()).unwrap_or_default();
        let mut used_bes: BTreeSet<u32> = prev
            .map(|p| p.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.id)).collect())
            .unwrap_or_default();
        let prev_vip = |v: &crate::config::Vip| {
            prev.and_then(|p| p.vips.iter().find(|pv| (pv.addr, pv.port, pv.proto) == vkey(v)))
        };
        let fresh = |used: &mut BTreeSet<u32>, max: u32| -> Result<u32> {
            let id = (0..max).find(|i| !used.contains(i)).context("out of ids: reload once more, or restart weir")?;
            used.insert(id);
            Ok(id)
        };
        let mut vips = Vec::new();
        for (i, v) in cfg.vips.iter().enumerate() {
            let pv = prev_vip(v);
            let vip_id = match pv {
                Some(p) => p.id,
                None => fresh(&mut used_vips, crate::skel::MAX_VIPS)?,
            };
            let mut backends = Vec::new();
            for b in &v.backends {
                let id = match pv.and_then(|p| p.backends.iter().find(|pb| pb.addr == b.ip())) {
                    Some(pb) => pb.id,
                    None => fresh(&mut used_bes, crate::skel::MAX_BACKENDS)?,
                };
                backends.push({
                    PlannedBackend {
                        id,
                        addr: b.ip(),
                        weight: b.weight,
                        mac: b.mac(),
                        iface: b.iface.clone(),
                        slots: 0,
                        check: crate::config::HealthCheck::resolve(b.health.as_ref(), v.health.as_ref(), v.port),
                        port: b.port,
                        vlan: b.vlan.unwrap_or(0),
                    }
                });
            }
            let (ring, rr, slots) = tables(&backends, m, &BTreeSet::new());
            for (b, n) in backends.iter_mut().zip(slots) {
                b.slots = n;
            }
            vips.push(PlannedVip {
                id: vip_id,
                name: v.label(i),
                addr: v.ip(),
                port: v.port,
                proto: v.protocol,
                sched: v.scheduler,
                mode: v.mode,
                backends,
                ring,
                rr,
                shield: v.shield.clone(),
                on_down: v.on_down,
                source: v.source_ip(),
                source_ports: v.source_ports.unwrap_or(crate::config::DEFAULT_SOURCE_PORTS),
                icmp_too_big: v.icmp_too_big.unwrap_or(true),
                icmp_echo: v.icmp_echo.unwrap_or(true),
                arp: v.arp.unwrap_or(!cfg.tier.announce),
                vlan: v.vlan.unwrap_or(0),
            });
        }
        let ct = &cfg.conntrack;
        Ok(Plan {
            table_size: m,
            conntrack_size: ct.size,
            lru_per_cpu: ct.lru_per_cpu,
            vips,
            shield: cfg.shield.clone(),
            nat_timeouts: [ct.tcp_timeout, ct.tcp_syn_timeout, ct.tcp_fin_timeout, ct.udp_timeout],
            tier: cfg.tier.clone(),
            fragments: cfg.fragments.clone(),
            probe_source: cfg.health.datapath_source.as_deref().and_then(|s| s.parse().ok()),
        })
    }

    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|v| v.backends.len()).sum()
    }

    /// Human-readable plan, for `weir check` and `weir run`'s start-up log.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "maglev table: {} slots per VIP; conntrack: {} flows, LRU lists {}",
            self.table_size,
            self.conntrack_size,
            if self.lru_per_cpu { "per CPU (conntrack.lru_per_cpu)" } else { "shared by the CPUs" }
        );
        for v in &self.vips {
            let port = if v.port == 0 { "*".to_string() } else { v.port.to_string() };
            let _ = writeln!(
                s,
                "vip {} {}:{} {} scheduler={} mode={}",
                v.name,
                fmt_addr(v.addr),
                port,
                v.proto,
                v.sched,
                v.mode
            );
            let src = v.source.map(|a| a.to_string()).unwrap_or_else(|| "the interface's address".into());
            match v.mode {
                Mode::Nat => {
                    let _ = writeln!(s, "  nat: source {src}, ports {}-{}", v.source_ports[0], v.source_ports[1]);
                }
                Mode::Tunnel => {
                    let kind = if v.addr.is_ipv4() { "ipip" } else { "ip6ip6" };
                    let icmp = if v.icmp_too_big { "ICMP too-big on" } else { "ICMP too-big off" };
                    let _ = writeln!(s, "  tunnel: {kind} from {src}, {icmp}");
                }
                Mode::Dsr => {}
            }
            if !v.icmp_echo {
                let _ = writeln!(s, "  ping: not answered (icmp_echo = false)");
            }
            if v.vlan != 0 {
                let _ = writeln!(s, "  vlan: {} (frames tagged {} only; ARP/NDP answered on it)", v.vlan, v.vlan);
            }
            for b in &v.backends {
                let share = 100.0 * f64::from(b.slots) / f64::from(self.table_size);
                let mac = b.mac.map(|m| format_mac(&m)).unwrap_or_else(|| "(from neighbour table)".into());
                let via = b.iface.as_deref().map(|i| format!(" via {i}")).unwrap_or_default();
                let via = match b.port {
                    Some(p) => format!(" port {p}{via}"),
                    None => via,
                };
                let via = if b.vlan != 0 { format!("{via} vlan {}", b.vlan) } else { via };
                let via = match &b.check {
                    Some(c) => format!(
                        "{via}  check {}:{} every {} ms",
                        if c.kind == crate::config::CheckKind::Http { "http" } else { "tcp" },
                        c.port,
                        c.interval_ms
                    ),
                    None => via,
                };
                let _ = writeln!(
                    s,
                    "  backend {:<39} weight {:>5}  maglev {:>6} slots ({share:5.2}%)  mac {mac}{via}",
                    b.addr.to_string(),
                    b.weight,
                    b.slots
                );
            }
            if let Some(sh) = &self.shield {
                if v.proto == Protocol::Tcp {
                    let p = crate::shield::policy(sh, v.shield.as_ref());
                    if p.enabled == 1 {
                        let _ = writeln!(
                            s,
                            "  shield: {} SYN/s per source (burst {}), attack mode {:?} (on > {} SYN/s, off < {}){}",
                            1_000_000_000 / p.interval_ns.max(1),
                            p.burst_ns / p.interval_ns.max(1),
                            v.shield.as_ref().and_then(|o| o.attack).unwrap_or(sh.attack),
                            sh.attack_on,
                            sh.attack_off,
                            if sh.dry_run { ", dry run" } else { "" }
                        );
                    } else {
                        let _ = writeln!(s, "  shield: off for this VIP");
                    }
                }
            }
            if v.ring.first() == Some(&NO_BACKEND) {
                let _ = writeln!(s, "  warning: every backend has weight 0: new flows to this VIP are dropped");
            }
        }
        s
    }
}

/// A VIP's Maglev table and round-robin sequence (backend ids) with the
/// backends in `down` left out, and each backend's slot count. The same
/// function serves the initial plan and health changes, so a backend's
/// return restores exactly the table it left.
pub fn tables(backends: &[PlannedBackend], m: u32, down: &BTreeSet<u32>) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    // Sorted by identity: the table must not depend on config order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_cached_key(|&j| identity(backends[j].addr));
    let weight = |j: usize| if down.contains(&backends[j].id) { 0 } else { backends[j].weight };
    let input: Vec<(Vec<u8>, u32)> = order.iter().map(|&j| (identity(backends[j].addr), weight(j))).collect();
    let owners = maglev::build_owners(&input, m);
    let mut slots = vec![0u32; backends.len()];
    let ring: Vec<u32> = owners
        .iter()
        .map(|&k| {
            if k == maglev::NO_OWNER {
                return NO_BACKEND;
            }
            let j = order[k as usize];
            slots[j] += 1;
            backends[j].id
        })
        .collect();
    let weights: Vec<u32> = order.iter().map(|&j| weight(j)).collect();
    let rr = rr::sequence(&weights).iter().map(|&k| backends[order[k]].id).collect();
    (ring, rr, slots)
}

pub fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// What a reload from `old` to `new` changes, one line per change, in the
/// words an operator uses: VIPs and backends added and removed, weight
/// changes, drains (weight 0) and undrains, and for each VIP that stays the
/// share of its Maglev slots whose backend changes (the flows that are not
/// yet tracked and would go elsewhere). A pure function of the two plans.
pub fn diff(old: &Plan, new: &Plan) -> Vec<String> {
    let key = |v: &PlannedVip| (v.addr, v.port, v.proto);
    let show = |v: &PlannedVip| format!("{} ({}:{}/{})", v.name, v.addr, v.port, v.proto);
    let mut out = Vec::new();
    for v in &new.vips {
        if !old.vips.iter().any(|o| key(o) == key(v)) {
            let bs: Vec<String> = v.backends.iter().map(|b| format!("{} w{}", b.addr, b.weight)).collect();
            out.push(format!("+ vip {} with {}", show(v), bs.join(", ")));
        }
    }
    for o in &old.vips {
        let Some(v) = new.vips.iter().find(|v| key(v) == key(o)) else {
            out.push(format!("- vip {}", show(o)));
            continue;
        };
        for b in &v.backends {
            match o.backends.iter().find(|x| x.addr == b.addr) {
                None => out.push(format!("  vip {}: + backend {} (weight {})", v.name, b.addr, b.weight)),
                Some(x) if x.weight != b.weight && b.weight == 0 => {
                    out.push(format!("  vip {}: backend {} drained (weight {} -> 0)", v.name, b.addr, x.weight))
                }
                Some(x) if x.weight != b.weight && x.weight == 0 => {
                    out.push(format!("  vip {}: backend {} back in (weight 0 -> {})", v.name, b.addr, b.weight))
                }
                Some(x) if x.weight != b.weight => {
                    out.push(format!("  vip {}: backend {} weight {} -> {}", v.name, b.addr, x.weight, b.weight))
                }
                _ => {}
            }
            if let Some(x) = o.backends.iter().find(|x| x.addr == b.addr).filter(|x| x.vlan != b.vlan) {
                out.push(format!("  vip {}: backend {} vlan {} -> {}", v.name, b.addr, show_vlan(x.vlan), show_vlan(b.vlan)));
            }
        }
        if o.vlan != v.vlan {
            out.push(format!("  vip {}: vlan {} -> {}", v.name, show_vlan(o.vlan), show_vlan(v.vlan)));
        }
        for x in &o.backends {
            if !v.backends.iter().any(|b| b.addr == x.addr) {
                out.push(format!("  vip {}: - backend {}", v.name, x.addr));
            }
        }
        let moved = ring_moved(o, v);
        if moved > 0.0 {
            out.push(format!("  vip {}: {:.1}% of Maglev slots move", v.name, moved * 100.0));
        }
    }
    out
}

fn show_vlan(v: u16) -> String {
    if v == 0 {
        "none".into()
    } else {
        v.to_string()
    }
}

/// Share of a VIP's Maglev slots whose backend (by address) differs between
/// two plans of it; tables of different sizes count as all moved.
fn ring_moved(old: &PlannedVip, new: &PlannedVip) -> f64 {
    if old.ring.len() != new.ring.len() || new.ring.is_empty() {
        return if old.ring == new.ring { 0.0 } else { 1.0 };
    }
    let addr = |v: &PlannedVip, id: u32| v.backends.iter().find(|b| b.id == id).map(|b| b.addr);
    let moved = old.ring.iter().zip(&new.ring).filter(|(a, b)| addr(old, **a) != addr(new, **b)).count();
    moved as f64 / new.ring.len() as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_shows_vlans_and_a_reload_names_their_changes() {
        let t = |vip: &str, be: &str| {
            format!(
                "[maglev]\ntable_size = 251\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n{vip}\n\
                 [[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n{be}\n"
            )
        };
        let plan = |s: String| super::Plan::build(&crate::config::Config::from_toml(&s).unwrap()).unwrap();
        let tagged = plan(t("vlan = 10", "vlan = 20"));
        assert_eq!((tagged.vips[0].vlan, tagged.vips[0].backends[0].vlan), (10, 20));
        let d = tagged.describe();
        assert!(d.contains("  vlan: 10 (frames tagged 10 only"), "{d}");
        assert!(d.contains("mac 02:00:00:00:00:0b vlan 20"), "{d}");
        let plain = plan(t("", ""));
        assert!(!plain.describe().contains("vlan"), "{}", plain.describe());
        let diff = super::diff(&plain, &tagged);
        assert_eq!(diff, ["  vip web: backend 198.18.0.11 vlan none -> 20", "  vip web: vlan none -> 10"], "{diff:?}");
    }

    #[test]
    fn the_reload_diff_names_every_change() {
        let base = r#"
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"
[[vip]]
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
"#;
        let old = Plan::build(&Config::from_toml(base).unwrap()).unwrap();
        assert!(diff(&old, &old).is_empty(), "no change, no lines");
        let changed = base
            .replace("address = \"198.18.0.12\"\n", "address = \"198.18.0.12\"\nweight = 0\n")
            .replace("address = \"198.18.0.13\"\n", "address = \"198.18.0.13\"\nweight = 3\n")
            .replace("address = \"198.18.0.21\"", "address = \"198.18.0.22\"")
            + "[[vip]]\nname = \"new\"\naddress = \"198.18.0.101\"\nport = 443\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.31\"\nmac = \"02:00:00:00:00:1f\"\n";
        let new = Plan::build_after(&Config::from_toml(&changed).unwrap(), Some(&old)).unwrap();
        let d = diff(&old, &new);
        let text = d.join("\n");
        for want in [
            "+ vip new (198.18.0.101:443/tcp) with 198.18.0.31 w1",
            "  vip web: backend 198.18.0.12 drained (weight 1 -> 0)",
            "  vip web: backend 198.18.0.13 weight 1 -> 3",
            "  vip dns: + backend 198.18.0.22 (weight 1)",
            "  vip dns: - backend 198.18.0.21",
            "  vip dns: 100.0% of Maglev slots move",
        ] {
            assert!(d.iter().any(|l| l == want), "missing {want:?} in:\n{text}");
        }
        // web: .12 drained, .13 tripled: exactly the slots whose owner changed.
        let web = |p: &Plan| p.vips.iter().find(|v| v.name == "web").cloned().unwrap();
        let share = ring_moved(&web(&old), &web(&new));
        assert!(share > 0.3 && share < 0.8, "web moves {share}");
        assert!(text.contains(&format!("vip web: {:.1}% of Maglev slots move", share * 100.0)), "{text}");
        assert_eq!(d.len(), 7, "exactly the changes: {text}");
    }


    use super::*;

    fn cfg(vips: &[(&str, &[&str])]) -> Config {
        let mut t = String::new();
        for (addr, bes) in vips {
            t += &format!("[[vip]]\naddress = \"{addr}\"\nport = 80\nprotocol = \"tcp\"\n");
            for b in *bes {
                t += &format!("[[vip.backend]]\naddress = \"{b}\"\nmac = \"02:00:00:00:00:01\"\n");
            }
        }
        Config::from_toml(&t).unwrap()
    }

    fn ids(p: &Plan) -> Vec<(String, u32, Vec<(String, u32)>)> {
        p.vips
            .iter()
            .map(|v| (v.addr.to_string(), v.id, v.backends.iter().map(|b| (b.addr.to_string(), b.id)).collect()))
            .collect()
    }

    #[test]
    fn reload_keeps_ids_of_what_stays_and_does_not_reuse_freed_ones() {
        let a = Plan::build(&cfg(&[("198.18.0.100", &["10.0.0.1", "10.0.0.2"]), ("198.18.0.101", &["10.0.0.3"])])).unwrap();
        assert_eq!(
            ids(&a),
            vec![
                ("198.18.0.100".into(), 0, vec![("10.0.0.1".into(), 0), ("10.0.0.2".into(), 1)]),
                ("198.18.0.101".into(), 1, vec![("10.0.0.3".into(), 2)]),
            ]
        );
        // Reordered, one backend and one VIP removed, one of each added.
        let b = Plan::build_after(
            &cfg(&[("198.18.0.102", &["10.0.0.9"]), ("198.18.0.100", &["10.0.0.4", "10.0.0.2"])]),
            Some(&a),
        )
        .unwrap();
        assert_eq!(
            ids(&b),
            vec![
                ("198.18.0.102".into(), 2, vec![("10.0.0.9".into(), 3)]),
                ("198.18.0.100".into(), 0, vec![("10.0.0.4".into(), 4), ("10.0.0.2".into(), 1)]),
            ]
        );
        // The freed ids (VIP 1, backends 0 and 2) come back only a reload later.
        let c = Plan::build_after(&cfg(&[("198.18.0.100", &["10.0.0.2", "10.0.0.7", "10.0.0.8"])]), Some(&b)).unwrap();
        assert_eq!(ids(&c)[0].2, vec![("10.0.0.2".into(), 1), ("10.0.0.7".into(), 0), ("10.0.0.8".into(), 2)]);
    }

    #[test]
    fn ids_survive_a_hand_over() {
        let a = Plan::build(&cfg(&[("198.18.0.100", &["10.0.0.1", "10.0.0.2"]), ("198.18.0.101", &["10.0.0.3"])])).unwrap();
        let b = Plan::build_after(&cfg(&[("198.18.0.101", &["10.0.0.3", "10.0.0.4"])]), Some(&a)).unwrap();
        let wire = serde_json::to_string(&PlanIds::of(&b, vec![2])).unwrap();
        let back: PlanIds = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.down, vec![2]);
        let skel = back.skeleton().unwrap();
        // The successor, same config: every id as the running instance has it.
        let c = Plan::build_after(&cfg(&[("198.18.0.101", &["10.0.0.3", "10.0.0.4"])]), Some(&skel)).unwrap();
        assert_eq!(ids(&c), ids(&b));
    }

    #[test]
    fn a_down_backend_leaves_only_its_own_slots_and_returns_to_the_same_table() {
        let p = Plan::build(&cfg(&[("198.18.0.100", &["10.0.0.1", "10.0.0.2", "10.0.0.3"])])).unwrap();
        let v = &p.vips[0];
        let down: BTreeSet<u32> = [1].into_iter().collect();
        let (ring, rr, slots) = tables(&v.backends, p.table_size, &down);
        assert!(!ring.contains(&1) && !rr.contains(&1), "no slot or turn for the down backend");
        assert_eq!(slots[1], 0);
        let moved_between_others = v.ring.iter().zip(&ring).filter(|(a, b)| **a != 1 && a != b).count();
        assert!(moved_between_others * 100 < ring.len() * 3, "{moved_between_others} survivor slots moved");
        let (back, _, _) = tables(&v.backends, p.table_size, &BTreeSet::new());
        assert_eq!(back, v.ring, "recovery restores the original table exactly");
    }
}

/// What a successor must know of a running plan to keep its ids: sent over
/// the control socket at a hand-over (see handoff.rs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlanIds {
    pub table_size: u32,
    pub conntrack_size: u32,
    /// (deny non-empty, allow non-empty) when the shield is on.
    pub shield_lists: Option<(bool, bool)>,
    pub vips: Vec<VipIds>,
    /// Backends failing their health checks.
    pub down: Vec<u32>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VipIds {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub tcp: bool,
    pub backends: Vec<(IpAddr, u32)>,
}

impl PlanIds {
    pub fn of(p: &Plan, down: Vec<u32>) -> PlanIds {
        PlanIds {
            table_size: p.table_size,
            conntrack_size: p.conntrack_size,
            shield_lists: p.shield.as_ref().map(|s| (!s.deny.is_empty(), !s.allow.is_empty())),
            vips: p
                .vips
                .iter()
                .map(|v| VipIds {
                    id: v.id,
                    addr: v.addr,
                    port: v.port,
                    tcp: v.proto == Protocol::Tcp,
                    backends: v.backends.iter().map(|b| (b.addr, b.id)).collect(),
                })
                .collect(),
            down,
        }
    }

    /// A plan with these ids and nothing else, to diff a new plan against.
    pub fn skeleton(&self) -> Result<Plan> {
        let shield = match self.shield_lists {
            None => None,
            Some((deny, allow)) => {
                let mut s: crate::config::Shield = toml::from_str("").context("default shield")?;
                if deny {
                    s.deny = vec!["0.0.0.0/32".into()];
                }
                if allow {
                    s.allow = vec!["0.0.0.0/32".into()];
                }
                Some(s)
            }
        };
        Ok(Plan {
            table_size: self.table_size,
            conntrack_size: self.conntrack_size,
            lru_per_cpu: false,
            shield,
            nat_timeouts: [0; 4],
            tier: Default::default(),
            fragments: Default::default(),
            probe_source: None,
            vips: self
                .vips
                .iter()
                .map(|v| PlannedVip {
                    id: v.id,
                    name: format!("vip[{}]", v.id),
                    addr: v.addr,
                    port: v.port,
                    proto: if v.tcp { Protocol::Tcp } else { Protocol::Udp },
                    sched: Scheduler::Maglev,
                    mode: Mode::Dsr,
                    backends: v
                        .backends
                        .iter()
                        .map(|(addr, id)| PlannedBackend {
                            id: *id,
                            addr: *addr,
                            weight: 1,
                            mac: None,
                            iface: None,
                            slots: 0,
                            check: None,
                            port: None,
                            vlan: 0,
                        })
                        .collect(),
                    ring: Vec::new(),
                    rr: Vec::new(),
                    shield: None,
                    on_down: Default::default(),
                    source: None,
                    source_ports: crate::config::DEFAULT_SOURCE_PORTS,
                    icmp_too_big: true,
                    icmp_echo: true,
                    arp: true,
                    vlan: 0,
                })
                .collect(),
        })
    }
}
