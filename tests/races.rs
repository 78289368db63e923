//! Maps written by more than one CPU (root): BPF_PROG_TEST_RUN from two
//! threads pinned to two CPUs, each for WEIR_RACE_ITERATIONS calls (default
//! 1,000,000), plus deterministic replays of the interleavings that broke.
//!
//! - NAT: no (backend, SNAT port) is ever owned by two clients, while a
//!   third thread ages every flow (the NAT clock skew) and runs the sweep.
//! - Shield: attack mode never drops out under a sustained flood.
//! - Flow sync: a peer's flow inserted while the data plane schedules the
//!   same flow never splits it between two backends.
//!
//! cargo test --release --test races -- --test-threads=1 --nocapture

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use libbpf_rs::{MapCore, MapFlags};
use weir::skel::{bytes_of, from_bytes, ShieldState};

fn iterations() -> usize {
    std::env::var("WEIR_RACE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// One BPF_PROG_TEST_RUN call on a program fd, from any thread.
fn test_run_fd(fd: i32, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    // SAFETY: a zeroed opts struct is its documented initial state; the
    // buffers outlive the call and their sizes are given.
    unsafe {
        let mut opts: libbpf_sys::bpf_test_run_opts = std::mem::zeroed();
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _;
        opts.data_in = frame.as_ptr().cast();
        opts.data_size_in = frame.len() as u32;
        opts.data_out = out.as_mut_ptr().cast();
        opts.data_size_out = out.len() as u32;
        opts.repeat = 1;
        let rc = libbpf_sys::bpf_prog_test_run_opts(fd, &mut opts);
        assert_eq!(rc, 0, "bpf_prog_test_run_opts: {}", std::io::Error::last_os_error());
        out.truncate(opts.data_size_out as usize);
        (opts.retval, out)
    }
}


fn two_cpus() -> bool {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if n < 2 {
        assert!(std::env::var("CI").is_err(), "the race tests need two CPUs and CI is set");
        eprintln!("SKIPPED: one CPU");
    }
    n >= 2
}

/// The NAT clock skew, a u32 in the program's mmapped .bss: read and written
/// by the test's threads while the program reads it.
#[derive(Clone, Copy)]
struct Skew(*mut u32);
// SAFETY: the pointer is into a mapping that outlives the threads (they are
// joined before the data plane drops), accessed only with volatile ops.
unsafe impl Send for Skew {}
impl Skew {
    fn get(self) -> u32 {
        // SAFETY: see above.
        unsafe { self.0.read_volatile() }
    }
    fn add(self, n: u32) {
        // SAFETY: see above; one writer.
        unsafe { self.0.write_volatile(self.0.read_volatile().wrapping_add(n)) }
    }
}

/// Two clients, one SNAT port, in lockstep on two CPUs. Client A also ages
/// every flow (the NAT clock skew jumps past the SYN timeout: an epoch) and,
/// every 8th epoch, runs the sweep; right after the jump both clients send a
/// SYN at the same instant (B spins on the epoch), so both race to claim the
/// expired port. In any one epoch at most one client may be translated (the
/// port's owner); the other must be refused.
#[test]
fn a_snat_port_is_never_owned_by_two_clients() {
    if !require_root("two-CPU race tests") || !two_cpus() {
        return;
    }
    let lb = load(&one_port_nat("size = 4096\ntcp_syn_timeout = 30", ""));
    let bss = lb.dp.skel.maps.bss_data.as_ref().expect("the program's .bss is mmapped");
    let skew = Skew(std::ptr::addr_of!(bss.nat_clock_skew).cast_mut());
    let prog = lb.dp.prog_fd().as_raw_fd();
    let sweep = lb.dp.skel.progs.weir_nat_sweep.as_fd().as_raw_fd();
    let n = iterations() as u32;
    let b_sent = Arc::new(AtomicU64::new(0));
    const AGE: u32 = 31; // past tcp_syn_timeout: every flow expires
    let base = skew.get();

    let send = move |cpu: usize, frame: &[u8]| {
        let (action, out) = test_run_fd(prog, frame);
        match action {
            XDP_TX => assert_eq!(out_sport(&out), Some(41000), "the only SNAT port"),
            XDP_DROP => {}
            a => panic!("client on CPU {cpu}: {}", action_name(a)),
        }
        action == XDP_TX
    };
    let a = {
        let b_sent = b_sent.clone();
        let frame = Pkt::new("10.6.0.1", "198.18.0.103", syn(1111, 80), b"").frame();
        std::thread::spawn(move || {
            pin_to_cpu(0);
            let (mut won, mut swept) = (Vec::with_capacity(n as usize), 0);
            let mut io = [0u8; 16];
            for epoch in 1..=n {
                while b_sent.load(Ordering::Acquire) < u64::from(epoch - 1) {
                    std::hint::spin_loop();
                }
                skew.add(AGE);
                if epoch % 8 == 0 {
                    // Races B's claim of the port it just found expired.
                    let (act, out) = test_run_fd(sweep, &io);
                    assert_eq!(act, XDP_PASS, "the sweep ran");
                    swept += u32::from_ne_bytes(out[8..12].try_into().unwrap());
                    io[0..4].copy_from_slice(&0u32.to_ne_bytes());
                }
                won.push(send(0, &frame));
            }
            (won, swept)
        })
    };
    let b = {
        let b_sent = b_sent.clone();
        let frame = Pkt::new("10.6.0.2", "198.18.0.103", syn(2222, 80), b"").frame();
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut won = Vec::with_capacity(n as usize);
            for epoch in 1..=n {
                let want = base.wrapping_add(epoch * AGE);
                while skew.get() != want {
                    std::hint::spin_loop();
                }
                won.push(send(1, &frame));
                b_sent.store(u64::from(epoch), Ordering::Release);
            }
            won
        })
    };
    let t0 = Instant::now();
    let ((wa, swept), wb) = (a.join().unwrap(), b.join().unwrap());
    let both: Vec<usize> = (0..wa.len()).filter(|i| wa[*i] && wb[*i]).collect();
    let neither = (0..wa.len()).filter(|i| !wa[*i] && !wb[*i]).count();
    let (na, nb) = (wa.iter().filter(|w| **w).count(), wb.iter().filter(|w| **w).count());
    println!(
        "{n} epochs, one SYN per CPU each, in {:.1} s: client A won {na}, client B won {nb}, neither {neither}, \
         both {} (the sweep freed {swept} flows)",
        t0.elapsed().as_secs_f64(),
        both.len()
    );
    assert!(na > 0 && nb > 0, "both clients must win the port sometimes");
    assert!(both.is_empty(), "the port was owned by both clients in {} epochs, e.g. {:?}", both.len(), &both[..both.len().min(5)]);
}


