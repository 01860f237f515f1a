#!/usr/bin/env bash
# THE test command (CI's .ci/run calls it): installs what the tests need, then
# runs every suite, keeps going after a failure, and ends with the line
#   suites: N passed, M failed
# Exit status: 0 when every suite passed, 1 otherwise.
#
# JIMBUS_SKIP_INSTALL=1  skips tools/install-test-deps.sh (already installed).
# CI=true                 removes the instrumented and fuzz builds once their
#                         suites are done, to keep a CI machine's disk free.
#
# Suites, in order:
#   proto-gen     Python, TypeScript and Go code from the schemas, each compiled or imported
#   check-proto   buf lint, buf breaking against the previous commit
#   rust          cargo build --bin jimbus, then tools/coverage.sh rust (cargo llvm-cov
#                 nextest --workspace: every Rust test, line coverage per crate, fails under 80 %)
#   mod           mod/run-tests.sh (the Lua mod's tests)
#   python        pytest tools/tests (cross-language decoding, the example subscriber)
#   dockerfile    hadolint
# then every executable tools/suites.d/<name>.sh, in name order (each gets ROOT,
# JIMBUS_BIN, PY and PATH with tools/.venv/bin first; exit 0 means passed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# A run of every suite is one build from scratch: incremental caches would only
# add a GB or two to the target folders. (A CI machine ran out of disk once.)
export CARGO_INCREMENTAL=0

free_disk() {
  echo "disk: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ') free where the builds go"
}
free_disk

if [[ "${JIMBUS_SKIP_INSTALL:-0}" != 1 ]]; then
  tools/install-test-deps.sh
fi

PY="$ROOT/tools/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
# Tools installed into the venv (nats-server, hadolint) are found by the tests on PATH.
export PATH="$ROOT/tools/.venv/bin:$PATH"

passed=()
failed=()

suite() {
  local name="$1"
  shift
  echo
  echo "=== suite $name: $*"
  local start=$SECONDS status=0
  # In a subshell, so a failing suite ends only itself. (errexit does not apply
  # inside a tested command: suites chain their steps with &&.)
  ("$@") || status=$?
  if [[ $status -eq 0 ]]; then
    passed+=("$name")
    echo "=== suite $name: passed ($((SECONDS - start)) s)"
  else
    failed+=("$name")
    echo "=== suite $name: FAILED with status $status ($((SECONDS - start)) s)"
    free_disk
  fi
}

rust_suite() {
  local status=0
  cargo build --bin jimbus && tools/coverage.sh rust || status=$?
  # On CI the instrumented build (over a GB) is done with once its report is
  # written to target/coverage; a developer keeps it for the next run.
  if [[ "${CI:-}" == true ]]; then rm -rf target/llvm-cov-target; fi
  return "$status"
}

python_suite() {
  JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}" \
    "$PY" -m pytest -p no:cacheprovider -v tools/tests
}

suite proto-gen tools/proto-gen --check
suite check-proto tools/check-proto.sh
suite rust rust_suite
suite mod bash mod/run-tests.sh
suite python python_suite
suite dockerfile tools/lint-dockerfile.sh

# Suites that live beside what they test (deploy files, the LÖVE harness, the
# browser view, ...): one script each, so adding a suite touches no shared file.
export ROOT PY
export JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
for script in tools/suites.d/*.sh; do
  [[ -x "$script" ]] || continue
  name="$(basename "$script" .sh)"
  suite "$name" "$script"
done

echo
free_disk
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed suites: ${failed[*]}"
fi
echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
