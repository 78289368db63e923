//! `weir bench`: per-packet cost of the data plane through BPF_PROG_TEST_RUN,
//! beside a trivial XDP program timed in the same run.
//!
//! Method (BPF_PROG_TEST_RUN with repeat > 1 re-runs the program on the frame
//! it just rewrote, so a "new flow" would be new only once): every figure is
//! one test_run call per packet (repeat = 1), many calls, and the trivial
//! XDP_PASS program's per-call cost is the baseline subtracted from it.

pub mod compare;
pub mod cpus;
pub mod live;
pub mod precise;

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use serde::Serialize;

use crate::config::Config;
use crate::dataplane::{self, test_run, Dataplane, Settings};
use crate::net::Iface;
use crate::plan::Plan;
use crate::skel::trivial::TrivialSkelBuilder;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub min: f64,
}

pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary { mean: 0.0, median: 0.0, min: 0.0 };
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let median = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    Summary { mean, median, min: s[0] }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: String,
    pub expected_action: &'static str,
    /// Mean kernel-measured ns per call (repeat = 1).
    pub ns_per_packet: f64,
    pub median_ns: f64,
    /// ns_per_packet minus the trivial program's: the program's own work.
    pub net_ns: f64,
    /// ns_per_packet / trivial program's ns_per_packet.
    pub ratio_to_trivial: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calls_per_path: usize,
    /// Whole-suite repetitions; each figure is the median over them.
    pub repeats: usize,
    /// Smallest and largest ratio per path over the repetitions.
    pub ratio_spread: Vec<(f64, f64)>,
    pub baseline: String,
    pub baseline_ns: f64,
    pub rows: Vec<Row>,
}

pub fn make_row(path: &str, action: &'static str, samples: &[f64], baseline: &Summary) -> Row {
    let s = summarize(samples);
    Row {
        path: path.to_string(),
        expected_action: action,
        ns_per_packet: s.mean,
        median_ns: s.median,
        net_ns: s.mean - baseline.mean,
        ratio_to_trivial: if baseline.mean > 0.0 { s.mean / baseline.mean } else { 0.0 },
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = format!(
            "per-packet cost, BPF_PROG_TEST_RUN, {} calls per path, median of {} runs, baseline {} = {:.1} ns/call\n",
            self.calls_per_path, self.repeats, self.baseline, self.baseline_ns
        );
        s += &format!(
            "{:<48} {:>6} {:>8} {:>8} {:>8} {:>7} {:>13}\n",
            "path", "action", "ns/pkt", "median", "net ns", "ratio", "ratio min-max"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let (lo, hi) = self.ratio_spread.get(i).copied().unwrap_or((r.ratio_to_trivial, r.ratio_to_trivial));
            s += &format!(
                "{:<48} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>6.2}x {:>6.2}-{:.2}x\n",
                r.path, r.expected_action, r.ns_per_packet, r.median_ns, r.net_ns, r.ratio_to_trivial, lo, hi
            );
        }
        s
    }
}

/// Ethernet + IPv4 + TCP SYN (or UDP) frame; checksums are not checked by
/// the balancer, so they are left zero here (the tests build real ones).
pub fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, tcp: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let l4_len: u16 = if tcp { 20 } else { 8 };
    let total = 20 + l4_len;
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, if tcp { 6 } else { 17 }, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if tcp {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&[0, 8, 0, 0]);
    }
    f
}

/// An IPv4 frame (frame_v4) as a fragment: identification `id`, offset
/// `off8` x 8 bytes, MF when `more`.
pub(crate) fn fragment_of(frame: &[u8], id: u16, off8: u16, more: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20..22].copy_from_slice(&(off8 | if more { 0x2000 } else { 0 }).to_be_bytes());
    f
}

/// The same TCP frame (frame_v4) as an ACK.
pub(crate) fn ack(syn: &[u8]) -> Vec<u8> {
    let mut f = syn.to_vec();
    f[47] = 0x10;
    f
}

const BENCH_CONFIG: &str = r#"
[[vip]]
name = "bench"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
mac = "02:00:00:00:00:0c"
[[vip.backend]]
address = "198.18.0.13"
mac = "02:00:00:00:00:0d"
"#;

/// Flows of the 65,536-flow row.
pub(crate) const MANY: usize = 65536;
/// Most calls per path: the tables sized from it stay within conntrack.size's bound.
pub const MAX_CALLS: usize = 1_000_000;

