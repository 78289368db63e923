#!/usr/bin/env bash
# weir lab: a switch namespace with a bridge, one client, one balancer and
# three HTTP backends, all in network namespaces of their own.
#
#   usage: [LAB_MODE=dsr|nat|tunnel] lab/lab.sh up|down|status
#   env:   PREFIX  namespace prefix (default: weir) -> ${PREFIX}-sw, -client, -lb, -b1..-b3
#          WEIR    path to the weir binary; if set, `weir xdp-stub --iface p-lb`
#                  is run inside ${PREFIX}-sw after the links are built
#          SHIELD_LAB=1 (at `up` only) also builds an attacker ${PREFIX}-atk, a
#                  NAT box ${PREFIX}-nat with ${PREFIX}-client2 behind it, and a
#                  discarding `sink0` default route (dummy, else ifb) in every
#                  backend. `down` always removes these if present; it does
#                  not need the variable.
#          LAB_MODE (at `up` only) dsr (default) | nat | tunnel: how the
#                  backends are set up for weir's forwarding mode (see
#                  lab/README-lab.md). Stored in the state directory, so
#                  `down`/`status` do not need it. tunnel needs WEIR: each
#                  backend runs `weir decap --iface b0` (PID recorded).
#          ROUTED_LAB=1 (at `up` only) also builds a router ${PREFIX}-rt on the
#                  bridge (198.18.0.254, 2001:2::254) and behind it, in another
#                  subnet, a fourth backend ${PREFIX}-b4 (198.19.20.14,
#                  2001:2:0:20::14) set up like the others for LAB_MODE; the
#                  balancer gets routes to 198.19.20.0/24 and 2001:2:0:20::/64 via
#                  the router. `down` always removes these if present.
#          PMTU_LAB=1 (at `up` only) also builds a router ${PREFIX}-crt on the
#                  bridge (198.18.0.253, 2001:2::253) with, behind it on a
#                  link of MTU 1400, a client ${PREFIX}-far (198.19.30.1,
#                  2001:2:0:30::1) that advertises a TCP MSS for 1500 bytes
#                  (route advmss): backends' full-size replies to it make the
#                  router send ICMP frag-needed / packet-too-big to the VIP.
#                  Backends b1..b3 (and b4) route 198.19.30.0/24 and
#                  2001:2:0:30::/64 via the router. `down` always removes
#                  these if present.
#   state: /run/weir-lab/${PREFIX}  (pid files, logs, web roots, mode,
#          big.sha256: sha256 of the 50 MB big.bin in every web root)
#
# Safety: nothing is ever created in, attached to or sent through the root
# network namespace. Every veth is created inside the switch namespace with its
# peer placed directly into the host namespace (`ip -n SW link add ... peer
# name X netns HOST`). Only processes whose PIDs this script recorded are killed.
# See lab/README-lab.md.
set -Eeuo pipefail

PREFIX="${PREFIX:-weir}"
WEIR="${WEIR:-}"
SHIELD=0 # set from SHIELD_LAB by `up` only
ROUTED=0 # set from ROUTED_LAB by `up` only
PMTU=0 # set from PMTU_LAB by `up` only
MODE=dsr # set from LAB_MODE by `up` only; `status` reads $STATE/mode
BIG_MB=50 # size of big.bin in every web root
BACKENDS=(b1 b2 b3)
HOSTS=(client lb b1 b2 b3)
# SHIELD_LAB=1 extras; `down`/`status` always look for them
SHIELD_HOSTS=(atk nat client2)
# ROUTED_LAB=1 extras (router, off-link backend); `down`/`status` always look for them
ROUTED_HOSTS=(rt b4)
# PMTU_LAB=1 extras (client-side router, client behind it); `down`/`status` always look for them
PMTU_HOSTS=(crt far)
# every backend with a web server: BACKENDS, plus b4 in a routed lab
ALL_BACKENDS=("${BACKENDS[@]}")

# shared helpers: ns_exists, kill_recorded
# shellcheck source=lab/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

die() { echo "lab.sh: error: $*" >&2; exit 1; }
log() { echo "lab.sh: $*"; }

# PREFIX ends up in paths that are rm -rf'd: keep it short and boring.
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$ ]] ||
	die "PREFIX must be 1-20 characters of [A-Za-z0-9_-] (got '$PREFIX')"

STATE_ROOT=/run/weir-lab
STATE="$STATE_ROOT/$PREFIX"
SW="${PREFIX}-sw"

ns() { echo "${PREFIX}-$1"; }

