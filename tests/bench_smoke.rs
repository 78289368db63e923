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
    assert_eq!(
        names,
        [
            "trivial XDP_DROP",
            "trivial XDP_TX reflector",
            "weir DSR (XDP_TX)",
            "weir DSR, harness",
            "weir NAT forward, harness",
            "weir tunnel (IPIP), harness"
        ]
    );
    assert_eq!(r.rows[1].ratio_to_reflector, 1.0);
    assert!(r.rows.iter().all(|x| x.mpps_median > 0.01), "{}", r.render());
    let per = weir::bench::run(100, 1).unwrap();
    let svg = weir::bench::svg(&per, Some(&r));
    assert!(svg.starts_with("<svg") && svg.contains("weir DSR (XDP_TX)") && svg.contains("shield: proving RST"));
    // The bench's namespaces are gone.
    let ns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("wbench{}", std::process::id())));
}

/// Issue #14: the in-kernel harness (bpf/bench.h) gives every run of a
/// repeat = N test_run the original frame. Without it the kernel re-runs
/// the program on what the last run rewrote: of three runs of the tunnel
/// path only the first is the tunnel path. With it, after 1,000 runs the output is exactly
/// one run's, for the tunnel, NAT forward and NAT return paths, and the
/// counters say the path ran 1,000 times; a varied run i is client i.
#[test]
fn the_bench_harness_gives_every_run_the_original_frame() {
    use weir::bench::precise::{batch, Vary};
    use weir::bench::{client_of, conntrack_for, frame_v4, load_harnessed_dp, mode_config, VIP};
    use weir::dataplane::test_run;
    use weir::skel::weir_stat as ws;
    if !common::require_root("bench harness") {
        return;
    }
    let grew = |dp: &weir::dataplane::Dataplane, before: &[u64], s: ws| dp.global_counters().unwrap()[s.0 as usize] - before[s.0 as usize];
    let syn = frame_v4("10.0.0.1".parse().unwrap(), VIP, 40000, 80, true);
    let mut ack = syn.clone();
    ack[47] = 0x10;

    let tunnel = load_harnessed_dp(&mode_config("tunnel", conntrack_for(2, 2), 3)).unwrap();
    let lb = &tunnel.skel.progs.weir_lb;
    for f in [&syn, &ack] {
        assert_eq!(test_run(lb, f, 1).unwrap().0, 3);
    }
    let (a, once, _) = test_run(lb, &ack, 1).unwrap();
    assert_eq!((a, once.len()), (3, ack.len() + 20), "one IPIP header");
    let before = tunnel.global_counters().unwrap();
    let (a, _, _) = test_run(lb, &ack, 3).unwrap();
    assert_eq!(
        (a, grew(&tunnel, &before, ws::WEIR_STAT_FLOW_HIT)),
        (2, 1),
        "without the harness, runs 2 and 3 see run 1's encapsulated frame (not ours: XDP_PASS)"
    );
    let before = tunnel.global_counters().unwrap();
    let (a, out, _) = batch(&tunnel, &tunnel.skel.progs.weir_lb_bench, &ack, None, 0, 1000).unwrap();
    assert_eq!(a, 3);
    assert_eq!(common::hex_row(&out), common::hex_row(&once), "the 1,000th run's tunnel output is one run's");
    assert_eq!(grew(&tunnel, &before, ws::WEIR_STAT_FLOW_HIT), 1000);
    drop(tunnel);

    let nat = load_harnessed_dp(&mode_config("nat", conntrack_for(0, 64), 3)).unwrap();
    let lb = &nat.skel.progs.weir_lb;
    let (_, fwd_syn, _) = test_run(lb, &syn, 1).unwrap();
    let (a, fwd, _) = test_run(lb, &ack, 1).unwrap();
    assert_eq!(a, 3);
    let (a, out, _) = batch(&nat, &nat.skel.progs.weir_lb_bench, &ack, None, 0, 1000).unwrap();
    assert_eq!(a, 3);
    assert_eq!(common::hex_row(&out), common::hex_row(&fwd), "NAT forward, run 1,000");
    let backend: std::net::Ipv4Addr = [fwd_syn[30], fwd_syn[31], fwd_syn[32], fwd_syn[33]].into();
    let mut reply = frame_v4(backend, "198.18.0.10".parse().unwrap(), 80, u16::from_be_bytes([fwd_syn[34], fwd_syn[35]]), true);
    reply[47] = 0x10;
    let (a, back, _) = test_run(lb, &reply, 1).unwrap();
    assert_eq!(a, 3);
    assert_eq!(&back[30..34], &[10, 0, 0, 1], "the reply goes back to the client");
    let before = nat.global_counters().unwrap();
    let (a, out, _) = batch(&nat, &nat.skel.progs.weir_lb_bench, &reply, None, 0, 1000).unwrap();
    assert_eq!(a, 3);
    assert_eq!(common::hex_row(&out), common::hex_row(&back), "NAT return, run 1,000");
    assert_eq!(grew(&nat, &before, ws::WEIR_STAT_NAT_REPLY), 1000);
    drop(nat);

    // A new client per run: 500 SYNs, 500 new flows; the last is client 499.
    let dsr = load_harnessed_dp(&weir::bench::bench_config(conntrack_for(1024, 2), 3)).unwrap();
    let (c0, p0) = client_of(0x0a00_0000, 0);
    let before = dsr.global_counters().unwrap();
    let (a, out, _) = batch(&dsr, &dsr.skel.progs.weir_lb_bench, &frame_v4(c0, VIP, p0, 80, true), Some(Vary::CLIENTS), 0, 500).unwrap();
    assert_eq!(a, 3);
    assert_eq!(grew(&dsr, &before, ws::WEIR_STAT_FLOW_NEW), 500);
    let (c, p) = client_of(0x0a00_0000, 499);
    assert_eq!((&out[26..30], &out[34..36]), (&c.octets()[..], &p.to_be_bytes()[..]), "run 500 is client 499");
}

/// The precise rows run: every row's last run returns its action and its
/// counter grew by every run (checked inside), and the report renders.
#[test]
fn precise_rows_run_and_check_their_counters() {
    if !common::require_root("precise bench rows") {
        return;
    }
    let p = weir::bench::precise::run(300, 2).expect("every precise row takes its path on every run");
    assert_eq!((p.runs_per_batch, p.batches, p.rows.len()), (300, 2, 14));
    assert!(p.harness_ns > 0.0);
    let text = p.render();
    for row in ["weir: established (65536 flows)", "nat: return (backend -> client)", "shield: random-source SYN, challenge", "tunnel: IPIP encap"] {
        assert!(text.contains(row), "{text}");
    }
}
