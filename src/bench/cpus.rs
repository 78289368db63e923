//! `weir bench --cpus N`: how a path scales over CPUs. The same path runs
//! from one thread pinned to the first CPU, then from N threads pinned to N
//! CPUs at once, each with packets of its own, on one loaded program and its
//! maps. BPF_PROG_TEST_RUN runs the program on the calling CPU, one call per
//! packet (as in the per-packet rows).
//!
//! Rates are of program time: a thread's packets over the sum of the
//! kernel-measured durations of its calls; N CPUs' rate is the sum of their
//! threads'. What one CPU's writes cost another (a shared free list, a
//! shared counter or window) shows as longer calls while both run. The
//! threads spend part of their time in the syscall, outside the program, so
//! they collide less often than CPUs that only run the program would: the
//! speed-ups here are upper bounds. Wall-clock rates (syscalls included) are
//! reported beside them, and a trivial XDP_PASS row shows what the machine
//! itself gives (other load, shared caches).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;

use super::{ack, client_of, frame_v4, moved, summarize, Expect, MANY, VIP};
use crate::config::Config;
use crate::dataplane::{self, Dataplane, Settings};
use crate::net::Iface;
use crate::plan::Plan;
use crate::skel::weir_stat as ws;

/// Largest --cpu-calls: the frames' source ranges stay apart.
pub const MAX_CPU_CALLS: usize = 1_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub path: String,
    /// Packets/s of program time: one CPU alone, and N CPUs together.
    pub pps_1: f64,
    pub pps_n: f64,
    /// pps_n / pps_1 (N would be perfect).
    pub speedup: f64,
    /// Mean ns per call on one CPU alone, and per CPU while N run.
    pub ns_1: f64,
    pub ns_n: f64,
    /// Mean ns per call on the first CPU while N run, over its ns alone:
    /// the slowdown the others cause it (the same CPU both times, so its
    /// own other load and caches count alike).
    pub first_cpu_slowdown: f64,
    /// Packets/s of wall-clock time (syscalls included): one CPU, N CPUs
    /// (all packets over the slowest thread's time).
    pub wall_pps_1: f64,
    pub wall_pps_n: f64,
    pub wall_speedup: f64,
    /// The N threads' shortest wall time over their longest: near 1, they
    /// ran side by side throughout.
    pub overlap: f64,
    /// Calls of SLOW_NS or more (interrupted or preempted), left out of
    /// the program time: one CPU, N CPUs.
    pub slow_1: usize,
    pub slow_n: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub cpus: Vec<usize>,
    pub calls_per_thread: usize,
    pub repeats: usize,
    pub rows: Vec<ScaleRow>,
    /// Smallest and largest speed-up (program time) per row over the repeats.
    pub speedup_spread: Vec<(f64, f64)>,
}

impl ScaleReport {
    pub fn render(&self) -> String {
        let n = self.cpus.len();
        let mut s = format!(
            "CPU scaling, BPF_PROG_TEST_RUN, one thread on CPU {} then {n} threads on CPUs {:?} at once (own packets each, one program and maps), {} calls per thread, median of {} runs\n",
            self.cpus[0], self.cpus, self.calls_per_thread, self.repeats
        );
        s += &format!(
            "{:<60} {:>7} {:>7} {:>8} {:>13} {:>7} {:>7} {:>8} {:>7} {:>7} {:>9}\n",
            "path (program time)",
            "1 Mpps",
            format!("{n} Mpps"),
            "speed-up",
            "min-max",
            "ns 1",
            format!("ns {n}"),
            "slowdown",
            "wall x",
            "overlap",
            "slow 1/N"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let (lo, hi) = self.speedup_spread.get(i).copied().unwrap_or((r.speedup, r.speedup));
            s += &format!(
                "{:<60} {:>7.2} {:>7.2} {:>7.2}x {:>6.2}-{:.2}x {:>7.1} {:>7.1} {:>7.2}x {:>6.2}x {:>7.2} {:>4}/{:<4}\n",
                r.path,
                r.pps_1 / 1e6,
                r.pps_n / 1e6,
                r.speedup,
                lo,
                hi,
                r.ns_1,
                r.ns_n,
                r.first_cpu_slowdown,
                r.wall_speedup,
                r.overlap,
                r.slow_1,
                r.slow_n
            );
        }
        s += &format!(
            "Mpps and ns: program time (kernel-measured durations); speed-up = {n} Mpps / 1 Mpps, min-max over the runs; \
             slowdown = the first CPU's ns while {n} run / its ns alone; wall x = the same speed-up in wall-clock time \
             (syscalls and the machine's other load included); overlap = the threads' shortest / longest wall time; \
             slow = calls of 50 us or more (interrupted), left out\n"
        );
        s
    }
}

/// CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning a bench thread to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
        let now = libc::sched_getcpu();
        if now != cpu as i32 {
            bail!("a bench thread pinned to CPU {cpu} runs on CPU {now}");
        }
    }
    Ok(())
}

/// One BPF_PROG_TEST_RUN call on a program fd: action and duration (ns).
fn run_fd(fd: i32, frame: &[u8], out: &mut [u8]) -> Result<(u32, u32)> {
    // SAFETY: zeroed opts are the defaults; the pointers outlive the call
    // and the sizes are theirs.
    unsafe {
        let mut opts = std::mem::zeroed::<libbpf_sys::bpf_test_run_opts>();
        opts.sz = std::mem::size_of_val(&opts) as _;
        opts.data_in = frame.as_ptr().cast();
        opts.data_size_in = frame.len() as _;
        opts.data_out = out.as_mut_ptr().cast();
        opts.data_size_out = out.len() as _;
        opts.repeat = 1;
        if libbpf_sys::bpf_prog_test_run_opts(fd, &mut opts) != 0 {
            bail!("BPF_PROG_TEST_RUN on fd {fd}: {}", std::io::Error::last_os_error());
        }
        Ok((opts.retval, opts.duration))
    }
}

#[derive(Debug, Clone, Copy)]
struct ThreadRun {
    /// Calls counted: those of `SLOW_NS` or more are left out.
    calls: usize,
    prog_ns: u64,
    wall_s: f64,
    slow: usize,
}

/// A call this long was interrupted or preempted (other load on the
/// machine), not slowed by the other CPU: left out of the program time.
pub const SLOW_NS: u32 = 50_000;

/// A path to scale: its program, the action every call must return, what
/// the counters must show, and its frames by (slot, call).
struct Scenario<'a> {
    path: String,
    fd: i32,
    dp: Option<&'a Dataplane>,
    want: u32,
    expect: Option<Expect>,
    /// Slots 1..=N for the N-CPU run (new packets: new flows, new
    /// sources); otherwise 0..N (slot 0 is the one-CPU run's).
    fresh: bool,
    frames: &'a (dyn Fn(usize, usize) -> Vec<u8> + Sync),
}

