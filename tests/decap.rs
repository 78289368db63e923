//! `weir decap`'s program (bpf/trivial.bpf.c `xdp_decap`) through
//! BPF_PROG_TEST_RUN (root, no lab): it strips an outer IPv4 (protocol 4 or
//! 41) or IPv6 (next header 41 or 4) header only when the outer destination
//! is one of the host's own addresses, i.e. a key of `decap_v4` / `decap_v6`
//! (as src/main.rs `decap` fills them); everything else is XDP_PASS with the
//! frame unchanged.
//!
//! Every frame is built here with etherparse: the inner packet on its own,
//! then the outer header around those exact bytes, so the expected output
//! (Ethernet header + inner packet) does not come from the code under test.

mod common;

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{IpNumber, PacketBuilder};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use weir::dataplane::test_run;
use weir::skel::trivial::{TrivialSkel, TrivialSkelBuilder};

use common::{action_name, hex_row, require_root, CLIENT_MAC, LB_MAC, XDP_PASS};

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

/// The client's TCP segment to the VIP, as an IP packet (no Ethernet).
fn inner4() -> Vec<u8> {
    let b = PacketBuilder::ipv4(v4("198.18.0.1"), v4("198.18.0.100"), 63).tcp(40001, 80, 0x1234_5678, 64240).syn();
    let payload = b"inner v4 payload";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

fn inner6() -> Vec<u8> {
    let b = PacketBuilder::ipv6(v6("2001:2::1"), v6("2001:2::100"), 63).tcp(40002, 80, 0x8765_4321, 64240).syn();
    let payload = b"inner v6 payload, a little longer";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

/// An Ethernet frame (balancer -> backend) carrying `inner` in an outer
/// IPv4 header (protocol `proto`) to `dst`.
fn outer4(dst: &str, proto: IpNumber, inner: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC).ipv4(v4(LB4), v4(dst), 64);
    let mut out = Vec::with_capacity(b.size(inner.len()));
    b.write(&mut out, proto, inner).unwrap();
    out
}

/// The same with an outer IPv6 header (next header `proto`).
fn outer6(dst: &str, proto: IpNumber, inner: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC).ipv6(v6(LB6), v6(dst), 64);
    let mut out = Vec::with_capacity(b.size(inner.len()));
    b.write(&mut out, proto, inner).unwrap();
    out
}

/// What a stripped `frame` must become: its own MACs, `ethertype`, `inner`.
fn stripped(frame: &[u8], ethertype: [u8; 2], inner: &[u8]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(inner);
    f
}

fn load() -> TrivialSkel<'static> {
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    TrivialSkelBuilder::default()
        .open(holder)
        .expect("opening the trivial skeleton")
        .load()
        .expect("loading the trivial skeleton (root)")
}

/// The host's own addresses, keyed as src/main.rs `decap` keys them.
fn fill(skel: &TrivialSkel<'_>) {
    skel.maps.decap_v4.update(&v4(OWN4), &[1], MapFlags::ANY).expect("decap_v4 update");
    skel.maps.decap_v6.update(&v6(OWN6), &[1], MapFlags::ANY).expect("decap_v6 update");
}

fn run(skel: &TrivialSkel<'_>, frame: &[u8]) -> (u32, Vec<u8>) {
    let (a, out, _) = test_run(&skel.progs.xdp_decap, frame, 1).expect("BPF_PROG_TEST_RUN on xdp_decap");
    (a, out)
}

/// Runs `frame`; asserts XDP_PASS and exactly `want` as output.
fn expect(skel: &TrivialSkel<'_>, what: &str, frame: &[u8], want: &[u8]) {
    let (a, out) = run(skel, frame);
    assert_eq!(a, XDP_PASS, "{what}: action {} (want XDP_PASS)", action_name(a));
    assert!(
        out == want,
        "{what}: output differs\n  in:   {}\n  out:  {}\n  want: {}",
        hex_row(frame),
        hex_row(&out),
        hex_row(want)
    );
    eprintln!("ok: {what}: XDP_PASS, {} -> {} bytes", frame.len(), out.len());
}

