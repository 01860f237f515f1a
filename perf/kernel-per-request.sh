#!/usr/bin/env bash
# What one answered request costs in the kernel, counted rather than timed:
# system calls, task switches and page faults of a jimbus build under the wrk
# load of perf/wrk-cpu.sh (wrk -t1 -c32), divided by the requests answered
# 2xx. Counts repeat where this machine's CPU time per request does not (it
# moves ±15 % between runs of one build), so a change to the socket path can
# be checked for what it does to the kernel's share (docs/perf.md,
# "Twenty-ninth pass").
#
#   [CLOSE=1] perf/kernel-per-request.sh [JIMBUS_BINARY [SECONDS [SCRIPT]]]
#
# Defaults: target/release/jimbus, 6 seconds, perf/wrk/fair-batch1.lua (the
# one-event request, whose cost is mostly the kernel's). The server runs on
# loopback with a fresh data directory and its defaults; a 2-second wrk run
# warms it first. Needs `perf` (Debian linux-perf) allowed to read the
# raw_syscalls tracepoint (root, or kernel.perf_event_paranoid ≤ 1 and
# tracefs readable).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=perf/lib.sh
source perf/lib.sh
binary=${1:-target/release/jimbus}
seconds=${2:-6}
script=${3:-perf/wrk/fair-batch1.lua}
[[ -x $binary ]] || { echo "$binary is not executable" >&2; exit 2; }
require_tools "wrk linux-perf" wrk perf
work=$(mktemp -d)
trap 'stop "${pid:-}"; rm -rf "$work"' EXIT
# CLOSE=1 sends every request with `Connection: close`, as field mods do, so
# the counts include each connection's accept and close.
wrk_script "$script" "$work/script.lua"
script=$work/script.lua
start_jimbus "$binary" "$work"
url="http://127.0.0.1:$http/api/v1/events/batch"

wrk -t1 -c32 -d2s -s "$script" "$url" >/dev/null
# perf stat ends with the wrk run it was given as its workload; -p counts the
# server's threads, all of them, for that long.
perf stat -x, -e raw_syscalls:sys_enter,context-switches,page-faults -p "$pid" -o "$work/counts" \
  -- wrk -t1 -c32 -d"${seconds}s" -s "$script" "$url" >"$work/wrk"
answered=$(answered_requests <"$work/wrk")
(( answered > 0 )) || { echo "no request was answered 2xx" >&2; cat "$work/wrk" >&2; exit 1; }
awk '/Requests\/sec/ { print "requests/s", $2 }' "$work/wrk"
awk -F, -v n="$answered" '$3 ~ /sys_enter|context-switches|page-faults/ {
  name = $3; sub(/^raw_syscalls:sys_enter$/, "system calls", name)
  sub(/^context-switches$/, "task switches", name); sub(/^page-faults$/, "page faults", name)
  printf "%s per request: %.2f\n", name, $1 / n
}' "$work/counts"
echo "answered requests: $answered"
