#!/usr/bin/env bash
# weir tier lab: a client behind a BGP router that spreads VIP traffic over
# NODES weir nodes with ECMP; the nodes reach three HTTP backends through the
# router (NAT, tunnel) or over a shared L2 segment (DSR). All in network
# namespaces; see "Tier lab" in lab/README-lab.md.
#
#   usage: lab/tier.sh up|down|status|pin K|unpin
#   env:   PREFIX  namespace prefix (default: wtier) -> ${PREFIX}-cl, -rt, -bk,
#                  -n1..-nNODES, -b1..-b3
#          WEIR    path to the weir binary (required for `up`): the XDP_PASS
#                  stubs, `weir decap` in every backend, `weir run` on every node
#          NODES   number of weir nodes, 2..8 (default 3; `up` only, stored in
#                  the state directory)
#          CONFIG  weir config for every node (default: lab/tier.toml next to
#                  this script). A tier needs the same config on every node.
#                  Its VIPs must lie in 198.18.1.0/24 or 2001:db8:1::/64 (all
#                  the router accepts); the backends' lo has the DSR and
#                  tunnel VIPs of lab/tier.toml. It must turn announcing on
#                  ([tier] announce = true: weir then holds a TUN device,
#                  tier.device, default weir-u0, with each VIP it serves,
#                  which the node's BIRD announces); `up` refuses it otherwise.
#          D0_PEER (at `up` only) stub (default) | gro | none: what the
#                  bridge-side end of each node's d0 gets, so that DSR frames
#                  weir redirects out of d0 arrive (lab experiments only).
#   state: /run/weir-lab/${PREFIX} (pid files, logs, BIRD configs and sockets,
#          web roots, nodes, pinned)
#
# Safety: nothing is ever created in, attached to or sent through the root
# network namespace. Every veth is created inside a lab namespace with its
# peer placed directly into another (`ip -n A link add X type veth peer name Y
# netns B`). Only processes whose PIDs this script recorded are killed.
set -Eeuo pipefail

PREFIX="${PREFIX:-wtier}"
WEIR="${WEIR:-}"
# read by `up` only (down/status/pin read $STATE/nodes)
NODES_ENV="${NODES:-}"
D0_PEER_ENV="${D0_PEER:-}"
NODES=3
MAX_NODES=8
D0_PEER=stub
BACKENDS=(b1 b2 b3)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="${CONFIG:-$HERE/tier.toml}"

# shared helpers: ns_exists, kill_recorded
# shellcheck source=lab/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

die() { echo "tier.sh: error: $*" >&2; exit 1; }
log() { echo "tier.sh: $*"; }

# PREFIX ends up in paths that are rm -rf'd: keep it short and boring.
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$ ]] ||
	die "PREFIX must be 1-20 characters of [A-Za-z0-9_-] (got '$PREFIX')"

STATE_ROOT=/run/weir-lab
STATE="$STATE_ROOT/$PREFIX"

ns() { echo "${PREFIX}-$1"; }
RT="$(ns rt)"
BK="$(ns bk)"
CL="$(ns cl)"

# ------------------------------------------------------------- addresses ---
CL4=10.60.0.2
CL6=fd60::2
RTCL4=10.60.0.1
RTCL6=fd60::1
RTBR4=10.62.0.1 # router's port on the backend bridge (routed subnet)
RTBR6=fd62::1
RT_AS=65000
NODE_AS=65001 # every node: one neighbour AS, so BGP paths compare equal
VIP_NET4=198.18.1.0/24
VIP_NET6=2001:db8:1::/64
# the DSR and tunnel VIPs of lab/tier.toml go on the backends' lo; the VIPs
# announced and waited for are read from CONFIG (config_vips)
BK_VIPS4=(198.18.1.1 198.18.1.2)
BK_VIPS6=(2001:db8:1::1 2001:db8:1::2)
PIN_TABLE=160
PIN_PREF=160

# node K: uplink u0 10.61.K.1/31 (router 10.61.K.0), fd61:K::1/127 (router
# fd61:K::); d0 on the backend bridge 10.63.0.1K/24, fd63::1K/64
node_up4() { echo "10.61.$1.1"; }
node_up6() { echo "fd61:$1::1"; }
rt_up4() { echo "10.61.$1.0"; }
rt_up6() { echo "fd61:$1::"; }
node_d4() { echo "10.63.0.1$1"; }
node_d6() { echo "fd63::1$1"; }
# backend bJ: 10.62.0.2J / fd62::2J (routed) and 10.63.0.2J / fd63::2J (L2)
bk_idx() { echo "${1#b}"; }

