//! Live reconfiguration end to end (root): a long download keeps going
//! while reloads add and remove other backends and then drain its own; a
//! bad config is refused and the running one keeps serving; SIGHUP reloads.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{Lab, WEIR};
use common::require_root;

fn config(backends: &[(&str, u32)]) -> String {
    let mut c = String::from("[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n");
    for (b, w) in backends {
        c += &format!("[[vip.backend]]\naddress = \"198.18.0.{b}\"\nweight = {w}\n");
    }
    c
}

fn reload(lab: &Lab, cfg: &str) -> std::process::Output {
    std::fs::write(&lab.config, cfg).unwrap();
    Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR, "reload", "--iface", "veth6"]).output().unwrap()
}

/// Which of `candidates` ("11", "12", ...) serves the download: its log names the request.
fn serving_backend<'a>(lab: &Lab, candidates: &[&'a str]) -> &'a str {
    let st = lab.state();
    let t = Instant::now();
    loop {
        let hit = candidates.iter().find(|b| {
            std::fs::read_to_string(format!("{st}/b{}.log", &b[1..])).unwrap_or_default().contains("big.bin")
        });
        if let Some(b) = hit {
            return b;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the download reached no backend");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Who answers 30 new connections.
fn answers(lab: &Lab) -> Vec<String> {
    let o = lab.sh("client", "for i in $(seq 30); do curl -s --max-time 2 http://198.18.0.100/ || echo FAILED; done");
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

#[test]
fn reloads_keep_a_download_and_refuse_bad_configs() {
    if !require_root("reload end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wr{}", std::process::id()));
    let st = lab.state();
    let o = Command::new("bash")
        .args(["-c", &format!("head -c 16M /dev/urandom > {st}/big && for b in 1 2 3; do cp {st}/big {st}/www-b$b/big.bin; done; sha256sum {st}/big")])
        .output()
        .unwrap();
    let want_sha = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
    lab.start_weir(&config(&[("11", 1), ("12", 1)]));

    // 16 MB at 1 MB/s: the download outlives every reload below.
    let dl = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c", "curl -s --max-time 60 --limit-rate 1000k http://198.18.0.100/big.bin | sha256sum"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let serving = serving_backend(&lab, &["11", "12"]);
    let other = if serving == "11" { "12" } else { "11" };
    let name = |b: &str| format!("b{}", &b[1..]);

    // Add b3, remove the other backend.
    let o = reload(&lab, &config(&[(serving, 1), ("13", 1)]));
    assert!(o.status.success(), "reload: {}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("2 backends (+1 -1)"), "{said}");
    let a = answers(&lab);
    assert!(!a.contains(&name(other)), "removed backend still answers: {a:?}");
    assert!(a.contains(&"b3".to_string()) && !a.contains(&"FAILED".to_string()), "{a:?}");

    // A dry run of the drain names it and changes nothing: new flows still
    // reach the download's backend.
    let drained = std::env::temp_dir().join(format!("{}-drain.toml", lab.prefix));
    std::fs::write(&drained, config(&[(serving, 0), ("13", 1)])).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.ns("lb"), WEIR, "reload", "--iface", "veth6", "--dry-run", "--config"])
        .arg(&drained)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    println!("weir reload --dry-run:\n{said}");
    assert!(o.status.success(), "dry run: {}", String::from_utf8_lossy(&o.stderr));
    assert!(said.contains(&format!("backend 198.18.0.{serving} drained (weight 1 -> 0)")), "{said}");
    assert!(said.contains("of Maglev slots move"), "{said}");
    let a = answers(&lab);
    assert!(a.contains(&name(serving)), "a dry run applied the drain: {a:?}");

    // Drain the download's backend: new flows avoid it, the download goes on.
    let o = reload(&lab, &config(&[(serving, 0), ("13", 1)]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("drained (weight 1 -> 0)"), "the summary names the drain");
    let _ = std::fs::remove_file(&drained);
    let a = answers(&lab);
    assert!(a.iter().all(|x| x == "b3"), "drained backend still gets new flows: {a:?}");

    // A bad config is refused with the reason; the running one serves on.
    let o = reload(&lab, &config(&[(serving, 0), ("13", 1)]).replace("protocol = \"tcp\"", "protocol = \"sctp\""));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reload refused, the running config stays") && err.contains("sctp"), "{err}");
    assert!(answers(&lab).iter().all(|x| x == "b3"));

    // SIGHUP reloads too: bring everything back.
    std::fs::write(&lab.config, config(&[("11", 1), ("12", 1), ("13", 1)])).unwrap();
    let pid = lab.weir.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child (weir) by PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let t = Instant::now();
    loop {
        let s = lab.stats().expect("weir still running after SIGHUP");
        if s["vips"][0]["backends"].as_array().map(|b| b.len()) == Some(3) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "SIGHUP did not reload: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let got = String::from_utf8_lossy(&dl.wait_with_output().unwrap().stdout).to_string();
    assert!(got.contains(&want_sha), "the download across 4 reloads was not intact: {got}");
}

#[test]
fn a_new_weir_run_takes_over_without_dropping_the_download() {
    if !require_root("hitless restart end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wx{}", std::process::id()));
    let st = lab.state();
    let o = Command::new("bash")
        .args(["-c", &format!("head -c 8M /dev/urandom > {st}/big && for b in 1 2 3; do cp {st}/big {st}/www-b$b/big.bin; done; sha256sum {st}/big")])
        .output()
        .unwrap();
    let want_sha = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
    let cfg = config(&[("11", 1), ("12", 1), ("13", 1)]);
    lab.start_weir(&cfg);
    let old_prog = lab.prog_id().expect("attached");

    // 8 MB at 1 MB/s: the restart happens in the middle of it.
    let dl = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "bash", "-c", "curl -s --max-time 60 --limit-rate 1000k http://198.18.0.100/big.bin | sha256sum"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Which backend serves it; then a reload removes another one, so the
    // running ids are no longer what a fresh start would give.
    let serving = serving_backend(&lab, &["11", "12", "13"]);
    let gone = ["11", "12", "13"].into_iter().find(|b| *b != serving).unwrap();
    let rest: Vec<(&str, u32)> = ["11", "12", "13"].into_iter().filter(|b| *b != gone).map(|b| (b, 1)).collect();
    let o = reload(&lab, &config(&rest));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(1));
    let before = lab.stats().unwrap();
    let tx_before = before["counters"]["xdp_tx"].as_u64().unwrap();
    assert!(before["flows_tracked"].as_u64().unwrap() >= 1);

    // The upgrade: a second weir run on the same interface and config.
    let (old_status, after) = lab.take_over();
    assert!(old_status.success(), "old instance exits cleanly: {old_status}");
    let new_prog = lab.prog_id().expect("still attached after the hand-over");
    assert_ne!(new_prog, old_prog, "the new program replaced the old in place");
    assert!(after["counters"]["xdp_tx"].as_u64().unwrap() >= tx_before, "counters carried over: {after}");
    assert!(after["flows_tracked"].as_u64().unwrap() >= 1, "flow table carried over");

    let got = String::from_utf8_lossy(&dl.wait_with_output().unwrap().stdout).to_string();
    assert!(got.contains(&want_sha), "the download across the restart was not intact: {got}");
    assert!(answers(&lab).iter().all(|a| a.starts_with('b')), "the new instance serves new flows");

    // weir status lists it; weir stop detaches it and it exits.
    let o = Command::new(WEIR).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(status.lines().any(|l| l.starts_with("veth6") && l.contains("native") && l.contains("1 VIPs")), "{status}");
    let o = Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR, "stop", "--iface", "veth6"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut w = lab.weir.take().unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = w.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "weir stop did not stop it");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success());
    assert!(lab.prog_id().is_none(), "detached after weir stop");
}