/// Thread t on cpus[t] sends the frames of slots[t], all threads started together.
fn phase(sc: &Scenario<'_>, cpus: &[usize], slots: &[usize], calls: usize) -> Result<Vec<ThreadRun>> {
    let before = sc.dp.map(Dataplane::global_counters).transpose()?;
    let barrier = Barrier::new(cpus.len());
    // What the threads need (the data plane itself stays on this thread).
    let (fd, want, path, gen) = (sc.fd, sc.want, sc.path.as_str(), sc.frames);
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .zip(slots)
            .map(|(&cpu, &slot)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<ThreadRun> {
                    let pinned = pin(cpu);
                    let frames: Vec<Vec<u8>> = (0..calls).map(|i| gen(slot, i)).collect();
                    let mut out = vec![0u8; 512];
                    // Every thread reaches the barrier, pinned or not.
                    barrier.wait();
                    pinned?;
                    let t0 = Instant::now();
                    let (mut ns, mut slow) = (0u64, 0usize);
                    for (i, f) in frames.iter().enumerate() {
                        let (a, d) = run_fd(fd, f, &mut out)?;
                        if a != want {
                            bail!(
                                "CPU scaling row \"{}\": call {} of {calls} on CPU {cpu} returned {} ({a}), expected {} ({})",
                                path,
                                i + 1,
                                super::xdp_name(a),
                                super::xdp_name(want),
                                want
                            );
                        }
                        if d >= SLOW_NS {
                            slow += 1;
                        } else {
                            ns += u64::from(d);
                        }
                    }
                    Ok(ThreadRun { calls: calls - slow, prog_ns: ns, wall_s: t0.elapsed().as_secs_f64(), slow })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a bench thread panicked"))?).collect::<Result<Vec<_>>>()
    })?;
    if let (Some(e), Some(dp), Some(b)) = (sc.expect, sc.dp, &before) {
        let after = dp.global_counters()?;
        let grew = |s: ws| after[s.0 as usize].wrapping_sub(b[s.0 as usize]);
        let name = |s: ws| crate::skel::stat_name(s.0 as usize);
        let total = (calls * cpus.len()) as u64;
        anyhow::ensure!(
            grew(e.each) == total && grew(e.none) == 0,
            "CPU scaling row \"{}\" on CPUs {cpus:?}: {} should have grown by {total} and {} by 0, but they grew by {} and {} (counters that moved: {})",
            sc.path,
            name(e.each),
            name(e.none),
            grew(e.each),
            grew(e.none),
            moved(b, &after)
        );
    }
    Ok(runs)
}

fn measure(sc: &Scenario<'_>, cpus: &[usize], calls: usize) -> Result<ScaleRow> {
    let one = phase(sc, &cpus[..1], &[0], calls)?;
    let slots: Vec<usize> = if sc.fresh { (1..=cpus.len()).collect() } else { (0..cpus.len()).collect() };
    let many = phase(sc, cpus, &slots, calls)?;
    let pps = |r: &[ThreadRun]| r.iter().map(|t| t.calls as f64 / (t.prog_ns.max(1) as f64 * 1e-9)).sum::<f64>();
    let ns = |r: &[ThreadRun]| r.iter().map(|t| t.prog_ns as f64).sum::<f64>() / r.iter().map(|t| t.calls as f64).sum::<f64>();
    let wall = |r: &[ThreadRun]| {
        let slowest = r.iter().map(|t| t.wall_s).fold(0.0, f64::max);
        r.iter().map(|t| (t.calls + t.slow) as f64).sum::<f64>() / slowest.max(1e-9)
    };
    let (pps_1, pps_n, wall_1, wall_n) = (pps(&one), pps(&many), wall(&one), wall(&many));
    let shortest = many.iter().map(|t| t.wall_s).fold(f64::INFINITY, f64::min);
    let longest = many.iter().map(|t| t.wall_s).fold(0.0, f64::max);
    Ok(ScaleRow {
        path: sc.path.clone(),
        pps_1,
        pps_n,
        speedup: pps_n / pps_1,
        ns_1: ns(&one),
        ns_n: ns(&many),
        first_cpu_slowdown: ns(&many[..1]) / ns(&one),
        wall_pps_1: wall_1,
        wall_pps_n: wall_n,
        wall_speedup: wall_n / wall_1,
        overlap: if longest > 0.0 { shortest / longest } else { 0.0 },
        slow_1: one.iter().map(|t| t.slow).sum(),
        slow_n: many.iter().map(|t| t.slow).sum(),
    })
}

