#!/usr/bin/env bash
# How often each shard sleeps per group commit: a jimbus build under the wrk
# load of perf/wrk-cpu.sh (wrk -t1 -c32), counting every shard thread's
# voluntary context switches (/proc/PID/task/TID/status) over the run and
# dividing by the commits it made (jimbus_log_commit_records_count). A shard
# sleeps while nothing is ready: each hand-over to io_uring's worker (a
# commit's write, its sync) is a wait the pump may sleep through.
#
#   perf/commit-switches.sh [JIMBUS_BINARY [SECONDS [SCRIPT]]]
#
# Defaults: target/release/jimbus, 5 seconds, perf/wrk/fair-batch50.lua. The
# server runs on loopback with a fresh data directory and its defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=perf/lib.sh
source perf/lib.sh
binary=${1:-target/release/jimbus}
seconds=${2:-5}
script=${3:-perf/wrk/fair-batch50.lua}
[[ -x $binary ]] || { echo "$binary is not executable" >&2; exit 2; }
work=$(mktemp -d)
trap 'stop "${pid:-}"; rm -rf "$work"' EXIT
start_jimbus "$binary" "$work"

# switches: "SHARD COUNT" per shard (a shard's threads summed), sorted.
switches() {
  local task
  for task in /proc/"$pid"/task/*; do
    [[ $(<"$task/comm") == shard-* ]] || continue
    echo "$(<"$task/comm") $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$task/status")"
  done | awk '{ sum[$1] += $2 } END { for (s in sum) print s, sum[s] }' | sort
}
# The group commits made so far: 0 before the first, when the metric is not there yet.
before=$(switches) first=$(server_metric jimbus_log_commit_records_count)
wrk -t1 -c32 -d"${seconds}s" -s "$script" "http://127.0.0.1:$http/api/v1/events/batch" | awk '/Requests\/sec/ { print "requests/s", $2 }'
after=$(switches) last=$(server_metric jimbus_log_commit_records_count)
made=$(( ${last%.*} - ${first%.*} ))
echo "commits $made"
join <(echo "$before") <(echo "$after") |
  awk -v made="$made" '{ printf "%s: %.2f voluntary context switches per commit\n", $1, (made ? ($3 - $2) / made : 0) }'
