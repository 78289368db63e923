//! The TOML configuration file: its format and its validation.
//!
//! Every error names the field (`vip[1].backend[0].mac`) and what to do.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::maglev::is_prime;
use crate::skel::{MAX_BACKENDS, MAX_VIPS, RR_SLOTS};

/// Upper bound of `conntrack.size`: 16M flows, ~1.6 GB of kernel memory.
pub const MAX_FLOWS: u32 = 1 << 24;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub conntrack: Conntrack,
    #[serde(default)]
    pub maglev: Maglev,
    /// The SYN-flood shield; absent: off.
    pub shield: Option<Shield>,
    /// Running as one node of a tier behind ECMP (docs/scale-out.md).
    #[serde(default)]
    pub tier: Tier,
    /// IP fragments to VIPs (README "Fragments").
    #[serde(default)]
    pub fragments: Fragments,
    /// `[health]`: what every data-path check shares.
    #[serde(default)]
    pub health: HealthGlobal,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Vip>,
}

/// `[fragments]`: every fragment of a datagram to a VIP goes to one backend
/// (bpf/frag.h). One table entry per datagram in flight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragments {
    /// Off: every fragment goes to the kernel, as before weir balanced them.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Datagrams in flight the table holds (~100 bytes each, preallocated);
    /// when full, fragments of new datagrams are dropped (never split).
    #[serde(default = "default_frag_datagrams")]
    pub max_datagrams: u32,
    /// How long a datagram's entry lives after its first fragment to
    /// arrive, milliseconds. Its fragments normally arrive within
    /// microseconds of each other; the entry only has to outlive that.
    #[serde(default = "default_frag_timeout")]
    pub timeout_ms: u32,
}

fn default_true() -> bool {
    true
}
fn default_frag_datagrams() -> u32 {
    16384
}
fn default_frag_timeout() -> u32 {
    1000
}
/// Upper bound of `fragments.max_datagrams`.
pub const MAX_FRAG_DATAGRAMS: u32 = 1 << 22;

impl Default for Fragments {
    fn default() -> Self {
        Fragments { enabled: true, max_datagrams: default_frag_datagrams(), timeout_ms: default_frag_timeout() }
    }
}

impl Fragments {
    fn validate(&self) -> Result<()> {
        if self.max_datagrams == 0 || self.max_datagrams > MAX_FRAG_DATAGRAMS {
            bail!(
                "fragments.max_datagrams: {} is out of range: 1 to {MAX_FRAG_DATAGRAMS} datagrams in flight",
                self.max_datagrams
            );
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            bail!("fragments.timeout_ms: {} is out of range: 10 to 60000 milliseconds", self.timeout_ms);
        }
        Ok(())
    }
}

/// `[health]`: settings of the data-path health checks (`health.via =
/// "datapath"` on a VIP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGlobal {
    /// Source address of data-path probes: backends answer it directly, so
    /// it must route back to this node (default: the interface's first
    /// IPv4 address). Weir owns TCP ports 61000-62023 on it.
    pub datapath_source: Option<String>,
}

/// Default UDP port of the flow sync between the nodes of a tier.
pub const DEFAULT_SYNC_PORT: u16 = 4740;

/// `[tier]`: what a node of a tier does beyond a single box.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Route health injection: each VIP address this node is ready to serve
    /// (attached, and one of the address's VIPs has a usable backend) is an
    /// address of a TUN device weir holds open, for the local BGP daemon to
    /// announce (BIRD: `protocol direct { interface "weir-*"; }`). The device
    /// dies with the process, so a kill -9 withdraws too.
    #[serde(default)]
    pub announce: bool,
    /// The TUN device's name; default "weir-" and the interface's name.
    pub device: Option<String>,
    /// Addresses of the tier's nodes (this one may be among them): every new
    /// flow's backend is sent to the others, and theirs are kept here, so a
    /// flow keeps its backend whichever node its next packet reaches.
    #[serde(default)]
    pub peers: Vec<String>,
    /// UDP port of the flow sync (default 4740).
    pub sync_port: Option<u16>,
}

impl Tier {
    pub fn device_for(&self, iface: &str) -> String {
        match &self.device {
            Some(d) => d.clone(),
            None => {
                let mut d = format!("weir-{iface}");
                d.truncate(15);
                d
            }
        }
    }

    pub fn peer_addrs(&self) -> Vec<IpAddr> {
        self.peers.iter().filter_map(|p| p.parse().ok()).collect()
    }

