//! Prometheus text exposition (format 0.0.4) of a snapshot, served on a
//! plain TCP listener (no extra crate: one small GET handler is all a
//! scraper needs); `weir run` answers each scrape on a thread of its own.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::stats::Snapshot;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    fn family(o: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    family(&mut o, "weir_up_seconds", "gauge", "Seconds since this instance attached.");
    let _ = writeln!(o, "weir_up_seconds{{iface=\"{}\"}} {:.3}", esc(&s.iface), s.uptime_s);
    family(&mut o, "weir_flows_tracked", "gauge", "Entries in the flow table (counted up to 100000).");
    let _ = writeln!(o, "weir_flows_tracked {}", s.flows_tracked);
    family(&mut o, "weir_packets_total", "counter", "Packets by XDP action (aborted, drop, pass, tx, redirect).");
    for (k, v) in &s.counters {
        if let Some(a) = k.strip_prefix("xdp_") {
            let _ = writeln!(o, "weir_packets_total{{action=\"{a}\"}} {v}");
        }
    }
    family(&mut o, "weir_events_total", "counter", "Why packets were passed or dropped, and data-plane events.");
    for (k, v) in &s.counters {
        if !k.starts_with("xdp_") {
            let _ = writeln!(o, "weir_events_total{{event=\"{k}\"}} {v}");
        }
    }
    let vip_labels = |v: &crate::stats::VipStats| {
        format!("vip=\"{}\",address=\"{}\",port=\"{}\",protocol=\"{}\"", esc(&v.name), v.address, v.port, v.protocol)
    };
    for (name, help, get) in [
        ("weir_vip_packets_total", "Packets to the VIP.", (|v: &crate::stats::VipStats| v.packets) as fn(&crate::stats::VipStats) -> u64),
        ("weir_vip_bytes_total", "Bytes to the VIP.", |v| v.bytes),
        ("weir_vip_new_flows_total", "Flows the VIP scheduled.", |v| v.new_flows),
    ] {
        family(&mut o, name, "counter", help);
        for v in &s.vips {
            let _ = writeln!(o, "{name}{{{}}} {}", vip_labels(v), get(v));
        }
    }
    for (name, help, get) in [
        ("weir_backend_packets_total", "Packets sent to the backend.", (|b: &crate::stats::BackendStats| b.packets) as fn(&crate::stats::BackendStats) -> u64),
        ("weir_backend_bytes_total", "Bytes sent to the backend.", |b| b.bytes),
        ("weir_backend_new_flows_total", "Flows scheduled to the backend.", |b| b.new_flows),
        ("weir_backend_weight", "Configured weight.", |b| u64::from(b.weight)),
    ] {
        family(&mut o, name, if name.ends_with("_total") { "counter" } else { "gauge" }, help);
        for v in &s.vips {
            for b in &v.backends {
                let _ = writeln!(o, "{name}{{{},backend=\"{}\"}} {}", vip_labels(v), b.address, get(b));
            }
        }
    }
    family(&mut o, "weir_backend_up", "gauge", "1 when the backend passes its health checks (only checked backends).");
    for v in &s.vips {
        for b in &v.backends {
            if let Some(h) = &b.health {
                let _ = writeln!(o, "weir_backend_up{{{},backend=\"{}\"}} {}", vip_labels(v), b.address, u8::from(h == "up"));
            }
        }
    }
    family(&mut o, "weir_shield_attack", "gauge", "1 while the service is in attack mode.");
    for sh in &s.shield {
        let _ = writeln!(o, "weir_shield_attack{{service=\"{}\"}} {}", esc(&sh.service), u8::from(sh.attack));
    }
    family(&mut o, "weir_shield_syn_rate", "gauge", "New-state attempts per second over the last closed window.");
    for sh in &s.shield {
        let _ = writeln!(o, "weir_shield_syn_rate{{service=\"{}\"}} {}", esc(&sh.service), sh.syn_rate);
    }
    if let Some(t) = &s.tier {
        if t.announce_device.is_some() {
            family(&mut o, "weir_announced", "gauge", "1 for each VIP address the node announces (tier.announce).");
            for a in &t.announced {
                let _ = writeln!(o, "weir_announced{{address=\"{}\"}} 1", esc(a));
            }
            family(&mut o, "weir_draining", "gauge", "1 while the node drains (weir drain).");
            let _ = writeln!(o, "weir_draining {}", u8::from(t.draining));
        }
        if let Some(y) = &t.sync {
            family(&mut o, "weir_sync_flows_total", "counter", "Flows of the flow sync between nodes, by what happened to them.");
            for (what, n) in [
                ("sent", y.sent),
                ("received", y.received),
                ("inserted", y.inserted),
                ("present", y.present),
                ("unknown", y.unknown),
            ] {
                let _ = writeln!(o, "weir_sync_flows_total{{event=\"{what}\"}} {n}");
            }
            family(&mut o, "weir_sync_rejected_total", "counter", "Sync datagrams refused: not from a peer, or malformed.");
            let _ = writeln!(o, "weir_sync_rejected_total {}", y.rejected);
            family(&mut o, "weir_sync_send_errors_total", "counter", "Sync datagrams the kernel refused to send (no route to a peer?).");
            let _ = writeln!(o, "weir_sync_send_errors_total {}", y.send_errors);
        }
    }
    family(
        &mut o,
        "weir_fingerprint_info",
        "gauge",
        "Fingerprints of what decides new flows' backends: the config's (every backend up) and the data plane's now.",
    );
    if let Some(f) = &s.fingerprint {
        let _ = writeln!(o, "weir_fingerprint_info{{config=\"{}\",live=\"{}\"}} 1", esc(&f.config), esc(&f.live));
    }
    o
}

