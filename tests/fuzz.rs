//! The data plane's fuzzer (issue 12, "zero wrong packets"), root, through
//! BPF_PROG_TEST_RUN: valid frames of every kind and mutations of them
//! (tests/fuzz/seeds.rs, mutate.rs) go through one data plane configured
//! with every VIP kind, and every output is checked against invariants
//! (tests/fuzz/check.rs) with the fuzzer's own parser and checksums. It
//! fails when any invariant is broken, after printing a table of verdicts,
//! mutation classes and violations with hex examples.
//!
//! WEIR_FUZZ_FRAMES   frames to run (default 200000; `make fuzz`: 5000000)
//! WEIR_FUZZ_SEED     PRNG seed (default fixed, printed: runs reproduce)
//! WEIR_FUZZ_REPORT_ONLY=1   print violations but do not fail
//!
//! cargo test --release --test fuzz -- --nocapture

#[path = "fuzz/check.rs"]
mod check;
mod common;
#[path = "fuzz/model.rs"]
mod model;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/report.rs"]
mod report;
#[path = "fuzz/rng.rs"]
mod rng;
#[path = "fuzz/seeds.rs"]
mod seeds;
#[path = "fuzz/wire.rs"]
mod wire;

use std::time::Instant;

use check::{Run, Stats};
use common::*;
use model::Model;
use mutate::Mutation;
use report::{Example, Report};
use rng::Rng;
use weir::config::Mode;

const DEFAULT_FRAMES: u64 = 200_000;
const DEFAULT_SEED: u64 = 0x5745_1200_f022;
/// The MTU `common::load` gives the data plane (weir::net::Iface::unattached).
const MTU: usize = 1500;
/// Client packets sent to each NAT VIP before fuzzing starts.
const OPENING_FLOWS: usize = 48;

/// Every VIP kind: DSR with each scheduler, a DEVMAP-redirected backend
/// (`lo`), port 0, IPv6, shielded VIPs in attack mode (challenges), NAT
/// IPv4 / IPv6 TCP / UDP and port 0, tunnels IPv4 / IPv6 with and without
/// ICMP too-big. Timeouts are long so no NAT flow expires during a run.
/// Fragments are off here: the model predates their balancing (its
/// fragment rules are unfinished, see the #13 note); fragments are covered
/// by tests/frag_fixtures.rs, tests/races.rs and tests/frag_e2e.rs.
const CONFIG: &str = r#"
[fragments]
enabled = false
[conntrack]
size = 262144
tcp_timeout = 604800
tcp_syn_timeout = 604800
tcp_fin_timeout = 604800
udp_timeout = 604800
[maglev]
table_size = 65537

[shield]
rate = 1000000
burst = 1000000
attack = "off"

[[vip]]
name = "dsr-maglev"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
iface = "lo"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"

[[vip]]
name = "dsr-udp"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"

[[vip]]
name = "dsr-rr"
address = "198.18.0.101"
port = 80
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.31"
mac = "02:00:00:00:00:1f"
[[vip.backend]]
address = "198.18.0.32"
mac = "02:00:00:00:00:20"

[[vip]]
name = "dsr-sh"
address = "198.18.0.101"
port = 443
protocol = "tcp"
scheduler = "source-hash"
[[vip.backend]]
address = "198.18.0.33"
mac = "02:00:00:00:00:21"
[[vip.backend]]
address = "198.18.0.34"
mac = "02:00:00:00:00:22"

[[vip]]
name = "dsr-port0"
address = "198.18.0.102"
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.35"
mac = "02:00:00:00:00:23"

[[vip]]
name = "dsr6"
address = "2001:2::100"
port = 443
protocol = "tcp"
[[vip.backend]]
address = "2001:2::11"
mac = "02:00:00:00:06:0b"
[[vip.backend]]
address = "2001:2::12"
mac = "02:00:00:00:06:0c"

[[vip]]
name = "dsr6-udp"
address = "2001:2::100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "2001:2::21"
mac = "02:00:00:00:06:15"

[[vip]]
name = "shielded"
address = "198.18.0.105"
port = 80
protocol = "tcp"
[vip.shield]
attack = "on"
[[vip.backend]]
address = "198.18.0.51"
mac = "02:00:00:00:00:33"

[[vip]]
name = "shielded6"
address = "2001:2::105"
port = 80
protocol = "tcp"
[vip.shield]
attack = "on"
[[vip.backend]]
address = "2001:2::51"
mac = "02:00:00:00:06:33"