/// The bench's config with `[conntrack] size = flows` (and more backends
/// when `backends` > 3, mode lines added by the caller).
pub fn bench_config(flows: usize, backends: usize) -> String {
    let mut c = format!("[conntrack]\nsize = {flows}\n{BENCH_CONFIG}");
    for b in 3..backends {
        c += &format!("[[vip.backend]]\naddress = \"198.18.{}.{}\"\nmac = \"02:00:00:00:{:02x}:{:02x}\"\n", 1 + b / 200, b % 200 + 1, b >> 8, b & 0xff);
    }
    c
}

/// bench_config with the VIP in `mode` ("nat" or "tunnel"), source
/// 198.18.0.10 (NAT: every port from 1024).
pub fn mode_config(mode: &str, flows: usize, backends: usize) -> String {
    bench_config(flows, backends).replace(
        "protocol = \"tcp\"\n",
        &format!("protocol = \"tcp\"\nmode = \"{mode}\"\nsource_address = \"198.18.0.10\"\n{}", if mode == "nat" { "source_ports = [1024, 65535]\n" } else { "" }),
    )
}

/// A shield data plane's config: `shield`'s lines, source and challenge
/// tables for `runs` packets of a row (twice and four times, at least the
/// defaults), a handshake table for `syns`.
pub fn shield_config(shield: &str, runs: usize, syns: usize) -> String {
    format!(
        "[shield]\n{shield}\nsources = {}\nchallenges = {}\n{}",
        (2 * runs).max(65536),
        (4 * runs).max(262144),
        bench_config(conntrack_for(syns, 2), 3)
    )
}

/// Open flows with single untimed calls of the production program: each
/// frame must be forwarded (XDP_TX); `what` names them in the error.
pub fn open_flows(dp: &Dataplane, frames: &[&[u8]], what: &str) -> Result<()> {
    for f in frames {
        let (a, _, _) = test_run(&dp.skel.progs.weir_lb, f, 1)?;
        anyhow::ensure!(a == 3, "bench: {what} returned {}", xdp_name(a));
    }
    Ok(())
}

/// conntrack.size for a data plane whose rows put `syns` handshakes in
/// syn_flows (a quarter of the flow table) and `flows` entries in the flow
/// table: room for twice each (an LRU map evicts before it is full, by up
/// to its per-CPU free lists), and at least the 262,144 of the default run.
/// With 65,536 established flows the flow table is 4x their number.
pub fn conntrack_for(syns: usize, flows: usize) -> usize {
    (8 * syns).max(2 * flows).max(4 * MANY)
}

/// Backends of the NAT data plane: its new-flow row claims one SNAT port
/// per call from 1024..=65535 per backend, found in 16 probes from a hash
/// (bpf/nat.h nat_claim); a quarter full at most keeps a claim from
/// running out of probes.
pub fn nat_backends(calls: usize) -> usize {
    (4 * calls).div_ceil(65535 - 1024 + 1).max(3)
}

pub(crate) fn xdp_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown action",
    }
}

pub(crate) fn action_code(name: &str) -> u32 {
    match name {
        "DROP" => 1,
        "PASS" => 2,
        "TX" => 3,
        _ => 0,
    }
}

/// The global counters that moved from `before` to `after`, smallest
/// change first ("drop_nat_ports +1, xdp_tx +36000").
pub fn moved(before: &[u64], after: &[u64]) -> String {
    let mut m: Vec<(u64, &str)> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| a != b)
        .map(|(i, (b, a))| (a.wrapping_sub(*b), crate::skel::stat_name(i)))
        .collect();
    m.sort();
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(d, n)| format!("{n} +{d}")).collect::<Vec<_>>().join(", ")
}

/// What a row's calls must do to the data plane's counters beyond the
/// action: `each` grows by exactly one per timed call (every call hit its
/// table, or made its entry), `none` not at all.
#[derive(Clone, Copy)]
pub struct Expect {
    pub each: crate::skel::weir_stat,
    pub none: crate::skel::weir_stat,
}

impl Expect {
    /// An established row: `counter` (flow_hit, nat_reply, frag_balanced) per call, no new flow.
    pub fn hit(counter: crate::skel::weir_stat) -> Expect {
        Expect { each: counter, none: crate::skel::weir_stat::WEIR_STAT_FLOW_NEW }
    }
    /// A new-flow row: a new flow per call, none of them found in the table.
    pub fn new_flow() -> Expect {
        Expect { each: crate::skel::weir_stat::WEIR_STAT_FLOW_NEW, none: crate::skel::weir_stat::WEIR_STAT_FLOW_HIT }
    }
}

