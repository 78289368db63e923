#!/bin/bash
# Usage (root): scripts/map-memory.sh WEIR_BINARY CONFIG
# Starts `weir run` in a throwaway network namespace on a veth pair,
# sums the kernel's memlock of every BPF map it holds (/proc/PID/fdinfo),
# and tears everything down (the kernel's figure that `weir check` plans).
set -u
BIN=$1; CFG=$2; NS=wmem-$$
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; sleep 1; ip netns del "$NS" 2>/dev/null; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add d0 type veth peer name d1 && ip -n "$NS" link set d1 up
ip -n "$NS" addr add 198.18.0.10/24 dev d0
ip -n "$NS" link set d0 up
ip netns exec "$NS" "$BIN" run --iface d0 --config "$CFG" >/tmp/$NS.log 2>&1 &
PID=$!
for i in $(seq 1 40); do
  sleep 0.5
  n=$(ls -l /proc/$PID/fd 2>/dev/null | grep -c 'bpf-map')
  [ "$n" -gt 10 ] && grep -q -i "attached\|serving\|listening" /tmp/$NS.log && break
done
sleep 1
total=0; maps=0
for fd in /proc/$PID/fd/*; do
  [ "$(readlink "$fd")" = "anon_inode:bpf-map" ] || continue
  f=/proc/$PID/fdinfo/${fd##*/}
  m=$(awk '/^memlock:/{print $2}' "$f"); id=$(awk '/^map_id:/{print $2}' "$f")
  echo "$id $m"
done | sort -u > /tmp/$NS.maps
maps=$(wc -l < /tmp/$NS.maps); total=$(awk '{s+=$2} END{print s}' /tmp/$NS.maps)
echo "$BIN: $maps maps, memlock $total bytes ($(awk -v t=$total 'BEGIN{printf "%.1f", t/1048576}') MiB)"
tail -3 /tmp/$NS.log | sed 's/^/  log: /'
