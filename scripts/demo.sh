#!/usr/bin/env bash
# The built-in lab, end to end: namespaces + backends, weir in front of them,
# a few hundred HTTP requests through the VIP, where they went, weir's own
# counters, and a clean teardown on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-wdemo}"
REQUESTS="${REQUESTS:-300}"
WEIR="$(pwd)/target/release/weir"
CONFIG="${CONFIG:-lab/weir-lab.toml}"
LOG="$(mktemp -t weir-demo.XXXXXX)"
WEIR_PID=""

cleanup() {
	if [[ -n "$WEIR_PID" ]] && kill -0 "$WEIR_PID" 2>/dev/null; then
		kill -TERM "$WEIR_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$WEIR_PID" 2>/dev/null || break; sleep 0.1; done
	fi
	PREFIX="$PREFIX" lab/lab.sh down >/dev/null 2>&1 || true
	rm -f "$LOG"
}
trap cleanup EXIT INT TERM

[[ -x "$WEIR" ]] || { echo "demo: build weir first (make build)"; exit 1; }
echo "== lab: namespaces ${PREFIX}-{sw,client,lb,b1,b2,b3} on 198.18.0.0/24"
PREFIX="$PREFIX" WEIR="$WEIR" lab/lab.sh up

echo "== weir check $CONFIG"
"$WEIR" check "$CONFIG"

echo "== weir run in ${PREFIX}-lb on veth6"
ip netns exec "${PREFIX}-lb" "$WEIR" run --iface veth6 --config "$CONFIG" --interval 0 >"$LOG" 2>&1 &
WEIR_PID=$!
for _ in $(seq 100); do
	ip netns exec "${PREFIX}-lb" "$WEIR" stats --iface veth6 --once >/dev/null 2>&1 && break
	kill -0 "$WEIR_PID" 2>/dev/null || { cat "$LOG"; echo "demo: weir exited"; exit 1; }
	sleep 0.1
done
cat "$LOG"

echo "== $REQUESTS requests: client 198.18.0.1 -> VIP 198.18.0.100:80"
ip netns exec "${PREFIX}-client" bash -c "
	for i in \$(seq $REQUESTS); do curl -s --max-time 2 http://198.18.0.100/ || echo FAILED; done" |
	sort | uniq -c | awk '{printf "  %-8s %4d requests\n", $2, $1}'

echo "== $REQUESTS requests: client 198.18.0.1 -> VIP 198.18.0.101:80 (full NAT)"
ip netns exec "${PREFIX}-client" bash -c "
	for i in \$(seq $REQUESTS); do curl -s --max-time 2 http://198.18.0.101/ || echo FAILED; done" |
	sort | uniq -c | awk '{printf "  %-8s %4d requests\n", $2, $1}'
echo "   client addresses in the backends' logs (DSR keeps 198.18.0.1; NAT shows weir's 198.18.0.10):"
cat /run/weir-lab/"$PREFIX"/b*.log 2>/dev/null | awk '/GET/ {print $1}' | sort | uniq -c | awk '{printf "  %-14s %4d requests\n", $2, $1}'

echo "== weir stats"
ip netns exec "${PREFIX}-lb" "$WEIR" stats --iface veth6 --once

echo "== teardown"
kill -TERM "$WEIR_PID"
wait "$WEIR_PID" || true
cat "$LOG" | tail -1
WEIR_PID=""
