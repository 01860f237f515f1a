#!/usr/bin/env bash
# Line coverage of the mod's Lua code (mod/BalatroMCP) by its busted unit tests,
# with the vendored luacov: prints each file and the figure for bmcp/; fails when
# a test fails or bmcp/ is under 80 % of lines. See docs/testing.md.
set -euo pipefail
cd "${ROOT:?}"
exec tools/coverage.sh lua
