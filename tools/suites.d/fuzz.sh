#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer; docs/fuzzing.md): builds every
# target in fuzz/ and runs each for FUZZ_SECONDS (default 45) from its
# committed seeds. Fails on any crash, panic, failed assertion, sanitizer
# report, per-input timeout or memory blow-up; the input is kept under
# fuzz/artifacts/<target>/ and the command to replay it is printed.
set -euo pipefail
ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$ROOT"
seconds="${FUZZ_SECONDS:-45}"
# cargo fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov); the
# stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing (tools/deps.d/fuzz.sh installs it)" >&2; exit 1; }

work="$(mktemp -d)"
# On CI the sanitizer build (about 1 GB) goes once the targets have run.
if [[ "${CI:-}" == true ]]; then
  trap 'rm -rf "$work" fuzz/target' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

cargo fuzz build
targets=$(cargo fuzz list)
[[ -n "$targets" ]] || { echo "fuzz: no targets" >&2; exit 1; }
for target in $targets; do
  [[ -d "fuzz/seeds/$target" ]] || { echo "fuzz: no seeds for $target (python3 fuzz/make_seeds.py)" >&2; exit 1; }
  mkdir -p "$work/$target" "fuzz/artifacts/$target"
  echo "fuzz: $target for ${seconds}s"
  # New inputs go to a scratch corpus; the committed seeds are only read.
  if ! cargo fuzz run "$target" "$work/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/"; then
    echo "fuzz: $target FAILED; reproduce with:" >&2
    for input in fuzz/artifacts/"$target"/*; do
      [[ -e "$input" ]] && echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $target $input" >&2
    done
    exit 1
  fi
done
echo "fuzz: every target ran ${seconds}s without a crash"
