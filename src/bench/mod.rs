//! `weir bench`: per-packet cost of the data plane through BPF_PROG_TEST_RUN,
//! beside a trivial XDP program timed in the same run.
//!
//! Method (BPF_PROG_TEST_RUN with repeat > 1 re-runs the program on the frame
//! it just rewrote, so a "new flow" would be new only once): every figure is
//! one test_run call per packet (repeat = 1), many calls, and the trivial
//! XDP_PASS program's per-call cost is the baseline subtracted from it.

pub mod live;

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
            "{:<38} {:>6} {:>8} {:>8} {:>8} {:>7} {:>13}\n",
            "path", "action", "ns/pkt", "median", "net ns", "ratio", "ratio min-max"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let (lo, hi) = self.ratio_spread.get(i).copied().unwrap_or((r.ratio_to_trivial, r.ratio_to_trivial));
            s += &format!(
                "{:<38} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>6.2}x {:>6.2}-{:.2}x\n",
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
fn fragment_of(frame: &[u8], id: u16, off8: u16, more: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20..22].copy_from_slice(&(off8 | if more { 0x2000 } else { 0 }).to_be_bytes());
    f
}

/// The same TCP frame (frame_v4) as an ACK.
fn ack(syn: &[u8]) -> Vec<u8> {
    let mut f = syn.to_vec();
    f[47] = 0x10;
    f
}

const BENCH_CONFIG: &str = r#"
[conntrack]
size = 262144
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

