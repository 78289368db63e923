//! The data plane's side of data-path health checks (bpf/probe.h): where
//! the probers are, which source port probes which backend, and the switch.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use super::{key32, Dataplane};
use crate::mapio::addr_words;
use crate::skel::{bytes_of, ProbeCfg, ProbeTarget, VipKey, PROBE_PORTS, PROBE_PORT_LO, PROBE_SLOT_IFACE, PROBE_SLOT_VETH};

/// One data-path probe: its source port, the VIP it is addressed to and
/// the backend it must reach.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSlot {
    pub port: u16,
    pub vip: VipKey,
    pub backend_id: u32,
}

impl Dataplane {
    /// The program attached to the outer prober veth.
    pub fn probe_prog_fd(&self) -> BorrowedFd<'_> {
        self.skel.progs.weir_probe.as_fd()
    }

    /// Steer backends' replies to the probers (weir_lb's "not a VIP" branch).
    pub fn set_probe_on(&self, on: bool) -> Result<()> {
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, probe_on), u32::from(on))
            .context("switching data-path health checks")
    }

    /// Where the probers are: their source address, their veth's two MACs,
    /// and the redirect slots of the balancer interface and the outer veth.
    pub fn set_probe_net(&self, source: IpAddr, inner_mac: [u8; 6], outer_mac: [u8; 6], iface_ifindex: u32, veth_ifindex: u32) -> Result<()> {
        let (addr, family) = addr_words(source);
        let cfg = ProbeCfg { addr, inner_mac, outer_mac, family, ..Default::default() };
        let m = &self.skel.maps;
        for (slot, ifindex, what) in [(PROBE_SLOT_IFACE, iface_ifindex, "the balancer interface"), (PROBE_SLOT_VETH, veth_ifindex, "the prober veth")] {
            m.tx_ports
                .update(&key32(slot), &ifindex.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("adding {what} (ifindex {ifindex}) to the redirect DEVMAP (does it support XDP?)"))?;
        }
        self.filter_add_source(addr)?;
        m.probe_cfg.update(&key32(0), bytes_of(&cfg), MapFlags::ANY).context("writing probe_cfg")?;
        Ok(())
    }

    /// Replace every probe target with `slots` (ports in the probe range);
    /// a backend without an entry yet (unresolved) gets its target when
    /// `write_backend` writes it.
    pub fn set_probe_targets(&self, slots: &[ProbeSlot]) -> Result<()> {
        let mut want = std::collections::BTreeMap::new();
        for s in slots {
            let idx = u32::from(s.port.checked_sub(PROBE_PORT_LO).filter(|i| *i < PROBE_PORTS).with_context(|| {
                format!("probe port {} outside {PROBE_PORT_LO}..{}", s.port, PROBE_PORT_LO + PROBE_PORTS - 1)
            })?);
            want.insert(idx, *s);
        }
        let old: Vec<u32> = self.probe_slots.borrow().keys().copied().collect();
        for idx in old.into_iter().filter(|i| !want.contains_key(i)) {
            self.skel.maps.probe_targets.update(&key32(idx), bytes_of(&ProbeTarget::default()), MapFlags::ANY)?;
        }
        *self.probe_slots.borrow_mut() = want;
        for idx in self.probe_slots.borrow().keys() {
            self.write_probe_target(*idx)?;
        }
        Ok(())
    }

    /// A backend's entry changed: the probe targets that copy it follow.
    pub(crate) fn refresh_probes_of(&self, backend_id: u32) -> Result<()> {
        let idxs: Vec<u32> = self.probe_slots.borrow().iter().filter(|(_, s)| s.backend_id == backend_id).map(|(i, _)| *i).collect();
        for idx in idxs {
            self.write_probe_target(idx)?;
        }
        Ok(())
    }

    fn write_probe_target(&self, idx: u32) -> Result<()> {
        let Some(s) = self.probe_slots.borrow().get(&idx).copied() else { return Ok(()) };
        // The entry as written for the backend (kept while it is out of
        // rotation); none yet: no probe goes out (the check fails).
        let be = self.backend_entries.borrow().get(&s.backend_id).copied().unwrap_or_default();
        let t = ProbeTarget { vip: s.vip, backend_id: s.backend_id, be };
        self.skel
            .maps
            .probe_targets
            .update(&key32(idx), bytes_of(&t), MapFlags::ANY)
            .with_context(|| format!("writing the probe target of port {}", s.port))
    }
}
