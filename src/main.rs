//! weir: parse the command line, build the thing, run it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Xdp, XdpFlags};

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use weir::attach::{attach, AttachMode};
use weir::config::OnDown;
use weir::health::{Checker, Event as HealthEvent, Health, Target};
use weir::metrics::MetricsServer;
use weir::config::Config;
use weir::control::{fetch, ControlSocket};
use weir::dataplane::{next_hops, Dataplane, Settings};
use weir::net::{in_host_netns, resolve_mac, Iface};
use weir::plan::Plan;
use weir::stats::Snapshot;

#[derive(Parser)]
#[command(name = "weir", version, about = "XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct RunOpts {
    #[arg(long)]
    iface: String,
    #[arg(long)]
    config: String,
    #[arg(long, value_enum, default_value = "auto")]
    mode: AttachMode,
    /// Print the stats table every N seconds (0: never).
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Permit attaching in the host's own network namespace.
    #[arg(long)]
    allow_host_netns: bool,
    /// Serve Prometheus metrics on ADDR (127.0.0.1:9477 when given bare).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9477")]
    metrics: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the balancer, fill its maps from the config and attach it until Ctrl-C / SIGTERM.
    Run(RunOpts),
    /// The SYN-flood shield alone, in front of local TCP ports ([shield] ports).
    Shield(RunOpts),
    /// Validate a config and print the plan, with each backend's Maglev share.
    Check { config: String },
    /// Make a running `weir run` re-read its config and apply the difference
    /// without detaching (same as SIGHUP to it). A bad config is refused and
    /// the running one stays.
    Reload {
        #[arg(long)]
        iface: String,
    },
    /// Detach the instance on IFACE (this namespace) and make it exit.
    Stop {
        #[arg(long)]
        iface: String,
    },
    /// Sampled packet events of a running instance (5-tuple, flags, verdict,
    /// reason, backend), like tcpdump for the balancer's decisions.
    Trace {
        #[arg(long)]
        iface: String,
        /// Sample one packet in N.
        #[arg(long, default_value_t = 1)]
        every: u32,
        /// Stop after this many events (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop after this many seconds (0: no limit).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Only packets from or to this address.
        #[arg(long)]
        host: Option<std::net::IpAddr>,
        /// Only packets from or to this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only this verdict: pass, drop, tx, redirect.
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List running instances (every namespace): interface, XDP mode, uptime, VIPs.
    Status,
    /// Show a running instance's counters.
    Stats {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        json: bool,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
    /// Per-packet cost of each data-plane path beside a trivial XDP program.
    Bench {
        #[arg(long, default_value_t = 20000)]
        calls: usize,
        /// Runs of the whole suite; figures are medians over them.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
        /// Also measure lab throughput (live frames through a veth in
        /// namespaces of the bench's own).
        #[arg(long)]
        live: bool,
        /// Live frames per run and program.
        #[arg(long, default_value_t = 5_000_000)]
        live_packets: u32,
        /// Write a bar chart here (SVG).
        #[arg(long)]
        svg: Option<String>,
    },
    /// Print the man page (roff) generated from this command line.
    #[command(hide = true)]
    Man,
    /// Lab helper: attach (or --detach) a native XDP_PASS program, which a
    /// veth peer needs for XDP_TX frames to reach it. Stays after exit.
    XdpStub {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        detach: bool,
    },
    /// Backend side of mode = "tunnel": strip IPIP / IP6IP6 headers in XDP
    /// on IFACE and pass the inner packet to the stack (for kernels without
    /// ipip / ip6tnl devices). Runs until Ctrl-C / SIGTERM, then detaches.
    Decap {
        #[arg(long)]
        iface: String,
        /// Permit attaching in the host's own network namespace.
        #[arg(long)]
        allow_host_netns: bool,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("weir: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(o) => run(&o),
        Cmd::Shield(o) => shield(&o),
        Cmd::Reload { iface } => {
            println!("reloaded: {}", weir::control::reload(&iface)?);
            Ok(())
        }
        Cmd::Stop { iface } => {
            weir::control::stop(&iface)?;
            let path = weir::control::socket_path(&iface)?;
            let t = Instant::now();
            while path.exists() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if path.exists() {
                bail!("weir on {iface} was asked to stop but is still running after 10 s");
            }
            println!("weir on {iface} stopped and detached");
            Ok(())
        }
        Cmd::Trace { iface, every, count, seconds, host, port, action, json } => {
            weir::tracecli::run(&weir::tracecli::Options { iface, every, count, seconds, host, port, action, json })
        }
        Cmd::Status => {
            let list = weir::control::instances();
            if list.is_empty() {
                println!("no weir instance is running");
            }
            for i in list {
                match i.snapshot {
                    Ok(s) => println!(
                        "{:<16} netns {:<12} {:<6} up {:>7.0}s  {} VIPs  {} flows{}",
                        i.iface,
                        i.netns_inode,
                        s.xdp_mode,
                        s.uptime_s,
                        s.vips.len(),
                        s.flows_tracked,
                        if s.shield.is_empty() { "" } else { "  shield" }
                    ),
                    Err(e) => println!("{:<16} netns {:<12} {e:#}", i.iface, i.netns_inode),
                }
            }
            Ok(())
        }
        Cmd::Check { config } => {
            let cfg = Config::load(&config)?;
            print!("{}", Plan::build(&cfg)?.describe());
            println!("config OK");
            Ok(())
        }
        Cmd::Stats { iface, json, once, interval } => stats(&iface, json, once, interval),
        Cmd::Bench { calls, repeats, json, live, live_packets, svg } => {
            let r = weir::bench::run(calls, repeats)?;
            let l = if live { Some(weir::livebench::run(live_packets, repeats)?) } else { None };
            let cp = weir::bench::control_plane(true)?;
            if json {
                let v = serde_json::json!({ "per_packet": r, "throughput": l, "control_plane": cp });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", r.render());
                if let Some(l) = &l {
                    print!("\n{}", l.render());
                }
                print!("\n{}", weir::bench::render_control(&cp));
            }
            if let Some(path) = svg {
                std::fs::write(&path, weir::bench::svg(&r, l.as_ref())).with_context(|| format!("writing {path}"))?;
                eprintln!("weir bench: chart written to {path}");
            }
            Ok(())
        }
        Cmd::XdpStub { iface, detach } => xdp_stub(&iface, detach),
        Cmd::Decap { iface, allow_host_netns } => decap(&iface, allow_host_netns),
        Cmd::Man => {
            use clap::CommandFactory;
            let cmd = Cli::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd.clone()).section("8").render(&mut out)?;
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("weir-{}", sub.get_name());
                let sub = sub.clone().name(&*Box::leak(name.into_boxed_str()));
                clap_mangen::Man::new(sub).section("8").render(&mut out)?;
            }
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
    }
}

fn refuse_host_netns(what: &str) -> Result<()> {
    if in_host_netns()? {
        bail!(
            "refusing to {what} outside a named network namespace (this may be the host's own); run inside one \
             (`ip netns exec NS weir ...`), or pass --allow-host-netns on a dedicated balancer host"
        );
    }
    Ok(())
}

fn run(o: &RunOpts) -> Result<()> {
    let (iface_name, config, mode, interval, allow_host_netns) =
        (o.iface.as_str(), o.config.as_str(), o.mode, o.interval, o.allow_host_netns);
    let cfg = Config::load(config)?;
    Plan::build(&cfg)?; // a bad config fails before anything else happens
    let iface = Iface::lookup(iface_name)?;
    if !allow_host_netns {
        refuse_host_netns(&format!("attach to {iface_name}"))?;
    }
    // An instance already running here hands over its maps and its link;
    // its ids are kept so its tracked flows and counters keep their meaning.
    let handoff = weir::handoff::request(iface_name)?;
    let prev = handoff.as_ref().map(|h| h.ids.skeleton()).transpose()?;
    let plan = Plan::build_after(&cfg, prev.as_ref())?;
    let (hops, tx) = next_hops(&plan, &iface, &mut |ip, via, mode| resolve_mac(ip, &via.name, mode, Duration::from_secs(3)))?;
    let reuse = handoff.as_ref().map(|h| h.maps.as_slice()).unwrap_or(&[]);
    let dp = Dataplane::load_reusing(Settings::for_plan(&plan, &iface), reuse)?;
    let inherited_down: BTreeSet<u32> = handoff.as_ref().map(|h| h.ids.down.iter().copied().collect()).unwrap_or_default();
    match &prev {
        Some(prev) => {
            dp.adopt_live(prev)?;
            dp.reload(prev, &plan, &hops, &tx, &inherited_down)?;
        }
        None => dp.apply(&plan, &hops, &tx)?,
    }

    let link = match handoff {
        Some(mut h) => {
            // The running program is replaced in place: the interface is
            // never without one, the old instance goes after the swap.
            weir::handoff::link_update(&h.link, dp.prog_fd())?;
            let fd = std::mem::replace(&mut h.link, std::fs::File::open("/dev/null")?.into());
            let mode = h.mode.clone();
            h.release()?;
            let path = weir::control::socket_path(iface_name)?;
            let t = Instant::now();
            while path.exists() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("weir: took over {} from the running instance (maps, flows and counters kept)", iface.name);
            weir::attach::XdpLink::adopt(fd, iface_name, &mode)
        }
        // Nothing is attached before this point; the link detaches when dropped.
        None => {
            // An unusable /run/weir fails here, before anything is attached.
            let control_probe = ControlSocket::bind(iface_name)?;
            drop(control_probe);
            attach(dp.prog_fd(), &iface, mode)?
        }
    };
    // After a take-over the link is ours alone: failing here would detach
    // the interface, so the control socket is retried and metrics only warned.
    let control = {
        let t = Instant::now();
        loop {
            match ControlSocket::bind(iface_name) {
                Ok(c) => break c,
                Err(e) if t.elapsed() > Duration::from_secs(20) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    let metrics = match o.metrics.as_deref().map(MetricsServer::bind).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("weir: warning: metrics not served: {e:#}");
            None
        }
    };
    let started = Instant::now();
    eprint!("{}", plan.describe());
    eprintln!("weir: attached to {} in {} mode; Ctrl-C or SIGTERM detaches", iface.name, link.mode);
    let mode_s = link.mode.to_string();

    // Health checks: probers report, this loop decides and writes the maps.
    let health: RefCell<BTreeMap<u32, Health>> = RefCell::new(BTreeMap::new());
    let probers: RefCell<Option<(Checker, Receiver<HealthEvent>)>> = RefCell::new(None);
    let start_probers = |p: &Plan| {
        let targets = health_targets(p);
        let mut h = health.borrow_mut();
        let keep: BTreeMap<u32, Health> =
            targets.iter().map(|t| (t.backend_id, h.get(&t.backend_id).copied().unwrap_or_default())).collect();
        *h = keep;
        // The old probers stop (joined) before the new ones start.
        *probers.borrow_mut() = None;
        *probers.borrow_mut() = Some(Checker::start(targets));
    };
    start_probers(&plan);
    for id in &inherited_down {
        if let Some(h) = health.borrow_mut().get_mut(id) {
            *h = Health::down();
        }
    }
    let plan = RefCell::new(plan);
    // `weir trace` clients: tracing stays on while one is connected.
    let tracers: RefCell<Vec<std::os::unix::net::UnixStream>> = RefCell::new(Vec::new());
    let mut trace = |arg: &str, stream: &std::os::unix::net::UnixStream| -> Result<()> {
        if !tracers.borrow().is_empty() {
            bail!("another weir trace is running on this instance (they would share one ring buffer)");
        }
        let every: u32 = if arg.is_empty() { 1 } else { arg.parse().context("trace takes a sampling rate")? };
        let p = plan.borrow();
        let vips: BTreeMap<String, String> = p.vips.iter().map(|v| (v.id.to_string(), v.name.clone())).collect();
        let backends: BTreeMap<String, String> =
            p.vips.iter().flat_map(|v| v.backends.iter().map(|b| (b.id.to_string(), b.addr.to_string()))).collect();
        let body = serde_json::json!({ "ok": true, "vips": vips, "backends": backends }).to_string();
        weir::handoff::send_fds(stream, body.as_bytes(), &[dp.trace_ring_fd()])?;
        dp.set_trace(every.max(1))?;
        let s = stream.try_clone()?;
        s.set_nonblocking(true)?;
        tracers.borrow_mut().push(s);
        eprintln!("weir: tracing one packet in {} for a client", every.max(1));
        Ok(())
    };
    let last_sweep = std::cell::Cell::new(Instant::now());
    let mut tick = || {
        // NAT flows that timed out give their ports back (the reverse table
        // is a plain hash: full means "no port", never "evict a live flow").
        if last_sweep.get().elapsed() >= Duration::from_secs(2) {
            last_sweep.set(Instant::now());
            if let Err(e) = dp.sweep_nat(2) {
                eprintln!("weir: warning: sweeping expired NAT flows: {e:#}");
            }
        }
        if !tracers.borrow().is_empty() {
            let mut t = tracers.borrow_mut();
            t.retain(|s| {
                let mut b = [0u8; 1];
                matches!(std::io::Read::read(&mut &*s, &mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            if t.is_empty() {
                let _ = dp.set_trace(0);
                eprintln!("weir: tracing off");
            }
        }
        let events: Vec<HealthEvent> = probers.borrow().as_ref().map(|(_, rx)| rx.try_iter().collect()).unwrap_or_default();
        for ev in events {
            if let Err(e) = on_health_event(&dp, &plan.borrow(), &health, ev) {
                eprintln!("weir: warning: applying a health change: {e:#}");
            }
        }
    };
    let mut snapshot = || {
        let h = health.borrow();
        Snapshot::collect(&dp, &plan.borrow(), &iface.name, &mode_s, started, &|id| h.get(&id).map(|x| x.up))
    };
    let mut reload = || -> Result<String> {
        let cfg = Config::load(config)?;
        let new = Plan::build_after(&cfg, Some(&plan.borrow()))?;
        let (hops, tx) = next_hops(&new, &iface, &mut |ip, via, mode| resolve_mac(ip, &via.name, mode, Duration::from_secs(3)))?;
        // Down only if still checked: a backend whose check was removed is back.
        let checked: BTreeSet<u32> = health_targets(&new).iter().map(|t| t.backend_id).collect();
        let down: BTreeSet<u32> =
            health.borrow().iter().filter(|(id, h)| !h.up && checked.contains(id)).map(|(id, _)| *id).collect();
        let summary = dp.reload(&plan.borrow(), &new, &hops, &tx, &down)?;
        start_probers(&new);
        *plan.borrow_mut() = new;
        Ok(summary)
    };
    let mut handoff = |stream: &std::os::unix::net::UnixStream| -> Result<bool> {
        let maps = dp.shareable_maps();
        let names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
        let mut fds = vec![std::os::fd::AsRawFd::as_raw_fd(&link.fd())];
        fds.extend(maps.iter().map(|(_, fd)| *fd));
        let down: Vec<u32> = health.borrow().iter().filter(|(_, h)| !h.up).map(|(id, _)| *id).collect();
        let ids = weir::plan::PlanIds::of(&plan.borrow(), down);
        let body = serde_json::json!({ "maps": names, "mode": mode_s, "ids": ids }).to_string();
        weir::handoff::send_fds(stream, body.as_bytes(), &fds)?;
        // The successor swaps its program in, then says done.
        let mut s = stream;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        if String::from_utf8_lossy(&buf[..n]).trim() == "done" {
            eprintln!("weir: handed {} over to a new instance; exiting without detaching", iface.name);
            return Ok(true);
        }
        // It may have swapped its program in before failing: put ours back,
        // the one whose constants and trace switch this instance owns.
        weir::handoff::link_update(&link.fd().try_clone_to_owned()?, dp.prog_fd())?;
        eprintln!("weir: the new instance went away before taking over; still serving with our program");
        Ok(false)
    };
    let handed_over =
        serve_until_stopped(&control, metrics.as_ref(), interval, &mut snapshot, &mut tick, &mut reload, &mut handoff, &mut trace)?;
    if handed_over {
        // Free the socket path first (the successor waits for it), then the
        // rest. Our link fd closes, but the successor holds the link: it stays.
        drop(control);
        drop(link);
        return Ok(());
    }
    drop(link);
    eprintln!("weir: detached from {}", iface.name);
    Ok(())
}

/// Run until SIGINT/SIGTERM: serve snapshots, print them every `interval` s;
/// SIGHUP or `weir reload` calls `reload`.
fn serve_until_stopped(
    control: &ControlSocket,
    metrics: Option<&MetricsServer>,
    interval: u64,
    snapshot: &mut dyn FnMut() -> Result<Snapshot>,
    tick: &mut dyn FnMut(),
    reload: &mut dyn FnMut() -> Result<String>,
    handoff: &mut dyn FnMut(&std::os::unix::net::UnixStream) -> Result<bool>,
    trace: &mut dyn FnMut(&str, &std::os::unix::net::UnixStream) -> Result<()>,
) -> Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("installing the SIGINT handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).context("installing the SIGTERM handler")?;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()).context("installing the SIGHUP handler")?;
    let mut prev: Option<Snapshot> = None;
    let mut last_print = Instant::now();
    while !stop.load(Ordering::SeqCst) && !weir::control::STOP.load(Ordering::SeqCst) {
        tick();
        let mut logged_reload = || {
            let r = reload();
            match &r {
                Ok(summary) => eprintln!("weir: reloaded: {summary}"),
                Err(e) => eprintln!("weir: reload refused, the running config stays: {e:#}"),
            }
            r
        };
        if hup.swap(false, Ordering::SeqCst) {
            let _ = logged_reload();
        }
        if control.serve(snapshot, &mut logged_reload, handoff, trace) {
            return Ok(true);
        }
        if let Some(m) = metrics {
            m.serve(snapshot);
        }
        if interval > 0 && last_print.elapsed() >= Duration::from_secs(interval) {
            last_print = Instant::now();
            // A failed read or a closed stdout must not take the balancer down.
            match snapshot() {
                Ok(s) => {
                    let _ = writeln!(std::io::stdout(), "{}", s.render(prev.as_ref()));
                    prev = Some(s);
                }
                Err(e) => eprintln!("weir: warning: reading counters: {e:#}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

fn shield(o: &RunOpts) -> Result<()> {
    let (iface_name, config, mode, interval, allow_host_netns) =
        (o.iface.as_str(), o.config.as_str(), o.mode, o.interval, o.allow_host_netns);
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read config file {config}"))?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        shield: Option<weir::config::Shield>,
    }
    let f: File = toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {config}: {e}"))?;
    let sh = f.shield.with_context(|| format!("invalid config {config}: no [shield] section"))?;
    sh.validate().with_context(|| format!("invalid config {config}"))?;
    let iface = Iface::lookup(iface_name)?;
    if !allow_host_netns {
        refuse_host_netns(&format!("attach to {iface_name}"))?;
    }
    let sp = weir::shield::Standalone::load(&sh).with_context(|| format!("invalid config {config}"))?;
    let control = ControlSocket::bind(iface_name)?;
    let metrics = o.metrics.as_deref().map(MetricsServer::bind).transpose()?;
    let link = attach(sp.skel.progs.weir_shield.as_fd(), &iface, mode)?;
    let started = Instant::now();
    eprintln!(
        "weir shield: attached to {} in {} mode, protecting tcp ports {:?}; Ctrl-C or SIGTERM detaches",
        iface.name, link.mode, sh.ports
    );
    let mode_s = link.mode.to_string();
    let mut snapshot = || Snapshot::collect_shield(&sp, &sh.ports, &iface.name, &mode_s, started);
    let mut no_reload = || -> Result<String> { bail!("weir shield reads its config at start only: restart it") };
    let mut no_handoff = |_: &std::os::unix::net::UnixStream| -> Result<bool> {
        bail!("weir shield does not hand over; stop it first")
    };
    let mut no_trace = |_: &str, _: &std::os::unix::net::UnixStream| -> Result<()> {
        bail!("weir shield has no trace yet")
    };
    serve_until_stopped(&control, metrics.as_ref(), interval, &mut snapshot, &mut || {}, &mut no_reload, &mut no_handoff, &mut no_trace)?;
    drop(link);
    eprintln!("weir shield: detached from {}", iface.name);
    Ok(())
}

fn health_targets(p: &Plan) -> Vec<Target> {
    p.vips
        .iter()
        .flat_map(|v| {
            v.backends.iter().filter_map(move |b| {
                b.check.clone().map(|check| Target { vip_id: v.id, backend_id: b.id, addr: b.addr, check })
            })
        })
        .collect()
}

/// A probe result: update the backend's state; on a change, rebuild its
/// VIP's tables without the backends that are down (the spare half, then a
/// flip) and apply the VIP's policy for tracked flows.
fn on_health_event(dp: &Dataplane, plan: &Plan, health: &RefCell<BTreeMap<u32, Health>>, ev: HealthEvent) -> Result<()> {
    let vip = plan.vips.iter().find(|v| v.id == ev.vip_id).context("unknown VIP")?;
    let b = vip.backends.iter().find(|b| b.id == ev.backend_id).context("unknown backend")?;
    let Some(check) = &b.check else { return Ok(()) };
    let change = health
        .borrow_mut()
        .get_mut(&b.id)
        .and_then(|h| h.observe(ev.result.is_ok(), check.rise, check.fall));
    let Some(up) = change else { return Ok(()) };
    let down: BTreeSet<u32> = {
        let h = health.borrow();
        vip.backends.iter().filter(|x| h.get(&x.id).is_some_and(|s| !s.up)).map(|x| x.id).collect()
    };
    // Coming up: the backend entry before the tables that point at it.
    // Going down: the tables first, then its tracked flows per on_down.
    if up && vip.on_down == OnDown::Reschedule {
        dp.restore_backend(b.id)?;
    }
    let (ring, rr, _) = weir::plan::tables(&vip.backends, plan.table_size, &down);
    dp.write_tables(vip.id, &ring, &rr)?;
    if !up && vip.on_down == OnDown::Reschedule {
        dp.remove_backend(b.id)?;
    }
    match (&ev.result, up) {
        (Err(why), false) => eprintln!(
            "weir: backend {} of {} is DOWN after {} failed checks ({why}); {} backends left in rotation",
            b.addr,
            vip.name,
            check.fall,
            vip.backends.len() - down.len()
        ),
        _ => eprintln!("weir: backend {} of {} is UP after {} good checks; back in rotation", b.addr, vip.name, check.rise),
    }
    Ok(())
}

fn stats(iface: &str, json: bool, once: bool, interval: u64) -> Result<()> {
    let mut prev: Option<Snapshot> = None;
    loop {
        let s = fetch(iface)?;
        if json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            println!("{}", s.render(prev.as_ref()));
        }
        if once {
            return Ok(());
        }
        prev = Some(s);
        std::thread::sleep(Duration::from_secs(interval.max(1)));
    }
}

fn decap(iface_name: &str, allow_host_netns: bool) -> Result<()> {
    if !allow_host_netns {
        refuse_host_netns(&format!("attach the decapsulator to {iface_name}"))?;
    }
    let iface = Iface::lookup(iface_name)?;
    let holder = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
    let skel = weir::skel::decap::DecapSkelBuilder::default()
        .open(holder)
        .context("opening the decapsulator")?
        .load()
        .context("loading the decapsulator (run as root)")?;
    if iface.addrs.is_empty() {
        bail!("{iface_name} has no global address: the decapsulator opens only tunnels addressed to this host; add the backend's address first");
    }
    for a in &iface.addrs {
        let (key, map) = match a {
            std::net::IpAddr::V4(v) => (v.octets().to_vec(), &skel.maps.decap_v4),
            std::net::IpAddr::V6(v) => (v.octets().to_vec(), &skel.maps.decap_v6),
        };
        libbpf_rs::MapCore::update(map, &key, &[1], libbpf_rs::MapFlags::ANY)
            .with_context(|| format!("adding {a} to the decapsulator's addresses"))?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the signal handler")?;
    // A bpf_link: detached when it drops, on every exit path.
    let link = skel
        .progs
        .xdp_decap
        .attach_xdp(iface.ifindex as i32)
        .with_context(|| format!("attaching the decapsulator to {iface_name} (another XDP program there?)"))?;
    let addrs: Vec<String> = iface.addrs.iter().map(|a| a.to_string()).collect();
    eprintln!("weir decap: stripping IPIP / IP6IP6 addressed to {} on {iface_name}; Ctrl-C or SIGTERM detaches", addrs.join(", "));
    let _ = rx.recv();
    drop(link);
    eprintln!("weir decap: detached from {iface_name}");
    Ok(())
}

fn xdp_stub(iface_name: &str, detach: bool) -> Result<()> {
    refuse_host_netns("attach the XDP stub")?;
    let iface = Iface::lookup(iface_name)?;
    let holder = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
    let skel = weir::skel::trivial::TrivialSkelBuilder::default().open(holder)?.load()?;
    let xdp = Xdp::new(skel.progs.xdp_pass.as_fd());
    if detach {
        xdp.detach(iface.ifindex as i32, XdpFlags::DRV_MODE)
            .with_context(|| format!("detaching the XDP stub from {iface_name}"))?;
    } else {
        xdp.attach(iface.ifindex as i32, XdpFlags::DRV_MODE | XdpFlags::UPDATE_IF_NOEXIST)
            .with_context(|| format!("attaching the XDP stub to {iface_name} (native mode)"))?;
    }
    Ok(())
}
