#!/usr/bin/env bash
# One or more jimbus builds against the old jimbot event bus, one after the
# other on this machine, with the identical wrk load (perf/wrk-cpu.sh: wrk -t1
# -c32, the 50-event batch of perf/wrk/fair-batch50.lua), reporting for each
# server events/s, server CPU per acknowledged event and peak RSS, and their
# ratios against the old bus.
#
#   perf/compare-old-bus.sh OLD_BUS_BINARY [SECONDS]
#   JIMBUS_BINS="before=/path/jimbus-before after=target/release/jimbus" REPEAT=3 \
#       perf/compare-old-bus.sh OLD_BUS_BINARY [SECONDS]
#
# JIMBUS_BINS lists the jimbus binaries to measure, separated by spaces, each
# `LABEL=PATH` or a bare PATH (labelled by its file name); the default is
# target/release/jimbus (build it with `cargo build --release --bin jimbus`).
# Each runs on a fresh data directory with its defaults (--fsync batch), after
# 2 GiB written and deleted there first (prime_page_cache in perf/lib.sh).
# REPEAT (default 1) runs the whole set that many times, interleaved (every
# jimbus, then the old bus, then again), and the table shows the median of each
# column; every single run is printed before it. SECONDS (default 8) is the
# length of each wrk run.
#
# SIZES (default 50) lists batch sizes to run, from 1, 10 and 50: the bodies
# of perf/wrk/fair-batchN.lua, the first N events of the 50-event batch. Each
# round runs every size for every server. With more than one size, a last
# table fits each server's median CPU per answered request to a line over the
# sizes: a fixed cost per request (the transport, the request's own work,
# waiting for its commit) and a cost per event. CLOSE=1 sends every request
# with `Connection: close`, as a field mod's LuaSocket does (one connection per
# request), so the fixed cost includes a TCP connection's setup and teardown.
#
# OLD_BUS_BINARY is the old bus's release build: the public repository
# spencerduncan/jimbot, folder services/event-bus-rust, built there with
# `cargo build --release` (its build script also needs the repository's
# jimbot/proto folder beside services/; its binary is
# target/release/event-bus-rust). It is not part of this repository and
# nothing here builds it. It reads config/default.yaml (and config/dev.yaml)
# relative to its working directory, so it runs in OLD_BUS_DIR (default: the
# folder two levels above the binary, i.e. services/event-bus-rust when the
# binary is still in its target/release; give OLD_BUS_DIR for a copy). Its
# default log filter writes a JSON line at debug level per request; OLD_BUS_LOG
# (its RUST_LOG, default warn) turns that off so that neither server logs per
# request (OLD_BUS_LOG=event_bus_rust=debug,tower_http=debug is its own
# default). It listens on the ports given through EVENT_BUS__SERVER__* below;
# its metrics port is fixed at 9090, which must be free. Every other port is a
# loopback port picked free at each start.
#
# FLOOR names perf/examples/http_floor's binary (build it with `cargo build
# --release -p jimbus-perf --example http_floor`): when set, each round also
# measures it under the same load, as the row "floor": a server that reads
# each request whole and answers it without looking at the events, so its
# CPU per event is what this transport costs on this machine before any
# server does any work.
set -euo pipefail
old=${1:?path of the old bus binary}
seconds=${2:-8}
repeat=${REPEAT:-1}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x $old ]] || { echo "old bus binary $old is not executable" >&2; exit 2; }
old_dir=${OLD_BUS_DIR:-$(dirname "$old")/../..}
[[ -f $old_dir/config/default.yaml ]] ||
  { echo "no config/default.yaml in $old_dir: set OLD_BUS_DIR to the old bus's services/event-bus-rust" >&2; exit 2; }
old_dir=$(cd "$old_dir" && pwd)
old=$(cd "$(dirname "$old")" && pwd)/$(basename "$old")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