# switch-side port name and host-side interface name for each host
port_of() { echo "p-$1"; }
hostif_of() {
	case "$1" in
	client) echo c0 ;;
	lb) echo veth6 ;;
	b*) echo b0 ;;
	atk) echo a0 ;;
	nat) echo n0 ;;
	esac
}
# last octet / IPv6 suffix for each host
addr_of() {
	case "$1" in
	client) echo 1 ;;
	lb) echo 10 ;;
	b1) echo 11 ;;
	b2) echo 12 ;;
	b3) echo 13 ;;
	b4) echo 14 ;;
	atk) echo 66 ;;
	nat) echo 70 ;;
	esac
}
V4NET=198.18.0
V6NET=2001:2:
VIP4=198.18.0.100
VIP6=2001:2::100
# behind the NAT box (still inside RFC 2544's 198.18.0.0/15)
NATNET=198.19.0
# ROUTED_LAB=1: the router's side of the bridge, and the subnet behind it
RT4=198.18.0.254
RT6=2001:2::254
ROUTED4=198.19.20
ROUTED6=2001:2:0:20:
# PMTU_LAB=1: the client-side router on the bridge, the far client's subnet
# and the MTU of the link between them
CRT4=198.18.0.253
CRT6=2001:2::253
FAR4=198.19.30
FAR6=2001:2:0:30:
FAR_MTU=1400

# ---------------------------------------------------------------- checks ---
need_root() {
	[[ "$(id -u)" -eq 0 ]] || die "must run as root (network namespaces, veths, XDP)"
}

