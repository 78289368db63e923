//! The DSR / tunnel flow tables as one: IPv4 flows live in `flows4` under a
//! 16-byte key, IPv6 flows in `flows6` under the whole flow key (likewise
//! the handshake tables `syn_flows4` / `syn_flows6`), as bpf/flows.h.
//! Everything in user space that reads or writes tracked flows (lookup,
//! the tier's flow sync, stats, tests) goes through here.

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::Dataplane;
use crate::skel::{Flow, Flow4Key, FlowKey, FAMILY_V4};

/// The 16-byte key of an IPv4 flow (bpf/flows.h flow4_key_of).
pub fn flow4_key(k: &FlowKey) -> Flow4Key {
    Flow4Key { src: k.src[0], dst: k.dst[0], sport: k.sport, dport: k.dport, proto: k.proto, ..Default::default() }
}

use crate::skel::bytes_of as bytes;

/// One family pair of tables: established flows, or handshakes.
pub struct FlowTables {
    v4: MapHandle,
    v6: MapHandle,
    what: &'static str,
}

impl FlowTables {
    /// The established flows (`flows4`, `flows6`).
    pub fn established(dp: &Dataplane) -> Result<FlowTables> {
        Ok(FlowTables {
            v4: MapHandle::try_from(&dp.skel.maps.flows4).context("opening the IPv4 flow table")?,
            v6: MapHandle::try_from(&dp.skel.maps.flows6).context("opening the IPv6 flow table")?,
            what: "flow table",
        })
    }

    /// TCP handshakes in progress (`syn_flows4`, `syn_flows6`).
    pub fn handshakes(dp: &Dataplane) -> Result<FlowTables> {
        Ok(FlowTables {
            v4: MapHandle::try_from(&dp.skel.maps.syn_flows4).context("opening the IPv4 handshake table")?,
            v6: MapHandle::try_from(&dp.skel.maps.syn_flows6).context("opening the IPv6 handshake table")?,
            what: "handshake table",
        })
    }

    fn with_key<R>(&self, k: &FlowKey, f: impl FnOnce(&MapHandle, &[u8]) -> R) -> R {
        if k.family == FAMILY_V4 {
            f(&self.v4, bytes(&flow4_key(k)))
        } else {
            f(&self.v6, bytes(k))
        }
    }

    pub fn lookup(&self, k: &FlowKey) -> Result<Option<Flow>> {
        let v = self.with_key(k, |m, key| m.lookup(key, MapFlags::ANY)).with_context(|| format!("reading the {}", self.what))?;
        v.map(|v| plain::from_bytes::<Flow>(&v).copied().map_err(|e| anyhow::anyhow!("a {} entry of {} bytes: {e:?}", self.what, v.len())))
            .transpose()
    }

    /// Insert unless the flow is tracked already: Ok(false) when it is
    /// (the program's own entry wins).
    pub fn insert_new(&self, k: &FlowKey, f: &Flow) -> Result<bool> {
        match self.with_key(k, |m, key| m.update(key, bytes(f), MapFlags::NO_EXIST)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing the {}", self.what)),
        }
    }

    /// Insert or replace.
    pub fn update(&self, k: &FlowKey, f: &Flow) -> Result<()> {
        self.with_key(k, |m, key| m.update(key, bytes(f), MapFlags::ANY)).with_context(|| format!("writing the {}", self.what))
    }

    /// Entries of both families, counted up to `cap` (a walk is one
    /// syscall per entry).
    pub fn count(&self, cap: usize) -> usize {
        let n4 = self.v4.keys().take(cap).count();
        n4 + self.v6.keys().take(cap - n4).count()
    }
}
