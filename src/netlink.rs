//! The kernel's view of the network through rtnetlink (links, addresses,
//! routes, neighbours), in the caller's network namespace, without `ip`
//! subprocesses; and a subscription to neighbour events.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// rtnetlink multicast groups (linux/rtnetlink.h, RTMGRP_*).
pub const GROUP_LINK: u32 = 0x1;
pub const GROUP_NEIGH: u32 = 0x4;
pub const GROUP_IPV4_IFADDR: u32 = 0x10;
pub const GROUP_IPV6_IFADDR: u32 = 0x100;

/// One link as the kernel reports it.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

/// One neighbour-table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    pub state: NudState,
}

/// The neighbour states weir acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NudState {
    /// Confirmed recently, or configured (PERMANENT, NOARP).
    Usable,
    /// STALE / DELAY / PROBE: the MAC is the last one seen, not confirmed.
    Unconfirmed,
    /// INCOMPLETE / FAILED / NONE: no usable MAC.
    Unusable,
}

fn nud(s: NeighbourState) -> NudState {
    match s {
        NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp => NudState::Usable,
        NeighbourState::Stale | NeighbourState::Delay | NeighbourState::Probe => NudState::Unconfirmed,
        _ => NudState::Unusable,
    }
}

/// A request / reply socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        sock.bind_auto().context("binding a netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0)).context("connecting a netlink socket")?;
        Ok(Rtnl { sock, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Send one request; every reply message until DONE (dumps) or the
    /// first one (a plain request). A netlink error is returned as an error.
    fn request(&mut self, msg: RouteNetlinkMessage, dump: bool) -> Result<Vec<RouteNetlinkMessage>> {
        self.send(msg, if dump { NLM_F_DUMP } else { 0 }, dump)
    }

    /// A change (flags: NLM_F_CREATE...), answered by the kernel's ack.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.send(msg, NLM_F_ACK | flags, false).map(|_| ())
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, dump: bool) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.sock.send(&out, 0).context("sending a netlink request")?;
        let mut replies = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).context("reading a netlink reply")?;
            let mut off = 0;
            while off < n {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[off..n]).context("parsing a netlink reply")?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => match e.code {
                            Some(c) => bail!("{}", std::io::Error::from_raw_os_error(-c.get())),
                            None => return Ok(replies),
                        },
                        NetlinkPayload::InnerMessage(r) => {
                            replies.push(r);
                            if !dump {
                                return Ok(replies);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let r = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    pub fn link_by_index(&mut self, ifindex: u32) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.ifindex == ifindex))
    }

    /// Global (scope universe) addresses of `ifindex`, in the kernel's order.
    pub fn global_addrs(&mut self, ifindex: u32) -> Result<Vec<IpAddr>> {
        let r = self.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), true)?;
        let mut out = Vec::new();
        for m in r {
            let RouteNetlinkMessage::NewAddress(a) = m else { continue };
            if a.header.index != ifindex || a.header.scope != AddressScope::Universe {
                continue;
            }
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            out.extend(local.or(addr));
        }
        Ok(out)
    }

    /// The gateway of the route to `ip` (`ip route get`), None when on-link.
    pub fn gateway_of(&mut self, ip: IpAddr) -> Result<Option<IpAddr>> {
        let mut m = RouteMessage::default();
        let (family, len, dst) = match ip {
            IpAddr::V4(v) => (AddressFamily::Inet, 32, RouteAddress::Inet(v)),
            IpAddr::V6(v) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v)),
        };
        m.header.address_family = family;
        m.header.destination_prefix_length = len;
        m.attributes.push(RouteAttribute::Destination(dst));
        let r = self.request(RouteNetlinkMessage::GetRoute(m), false).with_context(|| format!("no route to {ip}"))?;
        Ok(r.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(rt) => rt.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Set a link administratively up.
    pub fn set_up(&mut self, ifindex: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    fn host_address(ifindex: u32, ip: IpAddr) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = ifindex;
        m.header.scope = AddressScope::Universe;
        // IPv6: no duplicate address detection (a VIP is on every node by design).
        m.header.flags = AddressHeaderFlags::Nodad;
        (m.header.family, m.header.prefix_len) = match ip {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        m
    }

    /// Add `ip` as a host address (/32, /128) of `ifindex`; present already is fine.
    pub fn add_host_address(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        match self.change(RouteNetlinkMessage::NewAddress(Self::host_address(ifindex, ip)), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.to_string().contains("exists") => Ok(()),
            r => r.with_context(|| format!("adding {ip} to interface {ifindex}")),
        }
    }

    /// Remove the host address `ip` of `ifindex`; absent already is fine.
    pub fn del_host_address(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        match self.change(RouteNetlinkMessage::DelAddress(Self::host_address(ifindex, ip)), 0) {
            Err(e) if e.to_string().contains("Cannot assign") || e.to_string().contains("No such") => Ok(()),
            r => r.with_context(|| format!("removing {ip} from interface {ifindex}")),
        }
    }

    /// A veth pair: `name` here, `peer` created straight in the network
    /// namespace `peer_netns` (an fd of it), never in this one.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: std::os::fd::RawFd) -> Result<()> {
        use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| format!("creating veth pair {name} / {peer}"))
    }

    /// Delete a link (a veth takes its peer with it).
    pub fn del_link(&mut self, ifindex: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        self.change(RouteNetlinkMessage::DelLink(m), 0).with_context(|| format!("deleting link {ifindex}"))
    }

    /// A permanent IPv4 neighbour entry (no ARP for it, ever).
    pub fn add_permanent_neighbour(&mut self, ifindex: u32, ip: std::net::Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = netlink_packet_route::route::RouteType::Unicast;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.change(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE)
            .with_context(|| format!("adding neighbour {ip} on interface {ifindex}"))
    }

    /// The IPv4 default route via `gw` out of `ifindex` (on-link: `gw` need
    /// not be in any of the link's subnets).
    pub fn add_default_route_v4(&mut self, ifindex: u32, gw: std::net::Ipv4Addr) -> Result<()> {
        use netlink_packet_route::route::{RouteFlags, RouteHeader, RouteProtocol, RouteScope, RouteType};
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::Onlink;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        m.attributes.push(RouteAttribute::Oif(ifindex));
        self.change(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| format!("adding the default route via {gw} on interface {ifindex}"))
    }

    /// Every neighbour entry (IPv4 and IPv6).
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let r = self.request(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()), true)?;
        Ok(r.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour_of(n),
                _ => None,
            })
            .collect())
    }

    pub fn neighbour(&mut self, ip: IpAddr, ifindex: u32) -> Result<Option<Neighbour>> {
        Ok(self.neighbours()?.into_iter().find(|n| n.ip == ip && n.ifindex == ifindex))
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut out = Link { name: String::new(), ifindex: l.header.index, mac: None, mtu: 1500 };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::Address(b) if b.len() == 6 => out.mac = b.as_slice().try_into().ok(),
            _ => {}
        }
    }
    out
}

