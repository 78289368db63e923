//! IP fragments to VIPs (bpf/frag.h): which VIP a fragment without ports
//! belongs to, and the in-kernel sweep of expired datagram entries.

use super::*;

/// ICMP's protocol number in each family.
fn icmp_of(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        libc::IPPROTO_ICMP as u8
    } else {
        libc::IPPROTO_ICMPV6 as u8
    }
}

/// For each (address, protocol) a fragment without ports may carry: the
/// one VIP (port, protocol) its datagram can belong to, or None when several
/// VIPs could (such fragments, arriving before their first fragment, are
/// dropped rather than guessed). A TCP or UDP fragment belongs to the
/// address's VIPs of its protocol; an ICMP datagram (a big ping) to the
/// address's only VIP, and with several the address is left out: the
/// kernel gets it, as before.
pub fn frag_owners(plan: &Plan) -> BTreeMap<(IpAddr, u8), Option<(u16, u8)>> {
    let mut by: BTreeMap<(IpAddr, u8), Vec<(u16, u8)>> = BTreeMap::new();
    for v in &plan.vips {
        let key = (v.port, v.proto.number());
        by.entry((v.addr, v.proto.number())).or_default().push(key);
        by.entry((v.addr, icmp_of(v.addr))).or_default().push(key);
    }
    by.into_iter()
        .filter_map(|((addr, proto), owners)| match owners.len() {
            1 => Some(((addr, proto), Some(owners[0]))),
            _ if proto == icmp_of(addr) => None,
            _ => Some(((addr, proto), None)),
        })
        .collect()
}

impl Dataplane {
    /// Write frag_vips from the plan; entries of addresses no longer
    /// configured are removed.
    pub(crate) fn sync_frag_vips(&self, plan: &Plan) -> Result<()> {
        let map = &self.skel.maps.frag_vips;
        let mut want: BTreeSet<Vec<u8>> = BTreeSet::new();
        for ((addr, proto), owner) in frag_owners(plan) {
            let (w, family) = crate::mapio::addr_words(addr);
            let key = VipKey { addr: w, port: 0, proto, family };
            let val = match owner {
                Some((port, p)) => VipKey { addr: w, port: port.to_be(), proto: p, family },
                None => VipKey { addr: w, port: 0, proto: 0, family },
            };
            map.update(bytes_of(&key), bytes_of(&val), MapFlags::ANY).context("writing the fragments' VIP owners")?;
            want.insert(bytes_of(&key).to_vec());
        }
        let stale: Vec<Vec<u8>> = map.keys().filter(|k| !want.contains(k)).collect();
        for k in stale {
            let _ = map.delete(&k);
        }
        Ok(())
    }

    /// Free datagram entries past the fragment timeout (the
    /// `weir_frag_sweep` program, through BPF_PROG_TEST_RUN: each free is a
    /// compare-and-swap on the entry's stamp, so an entry another CPU has
    /// just reused is never freed). Returns how many were freed.
    pub fn sweep_frags(&self) -> Result<usize> {
        if !self.settings.fragments.enabled {
            return Ok(0);
        }
        // struct nat_sweep_io: margin (unused), seen, freed, pad.
        let io = [0u8; 16];
        let (action, out, _) = test_run(&self.skel.progs.weir_frag_sweep, &io, 1).context("running the fragment sweep")?;
        if action != 2 {
            bail!("the fragment sweep returned XDP action {action}, expected 2 (its frame was refused)");
        }
        let freed = out.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes).unwrap_or(0);
        Ok(freed as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_fragments_without_ports() {
        let cfg = crate::config::Config::from_toml(
            r#"
[[vip]]
address = "10.0.0.1"
port = 53
protocol = "udp"
[[vip.backend]]
address = "10.1.0.1"
mac = "02:00:00:00:00:01"
[[vip]]
address = "10.0.0.1"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "10.1.0.1"
mac = "02:00:00:00:00:01"
[[vip]]
address = "10.0.0.1"
port = 443
protocol = "tcp"
[[vip.backend]]
address = "10.1.0.1"
mac = "02:00:00:00:00:01"
[[vip]]
address = "2001:db8::1"
port = 0
protocol = "udp"
[[vip.backend]]
address = "2001:db8:1::1"
mac = "02:00:00:00:00:01"
"#,
        )
        .unwrap();
        let plan = Plan::build(&cfg).unwrap();
        let o = frag_owners(&plan);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(o[&(a, 17)], Some((53, 17)), "the address's only UDP VIP");
        assert_eq!(o[&(a, 6)], None, "two TCP VIPs: not guessed");
        assert!(!o.contains_key(&(a, 1)), "three VIPs: a big ping goes to the kernel");
        assert_eq!(o[&(b, 17)], Some((0, 17)));
        assert_eq!(o[&(b, 58)], Some((0, 17)), "the address's only VIP takes its ICMPv6 datagrams");
        assert_eq!(o.len(), 4);
    }
}
