//! The tier lab (lab/tier.sh: a client, a BIRD router doing ECMP over N weir
//! nodes, backends) for end-to-end tests; torn down on every exit path,
//! panics included.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::lab::{ROOT, WEIR};

pub struct Tier {
    pub prefix: String,
    pub nodes: usize,
    pub config: std::path::PathBuf,
}

impl Tier {
    /// `lab/tier.sh up` with `config` on every node.
    pub fn up(prefix: &str, nodes: usize, config: &str) -> Tier {
        let path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&path, config).unwrap();
        let t = Tier { prefix: prefix.into(), nodes, config: path };
        let st = Command::new(format!("{ROOT}/lab/tier.sh"))
            .arg("up")
            .env("PREFIX", prefix)
            .env("WEIR", WEIR)
            .env("NODES", nodes.to_string())
            .env("CONFIG", &t.config)
            .status()
            .expect("running lab/tier.sh");
        assert!(st.success(), "lab/tier.sh up failed");
        t
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn node(&self, k: usize) -> String {
        self.ns(&format!("n{k}"))
    }

    pub fn sh(&self, ns: &str, script: &str) -> Output {
        Command::new("ip").args(["netns", "exec", ns, "bash", "-c", script]).output().expect("ip netns exec")
    }

    /// `weir ARGS` in node k's namespace.
    pub fn weir(&self, k: usize, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.node(k), WEIR]).args(args).output().expect("weir")
    }

    pub fn stats(&self, k: usize) -> Option<serde_json::Value> {
        let o = self.weir(k, &["stats", "--iface", "u0", "--once", "--json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    }

    pub fn script(&self, args: &[&str]) -> Output {
        Command::new(format!("{ROOT}/lab/tier.sh"))
            .args(args)
            .env("PREFIX", &self.prefix)
            .env("WEIR", WEIR)
            .env("CONFIG", &self.config)
            .output()
            .expect("lab/tier.sh")
    }

    pub fn pin(&self, k: usize) {
        let o = self.script(&["pin", &k.to_string()]);
        assert!(o.status.success(), "pin {k}: {}", String::from_utf8_lossy(&o.stderr));
    }

    pub fn unpin(&self) {
        let o = self.script(&["unpin"]);
        assert!(o.status.success(), "unpin: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn state(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/weir-lab/{}", self.prefix))
    }

    /// The PID of node k's `weir run` (recorded by tier.sh or by restart_weir).
    pub fn weir_pid(&self, k: usize) -> Option<i32> {
        std::fs::read_to_string(self.state().join(format!("n{k}-weir.pid"))).ok()?.trim().parse().ok()
    }

    /// Kill node k's weir with `sig` (a process the lab started, by its PID)
    /// and wait until it is gone.
    pub fn kill_weir(&self, k: usize, sig: i32) {
        let Some(pid) = self.weir_pid(k) else { return };
        // SAFETY: a PID this lab recorded for a process it started.
        unsafe { libc::kill(pid, sig) };
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
            // SAFETY: reaps it if it is our child (tier.sh started it: it is not).
            std::thread::sleep(Duration::from_millis(5));
            if std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
                break;
            }
        }
    }

    /// Start node k's weir again (after a kill or stop), recorded like tier.sh does.
    pub fn restart_weir(&self, k: usize) {
        let log = std::fs::File::create(self.state().join(format!("n{k}-weir.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node(k), WEIR, "run", "--iface", "u0", "--interval", "0", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting weir");
        std::fs::write(self.state().join(format!("n{k}-weir.pid")), child.id().to_string()).unwrap();
        std::mem::forget(child); // tier.sh down stops it by the recorded PID
        let t = Instant::now();
        while self.stats(k).is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "weir on node {k} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Next hops of the router's route to `vip` (0: no route).
    pub fn nexthops(&self, vip: &str) -> usize {
        let fam = if vip.contains(':') { "-6" } else { "-4" };
        let o = Command::new("ip").args(["-n", &self.ns("rt"), fam, "route", "show", vip]).output().unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        if s.trim().is_empty() {
            0
        } else if s.contains("nexthop") {
            s.matches("nexthop").count()
        } else {
            1
        }
    }

    /// Wait until the router's route to `vip` has `n` next hops.
    pub fn wait_nexthops(&self, vip: &str, n: usize, max: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < max {
            if self.nexthops(vip) == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Watch the router's routing table (`ip -ts monitor route`, UTC).
    pub fn watch_routes(&self) -> RouteWatch {
        let mut child = Command::new("ip")
            .args(["-n", &self.ns("rt"), "-ts", "monitor", "route"])
            .env("TZ", "UTC")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
        let sink = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(t) = parse_ts(&l) {
                    sink.lock().unwrap().push((t, l));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        RouteWatch { child, lines }
    }

    /// One HTTP GET per (VIP, source port) from the client, in one Python
    /// process: each connection is bound to its source port and ends with an
    /// RST (SO_LINGER 0), so no TIME_WAIT keeps the same 5-tuple from being
    /// used again at once (through another node). The answering backend's
    /// name per request, or None.
    pub fn fetch_many(&self, reqs: &[(&str, u16)]) -> Vec<Option<String>> {
        const PY: &str = r#"
import socket, struct, sys
CRLF = bytes([13, 10])
for line in sys.stdin:
    vip, port = line.split()
    fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(2)
    got = b""
    try:
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(port)))
        s.connect((vip, 80))
        s.sendall(b"GET / HTTP/1.0" + CRLF + b"Host: x" + CRLF + CRLF)
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except Exception:
        got = b""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    head, _, body = got.partition(CRLF + CRLF)
    ok = b" 200 " in head.split(CRLF)[0] and body.strip()
    print(body.strip().decode() if ok else "-", flush=True)
"#;
        let input: String = reqs.iter().map(|(v, p)| format!("{v} {p}\n")).collect();
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns("cl"), "python3", "-c", PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in the client");
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        let out: Vec<Option<String>> =
            String::from_utf8_lossy(&o.stdout).lines().map(|l| (l != "-").then(|| l.to_string())).collect();
        assert_eq!(out.len(), reqs.len(), "one answer per request");
        out
    }

    /// Slow downloads of `path` from the client, one thread per (VIP, source
    /// port), each reading `rate` bytes/s through a small receive buffer, so
    /// that its data crosses the network for the whole download (ACK-clocked)
    /// instead of landing in the client's socket buffer at once. Call
    /// `finish` for each one's outcome: the bytes of the body.
    pub fn slow_downloads(&self, reqs: &[(&str, u16)], path: &str, rate: usize) -> SlowDownloads {
        const PY: &str = r#"
import socket, sys, threading, time
CRLF = bytes([13, 10])
path, rate = sys.argv[1], int(sys.argv[2])
reqs = [l.split() for l in sys.stdin.read().splitlines()]
out = {}
def one(vip, port):
    fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(20)
    got = b""
    try:
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(port)))
        s.connect((vip, 80))
        s.sendall(b"GET /" + path.encode() + b" HTTP/1.0" + CRLF + b"Host: x" + CRLF + CRLF)
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
            time.sleep(4096 / rate)
        head, _, body = got.partition(CRLF + CRLF)
        out[port] = len(body) if b" 200 " in head.split(CRLF)[0] else -1
    except Exception as e:
        out[port] = -2
    s.close()
ts = [threading.Thread(target=one, args=r) for r in reqs]
for t in ts: t.start()
for t in ts: t.join()
for vip, port in reqs:
    print(port, out.get(port, -3))
"#;
        let input: String = reqs.iter().map(|(v, p)| format!("{v} {p}\n")).collect();
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns("cl"), "python3", "-c", PY, path, &rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in the client");
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        SlowDownloads { child: c, n: reqs.len() }
    }

    /// Curl `url` from the client; the answering backend's name (the lab's
    /// backends answer with it), or None.
    pub fn curl(&self, args: &str, url: &str) -> Option<String> {
        let o = self.sh(&self.ns("cl"), &format!("curl -s --max-time 3 {args} {url}"));
        let body = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && !body.is_empty()).then_some(body)
    }
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// "[2026-12-02T14:36:36.409550] ..." (UTC) -> seconds since the epoch.
fn parse_ts(l: &str) -> Option<f64> {
    let s = l.strip_prefix('[')?.split(']').next()?;
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as f64 + format!("0.{frac}").parse::<f64>().ok()?)
}