fn neighbour_of(n: &NeighbourMessage) -> Option<Neighbour> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => b.as_slice().try_into().ok(),
        _ => None,
    });
    Some(Neighbour { ip, ifindex: n.header.ifindex, mac, state: nud(n.header.state) })
}

/// What a subscription reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A neighbour entry was added or changed.
    Neighbour(Neighbour),
    /// A neighbour entry was deleted.
    NeighbourGone { ip: IpAddr, ifindex: u32 },
    /// A link or an address changed.
    LinkOrAddress,
}

/// A socket subscribed to rtnetlink groups.
pub struct Subscription {
    sock: Socket,
    buf: Vec<u8>,
}

impl Subscription {
    pub fn open(groups: u32) -> Result<Subscription> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        sock.bind(&SocketAddr::new(0, groups)).context("subscribing to netlink events")?;
        // Events lost to a full buffer are recovered by the periodic dump.
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Subscription { sock, buf: vec![0; 64 * 1024] })
    }

    /// Events that arrive within `timeout` (an empty list when none do).
    /// An overrun (ENOBUFS) is an error: the caller dumps the table anew.
    pub fn next(&mut self, timeout: std::time::Duration) -> Result<Vec<Event>> {
        let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.sock), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if r <= 0 {
            return Ok(Vec::new());
        }
        let n = self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT).context("reading netlink events")?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]) else { break };
            let len = m.header.length as usize;
            if let NetlinkPayload::InnerMessage(r) = m.payload {
                match r {
                    RouteNetlinkMessage::NewNeighbour(n) => out.extend(neighbour_of(&n).map(Event::Neighbour)),
                    RouteNetlinkMessage::DelNeighbour(n) => {
                        out.extend(neighbour_of(&n).map(|x| Event::NeighbourGone { ip: x.ip, ifindex: x.ifindex }))
                    }
                    RouteNetlinkMessage::NewLink(_)
                    | RouteNetlinkMessage::DelLink(_)
                    | RouteNetlinkMessage::NewAddress(_)
                    | RouteNetlinkMessage::DelAddress(_) => out.push(Event::LinkOrAddress),
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            off += len;
        }
        Ok(out)
    }
}
