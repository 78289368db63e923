//! weir as a tier: nodes with the same config behind ECMP, which must agree
//! on every flow's backend.
pub mod fingerprint;
pub mod lookup;
