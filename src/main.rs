//! weir: parse the command line, build the thing, run it.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Xdp, XdpFlags};

use weir::attach::AttachMode;
use weir::config::Config;
use weir::control::fetch;
use weir::net::{refuse_host_netns, Iface};
use weir::plan::Plan;
use weir::stats::Snapshot;

#[derive(Parser)]
#[command(name = "weir", version, about = "XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Least severe log level shown: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: tracing::Level,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs through `tracing` to stderr: text ("weir: LEVEL message", the
/// journal adds the time) or JSON lines with a timestamp.
fn init_logs(format: LogFormat, level: tracing::Level) {
    let b = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.without_time().with_ansi(false).event_format(TextFormat).init(),
    }
}

struct TextFormat;
impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for TextFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        ev: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *ev.metadata().level();
        let tag = match level {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(w, "weir: {tag}")?;
        ctx.field_format().format_fields(w.by_ref(), ev)?;
        writeln!(w)
    }
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
    /// Serve Prometheus metrics on ADDR (127.0.0.1:9477 when given bare); an
    /// address that cannot be bound stops the start.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9477")]
    metrics: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the balancer, fill its maps from the config and attach it until Ctrl-C / SIGTERM.
    /// Backends' MACs follow the kernel's neighbour table; one without a MAC
    /// starts down (unresolved) and joins when it resolves.
    Run(RunOpts),
    /// The SYN-flood shield alone, in front of local TCP ports ([shield] ports).
    Shield(RunOpts),
    /// Validate a config and print the plan, with each backend's Maglev
    /// share, and the kernel memory its maps will hold (per map and per
    /// tracked flow).
    Check {
        #[arg(required_unless_present = "config_flag", conflicts_with = "config_flag")]
        config: Option<String>,
        /// The config file, as other commands take it (same as the argument).
        #[arg(long = "config", id = "config_flag", value_name = "CONFIG")]
        config_flag: Option<String>,
    },
    /// Make a running `weir run` re-read its config and apply the difference
    /// without detaching (as SIGHUP to it does). A bad config is refused,
    /// nothing of it is written, the running one stays, and this command
    /// exits non-zero (systemd's ExecReload).
    Reload {
        #[arg(long)]
        iface: String,
        /// Print what the reload would change (VIPs and backends added and
        /// removed, weight changes, drains, the share of Maglev slots that
        /// move) and apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: compare this file instead of the instance's own.
        #[arg(long, requires = "dry_run")]
        config: Option<String>,
    },
    /// Detach the instance on IFACE (this namespace) and make it exit.
    Stop {
        #[arg(long)]
        iface: String,
    },
    /// Leave a tier without a reset: withdraw the instance's announcements
    /// (tier.announce), keep serving the packets that still come (flows the
    /// router has not moved yet, NAT replies) until none came for --quiet or
    /// --timeout passed, then detach and exit.
    Drain {
        #[arg(long)]
        iface: String,
        /// Stop after this many seconds however busy.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Stop once no packet was forwarded for this many seconds.
        #[arg(long, default_value_t = 2)]
        quiet: u64,
        /// Return only once the instance has stopped.
        #[arg(long)]
        wait: bool,
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
        /// Only this verdict: pass, drop, tx, redirect, aborted.
        #[arg(long, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(weir::tracecli::ACTIONS), |s: String| s), ignore_case = true)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List running instances (every namespace): interface, XDP mode, uptime,
    /// VIPs, flows, and the config and live fingerprints (equal on every
    /// node of a tier that agrees on new flows).
    Status,
    /// Which backend a client's packet goes to on this node, and why: a
    /// tracked flow, or the Maglev / source-hash slot a new flow hashes to,
    /// or the round-robin turn. Asks the running instance (its maps), or
    /// with --config answers from a config with every backend up.
    Lookup {
        /// The instance to ask (default: the only one in this namespace).
        #[arg(long, conflicts_with = "config")]
        iface: Option<String>,
        /// Answer from this config's plan, every backend up; no instance needed.
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        json: bool,
        /// tcp or udp.
        proto: String,
        /// The client's ADDRESS:PORT (IPv6 as [ADDRESS]:PORT).
        src: String,
        /// The VIP's ADDRESS:PORT as the client sends to it.
        dst: String,
    },
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
        /// Also measure CPU scaling: each scaling path from one thread
        /// pinned to one CPU, then from N threads pinned to N CPUs at once.
        #[arg(long, value_name = "N")]
        cpus: Option<usize>,
        /// Calls per thread of the CPU scaling rows.
        #[arg(long, default_value_t = 50_000)]
        cpu_calls: usize,
        /// Only compare: run OLD_BINARY's per-packet suite and this one's
        /// alternately (--compare-runs each, --calls per path) and show per
        /// row old and new net ns and their ratio (median, min-max).
        #[arg(long, value_name = "OLD_BINARY")]
        compare: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 5)]
        compare_runs: usize,
        /// Batches of the precise rows (in-kernel loop, --calls runs each).
        #[arg(long, default_value_t = 5)]
        batches: usize,
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
    let cli = Cli::parse();
    init_logs(cli.log_format, cli.log_level);
    // libbpf's own messages (the verifier log too) go to the log at debug
    // level: weir's error says what failed, without libbpf's hints first.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |lvl, msg| match lvl {
        libbpf_rs::PrintLevel::Warn => tracing::debug!("libbpf: {}", msg.trim_end()),
        _ => tracing::trace!("libbpf: {}", msg.trim_end()),
    })));
    if matches!(cli.cmd, Cmd::Status | Cmd::Check { .. } | Cmd::Lookup { .. } | Cmd::Man | Cmd::Bench { .. }) {
        // Tools that print: a closed stdout (`| head`) ends them quietly,
        // as it does cat. (`run` keeps ignoring SIGPIPE: a closed stdout
        // must not take the balancer down.)
        // SAFETY: setting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.cmd {
        Cmd::Run(o) => weir::daemon::instance::run(&o.options()),
        Cmd::Shield(o) => weir::daemon::shield::run(&o.options()),
        Cmd::Reload { iface, dry_run: true, config } => {
            let lines = weir::control::reload_diff(&iface, config.as_deref())?;
            if lines.is_empty() {
                println!("no change");
            }
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
        Cmd::Reload { iface, .. } => {
            println!("reloaded: {}", weir::control::reload(&iface)?);
            Ok(())
        }
        Cmd::Drain { iface, timeout, quiet, wait } => {
            let said = weir::control::drain(&iface, Duration::from_secs(timeout), Duration::from_secs(quiet), wait)?;
            if wait {
                println!("weir on {iface} drained and stopped ({said})");
            } else {
                println!("weir on {iface}: {said}");
            }
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
                let ns = weir::control::netns_name(i.netns_inode);
                match i.snapshot {
                    Ok(s) => println!(
                        "{:<16} netns {:<12} {:<6} up {:>7.0}s  {} VIPs  {} flows{}{}",
                        i.iface,
                        ns,
                        s.xdp_mode,
                        s.uptime_s,
                        s.vips.len(),
                        s.flows_tracked,
                        if s.shield.is_empty() { "" } else { "  shield" },
                        s.fingerprint.map(|f| format!("  fingerprint config {} live {}", f.config, f.live)).unwrap_or_default()
                    ),
                    Err(e) => println!("{:<16} netns {:<12} {e:#}", i.iface, ns),
                }
            }
            Ok(())
        }
        Cmd::Check { config, config_flag } => {
            let config = config.or(config_flag).context("name the config file")?;
            let cfg = Config::load(&config)?;
            let plan = Plan::build(&cfg)?;
            print!("{}", plan.describe());
            // Sized as `weir run` sizes it; the interface's MAC, MTU and
            // addresses size nothing.
            let iface = weir::net::Iface::unattached("check", [0; 6]);
            let settings = weir::dataplane::Settings::for_plan(&plan, &iface);
            print!("{}", weir::dataplane::memory_plan(&settings)?.text());
            println!("fingerprint: {}", weir::tier::fingerprint::config(&plan));
            println!("config OK");
            Ok(())
        }
        Cmd::Stats { iface, json, once, interval } => stats(&iface, json, once, interval),
        Cmd::Lookup { iface, config, json, proto, src, dst } => {
            let t = weir::tier::lookup::Tuple::parse(&proto, &src, &dst)?;
            let a = match config {
                Some(c) => weir::tier::lookup::offline(&Plan::build(&Config::load(&c)?)?, &t),
                None => weir::control::lookup(&iface.map_or_else(weir::control::only_iface, Ok)?, &t)?,
            };
            println!("{}", if json { serde_json::to_string(&a)? } else { a.text() });
            Ok(())
        }
        Cmd::Bench { calls, json, compare: Some(old), compare_runs, .. } => {
            let c = weir::bench::compare::run(&old, calls, compare_runs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.render());
            }
            Ok(())
        }
        Cmd::Bench { calls, repeats, json, live, live_packets, svg, cpus, cpu_calls, compare: None, batches, .. } => {
            if let Some(n) = cpus {
                weir::bench::cpus::check(n, cpu_calls)?;
            }
            let runs = u32::try_from(calls).context("--calls: at most 4294967295")?;
            weir::bench::precise::check(runs, batches)?;
            let r = weir::bench::run(calls, repeats)?;
            let p = weir::bench::precise::run(runs, batches)?;
            let l = if live { Some(weir::bench::live::run(live_packets, repeats)?) } else { None };
            let sc = cpus.map(|n| weir::bench::cpus::run(n, cpu_calls, repeats)).transpose()?;
            let cp = weir::bench::control_plane(true)?;
            if json {
                let v = serde_json::json!({ "per_packet": r, "precise": p, "throughput": l, "cpu_scaling": sc, "control_plane": cp });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", r.render());
                print!("\n{}", p.render());
                if let Some(l) = &l {
                    print!("\n{}", l.render());
                }
                if let Some(sc) = &sc {
                    print!("\n{}", sc.render());
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

impl RunOpts {
    fn options(&self) -> weir::daemon::instance::Options {
        weir::daemon::instance::Options {
            iface: self.iface.clone(),
            config: self.config.clone(),
            mode: self.mode,
            interval: self.interval,
            allow_host_netns: self.allow_host_netns,
            metrics: self.metrics.clone(),
        }
    }
}

fn stats(iface: &str, json: bool, once: bool, interval: u64) -> Result<()> {
    let mut prev: Option<Snapshot> = None;
    loop {
        let s = fetch(iface)?;
        let text = if json { serde_json::to_string(&s)? } else { s.render(prev.as_ref()) };
        if let Err(e) = writeln!(std::io::stdout(), "{text}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(()); // `weir stats | head`
            }
            return Err(e).context("writing to stdout");
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
