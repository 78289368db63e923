//! weir: an XDP layer-4 load balancer. The binary is a thin shell over these
//! modules; the tests drive the same API.
pub mod attach;
pub mod bench;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fdpass;
pub mod handoff;
pub mod health;
pub mod maglev;
pub mod memplan;
pub mod mapio;
pub mod metrics;
pub mod net;
pub mod netlink;
pub mod plan;
pub mod probenet;
pub mod rr;
pub mod shield;
pub mod skel;
pub mod stats;
pub mod tier;
pub mod tracecli;