labels=()
paths=()
for spec in ${JIMBUS_BINS:-target/release/jimbus}; do
  if [[ $spec == *=* ]]; then label=${spec%%=*} path=${spec#*=}; else label=$(basename "$spec") path=$spec; fi
  [[ -x $path ]] || { echo "jimbus binary $path ($label) is not executable" >&2; exit 2; }
  labels+=("$label")
  paths+=("$path")
done

# shellcheck source=perf/lib.sh
source perf/lib.sh

# The wrk script of each size: the body's file, plus the header for CLOSE=1.
sizes=${SIZES:-50}
close=${CLOSE:-0}
for size in $sizes; do
  [[ -f perf/wrk/fair-batch$size.lua ]] || { echo "no perf/wrk/fair-batch$size.lua: SIZES are among 1 10 50" >&2; exit 2; }
  wrk_script "perf/wrk/fair-batch$size.lua" "$work/batch$size.lua"
done

# measure NAME RUN PID URL: one wrk run of the round's $size, one line
# "NAME RUN SIZE events/s us/event VmHWM-KiB us/request" in results.
measure() {
  local name=$1 run=$2 pid=$3 url=$4 out=$work/$1.$2.$size.txt
  echo "== $name, run $run, $size-event batches (pid $pid), $(uptime | sed 's/.*load average/load average/')"
  perf/wrk-cpu.sh "$pid" "$url" "$seconds" "$work/batch$size.lua" >"$out"
  tail -4 "$out"
  local hwm
  hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
  echo "peak RSS $hwm kB"
  stop "$pid"
  awk -v n="$name" -v r="$run" -v z="$size" -v h="$hwm" '/acknowledged/ { print n, r, z, $5, $12, h, $16 }' "$out" >>"$work/results"
}

run_jimbus() {
  local label=$1 path=$2 run=$3 http grpc
  http=$(free_port) grpc=$(free_port)
  "$path" serve --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --data-dir "$work/data-$label-$run" \
    >"$work/$label.$run.log" 2>&1 &
  local pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/ready"
  measure "$label" "$run" "$pid" "http://127.0.0.1:$http/api/v1/events/batch"
  rm -rf "$work/data-$label-$run"
}

run_old() {
  local run=$1 http grpc
  http=$(free_port) grpc=$(free_port)
  if (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then echo "port 9090 (the old bus's metrics) is taken" >&2; return 1; fi
  # SHUTDOWN_TIMEOUT_SECS=1 (its least): on SIGTERM it sleeps that long before exiting (30 s by default).
  (cd "$old_dir" && RUST_LOG=${OLD_BUS_LOG:-warn} EVENT_BUS__SERVER__SHUTDOWN_TIMEOUT_SECS=1 EVENT_BUS__SERVER__REST__HOST=127.0.0.1 \
    EVENT_BUS__SERVER__REST__PORT=$http EVENT_BUS__SERVER__GRPC__HOST=127.0.0.1 EVENT_BUS__SERVER__GRPC__PORT=$grpc \
    exec "$old") >"$work/old-bus.$run.log" 2>&1 &
  local pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/health"
  measure old-bus "$run" "$pid" "http://127.0.0.1:$http/api/v1/events/batch"
}

run_floor() {
  local run=$1 http
  http=$(free_port)
  "$floor" "127.0.0.1:$http" >"$work/floor.$run.log" 2>&1 &
  local pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/ready"
  measure floor "$run" "$pid" "http://127.0.0.1:$http/api/v1/events/batch"
}

floor=${FLOOR:-}
[[ -z $floor || -x $floor ]] || { echo "FLOOR $floor is not executable" >&2; exit 2; }
prime_page_cache "$work"
for run in $(seq "$repeat"); do
  for size in $sizes; do
    for i in "${!labels[@]}"; do run_jimbus "${labels[$i]}" "${paths[$i]}" "$run"; done
    run_old "$run"
    [[ -z $floor ]] || run_floor "$run"
  done
done

echo
echo "every run (server run batch-size events/s us-per-event VmHWM-KiB us-per-request):"
cat "$work/results"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
col() { awk -v n="$1" -v z="$2" -v c="$3" '$1 == n && $3 == z { print $c }' "$work/results" | median; }
servers=("${labels[@]}" old-bus ${floor:+floor})
closing=$([[ $close == 1 ]] && echo ", one connection per request (CLOSE=1)" || true)
for size in $sizes; do
  echo
  echo "median of $repeat run(s), wrk -t1 -c32 for ${seconds}s, $size-event batches${closing}:"
  ob_rate=$(col old-bus "$size" 4) ob_cpu=$(col old-bus "$size" 5) ob_rss=$(col old-bus "$size" 6)
  printf '| %-16s | %10s | %12s | %12s | %16s | %18s | %14s |\n' server events/s "CPU us/event" "peak RSS MiB" "events/s vs old" "old CPU/evt / this" "RSS vs old"
  echo "|------------------|------------|--------------|--------------|------------------|--------------------|----------------|"
  for name in "${servers[@]}"; do
    awk -v n="$name" -v r="$(col "$name" "$size" 4)" -v c="$(col "$name" "$size" 5)" -v m="$(col "$name" "$size" 6)" \
      -v orate="$ob_rate" -v ocpu="$ob_cpu" -v orss="$ob_rss" 'BEGIN {
      printf "| %-16s | %10.0f | %12.2f | %12.1f | %15.2fx | %17.2fx | %13.2fx |\n", n, r, c, m / 1024, r / orate, ocpu / c, m / orss
    }'
  done
done
echo "(issue 15's targets, at 50-event batches: events/s vs old >= 3x, old CPU per event / this >= 3x and <= 2.0 us per event)"
[[ $(wc -w <<<"$sizes") -gt 1 ]] || exit 0
echo
echo "server CPU per answered request against batch size (medians), fitted by least squares to fixed + per-event:"
header="| server          "
for size in $sizes; do header+=$(printf ' | %10s' "$size-event"); done
echo "$header | fixed us/request | us per event |"
echo "$header |" | sed "s/[^|]/-/g" | sed "s/|$/|------------------|--------------|/"
for name in "${servers[@]}"; do
  for size in $sizes; do echo "$size $(col "$name" "$size" 7)"; done | awk -v n="$name" '
    { sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2; cells = cells sprintf(" | %10.1f", $2) }
    END { slope = (NR * sxy - sx * sy) / (NR * sxx - sx * sx); printf "| %-16s%s | %16.1f | %12.2f |\n", n, cells, (sy - slope * sx) / NR, slope }'
done