    fn validate(&self) -> Result<()> {
        if let Some(d) = &self.device {
            if d.is_empty() || d.len() > 15 || d.contains(['/', ' ', '\0']) || d == "." || d == ".." {
                bail!("tier.device: {} is not a usable interface name: 1 to 15 characters, no '/' or spaces", esc(d));
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.parse::<IpAddr>().is_err() {
                bail!("tier.peers[{i}]: {} is not an IP address (the sync goes to each peer's address)", esc(p));
            }
        }
        if self.sync_port == Some(0) {
            bail!("tier.sync_port: 0 is not a port: 1 to 65535 (default {DEFAULT_SYNC_PORT})");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackMode {
    /// On above `attack_on` SYN/s per service, off below `attack_off`.
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shield {
    /// SYNs per second per source (token bucket refill).
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// SYNs a source may send at once.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// One bucket per IPv4 /24 and IPv6 /64 instead of per address.
    #[serde(default)]
    pub aggregate: bool,
    #[serde(default)]
    pub attack: AttackMode,
    /// Service SYN/s above which attack mode starts (auto).
    #[serde(default = "default_attack_on")]
    pub attack_on: u32,
    /// Service SYN/s below which attack mode ends (auto).
    #[serde(default = "default_attack_off")]
    pub attack_off: u32,
    /// Seconds a source that answered a challenge stays proven.
    #[serde(default = "default_verified_ttl")]
    pub verified_ttl: u32,
    /// Count what would be dropped or challenged; drop nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Prefixes never limited.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Prefixes always dropped.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Load balancer: new flows per second the flow table accepts (0: no limit).
    #[serde(default)]
    pub max_new_flows: u32,
    /// Standalone `weir shield`: the local TCP ports to protect.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Token buckets kept (LRU entries).
    #[serde(default = "default_sources")]
    pub sources: u32,
    /// Outstanding challenges kept (LRU entries); size it above the flood's
    /// SYN/s x the clients' round trip so no real client's record is evicted.
    #[serde(default = "default_challenges")]
    pub challenges: u32,
}

fn default_rate() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}
fn default_attack_on() -> u32 {
    5000
}
fn default_attack_off() -> u32 {
    1000
}
fn default_verified_ttl() -> u32 {
    600
}
fn default_sources() -> u32 {
    65536
}
fn default_challenges() -> u32 {
    262144
}

/// Per-VIP overrides of the [shield] section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipShield {
    pub enabled: Option<bool>,
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    pub attack: Option<AttackMode>,
}

/// "198.18.0.0/24" or "2001:db8::/32" (a bare address is a /32 or /128).
pub fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    /// Flows remembered (LRU): an established flow keeps its backend while
    /// it is in this table. NAT flows have a table of their own of this size.
    #[serde(default = "default_flows")]
    pub size: u32,
    /// The flow and handshake tables keep their LRU lists per CPU
    /// (BPF_F_NO_COMMON_LRU) instead of one list shared by every CPU: no
    /// CPU waits on another's insert, but each CPU can only evict and
    /// reuse its own share (size / CPUs) of the entries. Safe when the NIC
    /// spreads connections evenly over the CPUs (RSS); with one hot CPU its
    /// share fills first and its flows are evicted early. README "Several
    /// CPUs".
    #[serde(default)]
    pub lru_per_cpu: bool,
    /// NAT: idle timeout of an established TCP flow, seconds.
    #[serde(default = "default_tcp_timeout")]
    pub tcp_timeout: u32,
    /// NAT: idle timeout of a TCP flow whose handshake has not completed
    /// (the backend SYN-ACKed and the client acknowledged that SYN-ACK).
    #[serde(default = "default_tcp_syn_timeout")]
    pub tcp_syn_timeout: u32,
    /// NAT: idle timeout after a FIN or RST. Above the backends' TIME_WAIT
    /// (60 s on Linux) so a port still in TIME_WAIT there is not reused.
    #[serde(default = "default_tcp_fin_timeout")]
    pub tcp_fin_timeout: u32,
    /// NAT: idle timeout of a UDP flow.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout: u32,
}

fn default_tcp_timeout() -> u32 {
    900
}
fn default_tcp_syn_timeout() -> u32 {
    30
}
fn default_tcp_fin_timeout() -> u32 {
    120
}
fn default_udp_timeout() -> u32 {
    60
}
/// SNAT ports: below Linux's ephemeral range (32768-60999), so the
/// balancer's own connections (health checks) never take a NAT flow's tuple.
pub const DEFAULT_SOURCE_PORTS: [u16; 2] = [1024, 32767];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maglev {
    /// Slots per VIP; a prime, ideally >= 100 x the VIP's backends.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
}

fn default_flows() -> u32 {
    65536
}
fn default_table_size() -> u32 {
    65537
}
fn default_weight() -> u32 {
    1
}
impl Default for Conntrack {
    fn default() -> Self {
        Self {
            size: default_flows(),
            lru_per_cpu: false,
            tcp_timeout: default_tcp_timeout(),
            tcp_syn_timeout: default_tcp_syn_timeout(),
            tcp_fin_timeout: default_tcp_fin_timeout(),
            udp_timeout: default_udp_timeout(),
        }
    }
}
impl Default for Maglev {
    fn default() -> Self {
        Self { table_size: default_table_size() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    #[default]
    Maglev,
    RoundRobin,
    SourceHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// L2 direct server return: backends on the balancer's segment, VIP on lo.
    #[default]
    Dsr,
    /// Full NAT: backends need no VIP; replies come back through weir.
    Nat,
    /// L3 direct server return: IPIP / IP6IP6 to backends in any subnet.
    Tunnel,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}
impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Maglev => "maglev",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::SourceHash => "source-hash",
        })
    }
}
impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
            Mode::Tunnel => "tunnel",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub name: Option<String>,
    pub address: String,
    /// 0 (the default) balances every port of the address.
    #[serde(default)]
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
    /// Overrides of the [shield] section for this VIP.
    pub shield: Option<VipShield>,
    /// Health checks of its backends (absent: none).
    pub health: Option<HealthCheck>,
    /// What happens to tracked flows of a backend that fails its checks.
    #[serde(default)]
    pub on_down: OnDown,
    /// nat: the SNAT address; tunnel: the outer source. Default: the
    /// interface's first global address of the VIP's family.
    pub source_address: Option<String>,
    /// nat: SNAT port range [first, last].
    pub source_ports: Option<[u16; 2]>,
    /// tunnel: answer packets too big to encapsulate with ICMP
    /// frag-needed / packet-too-big (default true).
    pub icmp_too_big: Option<bool>,
    /// Answer ICMP echo (ping) to the VIP's address from XDP (default
    /// true). Per address: VIPs that share one must agree.
    pub icmp_echo: Option<bool>,
    /// Answer ARP / IPv6 neighbour solicitations for the VIP's address
    /// (default true; false when `tier.announce` is on: a routed tier
    /// announces by BGP). Per address: VIPs that share one must agree.
    pub arp: Option<bool>,
    /// 802.1Q VLAN id (1-4094) the VIP is served on: only frames tagged
    /// with it are balanced, and ARP / NDP / ping for its address are
    /// answered on it only. Absent: untagged frames only. Per address:
    /// VIPs that share one must agree.
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Its tracked flows move to another backend (their connections reset
    /// there): clients learn at once instead of waiting on a dead host.
    #[default]
    Reschedule,
    /// Its tracked flows stay (for checks that fail while the service still
    /// serves established connections).
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Tcp,
    Http,
    None,
}

