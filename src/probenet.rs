//! The prober namespace of data-path health checks (README "Health checks
//! through the data path"; bpf/probe.h).
//!
//! A private, anonymous network namespace (a thread's `unshare`, held by an
//! fd: it dies with weir, a kill -9 included; nothing is named or left
//! behind) joined to weir's by a veth pair. Inside, the probers' source
//! address is the inner veth's, and everything else is routed out of it to
//! a link-local gateway with a permanent neighbour entry (no ARP): a probe
//! to a VIP simply leaves. On the outer veth weir_probe sends it to its
//! backend the way client packets go; the backend's answer comes back to
//! the balancer interface and weir_lb steers it into the outer veth.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::attach::{attach, AttachMode, XdpLink};
use crate::dataplane::Dataplane;
use crate::net::Iface;
use crate::netlink::Rtnl;

/// The inner veth's name (in the private namespace: no clash possible).
const INNER: &str = "probe0";
/// The gateway the private namespace routes everything to: only a
/// neighbour entry for it exists, pointing at the outer veth.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// The prober namespace and its veth, with weir_probe attached outside and
/// a pass stub inside (a redirect into a veth needs a program on its peer).
pub struct ProbeNet {
    pub netns: Arc<OwnedFd>,
    pub source: IpAddr,
    pub outer: String,
    outer_ifindex: u32,
    _outer_link: XdpLink,
    _inner_link: XdpLink,
}

impl std::fmt::Debug for ProbeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProbeNet({} from {})", self.outer, self.source)
    }
}

/// Run `f` on a thread inside network namespace `ns` (threads have their own).
pub fn in_netns<T: Send + 'static>(ns: &Arc<OwnedFd>, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = ns.clone();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in the prober namespace panicked"))?
}

/// Move the calling thread into network namespace `ns`.
pub fn enter(ns: &OwnedFd) -> Result<()> {
    // SAFETY: setns on a valid namespace fd affects the calling thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering the prober network namespace: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new anonymous network namespace, as an fd.
fn new_netns() -> Result<OwnedFd> {
    std::thread::spawn(|| -> Result<OwnedFd> {
        // SAFETY: unshare affects the calling (short-lived) thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "creating the prober network namespace of data-path health checks (unshare): {}; they need CAP_SYS_ADMIN \
                 besides CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or use health.via = \"direct\")",
                std::io::Error::last_os_error()
            );
        }
        // No IPv6 in there: no router solicitations to drop outside.
        for k in ["default", "all"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1");
        }
        let f = std::fs::File::open("/proc/thread-self/ns/net").context("opening the prober namespace")?;
        Ok(f.into())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Turn off transmit checksum offload on `ifname` (this thread's
/// namespace): a veth would hand XDP packets with partial checksums.
fn tx_csum_off(ifname: &str) -> Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut v = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
    // SAFETY: a plain datagram socket for the ioctl, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket for ethtool: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut v as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a live ethtool_value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) } != 0 {
        bail!("turning off tx checksum offload on {ifname}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl ProbeNet {
    /// Build the namespace and veth, attach the programs and tell the data
    /// plane where the probers are. `iface`: the balancer interface.
    pub fn create(dp: &Dataplane, iface: &Iface, source: Ipv4Addr) -> Result<ProbeNet> {
        let netns = Arc::new(new_netns()?);
        let outer = format!("wprobe{}", std::process::id());
        let mut nl = Rtnl::open()?;
        nl.add_veth(&outer, INNER, netns.as_raw_fd())?;
        // From here on a failure deletes the pair (the namespace goes with the fd).
        let built = (|| -> Result<ProbeNet> {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{outer}/disable_ipv6"), "1");
            let out = Iface::lookup(&outer)?;
            nl.set_up(out.ifindex)?;
            let outer_mac = out.mac;
            // Inside: address, link up, gateway, offloads, the stub.
            let (inner_mac, inner_link) = in_netns(&netns, move || -> Result<([u8; 6], XdpLink)> {
                let mut nl = Rtnl::open()?;
                let inner = Iface::lookup(INNER)?;
                if let Some(lo) = nl.link("lo")? {
                    nl.set_up(lo.ifindex)?;
                }
                nl.add_host_address(inner.ifindex, IpAddr::V4(source))?;
                tx_csum_off(INNER)?;
                nl.set_up(inner.ifindex)?;
                nl.add_permanent_neighbour(inner.ifindex, GATEWAY, outer_mac)?;
                nl.add_default_route_v4(inner.ifindex, GATEWAY)?;
                let holder = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
                use libbpf_rs::skel::{OpenSkel, SkelBuilder};
                use std::os::fd::AsFd;
                let skel = crate::skel::trivial::TrivialSkelBuilder::default()
                    .open(holder)
                    .context("opening the XDP stub")?
                    .load()
                    .context("loading the XDP stub")?;
                let link = attach(skel.progs.xdp_pass.as_fd(), &inner, AttachMode::Auto)
                    .context("attaching the XDP stub to the prober veth")?;
                Ok((inner.mac, link))
            })?;
            let outer_link = attach(dp.probe_prog_fd(), &out, AttachMode::Auto).context("attaching weir_probe to the prober veth")?;
            dp.set_probe_net(IpAddr::V4(source), inner_mac, outer_mac, iface.ifindex, out.ifindex)?;
            Ok(ProbeNet {
                netns: netns.clone(),
                source: IpAddr::V4(source),
                outer: outer.clone(),
                outer_ifindex: out.ifindex,
                _outer_link: outer_link,
                _inner_link: inner_link,
            })
        })();
        match built {
            Ok(p) => Ok(p),
            Err(e) => {
                if let Ok(Some(l)) = nl.link(&outer) {
                    let _ = nl.del_link(l.ifindex);
                }
                Err(e.context("setting up the prober namespace of data-path health checks"))
            }
        }
    }
}

impl Drop for ProbeNet {
    fn drop(&mut self) {
        // The links detach with their fds; the pair goes now rather than
        // when the last prober thread has left the namespace.
        if let Ok(mut nl) = Rtnl::open() {
            let _ = nl.del_link(self.outer_ifindex);
        }
    }
}
