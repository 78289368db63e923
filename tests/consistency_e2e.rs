//! weir as a tier, end to end in the lab (root): `weir check`, `weir status`
//! and /metrics agree on the fingerprints; `weir lookup` predicts the
//! backend of a real connection, then finds it tracked; a backend that is
//! down shows in the live fingerprint.

mod common;

use std::process::Command;

use common::lab::{Lab, WEIR};
use common::require_root;

const CONFIG: &str = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
weight = 2
"#;

fn weir_in(lab: &Lab, args: &[&str]) -> String {
    let o = Command::new("ip").args(["netns", "exec", &lab.ns("lb"), WEIR]).args(args).output().unwrap();
    assert!(o.status.success(), "weir {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `weir check`'s fingerprint of a config text.
fn check_fingerprint(lab: &Lab, cfg: &str, tag: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{tag}.toml", lab.prefix));
    std::fs::write(&path, cfg).unwrap();
    let out = weir_in(lab, &["check", path.to_str().unwrap()]);
    let fp = out.lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap_or_else(|| panic!("{out}")).to_string();
    assert_eq!(fp.len(), 16, "{fp}");
    assert!(out.trim_end().ends_with("config OK"), "{out}");
    fp
}

/// (config, live) from `weir status`'s line for veth6.
fn status_fingerprints(lab: &Lab) -> (String, String) {
    let out = weir_in(lab, &["status"]);
    let line = out.lines().find(|l| l.starts_with("veth6 ") && l.contains(&lab.ns("lb"))).unwrap_or_else(|| panic!("{out}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let at = w.iter().position(|x| *x == "fingerprint").unwrap_or_else(|| panic!("{line}"));
    assert_eq!((w[at + 1], w[at + 3]), ("config", "live"), "{line}");
    (w[at + 2].to_string(), w[at + 4].to_string())
}

#[test]
fn fingerprints_and_lookup_of_a_running_instance() {
    if !require_root("tier end-to-end test") {
        return;
    }
    let mut lab = Lab::up(&format!("wf{}", std::process::id()));
    lab.extra_args = vec!["--metrics".into()];
    lab.start_weir(CONFIG);

    let fp = check_fingerprint(&lab, CONFIG, "a");
    assert_eq!(status_fingerprints(&lab), (fp.clone(), fp.clone()), "every backend up: live = config = weir check");
    let m = lab.sh("lb", "curl -s --max-time 2 http://127.0.0.1:9477/metrics");
    let want = format!("weir_fingerprint_info{{config=\"{fp}\",live=\"{fp}\"}} 1");
    assert!(String::from_utf8_lossy(&m.stdout).lines().any(|l| l == want), "metrics lack `{want}`");

    // Before the connection: the instance and the config predict the same
    // backend (--iface left out: the only instance of the namespace).
    let tuple = ["tcp", "198.18.0.1:40123", "198.18.0.100:80"];
    let ask = |extra: &[&str]| -> serde_json::Value {
        let args: Vec<&str> = ["lookup", "--json"].iter().chain(extra).chain(tuple.iter()).copied().collect();
        serde_json::from_str(&weir_in(&lab, &args)).unwrap()
    };
    let live = ask(&[]);
    let cfg_path = lab.config.to_str().unwrap().to_string();
    let offline = ask(&["--config", &cfg_path]);
    assert_eq!(live["why"]["kind"], "slot", "{live}");
    assert_eq!((&live["backend"], &live["why"]), (&offline["backend"], &offline["why"]), "{live} / {offline}");
    assert_eq!((live["from"].as_str(), offline["from"].as_str()), (Some("instance"), Some("config")));
    let text = weir_in(&lab, &["lookup", "--iface", "veth6", tuple[0], tuple[1], tuple[2]]);
    let predicted = live["backend"].as_str().unwrap().to_string();
    assert!(
        text.starts_with(&format!("backend {predicted} of VIP web (198.18.0.100:80 tcp): Maglev slot "))
            && text.trim_end().ends_with("of 65537 (not tracked: a new flow would go there)"),
        "{text}"
    );

    // The connection from that very tuple: the predicted backend answers,
    // and the instance now finds it tracked.
    let o = lab.sh("client", "curl -s --max-time 3 --local-port 40123 http://198.18.0.100/");
    let body = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let served = format!("198.18.0.1{}:80", body.trim_start_matches('b'));
    assert_eq!(served, predicted, "backend {body} answered");
    let text = weir_in(&lab, &["lookup", tuple[0], tuple[1], tuple[2]]);
    assert_eq!(text.trim_end(), format!("backend {predicted} of VIP web (198.18.0.100:80 tcp): tracked flow (flows4 table)"));
    let other = weir_in(&lab, &["lookup", "udp", "198.18.0.1:40123", "198.18.0.100:80"]);
    assert_eq!(other.trim_end(), "not a VIP: passed to the kernel");

    // A backend that never resolves (nobody has 198.18.0.99): the config
    // changes, the live tables leave it out, exactly as if it were drained.
    let with_99 = format!("{CONFIG}[[vip.backend]]\naddress = \"198.18.0.99\"\n");
    let fp99 = check_fingerprint(&lab, &with_99, "b");
    let drained = check_fingerprint(&lab, &format!("{with_99}weight = 0\n"), "c");
    assert_ne!(fp99, fp);
    std::fs::write(&lab.config, &with_99).unwrap();
    weir_in(&lab, &["reload", "--iface", "veth6"]);
    let (config, live) = status_fingerprints(&lab);
    assert_eq!(config, fp99, "status shows the reloaded config's fingerprint");
    assert_eq!(live, drained, "live: the tables without the unresolved backend");
    assert_eq!(live, fp, "a weight-0 backend changes no table: the first config's value");
    // The tracked flow stays where it was.
    let text = weir_in(&lab, &["lookup", tuple[0], tuple[1], tuple[2]]);
    assert!(text.contains(&format!("backend {predicted} of VIP web")) && text.contains("tracked flow"), "{text}");
}
