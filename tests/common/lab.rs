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
        let f = format!("{}/download-{}.bin", self.state(), std::process::id());
        let out = self.sh(
            "client",
            &format!(
                "curl -sS --max-time {max_secs} -o '{f}' -w '%{{http_code}} %{{size_download}} %{{time_total}}\n' '{url}'; \
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

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_weir();
        let _ = Command::new(format!("{ROOT}/lab/lab.sh")).arg("down").env("PREFIX", &self.prefix).status();
        let _ = std::fs::remove_file(&self.config);
    }
}
