//! Route health injection through the node's own BGP daemon. weir speaks
//! no BGP: it holds a TUN device (`weir-<iface>` by default) whose
//! addresses are the VIP addresses this node is ready to serve, and the
//! daemon announces them (BIRD: `protocol direct { interface "weir-*"; }`;
//! FRR: `redistribute connected` with a route-map on the device). The
//! device is not persistent: the kernel deletes it when its last fd
//! closes, so however weir ends (stop, kill -9, crash) its addresses go
//! with it and the daemon withdraws them (measured in tests/tier_e2e.rs).
//!
//! An address is on the device while (a) weir's program is the one
//! attached to the interface, (b) the node is not draining and (c) one of
//! the address's VIPs has a backend in rotation. One thread applies that,
//! woken by the core on every change and polling (a) every 20 ms: it never
//! waits on the core, and the core never waits on it (a mutex held for a
//! copy).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netlink::Rtnl;

/// How often the thread checks that weir's program is still attached.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    /// Addresses with a usable VIP (the core's view).
    want: BTreeSet<IpAddr>,
    draining: bool,
    /// A hand-over is in progress: change nothing (the successor takes the device).
    paused: bool,
    stop: bool,
    /// weir's program on the interface; 0: not attached yet.
    prog_id: u32,
    /// What the device holds now (the thread's view, for status).
    announced: BTreeSet<IpAddr>,
}

struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

/// The device and the thread that keeps its addresses.
pub struct Announcer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    tun: Option<OwnedFd>,
    pub device: String,
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Create (or attach to a free) non-persistent TUN device `name`.
pub fn open_tun(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() > 15 {
        bail!("announce device name {name:?}: 1 to 15 characters");
    }
    // SAFETY: a plain open of a path literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("opening /dev/net/tun for the announce device (needs CAP_NET_ADMIN and the tun module)");
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            bail!(
                "announce device {name} is held by another process (another weir on this node?): each instance needs its own tier.device"
            );
        }
        return Err(e).with_context(|| format!("creating the announce device {name} (TUNSETIFF)"));
    }
    Ok(fd)
}

/// The XDP program attached to `ifindex` (0: none), as the kernel says.
pub fn attached_prog(ifindex: u32) -> u32 {
    let mut id: u32 = 0;
    // SAFETY: libbpf writes one u32.
    let rc = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    if rc < 0 {
        0
    } else {
        id
    }
}

impl Announcer {
    /// Open the device (or take over `inherited`, from the instance this one
    /// replaces, with the addresses it holds) and start the thread. Nothing
    /// is announced before `set_prog` names the attached program.
    pub fn start(device: &str, iface_index: u32, inherited: Option<OwnedFd>) -> Result<Announcer> {
        let tun = match inherited {
            Some(fd) => fd,
            None => open_tun(device)?,
        };
        let mut rt = Rtnl::open()?;
        let link = rt.link(device)?.with_context(|| format!("the announce device {device} vanished after creation"))?;
        rt.set_up(link.ifindex).with_context(|| format!("setting the announce device {device} up"))?;
        let held: BTreeSet<IpAddr> = rt.global_addrs(link.ifindex)?.into_iter().collect();
        let shared = Arc::new(Shared { st: Mutex::new(State { announced: held, ..Default::default() }), cv: Condvar::new() });
        let sh = shared.clone();
        let dev = device.to_string();
        let devindex = link.ifindex;
        let thread = std::thread::Builder::new()
            .name("weir-announce".into())
            .spawn(move || run(sh, rt, dev, devindex, iface_index))
            .context("starting the announce thread")?;
        Ok(Announcer { shared, thread: Some(thread), tun: Some(tun), device: device.to_string() })
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut st) = self.shared.st.lock() {
            f(&mut st);
        }
        self.shared.cv.notify_all();
    }

    /// The program weir attached (or took over): announcing may start.
    pub fn set_prog(&self, prog_id: u32) {
        self.with(|st| st.prog_id = prog_id);
    }

    /// The addresses that have a usable VIP now.
    pub fn want(&self, addrs: BTreeSet<IpAddr>) {
        self.with(|st| st.want = addrs);
    }

    pub fn drain(&self) {
        self.with(|st| st.draining = true);
    }

    pub fn pause(&self, on: bool) {
        self.with(|st| st.paused = on);
    }

    /// What the device holds now.
    pub fn announced(&self) -> Vec<IpAddr> {
        self.shared.st.lock().map(|s| s.announced.iter().copied().collect()).unwrap_or_default()
    }

    /// The device's fd, for a successor (hand-over): it keeps the device,
    /// and with it the announcements, alive.
    pub fn tun_fd(&self) -> Option<BorrowedFd<'_>> {
        self.tun.as_ref().map(|f| f.as_fd())
    }
}

impl Drop for Announcer {
    /// Stop the thread, then close the device: every address is withdrawn
    /// at once (unless a successor holds the device).
    fn drop(&mut self) {
        self.with(|st| st.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.tun = None;
    }
}

fn run(sh: Arc<Shared>, mut rt: Rtnl, dev: String, devindex: u32, iface_index: u32) {
    loop {
        let (target, why, have) = {
            let Ok(st) = sh.st.lock() else { return };
            let Ok((st, _)) = sh.cv.wait_timeout(st, POLL) else { return };
            if st.stop {
                return;
            }
            if st.paused {
                continue;
            }
            let attached = st.prog_id != 0 && attached_prog(iface_index) == st.prog_id;
            let (target, why) = if st.prog_id == 0 {
                (BTreeSet::new(), "not attached yet")
            } else if !attached {
                (BTreeSet::new(), "weir's program is no longer attached")
            } else if st.draining {
                (BTreeSet::new(), "draining")
            } else {
                (st.want.clone(), "no backend in rotation")
            };
            (target, why, st.announced.clone())
        };
        let mut now = have.clone();
        for ip in target.difference(&have) {
            match rt.add_host_address(devindex, *ip) {
                Ok(()) => {
                    now.insert(*ip);
                    tracing::info!("announce: {ip} added to {dev}");
                }
                Err(e) => tracing::warn!("announce: {e:#}"),
            }
        }
        for ip in have.difference(&target) {
            match rt.del_host_address(devindex, *ip) {
                Ok(()) => {
                    now.remove(ip);
                    tracing::warn!("announce: {ip} withdrawn from {dev} ({why})");
                }
                Err(e) => tracing::warn!("announce: {e:#}"),
            }
        }
        if now != have {
            if let Ok(mut st) = sh.st.lock() {
                st.announced = now;
            }
        }
    }
}
