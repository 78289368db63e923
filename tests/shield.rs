//! SYN-flood shield fixtures through BPF_PROG_TEST_RUN (root): each verdict,
//! the exact challenge bytes (checksums recomputed by etherparse) and the
//! counters, in the load balancer's combined entry and standalone.

mod common;

use common::*;
use etherparse::{Ipv4Header, Ipv6Header, PacketBuilder, SlicedPacket, TransportSlice};
use weir::skel::{stat_name, STAT_COUNT};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn config(shield: &str) -> String {
    format!(
        r#"
[shield]
{shield}

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
"#
    )
}

const BACKEND: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn delta(lb: &Lb, before: &[u64], name: &str) -> u64 {
    let i = (0..STAT_COUNT).find(|i| stat_name(*i) == name).unwrap();
    lb.counters()[i] - before[i]
}

/// A Linux-like SYN: options (MSS, SACK-permitted, timestamps, window scale).
fn syn_with_options(src: &str, dst: &str, sport: u16, isn: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let b = match (src.parse().unwrap(), dst.parse().unwrap()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let b = b
        .tcp(sport, 80, isn, 64240)
        .syn()
        .options_raw(&[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn rst(src: &str, dst: &str, sport: u16, seq: u32) -> Vec<u8> {
    let s: std::net::Ipv4Addr = src.parse().unwrap();
    let d: std::net::Ipv4Addr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(s.octets(), d.octets(), 64).tcp(sport, 80, seq, 0).rst();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn ack(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    let s: std::net::Ipv4Addr = src.parse().unwrap();
    let d: std::net::Ipv4Addr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(s.octets(), d.octets(), 64).tcp(sport, 80, 5, 500).ack(77);
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// Check a challenge against a SYN-ACK built here from the RFCs with
/// etherparse; returns the acknowledgement number it carries.
fn check_challenge(out: &[u8], client: &str, vip: &str, sport: u16, isn: u32) -> u32 {
    let p = SlicedPacket::from_ethernet(out).expect("challenge parses");
    let Some(TransportSlice::Tcp(t)) = &p.transport else { panic!("challenge is TCP") };
    let (seq, ackn) = (t.sequence_number(), t.acknowledgment_number());
    let k = isn.wrapping_sub(ackn);
    assert!((1..=32768).contains(&k), "ack = ISN - k with 1 <= k <= 32768 (k = {k})");
    let b = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
    let mut want = Vec::new();
    match (vip.parse().unwrap(), client.parse().unwrap()) {
        (std::net::IpAddr::V4(v), std::net::IpAddr::V4(c)) => {
            let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, v.octets(), c.octets()).unwrap();
            ip.dont_fragment = true;
            b.ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .tcp(80, sport, seq, 65535)
                .syn()
                .ack(ackn)
                .write(&mut want, &[])
                .unwrap();
        }
        (std::net::IpAddr::V6(v), std::net::IpAddr::V6(c)) => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: etherparse::IpNumber::TCP,
                hop_limit: 64,
                source: v.octets(),
                destination: c.octets(),
            };
            b.ip(etherparse::IpHeaders::Ipv6(ip, Default::default()))
                .tcp(80, sport, seq, 65535)
                .syn()
                .ack(ackn)
                .write(&mut want, &[])
                .unwrap();
        }
        _ => unreachable!(),
    }
    assert_eq!(out, &want[..], "challenge bytes (options and payload stripped, checksums fresh)");
    ackn
}

#[test]
fn challenge_proof_and_verified_pass() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    let isn = 0x1234_5678;
    let syn = syn_with_options("10.7.0.1", "198.18.0.100", 41000, isn);
    let before = lb.counters();
    let (a, out) = lb.dp.run(&syn).unwrap();
    assert_eq!(a, XDP_TX, "an unproven source is challenged");
    let ackn = check_challenge(&out, "10.7.0.1", "198.18.0.100", 41000, isn);
    assert_eq!(delta(&lb, &before, "shield_challenged"), 1);
    assert_eq!(delta(&lb, &before, "xdp_tx"), 1);
    assert_eq!(lb.dp.flow_count(10), 0, "a challenged SYN creates no flow state");

    // The client's RST carries seq = our acknowledgement: proven, RST dropped.
    let before = lb.counters();
    let (a, _) = lb.dp.run(&rst("10.7.0.1", "198.18.0.100", 41000, ackn)).unwrap();
    assert_eq!(a, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_proven"), 1);

    // The resent SYN (same ISN) now goes to the backend.
    let before = lb.counters();
    let (a, out) = lb.dp.run(&syn).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &BACKEND[..]));
    assert_eq!(out, with_macs(&syn, BACKEND, LB_MAC), "forwarded untouched but for MACs");
    assert_eq!(delta(&lb, &before, "shield_verified_pass"), 1);
    assert_eq!(delta(&lb, &before, "flow_new"), 1);

    // Its established packets pass layer 3 (tracked flow).
    let (a, out) = lb.dp.run(&ack("10.7.0.1", "198.18.0.100", 41000)).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &BACKEND[..]));
}

