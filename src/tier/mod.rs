//! weir as one node of a tier behind ECMP (docs/scale-out.md): nodes with
//! the same config, which must agree on every flow's backend (fingerprint,
//! lookup), announce what they can serve (announce) and share their flows
//! (sync).

pub mod announce;
pub mod fingerprint;
pub mod lookup;
pub mod sync;

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::plan::Plan;

/// The VIP addresses this node can serve now: one of the address's VIPs
/// has a backend in rotation (weight > 0, not down).
pub fn usable_addrs(plan: &Plan, down: &BTreeSet<u32>) -> BTreeSet<IpAddr> {
    plan.vips
        .iter()
        .filter(|v| v.backends.iter().any(|b| b.weight > 0 && !down.contains(&b.id)))
        .map(|v| v.addr)
        .collect()
}