[[vip]]
name = "nat4-tcp"
address = "198.18.0.110"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "198.18.1.10"
source_ports = [1024, 65535]
[[vip.backend]]
address = "198.18.0.111"
port = 8080
mac = "02:00:00:00:00:6f"
[[vip.backend]]
address = "198.18.0.112"
mac = "02:00:00:00:00:70"

[[vip]]
name = "nat4-udp"
address = "198.18.0.110"
port = 53
protocol = "udp"
mode = "nat"
source_address = "198.18.1.20"
source_ports = [1024, 65535]
[[vip.backend]]
address = "198.18.0.113"
port = 5353
mac = "02:00:00:00:00:71"

[[vip]]
name = "nat4-port0"
address = "198.18.0.114"
protocol = "tcp"
mode = "nat"
source_address = "198.18.1.30"
[[vip.backend]]
address = "198.18.0.115"
mac = "02:00:00:00:00:73"

[[vip]]
name = "nat6-tcp"
address = "2001:2::110"
port = 80
protocol = "tcp"
mode = "nat"
source_address = "2001:2:1::10"
source_ports = [1024, 65535]
[[vip.backend]]
address = "2001:2::111"
port = 8080
mac = "02:00:00:00:06:6f"

[[vip]]
name = "nat6-udp"
address = "2001:2::110"
port = 53
protocol = "udp"
mode = "nat"
source_address = "2001:2:1::20"
source_ports = [1024, 65535]
[[vip.backend]]
address = "2001:2::113"
port = 5353
mac = "02:00:00:00:06:71"

[[vip]]
name = "tun4"
address = "198.18.0.120"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.1.50"
icmp_too_big = true
[[vip.backend]]
address = "198.18.2.51"
mac = "02:00:00:00:00:81"
[[vip.backend]]
address = "198.18.2.52"
mac = "02:00:00:00:00:82"
iface = "lo"

[[vip]]
name = "tun4-udp"
address = "198.18.0.120"
port = 53
protocol = "udp"
mode = "tunnel"
source_address = "198.18.1.50"
icmp_too_big = true
[[vip.backend]]
address = "198.18.2.53"
mac = "02:00:00:00:00:83"

[[vip]]
name = "tun4-quiet"
address = "198.18.0.121"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "198.18.1.50"
icmp_too_big = false
[[vip.backend]]
address = "198.18.2.54"
mac = "02:00:00:00:00:84"

[[vip]]
name = "tun6"
address = "2001:2::120"
port = 80
protocol = "tcp"
mode = "tunnel"
source_address = "2001:2:1::50"
icmp_too_big = true
[[vip.backend]]
address = "2001:2:2::51"
mac = "02:00:00:00:06:81"

[[vip]]
name = "tun6-udp"
address = "2001:2::120"
port = 53
protocol = "udp"
mode = "tunnel"
source_address = "2001:2:1::50"
icmp_too_big = true
[[vip.backend]]
address = "2001:2:2::53"
mac = "02:00:00:00:06:83"
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim().replace('_', "");
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        Err(_) => default,
    }
}

struct Fuzzer {
    lb: Lb,
    model: Model,
    stats: Stats,
    report: Report,
    counters: Vec<u64>,
}

impl Fuzzer {
    fn new() -> Fuzzer {
        let lb = load(CONFIG);
        let model = Model::new(&lb, MTU);
        let counters = lb.counters();
        Fuzzer { lb, model, stats: Stats::new(), report: Report::default(), counters }
    }