#[test]
fn wrong_proof_fails_once_and_out_of_state_is_dropped() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    let isn = 7;
    let (a, out) = lb.dp.run(&syn_with_options("10.7.0.2", "198.18.0.100", 41001, isn)).unwrap();
    assert_eq!(a, XDP_TX);
    let ackn = check_challenge(&out, "10.7.0.2", "198.18.0.100", 41001, isn);
    let before = lb.counters();
    let (a, _) = lb.dp.run(&rst("10.7.0.2", "198.18.0.100", 41001, ackn.wrapping_add(1))).unwrap();
    assert_eq!(a, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_proof_failed"), 1);
    // One answer per challenge: the right number afterwards proves nothing.
    let before = lb.counters();
    let (a, _) = lb.dp.run(&rst("10.7.0.2", "198.18.0.100", 41001, ackn)).unwrap();
    assert_eq!(a, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_proven"), 0);
    assert_eq!(delta(&lb, &before, "shield_out_of_state"), 1, "an RST of no flow in attack mode");
    // ACK flood: no tracked flow, dropped without state.
    let before = lb.counters();
    let (a, _) = lb.dp.run(&ack("10.99.0.1", "198.18.0.100", 5555)).unwrap();
    assert_eq!(a, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_out_of_state"), 1);
    assert_eq!(lb.dp.flow_count(10), 0);
}

#[test]
fn ipv6_challenge() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\""));
    let isn = 0xffff_fff0;
    let (a, out) = lb.dp.run(&syn_with_options("2001:db8::9", "2001:2::100", 42000, isn)).unwrap();
    assert_eq!(a, XDP_TX);
    check_challenge(&out, "2001:db8::9", "2001:2::100", 42000, isn);
}

#[test]
fn token_bucket_per_source_and_per_prefix() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"off\"\nrate = 1\nburst = 3"));
    let mut actions = Vec::new();
    for i in 0..4u16 {
        actions.push(lb.dp.run(&tcp_syn("10.8.0.1", "198.18.0.100", 43000 + i, 80)).unwrap().0);
    }
    assert_eq!(actions, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP], "burst 3, then the bucket is empty");
    let before = lb.counters();
    assert_eq!(lb.dp.run(&tcp_syn("10.8.0.1", "198.18.0.100", 43010, 80)).unwrap().0, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_bucket_empty"), 1);
    // Another address of the same /24 has its own bucket without aggregation...
    assert_eq!(lb.dp.run(&tcp_syn("10.8.0.2", "198.18.0.100", 43000, 80)).unwrap().0, XDP_TX);

    // ... and shares it with aggregation.
    let lb = load(&config("attack = \"off\"\nrate = 1\nburst = 2\naggregate = true"));
    let a: Vec<u32> = ["10.8.1.1", "10.8.1.2", "10.8.1.3", "10.8.2.1"]
        .iter()
        .map(|s| lb.dp.run(&tcp_syn(s, "198.18.0.100", 43000, 80)).unwrap().0)
        .collect();
    assert_eq!(a, [XDP_TX, XDP_TX, XDP_DROP, XDP_TX], "one bucket per /24");
}

