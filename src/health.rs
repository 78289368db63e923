//! Health checks: one prober thread per checked backend, one probe per
//! interval (never a flood). A direct check goes from the balancer's own
//! network namespace to the backend's real address; a data-path check
//! (`health.via = "datapath"`) goes from the prober namespace
//! (src/probenet.rs) to the VIP, from a source port that names the backend,
//! and reaches it the way client packets do (bpf/probe.h). Results go to the
//! control loop, which owns the state machine and the maps.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
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
    let s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect {sa}: {e}"))?;
    converse(s, addr, c, deadline)
}

/// A data-path probe: like `probe`, to the VIP, from `from` (the probers'
/// address and this backend's port), on a thread inside the prober
/// namespace. Closed with a reset (SO_LINGER 0): no TIME_WAIT keeps the
/// port from the next probe.
pub fn probe_from(from: SocketAddr, vip: IpAddr, c: &Check) -> Result<(), String> {
    let timeout = Duration::from_millis(u64::from(c.timeout_ms));
    let deadline = Instant::now() + timeout;
    let sa = SocketAddr::new(vip, c.port);
    let s = connect_from(from, sa, timeout).map_err(|e| format!("connect {sa} from {from} (data path): {e}"))?;
    converse(s, vip, c, deadline)
}

fn connect_from(from: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let (SocketAddr::V4(f), SocketAddr::V4(t)) = (from, to) else {
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "data-path checks are IPv4 only"));
    };
    let last = std::io::Error::last_os_error;
    // SAFETY: a fresh socket, owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let set = |level, name, v: &[u8]| -> std::io::Result<()> {
        // SAFETY: valid fd, a buffer of the option's size.
        if unsafe { libc::setsockopt(raw, level, name, v.as_ptr().cast(), v.len() as libc::socklen_t) } != 0 {
            return Err(last());
        }
        Ok(())
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32.to_ne_bytes())?;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: linger is plain data.
    set(libc::SOL_SOCKET, libc::SO_LINGER, unsafe {
        std::slice::from_raw_parts((&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>())
    })?;
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let (fa, ta) = (sin(f), sin(t));
    // SAFETY: valid fd and sockaddr_in of the given length.
    if unsafe { libc::bind(raw, (&fa as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(last());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(raw, (&ta as *const libc::sockaddr_in).cast(), len) } != 0 {
        let e = last();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut p = libc::pollfd { fd: raw, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            return Err(last());
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"));
        }
        let mut err: libc::c_int = 0;
        let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, an int buffer.
        unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut l) };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

/// After the connect: a TCP check is done; an HTTP check asks and reads
/// the status line.
fn converse(mut s: TcpStream, addr: IpAddr, c: &Check, deadline: Instant) -> Result<(), String> {
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
    /// A data-path check: probe the VIP from the prober namespace.
    pub datapath: Option<Datapath>,
}

/// Where a data-path probe goes from.
#[derive(Clone)]
pub struct Datapath {
    /// The prober namespace (src/probenet.rs).
    pub netns: std::sync::Arc<OwnedFd>,
    /// The probers' address and this backend's port.
    pub from: SocketAddr,
    pub vip: IpAddr,
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
        // A data-path prober lives in the prober namespace.
        let entered = match &t.datapath {
            Some(d) => crate::probenet::enter(&d.netns).map_err(|e| format!("{e:#}")),
            None => Ok(()),
        };
        while !stop.load(Ordering::Relaxed) {
            let result = match (&t.datapath, &entered) {
                (_, Err(e)) => Err(e.clone()),
                (Some(d), Ok(())) => probe_from(d.from, d.vip, &t.check),
                (None, Ok(())) => probe(t.addr, &t.check),
            };
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
        Check { kind, port, path: "/hc".into(), expect: 200, interval_ms: 100, timeout_ms: 300, rise: 1, fall: 1, via: Default::default() }
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
