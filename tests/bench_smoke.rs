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