#[test]
fn deny_allow_and_dry_run() {
    if !require_root("shield fixtures") {
        return;
    }
    let lb = load(&config("attack = \"on\"\ndeny = [\"10.66.0.0/16\"]\nallow = [\"10.1.0.0/16\", \"2001:db8:1::/48\"]"));
    let before = lb.counters();
    assert_eq!(lb.dp.run(&ack("10.66.3.4", "198.18.0.100", 1000)).unwrap().0, XDP_DROP);
    assert_eq!(delta(&lb, &before, "shield_denied"), 1);
    // Allowed sources skip the challenge even in attack mode.
    let before = lb.counters();
    let (a, out) = lb.dp.run(&tcp_syn("10.1.2.3", "198.18.0.100", 1000, 80)).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &BACKEND[..]));
    assert_eq!(delta(&lb, &before, "shield_allowed"), 1);
    let (a, out) = lb.dp.run(&tcp_syn("2001:db8:1::5", "2001:2::100", 1000, 80)).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &[0x02, 0, 0, 0, 0x06, 0x0b][..]));

    // Dry run: counts the challenge it would send, forwards the SYN.
    let lb = load(&config("attack = \"on\"\ndry_run = true"));
    let before = lb.counters();
    let (a, out) = lb.dp.run(&tcp_syn("10.5.5.5", "198.18.0.100", 1000, 80)).unwrap();
    assert_eq!((a, &out[0..6]), (XDP_TX, &BACKEND[..]));
    assert_eq!(delta(&lb, &before, "shield_challenged"), 1);
    assert_eq!(delta(&lb, &before, "shield_dry_run"), 1);
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
        assert_eq!(&lb.dp.run(&syn(i)).unwrap().1[0..6], &BACKEND[..], "below threshold: forwarded");
    }
    let mut challenged = 0;
    for i in 50..200 {
        let (a, out) = lb.dp.run(&syn(i)).unwrap();
        assert_eq!(a, XDP_TX);
        challenged += u32::from(out[0..6] != BACKEND);
    }
    assert!(challenged >= 90, "attack mode within the window: {challenged} of 150 challenged");
    // ACK flood packets count too and are dropped in attack mode.
    assert_eq!(lb.dp.run(&ack("10.99.1.1", "198.18.0.100", 7)).unwrap().0, XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(250));
    // This attempt closes the window that held the burst: still attack mode.
    let (_, out) = lb.dp.run(&syn(1000)).unwrap();
    assert_ne!(&out[0..6], &BACKEND[..], "the burst's window keeps attack mode");
    std::thread::sleep(std::time::Duration::from_millis(250));
    // A quiet window (one attempt in 250 ms: 4/s < 100): attack mode ends.
    let (_, out) = lb.dp.run(&syn(1001)).unwrap();
    assert_eq!(&out[0..6], &BACKEND[..], "normal again");
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
    let a: Vec<u32> =
        (0..5u16).map(|i| lb.dp.run(&tcp_syn("10.9.0.1", "198.18.0.100", 2000 + i, 80)).unwrap().0).collect();
    assert_eq!(a, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP], "3 new flows per second on this CPU");
    let before = lb.counters();
    // A tracked flow is not a new flow: it still passes.
    assert_eq!(lb.dp.run(&tcp_syn("10.9.0.1", "198.18.0.100", 2000, 80)).unwrap().0, XDP_TX);
    assert_eq!(delta(&lb, &before, "shield_flow_guard"), 0);
}

#[test]
fn standalone_shield_protects_local_ports() {
    if !require_root("shield fixtures") {
        return;
    }
    let cfg: weir::config::Config = weir::config::Config::from_toml(&config("attack = \"on\"\nports = [80]")).unwrap();
    let sp = weir::shield::Standalone::load(cfg.shield.as_ref().unwrap()).unwrap();
    let run = |f: &[u8]| weir::dataplane::test_run(&sp.skel.progs.weir_shield, f, 1).unwrap();
    let isn = 99;
    let (a, out, _) = run(&syn_with_options("10.7.7.7", "198.18.0.5", 41000, isn));
    assert_eq!(a, XDP_TX);
    check_challenge(&out, "10.7.7.7", "198.18.0.5", 41000, isn);
    let (a, _, _) = run(&tcp_syn("10.7.7.7", "198.18.0.5", 41000, 22));
    assert_eq!(a, XDP_PASS, "unprotected port passes");
    let c = sp.counters().unwrap();
    let i = (0..STAT_COUNT).find(|i| stat_name(*i) == "shield_challenged").unwrap();
    assert_eq!(c[i], 1);
}

