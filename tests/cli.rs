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
    for sub in ["weir\\-run", "weir\\-shield", "weir\\-reload", "weir\\-stats", "weir\\-bench", "weir\\-check"] {
        assert!(out.contains(sub), "man page lacks {sub}");
    }
}
