//! IP fragments to a VIP end to end (root), in the lab (lab/lab.sh) in each
//! forwarding mode (DSR, tunnel, NAT), IPv4 and IPv6. Per family, 40
//! datagrams of 8000 bytes (6 fragments each) with distinct payloads, sent
//! (1) by the kernel, in order, from one socket; (2) reordered, one flow per
//! datagram; (3) reordered, one flow (NAT: to a source-hash VIP). Each must
//! reach exactly one backend whole (length + sha256 logged by a UDP server
//! on every backend), its echo must come back whole, the switch must hand
//! the backends every fragment in the mode's form, weir's frag_* counters
//! must match what the client sent, and no backend's kernel may time out a
//! partial datagram (IpReasmFails / Ip6ReasmFails, reassembly timeout 3 s).
//! Then `ping -s 4000 -c 3` to each VIP: answered from the VIP (DSR,
//! tunnel), or each echo reassembled on one backend and not answered (NAT).
//! The design is bpf/frag.h's header comment.
//!
//! Measured and asserted as they are: NAT, one flow, maglev, reordered
//! (nat_one_flow_reordered: datagrams lost, drop_frag_split); tunnel with
//! 1500-byte client fragments (fragments_tunnel_full_size, which FAILS on a
//! data-plane defect: see tunnel_full_size).
//!
//! Reordering: this kernel has no sch_netem (`tc qdisc add .. netem` says
//! "Specified qdisc kind is unknown"), so the client fragments the datagrams
//! itself and sends the fragments through a raw socket (IPv4 IPPROTO_RAW /
//! IPv6 IPPROTO_RAW, header included) in a shuffled order, four datagrams
//! interleaved (seeded): later fragments often arrive before their first.
//!
//! Tunnel mode: a client fragment of a full 1500 bytes cannot be wrapped in
//! another 20 / 40 bytes on the lab's 1500-byte links, so in fragments_tunnel
//! the client's route to the VIP has `mtu 1400`, as a deployment would give
//! its clients' path room for the outer header.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{counter, Lab};
use common::require_root;

const N: usize = 40;
const SIZE: usize = 8000;
const PORT: u16 = 9000;
const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:2::100";
/// NAT only: the same VIP with the source-hash scheduler, on an address of its own.
const VIP4SH: &str = "198.18.0.102";
const VIP6SH: &str = "2001:2::102";
const CLIENT4: &str = "198.18.0.1";
const CLIENT6: &str = "2001:2::1";
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];

/// One UDP VIP per family on an address of its own (the ICMP fragments of a
/// big ping go to the address's only VIP), port 9000, over b1..b3.
fn config(mode: &str) -> String {
    let mut c = String::new();
    let mut vips = vec![("frag4", VIP4, "198.18.0.", "maglev"), ("frag6", VIP6, "2001:2::", "maglev")];
    if mode == "nat" {
        vips.push(("frag4sh", VIP4SH, "198.18.0.", "source-hash"));
        vips.push(("frag6sh", VIP6SH, "2001:2::", "source-hash"));
    }
    for (name, vip, net, sched) in vips {
        c += &format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"{mode}\"\nscheduler = \"{sched}\"\n"
        );
        for b in 11..=13 {
            c += &format!("[[vip.backend]]\naddress = \"{net}{b}\"\n");
        }
    }
    c
}

/// The backends' UDP server: logs `TAG LEN SHA256 PEER` per datagram and
/// echoes it whole to its sender. Exits by itself after argv[3] seconds.
const SERVER_PY: &str = r#"
import hashlib, select, signal, socket, sys, time
port = int(sys.argv[1]); log = open(sys.argv[2], "a", buffering=1)
deadline = time.time() + float(sys.argv[3])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
socks = []
for a in sys.argv[4:]:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((a, port))
    socks.append(s)
print("ready", flush=True)
while time.time() < deadline:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        d, peer = s.recvfrom(65535)
        tag = d[:32].split(b"|")[0].decode("ascii", "replace")
        log.write("%s %d %s %s\n" % (tag, len(d), hashlib.sha256(d).hexdigest(), peer[0]))
        s.sendto(d, peer)
"#;

