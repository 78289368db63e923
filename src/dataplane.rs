//! The loaded load-balancer program and its maps: the one API through which
//! both `weir run` and the tests configure the data plane.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, ProgramInput};

pub use crate::mapio::{addr_words, read_counters};

mod addresses;
mod frags;
mod hops;
mod nat;
mod probe;
mod read;
mod writer;
pub use probe::ProbeSlot;
pub use hops::{configured_hops, next_hops, resolve_hops, Followed, HopPlan, NextHop};
use crate::net::Iface;
use crate::shield::{policy, ShieldLoad, ShieldMaps};
use crate::plan::Plan;
use crate::skel::lb::{LbSkel, LbSkelBuilder};
use crate::skel::{
    bytes_of, from_bytes, weir_backend_flags, weir_vip_flags, Backend, In6Key, Traffic, VipKey, VipMeta, FAMILY_V4, MAX_TX_PORTS,
    RR_SLOTS,
};

/// Load-time settings: they size maps or are constants in the program.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ring_size: u32,
    pub conntrack_size: u32,
    /// VIP slots in the Maglev ring map.
    pub max_vips: u32,
    /// MAC the ARP responder answers with.
    pub iface_mac: [u8; 6],
    /// The SYN-flood shield in the same program; None: compiled out at load.
    pub shield: Option<ShieldLoad>,
    /// Largest IP packet the interface sends (tunnel encapsulation).
    pub iface_mtu: u32,
    /// The interface's global addresses: the default source of NAT and
    /// tunnel VIPs.
    pub iface_addrs: Vec<IpAddr>,
    /// NAT idle timeouts, seconds: tcp, tcp_syn, tcp_fin, udp.
    pub nat_timeouts: [u32; 4],
    /// `[fragments]`: on, the datagram table's size and timeout.
    pub fragments: crate::config::Fragments,
    /// The flow and handshake tables (flows, syn_flows) with a free list
    /// per CPU (BPF_F_NO_COMMON_LRU) instead of one shared: measured by
    /// `weir bench --cpus`; off in the daemon.
    pub lru_per_cpu: bool,
}

impl Settings {
    /// Entries of the handshake table (bpf/maps.h syn_flows): a quarter of
    /// the flow table, at least 1024.
    pub fn syn_flows_size(&self) -> u32 {
        (self.conntrack_size / 4).max(1024)
    }

    /// Entries of the datagram table (bpf/maps.h frags): one while
    /// fragments are off (a map cannot be empty).
    pub fn frags_size(&self) -> u32 {
        if self.fragments.enabled {
            self.fragments.max_datagrams
        } else {
            1
        }
    }

    pub fn for_plan(plan: &Plan, iface: &Iface) -> Settings {
        Settings {
            iface_mtu: iface.mtu,
            iface_addrs: iface.addrs.clone(),
            nat_timeouts: plan.nat_timeouts,
            fragments: plan.fragments.clone(),
            ring_size: plan.table_size,
            conntrack_size: plan.conntrack_size,
            // Room for VIPs added by a reload (each costs two tables).
            max_vips: crate::config::ring_vip_slots(plan.vips.len()),
            iface_mac: iface.mac,
            shield: plan.shield.as_ref().map(ShieldLoad::from_config),
            lru_per_cpu: false,
        }
    }
}

pub struct Dataplane {
    pub skel: LbSkel<'static>,
    pub settings: Settings,
    /// Each VIP's key and live metadata (which table half is live).
    live: RefCell<BTreeMap<u32, (VipKey, VipMeta)>>,
    /// Backends as `apply` wrote them, to restore after a health check.
    backend_entries: RefCell<BTreeMap<u32, Backend>>,
    /// Writes of VIP entries, tables and backend entries so far (see
    /// `table_writes`).
    writes: std::cell::Cell<u64>,
    /// `writes` as of each (VIP id, half) table block's last write.
    blocks: RefCell<BTreeMap<(u32, u32), u64>>,
    /// Data-path probes by index in probe_targets (source port - PROBE_PORT_LO).
    probe_slots: RefCell<BTreeMap<u32, ProbeSlot>>,
}

