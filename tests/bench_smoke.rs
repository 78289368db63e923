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
    assert_eq!(r.rows.len(), 11);
    assert_eq!(r.rows[0].ratio_to_trivial, 1.0, "the baseline is its own unit");
    for row in &r.rows {
        assert!(row.ns_per_packet > 0.0, "{}: no time measured", row.path);
        assert!(row.ratio_to_trivial > 0.5 && row.ratio_to_trivial < 100.0, "{}: ratio {}", row.path, row.ratio_to_trivial);
    }
    let text = r.render();
    assert!(text.contains("shield: random-source SYN, challenge"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 11);
}