/// Which way a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckVia {
    /// From weir's namespace to the backend's own address.
    #[default]
    Direct,
    /// To the VIP, delivered to the backend as client packets are (DSR:
    /// its MAC; tunnel: encapsulated); NAT VIPs probe directly as before.
    Datapath,
}

/// A health check; every field optional so a backend can override a VIP's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: Option<CheckKind>,
    /// Port to probe; default the VIP's (required for port-0 VIPs).
    pub port: Option<u16>,
    /// HTTP: path requested (default "/").
    pub path: Option<String>,
    /// HTTP: status expected (default 200).
    pub expect: Option<u16>,
    pub interval_ms: Option<u32>,
    pub timeout_ms: Option<u32>,
    /// Successes in a row that bring a down backend back (default 2).
    pub rise: Option<u32>,
    /// Failures in a row that take a backend out (default 3).
    pub fall: Option<u32>,
    /// "direct" (default): probe the backend's address; "datapath": probe
    /// the VIP through the path client packets take (DSR and tunnel VIPs).
    pub via: Option<CheckVia>,
}

/// A backend's effective check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: CheckKind,
    pub port: u16,
    pub path: String,
    pub expect: u16,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
    pub via: CheckVia,
}

impl HealthCheck {
    /// `self` (the backend's) over `vip` (the VIP's), over the defaults.
    pub fn resolve(backend: Option<&HealthCheck>, vip: Option<&HealthCheck>, vip_port: u16) -> Option<Check> {
        if backend.is_none() && vip.is_none() {
            return None;
        }
        let pick = |f: &dyn Fn(&HealthCheck) -> Option<u32>, d: u32| backend.and_then(f).or_else(|| vip.and_then(f)).unwrap_or(d);
        let kind = backend.and_then(|h| h.kind).or_else(|| vip.and_then(|h| h.kind)).unwrap_or_default();
        if kind == CheckKind::None {
            return None;
        }
        let interval_ms = pick(&|h| h.interval_ms, 1000);
        Some(Check {
            kind,
            port: backend.and_then(|h| h.port).or_else(|| vip.and_then(|h| h.port)).unwrap_or(vip_port),
            path: backend
                .and_then(|h| h.path.clone())
                .or_else(|| vip.and_then(|h| h.path.clone()))
                .unwrap_or_else(|| "/".into()),
            expect: pick(&|h| h.expect.map(u32::from), 200) as u16,
            interval_ms,
            timeout_ms: pick(&|h| h.timeout_ms, interval_ms.min(500)),
            rise: pick(&|h| h.rise, 2),
            fall: pick(&|h| h.fall, 3),
            via: backend.and_then(|h| h.via).or_else(|| vip.and_then(|h| h.via)).unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: String,
    /// Share of new flows; 0 drains the backend (no new flows, tracked flows stay).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Next-hop MAC; when omitted it is read from the neighbour table.
    pub mac: Option<String>,
    /// Send through this interface (XDP_REDIRECT via a DEVMAP) instead of
    /// back out of the receiving one.
    pub iface: Option<String>,
    /// Overrides of the VIP's health check for this backend.
    pub health: Option<HealthCheck>,
    /// nat: the port the backend serves on (default: the VIP's port).
    pub port: Option<u16>,
    /// 802.1Q VLAN id (1-4094) the backend's frames leave with (tunnel:
    /// the outer frame's, the next hop's VLAN). Absent: untagged.
    pub vlan: Option<u16>,
}

/// An 802.1Q VLAN id as the config gives it: 1 to 4094 (0 and 4095 are
/// reserved by 802.1Q; "untagged" is written by leaving `vlan` out).
fn check_vlan(at: &str, v: Option<u16>) -> Result<()> {
    match v {
        Some(n) if !(1..=4094).contains(&n) => {
            bail!("{at}.vlan: {n} is not a VLAN id: 1 to 4094 (leave vlan out for untagged frames)")
        }
        _ => Ok(()),
    }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// VIP slots the loader sizes the Maglev ring map for: the configured
/// VIPs, with room for VIPs a reload adds (at least 16).
pub fn ring_vip_slots(vips: usize) -> u32 {
    (vips.min(MAX_VIPS as usize) as u32).max(16).min(MAX_VIPS)
}

/// Bytes of the Maglev ring map the loader allocates for `vips` VIPs of
/// `table_size` slots: two halves per VIP slot, 8 bytes per value.
pub fn ring_bytes(table_size: u32, vips: usize) -> u64 {
    u64::from(table_size) * u64::from(ring_vip_slots(vips)) * 2 * 8
}

/// Config files larger than this are refused before parsing (a config of
/// 65,536 backends is ~4 MiB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A config file's text, read up to MAX_CONFIG_BYTES (`weir check /dev/zero`
/// fails at once instead of reading until memory runs out).
pub fn read_capped(path: &str) -> Result<String> {
    use std::io::Read as _;
    let p = esc(path);
    let f = std::fs::File::open(path).with_context(|| format!("cannot read config file {p} (check the path and permissions)"))?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read config file {p} (check the path and permissions)"))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        bail!("config file {p} is larger than {} MiB: not a weir config", MAX_CONFIG_BYTES >> 20);
    }
    String::from_utf8(buf).map_err(|e| anyhow::anyhow!("config file {p} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// A value from a config or the command line as it may be printed: control
/// characters (newlines, terminal escapes) escaped, so a message is one
/// line and says what it says.
pub fn esc(v: &str) -> String {
    if v.chars().any(|c| c.is_control()) {
        v.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
    } else {
        v.to_string()
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

impl Vip {
    pub fn label(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("vip[{i}]"))
    }
    pub fn ip(&self) -> IpAddr {
        // Validated in Config::validate.
        self.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source_address.as_deref().and_then(|a| a.parse().ok())
    }
}

impl Backend {
    pub fn ip(&self) -> IpAddr {
        self.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(parse_mac)
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &str) -> Result<Config> {
        let text = read_capped(path)?;
        Config::from_toml(&text).with_context(|| format!("invalid config {}", esc(path)))
    }

    pub fn validate(&self) -> Result<()> {
        self.tier.validate()?;
        self.fragments.validate()?;
        if let Some(src) = &self.health.datapath_source {
            match src.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if !a.is_unspecified() && !a.is_multicast() && !a.is_loopback() && !a.is_broadcast() => {}
                Ok(ip) => bail!("health.datapath_source: {ip} cannot be the probes' source (need a unicast IPv4 address that routes back to this node)"),
                Err(_) => bail!("health.datapath_source: '{src}' is not an IPv4 address"),
            }
        }
        if self.conntrack.size == 0 || self.conntrack.size > MAX_FLOWS {
            bail!(
                "conntrack.size: {} is out of range: 1 to {MAX_FLOWS} flows (the LRU table is preallocated, ~100 bytes per flow)",
                self.conntrack.size
            );
        }
        let ct = &self.conntrack;
        for (name, v) in [
            ("tcp_timeout", ct.tcp_timeout),
            ("tcp_syn_timeout", ct.tcp_syn_timeout),
            ("tcp_fin_timeout", ct.tcp_fin_timeout),
            ("udp_timeout", ct.udp_timeout),
        ] {
            if v == 0 || v > 7 * 86400 {
                bail!("conntrack.{name}: {v} is out of range: 1 to 604800 seconds");
            }
        }
        let m = self.maglev.table_size;
        if !is_prime(m) {
            bail!("maglev.table_size: {m} is not a prime (try 65537, 655373 or another prime)");
        }
        if m > 10_000_019 {
            bail!("maglev.table_size: {m} is too large (at most 10000019)");
        }
        if self.vips.is_empty() {
            bail!("no [[vip]] defined: add at least one VIP with its backends");
        }
        if self.vips.len() > MAX_VIPS as usize {
            bail!("{} VIPs defined, at most {MAX_VIPS} are supported", self.vips.len());
        }
        // What the loader allocates (ring_vip_slots): two halves per VIP
        // slot (tables are swapped, not edited in place); array map values
        // are rounded up to 8 bytes.
        let ring_bytes = ring_bytes(m, self.vips.len());
        if ring_bytes > 1 << 30 {
            bail!(
                "maglev.table_size: {m} slots x {} VIP slots (room for reloads: at least 16) needs {} MiB of tables; \
                 use a smaller prime (65537 suits up to ~650 backends per VIP)",
                ring_vip_slots(self.vips.len()),
                ring_bytes >> 20
            );
        }
        let total: usize = self.vips.iter().map(|v| v.backends.len()).sum();
        if total > MAX_BACKENDS as usize {
            bail!("{total} backends defined, at most {MAX_BACKENDS} in all are supported");
        }
        if let Some(sh) = &self.shield {
            sh.validate()?;
        }
        // One probe source port per data-path check (bpf/probe.h).
        let datapath = self
            .vips
            .iter()
            .filter(|v| v.mode != Mode::Nat)
            .flat_map(|v| v.backends.iter().map(move |b| HealthCheck::resolve(b.health.as_ref(), v.health.as_ref(), v.port)))
            .filter(|c| c.as_ref().is_some_and(|c| c.via == CheckVia::Datapath))
            .count();
        let most = usize::from(crate::skel::PROBE_PORTS);
        if datapath > most {
            bail!("health.via: {datapath} backends have data-path checks, at most {most} are supported (one probe source port each); use via = \"direct\" for some");
        }
        let mut seen = HashSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            let at = format!("vip[{i}]");
            let addr: IpAddr = vip.address.parse().map_err(|_| {
                anyhow::anyhow!("{at}.address: '{}' is not an IPv4 or IPv6 address", vip.address)
            })?;
            if addr.is_unspecified() || addr.is_multicast() {
                bail!("{at}.address: {addr} cannot be a VIP (unspecified or multicast)");
            }
            if !seen.insert((addr, vip.port, vip.protocol)) {
                bail!(
                    "{at}: duplicate VIP {addr} port {} {}: each (address, port, protocol) may appear once",
                    vip.port,
                    vip.protocol
                );
            }
            if let Some(n) = &vip.name {
                if n.is_empty() || n.len() > 64 {
                    bail!("{at}.name: must be 1 to 64 characters");
                }
            }
            if vip.backends.is_empty() {
                bail!("{at} ({addr}): VIP without backends: add at least one [[vip.backend]]");
            }
            if let Some(o) = &vip.shield {
                if self.shield.is_none() {
                    bail!("{at}.shield: per-VIP shield settings need a [shield] section");
                }
                if vip.protocol != Protocol::Tcp && o.enabled == Some(true) {
                    bail!("{at}.shield: the SYN-flood shield protects TCP VIPs only");
                }
                // The same ranges as [shield]'s: above them the interval
                // rounds to 0 ns, which would silently mean "no limit".
                if let Some(r) = o.rate.filter(|r| !(1..=1_000_000).contains(r)) {
                    bail!("{at}.shield.rate: {r} is out of range: 1 to 1000000 SYN/s per source");
                }
                if let Some(b) = o.burst.filter(|b| !(1..=1_000_000).contains(b)) {
                    bail!("{at}.shield.burst: {b} is out of range: 1 to 1000000");
                }
            }
            vip.validate_mode(&at, addr)?;
            let echo = vip.icmp_echo.unwrap_or(true);
            if let Some(j) = self.vips[..i]
                .iter()
                .position(|o| o.address.parse::<IpAddr>().ok() == Some(addr) && o.icmp_echo.unwrap_or(true) != echo)
            {
                bail!(
                    "{at}.icmp_echo: {echo}{} but vip[{j}] has the same address and icmp_echo = {}: ping is answered per address, set it alike",
                    if vip.icmp_echo.is_none() { " (the default)" } else { "" },
                    !echo
                );
            }
            let arp = vip.arp.unwrap_or(!self.tier.announce);
            if let Some(j) = self.vips[..i]
                .iter()
                .position(|o| o.address.parse::<IpAddr>().ok() == Some(addr) && o.arp.unwrap_or(!self.tier.announce) != arp)
            {
                bail!(
                    "{at}.arp: {arp}{} but vip[{j}] has the same address and arp = {}: ARP/NDP is answered per address, set it alike",
                    if vip.arp.is_none() { " (the default)" } else { "" },
                    !arp
                );
            }
            check_vlan(&at, vip.vlan)?;
            if let Some(j) = self.vips[..i]
                .iter()
                .position(|o| o.address.parse::<IpAddr>().ok() == Some(addr) && o.vlan != vip.vlan)
            {
                let show = |v: Option<u16>| v.map(|n| n.to_string()).unwrap_or_else(|| "none (untagged)".into());
                bail!(
                    "{at}.vlan: {} but vip[{j}] has the same address and vlan {}: an address lives on one VLAN (ARP/NDP is answered per address), set it alike",
                    show(vip.vlan),
                    show(self.vips[j].vlan)
                );
            }
            if let Some(src) = vip.source_ip().filter(|_| vip.mode == Mode::Nat) {
                if let Some(j) = self.vips.iter().position(|o| o.address.parse::<IpAddr>().ok() == Some(src)) {
                    bail!(
                        "{at}.source_address: {src} is also the address of vip[{j}]: backends' replies to it would be taken for client traffic; use another address"
                    );
                }
            }
            let active = vip.backends.iter().filter(|b| b.weight > 0).count();
            if vip.scheduler == Scheduler::RoundRobin && active > RR_SLOTS as usize {
                bail!(
                    "{at}: round-robin supports at most {RR_SLOTS} backends with weight > 0 ({active} given); use scheduler = \"maglev\""
                );
            }
            let mut bseen = HashSet::new();
            for (j, b) in vip.backends.iter().enumerate() {
                let bat = format!("{at}.backend[{j}]");
                let ip: IpAddr = b.address.parse().map_err(|_| {
                    anyhow::anyhow!("{bat}.address: '{}' is not an IPv4 or IPv6 address", b.address)
                })?;
                if ip.is_ipv4() != addr.is_ipv4() {
                    bail!(
                        "{bat}.address: {ip} is not of the VIP's family ({addr}); weir does not translate between IPv4 and IPv6 (mode {})",
                        vip.mode
                    );
                }
                if let Some(p) = b.port {
                    if vip.mode != Mode::Nat {
                        bail!("{bat}.port: only mode = \"nat\" can change the destination port ({} keeps the client's packet as it is)", vip.mode);
                    }
                    if p == 0 {
                        bail!("{bat}.port: 0 is not a port");
                    }
                    if vip.port == 0 {
                        bail!("{bat}.port: the VIP balances every port (port 0), so each flow keeps its own port; remove backend port or give the VIP a port");
                    }
                }
                check_vlan(&bat, b.vlan)?;
                if b.iface.is_some() && vip.mode == Mode::Nat {
                    bail!("{bat}.iface: mode = \"nat\" sends backends out of the interface weir runs on (replies must come back through it); remove iface");
                }
                if !bseen.insert(ip) {
                    bail!("{bat}.address: {ip} is listed twice for this VIP; use weight to give it a larger share");
                }
                if b.weight > 65535 {
                    bail!("{bat}.weight: {} is above the maximum 65535", b.weight);
                }
                if let Some(mac) = &b.mac {
                    match parse_mac(mac) {
                        Some(m) if m[0] & 1 == 0 && m != [0; 6] => {}
                        Some(_) => bail!("{bat}.mac: {mac} is not a unicast MAC address"),
                        None => bail!("{bat}.mac: '{mac}' is not a MAC address like 02:00:00:00:00:0b"),
                    }
                }
                if let Some(c) = HealthCheck::resolve(b.health.as_ref(), vip.health.as_ref(), vip.port) {
                    if c.port == 0 {
                        bail!("{bat}.health: the VIP balances every port: set health.port");
                    }
                    if c.interval_ms < 50 || c.timeout_ms == 0 || c.timeout_ms > c.interval_ms {
                        bail!("{bat}.health: need interval_ms >= 50 and 0 < timeout_ms <= interval_ms");
                    }
                    if c.rise == 0 || c.fall == 0 {
                        bail!("{bat}.health: rise and fall must be at least 1");
                    }
                    if c.kind == CheckKind::Http && !c.path.starts_with('/') {
                        bail!("{bat}.health.path: '{}' must start with /", c.path);
                    }
                    if c.via == CheckVia::Datapath && vip.mode != Mode::Nat && !addr.is_ipv4() {
                        bail!("{bat}.health.via: \"datapath\" checks IPv4 VIPs only so far; use \"direct\" for {addr}");
                    }
                }
                if let Some(ifn) = &b.iface {
                    if ifn.is_empty() || ifn.len() > 15 {
                        bail!("{bat}.iface: '{ifn}' is not an interface name (1 to 15 characters)");
                    }
                }
            }
        }
        Ok(())
    }
}

impl Vip {
    fn validate_mode(&self, at: &str, addr: IpAddr) -> Result<()> {
        if let Some(src) = &self.source_address {
            if self.mode == Mode::Dsr {
                bail!("{at}.source_address: only mode = \"nat\" or \"tunnel\" sends from the balancer's own address");
            }
            let ip: IpAddr = src
                .parse()
                .map_err(|_| anyhow::anyhow!("{at}.source_address: '{src}' is not an IPv4 or IPv6 address"))?;
            if ip.is_ipv4() != addr.is_ipv4() {
                bail!("{at}.source_address: {ip} is not of the VIP's family ({addr})");
            }
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                bail!("{at}.source_address: {ip} cannot be a source address (unspecified, multicast or loopback)");
            }
        }
        if let Some([lo, hi]) = self.source_ports {
            if self.mode != Mode::Nat {
                bail!("{at}.source_ports: only mode = \"nat\" allocates source ports");
            }
            if lo == 0 || lo > hi {
                bail!("{at}.source_ports: [{lo}, {hi}] is not a range of ports: need 1 <= first <= last");
            }
        }
        if self.icmp_too_big.is_some() && self.mode != Mode::Tunnel {
            bail!("{at}.icmp_too_big: only mode = \"tunnel\" makes packets bigger");
        }
        Ok(())
    }
}

impl Shield {
    pub fn validate(&self) -> Result<()> {
        if self.rate == 0 || self.rate > 1_000_000 {
            bail!("shield.rate: {} is out of range: 1 to 1000000 SYN/s per source", self.rate);
        }
        if self.burst == 0 || self.burst > 1_000_000 {
            bail!("shield.burst: {} is out of range: 1 to 1000000", self.burst);
        }
        if self.attack_off > self.attack_on {
            bail!(
                "shield.attack_off ({}) is above shield.attack_on ({}): attack mode would never end",
                self.attack_off,
                self.attack_on
            );
        }
        if self.max_new_flows > 100_000_000 {
            bail!(
                "shield.max_new_flows: {} is out of range: 0 (no limit) to 100000000 new flows per second",
                self.max_new_flows
            );
        }
        if self.verified_ttl == 0 {
            bail!("shield.verified_ttl: must be at least 1 second");
        }
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > 4096 {
                bail!("shield.{name}: at most 4096 prefixes");
            }
            for (i, p) in list.iter().enumerate() {
                if parse_prefix(p).is_none() {
                    bail!("shield.{name}[{i}]: '{p}' is not a prefix like 198.51.100.0/24 or 2001:db8::/32");
                }
            }
        }
        if self.ports.contains(&0) {
            bail!("shield.ports: 0 is not a port");
        }
        for (name, v) in [("sources", self.sources), ("challenges", self.challenges)] {
            if v == 0 || v > MAX_FLOWS {
                bail!("shield.{name}: {v} is out of range: 1 to {MAX_FLOWS}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[conntrack]
size = 1024
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:0b"
[[vip.backend]]
address = "198.18.0.12"
weight = 3
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Config::from_toml(text).unwrap_err())
    }

    #[test]
    fn good_config_parses() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.conntrack.size, 1024);
        assert_eq!(c.vips[0].scheduler, Scheduler::RoundRobin);
        assert_eq!(c.vips[0].backends[1].weight, 3);
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.vips[0].backends[0].mac(), Some([2, 0, 0, 0, 0, 0x0b]));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&GOOD.replace("weight = 3", "wieght = 3"));
        assert!(e.contains("unknown field `wieght`"), "{e}");
    }

    #[test]
    fn duplicate_vip() {
        let dup = format!("{GOOD}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.13\"\n");
        let e = err(&dup);
        assert!(e.contains("vip[1]: duplicate VIP 198.18.0.100 port 80 tcp"), "{e}");
    }

    #[test]
    fn same_address_other_protocol_is_not_duplicate() {
        let ok = format!("{GOOD}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"udp\"\n[[vip.backend]]\naddress = \"198.18.0.13\"\n");
        Config::from_toml(&ok).unwrap();
    }

    #[test]
    fn vip_without_backends() {
        let e = err("[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\n");
        assert!(e.contains("vip[0] (198.18.0.100): VIP without backends"), "{e}");
    }

    #[test]
    fn bad_vip_address() {
        let e = err(&GOOD.replace("198.18.0.100", "198.18.0.300"));
        assert!(e.contains("vip[0].address: '198.18.0.300' is not an IPv4 or IPv6 address"), "{e}");
    }

    #[test]
    fn bad_backend_address() {
        let e = err(&GOOD.replace("198.18.0.12", "backend-two"));
        assert!(e.contains("vip[0].backend[1].address: 'backend-two'"), "{e}");
    }

    #[test]
    fn bad_mac() {
        let e = err(&GOOD.replace("02:00:00:00:00:0b", "02:00:00:00:0b"));
        assert!(e.contains("vip[0].backend[0].mac: '02:00:00:00:0b' is not a MAC address"), "{e}");
        let e = err(&GOOD.replace("02:00:00:00:00:0b", "01:00:5e:00:00:01"));
        assert!(e.contains("not a unicast MAC"), "{e}");
    }

    #[test]
    fn family_mismatch() {
        let e = err(&GOOD.replace("198.18.0.12", "2001:2::12"));
        assert!(e.contains("vip[0].backend[1].address: 2001:2::12 is not of the VIP's family"), "{e}");
    }

    #[test]
    fn table_size_must_be_prime() {
        let e = err(&GOOD.replace("251", "250"));
        assert!(e.contains("maglev.table_size: 250 is not a prime"), "{e}");
    }

    #[test]
    fn bad_protocol_and_scheduler() {
        let e = err(&GOOD.replace("\"tcp\"", "\"sctp\""));
        assert!(e.contains("unknown variant `sctp`"), "{e}");
        let e = err(&GOOD.replace("round-robin", "random"));
        assert!(e.contains("unknown variant `random`"), "{e}");
    }

    #[test]
    fn duplicate_backend_and_zero_conntrack() {
        let e = err(&GOOD.replace("198.18.0.12", "198.18.0.11"));
        assert!(e.contains("vip[0].backend[1].address: 198.18.0.11 is listed twice"), "{e}");
        let e = err(&GOOD.replace("size = 1024", "size = 0"));
        assert!(e.contains("conntrack.size"), "{e}");
    }

    #[test]
    fn config_files_are_size_capped_and_values_escaped() {
        let t = std::time::Instant::now();
        let e = format!("{:#}", Config::load("/dev/zero").unwrap_err());
        assert!(e.contains("config file /dev/zero is larger than 16 MiB"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(esc("web\n\x1b[31mred"), "web\\n\\u{1b}[31mred");
        let e = format!("{:#}", Config::load("/nonexistent/a\nb").unwrap_err());
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn round_robin_backend_limit_and_table_memory() {
        let mut t = String::from("[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nscheduler = \"round-robin\"\n");
        for i in 0..257 {
            t += &format!("[[vip.backend]]\naddress = \"10.0.{}.{}\"\n", i / 200, i % 200 + 1);
        }
        let e = err(&t);
        assert!(e.contains("vip[0]: round-robin supports at most 256 backends with weight > 0 (257 given)"), "{e}");
        let mut big = GOOD.replace("table_size = 251", "table_size = 10000019");
        for i in 2..16 {
            big += &format!("[[vip]]\naddress = \"198.18.1.{i}\"\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n");
        }
        let e = err(&big);
        assert!(e.contains("maglev.table_size: 10000019 slots x 16 VIP slots (room for reloads: at least 16) needs 2441 MiB"), "{e}");
        let e = err(&GOOD.replace("size = 1024", "size = 16777217"));
        assert!(e.contains("conntrack.size: 16777217 is out of range"), "{e}");
    }

    #[test]
    fn shield_section() {
        let with = |extra: &str| format!("[shield]\n{extra}\n{GOOD}");
        let c = Config::from_toml(&with("rate = 10\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]")).unwrap();
        let sh = c.shield.unwrap();
        assert_eq!((sh.rate, sh.burst, sh.attack), (10, 100, AttackMode::Auto));
        let e = err(&with("deny = [\"10.0.0.0/33\"]"));
        assert!(e.contains("shield.deny[0]: '10.0.0.0/33' is not a prefix"), "{e}");
        let e = err(&with("rate = 0"));
        assert!(e.contains("shield.rate: 0 is out of range"), "{e}");
        let e = err(&with("attack_on = 10\nattack_off = 20"));
        assert!(e.contains("shield.attack_off (20) is above shield.attack_on (10)"), "{e}");
        let e = err(&with("attack = \"maybe\""));
        assert!(e.contains("unknown variant `maybe`"), "{e}");
        let e = err(&GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nshield = { rate = 5 }"));
        assert!(e.contains("vip[0].shield: per-VIP shield settings need a [shield] section"), "{e}");
        // Per-VIP rate / burst and max_new_flows: ranges like the global
        // ones (above them the interval rounded to 0 ns: no limit at all).
        let vip_shield = |o: &str| with("").replace("scheduler = \"round-robin\"", &format!("scheduler = \"round-robin\"\nshield = {{ {o} }}"));
        let e = err(&vip_shield("rate = 2000000000"));
        assert!(e.contains("vip[0].shield.rate: 2000000000 is out of range: 1 to 1000000"), "{e}");
        let e = err(&vip_shield("burst = 0"));
        assert!(e.contains("vip[0].shield.burst: 0 is out of range"), "{e}");
        assert!(Config::from_toml(&vip_shield("rate = 1000000, burst = 1000000")).is_ok());
        let e = err(&with("max_new_flows = 1500000000"));
        assert!(e.contains("shield.max_new_flows: 1500000000 is out of range"), "{e}");
        assert!(Config::from_toml(&with("max_new_flows = 100000000")).is_ok());
        assert_eq!(parse_prefix("198.18.0.7"), Some(("198.18.0.7".parse().unwrap(), 32)));
        assert_eq!(parse_prefix("2001:db8::/32"), Some(("2001:db8::".parse().unwrap(), 32)));
    }

    #[test]
    fn health_checks_resolve_and_validate() {
        let with = |vip: &str, be: &str| {
            GOOD.replace("scheduler = \"round-robin\"\n", &format!("scheduler = \"round-robin\"\n{vip}\n"))
                .replace("weight = 3", &format!("weight = 3\n{be}"))
        };
        let c = Config::from_toml(&with("health = { kind = \"http\", path = \"/hc\", interval_ms = 200 }", "health = { fall = 1 }")).unwrap();
        let v = &c.vips[0];
        let b0 = HealthCheck::resolve(v.backends[0].health.as_ref(), v.health.as_ref(), v.port).unwrap();
        let b1 = HealthCheck::resolve(v.backends[1].health.as_ref(), v.health.as_ref(), v.port).unwrap();
        assert_eq!((b0.kind, b0.path.as_str(), b0.port, b0.interval_ms, b0.fall), (CheckKind::Http, "/hc", 80, 200, 3));
        assert_eq!(b1.fall, 1, "backend override");
        assert_eq!(v.on_down, OnDown::Reschedule);
        let e = err(&with("health = { interval_ms = 100, timeout_ms = 500 }", ""));
        assert!(e.contains("vip[0].backend[0].health: need interval_ms >= 50 and 0 < timeout_ms <= interval_ms"), "{e}");
        let e = err(&with("health = { kind = \"http\", path = \"hc\" }", ""));
        assert!(e.contains("health.path: 'hc' must start with /"), "{e}");
        let e = err(&with("health = {}", "").replace("port = 80\n", ""));
        assert!(e.contains("the VIP balances every port: set health.port"), "{e}");
        let none = Config::from_toml(&with("health = { kind = \"none\" }", "")).unwrap();
        assert!(HealthCheck::resolve(None, none.vips[0].health.as_ref(), 80).is_none());
        let e = err(&with("on_down = \"drop\"", ""));
        assert!(e.contains("unknown variant `drop`"), "{e}");
    }

    #[test]
    fn datapath_checks_validate() {
        let with = |vip: &str| GOOD.replace("scheduler = \"round-robin\"\n", &format!("scheduler = \"round-robin\"\n{vip}\n"));
        let c = Config::from_toml(&with("health = { kind = \"http\", via = \"datapath\" }")).unwrap();
        let v = &c.vips[0];
        let b0 = HealthCheck::resolve(v.backends[0].health.as_ref(), v.health.as_ref(), v.port).unwrap();
        assert_eq!(b0.via, CheckVia::Datapath);
        let d = Config::from_toml(&with("health = { kind = \"http\" }")).unwrap();
        let b0 = HealthCheck::resolve(d.vips[0].backends[0].health.as_ref(), d.vips[0].health.as_ref(), 80).unwrap();
        assert_eq!(b0.via, CheckVia::Direct, "the default is as before");
        let e = err(&with("health = { via = \"datapth\" }"));
        assert!(e.contains("unknown variant `datapth`") && e.contains("direct") && e.contains("datapath"), "{e}");
        let src = |s: &str| format!("[health]\ndatapath_source = \"{s}\"\n{}", with("health = { via = \"datapath\" }"));
        assert!(Config::from_toml(&src("198.18.0.9")).is_ok());
        let e = err(&src("2001:db8::9"));
        assert!(e.contains("health.datapath_source: 2001:db8::9 cannot be the probes' source"), "{e}");
        let e = err(&src("127.0.0.1"));
        assert!(e.contains("health.datapath_source: 127.0.0.1 cannot be"), "{e}");
        let e = err(&src("node"));
        assert!(e.contains("health.datapath_source: 'node' is not an IPv4 address"), "{e}");
        let v6 = with("health = { via = \"datapath\" }")
            .replace("198.18.0.100", "2001:2::100")
            .replace("198.18.0.11", "2001:2::11")
            .replace("198.18.0.12", "2001:2::12");
        let e = err(&v6);
        assert!(e.contains("vip[0].backend[0].health.via: \"datapath\" checks IPv4 VIPs only so far"), "{e}");
        let e = err(&format!("[health]\nsource = \"198.18.0.9\"\n{}", with("")));
        assert!(e.contains("unknown field `source`"), "{e}");
    }

    #[test]
    fn nat_and_tunnel_settings() {
        let nat = GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nmode = \"nat\"\nsource_address = \"198.18.0.9\"\nsource_ports = [2000, 2999]")
            .replace("weight = 3", "weight = 3\nport = 8080");
        let c = Config::from_toml(&nat).unwrap();
        assert_eq!(c.vips[0].mode, Mode::Nat);
        assert_eq!(c.vips[0].source_ports, Some([2000, 2999]));
        assert_eq!(c.vips[0].backends[1].port, Some(8080));
        assert_eq!((c.conntrack.tcp_timeout, c.conntrack.tcp_fin_timeout, c.conntrack.udp_timeout), (900, 120, 60));
        let e = err(&nat.replace("[2000, 2999]", "[2999, 2000]"));
        assert!(e.contains("vip[0].source_ports: [2999, 2000] is not a range of ports"), "{e}");
        let e = err(&nat.replace("198.18.0.9", "2001:2::10"));
        assert!(e.contains("vip[0].source_address: 2001:2::10 is not of the VIP's family"), "{e}");
        let e = err(&nat.replace("198.18.0.9", "localhost"));
        assert!(e.contains("vip[0].source_address: 'localhost' is not an IPv4 or IPv6 address"), "{e}");
        let e = err(&nat.replace("port = 8080", "port = 8080\niface = \"veth7\""));
        assert!(e.contains("vip[0].backend[1].iface: mode = \"nat\" sends backends out of the interface weir runs on"), "{e}");
        let e = err(&nat.replace("port = 80\n", ""));
        assert!(e.contains("vip[0].backend[1].port: the VIP balances every port"), "{e}");
        // DSR and tunnel keep the client's packet: no port change, no SNAT.
        let e = err(&GOOD.replace("weight = 3", "weight = 3\nport = 8080"));
        assert!(e.contains("vip[0].backend[1].port: only mode = \"nat\" can change the destination port (dsr keeps"), "{e}");
        let e = err(&nat.replace("mode = \"nat\"", "mode = \"tunnel\"").replace("port = 8080", ""));
        assert!(e.contains("vip[0].source_ports: only mode = \"nat\" allocates source ports"), "{e}");
        let e = err(&GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nsource_address = \"198.18.0.10\""));
        assert!(e.contains("vip[0].source_address: only mode = \"nat\" or \"tunnel\""), "{e}");
        let e = err(&GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nicmp_too_big = false"));
        assert!(e.contains("vip[0].icmp_too_big: only mode = \"tunnel\""), "{e}");
        let e = err(&nat.replace("198.18.0.9", "198.18.0.100"));
        assert!(e.contains("vip[0].source_address: 198.18.0.100 is also the address of vip[0]"), "{e}");
        let e = err(&GOOD.replace("size = 1024", "size = 1024\nudp_timeout = 0"));
        assert!(e.contains("conntrack.udp_timeout: 0 is out of range"), "{e}");
        let e = err(&GOOD.replace("round-robin", "round-robin\"\nmode = \"masquerade"));
        assert!(e.contains("unknown variant `masquerade`"), "{e}");
    }

    #[test]
    fn icmp_echo_per_address() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.vips[0].icmp_echo, None, "default: on (plan: unwrap_or(true))");
        let other = "\n[[vip]]\naddress = \"198.18.0.100\"\nport = 53\nprotocol = \"udp\"\n[[vip.backend]]\naddress = \"198.18.0.13\"\n";
        let e = err(&format!("{GOOD}{}", other.replace("protocol = \"udp\"", "protocol = \"udp\"\nicmp_echo = false")));
        assert!(e.contains("vip[1].icmp_echo: false but vip[0] has the same address and icmp_echo = true"), "{e}");
        let e = err(&format!("{}{other}", GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nicmp_echo = false")));
        assert!(e.contains("vip[1].icmp_echo: true (the default) but vip[0] has the same address and icmp_echo = false"), "{e}");
        // Both off, or another address: fine.
        let off = GOOD.replace("scheduler = \"round-robin\"", "scheduler = \"round-robin\"\nicmp_echo = false");
        Config::from_toml(&format!("{off}{}", other.replace("protocol = \"udp\"", "protocol = \"udp\"\nicmp_echo = false"))).unwrap();
        Config::from_toml(&format!("{GOOD}{}", other.replace("198.18.0.100", "198.18.0.101").replace("protocol = \"udp\"", "protocol = \"udp\"\nicmp_echo = false"))).unwrap();
    }

    #[test]
    fn no_vips() {
        let e = err("[conntrack]\nsize = 10\n");
        assert!(e.contains("no [[vip]] defined"), "{e}");
    }
}
