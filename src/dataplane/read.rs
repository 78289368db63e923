//! Reading back what the program decides with, for `weir lookup` and the
//! live fingerprint (tier/): the VIP entry of a tuple, tracked flows, the
//! live half of a VIP's tables, backend entries. Lookups by key, except
//! `vip_entries` (a walk of at most WEIR_MAX_VIPS keys) and the table reads
//! (batched: a few syscalls for a whole Maglev block, not one per slot).

use std::os::fd::AsRawFd;

use super::*;
use crate::skel::{Flow, FlowKey, NatFwd, NatRev, NO_BACKEND};

impl Dataplane {
    /// Every VIP entry of the `vips` map, as the program finds them.
    pub fn vip_entries(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        let vips = &self.skel.maps.vips;
        let mut out = Vec::new();
        for k in vips.keys() {
            let Some(v) = vips.lookup(&k, MapFlags::ANY).context("reading a VIP entry")? else { continue };
            out.push((from_bytes(&k)?, from_bytes(&v)?));
        }
        Ok(out)
    }

    /// The VIP entry a client tuple hits, as bpf/sched.h find_vip: its
    /// port, else the address's port 0.
    pub fn find_vip(&self, k: &FlowKey) -> Result<Option<(VipKey, VipMeta)>> {
        let mut vk = VipKey { addr: k.dst, port: k.dport, proto: k.proto, family: k.family };
        for port in [k.dport, 0] {
            vk.port = port;
            if let Some(v) = self.skel.maps.vips.lookup(bytes_of(&vk), MapFlags::ANY).context("reading the VIP map")? {
                return Ok(Some((vk, from_bytes(&v)?)));
            }
        }
        Ok(None)
    }

    /// The backend id in slot `slot` of a VIP's live Maglev table.
    pub fn ring_slot(&self, meta: &VipMeta, slot: u32) -> Result<u32> {
        let idx = (meta.vip_id * 2 + (meta.half & 1)) * self.settings.ring_size + slot;
        let v = self.skel.maps.maglev_ring.lookup(&key32(idx), MapFlags::ANY).context("reading a Maglev slot")?;
        Ok(v.and_then(|b| b.get(..4).and_then(|b| b.try_into().ok())).map(u32::from_ne_bytes).unwrap_or(NO_BACKEND))
    }

    /// A VIP's live Maglev table (backend ids, `table_size` long).
    pub fn live_ring(&self, meta: &VipMeta) -> Result<Vec<u32>> {
        let n = self.settings.ring_size;
        read_u32_range(&self.skel.maps.maglev_ring, (meta.vip_id * 2 + (meta.half & 1)) * n, n)
            .context("reading a Maglev table")
    }

    /// A VIP's live round-robin sequence (its `rr_len` entries).
    pub fn live_rr(&self, meta: &VipMeta) -> Result<Vec<u32>> {
        let n = u32::from(meta.rr_len).min(RR_SLOTS);
        read_u32_range(&self.skel.maps.rr_ring, (meta.vip_id * 2 + (meta.half & 1)) * RR_SLOTS, n)
            .context("reading a round-robin sequence")
    }

    /// A round-robin VIP's rotation cursor: the next new flow takes entry
    /// `cursor % rr_len` (bpf/sched.h round_robin_pick).
    pub fn rr_cursor(&self, vip_id: u32) -> Result<u32> {
        let v = self.skel.maps.rr_cursor.lookup(&key32(vip_id), MapFlags::ANY).context("reading a rotation cursor")?;
        Ok(v.and_then(|b| b.get(..4).and_then(|b| b.try_into().ok())).map(u32::from_ne_bytes).unwrap_or(0))
    }

    /// Entry `n` (0-based) of a VIP's live round-robin sequence.
    pub fn rr_entry(&self, meta: &VipMeta, n: u32) -> Result<u32> {
        let idx = (meta.vip_id * 2 + (meta.half & 1)) * RR_SLOTS + n;
        let v = self.skel.maps.rr_ring.lookup(&key32(idx), MapFlags::ANY).context("reading a round-robin entry")?;
        Ok(v.and_then(|b| b.get(..4).and_then(|b| b.try_into().ok())).map(u32::from_ne_bytes).unwrap_or(NO_BACKEND))
    }

