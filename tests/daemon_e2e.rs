//! The daemon around the data plane (issue 10), end to end in the lab
//! (root): idle and slow clients of the control socket and of /metrics
//! delay neither a failover nor SIGTERM; a backend without a MAC neither
//! blocks the start nor stays out once it answers; a backend's new MAC is
//! followed. Figures are printed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::require_root;

/// A process of ours, stopped by PID on every exit path.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// 100 idle and 100 slow clients on the metrics port and on the control
/// socket each, for SECS seconds; a client the server closes is replaced at
/// once. Slow ones send one byte of a request every 100 ms and never finish.
const LOAD: &str = r#"
import glob, os, socket, sys, time
secs, port = float(sys.argv[1]), int(sys.argv[2])
ino = os.stat('/proc/self/ns/net').st_ino
path = [p for p in glob.glob('/run/weir/veth6.*.sock') if p.endswith('.%d.sock' % ino)][0]
req = {'tcp': b'GET /metrics HTTP/1.1\r\nHost: x\r\n', 'unix': b'stats stats stats stats stats stats'}
def mk(kind):
    if kind == 'tcp':
        s = socket.create_connection(('127.0.0.1', port), timeout=1)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(1)
        s.connect(path)
    s.setblocking(False)
    return s
conns = [[k, slow, None, 0] for k in ('tcp', 'unix') for slow in (False, True) for _ in range(100)]
made = 0
end = time.time() + secs
while time.time() < end:
    for c in conns:
        if c[2] is None:
            try:
                c[2], c[3] = mk(c[0]), 0
                made += 1
            except Exception:
                continue
        try:
            if c[1]:
                c[2].send(req[c[0]][c[3] % len(req[c[0]]):][:1])
                c[3] += 1
            elif c[2].recv(1) == b'':
                raise OSError('closed')
        except BlockingIOError:
            pass
        except OSError:
            c[2].close()
            c[2] = None
    time.sleep(0.1)
print('connections made: %d' % made, flush=True)
"#;

const HEALTH_CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
health = { kind = "http", path = "/", interval_ms = 100, timeout_ms = 80, fall = 2, rise = 2 }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
"#;

fn health_of(lab: &Lab, addr: &str) -> Option<String> {
    let s = lab.stats()?;
    s["vips"]
        .as_array()?
        .iter()
        .flat_map(|v| v["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"] == addr)
        .and_then(|b| b["health"].as_str().map(str::to_string))
}

