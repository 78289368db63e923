//! Flow sync between the nodes of a tier (tier.peers). Every flow a node
//! makes established (a DSR or tunnel TCP flow past its handshake, a new
//! UDP flow) goes, as (5-tuple, backend address and port), to every other
//! node, which keeps it in its own flow table unless it already has the
//! flow. A flow therefore keeps its backend whichever node ECMP sends its
//! next packet to, also after the nodes' tables changed since it started
//! (backends added, drained, removed): see docs/scale-out.md for why this
//! design and what it costs.
//!
//! Two threads, neither touching the core: one collects the data plane's
//! flow_sync ring every 5 ms and sends batches over UDP; one receives
//! batches from the configured peers only and inserts with BPF_NOEXIST (a
//! flow the local data plane wrote, maybe a moment ago on another CPU, is
//! never overwritten). The backend travels as its address, so nodes need
//! not number their backends alike.
//!
//! Wire format (UDP, all integers big-endian but the 5-tuple, which is the
//! data plane's struct flow_key as is: addresses and ports already in
//! network order): header "WRS1", u16 record count, u16 zero; then records
//! of 60 bytes: flow_key (40), backend address (16, IPv4 in the first 4),
//! backend port (u16, 0: the VIP's), family (u8: 4 or 6), zero (u8).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::{Deserialize, Serialize};

use crate::config::Protocol;
use crate::plan::Plan;
use crate::skel::{Flow, FlowKey};

const MAGIC: &[u8; 4] = b"WRS1";
const HEADER: usize = 8;
const RECORD: usize = 60;
/// Records per datagram: 8 + 24 * 60 = 1448 bytes, under any MTU of 1500.
const PER_DATAGRAM: usize = 24;
/// How often the ring is collected (the longest a flow waits to be sent).
const COLLECT: Duration = Duration::from_millis(5);

/// One synced flow, as on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub key: FlowKey,
    pub backend: IpAddr,
    pub port: u16,
}

pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + records.len() * RECORD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for r in records {
        out.extend_from_slice(plain_bytes(&r.key));
        let mut a = [0u8; 16];
        let fam = match r.backend {
            IpAddr::V4(v) => {
                a[..4].copy_from_slice(&v.octets());
                4
            }
            IpAddr::V6(v) => {
                a.copy_from_slice(&v.octets());
                6
            }
        };
        out.extend_from_slice(&a);
        out.extend_from_slice(&r.port.to_be_bytes());
        out.extend_from_slice(&[fam, 0]);
    }
    out
}

/// The records of a datagram; None if it is not one (wrong magic, length
/// that disagrees with the count, unknown family).
pub fn decode(buf: &[u8]) -> Option<Vec<Record>> {
    if buf.len() < HEADER || &buf[..4] != MAGIC {
        return None;
    }
    let n = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if buf.len() != HEADER + n * RECORD {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for rec in buf[HEADER..].chunks_exact(RECORD) {
        let mut key = FlowKey::default();
        plain::copy_from_bytes(&mut key, &rec[..40]).ok()?;
        let a = &rec[40..56];
        let backend = match rec[58] {
            4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?)),
            _ => return None,
        };
        out.push(Record { key, backend, port: u16::from_be_bytes([rec[56], rec[57]]) });
    }
    Some(out)
}

fn plain_bytes(k: &FlowKey) -> &[u8] {
    // SAFETY: FlowKey is Plain (skel.rs): 40 bytes of integers.
    unsafe { plain::as_bytes(k) }
}

