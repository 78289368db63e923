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
pub mod flows;
mod filter;
mod frags;
mod hops;
mod nat;
mod probe;
mod read;
mod writer;
pub use probe::ProbeSlot;
pub use flows::{flow4_key, FlowTables};
pub use filter::{filter_bit, FILTER_WORDS};
pub use hops::{configured_hops, next_hops, resolve_hops, Followed, HopPlan, NextHop};
use crate::net::Iface;
use crate::shield::{policy, ShieldLoad, ShieldMaps};
use crate::plan::Plan;
use crate::skel::lb::{LbSkel, LbSkelBuilder, OpenLbSkel};
use crate::skel::{
    bytes_of, from_bytes, weir_backend_flags, weir_vip_flags, Backend, In6Key, Traffic, VipKey, VipMeta, FAMILY_V4, MAX_TX_PORTS,
    RR_SLOTS,
};

/// Maps a new instance fills whole before it serves: on a hitless restart
/// from a weir whose entries have another layout they are made anew
/// instead of taken over.
const REWRITTEN_MAPS: &[&str] = &["backends", "probe_targets"];

/// Most entries of each family's handshake table (Settings::syn_flows_size).
pub const SYN_FLOWS_MAX: u32 = 524_288;

/// Load-time settings: they size maps or are constants in the program.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ring_size: u32,
    pub conntrack_size: u32,
    /// Some VIP is IPv6 at load: only then are the IPv6 flow tables sized
    /// (conntrack.size); otherwise they hold one entry and a reload that
    /// adds a first IPv6 VIP asks for a restart.
    pub ipv6: bool,
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
    /// Some VIP uses NAT: the NAT tables are sized with the flow table
    /// (else they hold nothing, and a reload cannot add a NAT VIP).
    pub nat: bool,
    /// The flow and handshake tables (flows4/6, syn_flows4/6) with a free list
    /// per CPU (BPF_F_NO_COMMON_LRU) instead of one shared: conntrack.lru_per_cpu.
    pub lru_per_cpu: bool,
    /// Load `weir bench`'s harness programs too (bpf/bench.h): only the bench.
    pub bench: bool,
}

impl Settings {
    /// Entries of each family's handshake table (bpf/maps.h syn_flows4,
    /// syn_flows6): a quarter of the flow table, at least 1024 and at most
    /// 524,288 (half a million handshakes in flight is a SYN flood, the
    /// shield's business; the bound keeps 10M flows within 1 GiB).
    pub fn syn_flows_size(&self) -> u32 {
        (self.conntrack_size / 4).clamp(1024, SYN_FLOWS_MAX)
    }

    /// Entries of the IPv6 flow table: conntrack.size with IPv6 VIPs, else 1.
    pub fn flows6_size(&self) -> u32 {
        if self.ipv6 {
            self.conntrack_size
        } else {
            1
        }
    }

    /// Entries of the IPv6 handshake table.
    pub fn syn_flows6_size(&self) -> u32 {
        if self.ipv6 {
            self.syn_flows_size()
        } else {
            1
        }
    }

    /// Entries of the datagram table (bpf/maps.h frags): one while
    /// fragments are off (a map cannot be empty).
    pub fn frags_size(&self) -> u32 {
        if self.fragments.enabled {
            self.fragments.max_datagrams
        } else {
            OFF_ENTRIES
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
            ipv6: plan.vips.iter().any(|v| v.addr.is_ipv6()),
            // Room for VIPs added by a reload (each costs two tables).
            max_vips: crate::config::ring_vip_slots(plan.vips.len()),
            iface_mac: iface.mac,
            shield: plan.shield.as_ref().map(ShieldLoad::from_config),
            nat: plan.uses_nat(),
            lru_per_cpu: plan.lru_per_cpu,
            bench: false,
        }
    }
}

/// Entries of a table whose feature is off: a map cannot be empty.
pub const OFF_ENTRIES: u32 = 1;

/// What a map's size follows: `weir check` prints it, a hitless restart
/// names it when the running instance's differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follows {
    /// One entry per tracked flow (conntrack.size).
    Flows,
    /// TCP handshakes in progress: a share of the flow table's budget.
    Handshakes,
    /// IPv6 flows and handshakes: as Flows / Handshakes while some VIP is
    /// IPv6, else nothing.
    Flows6,
    /// Full NAT flows: conntrack.size while a VIP uses NAT, else nothing.
    Nat,
    /// The shield's sources and challenges; nothing without [shield].
    Shield,
    /// Datagrams in flight; nothing while [fragments] is off.
    Fragments,
    /// maglev.table_size x the VIP room, two halves each.
    Maglev,
}

