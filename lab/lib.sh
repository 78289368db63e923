#!/usr/bin/env bash
# Shared by lab/lab.sh and lab/tier.sh (sourced): the callers define log().

ns_exists() { [[ -e "/run/netns/$1" ]] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }

# kill_recorded FILE PATTERN: kill the PID in FILE only if its command line
# still contains PATTERN (guards against PID reuse).
kill_recorded() {
	local file="$1" pattern="$2" pid cmd i
	[[ -f "$file" ]] || return 0
	pid="$(tr -dc '0-9' <"$file")"
	rm -f "$file"
	[[ -n "$pid" ]] || return 0
	[[ -r "/proc/$pid/cmdline" ]] || return 0
	cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
	# empty: exiting already (or a zombie)
	[[ -n "$cmd" ]] || return 0
	if [[ "$cmd" != *"$pattern"* ]]; then
		log "pid $pid from $(basename "$file") is now '$cmd', not ours; leaving it alone"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "warning: pid $pid still alive"
}
