#!/usr/bin/env bash
# cargo-llvm-cov for tools/coverage.sh (Rust line coverage in the rust suite) and
# a warning when rustc's LLVM is not the one coverage.apt installs the tools of.
# (luacov for the Lua figure is vendored in tools/vendor/luacov.)
set -euo pipefail
if cargo llvm-cov --version >/dev/null 2>&1; then
  echo "coverage: cargo-llvm-cov present"
else
  cargo install --locked cargo-llvm-cov
fi
major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
if [[ ! -x "/usr/lib/llvm-$major/bin/llvm-profdata" ]]; then
  echo "coverage: rustc uses LLVM $major: install llvm-$major (tools/deps.d/coverage.apt names another)" >&2
fi
