//! SYN-flood shield fixtures through BPF_PROG_TEST_RUN (root), on the one
//! fixture runner (tests/common/fixture.rs): each verdict, the exact
//! challenge bytes (built here field by field; every checksum of the output
//! verified independently) and exactly the counters that rose, in the load
//! balancer's combined entry and standalone.

mod common;

use common::*;
use etherparse::{SlicedPacket, TransportSlice};

use common::shield_config as config;

const BACKEND: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const BACKEND6: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x0b];

/// A Linux-like SYN to port 80: options (MSS, SACK-permitted, timestamps,
/// window scale), ISN `isn`.
fn syn_with_options(src: &str, dst: &str, sport: u16, isn: u32) -> Vec<u8> {
    Pkt::new(src, dst, syn_opts(sport, 80), b"").seq(isn).frame()
}

fn client_rst(src: &str, dst: &str, sport: u16, seq: u32) -> Vec<u8> {
    Pkt::new(src, dst, rst(sport, 80, seq), b"").frame()
}

fn client_ack(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    Pkt::new(src, dst, ack(sport, 80), b"").frame()
}

/// `frame` forwarded to `mac` (DSR: new MACs only).
fn to(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    with_macs(frame, mac, LB_MAC)
}

/// Run a SYN with options (ISN `isn`) that must be challenged: XDP_TX of
/// exactly the SYN-ACK built here from the RFCs (options and payload
/// stripped, window 65535, ack = ISN - k with 1 <= k <= 32768; the cookie,
/// our sequence number, read from the output), and exactly `counters`.
/// Returns the acknowledgement number it carries.
fn challenged<T: Target + ?Sized>(t: &T, client: &str, vip: &str, sport: u16, isn: u32, counters: &[&str]) -> u32 {
    let name = format!("SYN from {client}:{sport} to {vip} (ISN {isn:#x}) is challenged");
    let syn = syn_with_options(client, vip, sport, isn);
    let r = run(t, &name, &syn);
    let p = SlicedPacket::from_ethernet(&r.out)
        .unwrap_or_else(|e| panic!("{name}: output does not parse ({e}): {} ({})", hex_row(&r.out), rose(&r)));
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("{name}: output is not TCP: {} ({})", hex_row(&r.out), rose(&r))
    };
    let (seq, ackn) = (tcp.sequence_number(), tcp.acknowledgment_number());
    let k = isn.wrapping_sub(ackn);
    assert!((1..=32768).contains(&k), "{name}: ack = ISN - k with 1 <= k <= 32768 (k = {k})");
    let mut h = tcp_hdr(80, sport, seq, Some(ackn), 65535);
    h.syn = true;
    let want = Pkt::new(vip, client, L4::Tcp(h), b"").macs(CLIENT_MAC, LB_MAC).frame();
    expect(&name, &r, &syn, XDP_TX, Some(&want), counters);
    ackn
}

const CHALLENGED: &[&str] = &["xdp_tx", "shield_challenged"];
const TX_NEW: &[&str] = &["xdp_tx", "flow_new"];

#[test]
fn challenge_proof_and_verified_pass() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    let isn = 0x1234_5678;
    let ackn = challenged(&lb, "10.7.0.1", "198.18.0.100", 41000, isn, CHALLENGED);
    assert_eq!(lb.dp.flow_count(10), 0, "a challenged SYN creates no flow state");

    // The client's RST carries seq = our acknowledgement: proven, RST dropped.
    let proof = client_rst("10.7.0.1", "198.18.0.100", 41000, ackn);
    check(&lb, "the RST proves the source", &proof, XDP_DROP, None, &["xdp_drop", "shield_proven"]);

    // The resent SYN (same ISN) now goes to the backend, untouched but for MACs.
    let syn = syn_with_options("10.7.0.1", "198.18.0.100", 41000, isn);
    let name = "the resent SYN of a proven source is forwarded";
    check(&lb, name, &syn, XDP_TX, Some(&to(&syn, BACKEND)), &["xdp_tx", "shield_verified_pass", "flow_new"]);

    // Its established packets pass layer 3 (tracked flow).
    let a = client_ack("10.7.0.1", "198.18.0.100", 41000);
    check(&lb, "the proven flow's ACK", &a, XDP_TX, Some(&to(&a, BACKEND)), &["xdp_tx", "flow_hit"]);
}

