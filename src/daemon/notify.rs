//! systemd's readiness protocol (sd_notify): a datagram to $NOTIFY_SOCKET.
//! A few lines, no crate; nothing happens outside systemd.

use std::os::unix::net::UnixDatagram;

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let path = path.to_string_lossy().to_string();
    let r = if let Some(abs) = path.strip_prefix('@') {
        // An abstract socket: a leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Attached and serving (also: a reload finished). `refused`: the reload
/// was refused; its reason goes in STATUS.
pub fn ready(refused: Option<&str>) {
    match refused {
        None => send("READY=1\nSTATUS=serving"),
        Some(why) => {
            let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
            send(&format!("READY=1\nSTATUS=serving; last reload refused: {why}"))
        }
    }
}

pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

pub fn stopping() {
    send("STOPPING=1");
}
