//! Health checks: one prober thread per checked backend, from the
//! balancer's own network namespace toward the backend's real address,
//! one probe per interval (never a flood). Results go to the control loop,
//! which owns the state machine and the maps.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Check, CheckKind};

/// rise / fall state of one backend. Starts up: a fresh balancer must not
/// refuse traffic while the first `rise` probes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    streak: u32,
    /// A check has passed since the backend was configured (or the state
    /// was inherited from a running instance): announcing waits for it.
    pub proven: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health { up: true, streak: 0, proven: false }
    }
}

impl Health {
    /// A backend known to be down (inherited at a hand-over).
    pub fn down() -> Health {
        Health { up: false, streak: 0, proven: false }
    }

    /// Record a probe; `Some(new_state)` when the backend changes state.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        self.proven |= ok;
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if self.up { fall } else { rise };
        if self.streak >= need {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// One probe: Ok, or why it failed.
pub fn probe(addr: IpAddr, c: &Check) -> Result<(), String> {
    let timeout = Duration::from_millis(u64::from(c.timeout_ms));
    let deadline = Instant::now() + timeout;
    let sa = SocketAddr::new(addr, c.port);
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect {sa}: {e}"))?;
    if c.kind != CheckKind::Http {
        return Ok(());
    }
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_write_timeout(Some(left())).ok();
    let host = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let req = format!("GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: weir-health\r\nConnection: close\r\n\r\n", c.path);
    s.write_all(req.as_bytes()).map_err(|e| format!("sending request: {e}"))?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        s.set_read_timeout(Some(left())).ok();
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading the status line: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let code: Option<u16> = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    match code {
        Some(c2) if line.starts_with("HTTP/") && c2 == c.expect => Ok(()),
        Some(c2) => Err(format!("HTTP status {c2}, expected {}", c.expect)),
        None => Err(format!("no HTTP status line ({:?})", line.trim_end())),
    }
}

pub struct Target {
    pub vip_id: u32,
    pub backend_id: u32,
    pub addr: IpAddr,
    pub check: Check,
}

#[derive(Debug)]
pub struct Event {
    pub vip_id: u32,
    pub backend_id: u32,
    pub result: Result<(), String>,
}

/// The prober threads; stopped and joined on drop.
pub struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Checker {
    pub fn start(targets: Vec<Target>) -> (Checker, Receiver<Event>) {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = targets.into_iter().map(|t| spawn(t, tx.clone(), stop.clone())).collect();
        (Checker { stop, threads }, rx)
    }
}

fn spawn(t: Target, tx: Sender<Event>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let interval = Duration::from_millis(u64::from(t.check.interval_ms));
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let result = probe(t.addr, &t.check);
            if tx.send(Event { vip_id: t.vip_id, backend_id: t.backend_id, result }).is_err() {
                return;
            }
            next += interval;
            // Sleep in short steps so a stop is prompt.
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(next.saturating_duration_since(Instant::now())));
            }
            if Instant::now() > next + interval {
                next = Instant::now(); // fell behind (slow probe): no burst to catch up
            }
        }
    })
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Health::default();
        assert!(h.up);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None, "a success resets the failure streak");
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert!(!h.up);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
        assert!(h.up);
    }

    fn check(kind: CheckKind, port: u16) -> Check {
        Check { kind, port, path: "/hc".into(), expect: 200, interval_ms: 100, timeout_ms: 300, rise: 1, fall: 1 }
    }

    #[test]
    fn tcp_and_http_probes_against_a_local_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (i, s) in l.incoming().take(3).enumerate() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let status = if i == 1 { "HTTP/1.0 200 OK" } else { "HTTP/1.0 503 Busy" };
                let _ = s.write_all(format!("{status}\r\n\r\n").as_bytes());
            }
        });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(probe(lo, &check(CheckKind::Tcp, port)), Ok(()));
        assert_eq!(probe(lo, &check(CheckKind::Http, port)), Ok(()));
        let e = probe(lo, &check(CheckKind::Http, port)).unwrap_err();
        assert!(e.contains("HTTP status 503, expected 200"), "{e}");
        server.join().unwrap();
        // Nobody listens there now.
        let e = probe(lo, &check(CheckKind::Tcp, port)).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