/// A data plane for a config text, its flow tables' LRU per CPU or shared.
fn load(cfg: &str, lru_per_cpu: bool) -> Result<Dataplane> {
    let iface = Iface::unattached("bench", [0x02, 0, 0, 0, 0, 0x0a]);
    let plan = Plan::build(&Config::from_toml(cfg)?)?;
    let (hops, tx) = dataplane::configured_hops(&plan, &iface)?;
    let mut settings = Settings::for_plan(&plan, &iface);
    settings.lru_per_cpu = lru_per_cpu;
    let dp = Dataplane::load(settings)?;
    dp.apply(&plan, &hops, &tx)?;
    Ok(dp)
}

/// The CPUs of a `--cpus n` run (the first n this process may use), or
/// what is wrong with the flags.
pub fn check(n: usize, calls: usize) -> Result<Vec<usize>> {
    let allowed = allowed_cpus()?;
    anyhow::ensure!(n >= 2, "--cpus {n}: give 2 or more CPUs to compare with one");
    anyhow::ensure!(
        n <= allowed.len() && n <= 64,
        "--cpus {n}: this process may run on {} CPUs ({allowed:?}); give at most {}",
        allowed.len(),
        allowed.len().min(64)
    );
    anyhow::ensure!(
        (1000..=MAX_CPU_CALLS).contains(&calls),
        "--cpu-calls {calls}: give 1000 to {MAX_CPU_CALLS} calls per thread"
    );
    Ok(allowed[..n].to_vec())
}

