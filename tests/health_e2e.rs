//! Health checks end to end (root): one backend's server dies while a client
//! requests every 100 ms; it leaves rotation within fall x interval, nearly
//! every request succeeds throughout, and it comes back after recovery.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::require_root;

const CONFIG: &str = r#"
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

fn b2_health(lab: &Lab) -> Option<String> {
    let s = lab.stats()?;
    s["vips"][0]["backends"][1]["health"].as_str().map(str::to_string)
}

#[test]
fn a_dead_backend_leaves_rotation_and_comes_back() {
    if !require_root("health-check end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wh{}", std::process::id()));
    lab.start_weir(CONFIG);
    assert_eq!(b2_health(&lab).as_deref(), Some("up"));

    // ~25 s of requests, one every 100 ms, each line "<ms since start> <body or FAILED>".
    let client = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c"])
        .arg(
            "start=$(date +%s%3N); end=$((start+25000)); \
             while [ $(date +%s%3N) -lt $end ]; do \
               r=$(curl -s --max-time 2 http://198.18.0.100/ || echo FAILED); \
               echo \"$(( $(date +%s%3N) - start )) $r\"; sleep 0.1; done",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();

    std::thread::sleep(Duration::from_secs(4));
    // Stop b2's server (started by the lab; its PID is in the lab's state).
    let pid_file = format!("{}/b2.pid", lab.state());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: signalling the lab's own server by its recorded PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let killed = Instant::now();
    let killed_at_ms = t0.elapsed().as_millis() as u64;
    let mut down_after = None;
    while killed.elapsed() < Duration::from_secs(5) {
        if b2_health(&lab).as_deref() == Some("down") {
            down_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let down_after = down_after.expect("b2 marked down within 5 s");
    eprintln!("b2 left rotation {} ms after its server died", down_after.as_millis());
    assert!(down_after <= Duration::from_secs(3), "fall x interval is 200 ms; took {down_after:?}");

    std::thread::sleep(Duration::from_secs(8));
    // Bring it back (recorded, so the lab's teardown stops it).
    let www = format!("{}/www-b2", lab.state());
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.ns("b2"), "python3", "-m", "http.server", "80", "--bind", "::", "--directory", &www])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, server.id().to_string()).unwrap();
    let revived_at_ms = t0.elapsed().as_millis() as u64;
    let back = Instant::now();
    while b2_health(&lab).as_deref() != Some("up") {
        assert!(back.elapsed() < Duration::from_secs(10), "b2 did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("b2 back in rotation {} ms after its server restarted", back.elapsed().as_millis());

    let out = client.wait_with_output().unwrap();
    let lines: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, b)| (t.parse().unwrap_or(0), b.trim().to_string())))
        .collect();
    let failed = lines.iter().filter(|(_, b)| b == "FAILED").count();
    let n = lines.len();
    eprintln!("{n} requests, {failed} failed");
    assert!(n >= 150, "too few requests: {n}");
    assert!(failed * 100 <= n, "more than 1% failed: {failed} of {n}");
    let down_until = killed_at_ms + down_after.as_millis() as u64 + 300;
    assert!(
        lines.iter().all(|(t, b)| b != "b2" || *t < killed_at_ms + 50 || *t > revived_at_ms),
        "b2 answered while its server was dead?"
    );
    assert!(
        !lines.iter().any(|(t, b)| b == "FAILED" && *t > down_until && *t < revived_at_ms),
        "requests failed after b2 left rotation"
    );
    assert!(lines.iter().any(|(t, b)| b == "b2" && *t > revived_at_ms), "b2 serves again after recovery");
    // Our own child: stop and reap it here rather than leave a zombie to the lab.
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
}