/// Time `calls` packets through `prog`, one BPF_PROG_TEST_RUN call each;
/// every call must return `want`. Another action is an error naming the
/// row and the counters of `dp` that moved; so is a `hits` check that fails.
pub fn sample(
    path: &str,
    prog: &libbpf_rs::ProgramMut<'_>,
    dp: Option<&Dataplane>,
    calls: usize,
    frames: &mut dyn FnMut(usize) -> Vec<u8>,
    want: u32,
    expect: Option<Expect>,
) -> Result<Vec<f64>> {
    let before = dp.map(Dataplane::global_counters).transpose()?;
    let mut v = Vec::with_capacity(calls);
    for i in 0..calls {
        let f = frames(i);
        let (a, _, ns) = test_run(prog, &f, 1).with_context(|| format!("bench row \"{path}\", call {}", i + 1))?;
        if a != want {
            let why = match (dp, &before) {
                (Some(d), Some(b)) => format!(
                    "; counters that moved over this row's {} calls (the last one the odd one out): {}",
                    i + 1,
                    moved(b, &d.global_counters()?)
                ),
                _ => String::new(),
            };
            anyhow::bail!(
                "bench row \"{path}\": call {} of {calls} returned {} ({a}), expected {} ({want}){why}",
                i + 1,
                xdp_name(a),
                xdp_name(want)
            );
        }
        v.push(ns);
    }
    if let (Some(e), Some(d), Some(b)) = (expect, dp, &before) {
        let after = d.global_counters()?;
        let grew = |s: crate::skel::weir_stat| after[s.0 as usize].wrapping_sub(b[s.0 as usize]);
        let name = |s: crate::skel::weir_stat| crate::skel::stat_name(s.0 as usize);
        anyhow::ensure!(
            grew(e.each) == calls as u64 && grew(e.none) == 0,
            "bench row \"{path}\": after {calls} timed calls {} should have grown by {calls} and {} by 0, \
             but they grew by {} and {} (a flow evicted, or not the path the row names; counters that moved: {})",
            name(e.each),
            name(e.none),
            grew(e.each),
            grew(e.none),
            moved(b, &after)
        );
    }
    Ok(v)
}

/// Run the suite `repeats` times (fresh programs each time) and keep, per
/// path, the median of each figure: one noisy run on a shared machine
/// cannot move the result.
pub fn run(calls: usize, repeats: usize) -> Result<Report> {
    anyhow::ensure!(calls <= MAX_CALLS, "--calls {calls}: at most {MAX_CALLS} calls per path (the bench's tables are sized from it)");
    let runs: Vec<Report> = (0..repeats.max(1)).map(|_| run_once(calls)).collect::<Result<_>>()?;
    Ok(combine(&runs))
}

pub fn combine(runs: &[Report]) -> Report {
    let med = |v: Vec<f64>| summarize(&v).median;
    let first = &runs[0];
    let rows: Vec<Row> = (0..first.rows.len())
        .map(|i| Row {
            path: first.rows[i].path.clone(),
            expected_action: first.rows[i].expected_action,
            ns_per_packet: med(runs.iter().map(|r| r.rows[i].ns_per_packet).collect()),
            median_ns: med(runs.iter().map(|r| r.rows[i].median_ns).collect()),
            net_ns: med(runs.iter().map(|r| r.rows[i].net_ns).collect()),
            ratio_to_trivial: med(runs.iter().map(|r| r.rows[i].ratio_to_trivial).collect()),
        })
        .collect();
    let ratio_spread = (0..first.rows.len())
        .map(|i| {
            let v: Vec<f64> = runs.iter().map(|r| r.rows[i].ratio_to_trivial).collect();
            (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
        })
        .collect();
    Report {
        calls_per_path: first.calls_per_path,
        repeats: runs.len(),
        ratio_spread,
        baseline: first.baseline.clone(),
        baseline_ns: med(runs.iter().map(|r| r.baseline_ns).collect()),
        rows,
    }
}

/// A bench frame's client: 16,384 source ports per address from `base` on,
/// so every i below 2^24 is its own tuple.
pub fn client_of(base: u32, i: usize) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(base + (i as u32 >> 14)), 1024 + (i as u16 & 0x3fff))
}

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// Load a data plane for a config text.
pub fn load_dp(cfg: &str) -> Result<Dataplane> {
    load_dp_as(cfg, false)
}