/// The client: N datagrams of SIZE bytes, distinct payloads `TAG-i|random`,
/// to the VIP, then the echoes (bounded). argv: how (kernel | raw |
/// rawport), family, src, dst, port, n, size, mtu, tag, seed. kernel: one
/// UDP socket, the kernel fragments in order. raw: one UDP socket per
/// datagram (its port is the datagram's source port, and it receives the
/// echo: every datagram a new flow); the client builds the fragments and
/// sends them, four datagrams' worth shuffled together, through a raw
/// socket. rawport: the same from one UDP socket (one flow). Prints one JSON
/// line.
const CLIENT_PY: &str = r#"
import hashlib, json, os, random, select, socket, struct, sys, time
how, fam, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
port, n, size, mtu = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
tag, rnd = sys.argv[9], random.Random(int(sys.argv[10]))
AF = socket.AF_INET6 if fam == 6 else socket.AF_INET
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
payloads = []
for i in range(n):
    head = ("%s-%04d|" % (tag, i)).encode()
    payloads.append(head + os.urandom(size - len(head)))
sent = [{"tag": "%s-%04d" % (tag, i), "len": size, "sha": hashlib.sha256(p).hexdigest()} for i, p in enumerate(payloads)]
socks, frags, early = [], 0, 0
# distinct identifications within the phase: two datagrams of one client
# with one ID would be one datagram to weir (and to the receiver)
idents = rnd.sample(range(1, 0x10000 if fam == 4 else 1 << 32), len(payloads))
def udp_sock():
    s = socket.socket(AF, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((src, 0))
    return s
if how == "kernel":
    s = udp_sock(); socks.append(s)
    per = ((mtu - (48 if fam == 6 else 20)) // 8) * 8
    for p in payloads:
        s.sendto(p, (dst, port))
        frags += -(-(len(p) + 8) // per)
        time.sleep(0.005)
else:
    raw = socket.socket(AF, socket.SOCK_RAW, socket.IPPROTO_RAW)
    if how == "rawport":
        socks.append(udp_sock())
    sa, da = socket.inet_pton(AF, src), socket.inet_pton(AF, dst)
    per = ((mtu - (48 if fam == 6 else 20)) // 8) * 8
    pending = []
    for i, p in enumerate(payloads):
        if how == "raw":
            socks.append(udp_sock())
        sport = socks[-1].getsockname()[1]
        ulen = 8 + len(p)
        if fam == 6:
            pseudo = sa + da + struct.pack("!IxxxB", ulen, 17)
        else:
            pseudo = sa + da + struct.pack("!xBH", 17, ulen)
        ck = csum(pseudo + struct.pack("!HHHH", sport, port, ulen, 0) + p)
        ck = (~ck & 0xffff) or 0xffff
        dgram = struct.pack("!HHHH", sport, port, ulen, ck) + p
        ident = idents[i]
        for off in range(0, len(dgram), per):
            chunk = dgram[off:off + per]
            more = 1 if off + per < len(dgram) else 0
            if fam == 4:
                h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident, (more << 13) | (off // 8), 64, 17, 0, sa, da)
                h = h[:10] + struct.pack("!H", (~csum(h)) & 0xffff) + h[12:]
            else:
                h = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(chunk), 44, 64, sa, da)
                h += struct.pack("!BBHI", 17, 0, off | more, ident)
            pending.append((i, off, h + chunk))
        if len(pending) and (i % 4 == 3 or i == n - 1):
            rnd.shuffle(pending)
            seen_first = set(); seen_any = set()
            for (j, off, pkt) in pending:
                if off == 0:
                    if j in seen_any: early += 1
                    seen_first.add(j)
                seen_any.add(j)
                raw.sendto(pkt, (dst, 0))
                frags += 1
                time.sleep(0.001)
            pending = []
        time.sleep(0.002)
echoes, deadline, last = [], time.time() + 8, time.time()
while len(echoes) < n and time.time() < deadline and time.time() - last < 3:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        d, peer = s.recvfrom(65535)
        last = time.time()
        echoes.append({"tag": d[:32].split(b"|")[0].decode("ascii", "replace"), "len": len(d),
                       "sha": hashlib.sha256(d).hexdigest(), "from": peer[0]})
print(json.dumps({"sent": sent, "frags": frags, "early": early, "echoes": echoes}))
"#;

/// The UDP servers on the backends, stopped (SIGTERM to their own PIDs) when
/// dropped, before the lab goes down.
struct Servers {
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let t = Instant::now();
        for c in &mut self.children {
            while t.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill(); // our own child, by PID (no-op if it exited)
            let _ = c.wait();
        }
    }
}

fn server_log(lab: &Lab, b: &str) -> String {
    format!("{}/frag-{b}.log", lab.state())
}

fn start_servers(lab: &Lab, mode: &str) -> Servers {
    use std::io::BufRead;
    let binds: Vec<&str> = if mode == "nat" { vec!["0.0.0.0", "::"] } else { vec![VIP4, VIP6] };
    let mut s = Servers { children: Vec::new() };
    for b in BACKENDS {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(b), "python3", "-c", SERVER_PY, &PORT.to_string(), &server_log(lab, b), "300"])
            .args(&binds)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a backend's UDP server");
        let mut first = String::new();
        let r = std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first);
        s.children.push(child);
        assert!(r.is_ok() && first.trim() == "ready", "the UDP server on {b} did not start: {first:?}");
    }
    s
}