#[test]
fn idle_and_slow_clients_delay_neither_failover_nor_sigterm() {
    if !require_root("daemon end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wd{}", std::process::id()));
    lab.extra_args = vec!["--metrics".into(), "127.0.0.1:9477".into()];
    lab.start_weir(HEALTH_CONFIG);
    let load = Guard(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("lb"), "python3", "-c", LOAD, "20", "9477"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(4)); // every client connected, the first idle ones cut and replaced

    let t = Instant::now();
    assert!(lab.stats().is_some(), "weir stats answers under 400 held clients");
    eprintln!("FIGURE weir stats answered in {} ms with 400 idle/slow clients held", t.elapsed().as_millis());
    let m = lab.sh("client", "true"); // the lab is alive
    assert!(m.status.success());

    // Failover: b2's server dies; fall x interval = 200 ms.
    let pid_file = format!("{}/b2.pid", lab.state());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: signalling the lab's own server by its recorded PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let killed = Instant::now();
    let mut down_after = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if health_of(&lab, "198.18.0.12").as_deref() == Some("down") {
            down_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let down_after = down_after.expect("b2 marked down within 10 s");
    eprintln!("FIGURE failover: b2 left rotation {} ms after its server died (limit 400 ms) under 400 held clients", down_after.as_millis());
    assert!(down_after <= Duration::from_millis(400), "interval x fall + 200 ms = 400 ms; took {down_after:?}");

    // SIGTERM detaches at once.
    let weir = lab.weir.as_mut().unwrap();
    let t = Instant::now();
    // SAFETY: signalling our own child (weir; `ip netns exec` execs it) by PID.
    unsafe { libc::kill(weir.id() as i32, libc::SIGTERM) };
    let mut detached = None;
    while t.elapsed() < Duration::from_secs(30) {
        if lab.prog_id().is_none() {
            detached = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let detached = detached.expect("weir detached within 30 s of SIGTERM");
    eprintln!("FIGURE SIGTERM: detached {} ms after the signal under 400 held clients", detached.as_millis());
    let st = lab.weir.as_mut().unwrap().wait().unwrap();
    lab.weir = None;
    assert!(st.success(), "weir exits 0 on SIGTERM: {st}");
    assert!(detached <= Duration::from_millis(200), "SIGTERM took {detached:?}");
    drop(load);
}

const DEAD_CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:2::77"
"#;

#[test]
fn a_dead_backend_neither_blocks_the_start_nor_stays_out_once_it_answers() {
    if !require_root("daemon end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wn{}", std::process::id()));
    std::fs::write(&lab.config, DEAD_CONFIG).unwrap();
    let started = Instant::now();
    lab.weir = Some(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("lb"), common::lab::WEIR, "run", "--iface", "veth6", "--mode", "native", "--interval", "0"])
            .arg("--config")
            .arg(&lab.config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut served = None;
    while started.elapsed() < Duration::from_secs(10) {
        // Ask only once something is attached: a client whose ARP for the
        // VIP went unanswered before would wait out its own retry timer.
        if lab.prog_id().is_none() {
            if let Some(st) = lab.weir.as_mut().unwrap().try_wait().unwrap() {
                panic!("weir exited at start with a dead backend configured: {st}");
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let o = lab.sh("client", "curl -s --max-time 0.3 http://198.18.0.100/");
        let body = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if body == "b1" || body == "b2" {
            served = Some(started.elapsed());
            break;
        }
        if let Some(st) = lab.weir.as_mut().unwrap().try_wait().unwrap() {
            panic!("weir exited at start with a dead backend configured: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = served.expect("the live VIP serves within 10 s");
    eprintln!("FIGURE the live VIP served {} ms after `weir run` started (a dead backend configured)", served.as_millis());
    assert!(served <= Duration::from_secs(1), "the live VIP must serve within 1 s; took {served:?}");
    assert_eq!(health_of(&lab, "2001:2::77").as_deref(), Some("down (unresolved)"));

    // The dead backend's host appears (on b3, which has the VIP on lo).
    let o = lab.sh("b3", "ip -6 addr add 2001:2::77/64 dev b0 nodad");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let appeared = Instant::now();
    while health_of(&lab, "2001:2::77").as_deref() == Some("down (unresolved)") {
        assert!(appeared.elapsed() < Duration::from_secs(10), "the backend did not join within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("FIGURE the dead backend joined {} ms after its host appeared", appeared.elapsed().as_millis());
    let o = lab.sh("client", "curl -s --max-time 2 'http://[2001:2::100]/'");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "b3", "the joined backend serves its VIP");
}

const MAC_CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
"#;

#[test]
fn a_backend_whose_mac_changes_keeps_serving() {
    if !require_root("daemon end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wm{}", std::process::id()));
    lab.start_weir(MAC_CONFIG);
    // ~8 s of requests, each "<ms since start> <body or FAILED>".
    let client = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c"])
        .arg(
            "start=$(date +%s%3N); end=$((start+8000)); \
             while [ $(date +%s%3N) -lt $end ]; do \
               r=$(curl -s --max-time 0.3 http://198.18.0.100/ || echo FAILED); \
               echo \"$(( $(date +%s%3N) - start )) $r\"; sleep 0.02; done",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // b2's NIC is replaced: same address, new MAC (announced, as a host
    // coming up with arp_notify does).
    let o = lab.sh("b2", "sysctl -qw net.ipv4.conf.b0.arp_notify=1 && ip link set dev b0 address 02:00:00:00:99:12");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let changed_ms = t0.elapsed().as_millis() as u64;
    let out = client.wait_with_output().unwrap();
    let lines: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, b)| (t.parse().unwrap_or(0), b.trim().to_string())))
        .collect();
    let failed: Vec<u64> = lines.iter().filter(|(_, b)| b == "FAILED").map(|(t, _)| *t).collect();
    let last_fail = failed.iter().copied().filter(|t| *t + 400 >= changed_ms).max();
    eprintln!(
        "FIGURE MAC change: {} requests, {} failed; last failure {} ms after the change",
        lines.len(),
        failed.len(),
        last_fail.map(|t| t.saturating_sub(changed_ms) as i64).unwrap_or(-1)
    );
    assert!(lines.len() >= 100, "too few requests: {}", lines.len());
    assert!(
        !failed.iter().any(|t| *t > changed_ms + 1000),
        "requests failed more than 1 s after the MAC change: {failed:?} (changed at {changed_ms} ms)"
    );
    assert!(lines.iter().any(|(t, b)| b == "b2" && *t > changed_ms + 1000), "b2 serves under its new MAC");
}
