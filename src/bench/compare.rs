//! `weir bench --compare OLD_BINARY`: an older weir's per-packet suite and
//! this one's, run alternately on the same machine, matched by row name.
//!
//! Each run is a process: `BINARY bench --json --repeats 1 --calls C`, whose
//! JSON has per_packet.baseline_ns and per_packet.rows[] with path and
//! net_ns (the schema since weir's first bench). Runs go old, new, new, old,
//! old, new, ... so a drift of the machine's load falls on both alike; each
//! row's ratio is new / old of the same pair of runs, and the figure is the
//! median of those ratios with their spread. When both binaries print
//! precise rows (the in-kernel loop of precise.rs, since issue #14), those
//! are compared the same way in a second table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::summarize;

/// One suite run of a binary: its baseline's ns and each row's net ns.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteRun {
    pub baseline_ns: f64,
    pub rows: Vec<(String, f64)>,
    /// precise.rows (net ns); empty from a binary without them.
    pub precise: Vec<(String, f64)>,
}

/// The rows of a `bench --json` output (older binaries' included).
pub fn parse(json: &str) -> Result<SuiteRun> {
    let v: serde_json::Value = serde_json::from_str(json).context("the bench output is not JSON")?;
    let per = &v["per_packet"];
    let rows = per["rows"].as_array().context("the bench JSON has no per_packet.rows")?;
    let net_rows = |rows: &Vec<serde_json::Value>, what: &str| {
        rows.iter()
            .map(|r| {
                let path = r["path"].as_str().with_context(|| format!("a {what} row without a path"))?;
                let net = r["net_ns"].as_f64().with_context(|| format!("{what} row \"{path}\" without net_ns"))?;
                Ok((path.to_string(), net))
            })
            .collect::<Result<Vec<_>>>()
    };
    let precise = match v["precise"]["rows"].as_array() {
        Some(p) => net_rows(p, "precise")?,
        None => Vec::new(),
    };
    Ok(SuiteRun { baseline_ns: per["baseline_ns"].as_f64().unwrap_or(0.0), rows: net_rows(rows, "per_packet")?, precise })
}

fn suite(bin: &Path, calls: usize) -> Result<SuiteRun> {
    let out = Command::new(bin)
        .args(["bench", "--json", "--repeats", "1", "--calls", &calls.to_string()])
        .output()
        .with_context(|| format!("running {} bench", bin.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} bench --calls {calls} failed ({}): {}", bin.display(), out.status, err.trim());
    }
    parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| format!("reading {} bench --json", bin.display()))
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub path: String,
    /// Median net ns over the runs.
    pub old_net_ns: f64,
    pub new_net_ns: f64,
    /// Median over the runs of new / old (None: a net cost at or below 0,
    /// no ratio); smallest and largest.
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub old: String,
    pub new: String,
    pub calls_per_path: usize,
    pub runs: usize,
    pub old_baseline_ns: f64,
    pub new_baseline_ns: f64,
    pub rows: Vec<CompareRow>,
    /// Rows one side has and the other has not.
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
    /// The precise rows of both (None: a binary without them).
    pub precise: Option<Vec<CompareRow>>,
}

/// Rows of each run, matched by name (the new runs' order): the compared
/// rows, then the names only the old and only the new runs have.
fn match_rows(old: &[&[(String, f64)]], new: &[&[(String, f64)]]) -> (Vec<CompareRow>, Vec<String>, Vec<String>) {
    let med = |v: &[f64]| summarize(v).median;
    let maps = |runs: &[&[(String, f64)]]| runs.iter().map(|r| r.iter().cloned().collect::<BTreeMap<_, _>>()).collect::<Vec<_>>();
    let (om, nm) = (maps(old), maps(new));
    let mut rows = Vec::new();
    let mut only_new = Vec::new();
    for (path, _) in new[0] {
        if !om.iter().all(|m| m.contains_key(path)) {
            only_new.push(path.clone());
            continue;
        }
        let o: Vec<f64> = om.iter().map(|m| m[path]).collect();
        let n: Vec<f64> = nm.iter().filter_map(|m| m.get(path).copied()).collect();
        let ratios: Vec<f64> = o.iter().zip(&n).filter(|(a, b)| **a > 0.0 && **b > 0.0).map(|(a, b)| b / a).collect();
        let whole = ratios.len() == o.len() && !ratios.is_empty();
        rows.push(CompareRow {
            path: path.clone(),
            old_net_ns: med(&o),
            new_net_ns: med(&n),
            ratio: whole.then(|| med(&ratios)),
            ratio_min: whole.then(|| ratios.iter().copied().fold(f64::INFINITY, f64::min)),
            ratio_max: whole.then(|| ratios.iter().copied().fold(0.0, f64::max)),
        });
    }
    let only_old = old[0].iter().map(|(p, _)| p.clone()).filter(|p| !nm.iter().all(|m| m.contains_key(p))).collect();
    (rows, only_old, only_new)
}