/// One logged datagram on a backend.
#[derive(Debug, Clone)]
struct Seen {
    backend: String,
    len: usize,
    sha: String,
    peer: String,
}

/// Every datagram the backends logged, by tag.
fn seen_by_tag(lab: &Lab) -> BTreeMap<String, Vec<Seen>> {
    let mut m: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for b in BACKENDS {
        let log = std::fs::read_to_string(server_log(lab, b)).unwrap_or_default();
        for l in log.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() != 4 {
                continue;
            }
            m.entry(w[0].to_string()).or_default().push(Seen {
                backend: b.into(),
                len: w[1].parse().unwrap_or(0),
                sha: w[2].into(),
                peer: w[3].into(),
            });
        }
    }
    m
}

/// Kernel counters (absolute) in a namespace.
fn nstat(lab: &Lab, host: &str) -> BTreeMap<String, u64> {
    let o = lab.sh(host, "nstat -asz");
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 2 {
            if let Ok(v) = w[1].parse() {
                m.insert(w[0].to_string(), v);
            }
        }
    }
    m
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, k: &str) -> i64 {
    b.get(k).copied().unwrap_or(0) as i64 - a.get(k).copied().unwrap_or(0) as i64
}

const FRAG_COUNTERS: [&str; 10] = [
    "frag_balanced",
    "frag_tracked",
    "frag_early",
    "frag_expired",
    "drop_frag_unresolved",
    "drop_frag_table_full",
    "drop_frag_backend_gone",
    "drop_frag_split",
    "pass_fragment",
    "xdp_aborted",
];

fn frag_deltas(a: &serde_json::Value, b: &serde_json::Value) -> BTreeMap<&'static str, u64> {
    FRAG_COUNTERS.iter().map(|k| (*k, counter(b, k) - counter(a, k))).collect()
}

fn stats(lab: &Lab) -> serde_json::Value {
    lab.stats().expect("weir stats --json")
}

/// What a phase measured.
struct Outcome {
    d: BTreeMap<&'static str, u64>,
    /// datagrams that reached no backend
    missing: usize,
    /// datagrams the client sent a later fragment of before the first
    early: u64,
    frags: u64,
}

/// One phase: N datagrams of one family sent `how` (kernel | raw | rawport)
/// to `dst`. Unless `lossy`, asserts each reached exactly one backend whole
/// and its echo came back whole, and the counters; with `lossy` only that
/// none arrived damaged or twice and every echo that came back is whole.
fn phase(lab: &Lab, mode: &str, fam: u8, how: &str, seed: u32, dst: &str, lossy: bool) -> Outcome {
    let mtu = if mode == "tunnel" { 1400 } else { 1500 };
    phase_mtu(lab, mode, fam, how, seed, dst, lossy, mtu)
}

