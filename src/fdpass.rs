//! Messages with file descriptors over a Unix stream (SCM_RIGHTS): the wire
//! of the hand-over and of `weir trace`. A message is a 4-byte big-endian
//! length, then that many bytes; the fds ride on its first byte. It is read
//! whole, however large (a hand-over of thousands of backends is hundreds of
//! KiB). A message that starts with `{` is an unprefixed one of an older
//! weir: read in one piece, as it was sent.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};

pub const MAX_FDS: usize = 64;
/// Larger messages are refused (a hand-over of 65,536 backends is ~5 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Send `payload` with `fds` attached.
pub fn send_fds(s: &UnixStream, payload: &[u8], fds: &[RawFd]) -> Result<()> {
    anyhow::ensure!(fds.len() <= MAX_FDS, "too many fds");
    anyhow::ensure!(payload.len() <= MAX_MESSAGE, "message of {} bytes is too large", payload.len());
    let mut msg = Vec::with_capacity(payload.len() + 4);
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(payload);
    let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; the pointers below outlive the call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer is sized by CMSG_SPACE for these fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: valid socket and msghdr.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        bail!("sendmsg: {}", std::io::Error::last_os_error());
    }
    // The rest (a large message does not fit the socket buffer at once).
    (&*s).write_all(&msg[n as usize..]).context("sending the rest of the message")?;
    Ok(())
}

/// Receive a whole message and the fds sent with it.
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
    if buf.first() == Some(&b'{') {
        return Ok((buf, fds)); // an older weir's unprefixed message
    }
    let mut s = s;
    while buf.len() < 4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("reading a message's length")?;
        buf.push(b[0]);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_MESSAGE {
        bail!("message of {len} bytes announced, more than the {MAX_MESSAGE} accepted");
    }
    let mut payload = buf.split_off(4);
    if payload.len() > len {
        bail!("{} bytes after a message of {len}", payload.len() - len);
    }
    let have = payload.len();
    payload.resize(len, 0);
    s.read_exact(&mut payload[have..]).with_context(|| format!("reading a message of {len} bytes"))?;
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_and_its_fds_arrive_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let p2 = payload.clone();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fd = devnull.as_raw_fd();
        let t = std::thread::spawn(move || send_fds(&a, &p2, &[fd]).map(|_| drop(devnull)));
        let (got, fds) = recv_fds(&b).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(got.len(), payload.len());
        assert!(got == payload);
        assert_eq!(fds.len(), 1);
    }
}
