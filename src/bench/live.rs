//! Lab throughput for `weir bench --live`: the kernel's own packet generator
//! (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES; xdp-trafficgen does
//! not work on this kernel) runs a program on frames "received" by a veth in
//! namespaces of the bench's own, and XDP_TX really transmits them to the
//! peer, where a native XDP_DROP program sinks them. weir (DSR, one
//! established flow) is compared with a MAC-swapping XDP_TX reflector and
//! XDP_DROP in the same run.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use serde::Serialize;

use crate::attach::{attach, AttachMode};
use super::{frame_v4, summarize};
use crate::config::Config;
use crate::dataplane;
use crate::net::Iface;
use crate::plan::Plan;
use crate::skel::trivial::TrivialSkelBuilder;

/// Two namespaces joined by a veth, removed on drop; the thread is moved
/// back to the namespace it started in first.
struct BenchNet {
    a: String,
    b: String,
    home: OwnedFd,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !o.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

fn setns(f: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl BenchNet {
    fn create() -> Result<BenchNet> {
        let home: OwnedFd = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?.into();
        let id = std::process::id();
        let net = BenchNet { a: format!("wbench{id}a"), b: format!("wbench{id}b"), home };
        ip(&["netns", "add", &net.a])?;
        ip(&["netns", "add", &net.b])?;
        ip(&["-n", &net.a, "link", "add", "bl0", "type", "veth", "peer", "name", "bp0", "netns", &net.b])?;
        ip(&["-n", &net.a, "link", "set", "bl0", "up"])?;
        ip(&["-n", &net.b, "link", "set", "bp0", "up"])?;
        Ok(net)
    }

    fn enter(&self, ns: &str) -> Result<()> {
        let f = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        setns(f.as_fd())
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        let _ = setns(self.home.as_fd());
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Run `prog` on `packets` live frames received by `ifindex`; Mpps.
fn live(prog: BorrowedFd<'_>, ifindex: u32, frame: &[u8], packets: u32) -> Result<f64> {
    let mut ctx = libbpf_sys::xdp_md {
        data: 0,
        data_end: frame.len() as u32,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        ctx_in: (&mut ctx as *mut libbpf_sys::xdp_md).cast(),
        ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
        repeat: packets as i32,
        flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: 64,
        ..Default::default()
    };
    let t = Instant::now();
    // SAFETY: opts points at live buffers for the duration of the call.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    let secs = t.elapsed().as_secs_f64();
    if rc != 0 {
        bail!("live-frames test run failed: {}", std::io::Error::from_raw_os_error(-rc));
    }
    Ok(f64::from(packets) / secs / 1e6)
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveRow {
    pub program: String,
    pub mpps_min: f64,
    pub mpps_median: f64,
    pub mpps_max: f64,
    /// Median Mpps / the reflector's median Mpps.
    pub ratio_to_reflector: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub packets_per_run: u32,
    pub runs: usize,
    pub frame_bytes: usize,
    pub rows: Vec<LiveRow>,
}

impl LiveReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "lab throughput: {}-byte frames, {} packets per run, {} runs, veth with a native XDP_DROP peer\n",
            self.frame_bytes, self.packets_per_run, self.runs
        );
        s += &format!("{:<32} {:>8} {:>8} {:>8} {:>12}\n", "program", "min", "median", "max", "vs reflector");
        for r in &self.rows {
            s += &format!(
                "{:<32} {:>8.2} {:>8.2} {:>8.2} {:>11.2}x\n",
                r.program, r.mpps_min, r.mpps_median, r.mpps_max, r.ratio_to_reflector
            );
        }
        s += "(Mpps)\n";
        s
    }
}

const CONFIG: &str = r#"
[[vip]]
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
mac = "BACKEND_MAC"
"#;

pub fn run(packets: u32, runs: usize) -> Result<LiveReport> {
    let net = BenchNet::create()?;
    let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let trivial = TrivialSkelBuilder::default().open(holder)?.load().context("loading the baselines")?;

    // The peer drops what it receives natively (XDP_TX needs a native
    // program on a veth peer to deliver at all: without one the frames
    // vanish, counted only as the sender's xdp_tx_errors).
    net.enter(&net.b)?;
    let bp0 = Iface::lookup("bp0")?;
    let _peer = attach(trivial.progs.xdp_drop.as_fd(), &bp0, AttachMode::Native)?;
    net.enter(&net.a)?;
    let bl0 = Iface::lookup("bl0")?;

    // Live frames are not reset between runs: a page the program rewrote
    // comes back as it left. weir acts only on frames for its own MAC, so
    // the backend has bl0's MAC here: the DSR rewrite then leaves a frame
    // weir forwards again on the page's next run (the same path, every run).
    let cfg = CONFIG.replace("BACKEND_MAC", &crate::config::format_mac(&bl0.mac));
    let plan = Plan::build(&Config::from_toml(&cfg)?)?;
    let dp = dataplane::load_configured(&plan, &bl0)?;

    let mut frame = frame_v4("10.0.0.1".parse()?, "198.18.0.100".parse()?, 40000, 80, true);
    frame.resize(60, 0); // 64 bytes on the wire with the FCS
    frame[0..6].copy_from_slice(&bl0.mac);
    // Warm the flow table: the figure is the established-flow path (a SYN,
    // then the client's ACK, which the run repeats).
    dataplane::test_run(&dp.skel.progs.weir_lb, &frame, 1)?;
    frame[47] = 0x10;
    dataplane::test_run(&dp.skel.progs.weir_lb, &frame, 1)?;

    // Rewriting paths through the harness (bpf/bench.h): with live frames
    // the kernel resets a recycled page's start and length but not its
    // bytes, so the harness puts the original bytes back before each run;
    // the frame sent is the one the path rewrote. DSR through the harness
    // too: what the harness itself costs on the wire.
    let harnessed = |mode: Option<&str>| -> Result<dataplane::Dataplane> {
        let text = match mode {
            Some(m) => super::mode_config(m, 65536, 1),
            None => super::bench_config(65536, 1),
        };
        let plan = Plan::build(&Config::from_toml(&text)?)?;
        let mut settings = dataplane::Settings::for_plan(&plan, &bl0);
        settings.bench = true;
        let hdp = dataplane::load_configured_as(&plan, &bl0, settings)?;
        let mut syn = frame.clone();
        syn[47] = 0x02;
        super::open_flows(&hdp, &[&syn, &frame], &format!("live: opening the {} flow", mode.unwrap_or("dsr")))?;
        super::precise::set_frame(&hdp, &frame, None, 0, true)?;
        Ok(hdp)
    };
    let (h_dsr, h_nat, h_tun) = (harnessed(None)?, harnessed(Some("nat"))?, harnessed(Some("tunnel"))?);
    let progs: [(&str, BorrowedFd<'_>); 6] = [
        ("trivial XDP_DROP", trivial.progs.xdp_drop.as_fd()),
        ("trivial XDP_TX reflector", trivial.progs.xdp_reflect.as_fd()),
        ("weir DSR (XDP_TX)", dp.prog_fd()),
        ("weir DSR, harness", h_dsr.skel.progs.weir_lb_bench.as_fd()),
        ("weir NAT forward, harness", h_nat.skel.progs.weir_lb_bench.as_fd()),
        ("weir tunnel (IPIP), harness", h_tun.skel.progs.weir_lb_bench.as_fd()),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); progs.len()];
    for _ in 0..runs.max(1) {
        for (i, (_, fd)) in progs.iter().enumerate() {
            samples[i].push(live(*fd, bl0.ifindex, &frame, packets)?);
        }
    }
    let reflector = summarize(&samples[1]).median;
    let rows = progs
        .iter()
        .zip(&samples)
        .map(|((name, _), s)| {
            let sum = summarize(s);
            LiveRow {
                program: name.to_string(),
                mpps_min: sum.min,
                mpps_median: sum.median,
                mpps_max: s.iter().copied().fold(0.0, f64::max),
                ratio_to_reflector: if reflector > 0.0 { sum.median / reflector } else { 0.0 },
            }
        })
        .collect();
    for (what, d) in [("DSR", &dp), ("DSR (harness)", &h_dsr), ("NAT", &h_nat), ("tunnel", &h_tun)] {
        let forwarded = d.global_counters()?[crate::skel::weir_stat::WEIR_STAT_XDP_TX.0 as usize];
        anyhow::ensure!(
            forwarded >= u64::from(packets) * runs.max(1) as u64,
            "weir {what} forwarded {forwarded} live frames, fewer than it was given"
        );
    }
    drop(net);
    Ok(LiveReport { packets_per_run: packets, runs: runs.max(1), frame_bytes: 64, rows })
}
