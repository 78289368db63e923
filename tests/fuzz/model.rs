//! What the fuzzer knows of the data plane's configuration (from the Plan
//! the control plane built, never from the maps) and the NAT flows it has
//! seen created, so that backends' replies and ICMP errors can be aimed at
//! them.

use std::collections::HashMap;
use std::net::IpAddr;

use weir::config::Mode;

use crate::common::Lb;

pub struct Backend {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub mac: [u8; 6],
}

pub struct Vip {
    pub name: String,
    pub addr: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub proto: u8,
    pub mode: Mode,
    pub backends: Vec<Backend>,
    /// nat: SNAT address; tunnel: outer source.
    pub source: Option<IpAddr>,
    pub source_ports: [u16; 2],
    pub icmp_too_big: bool,
}

impl Vip {
    pub fn has_backend(&self, a: IpAddr) -> bool {
        self.backends.iter().any(|b| b.addr == a)
    }
    pub fn has_backend_mac(&self, m: &[u8]) -> bool {
        self.backends.iter().any(|b| b.mac[..] == *m)
    }
}

/// A NAT flow as the fuzzer saw it created: the client's tuple and what the
/// forward path made of it.
#[derive(Clone)]
pub struct NatFlow {
    pub proto: u8,
    pub client: IpAddr,
    pub cport: u16,
    pub client_mac: [u8; 6],
    pub vip: IpAddr,
    pub vport: u16,
    pub backend: IpAddr,
    pub bport: u16,
    pub snat: IpAddr,
    pub sport: u16,
    /// The start of the forwarded IP packet (what an ICMP error quotes).
    pub sent: Vec<u8>,
}

/// The reply direction's 5-tuple: backend:bport -> snat:sport, protocol.
pub type RevKey = (IpAddr, u16, IpAddr, u16, u8);

impl NatFlow {
    pub fn rev_key(&self) -> RevKey {
        (self.backend, self.bport, self.snat, self.sport, self.proto)
    }
}

pub struct Model {
    pub vips: Vec<Vip>,
    /// The MTU the data plane was loaded with (weir::net::Iface::unattached).
    pub mtu: usize,
    flows: Vec<NatFlow>,
    by_rev: HashMap<RevKey, usize>,
}

impl Model {
    pub fn new(lb: &Lb, mtu: usize) -> Model {
        let vips = lb
            .plan
            .vips
            .iter()
            .map(|v| Vip {
                name: v.name.clone(),
                addr: v.addr,
                port: v.port,
                proto: v.proto.number(),
                mode: v.mode,
                backends: v
                    .backends
                    .iter()
                    .map(|b| Backend { addr: b.addr, port: b.port, mac: lb.hops[&b.id].mac })
                    .collect(),
                source: v.source,
                source_ports: v.source_ports,
                icmp_too_big: v.icmp_too_big,
            })
            .collect();
        Model { vips, mtu, flows: Vec::new(), by_rev: HashMap::new() }
    }

    /// The VIP a packet to dst:dport / proto belongs to (exact port, then port 0).
    pub fn vip_for(&self, dst: IpAddr, dport: u16, proto: u8) -> Option<&Vip> {
        let find = |port| self.vips.iter().find(|v| v.addr == dst && v.port == port && v.proto == proto);
        find(dport).or_else(|| find(0))
    }

    pub fn nat_vip_addr(&self, a: IpAddr) -> bool {
        self.vips.iter().any(|v| v.mode == Mode::Nat && v.addr == a)
    }

    /// Addresses the ARP / NDP responder answers for: VIPs and SNAT sources.
    pub fn neighbour_addrs(&self, v4: bool) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for v in &self.vips {
            out.push(v.addr);
            if v.mode == Mode::Nat {
                out.extend(v.source);
            }
        }
        out.retain(|a| a.is_ipv4() == v4);
        out.sort();
        out.dedup();
        out
    }

    pub fn learn(&mut self, f: NatFlow) {
        match self.by_rev.get(&f.rev_key()) {
            Some(&i) => self.flows[i] = f,
            None => {
                self.by_rev.insert(f.rev_key(), self.flows.len());
                self.flows.push(f);
            }
        }
    }

    pub fn flow(&self, k: &RevKey) -> Option<&NatFlow> {
        self.by_rev.get(k).map(|&i| &self.flows[i])
    }

    pub fn flows(&self) -> &[NatFlow] {
        &self.flows
    }
}
