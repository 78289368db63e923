//! A short `weir bench` run (root): every path returns the action it is
//! timed for (bench checks each call), and the report is coherent.

mod common;

#[test]
fn bench_smoke() {
    if !common::require_root("bench smoke run") {
        return;
    }
    let r = weir::bench::run(200, 2).expect("bench runs");
    assert_eq!(r.repeats, 2);
    assert_eq!(r.rows.len(), 18);
    assert_eq!(r.rows[0].ratio_to_trivial, 1.0, "the baseline is its own unit");
    for row in &r.rows {
        assert!(row.ns_per_packet > 0.0, "{}: no time measured", row.path);
        assert!(row.ratio_to_trivial > 0.5 && row.ratio_to_trivial < 100.0, "{}: ratio {}", row.path, row.ratio_to_trivial);
    }
    let text = r.render();
    assert!(text.contains("shield: random-source SYN, challenge"), "{text}");
    assert!(text.contains("nat: return (backend -> client)") && text.contains("tunnel: IPIP encap"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 18);
    assert!(text.contains("fragment: later, follows its datagram"), "{text}");
}

/// Issue #14: `--calls 40000` ran the NAT row out of SNAT ports (the 16
/// probes of a claim found none with 3 backends x 1024..=32767, call 36,972:
/// drop_nat_ports). Every path's tables are now sized from the calls.
#[test]
fn bench_runs_past_the_nat_ports_of_the_default_config() {
    if !common::require_root("bench with 40,000 calls") {
        return;
    }
    let r = weir::bench::run(40_000, 1).expect("every row of a 40,000-call bench returns its action and hits its table");
    assert_eq!(r.rows.len(), 18);
    assert_eq!(r.calls_per_path, 40_000);
}

/// A row that returns another action names itself and the counters that
/// moved; an established row that does not hit its table fails.
#[test]
fn bench_failures_name_the_row_and_the_counters() {
    use weir::bench::{frame_v4, sample, Expect, VIP};
    use weir::skel::weir_stat as ws;
    if !common::require_root("bench failure messages") {
        return;
    }
    let dp = weir::bench::load_dp(&weir::bench::bench_config(65536, 3)).unwrap();
    let prog = &dp.skel.progs.weir_lb;
    // To an address that is no VIP: XDP_PASS, counted as pass_not_vip.
    let other = frame_v4("10.0.0.1".parse().unwrap(), "198.18.0.50".parse().unwrap(), 4000, 80, true);
    let e = sample("my row", prog, Some(&dp), 5, &mut |_| other.clone(), 3, None).unwrap_err().to_string();
    assert!(e.contains("bench row \"my row\": call 1 of 5 returned XDP_PASS (2), expected XDP_TX (3)"), "{e}");
    assert!(e.contains("pass_not_vip +1"), "{e}");
    // New SYNs timed as an established row: flow_new moved, flow_hit did not.
    let e = sample("est", prog, Some(&dp), 4, &mut |i| frame_v4("10.0.0.2".parse().unwrap(), VIP, 1000 + i as u16, 80, true), 3, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("flow_hit should have grown by 4 and flow_new by 0, but they grew by 0 and 4"), "{e}");
    // The same SYNs again: every one found in the handshake table.
    sample("est", prog, Some(&dp), 4, &mut |i| frame_v4("10.0.0.2".parse().unwrap(), VIP, 1000 + i as u16, 80, true), 3, Some(Expect::hit(ws::WEIR_STAT_FLOW_HIT)))
        .expect("repeated SYNs hit their handshakes");
}

/// `weir bench --cpus 2`: every scaling row ran on one CPU, then on two at
/// once, each call returned its action and the counters moved by every call.
#[test]
fn cpu_scaling_smoke() {
    if !common::require_root("CPU scaling smoke run") {
        return;
    }
    let allowed = weir::bench::cpus::allowed_cpus().unwrap();
    let e = weir::bench::cpus::run(allowed.len() + 1, 1000, 1).unwrap_err().to_string();
    assert!(e.contains(&format!("--cpus {}: this process may run on {} CPUs", allowed.len() + 1, allowed.len())), "{e}");
    let e = weir::bench::cpus::run(1, 1000, 1).unwrap_err().to_string();
    assert!(e.contains("--cpus 1: give 2 or more CPUs"), "{e}");
    if allowed.len() < 2 {
        eprintln!("one CPU: no scaling run");
        return;
    }
    let r = weir::bench::cpus::run(2, 2000, 1).expect("scaling rows run");
    assert_eq!(r.cpus, allowed[..2]);
    let names: Vec<&str> = r.rows.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names[0].starts_with("trivial XDP_PASS"), "{names:?}");
    for want in ["new flow (DSR SYN, distinct tuples), LRU free list per CPU", "shield: random-source SYN, challenge", "established (65536 flows, 32768 per CPU), shared LRU"] {
        assert!(names.contains(&want), "{want}: {names:?}");
    }
    for row in &r.rows {
        assert!(row.pps_1 > 0.0 && row.pps_n > 0.0 && row.speedup.is_finite(), "{row:?}");
        assert!(row.ns_1 > 0.0 && row.ns_n > 0.0, "{row:?}");
    }
    let text = r.render();
    assert!(text.contains("speed-up") && text.contains("CPUs [") , "{text}");
    assert_eq!(serde_json::to_value(&r).unwrap()["rows"].as_array().unwrap().len(), 7);
}

/// `weir bench --compare BINARY` against itself: every row matched by name,
/// a ratio per row with a net cost.
#[test]
fn compare_with_a_binary() {
    if !common::require_root("bench --compare") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_weir");
    let out = std::process::Command::new(bin)
        .args(["bench", "--compare", bin, "--compare-runs", "2", "--calls", "200", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"], 2);
    assert_eq!(v["only_old"].as_array().unwrap().len(), 0);
    assert_eq!(v["only_new"].as_array().unwrap().len(), 0);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 18);
    let nat = rows.iter().find(|r| r["path"] == "nat: new flow (SYN, port claimed)").unwrap();
    let ratio = nat["ratio"].as_f64().unwrap();
    assert!(ratio > 0.2 && ratio < 5.0, "the same binary twice: {nat}");
    assert!(nat["ratio_min"].as_f64().unwrap() <= ratio && ratio <= nat["ratio_max"].as_f64().unwrap(), "{nat}");
    let missing = std::process::Command::new(bin).args(["bench", "--compare", "/nonexistent/weir"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--compare /nonexistent/weir: no such file"));
}

#[test]
fn live_throughput_smoke() {
    if !common::require_root("live-frames smoke run") {
        return;
    }
    let r = weir::bench::live::run(200_000, 1).expect("live bench runs (it checks weir forwarded every frame)");
    let names: Vec<&str> = r.rows.iter().map(|x| x.program.as_str()).collect();
    assert_eq!(names, ["trivial XDP_DROP", "trivial XDP_TX reflector", "weir DSR (XDP_TX)"]);
    assert_eq!(r.rows[1].ratio_to_reflector, 1.0);
    assert!(r.rows.iter().all(|x| x.mpps_median > 0.01), "{}", r.render());
    let per = weir::bench::run(100, 1).unwrap();
    let svg = weir::bench::svg(&per, Some(&r));
    assert!(svg.starts_with("<svg") && svg.contains("weir DSR (XDP_TX)") && svg.contains("shield: proving RST"));
    // The bench's namespaces are gone.
    let ns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("wbench{}", std::process::id())));
}
