//! Attaching an XDP program to an interface.
//!
//! `weir run` attaches through a bpf_link: the kernel detaches it when the
//! link's last fd closes, so a crash, a kill -9 or an error half-way through
//! start-up can never leave a stale program on the interface.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};
use clap::ValueEnum;

use crate::net::Iface;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic with a warning.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    Skb,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attached::Native => "native",
            Attached::Skb => "skb",
        })
    }
}

/// An attached program; dropping it detaches (unless another process holds
/// the link too, as after a hand-over).
#[derive(Debug)]
pub struct XdpLink {
    _fd: OwnedFd,
    pub iface: String,
    pub mode: Attached,
}

impl XdpLink {
    /// A link received from the instance this one replaces.
    pub fn adopt(fd: OwnedFd, iface: &str, mode: &str) -> XdpLink {
        let mode = if mode == "skb" { Attached::Skb } else { Attached::Native };
        XdpLink { _fd: fd, iface: iface.to_string(), mode }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self._fd.as_fd()
    }
}

fn link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> std::result::Result<OwnedFd, i32> {
    // SAFETY: zeroed opts with sz set is libbpf's documented initialiser.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = flags;
    // SAFETY: valid prog fd and opts; the returned fd is owned by us.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(-fd);
    }
    // SAFETY: a fresh fd returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn explain(errno: i32, iface: &Iface, mode: Attached) -> String {
    let what = std::io::Error::from_raw_os_error(errno);
    match errno {
        libc::EBUSY | libc::EEXIST => format!(
            "another XDP program is already attached to {} ({what}); see `ip link show {}` and detach it \
             (`ip link set dev {} xdp off`) or stop the weir instance that owns it",
            iface.name, iface.name, iface.name
        ),
        libc::EOPNOTSUPP if mode == Attached::Native => format!(
            "{} does not support native XDP ({what}); use --mode skb (generic XDP, slower)",
            iface.name
        ),
        libc::EINVAL | libc::ERANGE if mode == Attached::Native && iface.mtu > 1500 => format!(
            "native XDP refused on {} ({what}): MTU {} is too large for XDP on this driver; \
             lower it (`ip link set dev {} mtu 1500`) or use --mode skb",
            iface.name, iface.mtu, iface.name
        ),
        libc::EPERM | libc::EACCES => format!("not permitted to attach XDP to {} ({what}): run as root or with CAP_NET_ADMIN + CAP_BPF", iface.name),
        _ => format!("attaching XDP ({mode} mode) to {} failed: {what}", iface.name),
    }
}

pub fn attach(prog: BorrowedFd<'_>, iface: &Iface, mode: AttachMode) -> Result<XdpLink> {
    let native = || link_create(prog, iface.ifindex, libbpf_sys::XDP_FLAGS_DRV_MODE);
    let skb = || link_create(prog, iface.ifindex, libbpf_sys::XDP_FLAGS_SKB_MODE);
    let done = |fd, mode| Ok(XdpLink { _fd: fd, iface: iface.name.clone(), mode });
    match mode {
        AttachMode::Native => match native() {
            Ok(fd) => done(fd, Attached::Native),
            Err(e) => bail!(explain(e, iface, Attached::Native)),
        },
        AttachMode::Skb => match skb() {
            Ok(fd) => done(fd, Attached::Skb),
            Err(e) => bail!(explain(e, iface, Attached::Skb)),
        },
        AttachMode::Auto => match native() {
            Ok(fd) => done(fd, Attached::Native),
            Err(e) if e == libc::EBUSY || e == libc::EEXIST || e == libc::EPERM => {
                bail!(explain(e, iface, Attached::Native))
            }
            Err(e) => {
                eprintln!(
                    "warning: native XDP unavailable on {} ({}); falling back to generic (skb) mode, which is slower",
                    iface.name,
                    std::io::Error::from_raw_os_error(e)
                );
                match skb() {
                    Ok(fd) => done(fd, Attached::Skb),
                    Err(e) => bail!(explain(e, iface, Attached::Skb)),
                }
            }
        },
    }
}
