//! The control socket: a running `weir run` serves JSON snapshots on a Unix
//! socket under /run/weir, which `weir stats` reads. The socket's name
//! carries the network namespace, since interface names repeat across them.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::stats::Snapshot;

pub const RUN_DIR: &str = "/run/weir";

/// Set by `weir stop`; the control loop exits and detaches.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn socket_path(iface: &str) -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    Ok(PathBuf::from(format!("{RUN_DIR}/{iface}.{ns}.sock")))
}

pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    pub fn bind(iface: &str) -> Result<ControlSocket> {
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let path = socket_path(iface)?;
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                bail!("a weir instance is already running on {iface} in this namespace ({})", path.display());
            }
            std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket { listener, path })
    }

    /// Answer every client waiting now; never blocks for long. A client
    /// sends one command line: `stats` (also the default) or `reload`.
    /// `handoff` serves a successor (see handoff.rs); true when this
    /// instance has handed over and must exit without detaching.
    pub fn serve(
        &self,
        snapshot: &mut dyn FnMut() -> Result<Snapshot>,
        reload: &mut dyn FnMut() -> Result<String>,
        handoff: &mut dyn FnMut(&UnixStream) -> Result<bool>,
        trace: &mut dyn FnMut(&str, &UnixStream) -> Result<()>,
    ) -> bool {
        while let Ok((mut stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let mut cmd = [0u8; 64];
            let n = stream.read(&mut cmd).unwrap_or(0);
            let cmd = String::from_utf8_lossy(&cmd[..n]).trim().to_string();
            if cmd == "handoff" {
                match handoff(&stream) {
                    Ok(true) => return true,
                    Ok(false) => continue,
                    Err(e) => {
                        eprintln!("weir: hand-over failed, still serving: {e:#}");
                        let body = serde_json::json!({ "error": format!("{e:#}") }).to_string();
                        let _ = crate::handoff::send_fds(&stream, body.as_bytes(), &[]);
                        continue;
                    }
                }
            }
            if let Some(arg) = cmd.strip_prefix("trace") {
                if let Err(e) = trace(arg.trim(), &stream) {
                    let body = serde_json::json!({ "error": format!("{e:#}") }).to_string();
                    let _ = crate::handoff::send_fds(&stream, body.as_bytes(), &[]);
                }
                continue;
            }
            let body = match cmd.as_str() {
                "stop" => {
                    let _ = stream.write_all(br#"{"ok":"stopping"}"#);
                    crate::control::STOP.store(true, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                "reload" => match reload() {
                    Ok(summary) => serde_json::json!({ "ok": summary }).to_string(),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
                },
                "" | "stats" => match snapshot() {
                    Ok(s) => serde_json::to_string(&s).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
                },
                other => serde_json::json!({ "error": format!("unknown command '{other}'") }).to_string(),
            };
            let _ = stream.write_all(body.as_bytes());
        }
        false
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn request(iface: &str, cmd: &str, timeout: Duration) -> Result<serde_json::Value> {
    let path = socket_path(iface)?;
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "no weir instance is running on {iface} in this network namespace (no answer on {}); \
             start one with `weir run --iface {iface} --config FILE`",
            path.display()
        )
    })?;
    s.write_all(format!("{cmd}\n").as_bytes()).context("sending the command")?;
    s.set_read_timeout(Some(timeout))?;
    let mut body = String::new();
    s.read_to_string(&mut body).context("reading the answer")?;
    serde_json::from_str(&body).context("the instance sent invalid JSON")
}

pub fn fetch(iface: &str) -> Result<Snapshot> {
    let v = request(iface, "stats", Duration::from_secs(2))?;
    if let Some(e) = v.get("error") {
        bail!("the instance could not read its counters: {}", e.as_str().unwrap_or_default());
    }
    Ok(serde_json::from_value(v)?)
}

/// Ask the instance on `iface` to re-read its config; its summary.
pub fn reload(iface: &str) -> Result<String> {
    let v = request(iface, "reload", Duration::from_secs(30))?;
    if let Some(e) = v.get("error") {
        bail!("reload refused, the running config stays: {}", e.as_str().unwrap_or_default());
    }
    Ok(v["ok"].as_str().unwrap_or_default().to_string())
}

/// Ask the instance on `iface` to detach and exit.
pub fn stop(iface: &str) -> Result<()> {
    let v = request(iface, "stop", Duration::from_secs(5))?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or_default());
    }
    Ok(())
}

/// One running instance, as `weir status` lists it.
#[derive(Debug)]
pub struct Instance {
    pub iface: String,
    pub netns_inode: u64,
    pub snapshot: Result<Snapshot>,
}

/// Every instance with a control socket, in any network namespace (Unix
/// sockets are reached by path, whatever the namespace).
pub fn instances() -> Vec<Instance> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(RUN_DIR) else { return out };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".sock") else { continue };
        let Some((iface, ns)) = stem.rsplit_once('.') else { continue };
        let Ok(ns) = ns.parse::<u64>() else { continue };
        // A socket nobody listens on is what a killed instance leaves: prune it.
        if let Err(err) = UnixStream::connect(e.path()) {
            if err.kind() == std::io::ErrorKind::ConnectionRefused {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
        }
        let snapshot = (|| -> Result<Snapshot> {
            let mut s = UnixStream::connect(e.path()).context("not answering")?;
            s.write_all(b"stats\n")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(serde_json::from_str(&body)?)
        })();
        out.push(Instance { iface: iface.to_string(), netns_inode: ns, snapshot });
    }
    out.sort_by(|a, b| (a.netns_inode, &a.iface).cmp(&(b.netns_inode, &b.iface)));
    out
}

/// Start tracing on the instance on `iface`: one packet in `every`. Returns
/// the ring buffer's fd, the id -> name tables, and the stream that keeps the
/// trace on while it is open.
pub fn trace(iface: &str, every: u32) -> Result<(OwnedFd, serde_json::Value, UnixStream)> {
    let path = socket_path(iface)?;
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!("no weir instance is running on {iface} in this network namespace (no answer on {})", path.display())
    })?;
    s.write_all(format!("trace {every}\n").as_bytes())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (payload, mut fds) = crate::handoff::recv_fds(&s)?;
    let v: serde_json::Value = serde_json::from_slice(&payload).context("the instance sent invalid JSON")?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or_default());
    }
    anyhow::ensure!(fds.len() == 1, "expected the ring buffer's fd");
    Ok((fds.remove(0), v, s))
}
