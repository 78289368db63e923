#!/usr/bin/env bash
# The tier lab, end to end (lab/tier.sh): a BGP router spreading a client's
# connections over NODES weir nodes with ECMP; curls until every node has
# carried one (which node, which backend); then one node's weir is killed
# with SIGKILL, its announcement disappears, and the router's multipath route
# loses that next hop (timed with `ip -ts monitor route`); new curls still
# work. Torn down on every exit path.
#
#   env: NODES (default 3), WEIR (default target/release/weir),
#        FAIL_NODE (default 2): the node whose weir is killed
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-wtd$$}"
NODES="${NODES:-3}"
FAIL_NODE="${FAIL_NODE:-2}"
WEIR="${WEIR:-$(pwd)/target/release/weir}"
CONFIG="${CONFIG:-$(pwd)/lab/tier.toml}"
STATE="/run/weir-lab/$PREFIX"
RT="${PREFIX}-rt"
CL="${PREFIX}-cl"
MON_PID=""
MON_LOG=""
VIPS=(198.18.1.1 198.18.1.2 198.18.1.3 2001:db8:1::1 2001:db8:1::2 2001:db8:1::3)
KIND=(dsr tunnel nat dsr tunnel nat)

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n "$MON_PID" ]] && kill -0 "$MON_PID" 2>/dev/null; then
		kill -TERM "$MON_PID" 2>/dev/null || true
		wait "$MON_PID" 2>/dev/null || true
	fi
	[[ -n "$MON_LOG" ]] && rm -f "$MON_LOG"
	[[ -n "${SNAP:-}" ]] && rm -rf "$SNAP"
	echo "== teardown"
	PREFIX="$PREFIX" lab/tier.sh down || true
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x "$WEIR" ]] || { echo "tier-demo: build weir first (make build)"; exit 1; }
[[ "$NODES" =~ ^[2-8]$ ]] || { echo "tier-demo: NODES must be 2..8"; exit 1; }
[[ "$FAIL_NODE" =~ ^[1-8]$ ]] && ((FAIL_NODE <= NODES)) || { echo "tier-demo: FAIL_NODE must be 1..$NODES"; exit 1; }

ms_since() { # ms_since T0 [T1]: milliseconds between two `date +%s.%N`
	python3 -c 'import sys; print(f"{(float(sys.argv[2]) - float(sys.argv[1])) * 1000:.1f}")' "$1" "${2:-$(date +%s.%N)}"
}

echo "== tier lab '$PREFIX': client, BGP router, $NODES weir nodes, 3 backends"
PREFIX="$PREFIX" WEIR="$WEIR" NODES="$NODES" CONFIG="$CONFIG" lab/tier.sh up
echo "   (VIPs announced by each node's weir itself: tier.announce)"

cat <<-EOF

	== topology
	  $CL 10.60.0.2 fd60::2
	      |
	  $RT 10.60.0.1  BIRD AS 65000, ECMP over the nodes (hash: L3+L4 headers)
	EOF
for ((k = 1; k <= NODES; k++)); do
	printf '      +-- n%d 10.61.%d.0/31 -- u0 %s-n%d 10.61.%d.1 (weir, BIRD AS 65001) d0 10.63.0.1%d --+\n' \
		"$k" "$k" "$PREFIX" "$k" "$k" "$k"
done
cat <<-EOF
	      +-- s0 10.62.0.1 ------------------- bridge $PREFIX-bk ------------------------------+
	                                            |
	                         b1 b2 b3: 10.62.0.2J (routed) + 10.63.0.2J (L2, DSR), HTTP :80
	  VIPs :80  dsr 198.18.1.1 / 2001:db8:1::1   tunnel 198.18.1.2 / 2001:db8:1::2   nat 198.18.1.3 / 2001:db8:1::3
	EOF

echo
echo "== router: BGP sessions"
birdc -s "$STATE/rt-bird.ctl" show protocols | sed 's/^/  /'
echo "== router: learned ECMP routes to the VIPs"
ip -n "$RT" route show root 198.18.1.0/24 | sed 's/^/  /'
ip -n "$RT" -6 route show root 2001:db8:1::/64 | sed 's/^/  /'

# new_flows per node (sum over its VIPs), from each node's weir, read in
# parallel; "x" for a node whose weir does not answer
SNAP="$(mktemp -d -t weir-tier-demo.XXXXXX)"
flows() {
	local k
	for ((k = 1; k <= NODES; k++)); do
		ip netns exec "${PREFIX}-n$k" "$WEIR" stats --iface u0 --once --json >"$SNAP/$k" 2>/dev/null &
	done
	wait
	python3 - "$SNAP" "$NODES" <<-'PY'
		import json, sys
		out = []
		for k in range(1, int(sys.argv[2]) + 1):
		    try:
		        with open(f"{sys.argv[1]}/{k}") as f:
		            out.append(str(sum(v["new_flows"] for v in json.load(f)["vips"])))
		    except Exception:
		        out.append("x")
		print(" ".join(out))
	PY
}
# which node's counter moved between two `flows` outputs
moved() {
	python3 -c 'import sys; b=sys.argv[1].split(); a=sys.argv[2].split(); print(",".join(str(i+1) for i in range(len(a)) if a[i] != b[i]) or "none")' "$1" "$2"
}
SPORT=$((20000 + RANDOM % 10000))
# curl_from VIP: one request from the next source port (SPORT); sets NODE
# (whose weir counted a new flow) and BODY (the backend's answer)
curl_from() {
	local v="$1" url before after
	SPORT=$((SPORT + 1))
	if [[ "$v" == *:* ]]; then url="http://[$v]/"; else url="http://$v/"; fi
	before="$(flows)"
	BODY="$(ip netns exec "$CL" curl -gs --max-time 3 --local-port "$SPORT" "$url" || echo FAILED)"
	after="$(flows)"
	NODE="$(moved "$before" "$after")"
}