/// load_dp with the in-kernel harness loaded too (bpf/bench.h, precise.rs).
pub fn load_harnessed_dp(cfg: &str) -> Result<Dataplane> {
    load_dp_as(cfg, true)
}

fn load_dp_as(cfg: &str, harness: bool) -> Result<Dataplane> {
    let iface = Iface::unattached("bench", [0x02, 0, 0, 0, 0, 0x0a]);
    let plan = Plan::build(&Config::from_toml(cfg)?)?;
    let mut settings = dataplane::Settings::for_plan(&plan, &iface);
    settings.bench = harness;
    dataplane::load_configured_as(&plan, &iface, settings)
}

/// The rows, in order; each data plane is dropped once its rows are done.
struct Rows {
    calls: usize,
    base: Summary,
    rows: Vec<Row>,
}

impl Rows {
    fn time(
        &mut self,
        path: &str,
        action: &'static str,
        dp: &Dataplane,
        frames: &mut dyn FnMut(usize) -> Vec<u8>,
        expect: Option<Expect>,
    ) -> Result<()> {
        let v = sample(path, &dp.skel.progs.weir_lb, Some(dp), self.calls, frames, action_code(action), expect)?;
        self.rows.push(make_row(path, action, &v, &self.base));
        Ok(())
    }
}

