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

/// The name under which the announce device's fd travels with the maps.
pub const ANNOUNCE_FD: &str = "@announce";

/// What the new instance receives.
pub struct Handoff {
    pub stream: UnixStream,
    pub link: OwnedFd,
    pub mode: String,
    pub maps: Vec<(String, OwnedFd)>,
    /// The announce device (tier.announce), kept open across the hand-over
    /// so that no announcement is withdrawn.
    pub tun: Option<OwnedFd>,
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
    // Entries named "@..." are not maps: the announce device.
    let (extra, maps): (Vec<(String, OwnedFd)>, Vec<(String, OwnedFd)>) =
        names.into_iter().zip(fds).partition(|(n, _)| n.starts_with('@'));
    let tun = extra.into_iter().find(|(n, _)| n == ANNOUNCE_FD).map(|(_, fd)| fd);
    Ok(Some(Handoff { stream: s, link, mode: v["mode"].as_str().unwrap_or("native").to_string(), maps, tun, ids }))
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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanIds, VipIds};
    use std::net::IpAddr;

    /// The hand-over message of an instance with 4,096 IPv4 and 4,096 IPv6
    /// backends (~460 KiB; one read of 64 KiB took a seventh of it).
    #[test]
    fn a_hand_over_of_4096_backends_per_family_arrives_whole() {
        let vips: Vec<VipIds> = (0..32u32)
            .map(|v| VipIds {
                id: v,
                addr: if v % 2 == 0 { format!("198.18.1.{v}") } else { format!("2001:db8:1::{v:x}") }.parse().unwrap(),
                port: 80,
                tcp: true,
                backends: (0..256u32)
                    .map(|i| {
                        let n = v * 256 + i;
                        let a: IpAddr = if v % 2 == 0 {
                            format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255).parse().unwrap()
                        } else {
                            format!("2001:db8:ffff:ffff:ffff:ffff:{:x}:{:x}", n >> 16, n & 0xffff).parse().unwrap()
                        };
                        (a, n)
                    })
                    .collect(),
            })
            .collect();
        let ids = PlanIds { table_size: 65537, conntrack_size: 1 << 20, shield_lists: None, vips, down: (0..8192).step_by(3).collect() };
        let names: Vec<String> = (0..40).map(|i| format!("map_{i}")).collect();
        let body = serde_json::json!({ "maps": names, "mode": "native", "ids": ids }).to_string();
        assert!(body.len() > 256 * 1024, "{} bytes", body.len());
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..41).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let sent = body.clone();
        let t = std::thread::spawn(move || send_fds(&a, sent.as_bytes(), &raw));
        let (payload, fds) = recv_fds(&b).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(fds.len(), 41);
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("the whole message");
        let got: PlanIds = serde_json::from_value(v["ids"].clone()).unwrap();
        assert_eq!(got.vips.iter().map(|v| v.backends.len()).sum::<usize>(), 8192);
        assert_eq!(got.vips[31].backends[255].1, 8191);
        drop(files);
    }
}