/// [`phase`] with fragments for a path MTU of `mtu` (raw, rawport; kernel:
/// the route's MTU decides).
#[allow(clippy::too_many_arguments)]
fn phase_mtu(lab: &Lab, mode: &str, fam: u8, how: &str, seed: u32, dst: &str, lossy: bool, mtu: u32) -> Outcome {
    // The previous phase's datagram entries expire first (fragments.timeout_ms
    // = 1000): a datagram of this phase whose ID one of them had would
    // follow it and count as neither tracked nor early.
    std::thread::sleep(Duration::from_millis(1100));
    let src = if fam == 4 { CLIENT4 } else { CLIENT6 };
    let sh = if dst.ends_with("102") { "sh" } else { "" };
    let tag = format!("{mode}{fam}{how}{sh}{mtu}");
    let what = format!("{mode} IPv{fam} {how} to {dst}");
    let before = stats(lab);
    let script = format!(
        "timeout 60 python3 -c \"$FRAG_CLIENT\" {how} {fam} {src} {dst} {PORT} {N} {SIZE} {mtu} {tag} {seed}"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c", &script])
        .env("FRAG_CLIENT", CLIENT_PY)
        .output()
        .expect("running the client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("{what}: client output {text:?} ({e}); stderr {}", String::from_utf8_lossy(&out.stderr))
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = stats(lab);
    let d = frag_deltas(&before, &after);

    let seen = seen_by_tag(lab);
    let sent = r["sent"].as_array().unwrap();
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    let (mut whole, mut missing, mut twice, mut bad) = (0, Vec::new(), Vec::new(), Vec::new());
    for s in sent {
        let t = s["tag"].as_str().unwrap();
        match seen.get(t).map(Vec::as_slice) {
            None | Some([]) => missing.push(t.to_string()),
            Some([one]) => {
                if one.len == SIZE && one.sha == s["sha"].as_str().unwrap() {
                    whole += 1;
                    *per_backend.entry(one.backend.clone()).or_default() += 1;
                } else {
                    bad.push(format!("{t}: {one:?}"));
                }
            }
            Some(many) => twice.push(format!("{t}: {many:?}")),
        }
    }
    let peers: BTreeMap<String, usize> = seen
        .iter()
        .filter(|(t, _)| t.starts_with(&tag))
        .flat_map(|(_, v)| v.iter().map(|s| s.peer.clone()))
        .fold(BTreeMap::new(), |mut m, p| {
            *m.entry(p).or_default() += 1;
            m
        });
    let echoes = r["echoes"].as_array().unwrap();
    let want: BTreeMap<&str, &str> = sent.iter().map(|s| (s["tag"].as_str().unwrap(), s["sha"].as_str().unwrap())).collect();
    let echoes_whole = echoes
        .iter()
        .filter(|e| e["len"].as_u64() == Some(SIZE as u64) && want.get(e["tag"].as_str().unwrap_or("")) == e["sha"].as_str().as_ref())
        .count();
    let echo_from: BTreeMap<String, usize> = echoes.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["from"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        m
    });
    eprintln!(
        "{what}: sent {} datagrams ({} fragments, {} sent before their first fragment), whole at one backend {whole}, \
         per backend {per_backend:?}, peers seen {peers:?}, echoes whole {echoes_whole}/{} from {echo_from:?}; weir {d:?}",
        sent.len(),
        r["frags"],
        r["early"],
        echoes.len()
    );
    let fail = |m: String| -> ! { panic!("{what}: {m}\n{}", lab.diagnostics()) };
    let frags = r["frags"].as_u64().unwrap();
    let early = r["early"].as_u64().unwrap();
    if lossy {
        if !twice.is_empty() || !bad.is_empty() || echoes_whole != echoes.len() || echoes_whole > whole {
            fail(format!("twice {twice:?}, damaged {bad:?}, echoes {echoes_whole} whole of {} (datagrams whole {whole})", echoes.len()));
        }
        return Outcome { d, missing: missing.len(), early, frags };
    }
    if whole != N || !missing.is_empty() || !twice.is_empty() || !bad.is_empty() {
        fail(format!("not every datagram reached exactly one backend whole: missing {missing:?}, twice {twice:?}, damaged {bad:?}"));
    }
    // The echo (a reply from the VIP in DSR / tunnel, translated back by
    // weir in NAT) came back whole for every datagram.
    if echoes_whole != N {
        fail(format!("{echoes_whole} of {N} echoes came back whole"));
    }
    let want_peer = match (mode, fam) {
        ("nat", 4) => "198.18.0.10",
        ("nat", _) => "2001:2::10",
        _ => src,
    };
    assert!(peers.keys().all(|p| p == want_peer), "{what}: the backends saw {peers:?}, expected only {want_peer}");
    for k in ["drop_frag_unresolved", "drop_frag_table_full", "drop_frag_backend_gone", "drop_frag_split", "xdp_aborted", "pass_fragment"] {
        assert_eq!(d[k], 0, "{what}: {k} moved: {d:?}");
    }
    if mode == "nat" {
        // the client's fragments and the echoes' (the same number, translated
        // back); an entry per datagram each way
        assert_eq!(d["frag_balanced"], 2 * frags, "{what}: every fragment balanced, both ways: {d:?}");
        assert_eq!(d["frag_early"], early, "{what}: {d:?}, {early} datagrams had a fragment before their first");
        assert_eq!(d["frag_tracked"] + d["frag_early"], 2 * N as u64, "{what}: one entry per datagram each way: {d:?}");
    } else {
        // exactly the client's fragments, one entry per datagram: made by
        // its first fragment, or by a later one that came first
        assert_eq!(d["frag_balanced"], frags, "{what}: every fragment balanced: {d:?}");
        assert_eq!(d["frag_early"], early, "{what}: {d:?}, {early} datagrams had a fragment before their first");
        assert_eq!(d["frag_tracked"] + d["frag_early"], N as u64, "{what}: one entry per datagram: {d:?}");
    }
    if how != "kernel" {
        assert!(early > 0 && d["frag_early"] > 0, "{what}: the shuffle put later fragments first: {d:?}, client {early}");
    }
    Outcome { d, missing: 0, early, frags }
}

/// `ping -s 4000 -c 3` to the VIP: 3 requests of 3 fragments each. DSR and
/// tunnel: a backend answers from the VIP (all 3 replies). NAT: each echo
/// reaches a backend whole (translated to it); its reply goes to weir's own
/// address and is not translated back (NAT tracks no ICMP echo).
fn big_ping(lab: &Lab, mode: &str, fam: u8) {
    let vip = if fam == 4 { VIP4 } else { VIP6 };
    let (echos, oks) = if fam == 4 { ("IcmpInEchos", "IpReasmOKs") } else { ("Icmp6InEchos", "Ip6ReasmOKs") };
    let before: Vec<_> = BACKENDS.iter().map(|b| nstat(lab, b)).collect();
    let s0 = stats(lab);
    let o = lab.sh("client", &format!("ping -{fam} -n -s 4000 -c 3 -i 0.3 -W 2 {vip}"));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let replies = text.lines().filter(|l| l.contains("bytes from")).count();
    std::thread::sleep(Duration::from_millis(300));
    let d = frag_deltas(&s0, &stats(lab));
    let after: Vec<_> = BACKENDS.iter().map(|b| nstat(lab, b)).collect();
    let got: Vec<(String, i64, i64)> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| (b.to_string(), delta(&before[i], &after[i], echos), delta(&before[i], &after[i], oks)))
        .collect();
    let total: i64 = got.iter().map(|g| g.1).sum();
    eprintln!("{mode} IPv{fam} ping -s 4000 -c 3: {replies} replies; backends (echo requests, reassembled): {got:?}; weir {d:?}");
    assert_eq!(total, 3, "{mode} IPv{fam} ping: 3 echo requests reached the backends whole: {got:?}\n{text}");
    for g in &got {
        assert!(g.2 >= g.1, "{mode} IPv{fam} ping: {} reassembled every echo it got: {got:?}", g.0);
    }
    assert!(d["frag_balanced"] >= 9, "{mode} IPv{fam} ping: its fragments were balanced: {d:?}");
    for k in ["drop_frag_unresolved", "drop_frag_table_full", "drop_frag_backend_gone", "drop_frag_split", "xdp_aborted"] {
        assert_eq!(d[k], 0, "{mode} IPv{fam} ping: {k} moved: {d:?}");
    }
    if mode == "nat" {
        assert_eq!(replies, 0, "NAT IPv{fam} ping: the replies go to weir's address and are not translated back:\n{text}");
    } else {
        assert_eq!(replies, 3, "{mode} IPv{fam} ping: every big echo answered from the VIP:\n{text}\n{}", lab.diagnostics());
    }
}

