//! `weir decap`'s program (bpf/decap.bpf.c `xdp_decap`) through
//! BPF_PROG_TEST_RUN (root, no lab): it strips an outer IPv4 (protocol 4 or
//! 41) or IPv6 (next header 41 or 4) header only when the outer destination
//! is one of the host's own addresses, i.e. a key of `decap_v4` / `decap_v6`
//! (as src/main.rs `decap` fills them); everything else is XDP_PASS with the
//! frame unchanged.
//!
//! Every frame is built with common's `Pkt` (etherparse): the inner packet
//! on its own, then the outer header around those exact bytes (common
//! `ipip`), so the expected output (Ethernet header + inner packet) does not
//! come from the code under test. Run through the one fixture runner: the
//! program has no counters, so each case names none.

mod common;

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use weir::skel::decap::{DecapSkel, DecapSkelBuilder};

use common::*;

const OWN4: &str = "198.18.0.11";
const OTHER4: &str = "198.18.0.99";
const OWN6: &str = "2001:2::11";
const OTHER6: &str = "2001:2::99";
/// The balancer's addresses: the outer source of every tunnel here.
const LB4: &str = "198.18.0.10";
const LB6: &str = "2001:2::10";

const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];

fn v4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}
fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// The client's TCP segment to the VIP (no Ethernet).
fn inner4() -> Pkt {
    Pkt::new("198.18.0.1", "198.18.0.100", syn(40001, 80), b"inner v4 payload").ip_fields(0, 0, true, 63)
}

fn inner6() -> Pkt {
    Pkt::new("2001:2::1", "2001:2::100", syn(40002, 80), b"inner v6 payload, a little longer").ip_fields(0, 0, true, 63)
}

/// An Ethernet frame (balancer -> backend) carrying `inner` in an outer
/// IPv4 or IPv6 header (protocol / next header 4 or 41 by the inner
/// family) from the balancer to `dst`.
fn outer(dst: &str, inner: &Pkt) -> Vec<u8> {
    let src = if ip(dst).is_ipv4() { LB4 } else { LB6 };
    ipip(inner, src, dst, CLIENT_MAC).frame()
}

/// What a stripped `frame` must become: its own MACs, `ethertype`, `inner`.
fn stripped(frame: &[u8], ethertype: [u8; 2], inner: &[u8]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(inner);
    f
}

fn load() -> DecapSkel<'static> {
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    DecapSkelBuilder::default()
        .open(holder)
        .expect("opening the trivial skeleton")
        .load()
        .expect("loading the trivial skeleton (root)")
}

/// The host's own addresses, keyed as src/main.rs `decap` keys them.
fn fill(skel: &DecapSkel<'_>) {
    skel.maps.decap_v4.update(&v4(OWN4), &[1], MapFlags::ANY).expect("decap_v4 update");
    skel.maps.decap_v6.update(&v6(OWN6), &[1], MapFlags::ANY).expect("decap_v6 update");
}

/// `frame` must pass, as `want` (None: unchanged); no counters to check.
fn expect_pass(skel: &DecapSkel<'_>, what: &str, frame: &[u8], want: Option<&[u8]>) {
    check(&skel.progs.xdp_decap, what, frame, XDP_PASS, want, &[]);
}

#[test]
fn decap_strips_only_tunnels_addressed_to_the_host() {
    if !require_root("decap BPF_PROG_TEST_RUN test") {
        return;
    }
    let skel = load();
    let (p4, p6) = (inner4(), inner6());
    let (i4, i6) = (p4.ip_bytes(), p6.ip_bytes());

    // Sanity of the frames themselves (built independently of weir).
    let f = outer(OWN4, &p4);
    assert_eq!(f.len(), 14 + 20 + i4.len());
    assert_eq!(&f[12..14], &ETH_IPV4);
    assert_eq!(f[14 + 9], 4, "outer protocol 4 (IPIP)");
    assert_eq!(&f[14 + 16..14 + 20], &v4(OWN4));
    let f6 = outer(OWN6, &p6);
    assert_eq!(f6.len(), 14 + 40 + i6.len());
    assert_eq!(f6[14 + 6], 41, "outer next header 41 (IP6IP6)");

    // Empty maps: no address is the host's, so nothing is opened.
    expect_pass(&skel, "IPIP to 198.18.0.11 with empty maps", &f, None);
    expect_pass(&skel, "IP6IP6 to 2001:2::11 with empty maps", &f6, None);

    fill(&skel);

    // To the host's own addresses: the outer header goes.
    let f = outer(OWN4, &p4);
    expect_pass(&skel, "IPIP to 198.18.0.11 (own)", &f, Some(&stripped(&f, ETH_IPV4, &i4)));
    let f = outer(OWN6, &p6);
    expect_pass(&skel, "IP6IP6 to 2001:2::11 (own)", &f, Some(&stripped(&f, ETH_IPV6, &i6)));
    let f = outer(OWN4, &p6);
    assert_eq!(f[14 + 9], 41);
    expect_pass(&skel, "IPv6-in-IPv4 (protocol 41) to 198.18.0.11 (own)", &f, Some(&stripped(&f, ETH_IPV6, &i6)));
    let f = outer(OWN6, &p4);
    assert_eq!(f[14 + 6], 4);
    expect_pass(&skel, "IPv4-in-IPv6 (next header 4) to 2001:2::11 (own)", &f, Some(&stripped(&f, ETH_IPV4, &i4)));

    // Transit tunnels (another destination): passed unchanged.
    expect_pass(&skel, "IPIP to 198.18.0.99 (not own)", &outer(OTHER4, &p4), None);
    expect_pass(&skel, "IP6IP6 to 2001:2::99 (not own)", &outer(OTHER6, &p6), None);
    expect_pass(&skel, "IPv6-in-IPv4 to 198.18.0.99 (not own)", &outer(OTHER4, &p6), None);
    expect_pass(&skel, "IPv4-in-IPv6 to 2001:2::99 (not own)", &outer(OTHER6, &p4), None);
    // The own address of the other family does not open a tunnel: the
    // IPv6 address in decap_v6 says nothing about an IPv4 outer header.
    expect_pass(&skel, "IPIP to 198.18.0.12 (not own)", &outer("198.18.0.12", &p4), None);

    // Not a tunnel at all, even to an own address: unchanged.
    let plain = |src: &str, dst: &str, sport: u16| Pkt::new(src, dst, syn(sport, 80), b"plain").frame();
    expect_pass(&skel, "plain TCP to 198.18.0.11", &plain("198.18.0.1", OWN4, 40003), None);
    expect_pass(&skel, "plain TCP to the VIP", &plain("198.18.0.1", "198.18.0.100", 40004), None);
    expect_pass(&skel, "plain TCP over IPv6 to 2001:2::11", &plain("2001:2::1", OWN6, 40005), None);
}
