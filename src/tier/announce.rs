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

use std::collections::{BTreeMap, BTreeSet};
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
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// The name of the TUN device `fd` is attached to.
pub fn tun_name(fd: &OwnedFd) -> Option<String> {
    let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
    // SAFETY: TUNGETIFF writes a struct ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
        return None;
    }
    let n = req.name.iter().position(|b| *b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&req.name[..n]).into_owned())
}

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
    // TUNSETIFF also attaches to an existing persistent device of that name,
    // which would outlive weir (and keep its VIPs announced after a kill -9):
    // make it non-persistent, so it dies with its last fd like a new one.
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("making {name} a non-persistent device"));
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
    /// replaces, with the addresses it holds) and start the thread, knowing
    /// from the start what to announce and which program is attached (so a
    /// hand-over withdraws nothing). `prog_id` 0: nothing is announced.
    pub fn start(
        device: &str,
        iface_index: u32,
        inherited: Option<OwnedFd>,
        want: BTreeSet<IpAddr>,
        prog_id: u32,
        draining: bool,
    ) -> Result<Announcer> {
        // A device inherited under another name (tier.device changed across
        // the restart) is let go: the new name is made afresh.
        let tun = match inherited.filter(|fd| tun_name(fd).as_deref() == Some(device)) {
            Some(fd) => fd,
            None => open_tun(device)?,
        };
        let mut rt = Rtnl::open()?;
        let link = rt.link(device)?.with_context(|| format!("the announce device {device} vanished after creation"))?;
        rt.set_up(link.ifindex).with_context(|| format!("setting the announce device {device} up"))?;
        let held: BTreeSet<IpAddr> = rt.global_addrs(link.ifindex)?.into_iter().collect();
        let st = State { announced: held, want, prog_id, draining, ..Default::default() };
        let shared = Arc::new(Shared { st: Mutex::new(st), cv: Condvar::new() });
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
    // What failed last, per address, so a lasting failure is logged once.
    let mut failing: BTreeMap<IpAddr, String> = BTreeMap::new();
    loop {
        let (prog_id, paused, draining, want) = {
            let Ok(st) = sh.st.lock() else { return };
            let Ok((st, _)) = sh.cv.wait_timeout(st, POLL) else { return };
            if st.stop {
                return;
            }
            (st.prog_id, st.paused, st.draining, st.want.clone())
        };
        if paused {
            continue;
        }
        // Outside the lock: the core never waits on a netlink round trip.
        let attached = prog_id != 0 && attached_prog(iface_index) == prog_id;
        let (target, why) = if prog_id == 0 {
            (BTreeSet::new(), "not attached yet")
        } else if !attached {
            (BTreeSet::new(), "weir's program is no longer attached")
        } else if draining {
            (BTreeSet::new(), "draining")
        } else {
            (want, "no backend in rotation")
        };
        // The device as it is (not as last written): a change that failed,
        // or one made by someone else, is set right on the next round.
        let have: BTreeSet<IpAddr> = match rt.global_addrs(devindex) {
            Ok(a) => a.into_iter().collect(),
            Err(_) => continue,
        };
        for ip in target.difference(&have) {
            match rt.add_host_address(devindex, *ip) {
                Ok(()) => {
                    failing.remove(ip);
                    tracing::info!("announce: {ip} added to {dev}");
                }
                Err(e) => note_failure(&mut failing, *ip, format!("{e:#}")),
            }
        }
        for ip in have.difference(&target) {
            match rt.del_host_address(devindex, *ip) {
                Ok(()) => {
                    failing.remove(ip);
                    tracing::warn!("announce: {ip} withdrawn from {dev} ({why})");
                }
                Err(e) => note_failure(&mut failing, *ip, format!("{e:#}")),
            }
        }
        let now: BTreeSet<IpAddr> = rt.global_addrs(devindex).map(|a| a.into_iter().collect()).unwrap_or(have);
        if let Ok(mut st) = sh.st.lock() {
            st.announced = now;
        }
    }
}

fn note_failure(failing: &mut BTreeMap<IpAddr, String>, ip: IpAddr, e: String) {
    if failing.get(&ip) != Some(&e) {
        tracing::error!("announce: {e} (retried every {} ms; logged again only if it changes)", POLL.as_millis());
        failing.insert(ip, e);
    }
}