    /// A backend id's entry (None: out of range).
    pub fn backend_entry(&self, id: u32) -> Result<Option<Backend>> {
        match self.skel.maps.backends.lookup(&key32(id), MapFlags::ANY).context("reading a backend entry")? {
            Some(v) => Ok(Some(from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// A DSR / tunnel flow's entry, and the table it is in: `flows4` /
    /// `flows6`, else (TCP) `syn_flows4` / `syn_flows6`, a handshake in
    /// progress; as lb.bpf.c looks.
    pub fn tracked_flow(&self, k: &FlowKey) -> Result<Option<(Flow, &'static str)>> {
        let v4 = k.family == crate::skel::FAMILY_V4;
        if let Some(f) = super::FlowTables::established(self)?.lookup(k)? {
            return Ok(Some((f, if v4 { "flows4" } else { "flows6" })));
        }
        if k.proto == libc::IPPROTO_TCP as u8 {
            if let Some(f) = super::FlowTables::handshakes(self)?.lookup(k)? {
                return Ok(Some((f, if v4 { "syn_flows4" } else { "syn_flows6" })));
            }
        }
        Ok(None)
    }

    /// A NAT flow's forward entry (keyed by the client's tuple).
    pub fn nat_fwd_entry(&self, k: &FlowKey) -> Result<Option<NatFwd>> {
        match self.skel.maps.nat_fwd.lookup(bytes_of(k), MapFlags::ANY).context("reading the NAT forward table")? {
            Some(v) => Ok(Some(from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// A NAT flow's reverse entry (keyed by the backend's reply tuple).
    pub fn nat_rev_entry(&self, k: &FlowKey) -> Result<Option<NatRev>> {
        match self.skel.maps.nat_rev.lookup(bytes_of(k), MapFlags::ANY).context("reading the NAT reverse table")? {
            Some(v) => Ok(Some(from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether non-VIP packets look for a NAT flow's reverse entry (some
    /// VIP is NAT).
    pub fn nat_on(&self) -> Result<bool> {
        Ok(self.bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, nat_on))? != 0)
    }

    /// The NAT clock as the program reads it (bpf/nat.h nat_now): seconds
    /// of the coarse monotonic clock, plus the tests' skew.
    pub fn nat_now(&self) -> Result<u32> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
            bail!("clock_gettime(CLOCK_MONOTONIC_COARSE): {}", std::io::Error::last_os_error());
        }
        let skew = self.bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, nat_clock_skew))?;
        Ok((ts.tv_sec as u32).wrapping_add(skew))
    }
}

/// `n` consecutive values of a u32 -> u32 ARRAY map from index `first`,
/// through BPF_MAP_LOOKUP_BATCH (its `in_batch` is the key before the first
/// one returned).
fn read_u32_range(map: &dyn MapCore, first: u32, n: u32) -> Result<Vec<u32>> {
    let mut out: Vec<u32> = Vec::with_capacity(n as usize);
    let mut keys = vec![0u32; n as usize];
    let mut vals = vec![0u32; n as usize];
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    while (out.len() as u32) < n {
        let start = first + out.len() as u32;
        let mut count = n - out.len() as u32;
        let mut prev = start.wrapping_sub(1);
        let mut next = 0u32;
        let in_batch: *mut std::ffi::c_void = if start == 0 { std::ptr::null_mut() } else { (&mut prev as *mut u32).cast() };
        // SAFETY: keys and values hold `count` u32s (key and value size of
        // the map, checked below by the keys returned); in_batch / out_batch
        // point at one key each.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                in_batch,
                (&mut next as *mut u32).cast(),
                keys.as_mut_ptr().cast(),
                vals.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        // ENOENT: the map ended; `count` entries were read before it.
        if rc != 0 && rc != -libc::ENOENT {
            bail!("BPF_MAP_LOOKUP_BATCH from index {start}: {}", std::io::Error::from_raw_os_error(-rc));
        }
        if count == 0 {
            bail!("the map ends before index {start} (it holds fewer entries than the tables need)");
        }
        for (i, k) in keys[..count as usize].iter().enumerate() {
            anyhow::ensure!(*k == start + i as u32, "batched read returned key {k} where {} was due", start + i as u32);
        }
        out.extend_from_slice(&vals[..count as usize]);
    }
    Ok(out)
}
