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

mod hops;
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
}

impl Settings {
    /// Entries of the handshake table (bpf/maps.h syn_flows): a quarter of
    /// the flow table, at least 1024.
    pub fn syn_flows_size(&self) -> u32 {
        (self.conntrack_size / 4).max(1024)
    }

    pub fn for_plan(plan: &Plan, iface: &Iface) -> Settings {
        Settings {
            iface_mtu: iface.mtu,
            iface_addrs: iface.addrs.clone(),
            nat_timeouts: plan.nat_timeouts,
            ring_size: plan.table_size,
            conntrack_size: plan.conntrack_size,
            // Room for VIPs added by a reload (each costs two tables).
            max_vips: crate::config::ring_vip_slots(plan.vips.len()),
            iface_mac: iface.mac,
            shield: plan.shield.as_ref().map(ShieldLoad::from_config),
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
        let ro = open.maps.rodata_data.as_deref_mut().context("the BPF object has no .rodata")?;
        ro.ring_size = settings.ring_size;
        ro.iface_mac = settings.iface_mac;
        ro.iface_mtu = settings.iface_mtu;
        let [tcp, syn, fin, udp] = settings.nat_timeouts;
        ro.nat_tcp_timeout = tcp;
        ro.nat_syn_timeout = syn;
        ro.nat_fin_timeout = fin;
        ro.nat_udp_timeout = udp;
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
            ] {
                // A map the running instance does not have (an older weir) is made anew.
                let Some(fd) = reuse.iter().find(|(n, _)| n == name).map(|(_, f)| f) else { continue };
                let have = crate::mapio::max_entries(fd)?;
                if have != want {
                    bail!(
                        "the running instance's {name} holds {have} entries, this config needs {want}: \
                         stop it (weir stop) and start anew to change maglev.table_size, conntrack.size or the VIP count beyond its room"
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
        Ok(Dataplane { skel, settings, live: RefCell::new(BTreeMap::new()), backend_entries: RefCell::new(BTreeMap::new()) })
    }

    /// Sample one packet in `every` into the trace ring buffer (0: off).
    pub fn set_trace(&self, every: u32) -> Result<()> {
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, trace_every), every).context("switching the trace")
    }

    /// One u32 of the program's .bss (read, patch, write: the map is one value).
    fn set_bss_u32(&self, offset: usize, v: u32) -> Result<()> {
        let mut cur = self.skel.maps.bss.lookup(&key32(0), MapFlags::ANY)?.context("the program has no .bss value")?;
        cur.get_mut(offset..offset + 4).context(".bss is smaller than expected")?.copy_from_slice(&v.to_ne_bytes());
        self.skel.maps.bss.update(&key32(0), &cur, MapFlags::ANY)?;
        Ok(())
    }

    /// Non-VIP packets look for a NAT flow only while some VIP uses NAT.
    fn set_nat_on(&self, plan: &Plan) -> Result<()> {
        let on = plan.vips.iter().any(|v| v.mode == crate::config::Mode::Nat);
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, nat_on), u32::from(on))
            .context("switching NAT reply handling")
    }

    /// What would make NAT replies ambiguous, refused before anything is
    /// written: a source address that is also a VIP (its replies would be
    /// taken for client traffic), or SNAT ports on the interface's own
    /// address that overlap the kernel's ephemeral ports (the balancer's own
    /// connections, health checks included, could share a NAT flow's tuple).
    fn check_sources(&self, plan: &Plan) -> Result<()> {
        let (eph_lo, eph_hi) = ephemeral_ports();
        for v in plan.vips.iter().filter(|v| v.mode == crate::config::Mode::Nat) {
            let Some(src) = self.source_of(v)? else { continue };
            if let Some(o) = plan.vips.iter().find(|o| o.addr == src) {
                bail!(
                    "VIP {}: its NAT source address {src} is also the address of VIP {}: backends' replies to it would be taken for client traffic; \
                     give the VIP another source_address",
                    v.name,
                    o.name
                );
            }
            let [lo, hi] = v.source_ports;
            if self.settings.iface_addrs.contains(&src) && lo <= eph_hi && eph_lo <= hi {
                bail!(
                    "VIP {}: source_ports [{lo}, {hi}] overlap the kernel's ephemeral ports {eph_lo}-{eph_hi} on the interface's own address {src}: \
                     the balancer's own connections (health checks) could take a NAT flow's tuple; use ports outside that range or a source_address of its own",
                    v.name
                );
            }
        }
        Ok(())
    }

    /// The source address a NAT or tunnel VIP sends from: its own, or the
    /// interface's first global address of its family.
    fn source_of(&self, vip: &crate::plan::PlannedVip) -> Result<Option<IpAddr>> {
        if vip.mode == crate::config::Mode::Dsr {
            return Ok(None);
        }
        let src = vip.source.or_else(|| self.settings.iface_addrs.iter().copied().find(|a| a.is_ipv4() == vip.addr.is_ipv4()));
        let Some(src) = src else {
            bail!(
                "VIP {} (mode {}): the interface has no global {} address to send from: add one, or set source_address",
                vip.name,
                vip.mode,
                if vip.addr.is_ipv4() { "IPv4" } else { "IPv6" }
            );
        };
        Ok(Some(src))
    }

    /// The interface's global addresses changed to `addrs`: NAT and tunnel
    /// VIPs without a configured source_address now send from the new
    /// address of their family (one map update per VIP: a packet sees the
    /// old source or the new one). A VIP whose family has no address left
    /// keeps its old source (and says so). What changed, one line each.
    pub fn follow_addresses(&mut self, plan: &Plan, addrs: Vec<IpAddr>) -> Result<Vec<String>> {
        self.settings.iface_addrs = addrs;
        let mut lines = Vec::new();
        for v in plan.vips.iter().filter(|v| v.mode != crate::config::Mode::Dsr && v.source.is_none()) {
            let Some((key, mut meta)) = self.live.borrow().get(&v.id).copied() else { continue };
            let src = match self.source_of(v) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    lines.push(format!("VIP {}: keeps its source address: {e:#}", v.name));
                    continue;
                }
            };
            let words = addr_words(src).0;
            if meta.source == words {
                continue;
            }
            meta.source = words;
            self.skel.maps.vips.update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY).context("switching a VIP's source address")?;
            self.live.borrow_mut().insert(v.id, (key, meta));
            lines.push(format!("VIP {} (mode {}): new flows now leave from {src}", v.name, v.mode));
        }
        self.sync_neighbours(plan)?;
        Ok(lines)
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

    /// Write a plan into the maps. `hops` gives each backend id its next hop;
    /// `tx_ifindex` maps DEVMAP slots to interfaces.
    pub fn apply(&self, plan: &Plan, hops: &BTreeMap<u32, NextHop>, tx_ifindex: &BTreeMap<u32, u32>) -> Result<()> {
        self.apply_down(plan, hops, tx_ifindex, &BTreeSet::new())
    }

    /// `apply`, with `down` backends (and those without a next hop yet)
    /// out of the tables. Everything that can refuse the plan is checked
    /// before the first write.
    pub fn apply_down(
        &self,
        plan: &Plan,
        hops: &BTreeMap<u32, NextHop>,
        tx_ifindex: &BTreeMap<u32, u32>,
        down: &BTreeSet<u32>,
    ) -> Result<()> {
        if plan.table_size != self.settings.ring_size {
            bail!("plan's table size {} differs from the loaded {}", plan.table_size, self.settings.ring_size);
        }
        if plan.vips.len() as u32 > self.settings.max_vips {
            bail!("plan has {} VIPs, the program was sized for {}", plan.vips.len(), self.settings.max_vips);
        }
        let sources = self.resolve_writes(plan, tx_ifindex)?;
        let maps = &self.skel.maps;
        if let Some(sh) = &plan.shield {
            self.shield_maps().apply(sh, &shield_policies(plan, sh))?;
        }
        for (slot, ifindex) in tx_ifindex {
            maps.tx_ports
                .update(&key32(*slot), &ifindex.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("adding ifindex {ifindex} to the redirect DEVMAP (does it support XDP?)"))?;
        }
        for vip in &plan.vips {
            let mut out: BTreeSet<u32> = down.clone();
            for b in &vip.backends {
                match hops.get(&b.id) {
                    Some(hop) => self.write_backend(b, hop, false)?,
                    None => {
                        out.insert(b.id);
                    }
                }
            }
            if vip.backends.iter().any(|b| out.contains(&b.id)) {
                let (ring, rr, _) = crate::plan::tables(&vip.backends, plan.table_size, &out);
                self.publish_with(vip, &ring, &rr, sources[&vip.id])?;
            } else {
                self.publish_with(vip, &vip.ring, &vip.rr, sources[&vip.id])?;
            }
        }
        self.sync_neighbours(plan)?;
        self.set_nat_on(plan)
    }

    /// Phase one of a write: everything that can refuse `plan` on this
    /// data plane, resolved before anything is written (a refused plan
    /// writes nothing). The source address of every VIP.
    fn resolve_writes(&self, plan: &Plan, tx_ifindex: &BTreeMap<u32, u32>) -> Result<BTreeMap<u32, Option<IpAddr>>> {
        self.check_sources(plan)?;
        for slot in tx_ifindex.keys() {
            if *slot == 0 || *slot >= MAX_TX_PORTS {
                bail!("DEVMAP slot {slot} out of range");
            }
        }
        let mut sources = BTreeMap::new();
        for vip in &plan.vips {
            self.check_room(vip)?;
            sources.insert(vip.id, self.source_of(vip)?);
        }
        Ok(sources)
    }

    /// The addresses the XDP ARP / NDP responder answers for: every VIP, and
    /// every NAT source address that is not the interface's own (backends
    /// must find its MAC to reply; the kernel answers for its own ones).
    /// Each entry's value is the address's flags: WEIR_VIP_ECHO when its
    /// VIPs answer ping (a NAT source address never does).
    /// Entries of VIPs or sources no longer configured are removed, whoever
    /// wrote them (this instance, or the one it took over from).
    fn sync_neighbours(&self, plan: &Plan) -> Result<()> {
        let echo = weir_vip_flags::WEIR_VIP_ECHO.0;
        let mut want: BTreeMap<Vec<u8>, (u8, u32)> = BTreeMap::new();
        for v in &plan.vips {
            let mut addrs = vec![(v.addr, if v.icmp_echo { echo } else { 0 })];
            if v.mode == crate::config::Mode::Nat {
                addrs.extend(v.source.filter(|s| !self.settings.iface_addrs.contains(s)).map(|s| (s, 0)));
            }
            for (a, flags) in addrs {
                let (w, family) = addr_words(a);
                let key = if family == FAMILY_V4 { w[0].to_ne_bytes().to_vec() } else { bytes_of(&In6Key { addr: w }).to_vec() };
                want.entry(key).or_insert((family, 0)).1 |= flags;
            }
        }
        let maps = &self.skel.maps;
        for (key, (family, flags)) in &want {
            let map = if *family == FAMILY_V4 { &maps.vip_arp } else { &maps.vip_nd };
            map.update(key, &key32(*flags), MapFlags::ANY).context("writing the ARP/NDP responder's addresses")?;
        }
        for map in [&maps.vip_arp, &maps.vip_nd] {
            let stale: Vec<Vec<u8>> = map.keys().filter(|k| !want.contains_key(k)).collect();
            for k in stale {
                let _ = map.delete(&k);
            }
        }
        Ok(())
    }

    /// After a hand-over: learn which table half each running VIP uses, so
    /// the next write goes to the spare one.
    pub fn adopt_live(&self, prev: &Plan) -> Result<()> {
        for v in &prev.vips {
            let (addr, family) = addr_words(v.addr);
            let key = VipKey { addr, port: v.port.to_be(), proto: v.proto.number(), family };
            if let Some(val) = self.skel.maps.vips.lookup(bytes_of(&key), MapFlags::ANY)? {
                let meta: VipMeta = from_bytes(&val)?;
                self.live.borrow_mut().insert(v.id, (key, meta));
            }
        }
        Ok(())
    }

    /// Make a VIP live with these tables: a new VIP gets its tables before
    /// its key (a packet never finds a VIP without them); a live one is
    /// switched to the spare half in one update (see write_tables). The ARP /
    /// NDP responder learns its address in sync_neighbours.
    pub fn publish(&self, vip: &crate::plan::PlannedVip, ring: &[u32], rr: &[u32]) -> Result<()> {
        let source = self.source_of(vip)?;
        self.publish_with(vip, ring, rr, source)
    }

    /// A VIP's tables need a slot of the ring map sized at load.
    fn check_room(&self, vip: &crate::plan::PlannedVip) -> Result<()> {
        if vip.id >= self.settings.max_vips {
            bail!(
                "VIP {} needs table room {} but this instance has room for {} VIPs: restart weir to add more",
                vip.name,
                vip.id,
                self.settings.max_vips
            );
        }
        Ok(())
    }

    /// `publish` with the VIP's source address already resolved.
    fn publish_with(&self, vip: &crate::plan::PlannedVip, ring: &[u32], rr: &[u32], source: Option<IpAddr>) -> Result<()> {
        self.check_room(vip)?;
        let (addr, family) = addr_words(vip.addr);
        let key = VipKey { addr, port: vip.port.to_be(), proto: vip.proto.number(), family };
        let prev = self.live.borrow().get(&vip.id).copied();
        let half = match prev {
            Some((_, m)) => m.half ^ 1,
            None => 0,
        };
        self.write_block(vip.id, half, ring, rr)?;
        let [lo, hi] = vip.source_ports;
        let meta = VipMeta {
            vip_id: vip.id,
            sched: vip.sched as u8,
            mode: vip.mode as u8,
            rr_len: rr.len() as u16,
            half,
            source: source.map(|a| addr_words(a).0).unwrap_or_default(),
            port_lo: lo,
            // hi - lo + 1 ports; a full 1-65535 range is one short of 65535 + 1.
            port_span: (u32::from(hi) - u32::from(lo) + 1).min(65535) as u16,
            flags: if vip.icmp_too_big { weir_vip_flags::WEIR_VIP_ICMP_TOO_BIG.0 as u8 } else { 0 },
            ..Default::default()
        };
        self.skel.maps.vips.update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY).context("writing the VIP")?;
        self.live.borrow_mut().insert(vip.id, (key, meta));
        Ok(())
    }

    /// Take a VIP out: packets to it then go to the kernel. (Its ARP / NDP
    /// entry goes in sync_neighbours, unless another VIP shares the address.)
    pub fn unpublish(&self, vip_id: u32) -> Result<()> {
        let Some((key, _)) = self.live.borrow_mut().remove(&vip_id) else { return Ok(()) };
        self.skel.maps.vips.delete(bytes_of(&key)).context("deleting the VIP")?;
        Ok(())
    }

    /// Write (or rewrite) one backend's entry. `fresh`: the id is new to
    /// this backend (a reload gave it a freed id), so its generation moves on
    /// and its counters restart.
    pub fn write_backend(&self, b: &crate::plan::PlannedBackend, hop: &NextHop, fresh: bool) -> Result<()> {
        let (addr, family) = addr_words(b.addr);
        let current: Backend = match self.skel.maps.backends.lookup(&key32(b.id), MapFlags::ANY)? {
            Some(v) => from_bytes(&v)?,
            None => Backend::default(),
        };
        let generation = if fresh { current.generation.wrapping_add(1) } else { current.generation };
        let be = Backend {
            addr,
            mac: hop.mac,
            src_mac: hop.src_mac,
            tx_port: hop.tx_port,
            family,
            flags: weir_backend_flags::WEIR_BACKEND_ACTIVE.0 as u8,
            generation,
            port: b.port.map(u16::to_be).unwrap_or(0),
            ..Default::default()
        };
        if fresh {
            let cpus = libbpf_rs::num_possible_cpus()?;
            let zero = vec![bytes_of(&Traffic::default()).to_vec(); cpus];
            self.skel.maps.backend_stats.update_percpu(&key32(b.id), &zero, MapFlags::ANY)?;
        }
        self.skel
            .maps
            .backends
            .update(&key32(b.id), bytes_of(&be), MapFlags::ANY)
            .with_context(|| format!("writing backend {}", b.addr))?;
        self.backend_entries.borrow_mut().insert(b.id, be);
        Ok(())
    }

    /// Apply `new` over the running `old` without detaching: backends and
    /// tables are written before VIPs flip to them, removed backends are
    /// cleared after no table points at them. `down` are backends failing
    /// their health checks. What needs new program constants or map sizes is
    /// refused with the reason, and nothing is written then.
    pub fn reload(
        &self,
        old: &Plan,
        new: &Plan,
        hops: &BTreeMap<u32, NextHop>,
        tx_ifindex: &BTreeMap<u32, u32>,
        down: &BTreeSet<u32>,
    ) -> Result<String> {
        if new.table_size != self.settings.ring_size {
            bail!("maglev.table_size changed ({} -> {}): restart weir to apply it", self.settings.ring_size, new.table_size);
        }
        if new.conntrack_size != old.conntrack_size {
            bail!("conntrack.size changed ({} -> {}): restart weir to apply it", old.conntrack_size, new.conntrack_size);
        }
        if new.nat_timeouts != self.settings.nat_timeouts {
            bail!("a conntrack timeout changed: restart weir to apply it (they are constants of the loaded program)");
        }
        let lists = |p: &Plan| p.shield.as_ref().map(|s| (!s.deny.is_empty(), !s.allow.is_empty()));
        if lists(new) != lists(old) {
            bail!("[shield] was added or removed, or its allow/deny lists became empty or non-empty: restart weir to apply it");
        }
        if let Some(v) = new.vips.iter().find(|v| v.id >= self.settings.max_vips) {
            bail!("VIP {} does not fit: this instance has room for {} VIPs; restart weir to add more", v.name, self.settings.max_vips);
        }
        let sources = self.resolve_writes(new, tx_ifindex)?;
        // Phase two: the writes, in dependency order.
        for (slot, ifindex) in tx_ifindex {
            self.skel.maps.tx_ports.update(&key32(*slot), &ifindex.to_ne_bytes(), MapFlags::ANY)?;
        }
        if let Some(sh) = &new.shield {
            self.shield_maps().replace(sh, &shield_policies(new, sh))?;
        }
        let ids = |p: &Plan| -> BTreeSet<u32> { p.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.id)).collect() };
        let (old_b, new_b) = (ids(old), ids(new));
        for vip in &new.vips {
            let mut out: BTreeSet<u32> = down.clone();
            for b in &vip.backends {
                let Some(hop) = hops.get(&b.id) else {
                    // No MAC yet: out of the tables until it resolves.
                    out.insert(b.id);
                    self.remove_backend(b.id)?;
                    self.backend_entries.borrow_mut().remove(&b.id);
                    continue;
                };
                self.write_backend(b, hop, !old_b.contains(&b.id))?;
                if down.contains(&b.id) && vip.on_down == crate::config::OnDown::Reschedule {
                    self.remove_backend(b.id)?;
                }
            }
            let (ring, rr, _) = crate::plan::tables(&vip.backends, new.table_size, &out);
            self.publish_with(vip, &ring, &rr, sources[&vip.id])?;
        }
        let gone_vips: Vec<&crate::plan::PlannedVip> =
            old.vips.iter().filter(|o| !new.vips.iter().any(|n| n.id == o.id)).collect();
        for v in &gone_vips {
            self.unpublish(v.id)?;
        }
        for id in old_b.difference(&new_b) {
            self.remove_backend(*id)?;
            self.backend_entries.borrow_mut().remove(id);
        }
        self.sync_neighbours(new)?;
        self.set_nat_on(new)?;
        Ok(format!(
            "{} VIPs (+{} -{}), {} backends (+{} -{})",
            new.vips.len(),
            new.vips.iter().filter(|n| !old.vips.iter().any(|o| o.id == n.id)).count(),
            gone_vips.len(),
            new_b.len(),
            new_b.difference(&old_b).count(),
            old_b.difference(&new_b).count()
        ))
    }

    /// Mark a backend gone (the program then reschedules its tracked flows).
    pub fn remove_backend(&self, id: u32) -> Result<()> {
        // Keep the generation: the id's next owner must differ from it.
        let generation = match self.skel.maps.backends.lookup(&key32(id), MapFlags::ANY)? {
            Some(v) => from_bytes::<Backend>(&v)?.generation,
            None => 0,
        };
        let zero = Backend { generation, ..Default::default() };
        self.skel.maps.backends.update(&key32(id), bytes_of(&zero), MapFlags::ANY)?;
        Ok(())
    }

    /// A backend's next hop changed (its MAC, in the neighbour table): the
    /// entry kept for `restore_backend` takes it, and the map too while the
    /// backend is live there (one down for its health check stays out).
    pub fn set_backend_mac(&self, id: u32, hop: &NextHop) -> Result<()> {
        let mut entries = self.backend_entries.borrow_mut();
        let be = entries.get_mut(&id).with_context(|| format!("no backend {id}"))?;
        be.mac = hop.mac;
        be.src_mac = hop.src_mac;
        be.tx_port = hop.tx_port;
        if let Some(v) = self.skel.maps.backends.lookup(&key32(id), MapFlags::ANY)? {
            let mut cur: Backend = from_bytes(&v)?;
            if cur.flags & weir_backend_flags::WEIR_BACKEND_ACTIVE.0 as u8 != 0 {
                cur.mac = hop.mac;
                cur.src_mac = hop.src_mac;
                cur.tx_port = hop.tx_port;
                self.skel.maps.backends.update(&key32(id), bytes_of(&cur), MapFlags::ANY).context("writing a backend's MAC")?;
            }
        }
        Ok(())
    }

    /// Put a backend back as `apply` wrote it.
    pub fn restore_backend(&self, id: u32) -> Result<()> {
        let be = *self.backend_entries.borrow().get(&id).with_context(|| format!("no backend {id}"))?;
        self.skel.maps.backends.update(&key32(id), bytes_of(&be), MapFlags::ANY)?;
        Ok(())
    }

    fn write_block(&self, vip_id: u32, half: u32, ring: &[u32], rr: &[u32]) -> Result<()> {
        anyhow::ensure!(ring.len() as u32 == self.settings.ring_size, "ring of {} slots", ring.len());
        anyhow::ensure!(rr.len() as u32 <= RR_SLOTS, "round-robin sequence of {}", rr.len());
        let base = (vip_id * 2 + half) * self.settings.ring_size;
        let keys: Vec<u8> = (0..ring.len() as u32).flat_map(|s| key32(base + s)).collect();
        let vals: Vec<u8> = ring.iter().flat_map(|b| b.to_ne_bytes()).collect();
        self.skel
            .maps
            .maglev_ring
            .update_batch(&keys, &vals, ring.len() as u32, MapFlags::ANY, MapFlags::ANY)
            .context("writing the Maglev table")?;
        if !rr.is_empty() {
            let base = (vip_id * 2 + half) * RR_SLOTS;
            let keys: Vec<u8> = (0..rr.len() as u32).flat_map(|s| key32(base + s)).collect();
            let vals: Vec<u8> = rr.iter().flat_map(|b| b.to_ne_bytes()).collect();
            self.skel
                .maps
                .rr_ring
                .update_batch(&keys, &vals, rr.len() as u32, MapFlags::ANY, MapFlags::ANY)
                .context("writing the round-robin sequence")?;
        }
        Ok(())
    }

    /// Free the NAT flows that expired more than `margin_s` seconds ago.
    /// The walk runs in the kernel (the `weir_nat_sweep` program, through
    /// BPF_PROG_TEST_RUN) so that each free is a compare-and-swap on the
    /// entry's clock, like a claim: a port another CPU claims or refreshes
    /// meanwhile is never freed. Forward entries are left to their LRU.
    /// Returns how many flows were freed.
    pub fn sweep_nat(&self, margin_s: u32) -> Result<usize> {
        // struct nat_sweep_io: margin, seen, freed, pad; 14 bytes at least
        // (test_run wants an Ethernet header's worth).
        let mut io = [0u8; 16];
        io[0..4].copy_from_slice(&margin_s.to_ne_bytes());
        let (action, out, _) = test_run(&self.skel.progs.weir_nat_sweep, &io, 1).context("running the NAT sweep")?;
        if action != 2 {
            bail!("the NAT sweep returned XDP action {action}, expected 2 (its frame was refused)");
        }
        let freed = out.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes).unwrap_or(0);
        Ok(freed as usize)
    }

    /// Replace one VIP's Maglev table and round-robin sequence: the spare
    /// half is written, then the VIP flips to it in one map update, so a
    /// packet sees the old tables or the new, never a mix.
    pub fn write_tables(&self, vip_id: u32, ring: &[u32], rr: &[u32]) -> Result<()> {
        let (key, mut meta) = *self.live.borrow().get(&vip_id).with_context(|| format!("no VIP {vip_id}"))?;
        let next = meta.half ^ 1;
        self.write_block(vip_id, next, ring, rr)?;
        meta.half = next;
        meta.rr_len = rr.len() as u16;
        self.skel.maps.vips.update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY).context("switching the VIP's tables")?;
        self.live.borrow_mut().insert(vip_id, (key, meta));
        Ok(())
    }

    /// Replace one VIP's Maglev table, keeping its round-robin sequence.
    pub fn write_ring(&self, vip_id: u32, ring: &[u32]) -> Result<()> {
        let (_, meta) = *self.live.borrow().get(&vip_id).with_context(|| format!("no VIP {vip_id}"))?;
        let mut rr = Vec::with_capacity(meta.rr_len as usize);
        let base = (vip_id * 2 + meta.half) * RR_SLOTS;
        for k in 0..u32::from(meta.rr_len) {
            let v = self.skel.maps.rr_ring.lookup(&key32(base + k), MapFlags::ANY)?.unwrap_or_default();
            rr.push(u32::from_ne_bytes(v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4])));
        }
        self.write_tables(vip_id, ring, &rr)
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

/// The shield policy of every TCP VIP.
fn shield_policies(plan: &Plan, sh: &crate::config::Shield) -> Vec<(u32, crate::skel::ShieldPolicy)> {
    plan.vips.iter().filter(|v| v.proto == crate::config::Protocol::Tcp).map(|v| (v.id, policy(sh, v.shield.as_ref()))).collect()
}

/// The kernel's ephemeral port range (net.ipv4.ip_local_port_range, which
/// IPv6 shares); Linux's default when it cannot be read.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
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
