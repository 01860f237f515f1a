#!/usr/bin/env bash
# The jimbus-load targets of issue 15 for one jimbus build, each on a fresh
# server on loopback ports picked free:
#
#   perf/targets.sh [JIMBUS_BINARY [JIMBUS_LOAD_BINARY [SECONDS]]]
#
# 1. full rate: 64 sessions as fast as the server answers, 2 raw subscribers;
#    events/s, server CPU per event, peak RSS (VmHWM, target <= 128 MiB), lost.
# 2. half rate: the same with --rate set to half of step 1's events/s, on a
#    fresh server; HTTP p50/p99 per batch (target p99 <= 5 ms).
# 3. JetStream: a nats-server with JetStream on a temporary store (default
#    sync), jimbus --bus on it, 64 sessions as fast as possible, 1 raw
#    subscriber; the subscriber's deliveries/s over load and drain (target
#    >= 200 K/s), beside the ingest rate, so a backlog shows.
#
# Defaults: target/release/jimbus, target/release/jimbus-load (build both with
# `cargo build --release --bin jimbus -p jimbus-net` and
# `cargo build --release -p jimbus-perf --bin jimbus-load`), 10 s per run.
# REPEAT=N (default 1) runs each step N times, back to back, and prints the
# median too (half rate is half of the median full rate). NATS_SERVER names the
# nats-server (default: tools/.venv/bin/nats-server, else PATH). LOAD_ARGS adds
# flags to every jimbus-load run (e.g. "--threads 1" on a small machine). The
# generator shares the machine with the server; the load average is printed
# with each run, and how long each server thread waited for a CPU
# (thread_waits in perf/lib.sh), which is where a latency tail on a small
# shared machine comes from, with each thread's context switches a second
# (thread_switches), the group commits a second over the run, and the share
# of the run's requests the server answered within 2.5, 5 and 10 ms by its
# own clock (answer_shares). 2 GiB are
# written and deleted in the work directory first (prime_page_cache in
# perf/lib.sh), so no run pays for fresh memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jimbus=${1:-target/release/jimbus}
load=${2:-target/release/jimbus-load}
seconds=${3:-10}
repeat=${REPEAT:-1}
for b in "$jimbus" "$load"; do [[ -x $b ]] || { echo "$b is not executable" >&2; exit 2; }; done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

# shellcheck source=perf/lib.sh
source perf/lib.sh
prime_page_cache "$work"
nats=$(nats_server_bin)

load_avg() { uptime | sed 's/.*load average: //'; }

# run NAME LOAD_ARGS -- SERVER_ARGS: a fresh jimbus with SERVER_ARGS, then one
# bounded jimbus-load run writing $work/NAME.json.
run() {
  local name=$1
  shift
  local largs=()
  while [[ $1 != -- ]]; do largs+=("$1"); shift; done
  shift
  local http grpc
  http=$(free_port) grpc=$(free_port)
  "$jimbus" serve --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --data-dir "$work/data-$name" "$@" \
    >"$work/server-$name.log" 2>&1 &
  local pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/ready"
  local before
  before=$(load_avg)
  thread_ticks "$pid" >"$work/$name.threads-before"
  curl -sf "http://127.0.0.1:$http/metrics" >"$work/$name.metrics-before"
  date +%s.%N >"$work/$name.time-before"
  timeout $((seconds * 3 + 120)) "$load" --url "http://127.0.0.1:$http/api/v1/events/batch" \
    --grpc "127.0.0.1:$grpc" --sessions 64 --duration "$seconds" --quiet --server-pid "$pid" \
    --json "$work/$name.json" ${LOAD_ARGS:-} "${largs[@]}" >"$work/load-$name.txt" 2>&1 ||
    { echo "jimbus-load failed for $name:" >&2; tail -20 "$work/load-$name.txt" >&2; return 1; }
  thread_ticks "$pid" >"$work/$name.threads-after"
  curl -sf "http://127.0.0.1:$http/metrics" >"$work/$name.metrics-after"
  date +%s.%N >"$work/$name.time-after"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$work/data-$name"
  echo "load average before / after: $before / $(load_avg)" >"$work/$name.load"
}