pub struct SlowDownloads {
    child: Child,
    n: usize,
}

impl SlowDownloads {
    /// (whole, broken): whole = exactly `size` body bytes arrived.
    pub fn finish(self, size: usize) -> (usize, usize) {
        let o = self.child.wait_with_output().unwrap();
        let lens: Vec<i64> =
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()).collect();
        assert_eq!(lens.len(), self.n, "one result per download");
        let whole = lens.iter().filter(|l| **l == size as i64).count();
        (whole, self.n - whole)
    }
}

pub struct RouteWatch {
    child: Child,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
}

impl RouteWatch {
    /// Seconds from `since` to the first route event naming `vip` after it.
    pub fn first_after(&self, vip: &str, since: f64, max: Duration) -> Option<f64> {
        let t = Instant::now();
        loop {
            let hit = self.lines.lock().unwrap().iter().find(|(ts, l)| *ts >= since && l.contains(vip)).map(|(ts, _)| ts - since);
            if hit.is_some() || t.elapsed() > max {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        let _ = self.child.kill(); // our own child, by PID
        let _ = self.child.wait();
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/lab/tier.sh")).arg("down").env("PREFIX", &self.prefix).status();
        let _ = std::fs::remove_file(&self.config);
    }
}

#[test]
fn timestamps_parse() {
    assert_eq!(parse_ts("[1970-01-02T00:00:01.5] x"), Some(86401.5));
    assert_eq!(parse_ts("[2026-12-02T14:36:36.409550] Deleted"), Some(1_796_222_196.40955));
}