fn run(mode: &str) {
    let mut lab = Lab::up_mode(&format!("wfl-{}-{}", &mode[..3], std::process::id()), mode);
    // Partial datagrams on the backends count in IpReasmFails when they time
    // out: 3 s instead of 30, so the check below sees them.
    for b in BACKENDS {
        let o = lab.sh(b, "sysctl -qw net.ipv4.ipfrag_time=3 net.ipv6.ip6frag_time=3");
        assert!(o.status.success(), "sysctl in {b}: {}", String::from_utf8_lossy(&o.stderr));
    }
    if mode == "tunnel" {
        let o = lab.sh("client", &format!("ip route add {VIP4}/32 dev c0 mtu lock 1400 && ip -6 route add {VIP6}/128 dev c0 mtu 1400"));
        assert!(o.status.success(), "client route mtu: {}", String::from_utf8_lossy(&o.stderr));
    }
    lab.start_weir(&config(mode));
    let _servers = start_servers(&lab, mode);
    let before: Vec<_> = BACKENDS.iter().map(|b| nstat(&lab, b)).collect();
    let s0 = stats(&lab);

    // What the switch hands the backends meanwhile: DSR the client's
    // fragments as they are, tunnel each in IPIP / IP6IP6, NAT readdressed.
    let sniffer = lab.sniff(&["p-b1", "p-b2", "p-b3"], 180);
    let mut seed = 1;
    let mut sent = BTreeMap::from([(4u8, 0u64), (6, 0)]);
    for fam in [4u8, 6] {
        let vip = if fam == 4 { VIP4 } else { VIP6 };
        for how in ["kernel", "raw"] {
            *sent.get_mut(&fam).unwrap() += phase(&lab, mode, fam, how, seed, vip, false).frags;
            seed += 1;
        }
        // One flow, reordered: the first fragment of a datagram whose later
        // fragment came first follows the datagram's entry, not the flow's
        // backend. DSR / tunnel: whole, wherever the entry says. NAT: the
        // flow is bound to its backend; a source-hash VIP places the early
        // fragment on that backend (see nat_one_flow_reordered below for
        // another scheduler).
        let dst = match (mode, fam) {
            ("nat", 4) => VIP4SH,
            ("nat", _) => VIP6SH,
            _ => vip,
        };
        *sent.get_mut(&fam).unwrap() += phase(&lab, mode, fam, "rawport", seed, dst, false).frags;
        seed += 1;
    }
    for fam in [4u8, 6] {
        big_ping(&lab, mode, fam);
    }
    let seen = sniffer.finish();
    eprintln!("{mode}: frames the switch sent the backends: {seen}; client fragments sent {sent:?} (+ 9 of pings each)");
    let n = |k: &str| seen[k].as_u64().unwrap();
    // every client fragment (and the pings' 3 x 3) exactly once, in its form
    let (f4, f6) = (sent[&4] + 9, sent[&6] + 9);
    match mode {
        "dsr" => assert!(n("vip4_plain") == f4 && n("vip6_plain") == f6 && n("ipip") + n("ip6ip6") == 0, "{seen}"),
        "tunnel" => assert!(n("ipip") == f4 && n("ip6ip6") == f6 && n("vip4_plain") + n("vip6_plain") == 0, "{seen}"),
        _ => assert!(n("frames") >= f4 + f6 && n("ipip") + n("ip6ip6") + n("vip4_plain") + n("vip6_plain") == 0, "{seen}"),
    }

    // Nothing partial left behind on any backend (timeouts count after 3 s).
    let fails = reasm_fails(&lab, mode, &before);
    let s = stats(&lab);
    eprintln!("{mode}: weir over the whole run: {:?}", frag_deltas(&s0, &s));
    assert!(fails.values().all(|v| *v == 0), "{mode}: backends failed to reassemble datagrams: {fails:?}\n{}", lab.diagnostics());
    assert_eq!(counter(&s, "xdp_aborted"), 0);

    if mode == "nat" {
        nat_one_flow_reordered(&lab, seed);
    }
}