    /// One test_run: the action, the output and how much each counter moved.
    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>, Vec<u64>) {
        let (action, output) =
            self.lb.dp.run(input).unwrap_or_else(|e| panic!("test_run on {}: {e:#}", hex_row(input)));
        let after = self.lb.counters();
        let delta = after.iter().zip(&self.counters).map(|(a, b)| a.wrapping_sub(*b)).collect();
        self.counters = after;
        (action, output, delta)
    }

    /// One frame through the program, checked; NAT flows opened by valid
    /// frames are learnt.
    fn frame(&mut self, seed: seeds::Seed, class: Mutation, input: &[u8]) {
        let (action, output, delta) = self.run(input);
        let run = Run { input, action, output: &output, delta: &delta };
        let verdict = check::check(&self.model, &self.stats, &run);
        let frame_no = self.report.frames;
        self.report.count(seed, class, action, verdict.outcome);
        for (inv, detail) in verdict.violations.iter().cloned() {
            self.report.violation(inv, class, verdict.outcome, || Example {
                frame_no,
                seed,
                action,
                outcome: verdict.outcome,
                detail,
                input: input.to_vec(),
                output: output.clone(),
            });
        }
        // Only a flow this very frame created: the data plane keeps the MACs
        // of the frame that created it, not of later ones.
        let created = delta[self.stats.flow_new] == 1;
        if class == Mutation::None
            && created
            && verdict.outcome == check::Outcome::NatForward
            && verdict.violations.is_empty()
        {
            if let Some(f) = check::observed_flow(&self.model, input, &output) {
                self.model.learn(f);
            }
        }
    }

    /// Open flows on every NAT VIP (TCP: half SYNs, half ACKs), so that replies
    /// and ICMP errors have something to be about from the first frame on.
    fn open_nat_flows(&mut self, rng: &mut Rng) {
        let nat: Vec<usize> = (0..self.model.vips.len()).filter(|i| self.model.vips[*i].mode == Mode::Nat).collect();
        for i in nat {
            for n in 0..OPENING_FLOWS {
                let f = seeds::to_nat_vip(rng, &self.model.vips[i], n % 2 == 0);
                self.frame(seeds::Seed::TcpToVip, Mutation::None, &f);
            }
        }
    }
}

#[test]
fn fuzz_the_data_plane() {
    if !require_root("the data-plane fuzzer") {
        return;
    }
    let frames = env_u64("WEIR_FUZZ_FRAMES", DEFAULT_FRAMES);
    let seed = env_u64("WEIR_FUZZ_SEED", DEFAULT_SEED);
    let report_only = std::env::var("WEIR_FUZZ_REPORT_ONLY").is_ok_and(|v| !v.is_empty() && v != "0");
    eprintln!("weir fuzz: {frames} frames, WEIR_FUZZ_SEED={seed:#x}{}", if report_only { ", report only" } else { "" });

    let mut rng = Rng::new(seed);
    let mut fz = Fuzzer::new();
    let start = Instant::now();
    fz.open_nat_flows(&mut rng);
    while fz.report.frames < frames {
        let (kind, mut f) = seeds::generate(&mut rng, &fz.model);
        let class = Mutation::pick(&mut rng).apply(&mut rng, &mut f);
        fz.frame(kind, class, &f);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} frames in {secs:.1} s: {:.0} frames/s; {} NAT flows learnt",
        fz.report.frames,
        fz.report.frames as f64 / secs,
        fz.model.flows().len()
    );
    eprintln!("{}", fz.report.render());
    let n = fz.report.violation_count();
    if n > 0 && !report_only {
        panic!(
            "{n} invariant violations (WEIR_FUZZ_SEED={seed:#x}; WEIR_FUZZ_REPORT_ONLY=1 to report without failing)"
        );
    }
}

/// A wrong output the checker must report: a real output of `input`, then
/// `tamper`ed (action, bytes or counter deltas).
struct Tampered {
    name: &'static str,
    input: Vec<u8>,
    /// The input as the checker is told it, the action, the output, the deltas.
    tamper: fn(&mut Vec<u8>, &mut u32, &mut Vec<u8>, &mut Vec<u64>),
    want: check::Inv,
}

