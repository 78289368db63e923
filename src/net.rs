//! What weir needs to know about the host's network: interfaces, neighbour
//! MACs, and which network namespace it runs in.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netlink::{Neighbour, NudState, Rtnl};

#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Global (scope global) addresses, in the kernel's order.
    pub addrs: Vec<IpAddr>,
}

impl Iface {
    /// An interface that is never attached to (benchmarks and tests run the
    /// program through BPF_PROG_TEST_RUN): only its MAC matters.
    pub fn unattached(name: &str, mac: [u8; 6]) -> Iface {
        Iface { name: name.to_string(), ifindex: 1, mac, mtu: 1500, addrs: Vec::new() }
    }

    /// Ask the kernel through netlink, which answers for the caller's
    /// network namespace; /sys/class/net answers for whichever namespace
    /// mounted /sys, which under `nsenter` is not ours.
    pub fn lookup(name: &str) -> Result<Iface> {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) {
            bail!("'{}' is not an interface name", name.escape_debug());
        }
        let mut nl = Rtnl::open()?;
        let Some(l) = nl.link(name)? else {
            bail!(
                "interface '{name}' not found in this network namespace \
                 (`ip link` lists the ones here; run weir inside the interface's namespace, e.g. `ip netns exec NS weir ...`)"
            );
        };
        let mac = l.mac.with_context(|| format!("interface {name} has no Ethernet address"))?;
        Ok(Iface { name: name.to_string(), ifindex: l.ifindex, mac, mtu: l.mtu, addrs: nl.global_addrs(l.ifindex)? })
    }
}

/// The neighbour a packet to `ip` is handed to: `ip` itself when on-link,
/// else the gateway of its route.
pub fn next_hop_of(ip: IpAddr) -> Result<IpAddr> {
    let gw = Rtnl::open()?.gateway_of(ip).with_context(|| format!("no route to {ip} (add one, or set the backend's `mac`)"))?;
    Ok(gw.unwrap_or(ip))
}

/// An error unless this process runs in a named network namespace: weir
/// never lands on the host's own link by mistake.
pub fn refuse_host_netns(what: &str) -> Result<()> {
    if in_host_netns()? {
        bail!(
            "refusing to {what} outside a named network namespace (this may be the host's own); run inside one \
             (`ip netns exec NS weir ...`), or pass --allow-host-netns on a dedicated balancer host"
        );
    }
    Ok(())
}

/// True unless this process runs in a named network namespace (one of
/// /run/netns/*, as `ip netns add` makes). PID 1's namespace cannot be read
/// in every container, so "named" is the test: the host's own namespace is
/// never named.
pub fn in_host_netns() -> Result<bool> {
    let me = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    // PID 1's namespace is the host's; not every container lets us read it.
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net") {
        if init.ino() == me.ino() && init.dev() == me.dev() {
            return Ok(true);
        }
    }
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Ok(true);
    };
    for entry in dir.flatten() {
        if let Ok(m) = std::fs::metadata(entry.path()) {
            if m.ino() == me.ino() && m.dev() == me.dev() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Make the kernel resolve `ip` (ARP / NDP): one UDP datagram to the
/// discard port. Errors are ignored: the neighbour table says what came of it.
pub fn probe_neighbour(ip: IpAddr) {
    let bind: SocketAddr = if ip.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(b"weir neighbour probe", SocketAddr::new(ip, 9));
    }
}

/// Looks up many backends' next hops at once: one netlink socket, one dump
/// of the neighbour table.
pub struct Resolver {
    nl: Rtnl,
    table: Option<Vec<Neighbour>>,
}

impl Resolver {
    pub fn new() -> Result<Resolver> {
        Ok(Resolver { nl: Rtnl::open()?, table: None })
    }

    /// Where a backend's frames go: the neighbour (itself, or its gateway)
    /// and the MAC the kernel's neighbour table has for it now. `None` for
    /// the MAC when it has none usable yet (a probe is sent: the caller
    /// follows the neighbour table). A DSR backend behind a gateway is an error.
    pub fn lookup(&mut self, backend: IpAddr, iface: &Iface, mode: crate::config::Mode) -> Result<(IpAddr, Option<[u8; 6]>)> {
        // An off-link backend (tunnel or NAT mode) is reached through its gateway.
        let ip = self.nl.gateway_of(backend).ok().flatten().unwrap_or(backend);
        if ip != backend && mode == crate::config::Mode::Dsr {
            bail!(
                "{backend} is reached through the gateway {ip}, but direct server return (mode = \"dsr\") only rewrites MACs: \
                 it needs backends on {}'s segment; use mode = \"tunnel\" or \"nat\" for backends in other subnets",
                iface.name
            );
        }
        if self.table.is_none() {
            self.table = Some(self.nl.neighbours()?);
        }
        let n = self.table.iter().flatten().find(|n| n.ip == ip && n.ifindex == iface.ifindex);
        match n {
            Some(Neighbour { mac: Some(m), state, .. }) if *state != NudState::Unusable => {
                if *state == NudState::Unconfirmed {
                    probe_neighbour(ip); // confirmed, or replaced, soon
                }
                Ok((ip, Some(*m)))
            }
            _ => {
                probe_neighbour(ip);
                Ok((ip, None))
            }
        }
    }
}

/// `Resolver::lookup` for one backend.
pub fn lookup_mac(backend: IpAddr, iface: &Iface, mode: crate::config::Mode) -> Result<(IpAddr, Option<[u8; 6]>)> {
    Resolver::new()?.lookup(backend, iface, mode)
}

/// Resolve a backend's MAC from the kernel's neighbour table, probing until
/// `timeout` (tools and tests; `weir run` never waits: see daemon::neigh).
pub fn resolve_mac(backend: IpAddr, iface: &Iface, mode: crate::config::Mode, timeout: Duration) -> Result<[u8; 6]> {
    let start = Instant::now();
    loop {
        let (ip, mac) = lookup_mac(backend, iface, mode)?;
        if let Some(m) = mac {
            return Ok(m);
        }
        if start.elapsed() >= timeout {
            bail!(
                "no MAC for backend {ip} on {} after {:.1}s of probing: is it up and on {}'s segment? \
                 (or set `mac = \"..\"` for it in the config)",
                iface.name,
                timeout.as_secs_f64(),
                iface.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
