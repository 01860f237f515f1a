#!/usr/bin/env bash
# Durability side by side (docs/perf.md, issue 8): the same jimbus-load run
# against the embedded log (--fsync batch, --fsync never) and against a single
# nats-server with file storage (sync_interval: always, and the default), each
# fronted by the same release jimbus. Needs release builds of jimbus and
# jimbus-load, and nats-server on PATH (tools/.venv/bin after install-test-deps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

printf 'listen: 127.0.0.1:14222\njetstream { store_dir: "%s/always", sync_interval: always }\n' "$work" > "$work/always.conf"
printf 'listen: 127.0.0.1:14223\njetstream { store_dir: "%s/default" }\n' "$work" > "$work/default.conf"
nats-server -c "$work/always.conf" > "$work/nats-always.log" 2>&1 &
nats-server -c "$work/default.conf" > "$work/nats-default.log" 2>&1 &

run() {
  local name=$1
  shift
  target/release/jimbus serve --http 127.0.0.1:18080 --grpc 127.0.0.1:15051 --data-dir "$work/data-$name" "$@" \
    > "$work/server-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready > /dev/null && break; sleep 0.1; done
  echo "== $name"
  target/release/jimbus-load --url http://127.0.0.1:18080/api/v1/events/batch --grpc 127.0.0.1:15051 \
    --sessions 64 --duration 10 --subscribers 1 --quiet --server-pid "$pid" --json "$work/$name.json"
  kill "$pid"
  wait "$pid" || true
}

run embedded-batch --fsync batch
run embedded-never --fsync never
run nats-always --bus nats://127.0.0.1:14222
run nats-default --bus nats://127.0.0.1:14223