fn run_once(calls: usize) -> Result<Report> {
    use crate::skel::weir_stat as ws;
    let calls = calls.max(10);
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let trivial = TrivialSkelBuilder::default()
        .open(holder)
        .context("opening the baseline program")?
        .load()
        .context("loading the baseline program (run as root)")?;

    let vip = VIP;
    let client = |i: usize| client_of(0x0a00_0000, i).0;
    let port = |i: usize| client_of(0x0a00_0000, i).1;
    let one = frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, 40000, 80, true);
    let one_ack = ack(&one);

    // DSR: `calls` handshakes (the new-flow row) and 65,536 flows. Loaded
    // before the baseline is timed, as since the first bench: the first
    // calls after a load run slower, and the baseline's calls come between.
    let dp = load_dp(&bench_config(conntrack_for(calls + 2, MANY + 2), 3))?;
    const BASE: &str = "trivial XDP_PASS (baseline)";
    let base = sample(BASE, &trivial.progs.xdp_pass, None, calls, &mut |_| one.clone(), 2, None)?;
    let base_s = summarize(&base);
    let xdrop = sample("trivial XDP_DROP", &trivial.progs.xdp_drop, None, calls, &mut |_| one.clone(), 1, None)?;
    let mut t = Rows { calls, base: base_s, rows: vec![make_row(BASE, "PASS", &base, &base_s), make_row("trivial XDP_DROP", "DROP", &xdrop, &base_s)] };

    {
        t.time("weir: non-VIP packet", "PASS", &dp, &mut |_| frame_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 50), 40000, 80, true), None)?;
        t.time("weir: new flow (SYN, distinct tuples)", "TX", &dp, &mut |i| frame_v4(client(i), vip, port(i), 80, true), Some(Expect::new_flow()))?;
        // Established: the client's ACKs of a flow whose handshake went by
        // (its first ACK, untimed, moved it to the flow table).
        open_flows(&dp, &[&one, &one_ack], "opening the established flow")?;
        t.time("weir: established flow (1 flow)", "TX", &dp, &mut |_| one_ack.clone(), Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        // 65,536 tracked flows (made untimed, by an ACK each: a flow picked
        // up mid-stream), cycled through: LRU and cache effects show.
        for i in 0..MANY {
            let (a, _, _) = test_run(&dp.skel.progs.weir_lb, &ack(&frame_v4(client(i), vip, port(i), 80, true)), 1)?;
            anyhow::ensure!(a == 3, "bench: creating flow {i} returned {}", xdp_name(a));
        }
        t.time(
            &format!("weir: established ({MANY} flows)"),
            "TX",
            &dp,
            &mut |i| ack(&frame_v4(client(i % MANY), vip, port(i % MANY), 80, true)),
            Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)),
        )?;
    }
    drop(dp);

    {
        // The shield's verdicts, each in a data plane configured for it; its
        // tables hold twice what the rows put in them.
        let shield_dp = |shield: &str, syns: usize| load_dp(&shield_config(shield, calls, syns));
        let within = shield_dp("attack = \"off\"\nrate = 1000000\nburst = 1000000", calls + 2)?;
        // Established traffic with the shield on: an ACK of a tracked flow.
        let est_syn = frame_v4(Ipv4Addr::new(10, 8, 0, 1), vip, 40000, 80, true);
        open_flows(&within, &[&est_syn, &ack(&est_syn)], "opening the shielded flow")?;
        let est_ack = ack(&est_syn);
        t.time("shield on: established ACK", "TX", &within, &mut |_| est_ack.clone(), Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        // Distinct tuples, 16,384 per source (each source's budget holds them).
        let shielded = |i: usize| client_of(0x0a09_0001, i);
        t.time(
            "shield: SYN within budget (new flow)",
            "TX",
            &within,
            &mut |i| frame_v4(shielded(i).0, vip, shielded(i).1, 80, true),
            Some(Expect::new_flow()),
        )?;
        drop(within);
        let over = shield_dp("attack = \"off\"\nrate = 1\nburst = 1", 2)?;
        let _ = test_run(&over.skel.progs.weir_lb, &one, 1)?;
        t.time("shield: SYN over budget", "DROP", &over, &mut |i| frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, port(i), 80, true), None)?;
        drop(over);
        let attack = shield_dp("attack = \"on\"", 2)?;
        // A random-source flood: every packet from another address.
        let spoofed = |i: usize| Ipv4Addr::from(0x0b00_0000u32 + i as u32);
        t.time(
            "shield: random-source SYN, challenge",
            "TX",
            &attack,
            &mut |i| frame_v4(spoofed(i), vip, port(i), 80, true),
            Some(Expect { each: ws::WEIR_STAT_SHIELD_CHALLENGED, none: ws::WEIR_STAT_FLOW_NEW }),
        )?;
        // The proving RST: each needs its own challenge first (not timed).
        let mut prove = Vec::with_capacity(calls);
        let before = attack.global_counters()?;
        for i in 0..calls {
            let syn = frame_v4(spoofed(i + 2_000_000), vip, port(i), 80, true);
            let (_, out, _) = test_run(&attack.skel.progs.weir_lb, &syn, 1)?;
            let ack = u32::from_be_bytes([out[42], out[43], out[44], out[45]]);
            let mut rst = syn.clone();
            rst[38..42].copy_from_slice(&ack.to_be_bytes());
            rst[47] = 0x04; // RST
            let (a, _, ns) = test_run(&attack.skel.progs.weir_lb, &rst, 1)?;
            if a != 1 {
                anyhow::bail!(
                    "bench row \"shield: proving RST\": call {} of {calls} returned {} ({a}), expected XDP_DROP (1); counters that moved: {}",
                    i + 1,
                    xdp_name(a),
                    moved(&before, &attack.global_counters()?)
                );
            }
            prove.push(ns);
        }
        let after = attack.global_counters()?;
        let proven = after[ws::WEIR_STAT_SHIELD_PROVEN.0 as usize] - before[ws::WEIR_STAT_SHIELD_PROVEN.0 as usize];
        anyhow::ensure!(
            proven as usize == calls,
            "bench row \"shield: proving RST\": {proven} of {calls} proving RSTs were accepted (counters that moved: {})",
            moved(&before, &after)
        );
        t.rows.push(make_row("shield: proving RST", "DROP", &prove, &base_s));
        t.time(
            "shield: out-of-state ACK",
            "DROP",
            &attack,
            &mut |i| ack(&frame_v4(spoofed(i + 4_000_000), vip, port(i), 80, true)),
            Some(Expect { each: ws::WEIR_STAT_SHIELD_OUT_OF_STATE, none: ws::WEIR_STAT_FLOW_NEW }),
        )?;
    }

    // Full NAT and tunnel: the same VIP and backends in those modes.
    let mode_cfg = mode_config;
    {
        // One SNAT port per new flow: enough backends (nat_backends) and a
        // table (nat_rev, never evicting) for every call.
        let nat = load_dp(&mode_cfg("nat", conntrack_for(0, 2 * (calls + 2)), nat_backends(calls)))?;
        let nat_prog = &nat.skel.progs.weir_lb;
        t.time("nat: new flow (SYN, port claimed)", "TX", &nat, &mut |i| frame_v4(client(i), vip, port(i), 80, true), Some(Expect::new_flow()))?;
        let nat_syn = frame_v4(Ipv4Addr::new(10, 7, 0, 1), vip, 40000, 80, true);
        let (a, fwd, _) = test_run(nat_prog, &nat_syn, 1)?;
        anyhow::ensure!(a == 3, "bench: the NAT flow's SYN returned {}", xdp_name(a));
        let nat_ack = ack(&nat_syn);
        let _ = test_run(nat_prog, &nat_ack, 1)?;
        t.time("nat: forward, established", "TX", &nat, &mut |_| nat_ack.clone(), Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        // The backend's answer to the port the SYN above was given.
        let backend = Ipv4Addr::new(fwd[30], fwd[31], fwd[32], fwd[33]);
        let snat_port = u16::from_be_bytes([fwd[34], fwd[35]]);
        let reply = ack(&frame_v4(backend, Ipv4Addr::new(198, 18, 0, 10), 80, snat_port, true));
        let (_, back, _) = test_run(nat_prog, &reply, 1)?;
        anyhow::ensure!(back.get(30..34) == Some(&[10, 7, 0, 1][..]), "the NAT reply did not go back to the client");
        t.time("nat: return (backend -> client)", "TX", &nat, &mut |_| reply.clone(), Some(Expect::hit(ws::WEIR_STAT_NAT_REPLY)))?;
    }
    {
        let tunnel = load_dp(&mode_cfg("tunnel", conntrack_for(2, 2), 3))?;
        open_flows(&tunnel, &[&one, &one_ack], "opening the tunnel flow")?;
        t.time("tunnel: IPIP encap, established", "TX", &tunnel, &mut |_| one_ack.clone(), Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
    }
    {
        // Fragments (bpf/frag.h), DSR: a first fragment of a new datagram
        // each (its entry made), then a later fragment following one entry.
        // A table sized for the calls, a timeout that outlives the run.
        // Datagram i: identification i from its own flow's source, 65,536
        // datagrams per source.
        let frag_cfg = format!("[fragments]\nmax_datagrams = {}\ntimeout_ms = 60000\n{}", calls.max(1024) + 16, bench_config(conntrack_for(2, 2), 3));
        let frag = load_dp(&frag_cfg)?;
        let frag_prog = &frag.skel.progs.weir_lb;
        let dgram_flow = |i: usize| ack(&frame_v4(Ipv4Addr::from(0x0a06_0000 + (i as u32 >> 16)), vip, 40000, 80, true));
        for f in [one.clone(), one_ack.clone()].into_iter().chain((0..calls.div_ceil(65536)).map(|s| dgram_flow(s << 16))) {
            let (a, _, _) = test_run(frag_prog, &f, 1)?;
            anyhow::ensure!(a == 3, "bench: opening the fragments' flows returned {}", xdp_name(a));
        }
        t.time(
            "fragment: first of a datagram (DSR, entry made)",
            "TX",
            &frag,
            &mut |i| fragment_of(&dgram_flow(i), i as u16, 0, true),
            Some(Expect { each: ws::WEIR_STAT_FRAG_TRACKED, none: ws::WEIR_STAT_FLOW_NEW }),
        )?;
        let _ = test_run(frag_prog, &fragment_of(&one_ack, 0xffff, 0, true), 1)?;
        let later = fragment_of(&one_ack, 0xffff, 1, false);
        t.time("fragment: later, follows its datagram (DSR)", "TX", &frag, &mut |_| later.clone(), Some(Expect::hit(ws::WEIR_STAT_FRAG_BALANCED)))?;
    }

    Ok(Report {
        calls_per_path: calls,
        repeats: 1,
        ratio_spread: Vec::new(),
        baseline: "trivial XDP_PASS".into(),
        baseline_ns: base_s.mean,
        rows: t.rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s, Summary { mean: 2.5, median: 2.5, min: 1.0 });
        assert_eq!(summarize(&[5.0, 1.0, 9.0]).median, 5.0);
        assert_eq!(summarize(&[]).mean, 0.0);
    }

    #[test]
    fn rows_subtract_and_divide_by_the_baseline() {
        let base = summarize(&[20.0, 20.0]);
        let r = make_row("x", "TX", &[50.0, 70.0], &base);
        assert_eq!(r.ns_per_packet, 60.0);
        assert_eq!(r.net_ns, 40.0);
        assert_eq!(r.ratio_to_trivial, 3.0);
    }

    #[test]
    fn repeated_runs_keep_the_median_and_the_spread() {
        let base = summarize(&[10.0]);
        let rep = |ns: f64| Report {
            calls_per_path: 1,
            repeats: 1,
            ratio_spread: Vec::new(),
            baseline: "b".into(),
            baseline_ns: 10.0,
            rows: vec![make_row("p", "TX", &[ns], &base)],
        };
        let r = combine(&[rep(30.0), rep(90.0), rep(20.0)]);
        assert_eq!(r.repeats, 3);
        assert_eq!(r.rows[0].ns_per_packet, 30.0);
        assert_eq!(r.rows[0].ratio_to_trivial, 3.0);
        assert_eq!(r.ratio_spread[0], (2.0, 9.0));
        assert!(r.render().contains("2.00-9.00x"), "{}", r.render());
    }

    #[test]
    fn tables_are_sized_from_the_calls() {
        // The default run keeps the 262,144-flow table; 65,536 flows get 4x.
        assert_eq!(conntrack_for(20_002, MANY + 2), 262_144);
        // syn_flows (a quarter) holds twice the handshakes.
        assert!(conntrack_for(100_002, MANY + 2) / 4 >= 2 * 100_002);
        // At most a quarter of each backend's 64,512 SNAT ports.
        assert_eq!(nat_backends(20_000), 3);
        for calls in [40_000, 100_000, MAX_CALLS] {
            assert!(nat_backends(calls) * 64_512 >= 4 * calls, "{calls}");
        }
        assert!(conntrack_for(MAX_CALLS + 2, 0) <= crate::config::MAX_FLOWS as usize);
        let c = Config::from_toml(&bench_config(262_144, nat_backends(MAX_CALLS))).unwrap();
        assert_eq!(c.vips[0].backends.len(), nat_backends(MAX_CALLS));
    }

    #[test]
    fn moved_counters_smallest_first() {
        let mut a = vec![0u64; crate::skel::STAT_COUNT];
        let b = a.clone();
        a[crate::skel::weir_stat::WEIR_STAT_XDP_TX.0 as usize] = 7;
        a[crate::skel::weir_stat::WEIR_STAT_DROP_NAT_PORTS.0 as usize] = 1;
        assert_eq!(moved(&b, &a), "drop_nat_ports +1, xdp_tx +7");
        assert_eq!(moved(&b, &b), "none");
    }

    #[test]
    fn bench_frames_are_well_formed() {
        let f = frame_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 100), 1, 80, true);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40);
        let u = frame_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 100), 1, 53, false);
        assert_eq!(u.len(), 14 + 20 + 8);
        assert_eq!(u[23], 17);
    }
}

