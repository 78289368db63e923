//! Source addresses of NAT and tunnel VIPs (configured, or the interface's,
//! followed when it changes) and the ARP/NDP responder's address set.

use super::*;

impl Dataplane {
    /// What would make NAT replies ambiguous, refused before anything is
    /// written: a source address that is also a VIP (its replies would be
    /// taken for client traffic), or SNAT ports on the interface's own
    /// address that overlap the kernel's ephemeral ports (the balancer's own
    /// connections, health checks included, could share a NAT flow's tuple).
    pub(crate) fn check_sources(&self, plan: &Plan) -> Result<()> {
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
    pub(crate) fn source_of(&self, vip: &crate::plan::PlannedVip) -> Result<Option<IpAddr>> {
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
            self.filter_add_source(words)?;
            self.skel.maps.vips.update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY).context("switching a VIP's source address")?;
            self.live.borrow_mut().insert(v.id, (key, meta));
            lines.push(format!("VIP {} (mode {}): new flows now leave from {src}", v.name, v.mode));
        }
        self.sync_neighbours(plan)?;
        self.filter_sync()?;
        Ok(lines)
    }

    /// The addresses the XDP ARP / NDP responder answers for: every VIP, and
    /// every NAT source address that is not the interface's own (backends
    /// must find its MAC to reply; the kernel answers for its own ones).
    /// Each entry's value is the address's flags: WEIR_VIP_ECHO when its
    /// VIPs answer ping (a NAT source address never does).
    /// Entries of VIPs or sources no longer configured are removed, whoever
    /// wrote them (this instance, or the one it took over from).
    pub(crate) fn sync_neighbours(&self, plan: &Plan) -> Result<()> {
        let echo = weir_vip_flags::WEIR_VIP_ECHO.0;
        let quiet = weir_vip_flags::WEIR_VIP_NO_NEIGH.0;
        let any_vlan = weir_vip_flags::WEIR_NEIGH_ANY_VLAN.0;
        let mut want: BTreeMap<Vec<u8>, (u8, u32)> = BTreeMap::new();
        for v in &plan.vips {
            // The VLAN id above the flags: the config gives every VIP of an
            // address the same one.
            let vlan = u32::from(v.vlan) << crate::skel::NEIGH_VLAN_SHIFT;
            let mut addrs = vec![(v.addr, if v.icmp_echo { echo } else { 0 } | if v.arp { 0 } else { quiet } | vlan)];
            if v.mode == crate::config::Mode::Nat {
                // Backends resolve a NAT source address from their own
                // VLANs, which may be several: answered on any.
                addrs.extend(v.source.filter(|s| !self.settings.iface_addrs.contains(s)).map(|s| (s, any_vlan)));
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
}

/// The kernel's ephemeral port range (net.ipv4.ip_local_port_range, which
/// IPv6 shares); Linux's default when it cannot be read.
pub(crate) fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}