/// A SYN from a random source (never proven, no bucket).
fn random_syn(i: u64) -> Vec<u8> {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8;
    let src = format!("10.{}.{}.{}", (h >> 16) as u8, (h >> 8) as u8, h as u8 | 1);
    Pkt::new(&src, "198.18.0.100", syn(1024 + (h % 60000) as u16, 80), b"").frame()
}

/// true: the SYN was answered with a challenge (to the client's MAC).
fn challenged(action: u32, out: &[u8]) -> bool {
    action == XDP_TX && out[0..6] == CLIENT_MAC
}

/// The interleaving that broke, replayed: another CPU closed the rate window
/// with a timestamp later than the `now` this CPU read. Was: the unsigned
/// difference wrapped, the window closed with a rate of 0, and auto mode
/// switched attack mode off mid-flood.
#[test]
fn a_window_closed_ahead_of_now_keeps_attack_mode() {
    if !require_root("shield race replay") {
        return;
    }
    let lb = load(&shield_config("attack = \"auto\"\nattack_on = 1000\nattack_off = 500"));
    let prog = lb.dp.prog_fd().as_raw_fd();
    let mut i = 0;
    while !challenged(test_run_fd(prog, &random_syn(i)).0, &test_run_fd(prog, &random_syn(i + 1)).1) {
        i += 2;
        assert!(i < 10_000, "attack mode never started");
    }
    let map = &lb.dp.skel.maps.shield_state;
    let key = 0u32.to_ne_bytes();
    let mut st: ShieldState = from_bytes(&map.lookup(&key, MapFlags::ANY).unwrap().unwrap()).unwrap();
    assert_eq!(st.attack, 1);
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    st.window_ns = now + 50_000_000; // closed by "another CPU", 50 ms ahead
    map.update(&key, bytes_of(&st), MapFlags::ANY).unwrap();
    let (action, out) = test_run_fd(prog, &random_syn(1 << 40));
    let after: ShieldState = from_bytes(&map.lookup(&key, MapFlags::ANY).unwrap().unwrap()).unwrap();
    assert!(challenged(action, &out), "attack mode ended: {} (attack = {})", action_name(action), after.attack);
    assert_eq!(after.attack, 1);
}