/// The invariants can fail: each check, given a real output made wrong in
/// the way it guards against, reports it (and the untouched output passes).
#[test]
fn the_checker_catches_wrong_outputs() {
    use check::Inv;
    if !require_root("the data-plane fuzzer's self-test") {
        return;
    }
    let mut fz = Fuzzer::new();
    let pass = udp("10.9.0.1", "198.51.100.1", 40000, 9, b"x");
    let dsr = tcp_syn("10.9.0.1", "198.18.0.100", 40000, 80);
    let nat = tcp_syn("10.9.0.2", "198.18.0.110", 40000, 80);
    let tun = tcp_payload("10.9.0.3", "198.18.0.120", 40000, 80, &[7; 100]);
    let ns = neighbour_solicitation(CLIENT_MAC, "2001:db8:9::1".parse().unwrap(), "2001:2::100".parse().unwrap());
    let cases = [
        Tampered { name: "aborted", input: pass.clone(), tamper: |_, a, _, _| *a = 0, want: Inv::Aborted },
        Tampered {
            name: "pass changed",
            input: pass.clone(),
            tamper: |_, _, o, _| o[20] ^= 1,
            want: Inv::PassDropModified,
        },
        Tampered { name: "two actions", input: pass.clone(), tamper: |_, _, _, d| d[1] += 1, want: Inv::CounterAction },
        Tampered {
            name: "no reason",
            input: pass.clone(),
            tamper: |_, _, _, d| (5..d.len()).for_each(|i| d[i] = 0),
            want: Inv::CounterReason,
        },
        Tampered { name: "DSR TTL", input: dsr.clone(), tamper: |_, _, o, _| o[22] ^= 1, want: Inv::DsrBeyondMacs },
        Tampered { name: "DSR MAC", input: dsr.clone(), tamper: |_, _, o, _| o[5] ^= 0x40, want: Inv::DsrWrongBackend },
        Tampered {
            name: "DSR tagged",
            input: dsr.clone(),
            tamper: |_, _, o, _| drop(o.splice(12..12, [0x81, 0, 0, 7])),
            want: Inv::VlanTagged,
        },
        Tampered {
            name: "DSR from a VLAN",
            input: dsr.clone(),
            // The same untagged output, but the input came on VLAN 7.
            tamper: |i, _, _, _| drop(i.splice(12..12, [0x81, 0, 0, 7])),
            want: Inv::VlanServed,
        },
        Tampered {
            name: "DSR of a lying length",
            input: dsr.clone(),
            // The same output, but the input said it was longer than it is.
            tamper: |i, _, o, _| {
                *i = with_ipv4_len(i, 100);
                *o = with_ipv4_len(o, 100);
            },
            want: Inv::RewriteOfLyingLength,
        },
        Tampered { name: "NAT dst", input: nat.clone(), tamper: |_, _, o, _| o[33] ^= 1, want: Inv::NatForwardAddr },
        Tampered {
            name: "NAT TCP csum",
            input: nat.clone(),
            tamper: |_, _, o, _| o[50] ^= 1,
            want: Inv::ChecksumValidity,
        },
        Tampered { name: "NAT TTL", input: nat.clone(), tamper: |_, _, o, _| o[22] ^= 1, want: Inv::NatOtherBytes },
        Tampered {
            name: "tunnel length",
            input: tun.clone(),
            tamper: |_, _, o, _| o[17] ^= 1,
            want: Inv::TunnelOuterLen,
        },
        Tampered {
            name: "tunnel above MTU",
            input: tun.clone(),
            tamper: |_, _, o, _| {
                o.resize(1600, 0);
                let n = (o.len() - 14) as u16;
                o[16..18].copy_from_slice(&n.to_be_bytes());
            },
            want: Inv::TunnelMtu,
        },
        Tampered { name: "tunnel inner", input: tun.clone(), tamper: |_, _, o, _| o[60] ^= 1, want: Inv::TunnelInner },
        Tampered { name: "NA checksum", input: ns.clone(), tamper: |_, _, o, _| o[80] ^= 1, want: Inv::FreshChecksum },
        Tampered {
            name: "NA version",
            input: ns.clone(),
            tamper: |_, _, o, _| o[14] ^= 0x10,
            want: Inv::FreshMalformed,
        },
        Tampered { name: "NA larger", input: ns.clone(), tamper: |_, _, o, _| o.push(0), want: Inv::FreshLarger },
    ];
    for c in cases {
        let (mut action, mut output, mut delta) = fz.run(&c.input);
        let honest = Run { input: &c.input, action, output: &output, delta: &delta };
        let clean = check::check(&fz.model, &fz.stats, &honest).violations;
        assert!(clean.is_empty(), "{}: the untouched output already fails: {clean:?}", c.name);
        let mut input = c.input.clone();
        (c.tamper)(&mut input, &mut action, &mut output, &mut delta);
        let run = Run { input: &input, action, output: &output, delta: &delta };
        let found = check::check(&fz.model, &fz.stats, &run).violations;
        assert!(found.iter().any(|(inv, _)| *inv == c.want), "{}: {:?} not reported, got {found:?}", c.name, c.want);
    }
}

/// An IPv4 frame (no tag) whose total length field says `len`.
fn with_ipv4_len(f: &[u8], len: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[16..18].copy_from_slice(&len.to_be_bytes());
    wire::fix_ipv4_checksum(&mut f, 14);
    f
}
