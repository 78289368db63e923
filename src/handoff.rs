//! Hitless restart: a new `weir run` on an interface where one is running
//! asks it, over the control socket, for its maps and its bpf_link (file
//! descriptors passed with SCM_RIGHTS, so no bpffs mount is needed, which
//! `ip netns exec` would hide anyway). The new process loads its program
//! on the same maps, swaps it into the link atomically (BPF_LINK_UPDATE)
//! and tells the old one to go: no packet meets a detached interface, no
//! tracked flow or counter is lost.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use crate::fdpass::{recv_fds, send_fds};

/// What the new instance receives.
pub struct Handoff {
    pub stream: UnixStream,
    pub link: OwnedFd,
    pub mode: String,
    pub maps: Vec<(String, OwnedFd)>,
    /// The running plan's ids, table halves' VIPs and down backends.
    pub ids: crate::plan::PlanIds,
}

/// Ask the instance on `iface` (this namespace) to hand over; None when
/// nothing is running there.
pub fn request(iface: &str) -> Result<Option<Handoff>> {
    let path = crate::control::socket_path(iface)?;
    let Ok(mut s) = UnixStream::connect(&path) else { return Ok(None) };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"handoff\n").context("asking the running instance to hand over")?;
    let (payload, mut fds) = recv_fds(&s)?;
    let v: serde_json::Value = serde_json::from_slice(&payload).context("the running instance sent invalid JSON")?;
    if let Some(e) = v.get("error") {
        bail!("the running instance refused to hand over: {}", e.as_str().unwrap_or_default());
    }
    let names: Vec<String> = serde_json::from_value(v["maps"].clone())?;
    anyhow::ensure!(fds.len() == names.len() + 1, "expected {} fds, got {}", names.len() + 1, fds.len());
    let link = fds.remove(0);
    let ids = serde_json::from_value(v["ids"].clone()).context("the running instance sent no plan ids")?;
    Ok(Some(Handoff {
        stream: s,
        link,
        mode: v["mode"].as_str().unwrap_or("native").to_string(),
        maps: names.into_iter().zip(fds).collect(),
        ids,
    }))
}

impl Handoff {
    /// Tell the old instance it may go, and wait until it has.
    pub fn release(mut self) -> Result<()> {
        self.stream.write_all(b"done\n").context("releasing the old instance")?;
        let mut buf = [0u8; 16];
        // It closes the stream when it exits.
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = self.stream.read(&mut buf);
        Ok(())
    }
}

/// Swap `prog` into the attached `link` atomically.
pub fn link_update(link: &OwnedFd, prog: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    // SAFETY: zeroed opts with sz set is libbpf's documented initialiser.
    let mut opts: libbpf_sys::bpf_link_update_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_update_opts>() as _;
    // SAFETY: valid link and program fds.
    let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), &opts) };
    if rc != 0 {
        bail!("replacing the attached program: {}", std::io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

