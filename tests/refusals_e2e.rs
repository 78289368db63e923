//! Configurations `weir run` must refuse before anything is attached (root,
//! in the lab, lab/lab.sh), and `weir check`'s part of them:
//! - a DSR VIP (the default mode) whose backend is off-link, reached through
//!   a router (ROUTED_LAB=1: b4 at 198.19.20.14 / 2001:2:0:20::14): DSR only
//!   rewrites MACs, so src/net.rs `resolve_mac` refuses it; the same backend
//!   in tunnel mode is accepted;
//! - a NAT VIP whose source is the interface's own address (the default)
//!   with `source_ports` overlapping the kernel's ephemeral ports, or whose
//!   source address is also a VIP's address (src/dataplane.rs
//!   `check_sources`; config validation for an explicit `source_address`).
//!
//! "Nothing attached": `ip -d link show veth6` in the balancer's namespace
//! shows no XDP program after every refusal.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{Lab, WEIR};
use common::require_root;

/// `weir run` in the balancer's namespace with `config`, bounded in time.
/// A refusal exits by itself; if weir is still running after 30 s it was
/// accepted: it is stopped (SIGTERM, then SIGKILL, to its own PID) and the
/// test fails. Returns (exit status, stderr).
fn run_expecting_refusal(lab: &Lab, tag: &str, config: &str) -> (std::process::ExitStatus, String) {
    let path = std::env::temp_dir().join(format!("{}-{tag}.toml", lab.prefix));
    std::fs::write(&path, config).unwrap();
    let err_path = std::env::temp_dir().join(format!("{}-{tag}.err", lab.prefix));
    let err_file = std::fs::File::create(&err_path).unwrap();
    // `ip netns exec` execs weir: the child's PID is weir's own.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("lb"), WEIR, "run", "--iface", "veth6", "--mode", "native", "--interval", "0", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("starting weir run");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = match status {
        Some(st) => st,
        None => {
            // SAFETY: signalling our own child (weir) by PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill(); // SIGKILL by PID; no-op if it exited
            let _ = child.wait();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&err_path);
            panic!("{tag}: weir run accepted the config (still running after 30 s; stopped)\nconfig:\n{config}\nstderr:\n{err}");
        }
    };
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&err_path);
    eprintln!("{tag}: weir run exited {status}; stderr: {}", err.trim());
    (status, err)
}

/// No XDP program on the balancer's veth6 (`ip -d link show veth6`).
fn assert_nothing_attached(lab: &Lab, what: &str) {
    let o = lab.sh("lb", "ip -d link show veth6");
    assert!(o.status.success(), "ip -d link show veth6: {}", String::from_utf8_lossy(&o.stderr));
    let link = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(link.contains("veth6"), "{what}: unexpected `ip -d link show veth6` output: {link}");
    assert!(!link.contains("xdp"), "{what}: an XDP program is attached to veth6 after the refusal:\n{link}");
    assert_eq!(lab.prog_id(), None, "{what}: prog id on veth6");
}

/// A refusal: non-zero exit, stderr containing every one of `want`, and
/// nothing attached.
fn refused(lab: &Lab, tag: &str, config: &str, want: &[&str]) -> String {
    let (st, err) = run_expecting_refusal(lab, tag, config);
    assert!(!st.success(), "{tag}: weir run exits non-zero: {st}\n{err}");
    for w in want {
        assert!(err.contains(w), "{tag}: stderr lacks {w:?}:\n{err}");
    }
    assert_nothing_attached(lab, tag);
    err
}

/// Accepted: weir comes up (answers `weir stats`), an XDP program is on
/// veth6, SIGTERM stops it with status 0 and detaches.
fn accepted(lab: &mut Lab, tag: &str, config: &str) {
    lab.start_weir(config); // panics if weir exits during start-up
    let id = lab.prog_id();
    assert!(id.is_some(), "{tag}: an XDP program on veth6 while weir runs");
    let st = lab.stop_weir().expect("weir was running");
    assert!(st.success(), "{tag}: weir exits 0 on SIGTERM: {st}");
    assert_nothing_attached(lab, &format!("{tag} (after SIGTERM)"));
    eprintln!("{tag}: accepted (prog id {}), stopped, detached", id.unwrap());
}

fn vip(name: &str, addr: &str, port: u16, extra: &str, backends: &[&str]) -> String {
    let mut c = format!("[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {port}\nprotocol = \"tcp\"\n{extra}");
    for b in backends {
        c += &format!("[[vip.backend]]\naddress = \"{b}\"\n");
    }
    c
}

const ON_LINK4: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
const ON_LINK6: [&str; 3] = ["2001:2::11", "2001:2::12", "2001:2::13"];