/// Two CPUs flood SYNs from random sources: once attack mode is on, every
/// SYN is challenged until the flood ends.
#[test]
fn attack_mode_holds_under_a_two_cpu_flood() {
    if !require_root("two-CPU race tests") || !two_cpus() {
        return;
    }
    let lb = load(&shield_config("attack = \"auto\"\nattack_on = 1000\nattack_off = 500"));
    let prog = lb.dp.prog_fd().as_raw_fd();
    let n = iterations();
    let flood = |cpu: usize| {
        move || {
            pin_to_cpu(cpu);
            let (mut on, mut lapses, mut challenges) = (false, 0usize, 0usize);
            for i in 0..n as u64 {
                let (action, out) = test_run_fd(prog, &random_syn(i * 2 + cpu as u64));
                if challenged(action, &out) {
                    on = true;
                    challenges += 1;
                } else if on {
                    lapses += 1;
                }
            }
            (challenges, lapses)
        }
    };
    let t0 = Instant::now();
    let a = std::thread::spawn(flood(0));
    let b = std::thread::spawn(flood(1));
    let (ca, la) = a.join().unwrap();
    let (cb, lb_) = b.join().unwrap();
    let st: ShieldState =
        from_bytes(&lb.dp.skel.maps.shield_state.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap()).unwrap();
    println!(
        "{n} SYNs per CPU in {:.1} s: {ca} + {cb} challenged, {la} + {lb_} let through after attack mode began; last rate {} SYN/s",
        t0.elapsed().as_secs_f64(),
        st.last_rate
    );
    assert_eq!((la, lb_), (0, 0), "attack mode dropped out mid-flood");
}

