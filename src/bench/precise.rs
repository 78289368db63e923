//! `weir bench`'s precise rows: every path timed in the kernel's own loop
//! (BPF_PROG_TEST_RUN with repeat = N) through the harness of bpf/bench.h,
//! which puts the original frame back before every run (start, length and
//! bytes) and can make run i come from client i (a new flow per run).
//!
//! Why: one test_run call per packet (the per-call rows) carries a syscall
//! and the timer's granularity per packet, and on a shared VM its figures
//! move by up to 2x between runs. Here one call times N runs and the
//! kernel divides: a batch's figure is a mean over N packets.
//!
//! What a row is: `weir_lb_bench` (the production path, inlined from the
//! same source as `weir_lb`, bpf/lb.bpf.c) minus `weir_bench_base` (the
//! same harness around XDP_PASS) on the same frame, in alternating
//! batches; the row's figure is the median of the batches' differences,
//! with their min and max. The last run's action must be the row's, and
//! the row's counter must have grown by every run (the path the row names
//! was taken N times, not once).

use anyhow::{Context, Result};
use libbpf_rs::MapCore;
use serde::Serialize;
use std::net::Ipv4Addr;

use super::{ack, action_code, bench_config, client_of, conntrack_for, fragment_of, frame_v4, load_harnessed_dp, moved, nat_backends, open_flows, shield_config, xdp_name, Expect, MANY, VIP};
use crate::dataplane::{test_run, Dataplane};
use crate::skel::{weir_stat as ws, BenchScratch};

/// Run i's client (bpf/bench.h): IPv4 source + (i >> shift), source port +
/// (i & (2^shift - 1)), i = (from + run) % modulus; client_of's scheme
/// with shift 14.
#[derive(Debug, Clone, Copy)]
pub struct Vary {
    pub shift: u32,
    pub modulus: u32,
    pub from: u32,
}

impl Vary {
    /// A new client per run, 16,384 ports per address (client_of).
    pub const CLIENTS: Vary = Vary { shift: 14, modulus: 0, from: 0 };
    /// A new source address per run (a random-source flood).
    pub const SOURCES: Vary = Vary { shift: 0, modulus: 0, from: 0 };
}

#[derive(Debug, Clone, Serialize)]
pub struct PreciseRow {
    pub path: String,
    pub expected_action: &'static str,
    /// Mean ns per run of the harnessed path (median over the batches).
    pub ns_per_run: f64,
    /// Minus the harness around XDP_PASS: median of the batches' differences.
    pub net_ns: f64,
    pub net_min: f64,
    pub net_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreciseReport {
    pub runs_per_batch: u32,
    pub batches: usize,
    /// The harness around XDP_PASS, ns per run (median).
    pub harness_ns: f64,
    pub rows: Vec<PreciseRow>,
}

impl PreciseReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "per-packet cost, in-kernel loop (BPF_PROG_TEST_RUN repeat = {} through bpf/bench.h's harness), {} batches, \
             net of the harness around XDP_PASS = {:.1} ns/run\n",
            self.runs_per_batch, self.batches, self.harness_ns
        );
        s += &format!("{:<48} {:>6} {:>8} {:>8} {:>15}\n", "path", "action", "ns/run", "net ns", "net min-max");
        for r in &self.rows {
            s += &format!(
                "{:<48} {:>6} {:>8.1} {:>8.1} {:>7.1}-{:<7.1}\n",
                r.path, r.expected_action, r.ns_per_run, r.net_ns, r.net_min, r.net_max
            );
        }
        s
    }
}

/// Tell `dp`'s harness the frame to put back (and run i's client); `live`
/// for BPF_F_TEST_XDP_LIVE_FRAMES runs (only the bytes are put back).
pub fn set_frame(dp: &Dataplane, frame: &[u8], vary: Option<Vary>, from: u32, live: bool) -> Result<()> {
    let mut s = scratch(frame, vary, from)?;
    s.live = u32::from(live);
    dp.skel
        .maps
        .bench_scratch
        .update(&0u32.to_ne_bytes(), crate::skel::bytes_of(&s), libbpf_rs::MapFlags::ANY)
        .context("writing the bench harness's frame (bench_scratch)")
}