#[test]
fn wrong_proof_fails_once_and_out_of_state_is_dropped() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    let ackn = challenged(&lb, "10.7.0.2", "198.18.0.100", 41001, 7, CHALLENGED);
    let wrong = client_rst("10.7.0.2", "198.18.0.100", 41001, ackn.wrapping_add(1));
    check(&lb, "RST with the wrong proof", &wrong, XDP_DROP, None, &["xdp_drop", "shield_proof_failed"]);
    // One answer per challenge: the right number afterwards proves nothing
    // (shield_proven stays): an RST of no flow in attack mode.
    let late = client_rst("10.7.0.2", "198.18.0.100", 41001, ackn);
    check(&lb, "the right proof after a wrong one", &late, XDP_DROP, None, &["xdp_drop", "shield_out_of_state"]);
    // ACK flood: no tracked flow, dropped without state.
    let flood = client_ack("10.99.0.1", "198.18.0.100", 5555);
    check(&lb, "an ACK of no flow in attack mode", &flood, XDP_DROP, None, &["xdp_drop", "shield_out_of_state"]);
    assert_eq!(lb.dp.flow_count(10), 0);
}

#[test]
fn ipv6_challenge() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\""));
    challenged(&lb, "2001:db8::9", "2001:2::100", 42000, 0xffff_fff0, CHALLENGED);
}

#[test]
fn token_bucket_per_source_and_per_prefix() {
    if !require_root("shield fixtures") {
        return;
    }
    const EMPTY: &[&str] = &["xdp_drop", "shield_bucket_empty"];
    let lb = load(&config("attack = \"off\"\nrate = 1\nburst = 3"));
    // Burst 3, then the bucket is empty.
    for i in 0..4u16 {
        let f = tcp_syn("10.8.0.1", "198.18.0.100", 43000 + i, 80);
        let name = format!("SYN {i} of 10.8.0.1 (burst 3)");
        if i < 3 {
            check(&lb, &name, &f, XDP_TX, Some(&to(&f, BACKEND)), TX_NEW);
        } else {
            check(&lb, &name, &f, XDP_DROP, None, EMPTY);
        }
    }
    let f = tcp_syn("10.8.0.1", "198.18.0.100", 43010, 80);
    check(&lb, "10.8.0.1 once more: still empty", &f, XDP_DROP, None, EMPTY);
    // Another address of the same /24 has its own bucket without aggregation...
    let f = tcp_syn("10.8.0.2", "198.18.0.100", 43000, 80);
    check(&lb, "10.8.0.2: its own bucket", &f, XDP_TX, Some(&to(&f, BACKEND)), TX_NEW);

    // ... and shares it with aggregation: one bucket per /24.
    let lb = load(&config("attack = \"off\"\nrate = 1\nburst = 2\naggregate = true"));
    for (src, pass) in [("10.8.1.1", true), ("10.8.1.2", true), ("10.8.1.3", false), ("10.8.2.1", true)] {
        let f = tcp_syn(src, "198.18.0.100", 43000, 80);
        let name = format!("aggregated bucket: {src}");
        if pass {
            check(&lb, &name, &f, XDP_TX, Some(&to(&f, BACKEND)), TX_NEW);
        } else {
            check(&lb, &name, &f, XDP_DROP, None, EMPTY);
        }
    }
}

#[test]
fn deny_allow_and_dry_run() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\ndeny = [\"10.66.0.0/16\"]\nallow = [\"10.1.0.0/16\", \"2001:db8:1::/48\"]"));
    let f = client_ack("10.66.3.4", "198.18.0.100", 1000);
    check(&lb, "a denied source", &f, XDP_DROP, None, &["xdp_drop", "shield_denied"]);
    // Allowed sources skip the challenge even in attack mode.
    let f = tcp_syn("10.1.2.3", "198.18.0.100", 1000, 80);
    check(&lb, "an allowed source", &f, XDP_TX, Some(&to(&f, BACKEND)), &["xdp_tx", "shield_allowed", "flow_new"]);
    let f = tcp_syn("2001:db8:1::5", "2001:2::100", 1000, 80);
    check(&lb, "an allowed IPv6 source", &f, XDP_TX, Some(&to(&f, BACKEND6)), &["xdp_tx", "shield_allowed", "flow_new"]);

    // Dry run: counts the challenge it would send, forwards the SYN.
    let lb = load(&config("attack = \"on\"\ndry_run = true"));
    let f = tcp_syn("10.5.5.5", "198.18.0.100", 1000, 80);
    let counters = &["xdp_tx", "shield_challenged", "shield_dry_run", "flow_new"];
    check(&lb, "dry run: forwarded, the challenge counted", &f, XDP_TX, Some(&to(&f, BACKEND)), counters);
}