impl Follows {
    /// The config field(s) that set the size.
    pub fn setting(self) -> &'static str {
        match self {
            Follows::Flows | Follows::Handshakes => "conntrack.size",
            Follows::Flows6 => "conntrack.size (IPv6 VIPs)",
            Follows::Nat => "conntrack.size (NAT VIPs)",
            Follows::Shield => "shield.sources / shield.challenges",
            Follows::Fragments => "fragments.max_datagrams",
            Follows::Maglev => "maglev.table_size and the VIP count",
        }
    }

    /// The switch of a table sized to nothing while it is off.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Follows::Nat => Some("NAT (a VIP with mode = \"nat\")"),
            Follows::Flows6 => Some("IPv6 (an IPv6 VIP)"),
            Follows::Shield => Some("[shield]"),
            Follows::Fragments => Some("[fragments]"),
            _ => None,
        }
    }

    /// Counted in the memory per tracked flow.
    pub fn per_flow(self) -> bool {
        matches!(self, Follows::Flows | Follows::Handshakes | Follows::Flows6)
    }
}

/// One map the sizing set.
#[derive(Debug, Clone)]
pub struct MapSize {
    pub name: String,
    pub entries: u32,
    pub follows: Follows,
    /// Its feature is on (always, for tables of no feature).
    pub on: bool,
}

impl MapSize {
    /// `weir check`'s note: the setting, or why it holds nothing.
    pub fn note(&self) -> String {
        match (self.on, self.follows.feature()) {
            (false, Some(f)) => format!("off: {f} is off"),
            _ => self.follows.setting().to_string(),
        }
    }
}

/// Open the load-balancer object and size it for `settings`: map sizes and
/// the program's constants. Both loading and `weir check`'s memory plan
/// start here, so the plan is of what the loader creates.
pub fn open_sized(settings: &Settings) -> Result<(OpenLbSkel<'static>, Vec<MapSize>)> {
    // The skeleton borrows its object for its whole life; weir keeps one
    // data plane per process (tests a few), so leaking the holder is fine.
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = LbSkelBuilder::default().open(holder).context("opening the load-balancer BPF object")?;
    let sized = size(&mut open, settings)?;
    Ok((open, sized))
}

/// Set every sized map's max_entries and the program's constants.
pub fn size(open: &mut OpenLbSkel<'_>, settings: &Settings) -> Result<Vec<MapSize>> {
    // Two halves per VIP: see write_tables.
    let ring_entries = u64::from(settings.ring_size) * u64::from(settings.max_vips) * 2;
    let ring_entries = u32::try_from(ring_entries).context("maglev.table_size x VIPs exceeds 2^32 slots")?;
    let shield = settings.shield.as_ref();
    let nat = if settings.nat { settings.conntrack_size } else { OFF_ENTRIES };
    let on = |entries, follows, on| MapSize { name: String::new(), entries, follows, on };
    let sources = shield.map_or(OFF_ENTRIES, |s| s.sources);
    // The tables are written through a mapping of these two maps (see
    // write_block). Maps adopted from a running instance keep the flags they
    // were made with: libbpf takes them from its map.
    for m in [&mut open.maps.maglev_ring, &mut open.maps.rr_ring] {
        let flags = m.map_flags() | libbpf_sys::BPF_F_MMAPABLE;
        m.set_map_flags(flags)?;
    }
    // The bench's harness programs (bpf/bench.h) are verified only when asked for.
    open.progs.weir_lb_bench.set_autoload(settings.bench);
    open.progs.weir_bench_base.set_autoload(settings.bench);
    if settings.lru_per_cpu {
        for m in [&mut open.maps.flows4, &mut open.maps.flows6, &mut open.maps.syn_flows4, &mut open.maps.syn_flows6] {
            let flags = m.map_flags() | libbpf_sys::BPF_F_NO_COMMON_LRU;
            m.set_map_flags(flags)?;
        }
    }
    let m = &mut open.maps;
    let maps = [
        (&mut m.maglev_ring, on(ring_entries, Follows::Maglev, true)),
        (&mut m.flows4, on(settings.conntrack_size, Follows::Flows, true)),
        (&mut m.syn_flows4, on(settings.syn_flows_size(), Follows::Handshakes, true)),
        (&mut m.flows6, on(settings.flows6_size(), Follows::Flows6, settings.ipv6)),
        (&mut m.syn_flows6, on(settings.syn_flows6_size(), Follows::Flows6, settings.ipv6)),
        (&mut m.nat_fwd, on(nat, Follows::Nat, settings.nat)),
        (&mut m.nat_rev, on(nat, Follows::Nat, settings.nat)),
        (&mut m.frags, on(settings.frags_size(), Follows::Fragments, settings.fragments.enabled)),
        (&mut m.syn_bucket, on(sources, Follows::Shield, shield.is_some())),
        (&mut m.syn_verified, on(sources, Follows::Shield, shield.is_some())),
        (&mut m.syn_challenge, on(shield.map_or(OFF_ENTRIES, |s| s.challenges), Follows::Shield, shield.is_some())),
    ];
    let mut sized = Vec::with_capacity(maps.len());
    for (map, mut s) in maps {
        s.name = map.name().to_string_lossy().into_owned();
        map.set_max_entries(s.entries).with_context(|| format!("sizing map {}", s.name))?;
        sized.push(s);
    }
    let ro = open.maps.rodata_data.as_deref_mut().context("the BPF object has no .rodata")?;
    ro.ring_size = settings.ring_size;
    ro.iface_mac = settings.iface_mac;
    let mac = settings.iface_mac;
    ro.iface_mac_word = u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
    ro.iface_mtu = settings.iface_mtu;
    let [tcp, syn, fin, udp] = settings.nat_timeouts;
    ro.nat_tcp_timeout = tcp;
    ro.nat_syn_timeout = syn;
    ro.nat_fin_timeout = fin;
    ro.nat_udp_timeout = udp;
    ro.frag_on = u8::from(settings.fragments.enabled);
    ro.frag_timeout_ms = settings.fragments.timeout_ms;
    if let Some(sh) = shield {
        ro.shield_on = 1;
        ro.has_deny = u32::from(sh.has_deny);
        ro.has_allow = u32::from(sh.has_allow);
        ro.guard_interval_ns = sh.guard_interval_ns;
        ro.guard_burst_ns = sh.guard_burst_ns;
    }
    Ok(sized)
}

