//! The shield's proofs under guessing, and its budgets (root,
//! BPF_PROG_TEST_RUN through the fixture runner). Each test failed before
//! its fix.
//!
//! cargo test --release --test shield_proofs -- --test-threads=1

mod common;

use common::*;
use etherparse::TcpHeader;

const VIP: &str = "198.18.0.100";
const BACKEND: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

use common::shield_config as config;

fn syn_from(src: &str, sport: u16) -> Vec<u8> {
    Pkt::new(src, VIP, L4::Tcp(TcpHeader { syn: true, ..TcpHeader::new(sport, 80, 0x1234_5678, 64240) }), b"").frame()
}

fn rst_from(src: &str, sport: u16, seq: u32) -> Vec<u8> {
    Pkt::new(src, VIP, L4::Tcp(TcpHeader { rst: true, ..TcpHeader::new(sport, 80, seq, 0) }), b"").frame()
}

/// Send a SYN; it must be challenged. The challenge's acknowledgement number
/// (what the client's RST must carry).
fn challenge(lb: &Lb, src: &str, sport: u16) -> u32 {
    let r = run(lb, "SYN", &syn_from(src, sport));
    assert!(r.action == XDP_TX && r.out[0..6] == CLIENT_MAC, "{src}: not challenged: {} {}", action_name(r.action), rose(&r));
    u32::from_be_bytes(r.out[14 + 20 + 8..14 + 20 + 12].try_into().unwrap())
}

/// Was: every correct answer proved its source at once, whatever the rate
/// of wrong ones: an attacker guessing k (1 in 32768) at 1 Mpps verified
/// ~15 random sources a second. Now, once a service's failed proofs exceed
/// their budget (100/s per CPU, burst 100), a source must answer two
/// challenges.
#[test]
fn after_many_failed_proofs_a_source_must_answer_twice() {
    if !require_root("shield proof fixtures") {
        return;
    }
    pin_to_cpu(0); // the failed-proof budget is per CPU
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    // A guesser: 150 random sources, each SYN + a wrong RST.
    for i in 0..150u32 {
        let src = format!("10.66.{}.{}", i / 200, 1 + i % 200);
        let ack = challenge(&lb, &src, 5000);
        check(&lb, "wrong proof", &rst_from(&src, 5000, ack.wrapping_add(1)), XDP_DROP, None, &[
            "xdp_drop",
            "shield_proof_failed",
        ]);
    }
    // An honest client now: its first correct answer is held ...
    let ack = challenge(&lb, "10.7.0.1", 41000);
    check(&lb, "first correct proof, strict", &rst_from("10.7.0.1", 41000, ack), XDP_DROP, None, &[
        "xdp_drop",
        "shield_proof_strict",
    ]);
    let r = run(&lb, "SYN after one proof", &syn_from("10.7.0.1", 41000));
    assert_eq!(&r.out[0..6], &CLIENT_MAC, "challenged again: {}", rose(&r));
    // ... its second proves it.
    let ack = u32::from_be_bytes(r.out[14 + 20 + 8..14 + 20 + 12].try_into().unwrap());
    check(&lb, "second correct proof", &rst_from("10.7.0.1", 41000, ack), XDP_DROP, None, &["xdp_drop", "shield_proven"]);
    let r = run(&lb, "SYN after two proofs", &syn_from("10.7.0.1", 41000));
    assert_eq!((r.action, &r.out[0..6]), (XDP_TX, &BACKEND[..]), "proven: to the backend: {}", rose(&r));
}

/// Without failed proofs, one answer proves a source (no cost for honest
/// clients when nobody guesses).
#[test]
fn without_guessing_one_proof_is_enough() {
    if !require_root("shield proof fixtures") {
        return;
    }
    pin_to_cpu(0);
    let lb = load(&config("attack = \"on\"\nrate = 1000\nburst = 1000"));
    let ack = challenge(&lb, "10.7.0.2", 41001);
    check(&lb, "correct proof", &rst_from("10.7.0.2", 41001, ack), XDP_DROP, None, &["xdp_drop", "shield_proven"]);
    let r = run(&lb, "SYN after the proof", &syn_from("10.7.0.2", 41001));
    assert_eq!((r.action, &r.out[0..6]), (XDP_TX, &BACKEND[..]), "{}", rose(&r));
}

/// Was: a source's RSTs cost it nothing, so one source could try k as fast
/// as it could send. Now each proof attempt takes a token from its bucket
/// (when it has one): with an empty bucket even a correct answer is dropped.
#[test]
fn proof_attempts_cost_the_source_tokens() {
    if !require_root("shield proof fixtures") {
        return;
    }
    pin_to_cpu(0);
    let lb = load(&config("attack = \"on\"\nrate = 1\nburst = 3"));
    let ack = challenge(&lb, "10.8.0.1", 7001);
    // The source's bucket, spent for the next 10 s (struct src_key: the
    // address words, the service id, the family).
    let mut key = Vec::new();
    key.extend_from_slice(&[10, 8, 0, 1]);
    key.extend_from_slice(&[0; 12]);
    key.extend_from_slice(&lb.plan.vips[0].id.to_ne_bytes());
    key.extend_from_slice(&4u32.to_ne_bytes());
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let tat = (ts.tv_sec as u64 + 10) * 1_000_000_000;
    use libbpf_rs::MapCore;
    lb.dp.skel.maps.syn_bucket.update(&key, &tat.to_ne_bytes(), libbpf_rs::MapFlags::ANY).unwrap();
    check(&lb, "correct proof, empty bucket", &rst_from("10.8.0.1", 7001, ack), XDP_DROP, None, &[
        "xdp_drop",
        "shield_bucket_empty",
    ]);
}