/// Match the runs' rows by name (the new suite's order).
pub fn combine(old_bin: &str, new_bin: &str, calls: usize, old: &[SuiteRun], new: &[SuiteRun]) -> Comparison {
    let med = |v: &[f64]| summarize(v).median;
    fn per(runs: &[SuiteRun]) -> Vec<&[(String, f64)]> {
        runs.iter().map(|r| r.rows.as_slice()).collect()
    }
    fn precise(runs: &[SuiteRun]) -> Vec<&[(String, f64)]> {
        runs.iter().map(|r| r.precise.as_slice()).collect()
    }
    let (rows, only_old, only_new) = match_rows(&per(old), &per(new));
    let both = old.iter().chain(new).all(|r| !r.precise.is_empty());
    Comparison {
        old: old_bin.into(),
        new: new_bin.into(),
        calls_per_path: calls,
        runs: old.len(),
        old_baseline_ns: med(&old.iter().map(|r| r.baseline_ns).collect::<Vec<_>>()),
        new_baseline_ns: med(&new.iter().map(|r| r.baseline_ns).collect::<Vec<_>>()),
        rows,
        only_old,
        only_new,
        precise: both.then(|| match_rows(&precise(old), &precise(new)).0),
    }
}

/// Run `old` and this binary's suites alternately, `runs` times each.
pub fn run(old: &Path, calls: usize, runs: usize) -> Result<Comparison> {
    anyhow::ensure!(old.is_file(), "--compare {}: no such file (give the path of an older weir binary)", old.display());
    anyhow::ensure!(runs >= 1, "--compare-runs {runs}: give 1 or more");
    let me = std::env::current_exe().context("finding this binary")?;
    let (mut o, mut n) = (Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            o.push(suite(old, calls)?);
            n.push(suite(&me, calls)?);
        } else {
            n.push(suite(&me, calls)?);
            o.push(suite(old, calls)?);
        }
    }
    Ok(combine(&old.display().to_string(), &me.display().to_string(), calls, &o, &n))
}

impl Comparison {
    pub fn render(&self) -> String {
        let mut s = format!(
            "old: {}\nnew: {}\nper-packet net ns (minus each run's trivial XDP_PASS), {} calls per path, {} runs each alternately, medians; baseline old {:.1} ns, new {:.1} ns\n",
            self.old, self.new, self.calls_per_path, self.runs, self.old_baseline_ns, self.new_baseline_ns
        );
        s += &format!("{:<50} {:>9} {:>9} {:>7} {:>13}\n", "path", "old net", "new net", "new/old", "min-max");
        s += &Self::table(&self.rows);
        for p in &self.only_new {
            s += &format!("{p:<50} (new only)\n");
        }
        for p in &self.only_old {
            s += &format!("{p:<50} (old only)\n");
        }
        match &self.precise {
            Some(rows) => {
                s += "\nprecise rows (in-kernel loop through bpf/bench.h's harness, net of the harness around XDP_PASS), medians of the runs\n";
                s += &format!("{:<50} {:>9} {:>9} {:>7} {:>13}\n", "path", "old net", "new net", "new/old", "min-max");
                s += &Self::table(rows);
            }
            None => s += "\n(no precise rows: the old binary does not print them)\n",
        }
        s
    }

