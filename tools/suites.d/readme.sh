#!/usr/bin/env bash
# README command 1 verbatim from a fresh clone, and every line of the README's
# "Using it" block as shown (tools/readme-test). Builds the release binary.
set -euo pipefail
cd "${ROOT:?}"
exec "${PY:-tools/.venv/bin/python}" -m pytest -p no:cacheprovider -v tools/readme-test