/// The flow table has a writer outside the data plane: the flow sync puts
/// the flows of other nodes in with BPF_NOEXIST while the data plane, on
/// another CPU, may be scheduling the same flow (BPF_ANY). In lockstep, the
/// peer's insert races a new UDP flow's first packet every epoch. Whoever
/// wins, the flow's packets never change backend: the second packet of
/// every epoch goes where the first went.
#[test]
fn a_peers_flow_and_a_local_first_packet_never_split_a_flow() {
    if !require_root("two-CPU race tests") || !two_cpus() {
        return;
    }
    let lb = load(
        r#"
[conntrack]
size = 262144
[[vip]]
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"
"#,
    );
    let prog = lb.dp.prog_fd().as_raw_fd();
    let flows = weir::dataplane::FlowTables::established(&lb.dp).unwrap();
    let macs: Vec<[u8; 6]> = lb.plan.vips[0].backends.iter().map(|b| lb.hops[&b.id].mac).collect();
    let ids: Vec<u32> = lb.plan.vips[0].backends.iter().map(|b| b.id).collect();
    let n = (iterations() / 5).max(1000) as u64;
    let epoch = Arc::new(AtomicU64::new(0));
    let a_done = Arc::new(AtomicU64::new(0));
    // The peer names the backend this node's table would NOT pick, so who
    // won each race shows in the first packet.
    let local: Vec<usize> = (1..=n)
        .map(|e| {
            let (src, sport) = client_of(e);
            let m = lb.ring_mac(0, flow_hash(std::net::IpAddr::V4(src), ip("198.18.0.100"), sport, 53, 17));
            macs.iter().position(|x| *x == m).unwrap()
        })
        .collect();
    let client = client_of;
    let local = Arc::new(local);
    let a = {
        let (epoch, a_done) = (epoch.clone(), a_done.clone());
        std::thread::spawn(move || {
            pin_to_cpu(0);
            let mut out = Vec::with_capacity(n as usize);
            for e in 1..=n {
                while epoch.load(Ordering::Acquire) != e {
                    std::hint::spin_loop();
                }
                let (src, sport) = client(e);
                let f = udp(&src.to_string(), "198.18.0.100", sport, 53, b"q");
                let (a1, o1) = test_run_fd(prog, &f);
                let (a2, o2) = test_run_fd(prog, &f);
                assert_eq!((a1, a2), (XDP_TX, XDP_TX));
                out.push((<[u8; 6]>::try_from(&o1[..6]).unwrap(), <[u8; 6]>::try_from(&o2[..6]).unwrap()));
                a_done.store(e, Ordering::Release);
            }
            out
        })
    };
    let b = {
        let (epoch, a_done) = (epoch.clone(), a_done.clone());
        let (macs, local) = (macs.clone(), local.clone());
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut peer = Vec::with_capacity(n as usize);
            for e in 1..=n {
                while a_done.load(Ordering::Acquire) != e - 1 {
                    std::hint::spin_loop();
                }
                let (src, sport) = client(e);
                let mut k = weir::skel::FlowKey::default();
                k.src[0] = u32::from_ne_bytes(src.octets());
                k.dst[0] = u32::from_ne_bytes([198, 18, 0, 100]);
                k.sport = sport.to_be();
                k.dport = 53u16.to_be();
                k.proto = 17;
                k.family = weir::skel::weir_const::WEIR_FAMILY_V4.0 as u8;
                let pick = 1 - local[e as usize - 1];
                let f = weir::skel::Flow { backend_id: ids[pick], vip_id: 0, generation: 0 };
                epoch.store(e, Ordering::Release); // A starts its first packet now
                let _ = flows.insert_new(&k, &f);
                peer.push(macs[pick]);
            }
            peer
        })
    };
    let (got, peer) = (a.join().unwrap(), b.join().unwrap());
    let split = got.iter().filter(|(x, y)| x != y).count();
    let peer_won = got.iter().zip(&peer).filter(|((first, _), p)| first == *p).count();
    println!("{n} epochs: the peer's backend served the first packet in {peer_won}, a flow split in {split}");
    assert_eq!(split, 0, "a flow's packets went to two backends");
    assert!(peer_won > 0 && peer_won < n as usize, "the race must go both ways sometimes (peer won {peer_won} of {n})");
}

fn client_of(e: u64) -> (std::net::Ipv4Addr, u16) {
    (std::net::Ipv4Addr::from(0x0a08_0000 + (e as u32 >> 14)), 1024 + (e as u16 & 0x3fff))
}

