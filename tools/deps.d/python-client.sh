#!/usr/bin/env bash
# What tools/suites.d/python-client.sh needs beyond tools/.venv: a Python that can
# make a fresh virtualenv with pip in it (Debian's python3 needs python3-venv for
# ensurepip). The wheel's build backend (hatchling) and the package's `dev` extra
# are fetched from PyPI by pip during the suite, into a throwaway venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/tools/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
if "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "python-client: venv and ensurepip present"
  exit 0
fi
SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
  --no-install-recommends python3-venv
