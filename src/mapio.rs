//! Small helpers over BPF maps shared by the load balancer and the shield.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
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
    /// that shape its memory (BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU; libbpf adds others at creation, e.g.
    /// BPF_F_RDONLY_PROG to a devmap).
    pub fn same_layout(&self, d: &crate::memplan::MapDef) -> bool {
        // Not BPF_F_MMAPABLE: an adopted table without it is written by
        // syscalls instead (dataplane::tables_mapped).
        const SHAPE: u32 = 1 | 1 << 1;
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


/// map_flags of the map behind `fd` (from /proc/self/fdinfo).
pub fn map_flags(fd: std::os::fd::BorrowedFd<'_>) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let v = info.lines().find_map(|l| l.strip_prefix("map_flags:")).context("not a BPF map")?.trim();
    u32::from_str_radix(v.trim_start_matches("0x"), 16).with_context(|| format!("bad map_flags {v:?}"))
}

/// A BPF_F_MMAPABLE ARRAY map of u32 values, mapped into this process:
/// writing a block of entries is stores into shared memory instead of a
/// copy and an update per entry in the kernel (BPF_MAP_UPDATE_BATCH).
/// The kernel lays values out `round_up(value_size, 8)` = 8 bytes apart,
/// from the start of the mapping.
pub struct MappedU32Array {
    base: *mut u8,
    len: usize,
    entries: u32,
}

// The mapping is this value's own (unmapped on drop); the kernel keeps the
// map alive while it is mapped.
unsafe impl Send for MappedU32Array {}

/// Stride of an ARRAY map's values in its mmap: value_size rounded to 8.
const U32_STRIDE: usize = 8;

impl MappedU32Array {
    /// Map `map` (an ARRAY of u32 keys and values) if it was created with
    /// BPF_F_MMAPABLE; None when it was not (a map adopted from an older
    /// instance), so writes go through the syscalls.
    pub fn of(map: &dyn MapCore) -> Result<Option<MappedU32Array>> {
        let flags = map_flags(map.as_fd())?;
        if flags & libbpf_sys::BPF_F_MMAPABLE == 0 {
            return Ok(None);
        }
        anyhow::ensure!(
            map.map_type() == libbpf_rs::MapType::Array && map.key_size() == 4 && map.value_size() == 4,
            "map {} is not an array of u32",
            map.name().to_string_lossy()
        );
        let entries = map.max_entries();
        let page = 4096usize.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize);
        let len = (entries as usize * U32_STRIDE).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's value area, which the kernel
        // sizes to at least `len` (page-rounded values) for mmapable arrays.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, map.as_fd().as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            bail!("mapping BPF map {} into memory: {}", map.name().to_string_lossy(), std::io::Error::last_os_error());
        }
        Ok(Some(MappedU32Array { base: p.cast(), len, entries }))
    }

    /// Entries `first..first + vals.len()` become `vals`. Returns after a
    /// full fence: the stores are visible before any later write (the
    /// VIP's switch to this block) is.
    pub fn write(&self, first: u32, vals: &[u32]) -> Result<()> {
        let end = u64::from(first) + vals.len() as u64;
        anyhow::ensure!(end <= u64::from(self.entries), "entries {first}..{end} beyond the map's {}", self.entries);
        for (i, v) in vals.iter().enumerate() {
            // SAFETY: in bounds (checked above: end * 8 <= len), 8-aligned;
            // volatile: the memory is shared with the kernel.
            unsafe { std::ptr::write_volatile(self.base.add((first as usize + i) * U32_STRIDE).cast::<u32>(), *v) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Entries `first..first + n`.
    pub fn read(&self, first: u32, n: u32) -> Result<Vec<u32>> {
        let end = u64::from(first) + u64::from(n);
        anyhow::ensure!(end <= u64::from(self.entries), "entries {first}..{end} beyond the map's {}", self.entries);
        // SAFETY: in bounds, 8-aligned (as in write).
        Ok((first..first + n).map(|i| unsafe { std::ptr::read_volatile(self.base.add(i as usize * U32_STRIDE).cast::<u32>()) }).collect())
    }
}

impl Drop for MappedU32Array {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