# ---------------------------------------------------------------- checks ---
need_root() {
	[[ "$(id -u)" -eq 0 ]] || die "must run as root (network namespaces, veths, XDP)"
}

need_tools() {
	local missing=() t pkg
	for t in ip:iproute2 ss:iproute2 ethtool:ethtool python3:python3 bird:bird2 birdc:bird2 curl:curl; do
		pkg="${t#*:}"
		t="${t%%:*}"
		command -v "$t" >/dev/null 2>&1 || missing+=("$t (apt-get install $pkg)")
	done
	if ((${#missing[@]})); then
		die "missing tools: ${missing[*]}"
	fi
}


# every namespace this prefix may have, whatever NODES was
all_ns() {
	local k j
	echo "$CL"
	for ((k = 1; k <= MAX_NODES; k++)); do echo "$(ns "n$k")"; done
	for j in "${BACKENDS[@]}"; do echo "$(ns "$j")"; done
	echo "$RT"
	echo "$BK"
}

lab_exists() {
	[[ -f "$STATE/tier" ]] && return 0
	local n
	for n in $(all_ns); do
		ns_exists "$n" && return 0
	done
	return 1
}

load_nodes() {
	local n
	n="$(cat "$STATE/nodes" 2>/dev/null || true)"
	[[ "$n" =~ ^[2-8]$ ]] && NODES="$n"
	return 0
}


# weir's control socket is /run/weir/IFACE.NETNS-INODE.sock; a weir killed
# with SIGKILL leaves it behind. Remove the ones of the nodes this lab
# started (inode recorded at start), once no process of ours is left.
remove_stale_sockets() {
	local f ino
	for f in "$STATE"/n*-weir.ino; do
		[[ -f "$f" ]] || continue
		ino="$(tr -dc '0-9' <"$f")"
		rm -f "$f"
		[[ -n "$ino" ]] || continue
		rm -f "/run/weir/u0.$ino.sock"
	done
}

do_down() {
	local k j n f pids ours=1
	# a state directory without the marker is not ours (lab.sh's, same PREFIX)
	if [[ -d "$STATE" && ! -f "$STATE/tier" ]]; then
		log "warning: $STATE is not a tier lab's; leaving it (and its processes) alone"
		ours=0
	fi
	if ((ours)) && [[ -d "$STATE" ]]; then
		for ((k = 1; k <= MAX_NODES; k++)); do
			# stop the node's weir (it detaches itself on SIGTERM; its
			# device goes with it, which withdraws its VIPs), then BIRD
			kill_recorded "$STATE/n$k-weir.pid" "run --iface u0"
			kill_recorded "$STATE/n$k-bird.pid" "bird"
		done
		kill_recorded "$STATE/rt-bird.pid" "bird"
		for j in "${BACKENDS[@]}"; do
			kill_recorded "$STATE/$j.pid" "http.server"
			kill_recorded "$STATE/$j-decap.pid" "decap"
		done
		# xdp-stub normally attaches and exits; one that stayed was recorded
		for f in "$STATE"/stub-*.pid; do
			[[ -f "$f" ]] && kill_recorded "$f" "xdp-stub"
		done
		remove_stale_sockets
	fi
	for n in $(all_ns); do
		ns_exists "$n" || continue
		pids="$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ' || true)"
		if [[ -n "${pids// /}" ]]; then
			log "warning: unrecorded processes still in $n (not killed): $pids"
		fi
		ip netns del "$n" 2>/dev/null || log "warning: could not delete namespace $n"
	done
	if ((ours)) && [[ -d "$STATE" ]]; then
		rm -rf -- "$STATE"
	fi
	rmdir "$STATE_ROOT" 2>/dev/null || true
	return 0
}

# -------------------------------------------------------------------- up ---
nsx() { # nsx NS cmd...: run cmd inside namespace NS
	local n="$1"
	shift
	ip netns exec "$n" "$@"
}

sysctl_ns() { # sysctl_ns NS key=value...
	local n="$1" kv
	shift
	for kv in "$@"; do
		nsx "$n" sysctl -qw "$kv" >/dev/null
	done
}

new_ns() { # new_ns NS: empty namespace, lo up, no DAD
	ip netns add "$1"
	ip -n "$1" link set lo up
	sysctl_ns "$1" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
		net.ipv6.conf.all.dad_transmits=0 net.ipv6.conf.default.dad_transmits=0
}

# link NS_A IF_A NS_B IF_B: a veth created in NS_A with its peer placed
# straight into NS_B (neither end ever exists in the root namespace); both
# ends up, tx checksum offload off on both (veths otherwise hand over partial
# checksums, which break once an XDP program rewrites the packet)
link() {
	local a="$1" ia="$2" b="$3" ib="$4"
	ip -n "$a" link add "$ia" type veth peer name "$ib" netns "$b"
	ip -n "$a" link set "$ia" up
	ip -n "$b" link set "$ib" up
	nsx "$a" ethtool -K "$ia" tx off >/dev/null
	nsx "$b" ethtool -K "$ib" tx off >/dev/null
}

build_switch() {
	new_ns "$BK"
	sysctl_ns "$BK" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	ip -n "$BK" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	ip -n "$BK" link set br0 up
}

build_router() {
	new_ns "$RT"
	# forwarding; no reverse-path filtering (DSR and tunnel backends answer
	# from the VIP, which the router routes towards the nodes, through s0);
	# ECMP on a hash of the headers (see README-lab.md: with policy 1 on
	# veths the hash is the socket's, which TCP re-draws on retransmission)
	sysctl_ns "$RT" net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
		net.ipv6.conf.default.forwarding=1 \
		net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
		net.ipv4.fib_multipath_hash_policy=3 net.ipv4.fib_multipath_hash_fields=0x37 \
		net.ipv6.fib_multipath_hash_policy=3 net.ipv6.fib_multipath_hash_fields=0x37
	# router's port on the backend bridge
	link "$BK" p-rt "$RT" s0
	ip -n "$BK" link set p-rt master br0
	ip -n "$RT" addr add "$RTBR4/24" dev s0
	ip -n "$RT" -6 addr add "$RTBR6/64" dev s0 nodad
}

build_client() {
	new_ns "$CL"
	link "$RT" cl0 "$CL" c0
	ip -n "$RT" addr add "$RTCL4/24" dev cl0
	ip -n "$RT" -6 addr add "$RTCL6/64" dev cl0 nodad
	ip -n "$CL" addr add "$CL4/24" dev c0
	ip -n "$CL" -6 addr add "$CL6/64" dev c0 nodad
	ip -n "$CL" route add default via "$RTCL4"
	ip -n "$CL" -6 route add default via "$RTCL6"
}

build_backend() {
	local b="$1" n i v
	n="$(ns "$b")"
	i="$(bk_idx "$b")"
	new_ns "$n"
	# rp_filter is max(all, iface): clear default before b0 exists
	sysctl_ns "$n" net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	link "$BK" "p-$b" "$n" b0
	ip -n "$BK" link set "p-$b" master br0
	ip -n "$n" addr add "10.62.0.2$i/24" dev b0
	ip -n "$n" addr add "10.63.0.2$i/24" dev b0
	ip -n "$n" -6 addr add "fd62::2$i/64" dev b0 nodad
	ip -n "$n" -6 addr add "fd63::2$i/64" dev b0 nodad
	ip -n "$n" route add default via "$RTBR4"
	ip -n "$n" -6 route add default via "$RTBR6"
	# DSR and tunnel VIPs on lo, never answered for on b0
	for v in "${BK_VIPS4[@]}"; do ip -n "$n" addr add "$v/32" dev lo; done
	for v in "${BK_VIPS6[@]}"; do ip -n "$n" -6 addr add "$v/128" dev lo nodad; done
	sysctl_ns "$n" net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
		net.ipv4.conf.b0.arp_ignore=1 net.ipv4.conf.b0.arp_announce=2 net.ipv4.conf.b0.rp_filter=0
}

build_node() {
	local k="$1" n
	n="$(ns "n$k")"
	new_ns "$n"
	# uplink: node's u0 <-> router's nK
	link "$RT" "n$k" "$n" u0
	ip -n "$RT" addr add "$(rt_up4 "$k")/31" dev "n$k"
	ip -n "$RT" -6 addr add "$(rt_up6 "$k")/127" dev "n$k" nodad
	ip -n "$n" addr add "$(node_up4 "$k")/31" dev u0
	ip -n "$n" -6 addr add "$(node_up6 "$k")/127" dev u0 nodad
	# d0 onto the backend bridge (DSR over L2 only)
	link "$BK" "p-n$k" "$n" d0
	ip -n "$BK" link set "p-n$k" master br0
	ip -n "$n" addr add "$(node_d4 "$k")/24" dev d0
	ip -n "$n" -6 addr add "$(node_d6 "$k")/64" dev d0 nodad
	# the routed backend subnet through the router, and the other nodes'
	# uplinks (the flow sync between nodes, tier.peers)
	ip -n "$n" route add 10.62.0.0/24 via "$(rt_up4 "$k")" dev u0
	ip -n "$n" -6 route add fd62::/64 via "$(rt_up6 "$k")" dev u0
	ip -n "$n" route add 10.61.0.0/16 via "$(rt_up4 "$k")" dev u0
	ip -n "$n" -6 route add fd61::/16 via "$(rt_up6 "$k")" dev u0
}

# --------------------------------------------------------- XDP stubs ---
xdp_on() { ip -n "$1" -d link show dev "$2" 2>/dev/null | grep -q 'prog/xdp'; }

# stub NS IFACE: a native XDP_PASS program on IFACE. The stub attaches and
# exits (the attachment outlives it) or keeps running; handle both.
stub() {
	local n="$1" ifc="$2" pid rc i
	ip netns exec "$n" "${SETSID[@]}" "$WEIR" xdp-stub --iface "$ifc" \
		</dev/null >>"$STATE/xdp-stub.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			rc=0
			wait "$pid" || rc=$?
			((rc == 0)) || die "'$WEIR xdp-stub --iface $ifc' in $n failed (exit $rc, log: $STATE/xdp-stub.log)"
			xdp_on "$n" "$ifc" || die "'$WEIR xdp-stub' exited 0 but no XDP program is attached to $n/$ifc"
			return 0
		fi
		if xdp_on "$n" "$ifc"; then
			echo "$pid" >"$STATE/stub-$n-$ifc.pid"
			return 0
		fi
		sleep 0.1
	done
	kill -TERM "$pid" 2>/dev/null || true
	die "'$WEIR xdp-stub' neither exited nor attached to $n/$ifc within 10 s"
}

# ------------------------------------------------------------- backends ---
listener_pid() { # pid of whatever listens on TCP :80 in namespace $1
	nsx "$1" ss -Hltnp 'sport = :80' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

start_server() {
	local b="$1" n www="$STATE/www-$1" pid lpid i
	n="$(ns "$b")"
	mkdir -p "$www"
	printf '%s\n' "$b" >"$www/index.html"
	# dual-stack socket (http.server clears IPV6_V6ONLY for `--bind ::`)
	ip netns exec "$n" "${SETSID[@]}" "$PY" -m http.server 80 --bind :: --directory "$www" \
		</dev/null >"$STATE/$b.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/$b.pid"
	for ((i = 0; i < 50; i++)); do
		lpid="$(listener_pid "$n" || true)"
		if [[ -n "$lpid" ]]; then
			[[ "$lpid" == "$pid" ]] || echo "$lpid" >"$STATE/$b.pid"
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || die "http server for $b exited (log: $STATE/$b.log)"
		sleep 0.1
	done
	die "http server for $b not listening on :80 after 5 s (log: $STATE/$b.log)"
}

# tunnel VIPs: `weir decap --iface b0` (this kernel may have no ipip /
# ip6tnl driver); runs until SIGTERM, then detaches
start_decap() {
	local b="$1" n pid i
	n="$(ns "$b")"
	ip netns exec "$n" "${SETSID[@]}" "$WEIR" decap --iface b0 \
		</dev/null >"$STATE/$b-decap.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/$b-decap.pid"
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || die "'$WEIR decap --iface b0' in $n exited (log: $STATE/$b-decap.log)"
		xdp_on "$n" b0 && return 0
		sleep 0.1
	done
	die "'$WEIR decap --iface b0' in $n did not attach within 10 s (log: $STATE/$b-decap.log)"
}

# ----------------------------------------------------------------- BIRD ---
# The router: eBGP to every node (AS 65000 <-> 65001), accepts only host
# routes inside the VIP ranges, exports nothing to the nodes, and installs
# equal paths as one multipath kernel route (merge paths).
write_router_bird() {
	local k conf="$STATE/rt-bird.conf"
	cat >"$conf" <<-EOF
		# generated by lab/tier.sh for lab '$PREFIX'
		log stderr all;
		router id $RTCL4;
		protocol device { scan time 10; }
		protocol kernel k4 {
			ipv4 { import none; export all; };
			merge paths yes;
		}
		protocol kernel k6 {
			ipv6 { import none; export all; };
			merge paths yes;
		}
		template bgp node {
			local as $RT_AS;
			hold time 3;
			keepalive time 1;
			connect retry time 1;
			error wait time 1, 5;
			ipv4 { import where net ~ [ $VIP_NET4{32,32} ]; export none; };
			ipv6 { import where net ~ [ $VIP_NET6{128,128} ]; export none; };
		}
	EOF
	for ((k = 1; k <= NODES; k++)); do
		printf 'protocol bgp n%d from node {\n\tlocal %s as %d;\n\tneighbor %s as %d;\n}\n' \
			"$k" "$(rt_up4 "$k")" "$RT_AS" "$(node_up4 "$k")" "$NODE_AS" >>"$conf"
	done
}

# A node: one multiprotocol eBGP session to the router over IPv4 (IPv6 routes
# carry the node's fd61:K::1 as next hop), exporting only the addresses on
# weir's announcement device(s) weir-*, importing nothing.
write_node_bird() {
	local k="$1" conf="$STATE/n$k-bird.conf"
	cat >"$conf" <<-EOF
		# generated by lab/tier.sh for lab '$PREFIX', node $k
		log stderr all;
		router id $(node_up4 "$k");
		protocol device { scan time 10; }
		# each VIP weir is ready to serve is a /32 or /128 on weir-u0
		protocol direct weir_vips {
			ipv4;
			ipv6;
			interface "weir-*";
		}
		protocol bgp uplink {
			local $(node_up4 "$k") as $NODE_AS;
			neighbor $(rt_up4 "$k") as $RT_AS;
			hold time 3;
			keepalive time 1;
			connect retry time 1;
			error wait time 1, 5;
			ipv4 { import none; export where proto = "weir_vips"; };
			ipv6 { import none; export where proto = "weir_vips"; next hop address $(node_up6 "$k"); };
		}
	EOF
}

# start_bird NS NAME: bird in the foreground (so $! is bird), PID recorded
start_bird() {
	local n="$1" name="$2" pid i
	bird -p -c "$STATE/$name-bird.conf" || die "BIRD rejects $STATE/$name-bird.conf"
	ip netns exec "$n" "${SETSID[@]}" bird -f -c "$STATE/$name-bird.conf" -s "$STATE/$name-bird.ctl" \
		-P "$STATE/$name-bird.pidfile" </dev/null >"$STATE/$name-bird.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/$name-bird.pid"
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || die "bird in $n exited (log: $STATE/$name-bird.log)"
		birdc -s "$STATE/$name-bird.ctl" show status >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "bird in $n did not answer on $STATE/$name-bird.ctl within 5 s"
}

birdc_rt() { birdc -s "$STATE/rt-bird.ctl" "$@"; }

wait_sessions() {
	local i k est
	for ((i = 0; i < 150; i++)); do
		est=0
		for ((k = 1; k <= NODES; k++)); do
			birdc_rt show protocols "n$k" 2>/dev/null | grep -q Established && est=$((est + 1))
		done
		((est == NODES)) && { log "BGP: $NODES/$NODES sessions established"; return 0; }
		sleep 0.1
	done
	birdc_rt show protocols >&2 || true
	die "BGP: only $est of $NODES sessions established after 15 s"
}

# ----------------------------------------------------------------- weir ---
weir_ready() { # weir_ready K: attached to u0 and answering on its control socket
	local n
	n="$(ns "n$1")"
	xdp_on "$n" u0 && nsx "$n" "$WEIR" stats --iface u0 --once >/dev/null 2>&1
}

start_weir() {
	local k="$1" n pid i
	n="$(ns "n$k")"
	ip netns exec "$n" "${SETSID[@]}" "$WEIR" run --iface u0 --config "$CONFIG" --interval 0 \
		</dev/null >"$STATE/n$k-weir.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/n$k-weir.pid"
	stat -L -c %i "/run/netns/$n" >"$STATE/n$k-weir.ino"
	for ((i = 0; i < 150; i++)); do
		kill -0 "$pid" 2>/dev/null || {
			cat "$STATE/n$k-weir.log" >&2 || true
			die "weir on $n/u0 exited (log: $STATE/n$k-weir.log)"
		}
		if weir_ready "$k"; then
			log "weir attached to $n/u0 (pid $pid, log $STATE/n$k-weir.log)"
			return 0
		fi
		sleep 0.1
	done
	die "weir on $n/u0 did not attach within 15 s (log: $STATE/n$k-weir.log)"
}

# ---------------------------------------------------- VIP announcement ---
# weir announces itself. With announcing on in the config (`[tier]`
# `announce = true`), `weir run` creates
# the TUN device itself (weir-u0, or `tier.device`), holds it open while it
# runs, with every VIP it is ready to serve as a /32 or /128; BIRD's
# `protocol direct weir_vips` exports those, and when weir dies (even by
# kill -9) the device disappears and BIRD withdraws them. `up` waits for the
# device, and refuses a config without announcing: nothing else would
# announce the VIPs.
ANNOUNCES=0   # set by config_vips
DEVICE=weir-u0 # set by config_vips; kept in $STATE/device for status
config_announces() { ((ANNOUNCES)); }

# every VIP address of CONFIG, once each (IPv4 first), and whether weir
# announces them itself (ANNOUNCES, DEVICE)
VIPS=()
config_vips() {
	local out
	out="$("$PY" -c '
import ipaddress, sys, tomllib
with open(sys.argv[1], "rb") as f:
    conf = tomllib.load(f)
vips = conf.get("vip", [])
tier = conf.get("tier", {})
announce = tier.get("announce") is True
print(int(announce), tier.get("device", "weir-u0"))
addrs = sorted({ipaddress.ip_address(v["address"]) for v in vips}, key=lambda a: (a.version, a))
nets = [ipaddress.ip_network(n) for n in sys.argv[2:]]
for a in addrs:
    if not any(a.version == n.version and a in n for n in nets):
        sys.exit("VIP %s is outside %s, the only ranges the router accepts" % (a, " and ".join(sys.argv[2:])))
print("\n".join(str(a) for a in addrs))
' "$CONFIG" "$VIP_NET4" "$VIP_NET6")" || die "cannot use the VIPs of $CONFIG"
	read -r ANNOUNCES DEVICE <<<"$(head -n1 <<<"$out")"
	out="$(tail -n +2 <<<"$out")"
	[[ -n "$out" ]] || die "no [[vip]] in $CONFIG"
	mapfile -t VIPS <<<"$out"
	[[ "$DEVICE" == weir-* ]] ||
		die "tier.device = \"$DEVICE\" in $CONFIG: the nodes' BIRD exports only interfaces \"weir-*\""
}

tun_on() { ip -n "$(ns "n$1")" link show dev "$DEVICE" >/dev/null 2>&1; }

# wait_announce K: node K's weir announces itself; wait for its device
wait_announce() {
	local k="$1" n i
	n="$(ns "n$k")"
	for ((i = 0; i < 100; i++)); do
		tun_on "$k" && return 0
		sleep 0.1
	done
	die "$CONFIG announces (tier.announce) but weir made no $DEVICE in $n within 10 s"
}

# nexthops FAMILY PREFIX: number of next hops of the router's route to PREFIX
nexthops() {
	local out
	out="$(ip -n "$RT" "$1" route show "$2" 2>/dev/null || true)"
	[[ -n "$out" ]] || { echo 0; return 0; }
	if grep -q nexthop <<<"$out"; then
		grep -c nexthop <<<"$out"
	else
		echo 1
	fi
}

wait_ecmp() {
	local i v ok
	for ((i = 0; i < 100; i++)); do
		ok=1
		for v in "${VIPS[@]}"; do
			if [[ "$v" == *:* ]]; then
				(($(nexthops -6 "$v") == NODES)) || ok=0
			else
				(($(nexthops -4 "$v") == NODES)) || ok=0
			fi
		done
		((ok)) && { log "router: every VIP (${#VIPS[@]}) has $NODES next hops"; return 0; }
		sleep 0.1
	done
	ip -n "$RT" route show root "$VIP_NET4" >&2 || true
	ip -n "$RT" -6 route show root "$VIP_NET6" >&2 || true
	die "router: the VIP routes do not have $NODES next hops after 10 s"
}

# weir's backends: up once their MACs resolve and two checks pass
wait_backends_up() {
	local k n i down
	for ((k = 1; k <= NODES; k++)); do
		n="$(ns "n$k")"
		for ((i = 0; i < 100; i++)); do
			down="$(nsx "$n" "$WEIR" stats --iface u0 --once --json 2>/dev/null |
				"$PY" -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for v in s["vips"] for b in v["backends"] if b.get("health") not in ("up", None)))' 2>/dev/null || echo '?')"
			[[ "$down" == 0 ]] && break
			sleep 0.1
		done
		[[ "$down" == 0 ]] || log "warning: node $k: $down backend(s) not up after 10 s ('$WEIR stats --iface u0' in $n)"
	done
}

UP_BUILDING=0
on_up_err() { echo "tier.sh: up failed at line $1: $2" >&2; }
on_up_exit() {
	local rc=$?
	trap - EXIT INT TERM ERR
	if ((UP_BUILDING)); then
		set +e
		((rc != 0)) || rc=1
		echo "tier.sh: up failed (exit $rc); tearing down partially built lab '$PREFIX'" >&2
		do_down >&2
	fi
	exit "$rc"
}

do_up() {
	local w k b
	[[ -n "$WEIR" ]] || die "WEIR must name the weir binary (stubs, decap and every node's weir)"
	w="$(command -v -- "$WEIR" || true)"
	[[ -n "$w" && -f "$w" && -x "$w" ]] || die "WEIR=$WEIR is not an executable file"
	[[ "$w" == /* ]] || w="$PWD/$w"
	WEIR="$w"
	[[ -f "$CONFIG" ]] || die "no config at $CONFIG"
	CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
	"$WEIR" check "$CONFIG" >/dev/null || die "'$WEIR check $CONFIG' failed"
	PY="$(python3 -c 'import sys; print(sys.executable)')"
	config_vips
	config_announces || die "$CONFIG has no [tier] announce = true: nothing would announce the VIPs"
	if [[ -d "$STATE" && ! -f "$STATE/tier" ]]; then
		die "$STATE exists but is not a tier lab (lab.sh's?); use another PREFIX"
	fi
	if lab_exists; then
		log "lab '$PREFIX' already exists; tearing it down first"
		do_down
	fi
	SETSID=()
	command -v setsid >/dev/null 2>&1 && SETSID=(setsid)

	# Any failure from here on (set -e, die, ^C) tears down what was built.
	UP_BUILDING=1
	trap 'on_up_exit' EXIT
	trap 'exit 130' INT TERM
	trap 'on_up_err "$LINENO" "$BASH_COMMAND"' ERR

	mkdir -p "$STATE"
	chmod 755 "$STATE_ROOT" "$STATE"
	: >"$STATE/tier"
	echo "$NODES" >"$STATE/nodes"
	build_switch
	build_router
	build_client
	for b in "${BACKENDS[@]}"; do build_backend "$b"; done
	for ((k = 1; k <= NODES; k++)); do build_node "$k"; done

	# XDP_TX from weir on u0 reaches the router only if nK (its peer) has a
	# native XDP program; DSR frames weir redirects out of d0 reach the bridge
	# only if p-nK (d0's peer) has an XDP program or GRO on.
	for ((k = 1; k <= NODES; k++)); do
		stub "$RT" "n$k"
		case "$D0_PEER" in
		stub) stub "$BK" "p-n$k" ;;
		gro) nsx "$BK" ethtool -K "p-n$k" gro on >/dev/null ;;
		none) ;;
		esac
	done
	log "XDP_PASS stubs on $RT/n1..n$NODES; d0's bridge side: $D0_PEER"

	for b in "${BACKENDS[@]}"; do
		start_decap "$b"
		start_server "$b"
	done

	write_router_bird
	start_bird "$RT" rt
	for ((k = 1; k <= NODES; k++)); do
		write_node_bird "$k"
		start_bird "$(ns "n$k")" "n$k"
	done
	wait_sessions

	echo "$DEVICE" >"$STATE/device"
	log "VIPs announced by weir itself (device $DEVICE)"
	for ((k = 1; k <= NODES; k++)); do
		start_weir "$k"
		wait_announce "$k"
	done
	wait_ecmp
	wait_backends_up
	UP_BUILDING=0
	trap - ERR INT TERM EXIT
	log "lab '$PREFIX' is up: $CL, $RT, $BK, $(ns n1)..$(ns "n$NODES"), $(ns b1)..$(ns b3); state in $STATE"
}

# ------------------------------------------------------------- pin/unpin ---
# Client -> VIP traffic entering the router on cl0 goes to node K only (a
# policy rule and a table with the VIP prefixes via node K); replies and
# everything else use the main table.
do_unpin() {
	local fam
	ns_exists "$RT" || return 0
	for fam in -4 -6; do
		while ip -n "$RT" "$fam" rule del pref "$PIN_PREF" 2>/dev/null; do :; done
		ip -n "$RT" "$fam" route flush table "$PIN_TABLE" 2>/dev/null || true
	done
	rm -f "$STATE/pinned"
}

do_pin() {
	local k="$1"
	load_nodes
	[[ "$k" =~ ^[1-8]$ ]] && ((k <= NODES)) || die "pin: node must be 1..$NODES (got '$k')"
	ns_exists "$RT" || die "lab '$PREFIX' has no router ($RT)"
	do_unpin
	ip -n "$RT" route add "$VIP_NET4" via "$(node_up4 "$k")" dev "n$k" table "$PIN_TABLE"
	ip -n "$RT" -6 route add "$VIP_NET6" via "$(node_up6 "$k")" dev "n$k" table "$PIN_TABLE"
	ip -n "$RT" rule add pref "$PIN_PREF" iif cl0 to "$VIP_NET4" lookup "$PIN_TABLE"
	ip -n "$RT" -6 rule add pref "$PIN_PREF" iif cl0 to "$VIP_NET6" lookup "$PIN_TABLE"
	echo "$k" >"$STATE/pinned"
	log "client -> VIP traffic pinned to node $k ($(ns "n$k"))"
}

# ---------------------------------------------------------------- status ---
do_status() {
	local n k rc=0 pid state
	load_nodes
	DEVICE="$(cat "$STATE/device" 2>/dev/null || echo weir-u0)"
	echo "tier lab '$PREFIX' (nodes: $NODES; state: $STATE$([[ -d "$STATE" ]] || echo ', missing'))"
	for n in "$CL" "$RT" "$BK" $(for ((k = 1; k <= NODES; k++)); do ns "n$k"; done) \
		$(for b in "${BACKENDS[@]}"; do ns "$b"; done); do
		if ns_exists "$n"; then echo "  netns $n: present"; else echo "  netns $n: MISSING"; rc=1; fi
	done
	echo "== BIRD on the router"
	if ns_exists "$RT" && birdc_rt show protocols 2>/dev/null | sed 's/^/  /'; then :; else
		echo "  not running"
		rc=1
	fi
	echo "== router: routes to the VIPs"
	if ns_exists "$RT"; then
		ip -n "$RT" route show root "$VIP_NET4" | sed 's/^/  /'
		ip -n "$RT" -6 route show root "$VIP_NET6" | sed 's/^/  /'
		if [[ -f "$STATE/pinned" ]]; then
			echo "  pinned to node $(cat "$STATE/pinned") (table $PIN_TABLE, rule pref $PIN_PREF):"
			ip -n "$RT" rule show pref "$PIN_PREF" | sed 's/^/    /'
			ip -n "$RT" -6 rule show pref "$PIN_PREF" | sed 's/^/    /'
		fi
	fi
	echo "== weir"
	for ((k = 1; k <= NODES; k++)); do
		pid="$(cat "$STATE/n$k-weir.pid" 2>/dev/null || true)"
		state="pid ${pid:-?}"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then state+=" running"; else state+=" not running"; rc=1; fi
		if ns_exists "$(ns "n$k")" && tun_on "$k"; then state+=", $DEVICE present"; else state+=", no $DEVICE"; fi
		echo "  node $k ($(ns "n$k")): weir $state"
	done
	return "$rc"
}

# ------------------------------------------------------------------ main ---
case "${1:-}" in
up)
	NODES="${NODES_ENV:-3}"
	[[ "$NODES" =~ ^[2-8]$ ]] || die "NODES must be 2..8 (got '$NODES')"
	case "$D0_PEER_ENV" in
	"" | stub) D0_PEER=stub ;;
	gro | none) D0_PEER="$D0_PEER_ENV" ;;
	*) die "D0_PEER must be stub, gro or none (got '$D0_PEER_ENV')" ;;
	esac
	need_root
	need_tools
	do_up
	;;
down)
	need_root
	command -v ip >/dev/null 2>&1 || die "missing tool: ip (apt-get install iproute2)"
	if lab_exists; then
		do_down
		log "lab '$PREFIX' is down"
	else
		log "lab '$PREFIX' does not exist; nothing to do"
	fi
	;;
status)
	need_root
	do_status
	;;
pin)
	need_root
	[[ -d "$STATE" ]] || die "lab '$PREFIX' is not up"
	do_pin "${2:-}"
	;;
unpin)
	need_root
	do_unpin
	log "client -> VIP traffic uses the router's ECMP routes again"
	;;
*)
	echo "usage: PREFIX=wtier WEIR=/path/to/weir [NODES=3] $0 up|down|status|pin K|unpin" >&2
	exit 2
	;;
esac