#[test]
fn dsr_to_an_off_link_backend_is_refused_tunnel_is_accepted() {
    if !require_root("refusals end-to-end test (routed lab)") {
        return;
    }
    let mut lab = Lab::up_routed(&format!("rfr{}", std::process::id()), "dsr");
    // Precondition: b4 is off-link for the balancer, reached via the router.
    let r = lab.sh("lb", "ip route get 198.19.20.14; ip -6 route get 2001:2:0:20::14");
    let routes = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(routes.contains("via 198.18.0.254"), "198.19.20.14 goes through the router: {routes}");
    assert!(routes.contains("via 2001:2::254"), "2001:2:0:20::14 goes through the router: {routes}");

    let want4 = [
        "198.19.20.14 is reached through the gateway 198.18.0.254",
        "is reached through the gateway",
        "use mode = \"tunnel\" or \"nat\"",
    ];
    // mode absent: DSR is the default
    refused(&lab, "dsr-default-v4", &vip("off", "198.18.0.100", 80, "", &["198.19.20.14"]), &want4);
    refused(&lab, "dsr-explicit-v4", &vip("off", "198.18.0.100", 80, "mode = \"dsr\"\n", &["198.19.20.14"]), &want4);
    // IPv6: the same, through the router's IPv6 address
    refused(
        &lab,
        "dsr-default-v6",
        &vip("off6", "2001:2::100", 80, "", &["2001:2:0:20::14"]),
        &["2001:2:0:20::14 is reached through the gateway 2001:2::254", "use mode = \"tunnel\" or \"nat\""],
    );
    // One off-link backend among on-link ones is enough to refuse the config.
    refused(
        &lab,
        "dsr-mixed-v4",
        &vip("mixed", "198.18.0.100", 80, "", &["198.18.0.11", "198.19.20.14", "198.18.0.12"]),
        &want4,
    );

    // Tunnel mode: the same backend, accepted (its MAC is the router's).
    accepted(&mut lab, "tunnel-v4", &vip("off", "198.18.0.100", 80, "mode = \"tunnel\"\n", &["198.19.20.14"]));
    accepted(
        &mut lab,
        "tunnel-v4-v6",
        &(vip("off", "198.18.0.100", 80, "mode = \"tunnel\"\n", &["198.19.20.14"])
            + &vip("off6", "2001:2::100", 80, "mode = \"tunnel\"\n", &["2001:2:0:20::14"])),
    );
    // Control: DSR to on-link backends is still accepted in this lab.
    accepted(&mut lab, "dsr-on-link-v4", &vip("web", "198.18.0.100", 80, "", &ON_LINK4));
}

#[test]
fn nat_sources_that_make_replies_ambiguous_are_refused() {
    if !require_root("refusals end-to-end test (NAT lab)") {
        return;
    }
    let mut lab = Lab::up_mode(&format!("rfn{}", std::process::id()), "nat");
    // The kernel's ephemeral range as weir, in the balancer's namespace, reads it.
    let r = lab.sh("lb", "cat /proc/sys/net/ipv4/ip_local_port_range");
    let range = String::from_utf8_lossy(&r.stdout).to_string();
    let v: Vec<u16> = range.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (lo, hi) = (v[0], v[1]);
    eprintln!("ephemeral ports in the balancer's namespace: {lo}-{hi}");
    assert!(lo <= 40000 && 30000 <= hi, "precondition: [30000, 40000] overlaps {lo}-{hi}");
    let eph = format!("overlap the kernel's ephemeral ports {lo}-{hi}");
    let nat = "mode = \"nat\"\n";

    // Default source (the interface's own 198.18.0.10), ports overlapping.
    let err = refused(
        &lab,
        "nat-eph-default-v4",
        &vip("web4", "198.18.0.100", 80, &format!("{nat}source_ports = [30000, 40000]\n"), &ON_LINK4),
        &["overlap the kernel's ephemeral ports", &eph, "[30000, 40000]", "198.18.0.10"],
    );
    assert!(err.contains("VIP web4"), "names the VIP: {err}");
    // One port of overlap is enough.
    refused(
        &lab,
        "nat-eph-edge-lo",
        &vip("web4", "198.18.0.100", 80, &format!("{nat}source_ports = [1024, {lo}]\n"), &ON_LINK4),
        &[&eph],
    );
    refused(
        &lab,
        "nat-eph-edge-hi",
        &vip("web4", "198.18.0.100", 80, &format!("{nat}source_ports = [{hi}, 65535]\n"), &ON_LINK4),
        &[&eph],
    );
    // The interface's own address given explicitly: the same.
    refused(
        &lab,
        "nat-eph-explicit-own",
        &vip("web4", "198.18.0.100", 80, &format!("{nat}source_address = \"198.18.0.10\"\nsource_ports = [30000, 40000]\n"), &ON_LINK4),
        &[&eph, "198.18.0.10"],
    );
    // IPv6: the default source is 2001:2::10 (same range: IPv6 shares it).
    refused(
        &lab,
        "nat-eph-default-v6",
        &vip("web6", "2001:2::100", 80, &format!("{nat}source_ports = [30000, 40000]\n"), &ON_LINK6),
        &[&eph, "2001:2::10"],
    );

    // The default source 198.18.0.10 is also a VIP's address.
    let both = vip("web4", "198.18.0.100", 80, nat, &ON_LINK4) + &vip("lbaddr", "198.18.0.10", 8080, "", &["198.18.0.11"]);
    let err = refused(&lab, "nat-src-is-vip-default", &both, &["is also the address of VIP", "198.18.0.10"]);
    assert!(err.contains("VIP web4") && err.contains("VIP lbaddr"), "names both VIPs: {err}");
    // The same with the VIPs in the other order.
    let both = vip("lbaddr", "198.18.0.10", 8080, "", &["198.18.0.11"]) + &vip("web4", "198.18.0.100", 80, nat, &ON_LINK4);
    refused(&lab, "nat-src-is-vip-default-2", &both, &["is also the address of VIP"]);
    // An explicit source_address that is a VIP: config validation refuses
    // it, in `weir run` too, before anything happens.
    let cfg = vip("web4", "198.18.0.100", 80, &format!("{nat}source_address = \"198.18.0.100\"\n"), &ON_LINK4);
    refused(&lab, "nat-src-is-vip-explicit", &cfg, &["is also the address of vip[0]"]);

    // Controls, accepted in the same lab: ports just outside the range on
    // the interface's address, and overlapping ports on an address of the
    // VIP's own (not the interface's).
    accepted(&mut lab, "nat-ports-below", &vip("web4", "198.18.0.100", 80, &format!("{nat}source_ports = [1024, {}]\n", lo - 1), &ON_LINK4));
    if hi < 65535 {
        accepted(&mut lab, "nat-ports-above", &vip("web4", "198.18.0.100", 80, &format!("{nat}source_ports = [{}, 65535]\n", hi + 1), &ON_LINK4));
    }
    accepted(
        &mut lab,
        "nat-own-source",
        &vip("web4", "198.18.0.100", 80, &format!("{nat}source_address = \"198.18.0.50\"\nsource_ports = [30000, 40000]\n"), &ON_LINK4),
    );
    accepted(&mut lab, "nat-defaults", &vip("web4", "198.18.0.100", 80, nat, &ON_LINK4));
}

