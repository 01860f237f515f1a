#!/usr/bin/env bash
# The Python client package (tools/python): builds its wheel (an isolated pip
# build, hatchling from PyPI), installs it with its `dev` extra into a fresh
# virtualenv, checks `mypy --strict` on the package, its tests, and its README
# example against the installed wheel, then runs its pytest suite against $JIMBUS_BIN
# (which also checks that the committed protobuf modules match proto/).
set -euo pipefail
cd "${ROOT:?}"
PY="${PY:-tools/.venv/bin/python}"
export JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "python-client: pip wheel tools/python"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$work/dist" tools/python
wheel=("$work"/dist/jimbus-*-py3-none-any.whl)
[[ -f "${wheel[0]}" ]] || { echo "python-client: no wheel was built" >&2; exit 1; }
echo "python-client: built $(basename "${wheel[0]}")"

echo "python-client: fresh venv, pip install the wheel with [dev]"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "${wheel[0]}[dev]"

echo "python-client: mypy --strict"
mypy=("$work/venv/bin/mypy" --strict --cache-dir "$work/mypy-cache")
(cd tools/python && "${mypy[@]}" --config-file pyproject.toml && "${mypy[@]}" --config-file pyproject.toml tests)
# The example type-checks against the installed wheel (its py.typed), away from src/.
cp tools/python/examples/hands.py "$work/hands_example.py"
(cd "$work" && "${mypy[@]}" hands_example.py)

echo "python-client: pytest tools/python/tests (installed wheel, $JIMBUS_BIN)"
JIMBUS_PY_TEST_INSTALLED=1 "$work/venv/bin/python" -m pytest -p no:cacheprovider -v tools/python/tests
