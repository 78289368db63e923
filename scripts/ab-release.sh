#!/bin/bash
# Usage (root): scripts/ab-release.sh [RUNS] [CALLS]
# The same-run A/B of issue 14: the release weir (aed2fba) with the bench's
# in-kernel harness added (scripts/aed2fba-harness.patch: bpf/bench.h, the
# precise rows and a weir_lb_bench program; its production program weir_lb
# is left byte for byte as released) against this checkout's build, run
# alternately RUNS times (default 9), CALLS per path (default 20000).
# Builds the baseline in a throwaway worktree, removed on exit.
set -eu
RUNS=${1:-9}; CALLS=${2:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WT=$(mktemp -d /tmp/weir-aed2fba.XXXXXX)
cleanup() { git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null || rm -rf "$WT"; }
trap cleanup EXIT
git -C "$ROOT" worktree add --detach "$WT" aed2fba >/dev/null
git -C "$WT" apply "$ROOT/scripts/aed2fba-harness.patch"
# Reuse this checkout's compiled dependencies when there are any.
[ -d "$ROOT/target" ] && [ ! -e "$WT/target" ] && cp -a "$ROOT/target" "$WT/target"
(cd "$WT" && cargo build --release --quiet)
(cd "$ROOT" && cargo build --release --quiet)
cp "$WT/target/release/weir" "$WT/weir-aed2fba"
"$ROOT/target/release/weir" bench --compare "$WT/weir-aed2fba" --calls "$CALLS" --compare-runs "$RUNS"