fn key32(k: u32) -> [u8; 4] {
    k.to_ne_bytes()
}

impl Dataplane {
    /// Open, size and load the program. Nothing is attached.
    pub fn load(settings: Settings) -> Result<Dataplane> {
        Self::load_reusing(settings, &[])
    }

    /// Load on the maps of a running instance (hitless restart): its flow
    /// table, counters and tables live on. Every map must match in type and
    /// size; a change of sizes needs a plain restart.
    pub fn load_reusing(settings: Settings, reuse: &[(String, std::os::fd::OwnedFd)]) -> Result<Dataplane> {
        // The skeleton borrows its object for its whole life; weir keeps one
        // data plane per process (tests a few), so leaking the holder is fine.
        let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = LbSkelBuilder::default()
            .open(holder)
            .context("opening the load-balancer BPF object")?;
        // Two halves per VIP: see write_tables.
        let ring_entries = u64::from(settings.ring_size) * u64::from(settings.max_vips) * 2;
        let ring_entries = u32::try_from(ring_entries).context("maglev.table_size x VIPs exceeds 2^32 slots")?;
        open.maps.maglev_ring.set_max_entries(ring_entries)?;
        open.maps.flows.set_max_entries(settings.conntrack_size)?;
        open.maps.syn_flows.set_max_entries(settings.syn_flows_size())?;
        open.maps.nat_fwd.set_max_entries(settings.conntrack_size)?;
        open.maps.nat_rev.set_max_entries(settings.conntrack_size)?;
        open.maps.frags.set_max_entries(settings.frags_size())?;
        if settings.lru_per_cpu {
            for m in [&mut open.maps.flows, &mut open.maps.syn_flows] {
                let flags = m.map_flags() | libbpf_sys::BPF_F_NO_COMMON_LRU;
                m.set_map_flags(flags)?;
            }
        }
        let ro = open.maps.rodata_data.as_deref_mut().context("the BPF object has no .rodata")?;
        ro.ring_size = settings.ring_size;
        ro.iface_mac = settings.iface_mac;
        let m = settings.iface_mac;
        ro.iface_mac_word = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
        ro.iface_mtu = settings.iface_mtu;
        let [tcp, syn, fin, udp] = settings.nat_timeouts;
        ro.nat_tcp_timeout = tcp;
        ro.nat_syn_timeout = syn;
        ro.nat_fin_timeout = fin;
        ro.nat_udp_timeout = udp;
        ro.frag_on = u8::from(settings.fragments.enabled);
        ro.frag_timeout_ms = settings.fragments.timeout_ms;
        if let Some(sh) = &settings.shield {
            ro.shield_on = 1;
            ro.has_deny = u32::from(sh.has_deny);
            ro.has_allow = u32::from(sh.has_allow);
            ro.guard_interval_ns = sh.guard_interval_ns;
            ro.guard_burst_ns = sh.guard_burst_ns;
        }
        if let Some(sh) = &settings.shield {
            open.maps.syn_bucket.set_max_entries(sh.sources)?;
            open.maps.syn_verified.set_max_entries(sh.sources)?;
            open.maps.syn_challenge.set_max_entries(sh.challenges)?;
        }
        if !reuse.is_empty() {
            // Sizes first: libbpf would take the old maps' sizes silently, and
            // a mismatch found while writing would corrupt the running tables.
            for (name, want) in [
                ("maglev_ring", ring_entries),
                ("flows", settings.conntrack_size),
                ("syn_flows", settings.syn_flows_size()),
                ("nat_fwd", settings.conntrack_size),
                ("nat_rev", settings.conntrack_size),
                ("frags", settings.frags_size()),
            ] {
                // A map the running instance does not have (an older weir) is made anew.
                let Some(fd) = reuse.iter().find(|(n, _)| n == name).map(|(_, f)| f) else { continue };
                let have = crate::mapio::max_entries(fd)?;
                if have != want {
                    bail!(
                        "the running instance's {name} holds {have} entries, this config needs {want}: \
                         stop it (weir stop) and start anew to change maglev.table_size, conntrack.size, fragments.max_datagrams or the VIP count beyond its room"
                    );
                }
            }
            use libbpf_rs::skel::OpenSkel as _;
            for mut m in open.open_object_mut().maps_mut() {
                let name = m.name().to_string_lossy().to_string();
                if let Some((_, fd)) = reuse.iter().find(|(n, _)| *n == name) {
                    m.reuse_fd(fd.as_fd()).with_context(|| {
                        format!(
                            "adopting map {name} of the running instance (a weir whose maps have another layout \
                             cannot be taken over: weir stop, then start this one)"
                        )
                    })?;
                }
            }
        }
        let skel = open.load().map_err(|e| {
            let hint = if e.kind() == libbpf_rs::ErrorKind::PermissionDenied {
                " (run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
            } else {
                ""
            };
            anyhow::anyhow!("loading the load-balancer BPF program into the kernel failed: {e}{hint}")
        })?;
        Ok(Dataplane {
            skel,
            settings,
            live: RefCell::new(BTreeMap::new()),
            backend_entries: RefCell::new(BTreeMap::new()),
            writes: Default::default(),
            blocks: RefCell::new(BTreeMap::new()),
            probe_slots: RefCell::new(BTreeMap::new()),
        })
    }