/// What the threads need of the plan: backend ids to identities (sending)
/// and VIPs' backends by identity (receiving). Rebuilt by the core on
/// every reload.
#[derive(Debug, Default, Clone)]
pub struct Index {
    by_id: BTreeMap<u32, (IpAddr, u16)>,
    /// (VIP address, port (0: every port), protocol) -> (vip id, backend identity -> id).
    vips: BTreeMap<(IpAddr, u16, u8), (u32, BTreeMap<(IpAddr, u16), u32>)>,
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn key_addr(words: &[u32; 4], family: u8) -> IpAddr {
    let mut b = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if u32::from(family) == crate::skel::weir_const::WEIR_FAMILY_V4.0 as u32 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

impl Index {
    pub fn of(plan: &Plan) -> Index {
        let mut ix = Index::default();
        for v in &plan.vips {
            // NAT flows are bound to their node's SNAT address: not synced.
            if v.mode == crate::config::Mode::Nat {
                continue;
            }
            let mut bs = BTreeMap::new();
            for b in &v.backends {
                let ident = (b.addr, b.port.unwrap_or(0));
                ix.by_id.insert(b.id, ident);
                bs.insert(ident, b.id);
            }
            ix.vips.insert((v.addr, v.port, proto_num(v.proto)), (v.id, bs));
        }
        ix
    }

    /// The local (vip id, backend id) of a peer's record; None for a record
    /// that names no VIP and backend of this node, or that no packet could
    /// ever match (padding set, a backend of the other family, an IPv4 key
    /// with address bits past its first word): such records would only take
    /// room in the flow table.
    pub fn resolve(&self, r: &Record) -> Option<(u32, u32)> {
        let v4 = u32::from(r.key.family) == crate::skel::weir_const::WEIR_FAMILY_V4.0 as u32;
        if r.key.pad != 0 || v4 != r.backend.is_ipv4() {
            return None;
        }
        if v4 && (r.key.src[1..].iter().chain(&r.key.dst[1..]).any(|w| *w != 0)) {
            return None;
        }
        let dst = key_addr(&r.key.dst, r.key.family);
        let dport = u16::from_be(r.key.dport);
        let (vip, bs) =
            self.vips.get(&(dst, dport, r.key.proto)).or_else(|| self.vips.get(&(dst, 0, r.key.proto)))?;
        bs.get(&(r.backend, r.port)).map(|id| (*vip, *id))
    }
}

/// Counters of the sync, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub inserted: AtomicU64,
    /// The flow was known here already (the local entry is kept).
    pub present: AtomicU64,
    /// No such VIP or backend here (configs differ: see the fingerprint).
    pub unknown: AtomicU64,
    /// Datagrams from an address that is not a peer, or malformed.
    pub rejected: AtomicU64,
    pub send_errors: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStats {
    pub peers: Vec<String>,
    pub sent: u64,
    pub received: u64,
    pub inserted: u64,
    pub present: u64,
    pub unknown: u64,
    pub rejected: u64,
    pub send_errors: u64,
}

impl Counters {
    pub fn stats(&self, peers: &[SocketAddr]) -> SyncStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SyncStats {
            peers: peers.iter().map(|p| p.ip().to_string()).collect(),
            sent: g(&self.sent),
            received: g(&self.received),
            inserted: g(&self.inserted),
            present: g(&self.present),
            unknown: g(&self.unknown),
            rejected: g(&self.rejected),
            send_errors: g(&self.send_errors),
        }
    }
}

/// The running sync: dropping it stops both threads.
pub struct Sync {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub index: Arc<RwLock<Index>>,
    pub counters: Arc<Counters>,
    pub peers: Vec<SocketAddr>,
    /// tier.peers and tier.sync_port as configured (a reload that changes
    /// them restarts the sync).
    pub configured: (Vec<String>, Option<u16>),
}

/// Every address of every interface in this namespace (a peer list may name
/// this node too: the same config goes to every node).
fn local_addrs() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(mut rt) = crate::netlink::Rtnl::open() {
        if let Ok(links) = rt.links() {
            for l in links {
                out.extend(rt.global_addrs(l.ifindex).unwrap_or_default());
            }
        }
    }
    out
}