/// Fragments (bpf/frag_table.h): a datagram's first fragment and a later
/// one arrive at the same instant on two CPUs, every epoch a new datagram.
/// The first would pick its flow's backend, the later one a backend by
/// (src, dst, ID); whichever makes the datagram's entry, the other must
/// follow it: both fragments leave for one backend, every epoch.
#[test]
fn a_datagrams_fragments_on_two_cpus_never_split() {
    if !require_root("two-CPU race tests") || !two_cpus() {
        return;
    }
    let lb = load(
        r#"
[fragments]
max_datagrams = 262144
timeout_ms = 60000
[[vip]]
name = "dns"
address = "198.18.0.100"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.0.21"
mac = "02:00:00:00:00:15"
[[vip.backend]]
address = "198.18.0.22"
mac = "02:00:00:00:00:16"
[[vip.backend]]
address = "198.18.0.23"
mac = "02:00:00:00:00:17"
"#,
    );
    let prog = lb.dp.prog_fd().as_raw_fd();
    let n = (iterations() / 5).clamp(1000, 200_000) as u64;
    // Epoch e: datagram ID e from client (10.9.x.y, port), 16 bytes of UDP
    // in two fragments: the first (UDP header + 8 bytes), the last 8 bytes.
    let frames = |e: u64| -> (Vec<u8>, Vec<u8>) {
        let (src, sport) = client_of(e);
        let whole = udp(&src.to_string(), "198.18.0.100", sport, 53, b"0123456789abcdef");
        let mut first = whole[..14 + 20 + 16].to_vec();
        first[16..18].copy_from_slice(&36u16.to_be_bytes());
        first[18..20].copy_from_slice(&(e as u16).to_be_bytes());
        first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        refresh_ipv4_checksum(&mut first);
        let mut last = whole[..14 + 20].to_vec();
        last.extend_from_slice(&whole[14 + 20 + 16..]);
        last[16..18].copy_from_slice(&28u16.to_be_bytes());
        last[18..20].copy_from_slice(&(e as u16).to_be_bytes());
        last[20..22].copy_from_slice(&2u16.to_be_bytes()); // offset 16 bytes
        refresh_ipv4_checksum(&mut last);
        (first, last)
    };
    // A (CPU 0) says it is ready for epoch e; B (CPU 1) then opens the
    // epoch and sends its fragment at once, while A sends its own.
    let epoch = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let a = {
        let (epoch, ready) = (epoch.clone(), ready.clone());
        std::thread::spawn(move || {
            pin_to_cpu(0);
            let mut macs = Vec::with_capacity(n as usize);
            for e in 1..=n {
                let (first, _) = frames(e);
                ready.store(e, Ordering::Release);
                while epoch.load(Ordering::Acquire) != e {
                    std::hint::spin_loop();
                }
                let (a, out) = test_run_fd(prog, &first);
                assert_eq!(a, XDP_TX, "epoch {e}: first fragment not forwarded");
                macs.push(<[u8; 6]>::try_from(&out[..6]).unwrap());
            }
            macs
        })
    };
    let b = {
        let (epoch, ready) = (epoch.clone(), ready.clone());
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut macs = Vec::with_capacity(n as usize);
            for e in 1..=n {
                let (_, last) = frames(e);
                while ready.load(Ordering::Acquire) != e {
                    std::hint::spin_loop();
                }
                epoch.store(e, Ordering::Release);
                let (a, out) = test_run_fd(prog, &last);
                assert_eq!(a, XDP_TX, "epoch {e}: later fragment not forwarded");
                macs.push(<[u8; 6]>::try_from(&out[..6]).unwrap());
            }
            macs
        })
    };
    let t0 = Instant::now();
    let (fa, fb) = (a.join().unwrap(), b.join().unwrap());
    let split = fa.iter().zip(&fb).filter(|(x, y)| x != y).count();
    // Who placed the datagram: where the flow's pick and the (src, dst, ID)
    // pick differ, the backend both went to says.
    let (mut first_won, mut later_won) = (0, 0);
    for e in 1..=n {
        let (src, sport) = client_of(e);
        let (c, v) = (std::net::IpAddr::V4(src), ip("198.18.0.100"));
        let by_flow = lb.ring_mac(0, flow_hash(c, v, sport, 53, 17));
        let by_id = lb.ring_mac(0, frag_hash(c, v, &(e as u16).to_be_bytes(), 17));
        let got = fa[e as usize - 1];
        if by_flow != by_id {
            first_won += usize::from(got == by_flow);
            later_won += usize::from(got == by_id);
        }
    }
    println!(
        "{n} datagrams, first and last fragment on two CPUs at once, in {:.1} s: split {split}; \
         the first fragment placed {first_won}, the later one {later_won} (where the two picks differ)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(split, 0, "a datagram's fragments went to two backends");
    assert!(first_won > 0 && later_won > 0, "the race must go both ways sometimes");
}
