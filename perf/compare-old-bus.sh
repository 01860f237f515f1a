#!/usr/bin/env bash
# jimbus against the old jimbot event bus, one after the other on this machine,
# with the identical wrk load (perf/wrk-cpu.sh: wrk -t1 -c32, the 50-event
# batch of perf/wrk/fair-batch50.lua), reporting events/s and server CPU per
# acknowledged event for each, and their ratios.
#
#   perf/compare-old-bus.sh OLD_BUS_BINARY [SECONDS]
#
# OLD_BUS_BINARY is the old bus's release build: the public repository
# spencerduncan/jimbot, folder services/event-bus-rust, built there with
# `cargo build --release` (its binary is target/release/event-bus-rust). It is
# not part of this repository and nothing here builds it. It listens on the
# ports given through EVENT_BUS__SERVER__* below; its metrics port is fixed at
# 9090, which must be free. jimbus runs from target/release/jimbus (build it
# with `cargo build --release --bin jimbus`) on a fresh data directory with its
# defaults (--fsync batch).
set -euo pipefail
old=${1:?path of the old bus binary}
seconds=${2:-8}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() {
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2
  return 1
}

measure() {
  local name=$1 pid=$2 url=$3
  echo "== $name (pid $pid)"
  perf/wrk-cpu.sh "$pid" "$url" "$seconds" | tee "$work/$name.txt" | tail -1
  echo "peak RSS $(awk '/VmHWM/ { print $2, $3 }' "/proc/$pid/status")"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

target/release/jimbus serve --http 127.0.0.1:18080 --grpc 127.0.0.1:15051 --data-dir "$work/data" \
  >"$work/jimbus.log" 2>&1 &
jimbus=$!
wait_ready http://127.0.0.1:18080/ready
measure jimbus "$jimbus" http://127.0.0.1:18080/api/v1/events/batch

EVENT_BUS__SERVER__REST__HOST=127.0.0.1 EVENT_BUS__SERVER__REST__PORT=18090 EVENT_BUS__SERVER__GRPC__PORT=15061 \
  "$old" >"$work/old.log" 2>&1 &
oldpid=$!
wait_ready http://127.0.0.1:18090/health
measure old-bus "$oldpid" http://127.0.0.1:18090/api/v1/events/batch

field() { awk -v n="$2" '/acknowledged/ { print $n }' "$work/$1.txt"; }
awk -v a="$(field jimbus 5)" -v b="$(field old-bus 5)" -v c="$(field jimbus 12)" -v d="$(field old-bus 12)" 'BEGIN {
  printf "jimbus / old bus: %.2fx the events/s, %.2fx the CPU per event\n", a / b, c / d
}'
