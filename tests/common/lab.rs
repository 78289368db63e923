//! The lab (lab/lab.sh) and a weir inside it, for end-to-end tests; torn
//! down on every exit path, panics included.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The lab and weir, torn down on every exit path (panics included).
pub struct Lab {
    /// Extra arguments for the next `weir run`.
    pub extra_args: Vec<String>,
    pub prefix: String,
    pub weir: Option<Child>,
    pub config: std::path::PathBuf,
}

impl Lab {
    pub fn up(prefix: &str) -> Lab {
        Self::up_with(prefix, &[])
    }

    pub fn up_with(prefix: &str, env: &[(&str, &str)]) -> Lab {
        let lab = Lab {
            extra_args: Vec::new(),
            prefix: prefix.into(),
            weir: None,
            config: std::env::temp_dir().join(format!("{prefix}.toml")),
        };
        let st = Command::new(format!("{ROOT}/lab/lab.sh"))
            .arg("up")
            .env("PREFIX", prefix)
            .env("WEIR", WEIR)
            .envs(env.iter().copied())
            .status()
            .expect("running lab/lab.sh");
        assert!(st.success(), "lab/lab.sh up failed");
        lab
    }

    /// `lab.sh up` with `LAB_MODE=mode` (dsr | nat | tunnel).
    pub fn up_mode(prefix: &str, mode: &str) -> Lab {
        Self::up_with(prefix, &[("LAB_MODE", mode)])
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn sh(&self, host: &str, script: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "bash", "-c", script])
            .output()
            .expect("ip netns exec")
    }

    pub fn start_weir(&mut self, config: &str) {
        self.start_weir_cmd(config, "run");
    }

    /// `weir CMD --iface veth6 --config ..` in the balancer's namespace.
    pub fn start_weir_cmd(&mut self, config: &str, cmd: &str) {
        std::fs::write(&self.config, config).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb"), WEIR, cmd, "--iface", "veth6", "--mode", "native"])
            .arg("--config")
            .arg(&self.config)
            .args(["--interval", "0"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting weir");
        self.weir = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if self.stats().is_some() {
                return;
            }
            if let Some(st) = self.weir.as_mut().unwrap().try_wait().unwrap() {
                panic!("weir exited during start-up: {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("weir did not come up within 15 s");
    }

    pub fn stats(&self) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb"), WEIR, "stats", "--iface", "veth6", "--once", "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The id of the XDP program attached to the balancer's veth6, if any.
    pub fn prog_id(&self) -> Option<String> {
        let o = self.sh("lb", "ip -d link show veth6");
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.split("prog/xdp id ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string)
    }

    /// The hitless upgrade: a second `weir run` on the same interface and
    /// config takes over from the running one. The new one becomes the lab's
    /// weir (the guard stops it); the old one is reaped here within 15 s (on
    /// timeout: SIGTERM to its own PID, wait, panic with diagnostics). Then
    /// waits up to 10 s for stats from the new one. Returns the old one's
    /// exit status and the new one's first stats.
    pub fn take_over(&mut self) -> (std::process::ExitStatus, serde_json::Value) {
        let new = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb"), WEIR, "run", "--iface", "veth6", "--interval", "0", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the second weir run");
        // From here the Lab guard stops the new one; the old one is ours to reap.
        let mut old = self.weir.replace(new).expect("the first weir");
        let t = Instant::now();
        let old_status = loop {
            if let Some(s) = old.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(15) {
                // SAFETY: signalling our own child (the old weir) by PID.
                unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
                let _ = old.wait();
                panic!("the old instance did not hand over within 15 s\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(w) = self.weir.as_mut() {
            if let Some(st) = w.try_wait().unwrap() {
                panic!("the new instance exited: {st}\n{}", self.diagnostics());
            }
        }
        let t = Instant::now();
        let stats = loop {
            if let Some(s) = self.stats() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the new instance does not answer");
            std::thread::sleep(Duration::from_millis(50));
        };
        (old_status, stats)
    }

    /// The lab's state directory (web roots, logs).
    pub fn state(&self) -> String {
        format!("/run/weir-lab/{}", self.prefix)
    }

    /// SIGTERM to weir (by its PID) and wait; returns its exit status.
    pub fn stop_weir(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.weir.take()?;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

/// A global counter from `weir stats --json` output; panics if missing.
pub fn counter(s: &serde_json::Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or_else(|| panic!("weir stats has no counter '{name}': {}", s["counters"]))
}

/// One request line of a backend's http.server log.
#[derive(Debug, Clone)]
pub struct Request {
    /// "b1", "b2", "b3"
    pub backend: String,
    /// The peer address as the backend saw it ("::ffff:198.18.0.10", "2001:2::1").
    pub peer: String,
    /// The request line ("GET /?nat4-3 HTTP/1.1").
    pub line: String,
}

/// A download through the lab (see [`Lab::download`]).
#[derive(Debug, Clone)]
pub struct Download {
    pub http_code: String,
    pub bytes: u64,
    pub secs: f64,
    pub sha256: String,
}

impl Lab {
    /// The sha256 of the 50 MB `big.bin` that `lab.sh up` put in every web root.
    pub fn big_sha256(&self) -> String {
        let s = std::fs::read_to_string(format!("{}/big.sha256", self.state())).expect("big.sha256 in the lab state");
        s.trim().to_string()
    }

    /// `n` new connections from the client: `curl ARGS URL?TAG-i` for i in
    /// 1..=n; one answer body (trimmed) per request, "FAILED" for a failure.
    pub fn curls(&self, n: usize, args: &str, url: &str, tag: &str) -> Vec<String> {
        let out = self.sh(
            "client",
            &format!("for i in $(seq {n}); do curl -s -f -g --max-time 3 {args} '{url}?{tag}-'$i || echo FAILED; done"),
        );
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
    }

    /// Download `url` in the client namespace (bounded by `max_secs`) into
    /// the lab's state directory, hash it there and delete it.
    pub fn download(&self, url: &str, max_secs: u32) -> Download {
        self.download_in("client", url, max_secs)
    }

    /// [`Lab::download`] from another host's namespace (e.g. "far").
    pub fn download_in(&self, host: &str, url: &str, max_secs: u32) -> Download {
        let f = format!("{}/download-{}.bin", self.state(), std::process::id());
        let out = self.sh(
            host,
            &format!(
                "curl -sS -g --max-time {max_secs} -o '{f}' -w '%{{http_code}} %{{size_download}} %{{time_total}}\n' '{url}'; \
                 sha256sum '{f}' 2>/dev/null | cut -d' ' -f1; rm -f '{f}'"
            ),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let w: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        Download {
            http_code: w.first().unwrap_or(&"").to_string(),
            bytes: w.get(1).and_then(|x| x.parse().ok()).unwrap_or(0),
            secs: w.get(2).and_then(|x| x.parse().ok()).unwrap_or(f64::NAN),
            sha256: lines.next().unwrap_or("").trim().to_string(),
        }
    }

    /// Every request line in the backends' http.server logs.
    pub fn requests(&self) -> Vec<Request> {
        let mut v = Vec::new();
        for b in ["b1", "b2", "b3"] {
            let log = std::fs::read_to_string(format!("{}/{b}.log", self.state())).unwrap_or_default();
            for l in log.lines() {
                // `ADDR - - [date] "GET / HTTP/1.1" 200 -`
                let (Some(peer), Some(q)) = (l.split_whitespace().next(), l.split('"').nth(1)) else { continue };
                if l.split_whitespace().nth(1) != Some("-") {
                    continue; // not a request line ("Serving HTTP on ...", tracebacks)
                }
                v.push(Request { backend: b.into(), peer: peer.into(), line: q.into() });
            }
        }
        v
    }

    /// `lab.sh status` (exit status and output).
    pub fn status(&self) -> std::process::Output {
        Command::new(format!("{ROOT}/lab/lab.sh"))
            .arg("status")
            .env("PREFIX", &self.prefix)
            .output()
            .expect("lab.sh status")
    }

    /// What to look at when traffic through weir goes missing: weir's
    /// counters, the interfaces' XDP and drop counters on both sides of the
    /// balancer and on the backends, and the backends' decapsulator logs.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let mut run = |ns: &str, cmd: &str| {
            let o = Command::new("ip").args(["netns", "exec", ns, "bash", "-c", cmd]).output();
            if let Ok(o) = o {
                s += &format!(
                    "--- {ns}: {cmd}\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        };
        run(&self.ns("lb"), &format!("{WEIR} stats --iface veth6 --once"));
        run(&self.ns("lb"), "ip -s -d link show veth6; ethtool -S veth6 | grep -v ': 0$'; ip neigh");
        run(&self.ns("sw"), "ip -d link show p-lb | grep -o 'prog/xdp.*' ; ethtool -S p-lb | grep -v ': 0$'");
        for b in ["b1", "b2", "b3"] {
            run(&self.ns(b), "ip -s -d link show b0; ethtool -S b0 | grep -v ': 0$'; nstat -az | grep -Ei 'csum|InErr|NoPorts|InAddrErr' ");
        }
        for b in ["b1", "b2", "b3"] {
            if let Ok(l) = std::fs::read_to_string(format!("{}/{b}-decap.log", self.state())) {
                s += &format!("--- {b}-decap.log\n{l}");
            }
        }
        s
    }
}

/// Counts the frames the switch sends towards some of its ports, by kind:
/// "ipip" (IPv4 proto 4), "ip6ip6" (IPv6 next header 41), "vip4_plain" /
/// "vip6_plain" (addressed to the VIP, not encapsulated), "frames" (all).
/// A passive AF_PACKET reader inside the lab's switch namespace, bounded in
/// time; stopped by SIGTERM to its own PID.
pub struct Sniffer {
    child: Option<Child>,
}

const SNIFF_PY: &str = r#"
import json, select, signal, socket, sys, time
deadline = time.time() + float(sys.argv[1])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
socks = []
for i in sys.argv[2:]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((i, 0))
    socks.append(s)
VIP4 = socket.inet_aton("198.18.0.100")
VIP6 = socket.inet_pton(socket.AF_INET6, "2001:2::100")
c = dict(frames=0, ipip=0, ip6ip6=0, vip4_plain=0, vip6_plain=0)
print("ready", flush=True)
while not stop and time.time() < deadline:
    r, _, _ = select.select(socks, [], [], 0.1)
    for s in r:
        f, a = s.recvfrom(65535)
        if a[2] != socket.PACKET_OUTGOING or len(f) < 54:
            continue
        c["frames"] += 1
        if f[12:14] == b"\x08\x00":
            if f[23] == 4:
                c["ipip"] += 1
            elif f[30:34] == VIP4:
                c["vip4_plain"] += 1
        elif f[12:14] == b"\x86\xdd":
            if f[20] == 41:
                c["ip6ip6"] += 1
            elif f[38:54] == VIP6:
                c["vip6_plain"] += 1
print(json.dumps(c), flush=True)
"#;

impl Lab {
    /// Start counting what the switch sends out of `ports` (e.g. "p-b1");
    /// returns once the sockets are open. Stops by itself after `max_secs`.
    pub fn sniff(&self, ports: &[&str], max_secs: u32) -> Sniffer {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns("sw"), "python3", "-c", SNIFF_PY, &max_secs.to_string()])
            .args(ports)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the sniffer");
        let mut first = String::new();
        let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        r.read_line(&mut first).expect("sniffer output");
        assert_eq!(first.trim(), "ready", "sniffer did not start");
        Sniffer { child: Some(child) }
    }
}

impl Sniffer {
    /// Stop (SIGTERM to its own PID) and return the counts.
    pub fn finish(mut self) -> serde_json::Value {
        let child = self.child.take().expect("sniffer running");
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().expect("sniffer");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str(text.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("sniffer output {text:?}: {e}"))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill(); // our own child, by PID (no-op if it exited)
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_weir();
        let _ = Command::new(format!("{ROOT}/lab/lab.sh")).arg("down").env("PREFIX", &self.prefix).status();
        let _ = std::fs::remove_file(&self.config);
    }
}

// ------------------------------------------- routed lab and lab processes ---

impl Lab {
    /// `lab.sh up` with `LAB_MODE=mode` and `ROUTED_LAB=1`: a router
    /// `${PREFIX}-rt` on the bridge and the off-link backend `${PREFIX}-b4`
    /// (198.19.20.14, 2001:2:0:20::14) behind it.
    pub fn up_routed(prefix: &str, mode: &str) -> Lab {
        Self::up_with(prefix, &[("LAB_MODE", mode), ("ROUTED_LAB", "1")])
    }

    /// `lab.sh up` with `LAB_MODE=mode` and `PMTU_LAB=1`: a router
    /// `${PREFIX}-crt` on the bridge and, behind it on a link of MTU 1400,
    /// the client `${PREFIX}-far` (198.19.30.1, 2001:2:0:30::1).
    pub fn up_pmtu(prefix: &str, mode: &str) -> Lab {
        Self::up_with(prefix, &[("LAB_MODE", mode), ("PMTU_LAB", "1")])
    }

    /// Every request line in the http.server logs of `backends` ("b1".."b4").
    pub fn requests_of(&self, backends: &[&str]) -> Vec<Request> {
        let mut v = Vec::new();
        for b in backends {
            let log = std::fs::read_to_string(format!("{}/{b}.log", self.state())).unwrap_or_default();
            for l in log.lines() {
                let (Some(peer), Some(q)) = (l.split_whitespace().next(), l.split('"').nth(1)) else { continue };
                if l.split_whitespace().nth(1) != Some("-") {
                    continue;
                }
                v.push(Request { backend: (*b).into(), peer: peer.into(), line: q.into() });
            }
        }
        v
    }

    /// Run `args` (no shell) in the host's namespace and wait for it.
    pub fn exec(&self, host: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.ns(host)]).args(args).output().expect("ip netns exec")
    }

    /// Start `args` (no shell) in the host's namespace in the background,
    /// stdout and stderr to `log`. `ip netns exec` execs the command, so the
    /// child's PID is the command's own; [`NsProcess`] stops it by that PID.
    pub fn spawn_in(&self, host: &str, args: &[&str], log: &std::path::Path) -> NsProcess {
        let out = std::fs::File::create(log).expect("creating a process log");
        let err = out.try_clone().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting a process in the lab");
        NsProcess { child: Some(child), what: format!("{host}: {}", args.first().unwrap_or(&"")) }
    }

    /// Wait until something listens on TCP `port` in the host's namespace.
    pub fn wait_listening(&self, host: &str, port: u16, p: &mut NsProcess) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let o = self.exec(host, &["ss", "-Hltn", &format!("sport = :{port}")]);
            if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
                return;
            }
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("{} exited before listening on :{port}: {st}", p.what);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} not listening on :{port} after 10 s", p.what);
    }

    /// [`Lab::diagnostics`] plus the router and the off-link backend b4.
    pub fn diagnostics_routed(&self) -> String {
        let mut s = self.diagnostics();
        for (host, cmd) in [
            ("lb", "ip route; ip -6 route; ip neigh"),
            ("rt", "ip -s link show r0; ip -s link show r1; ip neigh; nstat -az | grep -Ei 'Forw|InAddrErr|OutNoRoutes|InHdrErr|FragFail|TooBig'"),
            ("b4", "ip -s -d link show b0; ethtool -S b0 | grep -v ': 0$'; ip route; nstat -az | grep -Ei 'csum|InErr|NoPorts|InAddrErr'"),
            ("client", "ip neigh; ip route get 198.18.0.100; ip -6 route get 2001:2::100; nstat -az | grep -Ei 'csum|InErr|Icmp.*(Dest|TooBig)'"),
        ] {
            let o = self.sh(host, cmd);
            s += &format!(
                "--- {}: {cmd}\n{}{}",
                self.ns(host),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if let Ok(l) = std::fs::read_to_string(format!("{}/b4-decap.log", self.state())) {
            s += &format!("--- b4-decap.log\n{l}");
        }
        s
    }
}

/// A process a test started inside a lab namespace (see [`Lab::spawn_in`]):
/// stopped by its own PID (SIGTERM, then SIGKILL) on drop. Declare it after
/// the [`Lab`] so it is dropped (stopped) before the lab is torn down.
pub struct NsProcess {
    child: Option<Child>,
    what: String,
}

impl NsProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill(); // SIGKILL, by PID
        let _ = c.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