/// Tunnel mode, client fragments of a full 1500 bytes (what a client on a
/// 1500-byte path sends; the lab's links are all 1500): wrapped they would
/// be 1520 / 1540 bytes, above the MTU.
/// - IPv4 (LIMIT, asserted as it is): fragments carry no DF, so weir drops
///   them (drop_tunnel_mtu, no ICMP) and only each datagram's short last
///   fragment reaches a backend, to time out there. The client never learns.
/// - IPv6: weir answers with packet-too-big (icmp_too_big) quoting the
///   first fragment up to its UDP header; the client learns the path MTU
///   (1460) and its next datagrams arrive whole. (Before: the quote stopped
///   at the Fragment header; Linux, icmpv6_notify, needs the transport
///   header to find the socket, so it learned nothing and every datagram
///   was lost.)
fn tunnel_full_size(lab: &Lab, mut seed: u32) {
    // IPv4: fragments carry no DF; weir does not fragment: every full-size
    // fragment is dropped (drop_tunnel_mtu), no ICMP.
    let before: Vec<_> = BACKENDS.iter().map(|b| nstat(lab, b)).collect();
    let s0 = stats(lab);
    let o = phase_mtu(lab, "tunnel", 4, "raw", seed, VIP4, true, 1500);
    seed += 1;
    let s1 = stats(lab);
    let mtu_drops = counter(&s1, "drop_tunnel_mtu") - counter(&s0, "drop_tunnel_mtu");
    let too_big = counter(&s1, "icmp_too_big") - counter(&s0, "icmp_too_big");
    let fails = reasm_fails(lab, "tunnel full-size fragments", &before);
    eprintln!(
        "LIMIT tunnel IPv4, 1500-byte fragments: {} of {N} datagrams lost, {} fragments sent, drop_tunnel_mtu {mtu_drops}, \
         icmp_too_big {too_big}, partial datagrams timed out on the backends {}; weir {:?}",
        o.missing, o.frags, fails["IpReasmFails"], o.d
    );
    // 8008 bytes in 1480-byte pieces: 5 full-size fragments and a short last one.
    assert_eq!(o.missing, N, "tunnel IPv4: no datagram of full-size fragments can arrive whole: {:?}", o.d);
    assert_eq!((mtu_drops, too_big), (5 * N as u64, 0), "tunnel IPv4: every full-size fragment dropped, no ICMP: {:?}", o.d);
    assert_eq!(fails["IpReasmFails"], N as i64, "tunnel IPv4: each datagram's last fragment timed out on a backend");

    // IPv6: packet-too-big to the client, quoting its first fragment up to
    // the UDP header: its kernel learns the path MTU and fragments for it.
    // (A quote that stops at the Fragment header teaches it nothing: every
    // datagram was lost before the fix.)
    let c0 = nstat(lab, "client");
    let s0 = stats(lab);
    let o = phase_mtu(lab, "tunnel", 6, "kernel", seed, VIP6, true, 1500);
    seed += 1;
    let s1 = stats(lab);
    let too_big = counter(&s1, "icmp_too_big") - counter(&s0, "icmp_too_big");
    let c1 = nstat(lab, "client");
    let r = lab.sh("client", &format!("ip -6 route get {VIP6}"));
    let route = String::from_utf8_lossy(&r.stdout).to_string();
    eprintln!(
        "tunnel IPv6, the client fragments for 1500: {} of {N} datagrams lost while it learned the path MTU, icmp_too_big {too_big}, \
         client Icmp6InPktTooBigs +{}; its route to {VIP6} now: {}",
        o.missing,
        delta(&c0, &c1, "Icmp6InPktTooBigs"),
        route.trim()
    );
    assert!(too_big > 0, "tunnel IPv6: packet-too-big for full-size fragments");
    assert!(route.contains("mtu 1460"), "the client did not learn mtu 1460 from weir's packet-too-big: {route}");
    assert!(o.missing < N, "tunnel IPv6: datagrams after the packet-too-big arrive whole");
    // Now every datagram is whole (the client fragments for 1460).
    phase_mtu(lab, "tunnel", 6, "kernel", seed, VIP6, false, 1460);
}