    /// Bumped by every write that can change which backend a new flow gets
    /// (VIP entries, Maglev and round-robin tables, backend entries): what
    /// is derived from those maps (the live fingerprint) is current while
    /// this number is the same.
    pub fn table_writes(&self) -> u64 {
        self.writes.get()
    }

    fn wrote(&self) {
        self.writes.set(self.writes.get() + 1);
    }

    /// `table_writes` as of the last write of a VIP's table block `half`
    /// by this data plane (None: not written by it): what was read from the
    /// block since is current while this is the same.
    pub fn block_written(&self, vip_id: u32, half: u32) -> Option<u64> {
        self.blocks.borrow().get(&(vip_id, half & 1)).copied()
    }

    /// Sample one packet in `every` into the trace ring buffer (0: off).
    pub fn set_trace(&self, every: u32) -> Result<()> {
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, trace_every), every).context("switching the trace")
    }

    /// One u32 of the program's .bss.
    fn bss_u32(&self, offset: usize) -> Result<u32> {
        let cur = self.skel.maps.bss.lookup(&key32(0), MapFlags::ANY)?.context("the program has no .bss value")?;
        let b = cur.get(offset..offset + 4).context(".bss is smaller than expected")?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One u32 of the program's .bss (read, patch, write: the map is one value).
    /// New flows go to the flow_sync ring only while the tier has peers.
    pub fn set_sync_on(&self, on: bool) -> Result<()> {
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, sync_on), u32::from(on))
            .context("switching the flow sync")
    }

    fn set_bss_u32(&self, offset: usize, v: u32) -> Result<()> {
        let mut cur = self.skel.maps.bss.lookup(&key32(0), MapFlags::ANY)?.context("the program has no .bss value")?;
        cur.get_mut(offset..offset + 4).context(".bss is smaller than expected")?.copy_from_slice(&v.to_ne_bytes());
        self.skel.maps.bss.update(&key32(0), &cur, MapFlags::ANY)?;
        Ok(())
    }

    pub fn trace_ring_fd(&self) -> std::os::fd::RawFd {
        self.skel.maps.trace_rb.as_fd().as_raw_fd()
    }

    /// The maps a successor adopts: every one but the program's constants.
    /// Raw fds: valid while this data plane lives.
    pub fn shareable_maps(&self) -> Vec<(String, std::os::fd::RawFd)> {
        use libbpf_rs::skel::Skel as _;
        self.skel
            .object()
            .maps()
            .map(|m| (m.name().to_string_lossy().to_string(), m.as_fd().as_raw_fd()))
            .filter(|(n, _)| !n.contains('.'))
            .collect()
    }

    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.skel.progs.weir_lb.as_fd()
    }

    pub fn global_counters(&self) -> Result<Vec<u64>> {
        read_counters(&self.skel.maps.stats)
    }

    /// The shield's maps in this program (the combined entry).
    pub fn shield_maps(&self) -> ShieldMaps<'_> {
        let m = &self.skel.maps;
        ShieldMaps {
            pol: &m.shield_pol,
            state: &m.shield_state,
            deny_v4: &m.deny_v4,
            deny_v6: &m.deny_v6,
            allow_v4: &m.allow_v4,
            allow_v6: &m.allow_v6,
        }
    }

    fn traffic(map: &dyn MapCore, id: u32) -> Result<Traffic> {
        let mut t = Traffic::default();
        for b in map.lookup_percpu(&key32(id), MapFlags::ANY)?.into_iter().flatten() {
            let c: Traffic = from_bytes(&b)?;
            t.packets += c.packets;
            t.bytes += c.bytes;
            t.new_flows += c.new_flows;
        }
        Ok(t)
    }

    pub fn vip_traffic(&self, vip_id: u32) -> Result<Traffic> {
        Self::traffic(&self.skel.maps.vip_stats, vip_id)
    }

    pub fn backend_traffic(&self, backend_id: u32) -> Result<Traffic> {
        Self::traffic(&self.skel.maps.backend_stats, backend_id)
    }

    /// Entries in the flow table, counted up to `cap` (a walk is one
    /// syscall per entry: stats must not stall the control loop).
    /// NAT flows count once (their forward entries), expired ones included
    /// until swept.
    pub fn flow_count(&self, cap: usize) -> usize {
        let dsr = self.skel.maps.flows.keys().take(cap).count();
        dsr + self.skel.maps.nat_fwd.keys().take(cap - dsr).count()
    }

    /// Run the program once on `frame` through BPF_PROG_TEST_RUN: the XDP
    /// action and the frame as the program left it.
    pub fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        test_run(&self.skel.progs.weir_lb, frame, 1).map(|(a, out, _)| (a, out))
    }
}

