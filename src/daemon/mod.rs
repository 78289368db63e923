//! A running instance and the threads around it. One thread (the core)
//! owns the data plane and makes every decision: health changes, neighbour
//! changes, reloads, hand-over, NAT sweep. Everything that waits (clients of
//! the control socket and of /metrics, signals, health probes, neighbour
//! events, flow counting) waits on a thread of its own and talks to the core
//! through one channel, so no client can delay a health decision or SIGTERM.
//!
//! Plain threads, not an async runtime: the work is a handful of blocking
//! sources with tiny throughput, the BPF skeleton is not `Send` (so the
//! core must stay one thread anyway), and threads keep the static-pie build
//! and the dependency tree as they are.

pub mod instance;
pub mod neigh;
pub mod notify;
pub mod serve;
pub mod shield;

use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::stats::Snapshot;

/// What the core thread receives.
pub enum Msg {
    /// A probe result of health-check generation `.0`.
    Health(u64, crate::health::Event),
    /// A neighbour entry the instance follows, as the kernel has it now.
    Neighbour(crate::netlink::Neighbour),
    /// A request of a control-socket or metrics client, and where to answer.
    Request(Request, Sender<Reply>),
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
    /// The `weir trace` client went away.
    TraceClosed,
    /// The successor took over (true), or went away before it did.
    HandoffResult(bool),
}

pub enum Request {
    Snapshot,
    Reload,
    /// What a reload of this config file (None: the instance's own) would
    /// change, applying nothing.
    Diff(Option<String>),
    Stop,
    /// Withdraw the announcements, serve until no packet came for `quiet`
    /// (or `timeout` passed), then stop.
    Drain { timeout: Duration, quiet: Duration },
    Trace(u32),
    Handoff,
    /// Which backend this tuple goes to, and why (`weir lookup`).
    Lookup(crate::tier::lookup::Tuple),
}

pub enum Reply {
    Snapshot(Result<Snapshot, String>),
    /// A JSON body.
    Json(String),
    /// A JSON body and file descriptors (trace, hand-over).
    Fds(String, Vec<OwnedFd>),
}

/// What the control socket serves: `weir run`'s instance and the standalone
/// shield both.
pub trait Service {
    fn snapshot(&mut self) -> Result<Snapshot>;
    /// Re-read the config; a summary of what changed.
    fn reload(&mut self) -> Result<String>;
    /// What a reload of `config` (None: the instance's own file) would
    /// change, one line each; nothing is written.
    fn diff(&mut self, config: Option<&str>) -> Result<Vec<String>> {
        let _ = config;
        anyhow::bail!("this service has no reload diff")
    }
    /// Which backend `t` goes to on this node, and why: from the data
    /// plane's maps, by key lookups only (it runs on the core thread).
    fn lookup(&mut self, t: &crate::tier::lookup::Tuple) -> Result<crate::tier::lookup::Answer> {
        let _ = t;
        anyhow::bail!("this instance balances nothing (a standalone shield): there is no backend to look up")
    }
    /// Start tracing one packet in `every`: the body and the ring's fd.
    fn trace(&mut self, every: u32) -> Result<(String, Vec<OwnedFd>)>;
    fn trace_off(&mut self);
    /// The hand-over message and fds. The core writes nothing until
    /// `handoff_failed` (or exits).
    fn handoff(&mut self) -> Result<(String, Vec<OwnedFd>)>;
    fn handoff_failed(&mut self);
    /// A health or neighbour message.
    fn event(&mut self, m: Msg);
    /// Periodic work (NAT sweep), every 200 ms.
    fn tick(&mut self);
    /// Withdraw from the tier and stop once idle; what it will do, one line.
    fn drain(&mut self, timeout: Duration, quiet: Duration) -> Result<String> {
        let _ = (timeout, quiet);
        anyhow::bail!("this service does not drain: use weir stop")
    }
    /// A drain finished: the core stops.
    fn done(&self) -> bool {
        false
    }
}

/// How the core loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SIGINT / SIGTERM / `weir stop`: detach.
    Stopped,
    /// A successor holds the link now: exit without detaching.
    HandedOver,
}

/// Snapshots are reused this long (a burst of scrapes costs one read).
const SNAPSHOT_TTL: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_millis(200);

fn log_reload(r: &Result<String>) {
    match r {
        Ok(summary) => tracing::info!("reloaded: {summary}"),
        Err(e) => tracing::warn!("reload refused, the running config stays: {e:#}"),
    }
}