pub struct MetricsServer {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl MetricsServer {
    pub fn bind(addr: &str) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("--metrics {addr}: cannot listen there (in use, or not an address of this namespace?)"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(MetricsServer { listener, addr })
    }

    /// Answer every scrape waiting now; never blocks for long.
    pub fn serve(&self, snapshot: &mut dyn FnMut() -> Result<Snapshot>) {
        while let Ok((mut s, _)) = self.listener.accept() {
            let _ = s.set_nonblocking(false);
            answer(&mut s, Duration::from_millis(200), snapshot);
        }
    }

    /// The listener, for a thread that accepts (see daemon::serve).
    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }
}

/// Read one request (within `deadline` in all, however slowly it arrives)
/// and answer it.
pub fn answer(s: &mut std::net::TcpStream, deadline: Duration, snapshot: &mut dyn FnMut() -> Result<Snapshot>) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let end = std::time::Instant::now() + deadline;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    // Up to the end of the request head (or of the buffer, or the deadline).
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && !buf[..n].windows(2).any(|w| w == b"\n\n") {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    if n == 0 {
        return;
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if !req.starts_with("GET ") {
        ("405 Method Not Allowed", String::from("GET only\n"))
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", String::from("try /metrics\n"))
    } else {
        match snapshot() {
            Ok(snap) => ("200 OK", render(&snap)),
            Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
        }
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{BackendStats, ShieldStats, VipStats};

    fn snap() -> Snapshot {
        Snapshot {
            iface: "veth6".into(),
            xdp_mode: "native".into(),
            uptime_s: 3.0,
            flows_tracked: 7,
            counters: [("xdp_tx".to_string(), 9), ("pass_not_vip".to_string(), 2)].into_iter().collect(),
            vips: vec![VipStats {
                name: "web".into(),
                address: "198.18.0.100".into(),
                port: 80,
                protocol: "tcp".into(),
                scheduler: "maglev".into(),
                mode: "dsr".into(),
                packets: 9,
                bytes: 900,
                new_flows: 3,
                backends: vec![BackendStats {
                    address: "198.18.0.11".into(),
                    weight: 2,
                    health: Some("down".into()),
                    packets: 9,
                    bytes: 900,
                    new_flows: 3,
                }],
            }],
            shield: vec![ShieldStats { service: "web".into(), attack: true, syn_rate: 4000 }],
            tier: None,
            fingerprint: Some(crate::stats::Fingerprints { config: "0123456789abcdef".into(), live: "fedcba9876543210".into() }),
        }
    }

    #[test]
    fn exposition_has_typed_families_and_labelled_samples() {
        let t = render(&snap());
        for line in [
            "# TYPE weir_packets_total counter",
            "weir_packets_total{action=\"tx\"} 9",
            "weir_events_total{event=\"pass_not_vip\"} 2",
            "weir_vip_packets_total{vip=\"web\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 9",
            "weir_backend_new_flows_total{vip=\"web\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11\"} 3",
            "weir_backend_up{vip=\"web\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11\"} 0",
            "weir_shield_attack{service=\"web\"} 1",
            "weir_flows_tracked 7",
            "# TYPE weir_fingerprint_info gauge",
            "weir_fingerprint_info{config=\"0123456789abcdef\",live=\"fedcba9876543210\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "missing `{line}` in:\n{t}");
        }
        // Every sample belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split_whitespace().next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "sample before its TYPE: {l}");
            }
        }
    }

    #[test]
    fn serves_a_scrape_over_http() {
        let m = MetricsServer::bind("127.0.0.1:0").unwrap();
        let addr = m.addr;
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        let start = std::time::Instant::now();
        while !client.is_finished() && start.elapsed() < Duration::from_secs(5) {
            m.serve(&mut || Ok(snap()));
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = client.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("weir_shield_syn_rate{service=\"web\"} 4000"), "{out}");
    }
}
