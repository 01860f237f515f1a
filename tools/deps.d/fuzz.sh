#!/usr/bin/env bash
# cargo-fuzz for tools/suites.d/fuzz.sh (libFuzzer itself is built from source by
# the libfuzzer-sys crate, with the C++ compiler from fuzz.apt).
set -euo pipefail
if command -v cargo-fuzz >/dev/null; then
  echo "fuzz: cargo-fuzz present"
else
  cargo install --locked cargo-fuzz
fi
