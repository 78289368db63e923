//! The binary as a user meets it (no root needed).

use std::process::Command;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn weir(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(WEIR).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn check_prints_the_plan_with_maglev_shares() {
    let (ok, out, err) = weir(&["check", &format!("{ROOT}/lab/weir-lab.toml")]);
    assert!(ok, "{err}");
    assert!(out.contains("vip web 198.18.0.100:80 tcp scheduler=maglev mode=dsr"), "{out}");
    assert!(out.contains("backend 198.18.0.13") && out.contains("(50.00%)"), "weight 2 of 4: {out}");
    assert!(out.contains("vip web-nat 198.18.0.101:80 tcp scheduler=maglev mode=nat"), "{out}");
    assert!(out.contains("nat: source the interface's address, ports 1024-32767"), "{out}");
    assert!(out.trim_end().ends_with("config OK"));
}

/// `weir check --config F` prints the memory plan: every map with its
/// entries and bytes, the total and the cost of a tracked flow; the
/// shield's tables are sized to nothing without [shield].
#[test]
fn check_prints_the_memory_plan() {
    let (ok, out, err) = weir(&["check", "--config", &format!("{ROOT}/lab/weir-lab.toml")]);
    assert!(ok, "{err}");
    assert!(out.contains("memory (kernel accounting"), "{out}");
    let line = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for map {name}: {out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // name type entries key value bytes note
    let flows = line("flows4");
    assert_eq!(&flows[1..3], ["lru_hash", "65536"], "{out}");
    let bytes: u64 = flows[5].replace(',', "").parse().expect("bytes");
    assert!(bytes > 65536 * 64, "a flow entry costs more than its key and value: {out}");
    // No IPv6 VIP in the lab: the IPv6 flow table holds nothing.
    assert_eq!(line("flows6")[2], "1", "{out}");
    let challenge = line("syn_challenge");
    assert_eq!(challenge[2], "1", "{out}");
    assert!(challenge[6..].join(" ").contains("off: [shield] is off"), "{out}");
    assert!(line("nat_fwd")[2] == "65536", "the lab has a NAT VIP: {out}");
    let total = out.lines().find(|l| l.trim_start().starts_with("total ")).expect("a total line");
    assert!(total.contains("MiB"), "{total}");
    assert!(out.contains("per tracked flow: "), "{out}");
    // A DSR-only config: the NAT tables hold nothing.
    let dir = std::env::temp_dir().join(format!("weir-check-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("dsr.toml");
    std::fs::write(&cfg, "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n").unwrap();
    let (ok, out, err) = weir(&["check", &cfg.to_string_lossy()]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok, "{err}");
    let nat = out.lines().find(|l| l.split_whitespace().next() == Some("nat_rev")).expect("nat_rev line");
    assert!(nat.split_whitespace().nth(2) == Some("1") && nat.contains("off: NAT"), "{nat}");
}

#[test]
fn check_prints_the_fingerprint_and_lookup_answers_from_a_config() {
    let cfg = format!("{ROOT}/lab/weir-lab.toml");
    let (ok, out, err) = weir(&["check", &cfg]);
    assert!(ok, "{err}");
    let fp = out.lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap_or_else(|| panic!("{out}"));
    assert!(fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
    let (ok, out, err) = weir(&["lookup", "--config", &cfg, "tcp", "198.18.0.1:40000", "198.18.0.100:80"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("backend 198.18.0.1") && out.contains(":80 of VIP web (198.18.0.100:80 tcp): Maglev slot "), "{out}");
    assert!(out.trim_end().ends_with(" of 65537 (not tracked: a new flow would go there)"), "{out}");
    let (ok, out, _) = weir(&["lookup", "--config", &cfg, "--json", "tcp", "198.18.0.1:40000", "198.18.0.101:80"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got = (v["vip"]["mode"].as_str(), v["why"]["kind"].as_str(), v["from"].as_str());
    assert_eq!(got, (Some("nat"), Some("slot"), Some("config")), "{v}");
    let (ok, out, _) = weir(&["lookup", "--config", &cfg, "udp", "[2001:db8::1]:53", "[2001:db8::2]:53"]);
    assert!(ok);
    assert_eq!(out.trim_end(), "not a VIP: passed to the kernel");
    let (ok, _, err) = weir(&["lookup", "--config", &cfg, "sctp", "198.18.0.1:1", "198.18.0.100:80"]);
    assert!(!ok && err.contains("protocol 'sctp': give tcp or udp"), "{err}");
    let (ok, _, err) = weir(&["lookup", "--iface", "nosuch0", "tcp", "198.18.0.1:1", "198.18.0.100:80"]);
    assert!(!ok && err.contains("no weir instance is running on nosuch0"), "{err}");
}

#[test]
fn errors_name_the_problem_and_exit_non_zero() {
    let (ok, _, err) = weir(&["check", "/nonexistent/weir.toml"]);
    assert!(!ok);
    assert!(err.contains("cannot read config file /nonexistent/weir.toml"), "{err}");
    let (ok, _, err) = weir(&["stats", "--iface", "nosuch0", "--once"]);
    assert!(!ok);
    assert!(err.contains("no weir instance is running on nosuch0"), "{err}");
}

#[test]
fn man_page_covers_every_command() {
    let (ok, out, _) = weir(&["man"]);
    assert!(ok);
    assert!(out.contains(".TH weir 8"), "roff header");
    for sub in ["weir\\-run", "weir\\-shield", "weir\\-reload", "weir\\-stats", "weir\\-bench", "weir\\-check", "weir\\-lookup"] {
        assert!(out.contains(sub), "man page lacks {sub}");
    }
}

#[test]
fn check_of_an_endless_file_fails_fast() {
    let t = std::time::Instant::now();
    let (ok, _, err) = weir(&["check", "/dev/zero"]);
    assert!(!ok);
    assert!(err.contains("config file /dev/zero is larger than 16 MiB"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[test]
fn trace_refuses_an_unknown_verdict() {
    let (ok, _, err) = weir(&["trace", "--iface", "nosuch0", "--action", "foo"]);
    assert!(!ok);
    assert!(err.contains("invalid value 'foo' for '--action"), "{err}");
    assert!(!err.contains("no weir instance"), "refused before connecting: {err}");
}

/// A stand-in instance: answers `stats` on the control socket path of a
/// namespace of its own; removed (socket and namespace) on drop.
struct FakeInstance {
    ns: String,
    path: std::path::PathBuf,
}
impl FakeInstance {
    fn start(ns: &str, iface: &str) -> FakeInstance {
        use std::io::{Read, Write};
        use std::os::unix::fs::MetadataExt;
        assert!(Command::new("ip").args(["netns", "add", ns]).status().unwrap().success());
        let ino = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
        std::fs::create_dir_all("/run/weir").unwrap();
        let path = std::path::PathBuf::from(format!("/run/weir/{iface}.{ino}.sock"));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let body = format!(
            r#"{{"iface":"{iface}","xdp_mode":"native","uptime_s":1.0,"flows_tracked":0,"counters":{{}},"vips":[]}}"#
        );
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut b = [0u8; 64];
                let _ = s.read(&mut b);
                let _ = s.write_all(body.as_bytes());
            }
        });
        FakeInstance { ns: ns.into(), path }
    }
}
impl Drop for FakeInstance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn stats_into_a_closed_pipe_exits_quietly_and_status_names_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").is_err(), "needs root (a namespace and /run/weir) and CI is set");
        eprintln!("SKIPPED: needs root");
        return;
    }
    let ns = format!("wcli{}", std::process::id());
    let _fake = FakeInstance::start(&ns, "wcli0");
    let o = Command::new("ip")
        .args(["netns", "exec", &ns, "bash", "-c"])
        .arg(format!("{WEIR} stats --iface wcli0 --interval 1 | head -n 1 >/dev/null; echo rc=${{PIPESTATUS[0]}}"))
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("rc=0"), "weir stats | head: {out} {err}");
    assert!(!err.contains("panicked"), "{err}");
    let (ok, out, err) = weir(&["status"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("wcli0")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(&format!("netns {ns}")), "the namespace by name: {line}");
}