impl Sync {
    /// Start syncing with `plan.tier.peers` (those that are not this node).
    /// None when there is no other peer.
    pub fn start(plan: &Plan, ring: MapHandle, flows: crate::dataplane::FlowTables, backends: MapHandle) -> Result<Option<Sync>> {
        let port = plan.tier.sync_port.unwrap_or(crate::config::DEFAULT_SYNC_PORT);
        let me = local_addrs();
        let peers: Vec<SocketAddr> =
            plan.tier.peer_addrs().into_iter().filter(|a| !me.contains(a)).map(|a| SocketAddr::new(a, port)).collect();
        if peers.is_empty() {
            return Ok(None);
        }
        let sock = dual_stack_udp(port)
            .or_else(|_| UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)))
            .with_context(|| format!("binding the flow sync's UDP port {port} (tier.sync_port): is another weir using it?"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let index = Arc::new(RwLock::new(Index::of(plan)));
        let counters = Arc::new(Counters::default());
        let tx_sock = sock.try_clone()?;
        let mut threads = Vec::new();
        {
            let (stop, index, counters, peers) = (stop.clone(), index.clone(), counters.clone(), peers.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("weir-sync-tx".into())
                    .spawn(move || sender(ring, tx_sock, peers, index, counters, stop))?,
            );
        }
        {
            let (stop, index, counters) = (stop.clone(), index.clone(), counters.clone());
            let allowed: BTreeSet<IpAddr> = peers.iter().map(|p| canonical(p.ip())).collect();
            threads.push(
                std::thread::Builder::new()
                    .name("weir-sync-rx".into())
                    .spawn(move || receiver(sock, allowed, flows, backends, index, counters, stop))?,
            );
        }
        tracing::info!(
            "flow sync on UDP port {port} with {}",
            peers.iter().map(|p| p.ip().to_string()).collect::<Vec<_>>().join(", ")
        );
        let configured = (plan.tier.peers.clone(), plan.tier.sync_port);
        Ok(Some(Sync { stop, threads, index, counters, peers, configured }))
    }

    pub fn set_plan(&self, plan: &Plan) {
        if let Ok(mut ix) = self.index.write() {
            *ix = Index::of(plan);
        }
    }

    pub fn stats(&self) -> SyncStats {
        self.counters.stats(&self.peers)
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket on [::]:port that takes IPv4 too, whatever
/// net.ipv6.bindv6only says (IPV6_V6ONLY set to 0 before the bind).
fn dual_stack_udp(port: u16) -> std::io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on an fd owned here until from_raw_fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = UdpSocket::from_raw_fd(fd);
        let off: libc::c_int = 0;
        if libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&off as *const libc::c_int).cast(), 4) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        if libc::bind(fd, (&sa as *const libc::sockaddr_in6).cast(), std::mem::size_of::<libc::sockaddr_in6>() as u32) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sock)
    }
}

/// An IPv4-mapped IPv6 address (from the dual-stack socket) as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        a => a,
    }
}

