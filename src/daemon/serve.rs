//! The threads that wait for the outside world: the control socket and
//! /metrics (a thread per client, a bounded number of clients, every read
//! and write with a deadline), signals, and the stats printer.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Msg, Reply, Request};
use crate::stats::Snapshot;

/// Clients served at once per listener; more are closed at once (a client
/// of the control socket then sees "connection reset" and may retry).
pub const MAX_CLIENTS: usize = 512;
/// A client must send its command (or HTTP request head) within this time.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
const STACK: usize = 256 * 1024;

/// A counted slot: freed when dropped.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
fn take_slot(n: &Arc<AtomicUsize>) -> Option<Slot> {
    if n.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
        n.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    Some(Slot(n.clone()))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new().name(name.into()).stack_size(STACK).spawn(f).context("starting a thread")?;
    Ok(())
}

/// Ask the core; None when it does not answer within `wait` (stopping).
fn ask(core: &Sender<Msg>, req: Request, wait: Duration) -> Option<Reply> {
    let (tx, rx) = channel();
    core.send(Msg::Request(req, tx)).ok()?;
    rx.recv_timeout(wait).ok()
}

/// Signals become messages to the core (SIGINT / SIGTERM: stop; SIGHUP: reload).
pub fn signals(core: Sender<Msg>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut sigs = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    spawn("weir-signals", move || {
        for s in sigs.forever() {
            if core.send(Msg::Signal(s)).is_err() {
                return;
            }
        }
    })
}

/// Prints snapshots as they come; drops them while the last is being printed.
pub fn printer() -> SyncSender<Snapshot> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Snapshot>(1);
    let _ = spawn("weir-printer", move || {
        let mut prev: Option<Snapshot> = None;
        for s in rx {
            // A closed stdout must not take the balancer down.
            let _ = writeln!(std::io::stdout(), "{}", s.render(prev.as_ref()));
            prev = Some(s);
        }
    });
    tx
}

/// Accept control-socket clients, each on a thread of its own.
pub fn control(listener: UnixListener, core: Sender<Msg>) -> Result<()> {
    listener.set_nonblocking(false)?;
    let busy = Arc::new(AtomicUsize::new(0));
    spawn("weir-control", move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let Some(slot) = take_slot(&busy) else { continue };
            let core = core.clone();
            let _ = spawn("weir-control-client", move || {
                let _slot = slot;
                control_client(s, &core);
            });
        }
    })
}

/// Read one command line within the deadline, however slowly it comes.
fn read_command(s: &mut UnixStream) -> Option<String> {
    let end = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(64);
    let mut b = [0u8; 64];
    // A verb and at most a path: 4 KiB.
    while buf.len() < 4096 && !buf.contains(&b'\n') {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(_) => return None,
        }
    }
    let line = buf.split(|c| *c == b'\n').next().unwrap_or(&[]);
    Some(String::from_utf8_lossy(line).trim().to_string())
}