    fn table(rows: &[CompareRow]) -> String {
        let mut s = String::new();
        for r in rows {
            let ratio = match (r.ratio, r.ratio_min, r.ratio_max) {
                (Some(m), Some(lo), Some(hi)) => format!("{m:>6.2}x {lo:>6.2}-{hi:.2}x"),
                _ => format!("{:>7} {:>13}", "-", "-"),
            };
            s += &format!("{:<50} {:>9.1} {:>9.1} {ratio}\n", r.path, r.old_net_ns, r.new_net_ns);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of weir's first bench JSON (commit aed2fba): extra fields, no cpu_scaling.
    const OLD: &str = r#"{"per_packet":{"calls_per_path":100,"repeats":1,"ratio_spread":[],"baseline":"trivial XDP_PASS","baseline_ns":100.0,
        "rows":[{"path":"trivial XDP_PASS (baseline)","expected_action":"PASS","ns_per_packet":100.0,"median_ns":100.0,"net_ns":0.0,"ratio_to_trivial":1.0},
                {"path":"weir: new flow (SYN, distinct tuples)","expected_action":"TX","ns_per_packet":700.0,"median_ns":690.0,"net_ns":600.0,"ratio_to_trivial":7.0},
                {"path":"gone","expected_action":"TX","ns_per_packet":1.0,"median_ns":1.0,"net_ns":1.0,"ratio_to_trivial":1.0}]},
        "throughput":null,"control_plane":[]}"#;

    #[test]
    fn older_json_is_read_and_rows_matched_by_name() {
        let old = parse(OLD).unwrap();
        assert_eq!(old.baseline_ns, 100.0);
        assert_eq!(old.rows[1], ("weir: new flow (SYN, distinct tuples)".to_string(), 600.0));
        let new = |x: f64| SuiteRun {
            baseline_ns: 90.0,
            rows: vec![("trivial XDP_PASS (baseline)".into(), 0.0), ("weir: new flow (SYN, distinct tuples)".into(), x), ("fresh".into(), 5.0)],
            precise: vec![("weir: new flow (SYN, distinct tuples)".into(), x / 2.0)],
        };
        let c = combine("o", "n", 100, &[old.clone(), old.clone(), old], &[new(300.0), new(900.0), new(600.0)]);
        assert_eq!(c.only_new, ["fresh"]);
        assert_eq!(c.only_old, ["gone"]);
        assert_eq!(c.rows.len(), 2);
        assert_eq!(c.rows[0].ratio, None, "no ratio of a zero net cost");
        let r = &c.rows[1];
        assert_eq!((r.old_net_ns, r.new_net_ns, r.ratio, r.ratio_min, r.ratio_max), (600.0, 600.0, Some(1.0), Some(0.5), Some(1.5)));
        let text = c.render();
        assert!(text.contains("  1.00x   0.50-1.50x"), "{text}");
        assert!(text.contains("fresh") && text.contains("(new only)") && text.contains("(old only)"), "{text}");
        assert!(c.precise.is_none() && text.contains("no precise rows"), "the old JSON has none: {text}");
    }

    /// Both binaries with precise rows: a second table, matched by name.
    #[test]
    fn precise_rows_are_compared_when_both_have_them() {
        let run = |net: f64| {
            let j = OLD.replace(
                r#""throughput":null"#,
                &format!(r#""precise":{{"runs_per_batch":100,"batches":5,"harness_ns":60.0,"rows":[{{"path":"weir: established flow (1 flow)","expected_action":"TX","ns_per_run":1.0,"net_ns":{net},"net_min":1.0,"net_max":1.0}}]}},"throughput":null"#),
            );
            parse(&j).unwrap()
        };
        assert_eq!(run(80.0).precise, [("weir: established flow (1 flow)".to_string(), 80.0)]);
        let c = combine("o", "n", 100, &[run(100.0), run(100.0)], &[run(50.0), run(70.0)]);
        let p = c.precise.clone().expect("both have precise rows");
        assert_eq!((p.len(), p[0].ratio, p[0].ratio_min, p[0].ratio_max), (1, Some(0.6), Some(0.5), Some(0.7)));
        assert!(c.render().contains("precise rows"), "{}", c.render());
    }

    #[test]
    fn a_broken_output_says_what_is_missing() {
        assert!(parse("{}").unwrap_err().to_string().contains("per_packet.rows"));
        assert!(parse("not json").is_err());
    }
}
