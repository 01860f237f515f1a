#!/usr/bin/env bash
# Events/s and server CPU time per acknowledged event under wrk, for any server
# that takes the field mod's batch (jimbus, or the old jimbot bus):
#
#   perf/wrk-cpu.sh PID URL [SECONDS [SCRIPT]]
#
# PID is the running server's process id, URL its batch endpoint. The load is
# SCRIPT, by default perf/wrk/fair-batch50.lua (one 50-event batch of types
# both servers accept; fair-batch10.lua and fair-batch1.lua hold its first 10
# and its first event), wrk -t1 -c32. Server CPU = utime + stime from
# /proc/PID/stat over the run. Events acknowledged = 2xx answers x the events
# in SCRIPT's body (wrk counts non-2xx apart), per second of wrk's own measured
# run time; the last line also gives the server CPU per answered request.
# The line before it gives the machine's busy CPU over the run (every core,
# /proc/stat) less the server's and wrk's own, per event: the kernel's
# worker threads and interrupts the server's I/O causes (and anything else
# running, so run on an idle machine). A server whose writes complete in the
# kernel's workers rather than its own threads shows their cost there.
# The line before that splits the server's CPU by thread name (thread_split
# in perf/lib.sh): for jimbus, the shards (shard-N), their io_uring workers,
# the gRPC edge; with one derived session, as this load has, one shard owns
# it all. Then how long each thread was runnable but waiting for a CPU
# (thread_waits): wrk shares the machine, so a shard waits while it runs.
# For jimbus, the line after it gives each shard's open HTTP connections
# halfway through the run (`jimbus_http_connections`; the sample's own
# request is one of them): the kernel spreads wrk's connections over the
# shards' sockets by their ports, and a request read on a shard that does
# not own its session costs a hop, so a run's spread can be checked against
# it (docs/perf.md, "Forty-third pass": over 28 runs it did not explain the
# spread, which came from outside the process).
set -euo pipefail
pid=${1:?server pid}
url=${2:?batch URL, e.g. http://127.0.0.1:8080/api/v1/events/batch}
seconds=${3:-8}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=perf/lib.sh
source "$here/lib.sh"
script=${4:-$here/wrk/fair-batch50.lua}
require_tools "wrk time" wrk /usr/bin/time
# Each event of the field mod's batch has one "type" key, escaped in the Lua string.
per_request=$(grep -o '\\"type\\":' "$script" | wc -l)
(( per_request > 0 )) || { echo "no events in $script's body" >&2; exit 2; }
threads=$(mktemp -d)
trap 'rm -rf "$threads"' EXIT
thread_ticks "$pid" >"$threads/before"
before=$(cpu_ticks "$pid") machine_before=$(machine_ticks)
# A sample halfway through, while wrk's connections are open (the old bus has no such metric).
(sleep "$(awk -v s="$seconds" 'BEGIN { print s / 2 }')"
  curl -s "${url%%/api/*}/metrics" | awk '/^jimbus_http_connections\{/ { match($0, /shard="[0-9]+"/)
    line = line sprintf(" %s %s", substr($0, RSTART + 7, RLENGTH - 8), $NF) }
    END { if (line != "") print "open HTTP connections, by shard:" line }' >"$threads/split") &
out=$(/usr/bin/time -f '%U %S' -o "$threads/wrk-time" wrk -t1 -c32 -d"${seconds}s" -s "$script" "$url")
wait
after=$(cpu_ticks "$pid") machine_after=$(machine_ticks)
thread_ticks "$pid" >"$threads/after"
echo "$out"
thread_split "$threads/before" "$threads/after" $((after - before))
thread_waits "$threads/before" "$threads/after"
cat "$threads/split"
elapsed=$(awk '/requests in/ { sub(/,$/, "", $4); v = $4 + 0
  if ($4 ~ /ms$/) v /= 1000; else if ($4 ~ /m$/) v *= 60; else if ($4 ~ /h$/) v *= 3600; print v }' <<<"$out")
answered=$(answered_requests <<<"$out")
events=$(( answered * per_request ))
hz=$(getconf CLK_TCK)
awk -v e="$events" -v m=$((machine_after - machine_before)) -v t=$((after - before)) -v hz="$hz" \
  -v w="$(awk '{ print $1 + $2 }' "$threads/wrk-time")" 'BEGIN {
  outside = (m - t) / hz - w
  printf "machine CPU outside the server and wrk: %.2f s = %.2f us per event\n", outside, (e ? outside * 1e6 / e : 0)
}'
awk -v e="$events" -v a="$answered" -v t=$((after - before)) -v hz="$hz" -v s="${elapsed:-$seconds}" 'BEGIN {
  cpu = t / hz
  printf "acknowledged %d events = %.0f events/s; server CPU %.2f s = %.2f us per event, %.1f us per request\n",
    e, e / s, cpu, (e ? cpu * 1e6 / e : 0), (a ? cpu * 1e6 / a : 0)
}'