/// Sleeps out the backends' reassembly timeout (3 s), prints their
/// reassembly counters since `before` and returns the failures per family
/// ("IpReasmFails", "Ip6ReasmFails"), summed over the backends.
fn reasm_fails(lab: &Lab, what: &str, before: &[BTreeMap<String, u64>]) -> BTreeMap<&'static str, i64> {
    std::thread::sleep(Duration::from_millis(3500));
    let mut fails = BTreeMap::from([("IpReasmFails", 0), ("Ip6ReasmFails", 0)]);
    for (i, b) in BACKENDS.iter().enumerate() {
        let a = nstat(lab, b);
        let f: Vec<(&str, i64)> = ["IpReasmReqds", "IpReasmOKs", "IpReasmFails", "IpReasmTimeout", "Ip6ReasmReqds", "Ip6ReasmOKs", "Ip6ReasmFails", "Ip6ReasmTimeout"]
            .iter()
            .map(|k| (*k, delta(&before[i], &a, k)))
            .collect();
        eprintln!("{what}: {b} kernel reassembly: {f:?}");
        for (k, v) in f {
            if let Some(x) = fails.get_mut(k) {
                *x += v;
            }
        }
    }
    fails
}

/// KNOWN LIMIT (measured, asserted as it is): NAT, one client flow to a
/// maglev VIP, fragments reordered. An early later fragment places its
/// datagram by (source, destination, identification), blind to the flow;
/// when that is not the flow's backend, the first fragment is dropped
/// (drop_frag_split: a NAT flow is bound to its backend) and the later
/// fragments already sent sit on the other backend until its reassembly
/// timeout (IpReasmFails). Every datagram lost is accounted for; none
/// arrives damaged or twice. A source-hash VIP does not have this (above).
fn nat_one_flow_reordered(lab: &Lab, mut seed: u32) {
    for fam in [4u8, 6] {
        let before: Vec<_> = BACKENDS.iter().map(|b| nstat(lab, b)).collect();
        let vip = if fam == 4 { VIP4 } else { VIP6 };
        let o = phase(lab, "nat", fam, "rawport", seed, vip, true);
        seed += 1;
        let fails = reasm_fails(lab, "nat one flow reordered", &before);
        let key = if fam == 4 { "IpReasmFails" } else { "Ip6ReasmFails" };
        eprintln!(
            "KNOWN LIMIT nat IPv{fam}, one flow, maglev, reordered: {} of {N} datagrams lost ({} had a fragment before their first), \
             drop_frag_split {}, partial datagrams timed out on the backends {}",
            o.missing, o.early, o.d["drop_frag_split"], fails[key]
        );
        assert!(o.missing > 0, "NAT IPv{fam}: the known limit did not show; update this test and the README: {:?}", o.d);
        assert_eq!(o.d["drop_frag_split"], o.missing as u64, "NAT IPv{fam}: every datagram lost is a split first fragment: {:?}", o.d);
        assert_eq!(fails[key], o.missing as i64, "NAT IPv{fam}: each lost datagram's later fragments timed out on one backend: {fails:?}");
        for k in ["drop_frag_unresolved", "drop_frag_table_full", "drop_frag_backend_gone", "xdp_aborted", "pass_fragment"] {
            assert_eq!(o.d[k], 0, "NAT IPv{fam} one flow reordered: {k} moved: {:?}", o.d);
        }
    }
}

