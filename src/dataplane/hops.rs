//! Next hops: where each backend's frames leave (its MAC, the egress
//! interface's MAC, the DEVMAP slot), and which backends follow the kernel's
//! neighbour table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{bail, Context, Result};

use crate::net::Iface;
use crate::plan::Plan;
use crate::skel::PROBE_SLOT_VETH;

/// Where a backend's frames leave: its MAC, the egress interface's MAC, and
/// the DEVMAP slot (0: XDP_TX out of the receiving interface).
#[derive(Debug, Clone, Copy)]
pub struct NextHop {
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub tx_port: u32,
}

/// Next hops when every backend's MAC is in the config (bench, tests): no
/// neighbour table is consulted.
pub fn configured_hops(plan: &Plan, iface: &Iface) -> Result<(BTreeMap<u32, NextHop>, BTreeMap<u32, u32>)> {
    next_hops(plan, iface, &mut |ip, _, _| bail!("backend {ip} has no `mac` in the config"))
}

/// The next hop of every backend of `plan`: MACs resolved (an unresolved
/// one is an error), redirect interfaces given DEVMAP slots.
pub fn next_hops(
    plan: &Plan,
    iface: &Iface,
    resolve: &mut dyn FnMut(IpAddr, &Iface, crate::config::Mode) -> Result<[u8; 6]>,
) -> Result<(BTreeMap<u32, NextHop>, BTreeMap<u32, u32>)> {
    let h = resolve_hops(plan, iface, &mut |ip, via, mode| Ok((ip, Some(resolve(ip, via, mode)?))))?;
    Ok((h.hops, h.tx))
}

/// A backend whose MAC comes from the kernel's neighbour table: the
/// neighbour to follow (itself, or its gateway) on its egress interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    pub neighbour: IpAddr,
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub tx_port: u32,
}

/// Where every backend's frames go, as far as is known now.
#[derive(Debug, Clone, Default)]
pub struct HopPlan {
    /// Backends with a MAC (configured, or in the neighbour table).
    pub hops: BTreeMap<u32, NextHop>,
    /// DEVMAP slot -> ifindex.
    pub tx: BTreeMap<u32, u32>,
    /// Backends whose MAC follows the neighbour table (resolved or not).
    pub followed: BTreeMap<u32, Followed>,
}

impl HopPlan {
    /// Backends without a MAC yet: down (unresolved) until one appears.
    pub fn unresolved(&self) -> BTreeSet<u32> {
        self.followed.keys().filter(|id| !self.hops.contains_key(id)).copied().collect()
    }
}

/// Resolve every backend's next hop. `resolve(backend, egress, mode)` gives
/// the neighbour to follow and its MAC if known now (None: the backend
/// starts down and joins when it resolves); an error refuses the plan.
pub fn resolve_hops(
    plan: &Plan,
    iface: &Iface,
    resolve: &mut dyn FnMut(IpAddr, &Iface, crate::config::Mode) -> Result<(IpAddr, Option<[u8; 6]>)>,
) -> Result<HopPlan> {
    let mut out = HopPlan::default();
    let mut slots: BTreeMap<String, (u32, Iface)> = BTreeMap::new();
    for vip in &plan.vips {
        for b in &vip.backends {
            let (out_iface, tx_port) = match &b.iface {
                None => (iface.clone(), 0),
                Some(name) if name == &iface.name => (iface.clone(), 0),
                Some(name) => {
                    if !slots.contains_key(name) {
                        let n = slots.len() as u32 + 1;
                        // The top slots are the data-path checks' (PROBE_SLOT_*).
                        if n >= PROBE_SLOT_VETH {
                            bail!("more than {} redirect interfaces", PROBE_SLOT_VETH - 1);
                        }
                        let i = Iface::lookup(name)
                            .with_context(|| format!("backend {} of {}: iface {name}", b.addr, vip.name))?;
                        slots.insert(name.clone(), (n, i));
                    }
                    let (n, i) = &slots[name];
                    (i.clone(), *n)
                }
            };
            let mac = match b.mac {
                Some(m) => Some(m),
                None => {
                    let (neighbour, mac) =
                        resolve(b.addr, &out_iface, vip.mode).with_context(|| format!("backend {} of {}", b.addr, vip.name))?;
                    out.followed.insert(
                        b.id,
                        Followed { neighbour, ifindex: out_iface.ifindex, src_mac: out_iface.mac, tx_port },
                    );
                    mac
                }
            };
            if let Some(mac) = mac {
                out.hops.insert(b.id, NextHop { mac, src_mac: out_iface.mac, tx_port });
            }
        }
    }
    out.tx = slots.values().map(|(n, i)| (*n, i.ifindex)).collect();
    Ok(out)
}
