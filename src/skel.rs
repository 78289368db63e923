//! The generated skeletons, and the shared C types they carry.
//!
//! Every struct shared with the BPF side is defined once, in
//! `include/weir.h`; Rust gets it from the skeleton's BTF-generated `types`.
//! The size assertions below fail the build if the two ever disagree with
//! what the maps were created with.

#[allow(clippy::all, non_camel_case_types, dead_code, unused_imports, non_snake_case)]
pub mod lb {
    include!(concat!(env!("OUT_DIR"), "/lb.skel.rs"));
}
#[allow(clippy::all, non_camel_case_types, dead_code, unused_imports, non_snake_case)]
pub mod shield {
    include!(concat!(env!("OUT_DIR"), "/shield.skel.rs"));
}
#[allow(clippy::all, non_camel_case_types, dead_code, unused_imports, non_snake_case)]
pub mod trivial {
    include!(concat!(env!("OUT_DIR"), "/trivial.skel.rs"));
}

/// The backends' decapsulator (`weir decap`).
pub mod decap {
    include!(concat!(env!("OUT_DIR"), "/decap.skel.rs"));
}

pub use lb::types::{
    backend as Backend, flow as Flow, in6_key as In6Key, stat_block as StatBlock, lpm_v4 as LpmV4, lpm_v6 as LpmV6,
    shield_policy as ShieldPolicy, shield_state as ShieldState, trace_event as TraceEvent, weir_attack_mode, weir_shield_flags, flow_key as FlowKey, flow4_key as Flow4Key, traffic as Traffic, vip_key as VipKey,
    vip_meta as VipMeta, bench_scratch as BenchScratch, nat_fwd as NatFwd, probe_cfg as ProbeCfg, probe_target as ProbeTarget, nat_rev as NatRev, weir_nat_state, weir_vip_flags, weir_backend_flags, weir_const, weir_fwd_mode, weir_sched, weir_stat,
};

// SAFETY: plain C structs of integers and byte arrays, no pointers, no padding
// that carries meaning; any byte pattern is a valid value.
unsafe impl plain::Plain for Backend {}
unsafe impl plain::Plain for Flow {}
unsafe impl plain::Plain for In6Key {}
unsafe impl plain::Plain for StatBlock {}
unsafe impl plain::Plain for LpmV4 {}
unsafe impl plain::Plain for LpmV6 {}
unsafe impl plain::Plain for ShieldPolicy {}
unsafe impl plain::Plain for ShieldState {}
unsafe impl plain::Plain for TraceEvent {}
unsafe impl plain::Plain for FlowKey {}
unsafe impl plain::Plain for Flow4Key {}
unsafe impl plain::Plain for Traffic {}
unsafe impl plain::Plain for VipKey {}
unsafe impl plain::Plain for VipMeta {}
unsafe impl plain::Plain for NatFwd {}
unsafe impl plain::Plain for NatRev {}
unsafe impl plain::Plain for ProbeCfg {}
unsafe impl plain::Plain for ProbeTarget {}
unsafe impl plain::Plain for BenchScratch {}

const _: () = assert!(std::mem::size_of::<VipKey>() == 20);
const _: () = assert!(std::mem::size_of::<BenchScratch>() == 48 + 256);
const _: () = assert!(std::mem::size_of::<VipMeta>() == 36);
const _: () = assert!(std::mem::size_of::<Backend>() == 44);
const _: () = assert!(std::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(std::mem::size_of::<Flow4Key>() == 16);
const _: () = assert!(std::mem::size_of::<Flow>() == 8);
const _: () = assert!(std::mem::size_of::<NatFwd>() == 28);
const _: () = assert!(std::mem::size_of::<NatRev>() == 68);
const _: () = assert!(std::mem::size_of::<Traffic>() == 24);
const _: () = assert!(std::mem::size_of::<StatBlock>() == 8 * STAT_COUNT);
const _: () = assert!(std::mem::size_of::<ShieldPolicy>() == 40);
const _: () = assert!(std::mem::size_of::<ShieldState>() == 32);
const _: () = assert!(std::mem::size_of::<LpmV6>() == 20);
const _: () = assert!(std::mem::size_of::<TraceEvent>() == 64);
const _: () = assert!(std::mem::size_of::<ProbeCfg>() == 32);
const _: () = assert!(std::mem::size_of::<ProbeTarget>() == 68);

pub const MAX_VIPS: u32 = weir_const::WEIR_MAX_VIPS.0;
pub const MAX_BACKENDS: u32 = weir_const::WEIR_MAX_BACKENDS.0;
pub const RR_SLOTS: u32 = weir_const::WEIR_RR_SLOTS.0;
pub const MAX_TX_PORTS: u32 = weir_const::WEIR_MAX_TX_PORTS.0;
/// Data-path health checks (bpf/probe.h): DEVMAP slots and source ports.
pub const PROBE_SLOT_IFACE: u32 = weir_const::WEIR_PROBE_SLOT_IFACE.0;
pub const PROBE_SLOT_VETH: u32 = weir_const::WEIR_PROBE_SLOT_VETH.0;
pub const PROBE_PORT_LO: u16 = weir_const::WEIR_PROBE_PORT_LO.0 as u16;
pub const PROBE_PORTS: u16 = weir_const::WEIR_PROBE_PORTS.0 as u16;
pub const HASH_SEED: u32 = weir_const::WEIR_HASH_SEED.0;
pub const FAMILY_V4: u8 = weir_const::WEIR_FAMILY_V4.0 as u8;
pub const FAMILY_V6: u8 = weir_const::WEIR_FAMILY_V6.0 as u8;
/// `WEIR_NO_BACKEND` in weir.h (a #define: too large for a C enum).
pub const NO_BACKEND: u32 = u32::MAX;
/// vip_arp / vip_nd values: the address's VLAN id from this bit on.
pub const NEIGH_VLAN_SHIFT: u32 = weir_const::WEIR_NEIGH_VLAN_SHIFT.0;
pub const STAT_COUNT: usize = weir_stat::WEIR_STAT_MAX.0 as usize;

/// Names of the global counters, by index (the enum's order in weir.h).
pub fn stat_name(idx: usize) -> &'static str {
    STAT_NAMES.get(idx).copied().unwrap_or("unknown")
}

include!(concat!(env!("OUT_DIR"), "/stat_names.rs"));
const _: () = assert!(STAT_NAMES.len() == STAT_COUNT);

/// Bytes of a shared struct, as a map key or value.
pub fn bytes_of<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: Plain types have no invalid byte patterns and no references.
    unsafe { plain::as_bytes(v) }
}

/// A shared struct read back from a map.
pub fn from_bytes<T: plain::Plain + Default>(b: &[u8]) -> anyhow::Result<T> {
    let mut v = T::default();
    plain::copy_from_bytes(&mut v, b)
        .map_err(|e| anyhow::anyhow!("map value of {} bytes does not fit its type: {e:?}", b.len()))?;
    Ok(v)
}
