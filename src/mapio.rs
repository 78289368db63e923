//! Small helpers over BPF maps shared by the load balancer and the shield.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use crate::skel::{from_bytes, StatBlock, FAMILY_V4, FAMILY_V6, STAT_COUNT};

pub fn addr_words(a: IpAddr) -> ([u32; 4], u8) {
    let mut w = [0u32; 4];
    match a {
        IpAddr::V4(v) => {
            w[0] = u32::from_ne_bytes(v.octets());
            (w, FAMILY_V4)
        }
        IpAddr::V6(v) => {
            for (i, c) in v.octets().chunks(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            (w, FAMILY_V6)
        }
    }
}

/// The address of `addr_words`' words and family.
pub fn words_addr(w: &[u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        return IpAddr::from(w[0].to_ne_bytes());
    }
    let mut o = [0u8; 16];
    for (i, x) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
    }
    IpAddr::from(o)
}

/// Sum the per-CPU global counter blocks of a `stats` map.
pub fn read_counters(map: &dyn MapCore) -> Result<Vec<u64>> {
    let mut out = vec![0u64; STAT_COUNT];
    for cpu in map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?.into_iter().flatten() {
        let block: StatBlock = from_bytes(&cpu)?;
        for (o, v) in out.iter_mut().zip(block.n.iter()) {
            *o += v;
        }
    }
    Ok(out)
}

/// max_entries of the map behind `fd` (from /proc/self/fdinfo).
pub fn max_entries(fd: &OwnedFd) -> Result<u32> {
    fdinfo_field(fd, "max_entries")
}

/// A map's value size, from the kernel's fdinfo.
pub fn value_size(fd: &OwnedFd) -> Result<u32> {
    fdinfo_field(fd, "value_size")
}

fn fdinfo_field(fd: &OwnedFd, field: &str) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().parse()))
        .context("not a BPF map")?
        .with_context(|| format!("bad {field}"))
}