/// Control-plane timings: Maglev table builds and loading a large config.
#[derive(Debug, Clone, Serialize)]
pub struct ControlRow {
    pub what: String,
    pub ms: f64,
}

pub fn control_plane(with_kernel: bool) -> Result<Vec<ControlRow>> {
    let mut rows = Vec::new();
    for m in [65537u32, 655373] {
        for n in [10usize, 100, 1000] {
            let backends: Vec<(Vec<u8>, u32)> =
                (0..n).map(|i| (vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1)).collect();
            let t = std::time::Instant::now();
            let table = crate::maglev::build(&backends, m);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(table.iter().all(Option::is_some), "maglev left empty slots");
            rows.push(ControlRow { what: format!("maglev build M={m} N={n}"), ms });
        }
    }
    if with_kernel {
        // 1,000 backends over 10 VIPs: what a full (re)load writes to the maps.
        let mut cfg = String::new();
        for v in 0..10 {
            cfg += &format!("[[vip]]\naddress = \"198.18.1.{}\"\nport = 80\nprotocol = \"tcp\"\n", v + 1);
            for b in 0..100 {
                cfg += &format!("[[vip.backend]]\naddress = \"10.{v}.{}.{}\"\nmac = \"02:00:00:00:{v:02x}:{b:02x}\"\n", b / 200, b % 200 + 1);
            }
        }
        let t = std::time::Instant::now();
        let plan = Plan::build(&Config::from_toml(&cfg)?)?;
        rows.push(ControlRow { what: "plan 1000 backends / 10 VIPs (parse + 10 tables)".into(), ms: t.elapsed().as_secs_f64() * 1e3 });
        let mac = [0x02, 0, 0, 0, 0, 0x0a];
        let iface = Iface::unattached("bench", mac);
        let t = std::time::Instant::now();
        let dp = Dataplane::load(Settings::for_plan(&plan, &iface))?;
        rows.push(ControlRow { what: "load BPF program (verifier)".into(), ms: t.elapsed().as_secs_f64() * 1e3 });
        let (hops, tx) = dataplane::configured_hops(&plan, &iface)?;
        let t = std::time::Instant::now();
        dp.apply(&plan, &hops, &tx)?;
        rows.push(ControlRow { what: "write maps: 1000 backends / 10 VIPs".into(), ms: t.elapsed().as_secs_f64() * 1e3 });
        // A reload that changes every weight: new plan, all tables rebuilt and flipped.
        let cfg2 = cfg.replace("mac = ", "weight = 2\nmac = ");
        let t = std::time::Instant::now();
        let plan2 = Plan::build_after(&Config::from_toml(&cfg2)?, Some(&plan))?;
        let (hops2, tx2) = dataplane::configured_hops(&plan2, &iface)?;
        dp.reload(&plan, &plan2, &hops2, &tx2, &Default::default())?;
        rows.push(ControlRow { what: "reload 1000 backends / 10 VIPs (all weights)".into(), ms: t.elapsed().as_secs_f64() * 1e3 });
        let t = std::time::Instant::now();
        let snap = crate::stats::Snapshot::collect(&dp, &plan2, "bench", "none", std::time::Instant::now(), &|_| None, dp.flow_count(crate::stats::FLOW_COUNT_CAP))?;
        let text = crate::metrics::render(&snap);
        anyhow::ensure!(text.contains("weir_backend_packets_total"), "metrics rendered nothing");
        rows.push(ControlRow {
            what: format!("metrics scrape, 1000 backends ({} KiB)", text.len() / 1024),
            ms: t.elapsed().as_secs_f64() * 1e3,
        });
    }
    Ok(rows)
}