#[test]
fn fragments_dsr() {
    if !require_root("fragments end-to-end test (DSR)") {
        return;
    }
    run("dsr");
}

#[test]
fn fragments_tunnel() {
    if !require_root("fragments end-to-end test (tunnel)") {
        return;
    }
    run("tunnel");
}

/// Tunnel mode with full-size (1500-byte) client fragments; see
/// [`tunnel_full_size`]. Failed before the packet-too-big for an IPv6 first
/// fragment quoted the UDP header (the client learned nothing).
#[test]
fn fragments_tunnel_full_size() {
    if !require_root("fragments end-to-end test (tunnel, full-size fragments)") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("wfl-tfs-{}", std::process::id()), "tunnel");
    for b in BACKENDS {
        let o = lab.sh(b, "sysctl -qw net.ipv4.ipfrag_time=3 net.ipv6.ip6frag_time=3");
        assert!(o.status.success(), "sysctl in {b}: {}", String::from_utf8_lossy(&o.stderr));
    }
    lab.start_weir(&config("tunnel"));
    let _servers = start_servers(&lab, "tunnel");
    tunnel_full_size(&lab, 100);
}

#[test]
fn fragments_nat() {
    if !require_root("fragments end-to-end test (NAT)") {
        return;
    }
    run("nat");
}
