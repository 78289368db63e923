//! The capabilities packaging/weir@.service grants are enough, and each is
//! needed (issue 10): `weir run`, `weir reload` and a hand-over work with
//! exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (setpriv: the bounding
//! set of a root process is all it gets), and without any one of them
//! `weir run` fails. Root, lab.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{Lab, WEIR};
use common::require_root;

const CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

const CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
health = { kind = "tcp", interval_ms = 200, timeout_ms = 150, fall = 2, rise = 2 }
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
"#;

/// `weir run` in the balancer's namespace with only `caps`.
fn run_with(lab: &Lab, caps: &[&str]) -> std::process::Child {
    let set = std::iter::once("-all".to_string()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",");
    Command::new("ip")
        .args(["netns", "exec", &lab.ns("lb"), "setpriv", &format!("--bounding-set={set}"), "--inh-caps=-all", "--"])
        .args([WEIR, "run", "--iface", "veth6", "--interval", "0", "--config"])
        .arg(&lab.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn curl_ok(lab: &Lab) -> bool {
    let o = lab.sh("client", "curl -s --max-time 1 http://198.18.0.100/");
    matches!(String::from_utf8_lossy(&o.stdout).trim(), "b1" | "b2")
}

#[test]
fn run_reload_and_hand_over_need_exactly_bpf_net_admin_perfmon() {
    if !require_root("capabilities end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wc{}", std::process::id()));
    std::fs::write(&lab.config, CONFIG).unwrap();

    // Each one missing: the start fails (and leaves nothing attached).
    for drop in CAPS {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| *c != drop).collect();
        let mut w = run_with(&lab, &caps);
        let t = Instant::now();
        let st = loop {
            if let Some(st) = w.try_wait().unwrap() {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(10) {
                // SAFETY: our own child, by PID.
                unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
                let _ = w.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err).unwrap();
        let st = st.unwrap_or_else(|| panic!("weir run without CAP_{} kept running", drop.to_uppercase()));
        assert!(!st.success(), "weir run without CAP_{} succeeded", drop.to_uppercase());
        eprintln!("FIGURE without CAP_{}: {}", drop.to_uppercase(), err.lines().last().unwrap_or("").trim());
        assert!(lab.prog_id().is_none(), "nothing attached after a failed start");
    }

    // All three: run, serve, reload, hand over.
    lab.weir = Some(run_with(&lab, &CAPS));
    let t = Instant::now();
    while lab.stats().is_none() {
        assert!(t.elapsed() < Duration::from_secs(15), "weir with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(curl_ok(&lab), "serves with the three capabilities");
    std::fs::write(&lab.config, CONFIG.replace("198.18.0.12\"", "198.18.0.12\"\nweight = 3")).unwrap();
    let o = Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR, "reload", "--iface", "veth6"]).output().unwrap();
    assert!(o.status.success(), "reload: {}", String::from_utf8_lossy(&o.stderr));
    let prog = lab.prog_id().expect("attached");
    let mut old = lab.weir.replace(run_with(&lab, &CAPS)).unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the old instance did not hand over");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "the old instance exits 0 after handing over: {st}");
    let t = Instant::now();
    while lab.stats().is_none() {
        assert!(t.elapsed() < Duration::from_secs(15), "the new instance does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(lab.prog_id().expect("still attached"), prog, "the new program was swapped in");
    assert!(curl_ok(&lab), "serves after the hand-over");
    eprintln!("FIGURE run, reload and hand-over worked with exactly CAP_BPF CAP_NET_ADMIN CAP_PERFMON");

    // Safe edges: /run/weir 0700, the socket 0600; another user cannot reload.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("/run/weir"), 0o700);
    let o = lab.sh("lb", "ls /run/weir/veth6.$(stat -L -c %i /proc/self/ns/net).sock");
    let sock = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(mode(&sock), 0o600, "{sock}");
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.ns("lb"), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", WEIR, "reload", "--iface", "veth6"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "nobody reloaded weir: {}", String::from_utf8_lossy(&o.stdout));

    // kill -9 leaves the socket file; the next start replaces it.
    let w = lab.weir.as_mut().unwrap();
    // SAFETY: our own child, by PID.
    unsafe { libc::kill(w.id() as i32, libc::SIGKILL) };
    let _ = w.wait();
    lab.weir = None;
    assert!(std::path::Path::new(&sock).exists(), "a killed instance leaves its socket");
    lab.start_weir(CONFIG);
    assert!(curl_ok(&lab), "a new instance starts over the stale socket");
}