#[test]
fn decap_strips_only_tunnels_addressed_to_the_host() {
    if !require_root("decap BPF_PROG_TEST_RUN test") {
        return;
    }
    let skel = load();
    let (i4, i6) = (inner4(), inner6());

    // Sanity of the frames themselves (built independently of weir).
    let f = outer4(OWN4, IpNumber::IPV4, &i4);
    assert_eq!(f.len(), 14 + 20 + i4.len());
    assert_eq!(&f[12..14], &ETH_IPV4);
    assert_eq!(f[14 + 9], 4, "outer protocol 4 (IPIP)");
    assert_eq!(&f[14 + 16..14 + 20], &v4(OWN4));
    let f6 = outer6(OWN6, IpNumber::IPV6, &i6);
    assert_eq!(f6.len(), 14 + 40 + i6.len());
    assert_eq!(f6[14 + 6], 41, "outer next header 41 (IP6IP6)");

    // Empty maps: no address is the host's, so nothing is opened.
    expect(&skel, "IPIP to 198.18.0.11 with empty maps", &f, &f);
    expect(&skel, "IP6IP6 to 2001:2::11 with empty maps", &f6, &f6);

    fill(&skel);

    // To the host's own addresses: the outer header goes.
    let f = outer4(OWN4, IpNumber::IPV4, &i4);
    expect(&skel, "IPIP to 198.18.0.11 (own)", &f, &stripped(&f, ETH_IPV4, &i4));
    let f = outer6(OWN6, IpNumber::IPV6, &i6);
    expect(&skel, "IP6IP6 to 2001:2::11 (own)", &f, &stripped(&f, ETH_IPV6, &i6));
    let f = outer4(OWN4, IpNumber::IPV6, &i6);
    assert_eq!(f[14 + 9], 41);
    expect(&skel, "IPv6-in-IPv4 (protocol 41) to 198.18.0.11 (own)", &f, &stripped(&f, ETH_IPV6, &i6));
    let f = outer6(OWN6, IpNumber::IPV4, &i4);
    assert_eq!(f[14 + 6], 4);
    expect(&skel, "IPv4-in-IPv6 (next header 4) to 2001:2::11 (own)", &f, &stripped(&f, ETH_IPV4, &i4));

    // Transit tunnels (another destination): passed unchanged.
    let f = outer4(OTHER4, IpNumber::IPV4, &i4);
    expect(&skel, "IPIP to 198.18.0.99 (not own)", &f, &f);
    let f = outer6(OTHER6, IpNumber::IPV6, &i6);
    expect(&skel, "IP6IP6 to 2001:2::99 (not own)", &f, &f);
    let f = outer4(OTHER4, IpNumber::IPV6, &i6);
    expect(&skel, "IPv6-in-IPv4 to 198.18.0.99 (not own)", &f, &f);
    let f = outer6(OTHER6, IpNumber::IPV4, &i4);
    expect(&skel, "IPv4-in-IPv6 to 2001:2::99 (not own)", &f, &f);
    // The own address of the other family does not open a tunnel: the
    // IPv6 address in decap_v6 says nothing about an IPv4 outer header.
    let f = outer4("198.18.0.12", IpNumber::IPV4, &i4);
    expect(&skel, "IPIP to 198.18.0.12 (not own)", &f, &f);

    // Not a tunnel at all, even to an own address: unchanged.
    let f = common::tcp_payload("198.18.0.1", OWN4, 40003, 80, b"plain");
    expect(&skel, "plain TCP to 198.18.0.11", &f, &f);
    let f = common::tcp_payload("198.18.0.1", "198.18.0.100", 40004, 80, b"plain");
    expect(&skel, "plain TCP to the VIP", &f, &f);
    let f = common::tcp_payload("2001:2::1", OWN6, 40005, 80, b"plain");
    expect(&skel, "plain TCP over IPv6 to 2001:2::11", &f, &f);
}
