//! Tallies of a run and the table printed at its end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::{Inv, Outcome};
use crate::common::{action_name, hex_row};
use crate::mutate::Mutation;
use crate::seeds::Seed;

/// Examples kept per (invariant, mutation class).
const EXAMPLES: usize = 3;
/// Bytes of each frame shown in an example.
const SHOWN: usize = 160;

pub struct Example {
    pub frame_no: u64,
    pub seed: Seed,
    pub action: u32,
    pub outcome: Outcome,
    pub detail: String,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
}

#[derive(Default)]
pub struct Report {
    pub frames: u64,
    by_class: BTreeMap<Mutation, BTreeMap<u32, u64>>,
    by_seed: BTreeMap<Seed, BTreeMap<u32, u64>>,
    outcomes: BTreeMap<Outcome, u64>,
    violations: BTreeMap<(Inv, Mutation), (u64, Vec<Example>)>,
    by_outcome: BTreeMap<(Inv, Outcome), u64>,
}

fn hex(b: &[u8]) -> String {
    let shown = &b[..b.len().min(SHOWN)];
    let more = if b.len() > SHOWN { format!(" .. ({} bytes)", b.len()) } else { format!(" ({} bytes)", b.len()) };
    hex_row(shown) + &more
}

impl Report {
    pub fn count(&mut self, seed: Seed, class: Mutation, action: u32, outcome: Outcome) {
        self.frames += 1;
        *self.by_class.entry(class).or_default().entry(action).or_default() += 1;
        *self.by_seed.entry(seed).or_default().entry(action).or_default() += 1;
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    pub fn violation(&mut self, inv: Inv, class: Mutation, outcome: Outcome, ex: impl FnOnce() -> Example) {
        *self.by_outcome.entry((inv, outcome)).or_default() += 1;
        let (n, examples) = self.violations.entry((inv, class)).or_default();
        *n += 1;
        if examples.len() < EXAMPLES {
            examples.push(ex());
        }
    }

    pub fn violation_count(&self) -> u64 {
        self.violations.values().map(|(n, _)| n).sum()
    }

    fn action_table<K: Copy + std::fmt::Debug>(out: &mut String, title: &str, rows: &BTreeMap<K, BTreeMap<u32, u64>>) {
        let actions = [0u32, 1, 2, 3, 4];
        let _ = write!(out, "\n{title:<14}");
        for a in actions {
            let _ = write!(out, "{:>13}", action_name(a));
        }
        let _ = writeln!(out, "{:>10}", "total");
        for (k, per) in rows {
            let _ = write!(out, "{:<14}", format!("{k:?}"));
            for a in actions {
                let _ = write!(out, "{:>13}", per.get(&a).copied().unwrap_or(0));
            }
            let _ = writeln!(out, "{:>10}", per.values().sum::<u64>());
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        Self::action_table(&mut out, "mutation", &self.by_class);
        Self::action_table(&mut out, "seed", &self.by_seed);
        let _ = writeln!(out, "\noutcomes (what the outputs were, as the fuzzer reads them):");
        for (o, n) in &self.outcomes {
            let _ = writeln!(out, "  {:<14}{n:>10}", format!("{o:?}"));
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "\nviolations: none");
            return out;
        }
        let _ = writeln!(out, "\nviolations ({} in all), per invariant and mutation class:", self.violation_count());
        for ((inv, class), (n, _)) in &self.violations {
            let _ = writeln!(out, "  {:<22}{:<13}{n:>9}", inv.to_string(), format!("{class:?}"));
        }
        let _ = writeln!(out, "\nviolations per invariant and outcome (what the output was):");
        for ((inv, outcome), n) in &self.by_outcome {
            let _ = writeln!(out, "  {:<22}{:<13}{n:>9}", inv.to_string(), format!("{outcome:?}"));
        }
        let _ = writeln!(out, "\nexamples:");
        for ((inv, class), (_, examples)) in &self.violations {
            for e in examples {
                let _ = writeln!(
                    out,
                    "- {inv} / {class:?}: frame {} (seed {:?}), {} {:?}: {}\n    in:  {}\n    out: {}",
                    e.frame_no,
                    e.seed,
                    action_name(e.action),
                    e.outcome,
                    e.detail,
                    hex(&e.input),
                    hex(&e.output)
                );
            }
        }
        out
    }
}
