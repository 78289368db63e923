//! Counters of a running data plane: collected into a snapshot (served as
//! JSON to `weir stats`) and shown as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::dataplane::Dataplane;
use crate::plan::{fmt_addr, Plan};
use crate::skel::{stat_name, STAT_COUNT};

/// `flows_tracked` is counted up to this many entries.
pub const FLOW_COUNT_CAP: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub iface: String,
    pub xdp_mode: String,
    pub uptime_s: f64,
    pub flows_tracked: usize,
    pub counters: BTreeMap<String, u64>,
    pub vips: Vec<VipStats>,
    /// SYN-flood shield state per protected service.
    #[serde(default)]
    pub shield: Vec<ShieldStats>,
    /// A node of a tier: announcements, drain, flow sync (absent: single box).
    #[serde(default)]
    pub tier: Option<TierStatus>,
    /// What decides new flows' backends (tier/fingerprint.rs); absent from
    /// a standalone shield and from older instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprints>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierStatus {
    /// The announce device (tier.announce), and the addresses it holds now.
    pub announce_device: Option<String>,
    pub announced: Vec<String>,
    pub draining: bool,
    pub sync: Option<crate::tier::sync::SyncStats>,
}

/// A node's fingerprints, 16 hex digits each: `config`, its config's tables
/// with every backend up; `live`, the tables its data plane uses now. Nodes
/// of a tier agree on new flows while their `live` values are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    pub config: String,
    pub live: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShieldStats {
    pub service: String,
    pub attack: bool,
    /// SYN/s over the last closed one-second window.
    pub syn_rate: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipStats {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    /// dsr | nat | tunnel (absent in snapshots of older instances).
    #[serde(default)]
    pub mode: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    pub weight: u32,
    /// "up" / "down" when health-checked; "down (unresolved)" while its
    /// MAC is unknown.
    #[serde(default)]
    pub health: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl Snapshot {
    pub fn collect(
        dp: &Dataplane,
        plan: &Plan,
        iface: &str,
        mode: &str,
        started: Instant,
        health: &dyn Fn(u32) -> Option<String>,
        flows_tracked: usize,
    ) -> Result<Snapshot> {
        let g = dp.global_counters()?;
        let counters = (0..STAT_COUNT).map(|i| (stat_name(i).to_string(), g[i])).collect();
        let mut vips = Vec::new();
        for v in &plan.vips {
            let t = dp.vip_traffic(v.id)?;
            let mut backends = Vec::new();
            for b in &v.backends {
                let bt = dp.backend_traffic(b.id)?;
                backends.push(BackendStats {
                    address: b.addr.to_string(),
                    weight: b.weight,
                    health: health(b.id),
                    packets: bt.packets,
                    bytes: bt.bytes,
                    new_flows: bt.new_flows,
                });
            }
            vips.push(VipStats {
                name: v.name.clone(),
                address: v.addr.to_string(),
                port: v.port,
                protocol: v.proto.to_string(),
                scheduler: v.sched.to_string(),
                mode: v.mode.to_string(),
                packets: t.packets,
                bytes: t.bytes,
                new_flows: t.new_flows,
                backends,
            });
        }
        let mut shield = Vec::new();
        if plan.shield.is_some() {
            let maps = dp.shield_maps();
            for v in plan.vips.iter().filter(|v| v.proto == crate::config::Protocol::Tcp) {
                let st = maps.state(v.id)?;
                shield.push(ShieldStats { service: v.name.clone(), attack: st.attack != 0, syn_rate: st.last_rate });
            }
        }
        Ok(Snapshot {
            iface: iface.to_string(),
            xdp_mode: mode.to_string(),
            uptime_s: started.elapsed().as_secs_f64(),
            flows_tracked,
            counters,
            vips,
            shield,
            tier: None,
            fingerprint: None,
        })
    }

    /// A standalone `weir shield` instance.
    pub fn collect_shield(
        sp: &crate::shield::Standalone,
        ports: &[u16],
        iface: &str,
        mode: &str,
        started: Instant,
    ) -> Result<Snapshot> {
        let g = sp.counters()?;
        let st = sp.maps().state(0)?;
        let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        Ok(Snapshot {
            iface: iface.to_string(),
            xdp_mode: mode.to_string(),
            uptime_s: started.elapsed().as_secs_f64(),
            flows_tracked: 0,
            counters: (0..STAT_COUNT).map(|i| (stat_name(i).to_string(), g[i])).collect(),
            vips: Vec::new(),
            shield: vec![ShieldStats {
                service: format!("tcp ports {}", ports.join(",")),
                attack: st.attack != 0,
                syn_rate: st.last_rate,
            }],
            tier: None,
            fingerprint: None,
        })
    }

    /// The table `weir stats` and `weir run` print. With a previous snapshot,
    /// rates are per second over the interval between the two.
    pub fn render(&self, prev: Option<&Snapshot>) -> String {
        let dt = prev.map(|p| self.uptime_s - p.uptime_s).filter(|d| *d > 0.0);
        let rate = |now: u64, before: Option<u64>| -> String {
            match (dt, before) {
                (Some(d), Some(b)) => format!("{:.0}", now.saturating_sub(b) as f64 / d),
                _ => "-".into(),
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "weir on {} ({} XDP), up {:.0}s, {} flows tracked",
            self.iface, self.xdp_mode, self.uptime_s, self.flows_tracked
        );
        let _ = writeln!(s, "{:<44} {:>12} {:>10} {:>14} {:>10}", "VIP / backend", "packets", "pps", "bytes", "new flows");
        for (vi, v) in self.vips.iter().enumerate() {
            let pv = prev.and_then(|p| p.vips.get(vi));
            let addr = fmt_addr(v.address.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])));
            let port = if v.port == 0 { "*".into() } else { v.port.to_string() };
            let label = match v.mode.as_str() {
                "" | "dsr" => format!("{} {}:{}/{} ({})", v.name, addr, port, v.protocol, v.scheduler),
                m => format!("{} {}:{}/{} ({}, {m})", v.name, addr, port, v.protocol, v.scheduler),
            };
            let _ = writeln!(
                s,
                "{:<44} {:>12} {:>10} {:>14} {:>10}",
                label,
                v.packets,
                rate(v.packets, pv.map(|p| p.packets)),
                v.bytes,
                v.new_flows
            );
            for (bi, b) in v.backends.iter().enumerate() {
                let pb = pv.and_then(|p| p.backends.get(bi));
                let label = match &b.health {
                    Some(h) => format!("  {} (weight {}, {h})", b.address, b.weight),
                    None => format!("  {} (weight {})", b.address, b.weight),
                };
                let _ = writeln!(
                    s,
                    "{:<44} {:>12} {:>10} {:>14} {:>10}",
                    label,
                    b.packets,
                    rate(b.packets, pb.map(|p| p.packets)),
                    b.bytes,
                    b.new_flows
                );
            }
        }
        for sh in &self.shield {
            let _ = writeln!(
                s,
                "shield {}: {} ({} SYN/s)",
                sh.service,
                if sh.attack { "ATTACK MODE" } else { "normal" },
                sh.syn_rate
            );
        }
        if let Some(t) = &self.tier {
            if let Some(dev) = &t.announce_device {
                let what = if t.announced.is_empty() { "nothing".to_string() } else { t.announced.join(" ") };
                let _ = writeln!(s, "announcing on {dev}: {what}{}", if t.draining { " (DRAINING)" } else { "" });
            }
            if let Some(y) = &t.sync {
                let _ = writeln!(
                    s,
                    "flow sync with {}: sent {} received {} inserted {} present {} unknown {} rejected {} send errors {}",
                    y.peers.join(","),
                    y.sent,
                    y.received,
                    y.inserted,
                    y.present,
                    y.unknown,
                    y.rejected,
                    y.send_errors
                );
            }
        }
        let nonzero: Vec<String> =
            self.counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "counters: {}", if nonzero.is_empty() { "(none yet)".into() } else { nonzero.join(" ") });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t: f64, pkts: u64) -> Snapshot {
        Snapshot {
            iface: "veth6".into(),
            xdp_mode: "native".into(),
            uptime_s: t,
            flows_tracked: 3,
            counters: [("xdp_tx".to_string(), pkts), ("xdp_drop".to_string(), 0)].into_iter().collect(),
            vips: vec![VipStats {
                name: "web".into(),
                address: "198.18.0.100".into(),
                port: 80,
                protocol: "tcp".into(),
                scheduler: "maglev".into(),
                mode: "dsr".into(),
                packets: pkts,
                bytes: pkts * 60,
                new_flows: 1,
                backends: vec![BackendStats {
                    address: "198.18.0.11".into(),
                    weight: 1,
                    health: Some("down".into()),
                    packets: pkts,
                    bytes: pkts * 60,
                    new_flows: 1,
                }],
            }],
            shield: vec![ShieldStats { service: "web".into(), attack: true, syn_rate: 12000 }],
            tier: None,
            fingerprint: None,
        }
    }

    #[test]
    fn rates_come_from_the_interval_between_snapshots() {
        let a = snap(10.0, 100);
        let b = snap(12.0, 700);
        let out = b.render(Some(&a));
        let vip_line = out.lines().find(|l| l.starts_with("web ")).unwrap();
        assert!(vip_line.split_whitespace().any(|w| w == "300"), "600 packets in 2 s is 300 pps: {vip_line}");
        assert!(out.contains("counters: xdp_tx=700"), "zero counters hidden: {out}");
        assert!(out.contains("shield web: ATTACK MODE (12000 SYN/s)"), "{out}");
    }

    #[test]
    fn first_snapshot_has_no_rate() {
        let out = snap(1.0, 5).render(None);
        let line = out.lines().find(|l| l.contains("198.18.0.11")).unwrap();
        assert!(line.contains(" - "), "{line}");
        assert!(line.contains("(weight 1, down)"), "{line}");
    }

    #[test]
    fn json_round_trip() {
        let a = snap(1.0, 5);
        let j = serde_json::to_string(&a).unwrap();
        let b: Snapshot = serde_json::from_str(&j).unwrap();
        assert_eq!(b.vips[0].backends[0].packets, 5);
    }
}
