#!/usr/bin/env bash
# Observability: the Prometheus config and rules (promtool check config, check
# rules, and the unit tests in jimbus-rules.test.yml), then tools/tests/observability:
# every PromQL expression of the rules and the Grafana dashboard parses and names
# only metrics a real jimbus exports after a short load (embedded log and
# JetStream), a real Prometheus scrapes jimbus and evaluates the rules, every
# alert has its runbook, and deploy/seccomp/io_uring.json is the default profile
# plus io_uring.
set -euo pipefail
cd "${ROOT:?}"
export JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/jimbus-rules.yml
promtool test rules deploy/prometheus/jimbus-rules.test.yml
exec "${PY:-tools/.venv/bin/python}" -m pytest -p no:cacheprovider -v \
  --confcutdir=tools/tests/observability tools/tests/observability/check_*.py
