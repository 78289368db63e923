//! Writing a plan into the maps: VIPs, backends, double-buffered Maglev and
//! round-robin tables, health changes, and reloads (everything that can
//! refuse one is resolved before the first write).

use super::*;

impl Dataplane {
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
                    Some(hop) => self.write_backend(vip, b, hop, false)?,
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
        self.sync_frag_vips(plan)?;
        self.set_nat_on(plan)?;
        self.filter_sync()
    }

    /// Phase one of a write: everything that can refuse `plan` on this
    /// data plane, resolved before anything is written (a refused plan
    /// writes nothing). The source address of every VIP.
    pub(crate) fn resolve_writes(&self, plan: &Plan, tx_ifindex: &BTreeMap<u32, u32>) -> Result<BTreeMap<u32, Option<IpAddr>>> {
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
    pub(crate) fn check_room(&self, vip: &crate::plan::PlannedVip) -> Result<()> {
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
    pub(crate) fn publish_with(&self, vip: &crate::plan::PlannedVip, ring: &[u32], rr: &[u32], source: Option<IpAddr>) -> Result<()> {
        self.wrote();
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
            vlan: vip.vlan,
            ..Default::default()
        };
        self.filter_add(&[key.addr], vip.mode == crate::config::Mode::Dsr)?;
        self.filter_add_source(meta.source)?;
        self.skel.maps.vips.update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY).context("writing the VIP")?;
        self.live.borrow_mut().insert(vip.id, (key, meta));
        Ok(())
    }

    /// Take a VIP out: packets to it then go to the kernel. (Its ARP / NDP
    /// entry goes in sync_neighbours, unless another VIP shares the address.)
    pub fn unpublish(&self, vip_id: u32) -> Result<()> {
        self.wrote();
        let Some((key, _)) = self.live.borrow_mut().remove(&vip_id) else { return Ok(()) };
        self.skel.maps.vips.delete(bytes_of(&key)).context("deleting the VIP")?;
        Ok(())
    }

    /// Write (or rewrite) one backend's entry. `fresh`: the id is new to
    /// this backend (a reload gave it a freed id), so its generation moves on
    /// and its counters restart.
    pub fn write_backend(&self, vip: &crate::plan::PlannedVip, b: &crate::plan::PlannedBackend, hop: &NextHop, fresh: bool) -> Result<()> {
        self.wrote();
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
            flags: weir_backend_flags::WEIR_BACKEND_ACTIVE.0 as u8
                | if vip.mode == crate::config::Mode::Dsr { weir_backend_flags::WEIR_BACKEND_VIP_DSR.0 as u8 } else { 0 },
            generation,
            port: b.port.map(u16::to_be).unwrap_or(0),
            vlan: b.vlan,
            vip_vlan: vip.vlan,
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
        self.refresh_probes_of(b.id)
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
        if new.lru_per_cpu != self.settings.lru_per_cpu {
            bail!("conntrack.lru_per_cpu changed: restart weir to apply it (the flow tables are made with it)");
        }
        if new.conntrack_size != old.conntrack_size {
            bail!("conntrack.size changed ({} -> {}): restart weir to apply it", old.conntrack_size, new.conntrack_size);
        }
        if !self.settings.ipv6 {
            if let Some(v) = new.vips.iter().find(|v| v.addr.is_ipv6()) {
                bail!(
                    "VIP {} is the first IPv6 VIP: the IPv6 flow tables were sized to nothing at start \
                     (no IPv6 VIP then); restart weir to serve it",
                    v.name
                );
            }
        }
        if new.nat_timeouts != self.settings.nat_timeouts {
            bail!("a conntrack timeout changed: restart weir to apply it (they are constants of the loaded program)");
        }
        if new.fragments != self.settings.fragments {
            bail!("[fragments] changed: restart weir to apply it (its switch and timeout are constants of the loaded program, its size the table's)");
        }
        let lists = |p: &Plan| p.shield.as_ref().map(|s| (!s.deny.is_empty(), !s.allow.is_empty()));
        if lists(new) != lists(old) {
            bail!("[shield] was added or removed, or its allow/deny lists became empty or non-empty: restart weir to apply it");
        }
        if let Some(v) = new.vips.iter().find(|v| v.mode == crate::config::Mode::Nat && !self.settings.nat) {
            bail!(
                "VIP {} uses mode = \"nat\", which needs a restart: the NAT tables were sized to nothing because no VIP used NAT at start \
                 (a `weir run` on the same interface takes over without losing tracked flows)",
                v.name
            );
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
                self.write_backend(vip, b, hop, !old_b.contains(&b.id))?;
                if down.contains(&b.id) && vip.on_down == crate::config::OnDown::Reschedule {
                    self.remove_backend(b.id)?;
                }
            }
            if vip.backends.iter().any(|b| out.contains(&b.id)) {
                let (ring, rr, _) = crate::plan::tables(&vip.backends, new.table_size, &out);
                self.publish_with(vip, &ring, &rr, sources[&vip.id])?;
            } else {
                // All in: the plan's own tables (built with none left out).
                self.publish_with(vip, &vip.ring, &vip.rr, sources[&vip.id])?;
            }
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
        self.sync_frag_vips(new)?;
        self.set_nat_on(new)?;
        self.filter_sync()?;
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
        self.wrote();
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
        drop(entries);
        self.refresh_probes_of(id)
    }

    /// Put a backend back as `apply` wrote it.
    pub fn restore_backend(&self, id: u32) -> Result<()> {
        self.wrote();
        let be = *self.backend_entries.borrow().get(&id).with_context(|| format!("no backend {id}"))?;
        self.skel.maps.backends.update(&key32(id), bytes_of(&be), MapFlags::ANY)?;
        Ok(())
    }

    pub(crate) fn write_block(&self, vip_id: u32, half: u32, ring: &[u32], rr: &[u32]) -> Result<()> {
        self.wrote();
        self.blocks.borrow_mut().insert((vip_id, half & 1), self.writes.get());
        anyhow::ensure!(ring.len() as u32 == self.settings.ring_size, "ring of {} slots", ring.len());
        anyhow::ensure!(rr.len() as u32 <= RR_SLOTS, "round-robin sequence of {}", rr.len());
        let base = (vip_id * 2 + half) * self.settings.ring_size;
        // The block is the VIP's spare half: no packet reads it until the
        // VIP entry switches to it, after this returns (the mapped writes
        // end with a full fence).
        if let Some(mem) = &self.ring_mem {
            mem.write(base, ring).context("writing the Maglev table")?;
        } else {
            let keys: Vec<u8> = (0..ring.len() as u32).flat_map(|s| key32(base + s)).collect();
            let vals: Vec<u8> = ring.iter().flat_map(|b| b.to_ne_bytes()).collect();
            self.skel
                .maps
                .maglev_ring
                .update_batch(&keys, &vals, ring.len() as u32, MapFlags::ANY, MapFlags::ANY)
                .context("writing the Maglev table")?;
        }
        if !rr.is_empty() {
            let base = (vip_id * 2 + half) * RR_SLOTS;
            if let Some(mem) = &self.rr_mem {
                mem.write(base, rr).context("writing the round-robin sequence")?;
            } else {
                let keys: Vec<u8> = (0..rr.len() as u32).flat_map(|s| key32(base + s)).collect();
                let vals: Vec<u8> = rr.iter().flat_map(|b| b.to_ne_bytes()).collect();
                self.skel
                    .maps
                    .rr_ring
                    .update_batch(&keys, &vals, rr.len() as u32, MapFlags::ANY, MapFlags::ANY)
                    .context("writing the round-robin sequence")?;
            }
        }
        Ok(())
    }

    /// Replace one VIP's Maglev table and round-robin sequence: the spare
    /// half is written, then the VIP flips to it in one map update, so a
    /// packet sees the old tables or the new, never a mix.
    pub fn write_tables(&self, vip_id: u32, ring: &[u32], rr: &[u32]) -> Result<()> {
        self.wrote();
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
}

/// The shield policy of every TCP VIP.
pub(crate) fn shield_policies(plan: &Plan, sh: &crate::config::Shield) -> Vec<(u32, crate::skel::ShieldPolicy)> {
    plan.vips.iter().filter(|v| v.proto == crate::config::Protocol::Tcp).map(|v| (v.id, policy(sh, v.shield.as_ref()))).collect()
}