/// Run the scaling rows `repeats` times on the first `n` CPUs this process
/// may use, `calls` packets per thread; per row the median of each figure.
pub fn run(n: usize, calls: usize, repeats: usize) -> Result<ScaleReport> {
    let cpus = &check(n, calls)?;
    let runs: Vec<Vec<ScaleRow>> = (0..repeats.max(1)).map(|_| run_once(cpus, calls)).collect::<Result<_>>()?;
    let med = |f: &dyn Fn(&ScaleRow) -> f64, i: usize| summarize(&runs.iter().map(|r| f(&r[i])).collect::<Vec<_>>()).median;
    let rows = (0..runs[0].len())
        .map(|i| ScaleRow {
            path: runs[0][i].path.clone(),
            pps_1: med(&|r| r.pps_1, i),
            pps_n: med(&|r| r.pps_n, i),
            speedup: med(&|r| r.speedup, i),
            ns_1: med(&|r| r.ns_1, i),
            ns_n: med(&|r| r.ns_n, i),
            first_cpu_slowdown: med(&|r| r.first_cpu_slowdown, i),
            wall_pps_1: med(&|r| r.wall_pps_1, i),
            wall_pps_n: med(&|r| r.wall_pps_n, i),
            wall_speedup: med(&|r| r.wall_speedup, i),
            overlap: med(&|r| r.overlap, i),
            slow_1: med(&|r| r.slow_1 as f64, i) as usize,
            slow_n: med(&|r| r.slow_n as f64, i) as usize,
        })
        .collect();
    let speedup_spread = (0..runs[0].len())
        .map(|i| {
            let v: Vec<f64> = runs.iter().map(|r| r[i].speedup).collect();
            (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
        })
        .collect();
    Ok(ScaleReport { cpus: cpus.to_vec(), calls_per_thread: calls, repeats: runs.len(), rows, speedup_spread })
}

fn run_once(cpus: &[usize], calls: usize) -> Result<Vec<ScaleRow>> {
    let n = cpus.len();
    let mut rows = Vec::new();
    let one = frame_v4(std::net::Ipv4Addr::new(10, 0, 0, 1), VIP, 40000, 80, true);

    // The machine's own scaling: a program that shares nothing.
    let holder = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
    let trivial = crate::skel::trivial::TrivialSkelBuilder::default()
        .open(holder)
        .context("opening the baseline program")?
        .load()
        .context("loading the baseline program (run as root)")?;
    let same = |_: usize, _: usize| one.clone();
    rows.push(measure(
        &Scenario {
            path: "trivial XDP_PASS (the machine's own scaling)".into(),
            fd: trivial.progs.xdp_pass.as_fd().as_raw_fd(),
            dp: None,
            want: 2,
            expect: None,
            fresh: false,
            frames: &same,
        },
        cpus,
        calls,
    )?);

    // New flows: (1 + n) x calls handshakes, none evicted: syn_flows (a
    // quarter of conntrack.size) holds twice them, and with a free list per
    // CPU the first CPU's share (possible CPUs' split) holds twice its 2 x calls.
    let possible = libbpf_rs::num_possible_cpus().unwrap_or(n).max(n);
    let syn = (2 * (1 + n) * calls).max(possible * 4 * calls);
    let new_flow = |slot: usize, i: usize| {
        let (src, port) = client_of(0x0a10_0000 + slot as u32 * 256, i);
        frame_v4(src, VIP, port, 80, true)
    };
    for (what, per_cpu, sched) in [
        ("shared LRU free list", false, ""),
        ("LRU free list per CPU", true, ""),
        ("round-robin, shared LRU", false, "scheduler = \"round-robin\"\n"),
    ] {
        let cfg = super::bench_config((4 * syn).max(4 * MANY), 3).replace("protocol = \"tcp\"\n", &format!("protocol = \"tcp\"\n{sched}"));
        let dp = load(&cfg, per_cpu)?;
        rows.push(measure(
            &Scenario {
                path: format!("new flow (DSR SYN, distinct tuples), {what}"),
                fd: dp.prog_fd().as_raw_fd(),
                dp: Some(&dp),
                want: 3,
                expect: Some(Expect::new_flow()),
                fresh: true,
                frames: &new_flow,
            },
            cpus,
            calls,
        )?);
    }

    // A random-source SYN flood, every SYN challenged: the challenge table
    // holds twice them all.
    {
        let cfg = format!("[shield]\nattack = \"on\"\nchallenges = {}\n{}", (2 * (1 + n) * calls).max(262144), super::bench_config(4 * MANY, 3));
        let dp = load(&cfg, false)?;
        let spoofed = |slot: usize, i: usize| frame_v4(std::net::Ipv4Addr::from(0x0b00_0000 + ((slot as u32) << 22) + i as u32), VIP, 1024 + (i as u16 & 0x3fff), 80, true);
        rows.push(measure(
            &Scenario {
                path: "shield: random-source SYN, challenge".into(),
                fd: dp.prog_fd().as_raw_fd(),
                dp: Some(&dp),
                want: 3,
                expect: Some(Expect { each: ws::WEIR_STAT_SHIELD_CHALLENGED, none: ws::WEIR_STAT_FLOW_NEW }),
                fresh: true,
                frames: &spoofed,
            },
            cpus,
            calls,
        )?);
    }

    // Established: 65,536 flows (a table 4x that), each CPU its own share
    // of them cycled through; one CPU alone cycles the first share.
    for (what, per_cpu) in [("shared LRU", false), ("LRU per CPU", true)] {
        let dp = load(&super::bench_config(4 * MANY, 3), per_cpu)?;
        let flow = |j: usize| {
            let (src, port) = client_of(0x0a00_0000, j);
            ack(&frame_v4(src, VIP, port, 80, true))
        };
        for j in 0..MANY {
            let (a, _) = run_fd(dp.prog_fd().as_raw_fd(), &flow(j), &mut [0u8; 512])?;
            anyhow::ensure!(a == 3, "bench: creating flow {j} returned {}", super::xdp_name(a));
        }
        let share = MANY / n;
        let est = |slot: usize, i: usize| flow(slot * share + i % share);
        rows.push(measure(
            &Scenario {
                path: format!("established ({MANY} flows, {share} per CPU), {what}"),
                fd: dp.prog_fd().as_raw_fd(),
                dp: Some(&dp),
                want: 3,
                expect: Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)),
                fresh: false,
                frames: &est,
            },
            cpus,
            calls,
        )?);
    }
    Ok(rows)
}
