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
        let lab = Lab { extra_args: Vec::new(), prefix: prefix.into(), weir: None, config: std::env::temp_dir().join(format!("{prefix}.toml")) };
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

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_weir();
        let _ = Command::new(format!("{ROOT}/lab/lab.sh")).arg("down").env("PREFIX", &self.prefix).status();
        let _ = std::fs::remove_file(&self.config);
    }
}

