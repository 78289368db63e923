//! Small helpers over BPF maps shared by the load balancer and the shield.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

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

/// What the kernel says of the map behind `fd` (/proc/self/fdinfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapInfo {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    /// The kernel's accounting of the map's memory (what `bpftool map show`
    /// prints as memlock).
    pub memlock: u64,
    /// The kernel's id of the map (the same map behind two fds has one).
    pub map_id: u32,
}

impl MapInfo {
    /// A map created from `d` would be this one: type, sizes, and the flags
    /// that shape its memory (BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU,
    /// BPF_F_MMAPABLE; libbpf adds others at creation, e.g.
    /// BPF_F_RDONLY_PROG to a devmap).
    pub fn same_layout(&self, d: &crate::memplan::MapDef) -> bool {
        const SHAPE: u32 = 1 | 1 << 1 | 1 << 10;
        self.map_type == d.map_type as u32
            && self.key_size == d.key_size
            && self.value_size == d.value_size
            && self.max_entries == d.max_entries
            && self.map_flags & SHAPE == d.map_flags & SHAPE
    }
}

pub fn map_info(fd: &impl AsRawFd) -> Result<MapInfo> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let info = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let v = info
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .with_context(|| format!("{path} has no {name}: not a BPF map"))?
            .trim();
        // map_flags is printed in hex (0x...).
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => v.parse(),
        }
        .with_context(|| format!("{path}: bad {name} '{v}'"))
    };
    let u32f = |name: &str| -> Result<u32> { u32::try_from(field(name)?).with_context(|| format!("{path}: {name} out of range")) };
    Ok(MapInfo {
        map_type: u32f("map_type")?,
        key_size: u32f("key_size")?,
        value_size: u32f("value_size")?,
        max_entries: u32f("max_entries")?,
        map_flags: u32f("map_flags")?,
        memlock: field("memlock")?,
        map_id: u32f("map_id")?,
    })
}