fn sender(
    ring: MapHandle,
    sock: UdpSocket,
    peers: Vec<SocketAddr>,
    index: Arc<RwLock<Index>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let pending: Arc<std::sync::Mutex<Vec<(u32, FlowKey)>>> = Arc::default();
    let sink = pending.clone();
    let mut b = libbpf_rs::RingBufferBuilder::new();
    let added = b.add(&ring, move |data: &[u8]| {
        if data.len() >= 44 {
            let mut key = FlowKey::default();
            if plain::copy_from_bytes(&mut key, &data[..40]).is_ok() {
                let id = u32::from_ne_bytes([data[40], data[41], data[42], data[43]]);
                if let Ok(mut p) = sink.lock() {
                    p.push((id, key));
                }
            }
        }
        0
    });
    let built = match added {
        Ok(_) => b.build(),
        Err(e) => Err(e),
    };
    let rb = match built {
        Ok(rb) => rb,
        Err(e) => {
            tracing::error!("flow sync: cannot read the flow_sync ring: {e:#}; flows are not sent to the peers");
            return;
        }
    };
    // IPv6 peers need an IPv6 socket and IPv4 ones a socket that reaches
    // them: the dual-stack socket does both; map IPv4 peers for it.
    let v6sock = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let dests: Vec<SocketAddr> = peers
        .iter()
        .map(|p| match (v6sock, p.ip()) {
            (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), p.port()),
            _ => *p,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let _ = rb.consume();
        let batch: Vec<(u32, FlowKey)> = pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        if !batch.is_empty() {
            let records: Vec<Record> = {
                let Ok(ix) = index.read() else { return };
                batch
                    .iter()
                    .filter_map(|(id, key)| ix.by_id.get(id).map(|(a, p)| Record { key: *key, backend: *a, port: *p }))
                    .collect()
            };
            for chunk in records.chunks(PER_DATAGRAM) {
                let dgram = encode(chunk);
                for d in &dests {
                    match sock.send_to(&dgram, d) {
                        Ok(_) => {
                            counters.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        std::thread::sleep(COLLECT.saturating_sub(t.elapsed()));
    }
}

fn receiver(
    sock: UdpSocket,
    allowed: BTreeSet<IpAddr>,
    flows: crate::dataplane::FlowTables,
    backends: MapHandle,
    index: Arc<RwLock<Index>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout: look at `stop`
        };
        let records = match decode(&buf[..n]) {
            Some(r) if allowed.contains(&canonical(from.ip())) => r,
            _ => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        counters.received.fetch_add(records.len() as u64, Ordering::Relaxed);
        let Ok(ix) = index.read() else { return };
        for r in &records {
            let Some((vip, id)) = ix.resolve(r) else {
                counters.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // The backend's current generation: the flow belongs to it as it is now.
            let generation = backends
                .lookup(&id.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|v| {
                    let mut b = crate::skel::Backend::default();
                    plain::copy_from_bytes(&mut b, &v).ok().map(|()| b.generation)
                })
                .unwrap_or(0);
            let f = Flow { backend_id: id, vip_id: vip as u16, generation };
            match flows.insert_new(&r.key, &f) {
                Ok(true) => counters.inserted.fetch_add(1, Ordering::Relaxed),
                // Tracked here already (this node's own entry wins), or not
                // writable: the flow is not taken over either way.
                Ok(false) | Err(_) => counters.present.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        let mut k = FlowKey::default();
        k.src[0] = u32::from_ne_bytes(src);
        k.dst[0] = u32::from_ne_bytes(dst);
        k.sport = sport.to_be();
        k.dport = dport.to_be();
        k.proto = 6;
        k.family = crate::skel::weir_const::WEIR_FAMILY_V4.0 as u8;
        k
    }

    #[test]
    fn records_survive_the_wire() {
        let rs = vec![
            Record { key: key([10, 0, 0, 1], 40000, [198, 18, 1, 1], 80), backend: "10.62.0.21".parse().unwrap(), port: 0 },
            Record { key: key([10, 0, 0, 2], 1, [198, 18, 1, 2], 443), backend: "fd62::21".parse().unwrap(), port: 8080 },
        ];
        let d = encode(&rs);
        assert_eq!(d.len(), HEADER + 2 * RECORD);
        let back = decode(&d).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in back.iter().zip(&rs) {
            assert_eq!((plain_bytes(&a.key), a.backend, a.port), (plain_bytes(&b.key), b.backend, b.port));
        }
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let rs = vec![Record { key: key([10, 0, 0, 1], 1, [198, 18, 1, 1], 80), backend: "10.0.0.9".parse().unwrap(), port: 0 }];
        let d = encode(&rs);
        assert!(decode(&d[..d.len() - 1]).is_none(), "short");
        let mut bad = d.clone();
        bad[0] = b'X';
        assert!(decode(&bad).is_none(), "magic");
        let mut bad = d.clone();
        bad[HEADER + 58] = 5;
        assert!(decode(&bad).is_none(), "family");
        let mut bad = d;
        bad[5] = 2;
        assert!(decode(&bad).is_none(), "count");
    }
}
