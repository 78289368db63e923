//! Hitless restart: a new `weir run` on an interface where one is running
//! asks it, over the control socket, for its maps and its bpf_link (file
//! descriptors passed with SCM_RIGHTS, so no bpffs mount is needed, which
//! `ip netns exec` would hide anyway). The new process loads its program
//! on the same maps, swaps it into the link atomically (BPF_LINK_UPDATE)
//! and tells the old one to go: no packet meets a detached interface, no
//! tracked flow or counter is lost.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const MAX_FDS: usize = 64;

/// Send `payload` with `fds` attached.
pub fn send_fds(s: &UnixStream, payload: &[u8], fds: &[RawFd]) -> Result<()> {
    anyhow::ensure!(fds.len() <= MAX_FDS, "too many fds");
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; the pointers below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is sized by CMSG_SPACE for these fds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        if libc::sendmsg(s.as_raw_fd(), &msg, 0) < 0 {
            bail!("sendmsg: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive a payload and the fds sent with it.
pub fn recv_fds(s: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: plain data; buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: valid socket and msghdr; MSG_CMSG_CLOEXEC keeps fds private.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        bail!("recvmsg: {}", std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(*p.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    buf.truncate(n as usize);
    Ok((buf, fds))
}

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

/// max_entries of the map behind `fd` (from /proc/self/fdinfo).
pub fn max_entries(fd: &OwnedFd) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("max_entries:").map(|v| v.trim().parse()))
        .context("not a BPF map")?
        .context("bad max_entries")
}