fn control_client(mut s: UnixStream, core: &Sender<Msg>) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let Some(cmd) = read_command(&mut s) else { return };
    let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
    let mutating = matches!(verb, "reload" | "stop" | "drain" | "handoff" | "trace");
    if mutating && !crate::control::may_mutate(&s) {
        let body = serde_json::json!({ "error": format!("{verb}: permission denied (root or the instance's own user only)") });
        let _ = if verb == "trace" || verb == "handoff" {
            crate::fdpass::send_fds(&s, body.to_string().as_bytes(), &[]).map_err(|_| ())
        } else {
            s.write_all(body.to_string().as_bytes()).map_err(|_| ())
        };
        return;
    }
    match verb {
        "" | "stats" => {
            let body = match ask(core, Request::Snapshot, Duration::from_secs(5)) {
                Some(Reply::Snapshot(Ok(snap))) => serde_json::to_string(&snap).unwrap_or_default(),
                Some(Reply::Snapshot(Err(e))) => serde_json::json!({ "error": e }).to_string(),
                _ => serde_json::json!({ "error": "the instance is stopping" }).to_string(),
            };
            let _ = s.write_all(body.as_bytes());
        }
        "diff" => {
            let config = Some(arg.trim()).filter(|a| !a.is_empty()).map(str::to_string);
            let body = match ask(core, Request::Diff(config), Duration::from_secs(60)) {
                Some(Reply::Json(b)) => b,
                _ => serde_json::json!({ "error": "the instance did not answer" }).to_string(),
            };
            let _ = s.write_all(body.as_bytes());
        }
        "lookup" => {
            let body = match crate::tier::lookup::Tuple::parse_words(arg) {
                Ok(t) => match ask(core, Request::Lookup(t), Duration::from_secs(5)) {
                    Some(Reply::Json(b)) => b,
                    _ => serde_json::json!({ "error": "the instance did not answer" }).to_string(),
                },
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            };
            let _ = s.write_all(body.as_bytes());
        }
        "reload" | "stop" => {
            let req = if verb == "reload" { Request::Reload } else { Request::Stop };
            let body = match ask(core, req, Duration::from_secs(60)) {
                Some(Reply::Json(b)) => b,
                _ => serde_json::json!({ "error": "the instance did not answer" }).to_string(),
            };
            let _ = s.write_all(body.as_bytes());
        }
        "drain" => {
            let ms: Vec<u64> = arg.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let body = match ms[..] {
                [t, q] => {
                    let req = Request::Drain { timeout: Duration::from_millis(t), quiet: Duration::from_millis(q) };
                    match ask(core, req, Duration::from_secs(10)) {
                        Some(Reply::Json(b)) => b,
                        _ => serde_json::json!({ "error": "the instance did not answer" }).to_string(),
                    }
                }
                _ => serde_json::json!({ "error": "drain takes a timeout and a quiet time in ms" }).to_string(),
            };
            let _ = s.write_all(body.as_bytes());
        }
        "trace" => {
            let every = if arg.trim().is_empty() { Ok(1) } else { arg.trim().parse::<u32>() };
            let Ok(every) = every else {
                let body = serde_json::json!({ "error": "trace takes a sampling rate" }).to_string();
                let _ = crate::fdpass::send_fds(&s, body.as_bytes(), &[]);
                return;
            };
            let Some(Reply::Fds(body, fds)) = ask(core, Request::Trace(every.max(1)), Duration::from_secs(5)) else { return };
            let on = !fds.is_empty();
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let sent = crate::fdpass::send_fds(&s, body.as_bytes(), &raw).is_ok();
            drop(fds);
            if on {
                // Tracing stays on while the client's stream is open.
                if sent {
                    let _ = s.set_read_timeout(None);
                    let mut b = [0u8; 64];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                }
                let _ = core.send(Msg::TraceClosed);
            }
        }
        "handoff" => {
            let Some(Reply::Fds(body, fds)) = ask(core, Request::Handoff, Duration::from_secs(10)) else { return };
            let on = !fds.is_empty();
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let sent = crate::fdpass::send_fds(&s, body.as_bytes(), &raw).is_ok();
            drop(fds);
            if !on {
                return;
            }
            // The successor swaps its program in, then says done.
            let mut done = false;
            if sent {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).unwrap_or(0);
                done = String::from_utf8_lossy(&buf[..n]).trim() == "done";
            }
            let _ = core.send(Msg::HandoffResult(done));
            if done {
                // The successor waits for this stream to close: it closes
                // when this process exits.
                std::mem::forget(s);
            }
        }
        other => {
            let body = serde_json::json!({ "error": format!("unknown command '{}'", other.escape_debug()) }).to_string();
            let _ = s.write_all(body.as_bytes());
        }
    }
}

/// Accept scrapers, each on a thread of its own.
pub fn metrics(listener: TcpListener, core: Sender<Msg>) -> Result<()> {
    listener.set_nonblocking(false)?;
    let busy = Arc::new(AtomicUsize::new(0));
    spawn("weir-metrics", move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let Some(slot) = take_slot(&busy) else { continue };
            let core = core.clone();
            let _ = spawn("weir-metrics-client", move || {
                let _slot = slot;
                crate::metrics::answer(&mut s, REQUEST_DEADLINE, &mut || match ask(&core, Request::Snapshot, Duration::from_secs(5)) {
                    Some(Reply::Snapshot(r)) => r.map_err(|e| anyhow::anyhow!(e)),
                    _ => Err(anyhow::anyhow!("the instance is stopping")),
                });
            });
        }
    })
}
