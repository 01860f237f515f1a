#!/usr/bin/env bash
# Structure of the Rust crates (issue #16): no source file over 600 lines and no
# function over 100 lines outside tests, no import loop between the modules of a
# crate. Static: reads the sources only, needs python3 and nothing else.
set -euo pipefail
cd "${ROOT:?}"
exec "${PY:-python3}" tools/check-structure.py --root "$ROOT"
