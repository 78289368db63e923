//! What weir needs to know about the host's network: interfaces, neighbour
//! MACs, and which network namespace it runs in.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::parse_mac;

#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Global (scope global) addresses, in the kernel's order.
    pub addrs: Vec<IpAddr>,
}

impl Iface {
    /// An interface that is never attached to (benchmarks and tests run the
    /// program through BPF_PROG_TEST_RUN): only its MAC matters.
    pub fn unattached(name: &str, mac: [u8; 6]) -> Iface {
        Iface { name: name.to_string(), ifindex: 1, mac, mtu: 1500, addrs: Vec::new() }
    }

    /// Ask the kernel through netlink (`ip -j link`), which answers for the
    /// caller's network namespace; /sys/class/net answers for whichever
    /// namespace mounted /sys, which under `nsenter` is not ours.
    pub fn lookup(name: &str) -> Result<Iface> {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) {
            bail!("'{name}' is not an interface name");
        }
        let out = Command::new("ip")
            .args(["-j", "link", "show", "dev", name])
            .output()
            .context("running `ip link` (install iproute2)")?;
        if !out.status.success() {
            bail!(
                "interface '{name}' not found in this network namespace \
                 (`ip link` lists the ones here; run weir inside the interface's namespace, e.g. `ip netns exec NS weir ...`)"
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing `ip -j link` output")?;
        let l = &v[0];
        let ifindex = l["ifindex"].as_u64().context("`ip link` gave no ifindex")? as u32;
        let mtu = l["mtu"].as_u64().unwrap_or(1500) as u32;
        let mac_s = l["address"].as_str().unwrap_or("");
        let mac = parse_mac(mac_s).with_context(|| format!("interface {name} has no Ethernet address ('{mac_s}')"))?;
        Ok(Iface { name: name.to_string(), ifindex, mac, mtu, addrs: global_addrs(name)? })
    }
}

/// `ip -j ARGS` in this network namespace, parsed; an error names the
/// command and carries its stderr.
fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}` (install iproute2)", args[0]))?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    // Some iproute2 versions print nothing, not [], when nothing matches.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing `ip -j {}` output", args[0]))
}

/// The interface's global addresses (`ip -j addr`), IPv4 and IPv6.
fn global_addrs(name: &str) -> Result<Vec<IpAddr>> {
    let v = ip_json(&["addr", "show", "dev", name])?;
    Ok(v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"].as_str() == Some("global"))
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect())
}

/// The neighbour a packet to `ip` is handed to: `ip` itself when on-link,
/// else the gateway of its route (`ip route get`).
pub fn next_hop_of(ip: IpAddr) -> Result<IpAddr> {
    let v = ip_json(&["route", "get", &ip.to_string()])
        .with_context(|| format!("no route to {ip} (add one, or set the backend's `mac`)"))?;
    Ok(v[0]["gateway"].as_str().and_then(|g| g.parse().ok()).unwrap_or(ip))
}

/// True unless this process runs in a named network namespace (one of
/// /run/netns/*, as `ip netns add` makes). PID 1's namespace cannot be read
/// in every container, so "named" is the test: the host's own namespace is
/// never named.
pub fn in_host_netns() -> Result<bool> {
    let me = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    // PID 1's namespace is the host's; not every container lets us read it.
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net") {
        if init.ino() == me.ino() && init.dev() == me.dev() {
            return Ok(true);
        }
    }
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Ok(true);
    };
    for entry in dir.flatten() {
        if let Ok(m) = std::fs::metadata(entry.path()) {
            if m.ino() == me.ino() && m.dev() == me.dev() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The neighbour table's MAC for `ip` on `iface`, if it has a usable one.
fn neighbour(ip: IpAddr, iface: &str) -> Result<Option<[u8; 6]>> {
    let v = ip_json(&["neigh", "show", "to", &ip.to_string(), "dev", iface])?;
    for n in v.as_array().into_iter().flatten() {
        let states: Vec<&str> =
            n["state"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
        if states.iter().any(|s| *s == "FAILED" || *s == "INCOMPLETE") {
            continue;
        }
        if let Some(mac) = n["lladdr"].as_str().and_then(parse_mac) {
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

/// Resolve a backend's MAC from the kernel's neighbour table, probing it
/// (one UDP datagram to the discard port makes the kernel ARP / NDP) when
/// the entry is missing.
pub fn resolve_mac(backend: IpAddr, iface: &str, mode: crate::config::Mode, timeout: Duration) -> Result<[u8; 6]> {
    // An off-link backend (tunnel or NAT mode) is reached through its gateway.
    let ip = next_hop_of(backend).unwrap_or(backend);
    if ip != backend && mode == crate::config::Mode::Dsr {
        bail!(
            "{backend} is reached through the gateway {ip}, but direct server return (mode = \"dsr\") only rewrites MACs: \
             it needs backends on {iface}'s segment; use mode = \"tunnel\" or \"nat\" for backends in other subnets"
        );
    }
    if let Some(m) = neighbour(ip, iface)? {
        return Ok(m);
    }
    let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let sock = UdpSocket::bind(bind).context("opening a UDP socket to probe a neighbour")?;
    let start = Instant::now();
    let mut last_probe = None::<Instant>;
    while start.elapsed() < timeout {
        if last_probe.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            let _ = sock.send_to(b"weir neighbour probe", SocketAddr::new(ip, 9));
            last_probe = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
        if let Some(m) = neighbour(ip, iface)? {
            return Ok(m);
        }
    }
    bail!(
        "no MAC for backend {ip} on {iface} after {:.1}s of probing: is it up and on {iface}'s segment? \
         (or set `mac = \"..\"` for it in the config)",
        timeout.as_secs_f64()
    )
}
