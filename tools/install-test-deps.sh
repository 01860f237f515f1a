#!/usr/bin/env bash
# Installs everything the tests need, on Debian 12 with a Rust toolchain, and is
# safe to run again (each step is skipped when already done):
#   apt:   luajit, busted, LuaSocket, dkjson, lua-cjson (the mod's tests), Go with
#          protoc-gen-go / protoc-gen-go-grpc and their libraries (gen/go checks),
#          Node.js and npm (buf, protoc-gen-es, tsc)
#   pip:   tools/requirements.txt into the virtualenv tools/.venv
#   npm:   tools/package-lock.json into tools/node_modules (npm ci)
#   cargo: cargo-nextest
# Needs root (or sudo) for apt-get when an apt package is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "install-test-deps: $*"; }

# --- apt ---------------------------------------------------------------------
APT_PACKAGES=(
  luajit lua-busted lua-socket lua-dkjson lua-cjson
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev golang-google-grpc-dev
)
# Each suite in tools/suites.d declares its own needs in tools/deps.d/<suite>.apt
# (Debian packages), .pip (requirements for tools/.venv) and .sh (any other step).
shopt -s nullglob
for list in tools/deps.d/*.apt; do
  while read -r package _; do
    [[ -n "$package" && "$package" != \#* ]] && APT_PACKAGES+=("$package")
  done <"$list"
done
installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]; }
missing=()
for package in "${APT_PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
# Node.js may come from elsewhere than Debian (nodesource, nvm): only the commands matter.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# Debian's own python3 needs python3-venv to make tools/.venv.
if [[ ! -x tools/.venv/bin/python ]] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  say "apt-get install ${missing[*]}"
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    --no-install-recommends "${missing[@]}"
else
  say "apt packages present"
fi

# --- Python --------------------------------------------------------------------
VENV="$ROOT/tools/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "python3 -m venv tools/.venv"
  python3 -m venv "$VENV"
fi
say "pip install -r tools/requirements.txt (tools/.venv)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tools/requirements.txt

for list in tools/deps.d/*.pip; do
  say "pip install -r $list (tools/.venv)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$list"
done

# --- npm -----------------------------------------------------------------------
if [[ -f tools/node_modules/.package-lock.json && ! tools/package-lock.json -nt tools/node_modules/.package-lock.json ]]; then
  say "node modules present"
else
  say "npm ci (tools/)"
  (cd tools && npm ci --no-audit --no-fund)
fi

# --- cargo ---------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest present"
else
  say "cargo install --locked cargo-nextest"
  cargo install --locked cargo-nextest
fi

# --- each suite's own steps ------------------------------------------------------
for step in tools/deps.d/*.sh; do
  say "$step"
  bash "$step"
done

say "done"
