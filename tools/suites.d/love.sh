#!/usr/bin/env bash
# The mod (mod/BalatroMCP) in the game-layout harness (mod/tests/game) under real
# LÖVE 11.4, headless, against the real jimbus ($JIMBUS_BIN): a round, a
# 500-trigger hand, a whole game with the server down then a restart, a quit
# during a request that never answers, two games sharing one save folder through
# an outage, a full disk with the server down and up (a 64 KiB tmpfs: needs root,
# which CI has), the worker killed mid-game, rejected events logged.
# Every check reads what the server stored back as a subscriber (jimbus tail).
set -euo pipefail
ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$ROOT"
export JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
PY="${PY:-python3}"
command -v love >/dev/null || { echo "love (LÖVE 11.4) is not installed: apt-get install love" >&2; exit 1; }
love --version | grep -q '^LOVE 11\.' || { echo "LÖVE 11.x is needed, found: $(love --version)" >&2; exit 1; }
[[ -x "$JIMBUS_BIN" ]] || { echo "no jimbus binary at $JIMBUS_BIN (cargo build --bin jimbus)" >&2; exit 1; }
exec timeout 600 "$PY" -W ignore::ResourceWarning -m unittest -v mod/tests/game/test_love.py
