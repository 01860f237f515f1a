#!/usr/bin/env bash
# What a server stores while a flood it must shed keeps coming back at once:
#
#   perf/shed-flood.sh [SECONDS] NAME=BINARY...
#
# For each round (REPEAT, default 3) and each binary in turn, three runs of
# wrk -t2 with perf/wrk/fair-batch50.lua, each on a fresh server:
#   - budget: 512 connections against a 4 MiB --memory-budget;
#   - queue:  256 connections against --queue-capacity 4;
#   - none:   256 connections with the defaults, which shed nothing: what the
#             server stores when it need not refuse, to compare with.
# wrk sends each connection's next request as soon as the last is answered,
# refused or not. Printed per run: the requests answered 200 (stored) and 503
# (shed), both from the server's own jimbus_ingest_requests_total, the group
# commits, the server's CPU per stored event, and its `shedding load` log
# lines (docs/perf.md, "Thirty-eighth pass").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=perf/lib.sh
source "$here/lib.sh"
require_tools "wrk" wrk
seconds=8
[[ ${1:-} =~ ^[0-9]+$ ]] && { seconds=$1; shift; }
(( $# > 0 )) || { echo "usage: perf/shed-flood.sh [SECONDS] NAME=BINARY..." >&2; exit 2; }
work=$(mktemp -d)
trap 'stop "${pid:-}"; rm -rf "$work"' EXIT

# flood NAME BINARY LABEL CONNECTIONS FLAG...: one flood on a fresh server.
flood() {
  local name=$1 binary=$2 label=$3 connections=$4
  shift 4
  rm -rf "$work/data"
  start_jimbus "$binary" "$work" --no-ui --log-format json "$@"
  local before after
  before=$(cpu_ticks "$pid")
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/wrk/fair-batch50.lua" \
    "http://127.0.0.1:$http/api/v1/events/batch" >/dev/null 2>&1
  after=$(cpu_ticks "$pid")
  local stored shed commits lines
  stored=$(server_metric 'jimbus_ingest_requests_total{status="200"}')
  shed=$(server_metric 'jimbus_ingest_requests_total{status="503"}')
  commits=$(server_metric jimbus_log_commit_seconds_count)
  lines=$(grep -c '"shedding load"' "$work/server.log" || true)
  stop "$pid"
  pid=
  awk -v n="$name" -v l="$label" -v s="$stored" -v r="$shed" -v c="$commits" -v g="$lines" \
    -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v sec="$seconds" 'BEGIN {
    printf "%-10s %-7s stored %7d (%6.0f/s)  shed %7d  commits %6d  CPU %6.2f us/stored event  log lines %d\n",
      n, l, s, s / sec, r, c, (s ? t / hz * 1e6 / (s * 50) : 0), g
  }'
}

for round in $(seq "${REPEAT:-3}"); do
  for named in "$@"; do
    flood "${named%%=*}" "${named#*=}" budget 512 --memory-budget $((4 << 20))
  done
  for named in "$@"; do
    flood "${named%%=*}" "${named#*=}" queue 256 --queue-capacity 4
  done
  for named in "$@"; do
    flood "${named%%=*}" "${named#*=}" none 256
  done
done
