#!/usr/bin/env bash
# Instructions per event on the CPU-bound part of the ingest path
# (decode, admission, client view, dedup key, sequence, stamps, topic, record
# framing, aggregation on a simulated clock), counted by callgrind, which
# repeats to a few instructions on a noisy machine where wall time does not:
#
#   perf/callgrind-ingest.sh [INGEST_COUNT_BINARY]
#
# It runs `ingest_count N --cpu` under callgrind for two request counts and
# divides the difference of the instruction totals by the difference of the
# events, so start-up and warm-up cancel out. Default binary:
# target/release/examples/ingest_count (build it with
# `cargo build --release -p jimbus-perf --example ingest_count`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary=${1:-target/release/examples/ingest_count}
[[ -x $binary ]] || { echo "$binary is not executable" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
small=200 large=1200 events_per_request=50
total() { # total REQUESTS: the instructions callgrind counted for one run
  valgrind --tool=callgrind --callgrind-out-file="$work/out.$1" "$binary" "$1" --cpu >"$work/run.$1" 2>&1
  awk '/^summary:/ { print $2 }' "$work/out.$1"
}
a=$(total "$small") b=$(total "$large")
echo "$binary: $a instructions for $small requests, $b for $large ($events_per_request events each)"
python3 -c "print(f'{($b - $a) / (($large - $small) * $events_per_request):,.0f} instructions per event')"