fn scratch(frame: &[u8], vary: Option<Vary>, from: u32) -> Result<BenchScratch> {
    let mut s = BenchScratch::default();
    anyhow::ensure!(
        (38..=s.frame.len()).contains(&frame.len()),
        "bench harness: a frame of {} bytes (it holds 38 to {})",
        frame.len(),
        s.frame.len()
    );
    s.frame[..frame.len()].copy_from_slice(frame);
    s.len = frame.len() as u32;
    if let Some(v) = vary {
        s.vary = 1;
        s.vary_shift = v.shift;
        s.vary_mod = v.modulus;
        s.vary_from = v.from.wrapping_add(from);
    }
    Ok(s)
}

/// `runs` runs of `prog` on `frame` in one test_run call, the harness told
/// first; the last run's action, its output frame and ns per run.
pub fn batch(
    dp: &Dataplane,
    prog: &libbpf_rs::ProgramMut<'_>,
    frame: &[u8],
    vary: Option<Vary>,
    from: u32,
    runs: u32,
) -> Result<(u32, Vec<u8>, f64)> {
    set_frame(dp, frame, vary, from, false)?;
    test_run(prog, frame, runs)
}

struct Suite {
    runs: u32,
    batches: usize,
    harness: Vec<f64>,
    rows: Vec<PreciseRow>,
}

impl Suite {
    /// Time one path: `batches` x `runs` runs, alternating with the harness
    /// around XDP_PASS on the same frame.
    fn time(&mut self, path: &str, action: &'static str, dp: &Dataplane, frame: &[u8], vary: Option<Vary>, expect: Option<Expect>) -> Result<()> {
        let want = action_code(action);
        let before = dp.global_counters()?;
        let (mut ns, mut net) = (Vec::new(), Vec::new());
        for b in 0..self.batches {
            let from = (b as u32).wrapping_mul(self.runs);
            let (a, _, base) = batch(dp, &dp.skel.progs.weir_bench_base, frame, vary, from, self.runs)?;
            anyhow::ensure!(a == 2, "bench harness: the XDP_PASS program returned {} ({a}) on row \"{path}\"", xdp_name(a));
            let (a, _, t) = batch(dp, &dp.skel.progs.weir_lb_bench, frame, vary, from, self.runs)?;
            if a != want {
                anyhow::bail!(
                    "precise bench row \"{path}\": batch {} ended with {} ({a}), expected {} ({want}); counters that moved: {}",
                    b + 1,
                    xdp_name(a),
                    xdp_name(want),
                    moved(&before, &dp.global_counters()?)
                );
            }
            self.harness.push(base);
            ns.push(t);
            net.push(t - base);
        }
        if let Some(e) = expect {
            let after = dp.global_counters()?;
            let grew = |s: ws| after[s.0 as usize].wrapping_sub(before[s.0 as usize]);
            let name = |s: ws| crate::skel::stat_name(s.0 as usize);
            let all = u64::from(self.runs) * self.batches as u64;
            anyhow::ensure!(
                grew(e.each) == all && grew(e.none) == 0,
                "precise bench row \"{path}\": after {all} runs {} should have grown by {all} and {} by 0, but they grew by {} and {} \
                 (not the path the row names, or the harness did not restore the frame; counters that moved: {})",
                name(e.each),
                name(e.none),
                grew(e.each),
                grew(e.none),
                moved(&before, &after)
            );
        }
        let net_s = super::summarize(&net);
        self.rows.push(PreciseRow {
            path: path.to_string(),
            expected_action: action,
            ns_per_run: super::summarize(&ns).median,
            net_ns: net_s.median,
            net_min: net_s.min,
            net_max: net.iter().copied().fold(f64::MIN, f64::max),
        });
        Ok(())
    }
}

/// Runs per precise row (runs per batch x batches): at most as many as the
/// per-call rows' calls, whose table sizing they share.
pub fn check(runs: u32, batches: usize) -> Result<()> {
    let total = u64::from(runs) * batches as u64;
    anyhow::ensure!(batches >= 1, "--batches 0: give 1 or more");
    anyhow::ensure!(
        total <= super::MAX_CALLS as u64,
        "--calls {runs} x --batches {batches} = {total} runs per precise row: at most {} (the tables are sized from them); lower --calls or --batches",
        super::MAX_CALLS
    );
    Ok(())
}