echo
echo "== curls from the client, a new source port each, until every node has carried one"
printf '  %-16s %-7s %6s  %-6s %s\n' VIP mode sport node backend
FAILED=0
for i in "${!VIPS[@]}"; do
	v="${VIPS[$i]}"
	declare -A seen=()
	for ((try = 0; try < 40 && ${#seen[@]} < NODES; try++)); do
		curl_from "$v"
		printf '  %-16s %-7s %6s  %-6s %s\n' "$v" "${KIND[$i]}" "$SPORT" "n$NODE" "$BODY"
		[[ "$BODY" == b? ]] || FAILED=$((FAILED + 1))
		[[ "$NODE" =~ ^[0-9]+$ ]] && seen[$NODE]=1
	done
	((${#seen[@]} == NODES)) || echo "  !! $v: only ${#seen[@]} of $NODES nodes carried a connection in $try tries"
	unset seen
done
echo "  per-node flows (weir stats, all VIPs): $(flows | paste -sd' ' | awk '{for (i = 1; i <= NF; i++) printf "n%d=%s ", i, $i}')"

echo
echo "== failing node $FAIL_NODE: kill -9 its weir"
WPID="$(cat "$STATE/n$FAIL_NODE-weir.pid")"
MON_LOG="$(mktemp -t weir-tier-mon.XXXXXX)"
ip -n "$RT" -ts monitor route >"$MON_LOG" 2>&1 &
MON_PID=$!
sleep 0.3 # the monitor subscribes
T0="$(date +%s.%N)"
kill -KILL "$WPID"
# poll until every VIP route has NODES-1 next hops
hops() {
	local out
	out="$(ip -n "$RT" "$1" route show "$2")"
	[[ -n "$out" ]] || { echo 0; return; }
	grep -q nexthop <<<"$out" && grep -c nexthop <<<"$out" || echo 1
}
ok=0
for ((i = 0; i < 1000; i++)); do
	ok=1
	for v in "${VIPS[@]}"; do
		fam=-4
		[[ "$v" == *:* ]] && fam=-6
		(($(hops "$fam" "$v") == NODES - 1)) || { ok=0; break; }
	done
	((ok)) && break
	sleep 0.01
done
T1="$(date +%s.%N)"
sleep 0.2
kill -TERM "$MON_PID" 2>/dev/null || true
wait "$MON_PID" 2>/dev/null || true
MON_PID=""
if ((ok)); then
	echo "  every VIP route has $((NODES - 1)) next hops (seen by polling, $(ms_since "$T0" "$T1") ms after the kill)"
else
	echo "  !! the routes still do not have $((NODES - 1)) next hops after 10 s"
fi
# route events for the VIPs in the monitor: "[2025-01-01T12:00:00.123456] 198.18.1.1 ..."
EVENTS="$(grep -E '^\[[^]]+\] (Deleted )?(198\.18\.1\.|2001:db8:1::)' "$MON_LOG" || true)"
if [[ -n "$EVENTS" ]]; then
	ev_ms() { ms_since "$T0" "$(date -d "$(sed -E 's/^\[([^]]+)\].*/\1/' <<<"$1")" +%s.%N)"; }
	echo "  router (ip -ts monitor route): first VIP route changed $(ev_ms "$(head -n1 <<<"$EVENTS")") ms," \
		"last ($(wc -l <<<"$EVENTS") events) $(ev_ms "$(tail -n1 <<<"$EVENTS")") ms after the kill"
fi
echo "== router: routes to the VIPs now"
ip -n "$RT" route show root 198.18.1.0/24 | sed 's/^/  /'
ip -n "$RT" -6 route show root 2001:db8:1::/64 | sed 's/^/  /'
echo "== router: BGP sessions (node $FAIL_NODE's BIRD still runs; only its routes are gone)"
birdc -s "$STATE/rt-bird.ctl" show protocols | sed 's/^/  /'

echo
echo "== new curls after the failure (5 per VIP)"
printf '  %-16s %-7s %6s  %-6s %s\n' VIP mode sport node backend
for i in "${!VIPS[@]}"; do
	for ((try = 0; try < 5; try++)); do
		curl_from "${VIPS[$i]}"
		printf '  %-16s %-7s %6s  %-6s %s\n' "${VIPS[$i]}" "${KIND[$i]}" "$SPORT" "n$NODE" "$BODY"
		[[ "$BODY" == b? ]] || FAILED=$((FAILED + 1))
		[[ "$NODE" != "$FAIL_NODE" ]] || FAILED=$((FAILED + 1))
	done
done
echo
if ((FAILED)); then
	echo "== $FAILED request(s) failed"
	exit 1
fi
echo "== every request answered"