/// Run the suite `repeats` times (fresh programs each time) and keep, per
/// path, the median of each figure: one noisy run on a shared machine
/// cannot move the result.
pub fn run(calls: usize, repeats: usize) -> Result<Report> {
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

fn run_once(calls: usize) -> Result<Report> {
    let calls = calls.max(10);
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let trivial = TrivialSkelBuilder::default()
        .open(holder)
        .context("opening the baseline program")?
        .load()
        .context("loading the baseline program (run as root)")?;

    let plan = Plan::build(&Config::from_toml(BENCH_CONFIG)?)?;
    let mac = [0x02, 0, 0, 0, 0, 0x0a];
    let iface = Iface::unattached("bench", mac);
    let dp = dataplane::load_configured(&plan, &iface)?;
    let prog = &dp.skel.progs.weir_lb;

    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let time = |p: &libbpf_rs::ProgramMut<'_>, f: &[u8]| -> Result<(u32, f64)> {
        let (a, _, ns) = test_run(p, f, 1)?;
        Ok((a, ns))
    };
    let sample = |p: &libbpf_rs::ProgramMut<'_>, frames: &mut dyn FnMut(usize) -> Vec<u8>, want: u32| -> Result<Vec<f64>> {
        let mut v = Vec::with_capacity(calls);
        for i in 0..calls {
            let f = frames(i);
            let (a, ns) = time(p, &f)?;
            anyhow::ensure!(a == want, "bench path returned XDP action {a}, expected {want}");
            v.push(ns);
        }
        Ok(v)
    };
    let client = |i: usize| Ipv4Addr::from(0x0a00_0000u32 + (i as u32 >> 14));
    let port = |i: usize| 1024 + (i as u16 & 0x3fff);
    let one = frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, 40000, 80, true);

    let base = sample(&trivial.progs.xdp_pass, &mut |_| one.clone(), 2)?;
    let base_s = summarize(&base);
    let drop = sample(&trivial.progs.xdp_drop, &mut |_| one.clone(), 1)?;
    let non_vip = sample(prog, &mut |_| frame_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 50), 40000, 80, true), 2)?;
    let new_flow = sample(prog, &mut |i| frame_v4(client(i), vip, port(i), 80, true), 3)?;
    // Established: the client's ACKs of a flow whose handshake went by (its
    // first ACK moves it from the handshake table to the flow table).
    let one_ack = ack(&one);
    let _ = test_run(prog, &one, 1)?;
    let est = sample(prog, &mut |_| one_ack.clone(), 3)?;
    // 65,536 tracked flows (those above plus untimed ones), cycled through:
    // LRU and cache effects show.
    let many = 65536;
    for i in 0..many {
        let syn = frame_v4(client(i), vip, port(i), 80, true);
        for f in [&syn, &ack(&syn)] {
            let (a, _, _) = test_run(prog, f, 1)?;
            anyhow::ensure!(a == 3, "creating flow {i}: action {a}");
        }
    }
    let est_many = sample(prog, &mut |i| ack(&frame_v4(client(i % many), vip, port(i % many), 80, true)), 3)?;

    // The shield's verdicts, each in a data plane configured for it.
    let shield_dp = |shield: &str| -> Result<Dataplane> {
        let plan = Plan::build(&Config::from_toml(&format!("[shield]\n{shield}\n{BENCH_CONFIG}"))?)?;
        dataplane::load_configured(&plan, &iface)
    };
    let within = shield_dp("attack = \"off\"\nrate = 1000000\nburst = 1000000")?;
    let syn_ok = sample(&within.skel.progs.weir_lb, &mut |i| frame_v4(Ipv4Addr::new(10, 9, 0, 1), vip, port(i), 80, true), 3)?;
    // Established traffic with the shield on: an ACK of a tracked flow.
    let mut est_ack = frame_v4(Ipv4Addr::new(10, 9, 0, 1), vip, port(0), 80, true);
    est_ack[47] = 0x10;
    let shield_est = sample(&within.skel.progs.weir_lb, &mut |_| est_ack.clone(), 3)?;
    let over = shield_dp("attack = \"off\"\nrate = 1\nburst = 1")?;
    let _ = test_run(&over.skel.progs.weir_lb, &one, 1)?;
    let syn_over = sample(&over.skel.progs.weir_lb, &mut |i| frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, port(i), 80, true), 1)?;
    let attack = shield_dp("attack = \"on\"")?;
    // A random-source flood: every packet from another address.
    let spoofed = |i: usize| Ipv4Addr::from(0x0b00_0000u32 + i as u32);
    let challenge = sample(&attack.skel.progs.weir_lb, &mut |i| frame_v4(spoofed(i), vip, port(i), 80, true), 3)?;
    let mut ack_frame = |i: usize| {
        let mut f = frame_v4(spoofed(i + 4_000_000), vip, port(i), 80, true);
        f[47] = 0x10; // ACK
        f
    };
    let out_of_state = sample(&attack.skel.progs.weir_lb, &mut ack_frame, 1)?;
    // The proving RST: each needs its own challenge first (not timed).
    let mut prove = Vec::with_capacity(calls);
    for i in 0..calls {
        let syn = frame_v4(spoofed(i + 2_000_000), vip, port(i), 80, true);
        let (_, out, _) = test_run(&attack.skel.progs.weir_lb, &syn, 1)?;
        let ack = u32::from_be_bytes([out[42], out[43], out[44], out[45]]);
        let mut rst = syn.clone();
        rst[38..42].copy_from_slice(&ack.to_be_bytes());
        rst[47] = 0x04; // RST
        let (a, ns) = time(&attack.skel.progs.weir_lb, &rst)?;
        anyhow::ensure!(a == 1, "proving RST returned {a}, expected XDP_DROP");
        prove.push(ns);
    }
    let proven = attack.global_counters()?[crate::skel::weir_stat::WEIR_STAT_SHIELD_PROVEN.0 as usize];
    anyhow::ensure!(proven as usize == calls, "{proven} of {calls} proving RSTs were accepted");

    // Full NAT and tunnel: the same VIP and backends in those modes.
    let mode_dp = |mode: &str| -> Result<Dataplane> {
        let cfg = BENCH_CONFIG.replace("protocol = \"tcp\"\n", &format!("protocol = \"tcp\"\nmode = \"{mode}\"\nsource_address = \"198.18.0.10\"\n"));
        dataplane::load_configured(&Plan::build(&Config::from_toml(&cfg)?)?, &iface)
    };
    let nat = mode_dp("nat")?;
    let nat_prog = &nat.skel.progs.weir_lb;
    let nat_new = sample(nat_prog, &mut |i| frame_v4(client(i), vip, port(i), 80, true), 3)?;
    let mut nat_ack = frame_v4(Ipv4Addr::new(10, 7, 0, 1), vip, 40000, 80, true);
    let (_, fwd, _) = test_run(nat_prog, &nat_ack, 1)?;
    nat_ack[47] = 0x10;
    let nat_est = sample(nat_prog, &mut |_| nat_ack.clone(), 3)?;
    // The backend's answer to the port the SYN above was given.
    let backend = Ipv4Addr::new(fwd[30], fwd[31], fwd[32], fwd[33]);
    let snat_port = u16::from_be_bytes([fwd[34], fwd[35]]);
    let mut reply = frame_v4(backend, Ipv4Addr::new(198, 18, 0, 10), 80, snat_port, true);
    reply[47] = 0x10;
    let (_, back, _) = test_run(nat_prog, &reply, 1)?;
    anyhow::ensure!(back.get(30..34) == Some(&[10, 7, 0, 1][..]), "the NAT reply did not go back to the client");
    let nat_ret = sample(nat_prog, &mut |_| reply.clone(), 3)?;
    let tunnel = mode_dp("tunnel")?;
    let tun_prog = &tunnel.skel.progs.weir_lb;
    let _ = test_run(tun_prog, &one, 1)?;
    let tun_est = sample(tun_prog, &mut |_| one_ack.clone(), 3)?;

    // Fragments (bpf/frag.h), DSR: a first fragment of a new datagram each
    // (its entry made), then a later fragment following one entry. A table
    // sized for the calls, a timeout that outlives the run.
    let frag_cfg = format!("[fragments]\nmax_datagrams = {}\ntimeout_ms = 60000\n{BENCH_CONFIG}", calls.max(1024) + 16);
    let frag = dataplane::load_configured(&Plan::build(&Config::from_toml(&frag_cfg)?)?, &iface)?;
    let frag_prog = &frag.skel.progs.weir_lb;
    let _ = test_run(frag_prog, &one, 1)?;
    let frag_first = sample(frag_prog, &mut |i| fragment_of(&one_ack, i as u16, 0, true), 3)?;
    let _ = test_run(frag_prog, &fragment_of(&one_ack, 0xffff, 0, true), 1)?;
    let later = fragment_of(&one_ack, 0xffff, 1, false);
    let frag_later = sample(frag_prog, &mut |_| later.clone(), 3)?;

    let rows = vec![
        make_row("trivial XDP_PASS (baseline)", "PASS", &base, &base_s),
        make_row("trivial XDP_DROP", "DROP", &drop, &base_s),
        make_row("weir: non-VIP packet", "PASS", &non_vip, &base_s),
        make_row("weir: new flow (SYN, distinct tuples)", "TX", &new_flow, &base_s),
        make_row("weir: established flow (1 flow)", "TX", &est, &base_s),
        make_row(&format!("weir: established ({many} flows)"), "TX", &est_many, &base_s),
        make_row("shield on: established ACK", "TX", &shield_est, &base_s),
        make_row("shield: SYN within budget (new flow)", "TX", &syn_ok, &base_s),
        make_row("shield: SYN over budget", "DROP", &syn_over, &base_s),
        make_row("shield: random-source SYN, challenge", "TX", &challenge, &base_s),
        make_row("shield: proving RST", "DROP", &prove, &base_s),
        make_row("shield: out-of-state ACK", "DROP", &out_of_state, &base_s),
        make_row("nat: new flow (SYN, port claimed)", "TX", &nat_new, &base_s),
        make_row("nat: forward, established", "TX", &nat_est, &base_s),
        make_row("nat: return (backend -> client)", "TX", &nat_ret, &base_s),
        make_row("tunnel: IPIP encap, established", "TX", &tun_est, &base_s),
        make_row("fragment: first of a datagram (DSR, entry made)", "TX", &frag_first, &base_s),
        make_row("fragment: later, follows its datagram (DSR)", "TX", &frag_later, &base_s),
    ];
    Ok(Report {
        calls_per_path: calls,
        repeats: 1,
        ratio_spread: Vec::new(),
        baseline: "trivial XDP_PASS".into(),
        baseline_ns: base_s.mean,
        rows,
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
