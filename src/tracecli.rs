//! `weir trace`: print a running instance's sampled packet events.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapHandle, RingBufferBuilder};

use crate::skel::{from_bytes, stat_name, TraceEvent, FAMILY_V4, NO_BACKEND};

pub struct Options {
    pub iface: String,
    pub every: u32,
    pub count: u64,
    pub seconds: u64,
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub action: Option<String>,
    pub json: bool,
}

fn addr(words: &[u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

pub fn action_name(a: u8) -> &'static str {
    match a {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

pub fn flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(0x02, 'S'), (0x10, '.'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    s
}

fn map_id(fd: &OwnedFd) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("map_id:").map(|v| v.trim().parse()))
        .context("the fd is not a BPF map")?
        .context("bad map_id")
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A UTC wall-clock time, RFC 3339 with microseconds, of `ns` since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000 / 1000
    )
}

/// The verdicts `--action` takes.
pub const ACTIONS: [&str; 5] = ["pass", "drop", "tx", "redirect", "aborted"];

pub fn run(o: &Options) -> Result<()> {
    if let Some(a) = &o.action {
        if !ACTIONS.contains(&a.to_lowercase().as_str()) {
            anyhow::bail!("--action {}: not a verdict (one of {})", crate::config::esc(a), ACTIONS.join(", "));
        }
    }
    // Events from before this trace (a ring buffer a former trace left
    // unread) are not this trace's.
    let since = clock_ns(libc::CLOCK_MONOTONIC);
    // Event times are CLOCK_MONOTONIC (bpf_ktime_get_ns): shown as wall-clock time.
    let wall_offset = clock_ns(libc::CLOCK_REALTIME).saturating_sub(since);
    let (fd, names, _keepalive) = crate::control::trace(&o.iface, o.every.max(1))?;
    let ring = MapHandle::from_map_id(map_id(&fd)?).context("opening the trace ring buffer")?;
    let seen = RefCell::new(0u64);
    let closed = RefCell::new(false);
    let want_action = o.action.as_ref().map(|a| a.to_uppercase());
    let mut b = RingBufferBuilder::new();
    b.add(&ring, |data: &[u8]| {
        if o.count > 0 && *seen.borrow() >= o.count {
            return 0;
        }
        let Ok(e) = from_bytes::<TraceEvent>(data) else { return 0 };
        if e.ts_ns < since {
            return 0;
        }
        let time = rfc3339(e.ts_ns + wall_offset);
        let (src, dst) = (addr(&e.key.src, e.key.family), addr(&e.key.dst, e.key.family));
        let (sport, dport) = (u16::from_be(e.key.sport), u16::from_be(e.key.dport));
        if o.host.is_some_and(|h| h != src && h != dst) || o.port.is_some_and(|p| p != sport && p != dport) {
            return 0;
        }
        let act = action_name(e.action);
        if want_action.as_deref().is_some_and(|w| w != act) {
            return 0;
        }
        let proto = match e.key.proto {
            6 => "tcp",
            17 => "udp",
            0 => "-",
            _ => "ip",
        };
        let reason = if e.reason == 0 { "-".to_string() } else { stat_name(e.reason as usize).to_string() };
        let lookup = |table: &str, id: u32| {
            if id == NO_BACKEND {
                "-".to_string()
            } else {
                names[table][id.to_string()].as_str().unwrap_or("?").to_string()
            }
        };
        let (vip, backend) = (lookup("vips", e.vip_id), lookup("backends", e.backend_id));
        let line = if o.json {
            serde_json::json!({
                "time": time, "ts_ns": e.ts_ns, "src": src.to_string(), "sport": sport, "dst": dst.to_string(), "dport": dport,
                "proto": proto, "flags": flags(e.tcp_flags), "action": act, "reason": reason,
                "vip": vip, "backend": backend, "len": e.len,
            })
            .to_string()
        } else {
            format!(
                "{} {src}:{sport} > {dst}:{dport} {proto} [{}] {act} reason={reason} vip={vip} backend={backend} len={}",
                &time[11..time.len() - 1],
                flags(e.tcp_flags),
                e.len
            )
        };
        use std::io::Write as _;
        if writeln!(std::io::stdout(), "{line}").is_err() {
            *closed.borrow_mut() = true; // stdout closed (| head): done
            return -1;
        }
        *seen.borrow_mut() += 1;
        0
    })?;
    let rb = b.build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("installing the SIGINT handler")?;
    let start = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let r = rb.poll(Duration::from_millis(100));
        if *closed.borrow() {
            break;
        }
        r?;
        if o.count > 0 && *seen.borrow() >= o.count {
            break;
        }
        if o.seconds > 0 && start.elapsed() >= Duration::from_secs(o.seconds) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_764_666_000_123_456_789), "2025-12-02T09:00:00.123456Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn tcp_flags_and_actions_read_like_tcpdump() {
        assert_eq!(flags(0x02), "S");
        assert_eq!(flags(0x12), "S.");
        assert_eq!(flags(0x11), ".F");
        assert_eq!(flags(0x04), "R");
        assert_eq!(action_name(3), "TX");
        assert_eq!(action_name(2), "PASS");
    }

    #[test]
    fn addresses_decode_from_the_key_words() {
        let mut w = [0u32; 4];
        w[0] = u32::from_ne_bytes([198, 18, 0, 1]);
        assert_eq!(addr(&w, FAMILY_V4), "198.18.0.1".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "2001:2::11".parse().unwrap();
        let o = v6.octets();
        let w6 = [0, 1, 2, 3].map(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]));
        assert_eq!(addr(&w6, 6), IpAddr::V6(v6));
    }
}