/// `weir check` (no root, no lab): an explicit NAT source_address that is
/// also a VIP's address is a config error.
#[test]
fn check_refuses_a_nat_source_address_that_is_a_vip() {
    let dir = std::env::temp_dir();
    let check = |tag: &str, cfg: &str| {
        let p = dir.join(format!("weir-refusals-{}-{tag}.toml", std::process::id()));
        std::fs::write(&p, cfg).unwrap();
        let o = Command::new(WEIR).arg("check").arg(&p).output().unwrap();
        let _ = std::fs::remove_file(&p);
        let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
        eprintln!("{tag}: weir check exited {}; {}", o.status, err.trim());
        (o.status.success(), out, err)
    };
    let nat = |src: &str| format!("mode = \"nat\"\nsource_address = \"{src}\"\n");

    // Its own address.
    let (ok, _, err) = check("self", &vip("web4", "198.18.0.100", 80, &nat("198.18.0.100"), &ON_LINK4));
    assert!(!ok, "refused");
    assert!(err.contains("is also the address of vip["), "{err}");
    assert!(err.contains("vip[0].source_address: 198.18.0.100 is also the address of vip[0]"), "{err}");

    // Another VIP's address (any port, any mode).
    let cfg = vip("nat4", "198.18.0.101", 80, &nat("198.18.0.100"), &ON_LINK4) + &vip("web", "198.18.0.100", 443, "", &ON_LINK4);
    let (ok, _, err) = check("other", &cfg);
    assert!(!ok, "refused");
    assert!(err.contains("vip[0].source_address: 198.18.0.100 is also the address of vip[1]"), "{err}");
    // ... in either order.
    let cfg = vip("web", "198.18.0.100", 443, "", &ON_LINK4) + &vip("nat4", "198.18.0.101", 80, &nat("198.18.0.100"), &ON_LINK4);
    let (ok, _, err) = check("other-first", &cfg);
    assert!(!ok, "refused");
    assert!(err.contains("vip[1].source_address: 198.18.0.100 is also the address of vip[0]"), "{err}");

    // IPv6.
    let (ok, _, err) = check("v6", &vip("web6", "2001:2::100", 80, &nat("2001:2::100"), &ON_LINK6));
    assert!(!ok, "refused");
    assert!(err.contains("is also the address of vip[0]"), "{err}");

    // Control: a source address of its own is fine.
    let (ok, out, err) = check("fine", &vip("web4", "198.18.0.100", 80, &nat("198.18.0.50"), &ON_LINK4));
    assert!(ok, "accepted: {err}");
    assert!(out.trim_end().ends_with("config OK"), "{out}");
}