/// The core loop: run until stopped or handed over. `interval` > 0 prints
/// the stats table that often (on a printer thread: a stuck stdout stalls
/// nothing).
pub fn run_core(svc: &mut dyn Service, rx: &Receiver<Msg>, interval: u64) -> Outcome {
    let printer = (interval > 0).then(serve::printer);
    let mut last_print = Instant::now();
    let mut cached: Option<(Instant, Snapshot)> = None;
    let mut next_tick = Instant::now() + TICK;
    let mut handing_over = false;
    let mut deferred: Vec<Msg> = Vec::new();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Signal(sig)) if sig == libc::SIGHUP => {
                if handing_over {
                    tracing::warn!("SIGHUP during a hand-over: ignored");
                } else {
                    notify::reloading();
                    let r = svc.reload();
                    log_reload(&r);
                    cached = None;
                    notify::ready(r.as_ref().err().map(|e| format!("{e:#}")).as_deref());
                }
            }
            Ok(Msg::Signal(_)) => return Outcome::Stopped,
            Ok(Msg::Request(req, reply)) => match req {
                Request::Snapshot => {
                    if cached.as_ref().is_none_or(|(t, _)| t.elapsed() > SNAPSHOT_TTL) {
                        cached = svc.snapshot().ok().map(|s| (Instant::now(), s));
                    }
                    let r = match &cached {
                        Some((_, s)) => Ok(s.clone()),
                        None => svc.snapshot().map_err(|e| format!("{e:#}")),
                    };
                    let _ = reply.send(Reply::Snapshot(r));
                }
                Request::Reload => {
                    let r = if handing_over {
                        Err(anyhow::anyhow!("a hand-over is in progress"))
                    } else {
                        notify::reloading();
                        let r = svc.reload();
                        notify::ready(None);
                        r
                    };
                    log_reload(&r);
                    cached = None;
                    let body = match r {
                        Ok(s) => serde_json::json!({ "ok": s }),
                        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                    };
                    let _ = reply.send(Reply::Json(body.to_string()));
                }
                Request::Diff(config) => {
                    let body = match svc.diff(config.as_deref()) {
                        Ok(lines) => serde_json::json!({ "ok": lines }),
                        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                    };
                    let _ = reply.send(Reply::Json(body.to_string()));
                }
                Request::Lookup(t) => {
                    let body = match svc.lookup(&t) {
                        Ok(a) => serde_json::json!({ "ok": a }),
                        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                    };
                    let _ = reply.send(Reply::Json(body.to_string()));
                }
                Request::Stop => {
                    let _ = reply.send(Reply::Json(r#"{"ok":"stopping"}"#.into()));
                    return Outcome::Stopped;
                }
                Request::Drain { timeout, quiet } => {
                    let body = match if handing_over { Err(anyhow::anyhow!("a hand-over is in progress")) } else { svc.drain(timeout, quiet) } {
                        Ok(s) => serde_json::json!({ "ok": s }),
                        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                    };
                    let _ = reply.send(Reply::Json(body.to_string()));
                }
                Request::Trace(every) => {
                    let r = match svc.trace(every) {
                        Ok((body, fds)) => Reply::Fds(body, fds),
                        Err(e) => Reply::Fds(serde_json::json!({ "error": format!("{e:#}") }).to_string(), Vec::new()),
                    };
                    let _ = reply.send(r);
                }
                Request::Handoff => {
                    let r = match if handing_over { Err(anyhow::anyhow!("a hand-over is in progress")) } else { svc.handoff() } {
                        Ok((body, fds)) => {
                            handing_over = true;
                            Reply::Fds(body, fds)
                        }
                        Err(e) => {
                            tracing::warn!("hand-over failed, still serving: {e:#}");
                            Reply::Fds(serde_json::json!({ "error": format!("{e:#}") }).to_string(), Vec::new())
                        }
                    };
                    let _ = reply.send(r);
                }
            },
            Ok(Msg::TraceClosed) => svc.trace_off(),
            Ok(Msg::HandoffResult(true)) => return Outcome::HandedOver,
            Ok(Msg::HandoffResult(false)) => {
                svc.handoff_failed();
                handing_over = false;
                for m in deferred.drain(..) {
                    svc.event(m);
                }
            }
            Ok(m) if handing_over => deferred.push(m),
            Ok(m) => svc.event(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Outcome::Stopped,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            if !handing_over {
                svc.tick();
                if svc.done() {
                    return Outcome::Stopped;
                }
            }
            if let Some(p) = &printer {
                if last_print.elapsed() >= Duration::from_secs(interval) {
                    last_print = Instant::now();
                    match svc.snapshot() {
                        Ok(s) => {
                            let _ = p.try_send(s);
                        }
                        Err(e) => tracing::warn!("reading counters: {e:#}"),
                    }
                }
            }
        }
    }
}