/// The precise rows: `runs` runs per batch, `batches` batches per row.
pub fn run(runs: u32, batches: usize) -> Result<PreciseReport> {
    let runs = runs.max(100);
    check(runs, batches)?;
    let total = runs as usize * batches;
    let mut t = Suite { runs, batches, harness: Vec::new(), rows: Vec::new() };
    let vip = VIP;
    let one = frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, 40000, 80, true);
    let one_ack = ack(&one);

    {
        let dp = load_harnessed_dp(&bench_config(conntrack_for(total + 2, MANY + 2), 3))?;
        let other = frame_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 50), 40000, 80, true);
        t.time("weir: non-VIP packet", "PASS", &dp, &other, None, None)?;
        let (c0, p0) = client_of(0x0a00_0000, 0);
        t.time("weir: new flow (SYN, distinct tuples)", "TX", &dp, &frame_v4(c0, vip, p0, 80, true), Some(Vary::CLIENTS), Some(Expect::new_flow()))?;
        open_flows(&dp, &[&one, &one_ack], "opening the established flow")?;
        t.time("weir: established flow (1 flow)", "TX", &dp, &one_ack, None, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        // 65,536 flows picked up mid-stream (an ACK each, untimed, through
        // the harness itself), then cycled through.
        let (c1, p1) = client_of(0x0a80_0000, 0);
        let many_ack = ack(&frame_v4(c1, vip, p1, 80, true));
        let cycle = Vary { shift: 14, modulus: MANY as u32, from: 0 };
        let before = dp.global_counters()?;
        let (a, _, _) = batch(&dp, &dp.skel.progs.weir_lb_bench, &many_ack, Some(cycle), 0, MANY as u32)?;
        let made = dp.global_counters()?[ws::WEIR_STAT_FLOW_NEW.0 as usize] - before[ws::WEIR_STAT_FLOW_NEW.0 as usize];
        anyhow::ensure!(a == 3 && made == MANY as u64, "precise bench: making {MANY} flows made {made} (last action {})", xdp_name(a));
        t.time(&format!("weir: established ({MANY} flows)"), "TX", &dp, &many_ack, Some(cycle), Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
    }
    {
        let shield_dp = |shield: &str, syns: usize| load_harnessed_dp(&shield_config(shield, total, syns));
        let within = shield_dp("attack = \"off\"\nrate = 1000000\nburst = 1000000", total + 2)?;
        let est_syn = frame_v4(Ipv4Addr::new(10, 8, 0, 1), vip, 40000, 80, true);
        open_flows(&within, &[&est_syn, &ack(&est_syn)], "opening the shielded flow")?;
        t.time("shield on: established ACK", "TX", &within, &ack(&est_syn), None, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        let (c, p) = client_of(0x0a09_0001, 0);
        t.time("shield: SYN within budget (new flow)", "TX", &within, &frame_v4(c, vip, p, 80, true), Some(Vary::CLIENTS), Some(Expect::new_flow()))?;
        drop(within);
        let over = shield_dp("attack = \"off\"\nrate = 1\nburst = 1", 2)?;
        let _ = test_run(&over.skel.progs.weir_lb, &one, 1)?;
        t.time("shield: SYN over budget", "DROP", &over, &frame_v4(Ipv4Addr::new(10, 0, 0, 1), vip, 40001, 80, true), None, None)?;
        drop(over);
        let attack = shield_dp("attack = \"on\"", 2)?;
        t.time(
            "shield: random-source SYN, challenge",
            "TX",
            &attack,
            &frame_v4(Ipv4Addr::new(11, 0, 0, 0), vip, 40000, 80, true),
            Some(Vary::SOURCES),
            Some(Expect { each: ws::WEIR_STAT_SHIELD_CHALLENGED, none: ws::WEIR_STAT_FLOW_NEW }),
        )?;
        t.time(
            "shield: out-of-state ACK",
            "DROP",
            &attack,
            &ack(&frame_v4(Ipv4Addr::new(12, 0, 0, 0), vip, 40000, 80, true)),
            Some(Vary::SOURCES),
            Some(Expect { each: ws::WEIR_STAT_SHIELD_OUT_OF_STATE, none: ws::WEIR_STAT_FLOW_NEW }),
        )?;
    }
    let mode_cfg = super::mode_config;
    {
        let nat = load_harnessed_dp(&mode_cfg("nat", conntrack_for(0, 2 * (total + 2)), nat_backends(total)))?;
        let (c, p) = client_of(0x0a00_0000, 0);
        t.time("nat: new flow (SYN, port claimed)", "TX", &nat, &frame_v4(c, vip, p, 80, true), Some(Vary::CLIENTS), Some(Expect::new_flow()))?;
        let nat_syn = frame_v4(Ipv4Addr::new(10, 7, 0, 1), vip, 40000, 80, true);
        let (a, fwd, _) = test_run(&nat.skel.progs.weir_lb, &nat_syn, 1)?;
        anyhow::ensure!(a == 3, "precise bench: the NAT flow's SYN returned {}", xdp_name(a));
        open_flows(&nat, &[&ack(&nat_syn)], "the NAT flow's ACK")?;
        t.time("nat: forward, established", "TX", &nat, &ack(&nat_syn), None, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
        let backend = Ipv4Addr::new(fwd[30], fwd[31], fwd[32], fwd[33]);
        let snat_port = u16::from_be_bytes([fwd[34], fwd[35]]);
        let reply = ack(&frame_v4(backend, Ipv4Addr::new(198, 18, 0, 10), 80, snat_port, true));
        t.time("nat: return (backend -> client)", "TX", &nat, &reply, None, Some(Expect::hit(ws::WEIR_STAT_NAT_REPLY)))?;
    }
    {
        let tunnel = load_harnessed_dp(&mode_cfg("tunnel", conntrack_for(2, 2), 3))?;
        open_flows(&tunnel, &[&one, &one_ack], "opening the tunnel flow")?;
        t.time("tunnel: IPIP encap, established", "TX", &tunnel, &one_ack, None, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))?;
    }
    {
        let frag = load_harnessed_dp(&format!("[fragments]\nmax_datagrams = 1024\ntimeout_ms = 60000\n{}", bench_config(conntrack_for(2, 2), 3)))?;
        open_flows(&frag, &[&one, &one_ack], "opening the fragments' flow")?;
        let _ = test_run(&frag.skel.progs.weir_lb, &fragment_of(&one_ack, 0xffff, 0, true), 1)?;
        let later = fragment_of(&one_ack, 0xffff, 1, false);
        t.time("fragment: later, follows its datagram (DSR)", "TX", &frag, &later, None, Some(Expect::hit(ws::WEIR_STAT_FRAG_BALANCED)))?;
    }
    Ok(PreciseReport { runs_per_batch: runs, batches, harness_ns: super::summarize(&t.harness).median, rows: t.rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--calls 1000000` (allowed per call) with 5 batches would size tables
    /// for 5M runs past conntrack.size's bound: refused before anything runs.
    #[test]
    fn runs_per_row_are_bounded_with_a_clear_error() {
        assert!(check(20_000, 5).is_ok());
        let e = check(1_000_000, 5).unwrap_err().to_string();
        assert!(e.contains("--calls 1000000 x --batches 5 = 5000000") && e.contains("lower --calls or --batches"), "{e}");
        assert!(check(100, 0).unwrap_err().to_string().contains("--batches 0"));
    }

    /// The scratch the harness reads: the frame, its length and run i's client.
    #[test]
    fn the_scratch_carries_the_frame_and_the_clients() {
        let f = frame_v4(Ipv4Addr::new(10, 0, 0, 1), VIP, 1024, 80, true);
        let s = scratch(&f, Some(Vary { shift: 14, modulus: 65536, from: 7 }), 100).unwrap();
        assert_eq!((s.len as usize, &s.frame[..f.len()]), (f.len(), &f[..]));
        assert_eq!((s.vary, s.vary_shift, s.vary_mod, s.vary_from), (1, 14, 65536, 107));
        let e = scratch(&[0u8; 300], None, 0).unwrap_err().to_string();
        assert!(e.contains("a frame of 300 bytes"), "{e}");
    }
}
