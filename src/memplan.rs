//! The kernel memory a data plane will hold, computed before anything is
//! loaded (`weir check`): from the opened BPF object's map definitions after
//! sizing (type, key and value size, max_entries, flags), with the kernel's
//! own accounting formulas (the `memlock:` of a map's fdinfo, what `bpftool
//! map show` prints; kernel/bpf/*.c `*_map_mem_usage`, Linux 6.18).
//!
//! Nothing here knows weir's maps: names and sizes come from the object,
//! what each size follows from the sizing (`dataplane::Sized`).
//! tests/memory.rs holds these figures to the kernel's.

use std::fmt::Write as _;

use libbpf_rs::MapType;

/// The kernel's own structures around a map's data (x86-64, Linux 6.18;
/// the fixed sizes as its accounting shows them for one-entry maps). They
/// are small next to any sized table; they keep the estimate of a
/// one-entry map close too.
mod kernel {
    /// struct bucket: an hlist_nulls_head and a lock.
    pub const HTAB_BUCKET: u64 = 16;
    /// struct htab_elem without its key and value.
    pub const HTAB_ELEM: u64 = 48;
    /// sizeof(struct bpf_htab).
    pub const HTAB: u64 = 960;
    /// sizeof(struct bpf_array) (the map, up to its flexible value array).
    pub const ARRAY: u64 = 312;
    /// sizeof(struct bpf_ringbuf_map).
    pub const RINGBUF_MAP: u64 = 304;
    /// Pages of a ring buffer before its data: the header and the consumer
    /// and producer positions (RINGBUF_NR_META_PAGES).
    pub const RINGBUF_META_PAGES: u64 = 3;
    /// sizeof(struct bpf_dtab).
    pub const DTAB: u64 = 344;
    /// An LPM trie accounts its nodes only (trie_mem_usage): empty, nothing.
    pub const PAGE: u64 = 4096;
    pub const PTR: u64 = 8;
}

const BPF_F_NO_PREALLOC: u32 = 1 << 0;
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One map as the loader will create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