pub fn render_control(rows: &[ControlRow]) -> String {
    let mut s = String::from("control plane\n");
    for r in rows {
        s += &format!("{:<52} {:>10.1} ms\n", r.what, r.ms);
    }
    s
}

/// A bar chart a person would rather look at than a table.
pub fn svg(per: &Report, live: Option<&live::LiveReport>) -> String {
    let bar_h = 22.0;
    let left = 300.0;
    let width = 1100.0;
    let mut y = 40.0;
    let mut body = String::new();
    let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
    let max_ratio = per.rows.iter().map(|r| r.ratio_to_trivial).fold(1.0, f64::max);
    body += &format!(
        "<text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Per-packet cost, ratio to a trivial XDP_PASS (median of {} runs; {:.0} ns/call baseline)</text>\n",
        per.repeats, per.baseline_ns
    );
    for r in &per.rows {
        let w = (width - left - 230.0) * r.ratio_to_trivial / max_ratio;
        let color = if r.path.starts_with("shield") { "#c0504d" } else if r.path.starts_with("weir") { "#4f81bd" } else { "#9bbb59" };
        body += &format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.0}\" font-size=\"12\">{:.2}x ({:.0} ns)</text>\n",
            left - 8.0,
            y + 15.0,
            esc(&r.path),
            y + 2.0,
            bar_h - 4.0,
            left + w + 6.0,
            y + 15.0,
            r.ratio_to_trivial,
            r.ns_per_packet
        );
        y += bar_h;
    }
    if let Some(l) = live {
        y += 30.0;
        body += &format!(
            "<text x=\"10\" y=\"{y:.0}\" font-size=\"16\" font-weight=\"bold\">Lab throughput, {}-byte frames, Mpps (median of {} runs, min-max whisker)</text>\n",
            l.frame_bytes, l.runs
        );
        y += 16.0;
        let max = l.rows.iter().map(|r| r.mpps_max).fold(0.1, f64::max);
        for r in &l.rows {
            let scale = (width - left - 280.0) / max;
            let w = r.mpps_median * scale;
            body += &format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"#8064a2\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.0}\" y2=\"{:.0}\" stroke=\"black\"/><text x=\"{:.1}\" y=\"{:.0}\" font-size=\"12\">{:.2} Mpps ({:.2}x reflector)</text>\n",
                left - 8.0,
                y + 15.0,
                esc(&r.program),
                y + 2.0,
                bar_h - 4.0,
                left + r.mpps_min * scale,
                left + r.mpps_max * scale,
                y + 11.0,
                y + 11.0,
                left + r.mpps_max * scale + 6.0,
                y + 15.0,
                r.mpps_median,
                r.ratio_to_reflector
            );
            y += bar_h;
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        y + 20.0
    )
}
