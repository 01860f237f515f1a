#!/usr/bin/env bash
# The deploy suite: every deployment file is run through the tool that reads it.
#
#   tools/suites.d/deploy.sh [PART...]     default: every part, in this order
#
#   compose     docker-compose config per profile + check_compose.py; check_env.py (every JIMBUS_*
#               of compose, Kubernetes and systemd is a flag's variable); nats-server -t
#   systemd     systemd-analyze verify and security; the binary under strace vs the unit's filter
#   ansible     ansible-lint, --syntax-check, a real run into a temporary root, idempotence,
#               the installed binary serving with the installed config
#   kubernetes  sync-configs.sh --check; kubernetes-validate + wiring (validate_k8s.py)
#   openapi     schemathesis against the running server; GET /openapi.yaml is the file
#   devenv      tools/dev-env.sh up, publish, tail, Prometheus query, status, down
#   docs        docs/architecture.md's Mermaid diagrams rendered by Mermaid in headless Chromium;
#               every figure of docs/tuning.md is in docs/perf.md; doc links and paths exist
#   configdoc   tools/gen-config-doc.sh --check
#
# Gets ROOT, JIMBUS_BIN, PY and PATH (tools/.venv/bin first) from tools/test-all.sh;
# needs tools/deps.d/deploy.{apt,pip}. Prints "deploy: N passed, M failed".
set -uo pipefail

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$ROOT" || exit 1
JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
PY="${PY:-$ROOT/tools/.venv/bin/python}"
export PATH="$ROOT/tools/.venv/bin:$PATH"
TESTS="$ROOT/tools/tests/deploy"
WORK="$(mktemp -d -t jimbus-deploy.XXXXXX)"
PIDS=()
TEST_USER=""

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  [[ -f "$WORK/devenv-state/ports.env" ]] && tools/dev-env.sh down --state-dir "$WORK/devenv-state" >/dev/null 2>&1
  if [[ -n "$TEST_USER" ]]; then
    userdel "$TEST_USER" 2>/dev/null
    groupdel "$TEST_USER" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "deploy: FAIL: $*" >&2; return 1; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_http() { # URL SECONDS [PID]
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null && { fail "process $3 exited before $1 answered"; return 1; }
    ((SECONDS < deadline)) || { fail "$1 did not answer within $2 s"; return 1; }
    sleep 0.2
  done
}

# Starts BINARY serve ARGS... on free loopback ports; sets HTTP and SERVER_PID.
start_server() {
  local binary="$1" log="$2"
  shift 2
  HTTP="$(free_port)"
  GRPC="$(free_port)"
  "$binary" serve --http "127.0.0.1:$HTTP" --grpc "127.0.0.1:$GRPC" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_http "http://127.0.0.1:$HTTP/ready" 60 "$SERVER_PID" || { tail -n 20 "$log" >&2; return 1; }
}

stop_server() { # drains on SIGTERM and must exit 0
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || fail "jimbus exited with status $? after SIGTERM"
}

part_compose() {
  local profiles
  docker-compose version >/dev/null || { fail "docker-compose is not installed"; return 1; }
  (
    cd deploy/compose || exit 1
    for profiles in "" "--profile nats" "--profile learning" "--profile nats --profile learning"; do
      # shellcheck disable=SC2086
      docker-compose $profiles config -q || { fail "docker-compose $profiles config"; exit 1; }
    done
    docker-compose --profile nats --profile learning config >"$WORK/compose.yaml" || exit 1
    "$PY" "$TESTS/check_compose.py" . <"$WORK/compose.yaml"
  ) || return 1
  # Every JIMBUS_* a deploy file sets is a real setting; Prometheus and Grafana name compose services.
  "$PY" "$TESTS/check_env.py" "$JIMBUS_BIN" "$WORK/compose.yaml" || return 1
  # ...and the server starts with those environments (compose, the Kubernetes StatefulSet).
  "$PY" "$TESTS/run_envs.py" "$JIMBUS_BIN" "$WORK/compose.yaml" || return 1
  NATS_NAME=n0 NATS_LISTEN=127.0.0.1:1 NATS_HTTP=127.0.0.1:2 NATS_CLUSTER=127.0.0.1:3 \
    NATS_ROUTE_0=nats-route://127.0.0.1:3 NATS_ROUTE_1=nats-route://127.0.0.1:4 NATS_ROUTE_2=nats-route://127.0.0.1:5 \
    NATS_STORE="$WORK/nats-t" nats-server -c deploy/compose/nats.conf -t || fail "nats-server -t deploy/compose/nats.conf"
}