#[test]
fn attack_mode_turns_on_and_off_with_the_syn_rate() {
    if !require_root("shield fixtures") {
        return;
    }
    // Windows are 100 ms: attack mode starts once a window holds more than
    // attack_on / 10 attempts, and ends after a window below attack_off.
    let lb = load(&config("attack = \"auto\"\nattack_on = 1000\nattack_off = 100"));
    let syn = |i: u32| tcp_syn(&format!("10.{}.{}.{}", 20 + i / 65536, (i / 256) % 256, i % 256), "198.18.0.100", 1000, 80);
    for i in 0..50 {
        let f = syn(i);
        check(&lb, &format!("SYN {i}: below threshold, forwarded"), &f, XDP_TX, Some(&to(&f, BACKEND)), TX_NEW);
    }
    // Each SYN is forwarded or challenged (which one depends on where the
    // 100 ms window falls); a challenge is a SYN-ACK to the client whose
    // every checksum verifies.
    let forwarded_or_challenged = |name: &str, f: &[u8]| -> bool {
        let r = run(&lb, name, f);
        if r.out.get(0..6) == Some(&BACKEND[..]) {
            expect(name, &r, f, XDP_TX, Some(&to(f, BACKEND)), TX_NEW);
            return false;
        }
        assert_eq!(action_name(r.action), "XDP_TX", "{name}: counters that rose: {}", rose(&r));
        assert_eq!(r.out[0..12], [CLIENT_MAC, LB_MAC].concat(), "{name}: a challenge goes back to the client");
        assert_eq!(rose(&r), "xdp_tx+1, shield_challenged+1", "{name}: counters");
        let mut problems = Vec::new();
        verify_frame("challenge", &r.out, &mut problems);
        assert!(problems.is_empty(), "{name}: {problems:?}\n  output: {}", hex_row(&r.out));
        true
    };
    let mut challenged = 0;
    for i in 50..200 {
        challenged += u32::from(forwarded_or_challenged(&format!("SYN {i}"), &syn(i)));
    }
    assert!(challenged >= 90, "attack mode within the window: {challenged} of 150 challenged");
    // ACK flood packets count too and are dropped in attack mode.
    let f = client_ack("10.99.1.1", "198.18.0.100", 7);
    check(&lb, "an ACK of no flow in attack mode", &f, XDP_DROP, None, &["xdp_drop", "shield_out_of_state"]);
    std::thread::sleep(std::time::Duration::from_millis(250));
    // This attempt closes the window that held the burst: still attack mode.
    assert!(forwarded_or_challenged("the SYN that closes the burst's window", &syn(1000)), "the burst's window keeps attack mode");
    std::thread::sleep(std::time::Duration::from_millis(250));
    // A quiet window (one attempt in 250 ms: 4/s < 100): attack mode ends.
    assert!(!forwarded_or_challenged("a SYN after a quiet window", &syn(1001)), "normal again");
}

#[test]
fn new_flow_guard() {
    if !require_root("shield fixtures") {
        return;
    }
    // One GCRA per CPU, each with 1/N of the rate: on one CPU, 3 per second.
    let cpus = libbpf_rs::num_possible_cpus().unwrap() as u32;
    pin_to_cpu(0);
    let lb = load(&config(&format!("attack = \"off\"\nmax_new_flows = {}", 3 * cpus)));
    // 3 new flows per second on this CPU.
    for i in 0..5u16 {
        let f = tcp_syn("10.9.0.1", "198.18.0.100", 2000 + i, 80);
        let name = format!("new flow {i} (3 a second)");
        if i < 3 {
            check(&lb, &name, &f, XDP_TX, Some(&to(&f, BACKEND)), TX_NEW);
        } else {
            check(&lb, &name, &f, XDP_DROP, None, &["xdp_drop", "shield_flow_guard"]);
        }
    }
    // A tracked flow is not a new flow: it still passes (shield_flow_guard stays).
    let f = tcp_syn("10.9.0.1", "198.18.0.100", 2000, 80);
    check(&lb, "a tracked flow's SYN", &f, XDP_TX, Some(&to(&f, BACKEND)), &["xdp_tx", "flow_hit"]);
}

#[test]
fn standalone_shield_protects_local_ports() {
    if !require_root("shield fixtures") {
        return;
    }
    let cfg: weir::config::Config = weir::config::Config::from_toml(&config("attack = \"on\"\nports = [80]")).unwrap();
    let sp = weir::shield::Standalone::load(cfg.shield.as_ref().unwrap()).unwrap();
    challenged(&sp, "10.7.7.7", "198.18.0.5", 41000, 99, CHALLENGED);
    let f = tcp_syn("10.7.7.7", "198.18.0.5", 41000, 22);
    check(&sp, "unprotected port passes", &f, XDP_PASS, None, &["xdp_pass", "pass_not_vip"]);
}

