#!/usr/bin/env bash
# Frees that cross threads, per answered request: how often a jimbus build
# frees memory that another of its threads allocated, under the wrk load of
# perf/wrk-cpu.sh (wrk -t1 -c32, 50-event batches by default). Issue 15 asks
# that decoded events stay on the shard that decoded them; mimalloc takes
# such a free onto the owning page's thread-free list, and the thread that
# allocated the block collects it later, at its next allocation from that
# page (docs/perf.md, "Thirty-second pass"). Counted, not timed: the count
# repeats where this machine's CPU time does not.
#
#   perf/cross-thread-frees.sh [JIMBUS_BINARY [SECONDS [SCRIPT]]]
#
# Defaults: target/release/jimbus, 3 seconds, perf/wrk/fair-batch50.lua. It
# places uprobes on mimalloc's two cross-thread branches (mi_free_block_mt,
# inlined in mi_free and found through the build's debug info, and
# mi_free_generic_mt), counts them with perf stat while wrk runs, and
# removes them. A uprobe costs microseconds, so the
# server answers a fraction of its usual rate while it is counted. Needs root
# and `perf` (Debian linux-perf) with uprobes, and binutils (objdump,
# addr2line); the release profile keeps the debug info it reads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=perf/lib.sh
source perf/lib.sh
binary=$(realpath "${1:-target/release/jimbus}")
seconds=${2:-3}
script=${3:-perf/wrk/fair-batch50.lua}
[[ -x $binary ]] || { echo "$binary is not executable" >&2; exit 2; }
require_tools "wrk linux-perf" wrk perf
# Where mi_free reaches the inlined mi_free_block_mt: the first of its
# instructions whose inline chain (addr2line -i) names that function.
read -r start size < <(nm -S "$binary" | awk '$4 == "mi_free" { print $1, $2; exit }')
[[ -n ${start:-} ]] || { echo "no mi_free in $binary (is mimalloc linked in?)" >&2; exit 2; }
branch=$(objdump -d --no-show-raw-insn --start-address="0x$start" --stop-address=$((0x$start + 0x$size)) "$binary" |
  awk '/^ *[0-9a-f]+:/ { sub(":", "", $1); print "0x" $1 }' |
  addr2line -a -f -i -e "$binary" | awk '/^0x/ { at = $1; next } /mi_free_block_mt/ { print at; exit }')
[[ -n $branch ]] || { echo "no inlined mi_free_block_mt in $binary's mi_free (mimalloc v3 with debug info?)" >&2; exit 2; }
offset=$(printf '0x%x' $(( branch - 0x$start )))
group=jimbus_xfree_$$
work=$(mktemp -d)
trap 'stop "${pid:-}"; perf probe -q -d "$group:*" 2>/dev/null || true; rm -rf "$work"' EXIT
perf probe -q -x "$binary" -a "$group:block_mt=mi_free+$offset" -a "$group:generic_mt=mi_free_generic_mt"
start_jimbus "$binary" "$work"
url="http://127.0.0.1:$http/api/v1/events/batch"

wrk -t1 -c32 -d2s -s "$script" "$url" >/dev/null
perf stat -x, -e "$group:block_mt" -e "$group:generic_mt" -p "$pid" -o "$work/counts" \
  -- wrk -t1 -c32 -d"${seconds}s" -s "$script" "$url" >"$work/wrk"
answered=$(answered_requests <"$work/wrk")
(( answered > 0 )) || { echo "no request was answered 2xx" >&2; cat "$work/wrk" >&2; exit 1; }
awk -F, -v n="$answered" '$3 ~ /block_mt|generic_mt/ { frees += $1 }
  END { printf "cross-thread frees per request: %.2f (%d in %d answered requests)\n", frees / n, frees, n }' "$work/counts"
