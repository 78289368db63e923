//! The generated skeletons, and the shared C types they carry.
#![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]

pub mod lb {
    include!(concat!(env!("OUT_DIR"), "/lb.skel.rs"));
}
pub mod trivial {
    include!(concat!(env!("OUT_DIR"), "/trivial.skel.rs"));
}