/// One BPF_PROG_TEST_RUN call: action, output frame, mean ns per repetition.
pub fn test_run(prog: &libbpf_rs::ProgramMut<'_>, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, f64)> {
    let mut out = vec![0u8; frame.len() + 256];
    let input = ProgramInput { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() };
    let o = prog
        .test_run(input)
        .with_context(|| format!("BPF_PROG_TEST_RUN on fd {} failed", prog.as_fd().as_raw_fd()))?;
    let n = o.data.as_ref().map(|d| d.len()).unwrap_or(0);
    let ns = o.duration.as_nanos() as f64;
    let action = o.return_value;
    out.truncate(n);
    Ok((action, out, ns))
}

/// Load and fill a data plane for a plan whose backends carry their MACs.
pub fn load_configured(plan: &Plan, iface: &Iface) -> Result<Dataplane> {
    let (hops, tx) = configured_hops(plan, iface)?;
    let dp = Dataplane::load(Settings::for_plan(plan, iface))?;
    dp.apply(plan, &hops, &tx)?;
    Ok(dp)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::plan::Plan;

    #[test]
    fn the_memory_check_budgets_what_the_loader_allocates() {
        let iface = crate::net::Iface::unattached("t0", [2, 0, 0, 0, 0, 1]);
        for n in [1usize, 15, 16, 17, 40] {
            let mut t = String::from("[maglev]\ntable_size = 65537\n");
            for i in 0..n {
                t += &format!("[[vip]]\naddress = \"198.18.1.{}\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\nmac = \"02:00:00:00:00:0b\"\n", i + 1);
            }
            let plan = Plan::build(&Config::from_toml(&t).unwrap()).unwrap();
            let s = super::Settings::for_plan(&plan, &iface);
            // The loader: ring_size x max_vips x 2 halves, 8-byte values.
            let loader = u64::from(s.ring_size) * u64::from(s.max_vips) * 2 * 8;
            assert_eq!(loader, crate::config::ring_bytes(plan.table_size, n), "{n} VIPs");
        }
    }
}
