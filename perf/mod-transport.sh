#!/usr/bin/env bash
# Server CPU per request for small batches sent the field mods' way (a
# connection per request, socket.http) and the mod's way (one kept-alive
# connection per game, bmcp.transport.keepalive), same server, rounds
# interleaved:
#
#   perf/mod-transport.sh [JIMBUS_BINARY [CLIENTS [REQUESTS]]]
#
# CLIENTS LuaJIT processes (default 8, games posting at once) each send
# REQUESTS one-event batches (default 2000) one after the other, with
# mod/bench/transport_cost.lua. Server CPU = utime + stime from /proc/PID/stat
# over the set; REPEAT rounds (default 3). Needs luajit and lua-socket.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source perf/lib.sh
binary=${1:-target/release/jimbus}
clients=${2:-8}
requests=${3:-2000}
repeat=${REPEAT:-3}
[[ -x $binary ]] || { echo "$binary is not executable (cargo build --release --bin jimbus -p jimbus-net)" >&2; exit 2; }
work=$(mktemp -d)
trap 'stop "${pid:-}"; rm -rf "$work"' EXIT
prime_page_cache "$work"
start_jimbus "$binary" "$work" --log-format compact
url="http://127.0.0.1:$http/api/v1/events/batch"
hz=$(getconf CLK_TCK)

one_set() { # one_set MODE: prints MODE, answered requests, server CPU us per request
  local mode=$1 before after answered=0 started=$SECONDS pids=()
  before=$(cpu_ticks "$pid")
  for c in $(seq "$clients"); do
    luajit mod/bench/transport_cost.lua "$url" "$requests" "$mode" >"$work/client.$c" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  after=$(cpu_ticks "$pid")
  for c in $(seq "$clients"); do answered=$(( answered + $(awk '{ print $2 }' "$work/client.$c") )); done
  awk -v m="$mode" -v a="$answered" -v t=$((after - before)) -v hz="$hz" -v s=$((SECONDS - started)) 'BEGIN {
    printf "%-5s answered %d in %d s; server CPU %.2f s = %.1f us per request\n", m, a, s, t / hz, (a ? t / hz * 1e6 / a : 0)
  }'
}

for round in $(seq "$repeat"); do
  echo "round $round"
  one_set field
  one_set mod
done