# show NAME JQ_FILTER: one line of figures from a report.
show() {
  printf '%-14s %s   [load avg %s]\n' "$1" "$(python3 - "$work/$1.json" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s, h = r["server"], r["http"]
f = {
    "eps": r["events_per_s"], "cpu": s.get("cpu_us_per_event") or 0, "hwm": (s.get("vm_hwm_kib") or 0) / 1024,
    "rss": (s.get("rss_peak_sampled_kib") or 0) / 1024, "p50": h["latency_us"].get("p50", 0) / 1000,
    "p99": h["latency_us"].get("p99", 0) / 1000, "lost": r["lost"], "err": r["errors"],
    "dps": r["deliveries_per_s"], "drain": r["drain_s"], "acked": r["accepted"],
}
print(sys.argv[2].format(**f))
EOF
)" "$(sed 's/.*: //' "$work/$1.load")"
  printf '%-14s %s\n' "" "$(thread_waits "$work/$1.threads-before" "$work/$1.threads-after")"
  local seconds
  seconds=$(cat "$work/$1.time-before" "$work/$1.time-after" | awk 'NR == 1 { t = $1 } END { print $1 - t }')
  printf '%-14s %s\n' "" "$(thread_switches "$work/$1.threads-before" "$work/$1.threads-after" "$seconds")"
  cat <(commit_count "$work/$1.metrics-before") <(commit_count "$work/$1.metrics-after") | awk -v s="$seconds" '
    NR == 1 { c = $1; r = $2 } NR == 2 && $1 > c {
      printf "%-14s group commits: %.0f a second over the run (%.1f s), %.1f records each\n", "", ($1 - c) / s, s, ($2 - r) / ($1 - c)
    }'
  local shares
  shares=$(answer_shares <(answer_buckets "$work/$1.metrics-before") <(answer_buckets "$work/$1.metrics-after"))
  if [[ -n $shares ]]; then printf '%-14s %s\n' "" "$shares"; fi
}

median_of() { # median_of KEY NAMES...: the median of one report figure over runs
  python3 - "$work" "$@" <<'EOF'
import json, statistics, sys
work, key, names = sys.argv[1], sys.argv[2], sys.argv[3:]
get = {"eps": lambda r: r["events_per_s"], "hwm": lambda r: r["server"]["vm_hwm_kib"] / 1024,
       "cpu": lambda r: r["server"]["cpu_us_per_event"], "p99": lambda r: r["http"]["latency_us"]["p99"] / 1000,
       "p50": lambda r: r["http"]["latency_us"]["p50"] / 1000, "dps": lambda r: r["deliveries_per_s"]}[key]
print(round(statistics.median(get(json.load(open(f"{work}/{n}.json"))) for n in names), 2))
EOF
}

full_fmt='{eps:,.0f} events/s, {cpu:.2f} us CPU/event, VmHWM {hwm:.1f} MiB (sampled {rss:.1f}), HTTP p50/p99 {p50:.1f}/{p99:.1f} ms, lost {lost}, errors {err}'
echo "jimbus $jimbus, jimbus-load $load ${LOAD_ARGS:-}, ${seconds}s per run, $repeat run(s) per step"
echo "== 1. full rate, 64 sessions, 2 raw subscribers"
full=()
for i in $(seq "$repeat"); do
  run "full$i" --subscribers 2 -- --fsync batch
  show "full$i" "$full_fmt"
  full+=("full$i")
done
rate=$(python3 -c "print(int($(median_of eps "${full[@]}") / 2))")

echo "== 2. half rate: --rate $rate, 64 sessions, 2 raw subscribers"
half=()
for i in $(seq "$repeat"); do
  run "half$i" --subscribers 2 --rate "$rate" -- --fsync batch
  show "half$i" "$full_fmt"
  half+=("half$i")
done

js=()
if [[ -n $nats ]]; then
  echo "== 3. JetStream ($("$nats" --version)), default sync, 64 sessions, 1 raw subscriber"
  for i in $(seq "$repeat"); do
    port=$(free_port)
    "$nats" -js -sd "$work/nats$i" -a 127.0.0.1 -p "$port" >"$work/nats$i.log" 2>&1 &
    npid=$!
    wait_listening "$port"
    run "js$i" --subscribers 1 --drain-timeout 60 -- --bus "nats://127.0.0.1:$port"
    show "js$i" '{dps:,.0f} deliveries/s to the subscriber (over load + {drain:.1f} s drain), ingest {eps:,.0f} events/s, lost {lost}, errors {err}'
    kill "$npid"
    wait "$npid" 2>/dev/null || true
    rm -rf "$work/nats$i"
    js+=("js$i")
  done
else
  echo "== 3. JetStream skipped: no nats-server (tools/.venv/bin, PATH or NATS_SERVER)"
fi

echo
echo "== medians of $repeat run(s)"
echo "full rate: $(median_of eps "${full[@]}") events/s, $(median_of cpu "${full[@]}") us CPU/event, VmHWM $(median_of hwm "${full[@]}") MiB (target <= 128)"
echo "half rate ($rate events/s): HTTP p50 $(median_of p50 "${half[@]}") ms, p99 $(median_of p99 "${half[@]}") ms (target <= 5)"
if ((${#js[@]})); then
  echo "JetStream subscriber: $(median_of dps "${js[@]}") deliveries/s (target >= 200000), ingest $(median_of eps "${js[@]}") events/s"
fi
