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

pub fn socket_path(iface: &str) -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    Ok(PathBuf::from(format!("{RUN_DIR}/{iface}.{ns}.sock")))
}

pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Bind the instance's socket: /run/weir 0700, the socket 0600. A socket
    /// nobody answers on (a killed instance's) is replaced; a live one is
    /// an error.
    pub fn bind(iface: &str) -> Result<ControlSocket> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        std::fs::set_permissions(RUN_DIR, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {RUN_DIR} private (0700)"))?;
        let path = socket_path(iface)?;
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                bail!("a weir instance is already running on {iface} in this namespace ({})", path.display());
            }
            std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        // Created 0600 from the start: no window where others may connect.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket { listener, path })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The uid of the process at the other end of `s` (SO_PEERCRED).
pub fn peer_uid(s: &UnixStream) -> Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("SO_PEERCRED: {}", std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Mutating verbs (reload, stop, handoff, trace) are for root and for the
/// instance's own user.
pub fn may_mutate(s: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    peer_uid(s).is_ok_and(|u| u == 0 || u == me)
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

/// What a reload of `config` (None: the instance's own file) would change
/// on the instance on `iface`; nothing is applied.
pub fn reload_diff(iface: &str, config: Option<&str>) -> Result<Vec<String>> {
    let cmd = match config {
        Some(c) => {
            let abs = std::fs::canonicalize(c).with_context(|| format!("config {c}: cannot be read"))?;
            format!("diff {}", abs.display())
        }
        None => "diff".into(),
    };
    let v = request(iface, &cmd, Duration::from_secs(30))?;
    if let Some(e) = v.get("error") {
        bail!("this config would be refused: {}", e.as_str().unwrap_or_default());
    }
    Ok(v["ok"].as_array().map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_string)).collect()).unwrap_or_default())
}

/// Ask the instance on `iface` which backend `t` goes to, and why
/// (`weir lookup`): it answers from its maps.
pub fn lookup(iface: &str, t: &crate::tier::lookup::Tuple) -> Result<crate::tier::lookup::Answer> {
    let v = request(iface, &format!("lookup {t}"), Duration::from_secs(6))?;
    if let Some(e) = v.get("error") {
        bail!("the instance on {iface} could not look it up: {}", e.as_str().unwrap_or_default());
    }
    serde_json::from_value(v["ok"].clone()).context("the instance's answer is not one this weir reads (another version? restart it)")
}

/// The interface of the one instance running in this network namespace,
/// for commands whose --iface may be left out.
pub fn only_iface() -> Result<String> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    let mut here: Vec<String> = std::fs::read_dir(RUN_DIR)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let (iface, n) = name.strip_suffix(".sock")?.rsplit_once('.')?;
                    (n.parse::<u64>().ok() == Some(ns) && UnixStream::connect(e.path()).is_ok()).then(|| iface.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    here.sort();
    match here.len() {
        0 => bail!(
            "no weir instance is running in this network namespace: give --iface IFACE of a running one \
             (weir status lists them), or --config FILE to answer from a config"
        ),
        1 => Ok(here.remove(0)),
        _ => bail!("{} weir instances run in this network namespace ({}): pick one with --iface", here.len(), here.join(", ")),
    }
}

/// Ask the instance on `iface` to detach and exit.
pub fn stop(iface: &str) -> Result<()> {
    let v = request(iface, "stop", Duration::from_secs(5))?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or_default());
    }
    Ok(())
}

/// Ask the instance on `iface` to drain: withdraw its announcements, keep
/// serving until no packet came for `quiet` or `timeout` passed, then stop.
/// With `wait`, return only once it has stopped.
pub fn drain(iface: &str, timeout: Duration, quiet: Duration, wait: bool) -> Result<String> {
    let v = request(iface, &format!("drain {} {}", timeout.as_millis(), quiet.as_millis()), Duration::from_secs(10))?;
    if let Some(e) = v.get("error") {
        bail!("drain refused: {}", e.as_str().unwrap_or_default());
    }
    let said = v["ok"].as_str().unwrap_or_default().to_string();
    if wait {
        let path = socket_path(iface)?;
        let t = std::time::Instant::now();
        while UnixStream::connect(&path).is_ok() {
            if t.elapsed() > timeout + Duration::from_secs(10) {
                bail!("{said}; the instance on {iface} is still running {} s later", t.elapsed().as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(said)
}

/// One running instance, as `weir status` lists it.
#[derive(Debug)]
pub struct Instance {
    pub iface: String,
    pub netns_inode: u64,
    pub snapshot: Result<Snapshot>,
}

/// A network namespace by name (`ip netns` names it under /run/netns), or
/// "inode N" when it has none (the host's own, or a container's).
pub fn netns_name(inode: u64) -> String {
    let me = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            if std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode) {
                return crate::config::esc(&e.file_name().to_string_lossy());
            }
        }
    }
    if me == Some(inode) && crate::net::in_host_netns().unwrap_or(false) {
        return "(host)".into();
    }
    format!("inode {inode}")
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
    let (payload, mut fds) = crate::fdpass::recv_fds(&s)?;
    let v: serde_json::Value = serde_json::from_slice(&payload).context("the instance sent invalid JSON")?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or_default());
    }
    anyhow::ensure!(fds.len() == 1, "expected the ring buffer's fd");
    Ok((fds.remove(0), v, s))
}