/// The kernel memory the data plane of `settings` will hold, per map, from
/// the sized (not loaded) object: no privileges needed.
pub fn memory_plan(settings: &Settings) -> Result<crate::memplan::MemPlan> {
    use libbpf_rs::skel::OpenSkel as _;
    let (open, sized) = open_sized(settings)?;
    let cpus = libbpf_rs::num_possible_cpus().context("counting the possible CPUs")? as u64;
    let maps = open
        .open_object()
        .maps()
        .filter(|m| m.autocreate())
        .map(|m| {
            let def = crate::memplan::MapDef::of_open(&m);
            let s = sized.iter().find(|s| s.name == def.name);
            crate::memplan::MapPlan {
                cost: crate::memplan::cost(&def, cpus),
                note: s.map_or_else(|| "fixed".to_string(), MapSize::note),
                per_flow: s.is_some_and(|s| s.follows.per_flow()),
                def,
            }
        })
        .collect();
    Ok(crate::memplan::MemPlan { maps, cpus, tracked_flows: settings.conntrack_size })
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
    /// The address filter as last written (filter.rs); None: not read yet.
    filter: RefCell<Option<filter::FilterState>>,
    /// maglev_ring and rr_ring mapped into memory (BPF_F_MMAPABLE); None
    /// for maps adopted from an instance that made them without the flag
    /// (tables are then written with BPF_MAP_UPDATE_BATCH).
    ring_mem: Option<crate::mapio::MappedU32Array>,
    rr_mem: Option<crate::mapio::MappedU32Array>,
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
    /// size; a change of sizes needs a plain restart. The tables of a
    /// feature turned on or off (NAT, [shield], [fragments]) are made anew:
    /// the old instance's are sized to nothing or serve what is gone.
    pub fn load_reusing(settings: Settings, reuse: &[(String, std::os::fd::OwnedFd)]) -> Result<Dataplane> {
        let (mut open, sized) = open_sized(&settings)?;
        if !reuse.is_empty() {
            // Sizes first: libbpf would take the old maps' sizes silently, and
            // a mismatch found while writing would corrupt the running tables.
            let mut adopt = Vec::new();
            for m in open.open_object().maps() {
                let want = crate::memplan::MapDef::of_open(&m);
                // A map the running instance does not have (an older weir) is made anew.
                let Some(fd) = reuse.iter().find(|(n, _)| *n == want.name).map(|(_, f)| f) else { continue };
                let have = crate::mapio::map_info(fd)?;
                let s = sized.iter().find(|s| s.name == want.name);
                if have.same_layout(&want) {
                    adopt.push(want.name);
                    continue;
                }
                // Entries this instance writes whole before it serves
                // (backends, probe targets): a running weir with another
                // layout (an upgrade) keeps its own; this one starts anew.
                if REWRITTEN_MAPS.contains(&want.name.as_str()) && !have.same_layout(&want) {
                    tracing::info!("map {}: the running instance's entries have another layout (an older weir): made anew", want.name);
                    continue;
                }
                if let Some(s) = s.filter(|s| s.follows.feature().is_some() && (!s.on || have.max_entries == OFF_ENTRIES)) {
                    tracing::info!(
                        "map {}: {} was switched since the running instance started: made anew ({} -> {} entries)",
                        s.name,
                        s.follows.feature().unwrap_or_default(),
                        have.max_entries,
                        s.entries
                    );
                    continue;
                }
                let layout = have.map_type != want.map_type as u32 || have.key_size != want.key_size || have.value_size != want.value_size;
                if layout || have.max_entries == want.max_entries {
                    bail!(
                        "the running instance's map {} has another layout (type {}, key {} bytes, value {} bytes, flags {:#x}; \
                         this weir's: type {}, {} and {} bytes, flags {:#x}): a weir of another version cannot be taken over: \
                         stop it (weir stop) and start this one",
                        want.name, have.map_type, have.key_size, have.value_size, have.map_flags,
                        want.map_type as u32, want.key_size, want.value_size, want.map_flags
                    );
                }
                let setting = s.map(|s| s.follows.setting()).unwrap_or("its definition");
                bail!(
                    "the running instance's {} holds {} entries, this config needs {} (set by {setting}): \
                     stop it (weir stop) and start anew to change {setting}",
                    want.name,
                    have.max_entries,
                    want.max_entries
                );
            }
            use libbpf_rs::skel::OpenSkel as _;
            for mut m in open.open_object_mut().maps_mut() {
                let name = m.name().to_string_lossy().to_string();
                if !adopt.contains(&name) {
                    continue;
                }
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
        let ring_mem = crate::mapio::MappedU32Array::of(&skel.maps.maglev_ring).context("mapping maglev_ring")?;
        let rr_mem = crate::mapio::MappedU32Array::of(&skel.maps.rr_ring).context("mapping rr_ring")?;
        if ring_mem.is_none() || rr_mem.is_none() {
            tracing::info!(
                "the Maglev tables adopted from the running instance cannot be mapped into memory (made by an older weir): \
                 they are written by syscalls, slower, until weir is stopped and started anew"
            );
        }
        let dp = Dataplane {
            skel,
            settings,
            ring_mem,
            rr_mem,
            live: RefCell::new(BTreeMap::new()),
            backend_entries: RefCell::new(BTreeMap::new()),
            writes: Default::default(),
            blocks: RefCell::new(BTreeMap::new()),
            probe_slots: RefCell::new(BTreeMap::new()),
            filter: RefCell::new(None),
        };
        dp.adopt_old_flow_tables(reuse)?;
        Ok(dp)
    }

    /// Taking over from a weir whose flow tables were one `flows` and one
    /// `syn_flows` for both families (before flows4 / flows6): copy their
    /// entries into this program's tables before it is attached, so that a
    /// hitless upgrade keeps every tracked flow. One walk, before traffic
    /// moves; the old instance keeps serving meanwhile.
    fn adopt_old_flow_tables(&self, reuse: &[(String, std::os::fd::OwnedFd)]) -> Result<()> {
        for (name, into) in [("flows", FlowTables::established(self)?), ("syn_flows", FlowTables::handshakes(self)?)] {
            let Some((_, fd)) = reuse.iter().find(|(n, _)| n == name) else { continue };
            let info = libbpf_rs::MapInfo::new(fd.as_fd()).with_context(|| format!("reading the running instance's {name} map"))?;
            let old = libbpf_rs::MapHandle::from_map_id(info.info.id).with_context(|| format!("opening the running instance's {name} map"))?;
            let (mut copied, mut skipped) = (0u64, 0u64);
            for k in old.keys() {
                let (Ok(key), Some(v)) = (from_bytes::<crate::skel::FlowKey>(&k), old.lookup(&k, MapFlags::ANY).ok().flatten()) else {
                    skipped += 1;
                    continue;
                };
                match from_bytes::<crate::skel::Flow>(&v).and_then(|f| into.insert_new(&key, &f)) {
                    Ok(_) => copied += 1,
                    Err(_) => skipped += 1,
                }
            }
            tracing::info!("took over {copied} tracked flows from the running instance's {name} table ({skipped} not copied)");
        }
        Ok(())
    }

    /// Bumped by every write that can change which backend a new flow gets
    /// (VIP entries, Maglev and round-robin tables, backend entries): what
    /// is derived from those maps (the live fingerprint) is current while
    /// this number is the same.
    pub fn table_writes(&self) -> u64 {
        self.writes.get()
    }

    /// Whether the Maglev and round-robin tables are written through a
    /// mapping of their maps (false: maps adopted from an older instance).
    pub fn tables_mapped(&self) -> bool {
        self.ring_mem.is_some() && self.rr_mem.is_some()
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
        let dsr = flows::FlowTables::established(self).map(|t| t.count(cap)).unwrap_or(0);
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
    load_configured_as(plan, iface, Settings::for_plan(plan, iface))
}

/// load_configured with settings of the caller's (the bench's harness).
pub fn load_configured_as(plan: &Plan, iface: &Iface, settings: Settings) -> Result<Dataplane> {
    let (hops, tx) = configured_hops(plan, iface)?;
    let dp = Dataplane::load(settings)?;
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
