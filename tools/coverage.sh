#!/usr/bin/env bash
# Line coverage of the tests, measured while they run.
#
#   tools/coverage.sh [rust] [lua]      default: both, in this order
#
#   rust  every Rust test of the workspace under `cargo llvm-cov nextest`
#         (instrumented build in target/llvm-cov-target; the integration tests'
#         jimbus child processes write their own profiles, which are merged).
#         Prints lines/regions/functions per crate and the combined figure of
#         proto+core+net; HTML report in target/coverage/rust/html/index.html.
#   lua   the mod's busted unit tests (mod/coverage.sh) under the vendored luacov;
#         report in target/coverage/lua/luacov.report.out.
#
# Exit status: nonzero when a test failed, or when a figure is under its target
# (COVERAGE_MIN, default 80: lines of proto+core+net; lines of mod/BalatroMCP/bmcp).
# Needs: cargo-llvm-cov, cargo-nextest, and llvm-profdata/llvm-cov of rustc's own
# LLVM major version (Debian's llvm-22 for rustc 1.95); tools/deps.d/coverage.*.
set -uo pipefail

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"
PY="${PY:-$ROOT/tools/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
MIN="${COVERAGE_MIN:-80}"
OUT="$ROOT/target/coverage"

# llvm-profdata and llvm-cov must read the profile format of rustc's LLVM, so
# take the ones of its major version (the rustup component cannot be downloaded).
llvm_tools() {
  local major dir
  major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
  for dir in "/usr/lib/llvm-$major/bin" "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"; do
    if [[ -z "${LLVM_PROFDATA:-}" && -x "$dir/llvm-profdata" && -x "$dir/llvm-cov" ]]; then
      export LLVM_PROFDATA="$dir/llvm-profdata" LLVM_COV="$dir/llvm-cov"
    fi
  done
  if [[ -z "${LLVM_PROFDATA:-}" ]]; then
    echo "coverage: no llvm-profdata/llvm-cov for LLVM $major (apt-get install llvm-$major)" >&2
    return 1
  fi
}

rust_coverage() {
  llvm_tools || return 1
  cargo llvm-cov --version >/dev/null 2>&1 || {
    echo "coverage: cargo-llvm-cov is missing (cargo install --locked cargo-llvm-cov)" >&2
    return 1
  }
  local tests=0 report=0
  # --no-report first, so the summary is printed even when a test failed.
  cargo llvm-cov nextest --workspace --no-fail-fast --no-report || tests=$?
  mkdir -p "$OUT/rust"
  cargo llvm-cov report --html --output-dir "$OUT/rust" >/dev/null &&
    cargo llvm-cov report --json --summary-only --output-path "$OUT/rust/summary.json" &&
    "$PY" tools/coverage-summary.py "$OUT/rust/summary.json" "$ROOT" --min "$MIN" || report=$?
  echo "coverage: HTML report in target/coverage/rust/html/index.html"
  if [[ $tests -ne 0 ]]; then
    echo "coverage: tests FAILED (cargo llvm-cov nextest exited $tests)" >&2
    return "$tests"
  fi
  return "$report"
}

lua_coverage() {
  COVERAGE_MIN="$MIN" sh mod/coverage.sh
}

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(rust lua)
status=0
for part in "${parts[@]}"; do
  case "$part" in
    rust) echo "=== coverage: rust"; rust_coverage || status=1 ;;
    lua) echo "=== coverage: lua"; lua_coverage || status=1 ;;
    *) echo "coverage: unknown part $part (rust, lua)" >&2; exit 2 ;;
  esac
done
exit "$status"