impl MapDef {
    pub fn of_open(m: &libbpf_rs::OpenMap<'_>) -> MapDef {
        MapDef {
            name: m.name().to_string_lossy().into_owned(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            map_flags: m.map_flags(),
        }
    }
}

/// What the kernel accounts for a map at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub bytes: u64,
    /// The map allocates per element as it fills (not preallocated): `bytes`
    /// is its empty size.
    pub grows: bool,
    /// A map type these formulas do not know: `bytes` is a guess
    /// (max_entries x (key + value)).
    pub guessed: bool,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The kernel's accounting of a map created from `d` on a machine with
/// `cpus` possible CPUs.
pub fn cost(d: &MapDef, cpus: u64) -> Cost {
    use kernel::*;
    let (key, value, n) = (u64::from(d.key_size), u64::from(d.value_size), u64::from(d.max_entries));
    let value8 = round_up(value, 8);
    let fixed = |bytes| Cost { bytes, grows: false, guessed: false };
    match d.map_type {
        MapType::Hash | MapType::LruHash | MapType::PercpuHash | MapType::LruPercpuHash => {
            let percpu = matches!(d.map_type, MapType::PercpuHash | MapType::LruPercpuHash);
            let lru = matches!(d.map_type, MapType::LruHash | MapType::LruPercpuHash);
            let prealloc = d.map_flags & BPF_F_NO_PREALLOC == 0;
            // htab_map_alloc: a per-CPU LRU list gets an equal share per CPU.
            let n = if lru && d.map_flags & BPF_F_NO_COMMON_LRU != 0 { round_up(n, cpus) } else { n };
            let elem = HTAB_ELEM + round_up(key, 8) + if percpu { PTR } else { value8 };
            let mut bytes = HTAB + HTAB_BUCKET * n.next_power_of_two();
            if !prealloc {
                return Cost { bytes, grows: true, guessed: false };
            }
            // A plain preallocated hash keeps one spare element per CPU
            // (htab_has_extra_elems), and a pointer to it.
            let extra = !percpu && !lru;
            let elems = n + if extra { cpus } else { 0 };
            bytes += elem * elems;
            if percpu {
                bytes += value8 * cpus * elems;
            } else if !lru {
                bytes += PTR * cpus;
            }
            fixed(bytes)
        }
        MapType::Array | MapType::PercpuArray => {
            if d.map_type == MapType::PercpuArray {
                fixed(ARRAY + n * PTR + n * value8 * cpus)
            } else if d.map_flags & BPF_F_MMAPABLE != 0 {
                fixed(round_up(ARRAY, PAGE) + round_up(n * value8, PAGE))
            } else {
                fixed(ARRAY + n * value8)
            }
        }
        MapType::RingBuf | MapType::UserRingBuf => {
            let data_pages = n / PAGE;
            let pages = RINGBUF_META_PAGES + data_pages;
            fixed(RINGBUF_MAP + pages * PAGE + (RINGBUF_META_PAGES + 2 * data_pages) * PTR)
        }
        MapType::Devmap => Cost { bytes: DTAB + n * PTR, grows: true, guessed: false },
        MapType::DevmapHash => Cost { bytes: DTAB + n.next_power_of_two() * PTR, grows: true, guessed: false },
        MapType::LpmTrie => Cost { bytes: 0, grows: true, guessed: false },
        _ => Cost { bytes: n * (key + value), grows: false, guessed: true },
    }
}

fn type_name(t: MapType) -> String {
    match t {
        MapType::Hash => "hash".into(),
        MapType::LruHash => "lru_hash".into(),
        MapType::PercpuHash => "percpu_hash".into(),
        MapType::LruPercpuHash => "lru_percpu_hash".into(),
        MapType::Array => "array".into(),
        MapType::PercpuArray => "percpu_array".into(),
        MapType::RingBuf => "ringbuf".into(),
        MapType::Devmap => "devmap".into(),
        MapType::DevmapHash => "devmap_hash".into(),
        MapType::LpmTrie => "lpm_trie".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One map's line of the plan.
#[derive(Debug, Clone)]
pub struct MapPlan {
    pub def: MapDef,
    pub cost: Cost,
    /// What its size follows (from the sizing), e.g. "conntrack.size";
    /// with `off`, the feature that is off.
    pub note: String,
    /// Part of the per-flow cost (the flow and handshake tables).
    pub per_flow: bool,
}

#[derive(Debug, Clone)]
pub struct MemPlan {
    pub maps: Vec<MapPlan>,
    pub cpus: u64,
    /// Flows conntrack.size tracks: the per-flow figure divides by it.
    pub tracked_flows: u32,
}

impl MemPlan {
    pub fn total(&self) -> u64 {
        self.maps.iter().map(|m| m.cost.bytes).sum()
    }

    /// Bytes of the maps that track flows (flow tables and the handshake
    /// table's share).
    pub fn flow_bytes(&self) -> u64 {
        self.maps.iter().filter(|m| m.per_flow).map(|m| m.cost.bytes).sum()
    }

    /// Bytes per tracked flow: the flow-tracking maps over conntrack.size.
    pub fn bytes_per_flow(&self) -> f64 {
        self.flow_bytes() as f64 / f64::from(self.tracked_flows.max(1))
    }

    pub fn get(&self, name: &str) -> Option<&MapPlan> {
        self.maps.iter().find(|m| m.def.name == name)
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "memory (kernel accounting, {} possible CPUs; maps marked + grow as they fill):\n  {:<15} {:<15} {:>10} {:>4} {:>5} {:>13}  {}\n",
            self.cpus, "map", "type", "entries", "key", "value", "bytes", "sized by"
        );
        let mut maps: Vec<&MapPlan> = self.maps.iter().collect();
        maps.sort_by(|a, b| b.cost.bytes.cmp(&a.cost.bytes).then(a.def.name.cmp(&b.def.name)));
        for m in maps {
            let d = &m.def;
            let mark = if m.cost.guessed {
                "?"
            } else if m.cost.grows {
                "+"
            } else {
                " "
            };
            let _ = writeln!(
                s,
                "  {:<15} {:<15} {:>10} {:>4} {:>5} {:>13}{mark} {}",
                d.name,
                type_name(d.map_type),
                d.max_entries,
                d.key_size,
                d.value_size,
                group(m.cost.bytes),
                m.note
            );
        }
        let _ = writeln!(s, "  total {} bytes ({:.1} MiB)", group(self.total()), self.total() as f64 / (1 << 20) as f64);
        let _ = writeln!(
            s,
            "  per tracked flow: {:.1} bytes ({} MiB of flow tables for {} flows)",
            self.bytes_per_flow(),
            self.flow_bytes() >> 20,
            self.tracked_flows
        );
        s
    }
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(t: MapType, key: u32, value: u32, n: u32, flags: u32) -> MapDef {
        MapDef { name: "m".into(), map_type: t, key_size: key, value_size: value, max_entries: n, map_flags: flags }
    }

    #[test]
    fn hash_tables_cost_buckets_and_preallocated_elements() {
        // 1000 entries: 1024 buckets of 16 bytes, elements of 48 + 16 + 8.
        let lru = cost(&def(MapType::LruHash, 13, 4, 1000, 0), 2);
        assert_eq!(lru.bytes, kernel::HTAB + 1024 * 16 + 1000 * (48 + 16 + 8));
        // A plain hash has one spare element and pointer per CPU.
        let h = cost(&def(MapType::Hash, 13, 4, 1000, 0), 2);
        assert_eq!(h.bytes, lru.bytes + 2 * (48 + 16 + 8) + 2 * 8);
        // Per-CPU values: a pointer in the element, a value per CPU.
        let p = cost(&def(MapType::PercpuHash, 8, 24, 4, 0), 4);
        assert_eq!(p.bytes, kernel::HTAB + 4 * 16 + 4 * (48 + 8 + 8) + 24 * 4 * 4);
        let np = cost(&def(MapType::Hash, 8, 8, 1 << 20, BPF_F_NO_PREALLOC), 2);
        assert!(np.grows && np.bytes < (1 << 20) * 17);
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(123), "123");
    }

    #[test]
    fn arrays_round_values_to_8_and_per_cpu_arrays_multiply() {
        assert_eq!(cost(&def(MapType::Array, 4, 4, 100, 0), 2).bytes, kernel::ARRAY + 800);
        assert_eq!(cost(&def(MapType::PercpuArray, 4, 12, 10, 0), 3).bytes, kernel::ARRAY + 80 + 10 * 16 * 3);
        assert_eq!(cost(&def(MapType::Array, 4, 8, 1, BPF_F_MMAPABLE), 2).bytes, 2 * 4096);
    }
}