part_systemd() {
  local unit="$WORK/systemd/jimbus.service" out
  mkdir -p "$WORK/systemd"
  # verify needs ExecStart's binary to exist: the test's copy points at the real one.
  sed "s#/usr/local/bin/jimbus#$JIMBUS_BIN#" deploy/systemd/jimbus.service >"$unit"
  out="$(systemd-analyze verify "$unit" 2>&1)" || { fail "systemd-analyze verify: $out"; return 1; }
  [[ -z "$out" ]] || { fail "systemd-analyze verify warns: $out"; return 1; }
  systemd-analyze security --offline=yes --threshold=20 "$unit" >"$WORK/security.txt" 2>&1 ||
    { tail -n 5 "$WORK/security.txt" >&2; fail "systemd-analyze security: exposure above 2.0"; return 1; }
  grep 'Overall exposure' "$WORK/security.txt"
  for key in "User=jimbus" "StateDirectory=jimbus" "LimitMEMLOCK=infinity" "Restart=on-failure" "KillSignal=SIGTERM" \
    "SystemCallFilter=io_uring_setup io_uring_enter io_uring_register"; do
    grep -qx "$key" deploy/systemd/jimbus.service || { fail "jimbus.service lacks $key"; return 1; }
  done
  # The real server under strace: start, take events through the log with segment
  # rolls (index, checkpoint, renames), serve a subscriber, drain on SIGTERM.
  local port grpc batch i
  port="$(free_port)" grpc="$(free_port)"
  strace -f -qq -o "$WORK/strace.log" "$JIMBUS_BIN" serve --http "127.0.0.1:$port" --grpc "127.0.0.1:$grpc" \
    --data-dir "$WORK/strace-data" --shards 1 --segment-bytes 4096 >"$WORK/strace-server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_http "http://127.0.0.1:$port/ready" 120 "$SERVER_PID" || return 1
  for i in 1 2 3; do
    batch="$("$PY" -c 'import json, sys; r = sys.argv[1]; print(json.dumps({"session_id": "s", "events": [{"type": "HEARTBEAT", "event_id": f"r{r}-{i}", "payload": {"uptime": i}} for i in range(40)]}))' "$i")"
    curl -fsS -X POST --data "$batch" "http://127.0.0.1:$port/api/v1/events/batch" >/dev/null ||
      { fail "POST under strace"; return 1; }
  done
  timeout 60 "$JIMBUS_BIN" tail '>' --grpc "http://127.0.0.1:$grpc" --from-start --count 100 >/dev/null ||
    { fail "tail under strace"; return 1; }
  ls "$WORK/strace-data"/shard-000/*.index >/dev/null 2>&1 || { fail "no segment rolled under strace"; return 1; }
  # SIGTERM to jimbus itself (strace would only detach); strace exits with it.
  local child
  child="$(pgrep -P "$SERVER_PID" | head -n 1)"
  [[ -n "$child" ]] || { fail "no jimbus process under strace"; return 1; }
  kill -TERM "$child"
  wait "$SERVER_PID" || { fail "jimbus under strace exited with status $? after SIGTERM"; return 1; }
  "$PY" "$TESTS/unit_syscalls.py" deploy/systemd/jimbus.service "$WORK/strace.log"
}

part_ansible() {
  local root="$WORK/ansible-root" inventory="$WORK/inventory.yml" run
  mkdir -p "$root"
  printf 'all:\n  children:\n    jimbus:\n      hosts:\n        localhost:\n          ansible_connection: local\n          ansible_python_interpreter: %s\n' \
    "$PY" >"$inventory"
  (cd deploy/ansible && ansible-lint --offline --profile production) || { fail "ansible-lint"; return 1; }
  (cd deploy/ansible && ansible-playbook -i "$inventory" --syntax-check site.yml) || { fail "ansible-playbook --syntax-check"; return 1; }
  # Into a temporary root; what needs a running system (sysctl, firewall, systemd)
  # is off. As root, the user and group are real, under a throwaway name.
  local user_args=(-e jimbus_create_user=false)
  if [[ $(id -u) -eq 0 ]] && command -v useradd >/dev/null; then
    TEST_USER="jbt$$"
    user_args=(-e jimbus_create_user=true -e "jimbus_user=$TEST_USER" -e "jimbus_group=$TEST_USER")
  fi
  run=(ansible-playbook -i "$inventory" site.yml -e ansible_become=false -e "jimbus_root=$root"
    -e jimbus_build=false -e "jimbus_binary_src=$JIMBUS_BIN" "${user_args[@]}"
    -e jimbus_apply_sysctl=false -e jimbus_firewall_apply=false -e jimbus_manage_service=false
    -e jimbus_http=127.0.0.1:8080 -e jimbus_shards=1 -e '{"jimbus_extra_config": {"retention_seconds": 604800, "enable_profiling": false}}')
  (cd deploy/ansible && "${run[@]}" >"$WORK/ansible-1.log") || { tail -n 30 "$WORK/ansible-1.log" >&2; fail "playbook run"; return 1; }
  for file in usr/local/bin/jimbus etc/jimbus/jimbus.toml etc/systemd/system/jimbus.service \
    etc/sysctl.d/60-jimbus.conf etc/security/limits.d/jimbus.conf etc/ufw/applications.d/jimbus; do
    [[ -s "$root/$file" ]] || { fail "the playbook did not install /$file"; return 1; }
  done
  [[ -d "$root/var/lib/jimbus" ]] || { fail "no data directory /var/lib/jimbus"; return 1; }
  [[ -x "$root/usr/local/bin/jimbus" ]] || { fail "/usr/local/bin/jimbus is not executable"; return 1; }
  if [[ -n "$TEST_USER" ]]; then
    getent passwd "$TEST_USER" | grep -q ':/usr/sbin/nologin$' || { fail "no system user $TEST_USER with nologin"; return 1; }
    [[ "$(stat -c %U:%G "$root/var/lib/jimbus")" == "$TEST_USER:$TEST_USER" ]] || { fail "data dir not owned by $TEST_USER"; return 1; }
    [[ "$(stat -c %G "$root/etc/jimbus/jimbus.toml")" == "$TEST_USER" ]] || { fail "jimbus.toml not readable by group $TEST_USER"; return 1; }
  fi
  cmp -s "$root/etc/systemd/system/jimbus.service" deploy/systemd/jimbus.service || { fail "installed unit differs"; return 1; }
  grep -q "^${TEST_USER:-jimbus} - memlock unlimited$" "$root/etc/security/limits.d/jimbus.conf" || { fail "limits.conf lacks memlock"; return 1; }
  grep -q '^ports=8080/tcp|50051/tcp$' "$root/etc/ufw/applications.d/jimbus" || { fail "ufw profile ports"; return 1; }
  local key
  while read -r key _; do
    [[ -e "/proc/sys/${key//.//}" ]] || { fail "sysctl $key does not exist on this kernel"; return 1; }
  done < <(grep -v '^#' "$root/etc/sysctl.d/60-jimbus.conf")
  # A second run changes nothing.
  (cd deploy/ansible && "${run[@]}" >"$WORK/ansible-2.log") || { fail "second playbook run"; return 1; }
  grep -Eq 'localhost +: ok=[0-9]+ +changed=0 ' "$WORK/ansible-2.log" ||
    { grep -A3 'PLAY RECAP' "$WORK/ansible-2.log" >&2; fail "the second run changed something"; return 1; }
  # The installed binary serves with the installed config (addresses moved to free ports).
  start_server "$root/usr/local/bin/jimbus" "$WORK/ansible-server.log" --config "$root/etc/jimbus/jimbus.toml" \
    --data-dir "$root/var/lib/jimbus" || return 1
  stop_server
}

part_kubernetes() {
  deploy/kubernetes/sync-configs.sh --check || return 1
  "$PY" "$TESTS/validate_k8s.py" deploy/kubernetes
}

part_openapi() {
  "$PY" -c 'import sys, yaml; from openapi_spec_validator import validate; validate(yaml.safe_load(open(sys.argv[1])))' docs/openapi.yaml ||
    { fail "docs/openapi.yaml is not a valid OpenAPI document"; return 1; }
  start_server "$JIMBUS_BIN" "$WORK/openapi-server.log" --data-dir "$WORK/openapi-data" --shards 1 || return 1
  # The containers' healthcheck command (compose, Dockerfile) against the real server.
  "$JIMBUS_BIN" health --url "http://127.0.0.1:$HTTP/ready" || { fail "jimbus health --url .../ready"; return 1; }
  curl -fsS "http://127.0.0.1:$HTTP/openapi.yaml" -o "$WORK/served.yaml" || { fail "GET /openapi.yaml"; return 1; }
  cmp -s "$WORK/served.yaml" docs/openapi.yaml || { fail "GET /openapi.yaml is not docs/openapi.yaml"; return 1; }
  "$PY" "$TESTS/check_routes.py" docs/openapi.yaml "http://127.0.0.1:$HTTP" || return 1
  # Every check but positive_data_acceptance: the schemas are open (the dialect
  # reads any JSON shape), so schema-valid payloads of known types are still 400s.
  # Profiling is off here (its 200 takes seconds per example); the SSE stream never
  # ends, so check_routes.py checks it instead of schemathesis.
  timeout 600 schemathesis run docs/openapi.yaml --url "http://127.0.0.1:$HTTP" --workers 1 --exclude-path /api/v1/stream \
    --checks all --exclude-checks positive_data_acceptance \
    --phases examples,coverage,fuzzing --max-examples 40 --request-timeout 10 --seed 1 \
    --suppress-health-check all --no-color >"$WORK/schemathesis.log" 2>&1
  local status=$?
  if ((status == 0)); then tail -n 25 "$WORK/schemathesis.log"; else cat "$WORK/schemathesis.log"; fi
  ((status == 0)) || { fail "schemathesis found problems (above)"; return 1; }
  stop_server
}

part_devenv() {
  local state="$WORK/devenv-state" out grpc prom count
  tools/dev-env.sh up --ports auto --state-dir "$state" >"$WORK/devenv-up.log" 2>&1 ||
    { cat "$WORK/devenv-up.log" >&2; fail "dev-env up"; return 1; }
  cat "$WORK/devenv-up.log"
  # shellcheck disable=SC1091
  source "$state/ports.env"
  grpc="http://127.0.0.1:$GRPC_PORT" prom="http://127.0.0.1:$PROM_PORT"
  tools/dev-env.sh status --state-dir "$state" >/dev/null || { fail "dev-env status after up"; return 1; }
  # The NATS probes the compose file and the Kubernetes StatefulSet use, on the real cluster.
  for probe in healthz "healthz?js-enabled-only=true" "healthz?js-server-only=true"; do
    curl -fsS -o /dev/null "http://127.0.0.1:${NATS_MONITOR[0]}/$probe" || { fail "NATS /$probe"; return 1; }
  done
  for i in 1 2 3; do
    "$JIMBUS_BIN" publish --grpc "$grpc" --session devenv "{\"type\":\"HEARTBEAT\",\"event_id\":\"e$i\",\"payload\":{\"uptime\":$i}}" >/dev/null ||
      { fail "jimbus publish"; return 1; }
  done
  out="$(timeout 30 "$JIMBUS_BIN" tail 'balatro.devenv.>' --grpc "$grpc" --from-start --count 3)" || { fail "jimbus tail"; return 1; }
  [[ "$(grep -c HEARTBEAT <<<"$out")" == 3 ]] || { fail "tail gave: $out"; return 1; }
  # Prometheus scrapes jimbus (the deploy/prometheus config, moved to loopback) and sees the 3 events.
  local deadline=$((SECONDS + 60))
  until count="$(curl -fsS "$prom/api/v1/query" --data-urlencode 'query=sum(jimbus_grpc_events_accepted_total)' |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')" &&
    [[ "$count" -ge 3 ]]; do
    ((SECONDS < deadline)) || { fail "Prometheus never saw 3 published events (last: ${count:-none})"; return 1; }
    sleep 1
  done
  echo "deploy: Prometheus sees jimbus_grpc_events_accepted_total = $count"
  curl -fsS "$prom/api/v1/rules" | "$PY" -c 'import json,sys; g=json.load(sys.stdin)["data"]["groups"]; assert g, "no rule groups loaded"; print("deploy: Prometheus loaded", sum(len(x["rules"]) for x in g), "rules")' ||
    { fail "Prometheus loaded no rules"; return 1; }
  local pids
  pids="$(cat "$state"/*.pid)"
  tools/dev-env.sh down --state-dir "$state" || { fail "dev-env down"; return 1; }
  for pid in $pids; do
    kill -0 "$pid" 2>/dev/null && { fail "pid $pid still runs after down"; return 1; }
  done
  tools/dev-env.sh status --state-dir "$state" >/dev/null && { fail "status says running after down"; return 1; }
  return 0
}

part_docs() {
  # The diagrams render in Mermaid itself; tuning.md quotes perf.md; paths and links exist.
  "$PY" "$TESTS/check_mermaid.py" docs/architecture.md && "$PY" "$TESTS/check_docs.py"
}

part_configdoc() {
  JIMBUS_BIN="$JIMBUS_BIN" tools/gen-config-doc.sh --check
}

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(compose systemd ansible kubernetes openapi devenv docs configdoc)
passed=0 failed=0 failures=()
for part in "${parts[@]}"; do
  echo "--- deploy: $part"
  start=$SECONDS
  if "part_$part"; then
    passed=$((passed + 1))
    echo "--- deploy: $part passed ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$part")
    echo "--- deploy: $part FAILED ($((SECONDS - start)) s)"
  fi
done
[[ $failed -eq 0 ]] || echo "deploy: failed parts: ${failures[*]}"
echo "deploy: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