need_tools() {
	local missing=() t pkg
	local tools=(ip:iproute2 ss:iproute2 ethtool:ethtool python3:python3)
	((SHIELD)) && tools+=(nft:nftables)
	((PMTU)) && tools+=(ping:iputils-ping curl:curl)
	for t in "${tools[@]}"; do
		pkg="${t#*:}"
		t="${t%%:*}"
		command -v "$t" >/dev/null 2>&1 || missing+=("$t (apt-get install $pkg)")
	done
	if ((${#missing[@]})); then
		die "missing tools: ${missing[*]}"
	fi
}


lab_exists() {
	[[ -d "$STATE" ]] && return 0
	local h
	for h in sw "${HOSTS[@]}" "${SHIELD_HOSTS[@]}" "${ROUTED_HOSTS[@]}" "${PMTU_HOSTS[@]}"; do
		ns_exists "$(ns "$h")" && return 0
	done
	return 1
}


do_down() {
	local b h n pids
	if [[ -d "$STATE" ]]; then
		# b4: the routed lab's backend (ROUTED_LAB=1), if it was built
		for b in "${BACKENDS[@]}" b4; do
			kill_recorded "$STATE/$b.pid" "http.server"
		done
		kill_recorded "$STATE/xdp-stub.pid" "xdp-stub"
		# tunnel mode: the decapsulators detach themselves on SIGTERM
		for b in "${BACKENDS[@]}" b4; do
			kill_recorded "$STATE/$b-decap.pid" "decap"
		done
	fi
	for h in "${PMTU_HOSTS[@]}" "${ROUTED_HOSTS[@]}" "${SHIELD_HOSTS[@]}" "${HOSTS[@]}" sw; do
		n="$(ns "$h")"
		ns_exists "$n" || continue
		pids="$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ' || true)"
		if [[ -n "${pids// /}" ]]; then
			log "warning: unrecorded processes still in $n (not killed): $pids"
		fi
		ip netns del "$n" 2>/dev/null || log "warning: could not delete namespace $n"
	done
	if [[ -d "$STATE" ]]; then
		rm -rf -- "$STATE"
	fi
	rmdir "$STATE_ROOT" 2>/dev/null || true
	return 0
}

# -------------------------------------------------------------------- up ---
nsx() { # nsx HOST cmd...: run cmd inside the host's namespace
	local h="$1"
	shift
	ip netns exec "$(ns "$h")" "$@"
}

sysctl_ns() { # sysctl_ns HOST key=value...
	local h="$1" kv
	shift
	for kv in "$@"; do
		nsx "$h" sysctl -qw "$kv" >/dev/null
	done
}

build_switch() {
	ip netns add "$SW"
	ip -n "$SW" link set lo up
	sysctl_ns sw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	ip -n "$SW" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	ip -n "$SW" link set br0 type bridge stp_state 0 forward_delay 0
	ip -n "$SW" link set br0 up
}

build_host() {
	local h="$1" n ifc port a
	n="$(ns "$h")"
	ifc="$(hostif_of "$h")"
	port="$(port_of "$h")"
	a="$(addr_of "$h")"

	ip netns add "$n"
	ip -n "$n" link set lo up
	# no DAD anywhere in the lab: addresses are usable immediately
	sysctl_ns "$h" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
		net.ipv6.conf.all.dad_transmits=0 net.ipv6.conf.default.dad_transmits=0

	# veth created in the switch namespace, peer placed straight into $n:
	# neither end ever exists in the root namespace.
	ip -n "$SW" link add "$port" type veth peer name "$ifc" netns "$n"
	ip -n "$SW" link set "$port" master br0
	ip -n "$SW" link set "$port" up

	ip -n "$n" addr add "$V4NET.$a/24" dev "$ifc"
	ip -n "$n" -6 addr add "${V6NET}:$a/64" dev "$ifc" nodad
	ip -n "$n" link set "$ifc" up
	# veths hand over packets with partial checksums unless tx offload is off
	nsx "$h" ethtool -K "$ifc" tx off >/dev/null
}

build_backend() {
	local b="$1"
	# nat: the backends only ever see the balancer's address; no VIP here.
	[[ "$MODE" == nat ]] && return 0
	# dsr, tunnel: the VIP on lo, never answered for on b0
	ip -n "$(ns "$b")" addr add "$VIP4/32" dev lo
	ip -n "$(ns "$b")" -6 addr add "$VIP6/128" dev lo nodad
	sysctl_ns "$b" net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
		net.ipv4.conf.b0.arp_ignore=1 net.ipv4.conf.b0.arp_announce=2
	if [[ "$MODE" == tunnel ]]; then
		# decapsulated packets carry the client's address and arrive on b0
		# (after the XDP decapsulator): no reverse-path filtering at all
		sysctl_ns "$b" net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
			net.ipv4.conf.b0.rp_filter=0
	fi
}

# big.bin: one 50 MB random file, copied (not linked: tests may overwrite a
# backend's copy) into every web root; its sha256 goes to $STATE/big.sha256.
make_big() {
	local b first=""
	for b in "${ALL_BACKENDS[@]}"; do
		mkdir -p "$STATE/www-$b"
		if [[ -z "$first" ]]; then
			first="$STATE/www-$b/big.bin"
			head -c "${BIG_MB}M" /dev/urandom >"$first"
		else
			cp -- "$first" "$STATE/www-$b/big.bin"
		fi
	done
	sha256sum "$first" | cut -d' ' -f1 >"$STATE/big.sha256"
	[[ -s "$STATE/big.sha256" ]] || die "could not record the sha256 of big.bin"
}

# ------------------------------------------------- SHIELD_LAB=1 extras ---
new_ns() { # new_ns HOST: empty namespace with lo up and no DAD
	local n
	n="$(ns "$1")"
	ip netns add "$n"
	ip -n "$n" link set lo up
	sysctl_ns "$1" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
		net.ipv6.conf.all.dad_transmits=0 net.ipv6.conf.default.dad_transmits=0
}

plug_v4() { # plug_v4 HOST: IPv4-only port on the bridge (switch port p-HOST)
	local h="$1" n ifc port
	n="$(ns "$h")"
	ifc="$(hostif_of "$h")"
	port="$(port_of "$h")"
	# same pattern as build_host: never in the root namespace
	ip -n "$SW" link add "$port" type veth peer name "$ifc" netns "$n"
	ip -n "$SW" link set "$port" master br0
	ip -n "$SW" link set "$port" up
	ip -n "$n" addr add "$V4NET.$(addr_of "$h")/24" dev "$ifc"
	ip -n "$n" link set "$ifc" up
	nsx "$h" ethtool -K "$ifc" tx off >/dev/null
}

build_atk() {
	new_ns atk
	# rp_filter is max(all, iface): clear default too, so a0 starts at 0
	sysctl_ns atk net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	plug_v4 atk
	sysctl_ns atk net.ipv4.conf.a0.rp_filter=0
	# The attacker's kernel would answer SYN-ACKs to its (non-spoofed) SYNs
	# with RSTs and clean up the flood; drop its own outgoing RSTs.
	nsx atk nft -f - <<-'EOF'
		table inet weirlab {
			chain output {
				type filter hook output priority 0; policy accept;
				tcp flags & rst == rst drop
			}
		}
	EOF
}

build_nat() {
	new_ns nat
	new_ns client2
	plug_v4 nat
	# n1 <-> client2's c0, created in nat with the peer placed into client2
	ip -n "$(ns nat)" link add n1 type veth peer name c0 netns "$(ns client2)"
	ip -n "$(ns nat)" addr add "$NATNET.1/24" dev n1
	ip -n "$(ns nat)" link set n1 up
	nsx nat ethtool -K n1 tx off >/dev/null
	ip -n "$(ns client2)" addr add "$NATNET.2/24" dev c0
	ip -n "$(ns client2)" link set c0 up
	ip -n "$(ns client2)" route add default via "$NATNET.1"
	nsx client2 ethtool -K c0 tx off >/dev/null
	sysctl_ns nat net.ipv4.ip_forward=1
	# The ruleset, in nft's text syntax:
	#   table ip weirnat {
	#     chain post { type nat hook postrouting priority 100; oifname "n0" masquerade }
	#     chain fwd { type filter hook forward priority 0; ct state invalid drop }
	#   }
	# It is loaded as JSON because nft 1.0.6 (Debian 12) cannot parse `chain fwd`
	# ("fwd" is a keyword in its grammar); JSON takes any chain name.
	nsx nat nft -j -f - <<-'EOF'
		{"nftables": [
		  {"table": {"family": "ip", "name": "weirnat"}},
		  {"chain": {"family": "ip", "table": "weirnat", "name": "post",
		    "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
		  {"chain": {"family": "ip", "table": "weirnat", "name": "fwd",
		    "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
		  {"rule": {"family": "ip", "table": "weirnat", "chain": "post", "expr": [
		    {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "n0"}},
		    {"masquerade": null}]}},
		  {"rule": {"family": "ip", "table": "weirnat", "chain": "fwd", "expr": [
		    {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
		    {"drop": null}]}}
		]}
	EOF
}

# --------------------------------------------------- ROUTED_LAB=1 extras ---
# A router on the bridge and, behind it in 198.19.20.0/24 / 2001:2:0:20::/64, a
# fourth backend: weir must reach it through the router's MAC (`ip route
# get`'s gateway), in nat and tunnel modes.
#
#   br0 ... p-rt --- r0 [rt] r1 --- b0 [b4]
#                .254 ::254    .19.20.254 / 2001:2:0:20::254   .19.20.14 / 2001:2:0:20::14
build_routed() {
	local rt b4
	rt="$(ns rt)"
	b4="$(ns b4)"
	new_ns rt
	# Forwarding on; no reverse-path filtering: in tunnel mode b4 answers the
	# client from the VIP (198.18.0.100, on-link behind r0) and that packet
	# arrives on r1. rp_filter is max(all, iface): clear default before the
	# interfaces exist, all, and each interface.
	sysctl_ns rt net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	# switch port p-rt <-> the router's r0: created in the switch namespace,
	# peer placed straight into the router's (never in the root namespace)
	ip -n "$SW" link add p-rt type veth peer name r0 netns "$rt"
	ip -n "$SW" link set p-rt master br0
	ip -n "$SW" link set p-rt up
	ip -n "$rt" addr add "$RT4/24" dev r0
	ip -n "$rt" -6 addr add "$RT6/64" dev r0 nodad
	ip -n "$rt" link set r0 up
	nsx rt ethtool -K r0 tx off >/dev/null

	new_ns b4
	# r1 <-> b4's b0: created in the router's namespace, peer placed straight
	# into b4's
	ip -n "$rt" link add r1 type veth peer name b0 netns "$b4"
	ip -n "$rt" addr add "$ROUTED4.254/24" dev r1
	ip -n "$rt" -6 addr add "${ROUTED6}:254/64" dev r1 nodad
	ip -n "$rt" link set r1 up
	nsx rt ethtool -K r1 tx off >/dev/null
	sysctl_ns rt net.ipv4.conf.r0.rp_filter=0 net.ipv4.conf.r1.rp_filter=0 \
		net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1

	ip -n "$b4" addr add "$ROUTED4.$(addr_of b4)/24" dev b0
	ip -n "$b4" -6 addr add "${ROUTED6}:$(addr_of b4)/64" dev b0 nodad
	ip -n "$b4" link set b0 up
	nsx b4 ethtool -K b0 tx off >/dev/null
	ip -n "$b4" route add default via "$ROUTED4.254"
	ip -n "$b4" -6 route add default via "${ROUTED6}:254"

	# the balancer reaches b4's subnet through the router
	ip -n "$(ns lb)" route add "$ROUTED4.0/24" via "$RT4"
	ip -n "$(ns lb)" -6 route add "${ROUTED6}:/64" via "$RT6"

	# VIP on lo, ARP and rp_filter settings per LAB_MODE, as b1..b3
	build_backend b4
}

# ----------------------------------------------------- PMTU_LAB=1 extras ---
# A router on the bridge and, behind it on a link of MTU 1400, a client whose
# TCP advertises an MSS for 1500-byte packets: a DSR or tunnel backend's
# full-size reply (sent from the VIP, straight to the client through the
# router) does not fit that link, so the router answers it with ICMP
# frag-needed / packet-too-big addressed to the VIP, that is to weir.
#
#   br0 ... p-crt --- r0 [crt] r1 ==MTU 1400== c0 [far]
#                 .253 ::253    .19.30.254 / 2001:2:0:30::254   .19.30.1 / 2001:2:0:30::1
build_pmtu() {
	local crt far b
	crt="$(ns crt)"
	far="$(ns far)"
	new_ns crt
	# rp_filter is max(all, iface): clear default before the interfaces exist
	sysctl_ns crt net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	# switch port p-crt <-> the router's r0: created in the switch namespace,
	# peer placed straight into the router's (never in the root namespace)
	ip -n "$SW" link add p-crt type veth peer name r0 netns "$crt"
	ip -n "$SW" link set p-crt master br0
	ip -n "$SW" link set p-crt up
	ip -n "$crt" addr add "$CRT4/24" dev r0
	ip -n "$crt" -6 addr add "$CRT6/64" dev r0 nodad
	ip -n "$crt" link set r0 up
	nsx crt ethtool -K r0 tx off >/dev/null

	new_ns far
	# r1 <-> far's c0, created in the router's namespace, peer placed straight
	# into far's; both ends of this link have the small MTU
	ip -n "$crt" link add r1 type veth peer name c0 netns "$far"
	ip -n "$crt" link set r1 mtu "$FAR_MTU"
	ip -n "$far" link set c0 mtu "$FAR_MTU"
	ip -n "$crt" addr add "$FAR4.254/24" dev r1
	ip -n "$crt" -6 addr add "${FAR6}:254/64" dev r1 nodad
	ip -n "$crt" link set r1 up
	nsx crt ethtool -K r1 tx off >/dev/null
	sysctl_ns crt net.ipv4.conf.r0.rp_filter=0 net.ipv4.conf.r1.rp_filter=0 \
		net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.forwarding=1

	ip -n "$far" addr add "$FAR4.1/24" dev c0
	ip -n "$far" -6 addr add "${FAR6}:1/64" dev c0 nodad
	ip -n "$far" link set c0 up
	nsx far ethtool -K c0 tx off >/dev/null
	# The MSS a 1500-byte path would allow (1460 / 1440), not c0's: the
	# backends send full-size segments and meet the small link at the router.
	ip -n "$far" route add default via "$FAR4.254" advmss 1460
	ip -n "$far" -6 route add default via "${FAR6}:254" advmss 1440

	# The backends answer the far client straight through the router.
	for b in "${BACKENDS[@]}"; do
		ip -n "$(ns "$b")" route add "$FAR4.0/24" via "$CRT4"
		ip -n "$(ns "$b")" -6 route add "${FAR6}:/64" via "$CRT6"
	done
	if ((ROUTED)); then
		ip -n "$(ns rt)" route add "$FAR4.0/24" via "$CRT4"
		ip -n "$(ns rt)" -6 route add "${FAR6}:/64" via "$CRT6"
	fi
}

# Replies to spoofed sources: a default route to a device that discards what
# it is given, so they never leave the lab and are not dropped at route lookup
# (the reply is routed and "sent" like any other). A dummy device if the
# kernel has one; else an ifb device (CONFIG_DUMMY is often missing from
# minimal VM kernels): ifb is NOARP too and frees every packet it is asked to
# transmit that was not redirected to it by tc.
SINK_KIND=""
build_sink() {
	local n
	n="$(ns "$1")"
	if [[ "$SINK_KIND" != ifb ]] && ip -n "$n" link add sink0 type dummy 2>/dev/null; then
		SINK_KIND=dummy
	elif ip -n "$n" link add sink0 type ifb; then
		[[ "$SINK_KIND" == ifb ]] || log "note: no dummy devices in this kernel; sink0 is an ifb device"
		SINK_KIND=ifb
	else
		die "cannot create sink0 in $n (neither dummy nor ifb link type)"
	fi
	ip -n "$n" link set sink0 up
	ip -n "$n" route add default dev sink0
}

listener_pid() { # pid of whatever listens on TCP :80 in the host's namespace
	nsx "$1" ss -Hltnp 'sport = :80' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

start_server() {
	local b="$1" www="$STATE/www-$1" pid lpid i
	mkdir -p "$www"
	printf '%s\n' "$b" >"$www/index.html"
	# `--bind ::` gives a dual-stack socket: http.server's DualStackServer clears
	# IPV6_V6ONLY, so IPv4 clients reach it as ::ffff:198.18.0.x.
	# setsid: keep the server out of the caller's process group (no stray ^C).
	ip netns exec "$(ns "$b")" "${SETSID[@]}" "$PY" -m http.server 80 --bind :: --directory "$www" \
		</dev/null >"$STATE/$b.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/$b.pid"
	for ((i = 0; i < 50; i++)); do
		lpid="$(listener_pid "$b" || true)"
		if [[ -n "$lpid" ]]; then
			if [[ "$lpid" != "$pid" ]]; then
				log "note: $b listener pid $lpid differs from started pid $pid; recording $lpid"
				echo "$lpid" >"$STATE/$b.pid"
			fi
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || {
			cat "$STATE/$b.log" >&2 || true
			die "http server for $b exited (log: $STATE/$b.log)"
		}
		sleep 0.1
	done
	die "http server for $b not listening on :80 after 5 s (log: $STATE/$b.log)"
}

xdp_attached() { ip -n "$SW" -d link show dev p-lb 2>/dev/null | grep -q 'prog/xdp'; }

start_stub() {
	local pid rc i
	if [[ -z "$WEIR" ]]; then
		log "note: WEIR not set; skipped the XDP_PASS stub on $SW/p-lb (XDP_TX from the balancer will not reach the bridge)"
		return 0
	fi
	# The stub may attach and exit, or attach and stay running; handle both.
	ip netns exec "$SW" "${SETSID[@]}" "$WEIR" xdp-stub --iface p-lb \
		</dev/null >"$STATE/xdp-stub.log" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			rc=0
			wait "$pid" || rc=$?
			if ((rc != 0)); then
				cat "$STATE/xdp-stub.log" >&2 || true
				die "'$WEIR xdp-stub --iface p-lb' failed (exit $rc, log: $STATE/xdp-stub.log)"
			fi
			xdp_attached || die "'$WEIR xdp-stub' exited 0 but no XDP program is attached to $SW/p-lb"
			log "XDP stub attached to $SW/p-lb"
			return 0
		fi
		if xdp_attached; then
			echo "$pid" >"$STATE/xdp-stub.pid"
			log "XDP stub attached to $SW/p-lb (running as pid $pid)"
			return 0
		fi
		sleep 0.1
	done
	kill -TERM "$pid" 2>/dev/null || true
	die "'$WEIR xdp-stub' neither exited nor attached within 10 s (log: $STATE/xdp-stub.log)"
}

decap_attached() { ip -n "$(ns "$1")" -d link show dev b0 2>/dev/null | grep -q 'prog/xdp'; }

# tunnel mode: `weir decap --iface b0` in each backend, running until SIGTERM
start_decap() {
	local b="$1" pid rc i cmd
	[[ -n "$WEIR" ]] || die "LAB_MODE=tunnel needs WEIR (the backends run '\$WEIR decap --iface b0')"
	ip netns exec "$(ns "$b")" "${SETSID[@]}" "$WEIR" decap --iface b0 \
		</dev/null >"$STATE/$b-decap.log" 2>&1 &
	pid=$!
	# recorded at once, so a failure below still has `down` stop it
	echo "$pid" >"$STATE/$b-decap.pid"
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			rc=0
			wait "$pid" || rc=$?
			rm -f "$STATE/$b-decap.pid"
			cat "$STATE/$b-decap.log" >&2 || true
			die "'$WEIR decap --iface b0' in $(ns "$b") exited (status $rc) instead of running (log: $STATE/$b-decap.log)"
		fi
		if decap_attached "$b"; then
			cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
			[[ "$cmd" == *decap* ]] || log "warning: decap pid $pid runs '$cmd'; down will not kill it"
			log "decapsulator attached to $(ns "$b")/b0 (running as pid $pid)"
			return 0
		fi
		sleep 0.1
	done
	die "'$WEIR decap --iface b0' in $(ns "$b") did not attach within 10 s (log: $STATE/$b-decap.log)"
}

UP_BUILDING=0
on_up_err() { # ERR during up: say where; the EXIT trap does the teardown
	echo "lab.sh: up failed at line $1: $2" >&2
}
on_up_exit() {
	local rc=$?
	trap - EXIT INT TERM ERR
	if ((UP_BUILDING)); then
		set +e
		((rc != 0)) || rc=1
		echo "lab.sh: up failed (exit $rc); tearing down partially built lab '$PREFIX'" >&2
		do_down >&2
	fi
	exit "$rc"
}

do_up() {
	local w
	if [[ -n "$WEIR" ]]; then
		w="$(command -v -- "$WEIR" || true)"
		[[ -n "$w" && -f "$w" && -x "$w" ]] || die "WEIR=$WEIR is not an executable file"
		[[ "$w" == /* ]] || w="$PWD/$w"
		WEIR="$w"
	fi
	[[ "$MODE" != tunnel || -n "$WEIR" ]] ||
		die "LAB_MODE=tunnel needs WEIR (every backend runs '\$WEIR decap --iface b0')"
	if lab_exists; then
		log "lab '$PREFIX' already exists; tearing it down first"
		do_down
	fi
	PY="$(python3 -c 'import sys; print(sys.executable)')"
	SETSID=()
	command -v setsid >/dev/null 2>&1 && SETSID=(setsid)

	# Any failure from here on (set -e, die, ^C) tears down what was built.
	UP_BUILDING=1
	trap 'on_up_exit' EXIT
	trap 'exit 130' INT TERM
	trap 'on_up_err "$LINENO" "$BASH_COMMAND"' ERR

	mkdir -p "$STATE"
	chmod 755 "$STATE_ROOT" "$STATE"
	echo "$MODE" >"$STATE/mode"
	build_switch
	local h
	for h in "${HOSTS[@]}"; do
		build_host "$h"
	done
	for h in "${BACKENDS[@]}"; do
		build_backend "$h"
	done
	if ((ROUTED)); then
		build_routed
		ALL_BACKENDS+=(b4)
		: >"$STATE/routed"
	fi
	if ((PMTU)); then
		build_pmtu
		: >"$STATE/pmtu"
	fi
	if ((SHIELD)); then
		build_atk
		build_nat
		for h in "${BACKENDS[@]}"; do
			build_sink "$h"
		done
		: >"$STATE/shield"
	fi
	start_stub
	if [[ "$MODE" == tunnel ]]; then
		for h in "${ALL_BACKENDS[@]}"; do
			start_decap "$h"
		done
	fi
	make_big
	for h in "${ALL_BACKENDS[@]}"; do
		start_server "$h"
	done
	UP_BUILDING=0
	trap - ERR INT TERM EXIT
	local extra=""
	((ROUTED)) && extra+=" $(ns rt) $(ns b4) (ROUTED_LAB)"
	((PMTU)) && extra+=" $(ns crt) $(ns far) (PMTU_LAB)"
	((SHIELD)) && extra+=" $(ns atk) $(ns nat) $(ns client2) (SHIELD_LAB)"
	log "lab '$PREFIX' is up (mode $MODE): namespaces $(ns sw) $(ns client) $(ns lb) $(ns b1) $(ns b2) $(ns b3)$extra; state in $STATE"
}

# ---------------------------------------------------------------- status ---
probe() { # probe BACKEND -> prints body, fails if no answer
	local url="http://$V4NET.$(addr_of "$1")/"
	if command -v curl >/dev/null 2>&1; then
		nsx client curl -s --max-time 2 "$url"
	else
		nsx client python3 -c 'import sys,urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=2).read().decode())' "$url"
	fi
}

# b4 is off-link for the client (which has no route to it): probe it from
# the balancer's namespace, through the router.
status_b4() {
	local mode="$1" pid state body url="http://$ROUTED4.$(addr_of b4)/" ok=0
	pid="$(cat "$STATE/b4.pid" 2>/dev/null || true)"
	state="pid ${pid:-?}"
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then state+=" running"; else state+=" not running"; fi
	if ns_exists "$(ns lb)" && ns_exists "$(ns rt)" && ns_exists "$(ns b4)" &&
		body="$(if command -v curl >/dev/null 2>&1; then
			nsx lb curl -s --max-time 2 "$url"
		else
			nsx lb python3 -c 'import sys,urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=2).read().decode())' "$url"
		fi 2>/dev/null)" && [[ "$body" == b4 ]]; then
		echo "  backend b4 ($ROUTED4.$(addr_of b4), via $RT4): answers '$body' to the balancer ($state)"
	else
		echo "  backend b4 ($ROUTED4.$(addr_of b4), via $RT4): NO ANSWER to the balancer ($state)"
		ok=1
	fi
	if [[ "$mode" == tunnel ]]; then
		pid="$(cat "$STATE/b4-decap.pid" 2>/dev/null || true)"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && ns_exists "$(ns b4)" && decap_attached b4; then
			echo "  backend b4: decapsulator attached to b0 (pid $pid)"
		else
			echo "  backend b4: decapsulator NOT RUNNING (pid ${pid:-?})"
			ok=1
		fi
	fi
	return "$ok"
}

# status_extras LABEL MARKER HOST...: report an optional set of namespaces;
# fails when `up` built them (MARKER exists) and one is missing.
status_extras() {
	local label="$1" marker="$2" h n rc=0
	shift 2
	for h in "$@"; do
		n="$(ns "$h")"
		if ns_exists "$n"; then
			echo "  netns $n: present ($label)"
		elif [[ -f "$marker" ]]; then
			echo "  netns $n: MISSING ($label)"
			rc=1
		fi
	done
	return "$rc"
}

do_status() {
	local h n ok=0 body pid state mode
	mode="$(cat "$STATE/mode" 2>/dev/null || echo dsr)"
	echo "lab '$PREFIX' (mode: $mode; state: $STATE$([[ -d "$STATE" ]] || echo ', missing'))"
	for h in sw "${HOSTS[@]}"; do
		n="$(ns "$h")"
		if ns_exists "$n"; then
			echo "  netns $n: present"
		else
			echo "  netns $n: MISSING"
			ok=1
		fi
	done
	# SHIELD_LAB / ROUTED_LAB extras: listed when present (or when up built them)
	status_extras SHIELD_LAB "$STATE/shield" "${SHIELD_HOSTS[@]}" || ok=1
	if ns_exists "$SW"; then
		if xdp_attached; then
			echo "  $SW/p-lb: XDP program attached"
		else
			echo "  $SW/p-lb: no XDP program"
		fi
	fi
	status_extras ROUTED_LAB "$STATE/routed" "${ROUTED_HOSTS[@]}" || ok=1
	status_extras PMTU_LAB "$STATE/pmtu" "${PMTU_HOSTS[@]}" || ok=1
	for h in "${BACKENDS[@]}"; do
		pid="$(cat "$STATE/$h.pid" 2>/dev/null || true)"
		state="pid ${pid:-?}"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then state+=" running"; else state+=" not running"; fi
		if ns_exists "$(ns client)" && ns_exists "$(ns "$h")" &&
			body="$(probe "$h" 2>/dev/null)" && [[ "$body" == "$h" ]]; then
			echo "  backend $h ($V4NET.$(addr_of "$h")): answers '$body' ($state)"
		else
			echo "  backend $h ($V4NET.$(addr_of "$h")): NO ANSWER ($state)"
			ok=1
		fi
		if [[ "$mode" == tunnel ]]; then
			pid="$(cat "$STATE/$h-decap.pid" 2>/dev/null || true)"
			if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && ns_exists "$(ns "$h")" && decap_attached "$h"; then
				echo "  backend $h: decapsulator attached to b0 (pid $pid)"
			else
				echo "  backend $h: decapsulator NOT RUNNING (pid ${pid:-?})"
				ok=1
			fi
		fi
	done
	if [[ -f "$STATE/routed" ]] || ns_exists "$(ns b4)"; then
		status_b4 "$mode" || ok=1
	fi
	return "$ok"
}

# ------------------------------------------------------------------ main ---
case "${1:-}" in
up)
	case "${SHIELD_LAB:-}" in
	1) SHIELD=1 ;;
	"" | 0) SHIELD=0 ;;
	*) die "SHIELD_LAB must be 1 (or unset/0), got '${SHIELD_LAB}'" ;;
	esac
	case "${ROUTED_LAB:-}" in
	1) ROUTED=1 ;;
	"" | 0) ROUTED=0 ;;
	*) die "ROUTED_LAB must be 1 (or unset/0), got '${ROUTED_LAB}'" ;;
	esac
	case "${PMTU_LAB:-}" in
	1) PMTU=1 ;;
	"" | 0) PMTU=0 ;;
	*) die "PMTU_LAB must be 1 (or unset/0), got '${PMTU_LAB}'" ;;
	esac
	case "${LAB_MODE:-}" in
	"" | dsr) MODE=dsr ;;
	nat | tunnel) MODE="$LAB_MODE" ;;
	*) die "LAB_MODE must be dsr, nat or tunnel (or unset), got '${LAB_MODE}'" ;;
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
	need_tools
	do_status
	;;
*)
	echo "usage: [PREFIX=weir] [WEIR=/path/to/weir] [SHIELD_LAB=1] [ROUTED_LAB=1] [PMTU_LAB=1] [LAB_MODE=dsr|nat|tunnel] $0 up|down|status" >&2
	exit 2
	;;
esac
