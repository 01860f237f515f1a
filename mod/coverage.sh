#!/bin/sh
# Line coverage of the mod's Lua code by its busted unit tests (the tests
# mod/run-tests.sh runs), measured with luacov 0.17.0 vendored in
# tools/vendor/luacov (Debian has no luacov package). Configuration: mod/.luacov.
# Prints each file's hits and misses, then the figure for mod/BalatroMCP/bmcp/
# and for all of mod/BalatroMCP/; the full annotated report is
# target/coverage/lua/luacov.report.out.
# Exits nonzero when a test fails or when bmcp/ is under COVERAGE_MIN (default 80).
# Needs: apt-get install luajit lua-busted lua-socket lua-cjson
set -u
cd "$(dirname "$0")/.." || exit 2
MIN="${COVERAGE_MIN:-80}"
OUT=target/coverage/lua
mkdir -p "$OUT" && rm -f "$OUT/luacov.stats.out" "$OUT/luacov.report.out"
export LUA_PATH="tools/vendor/luacov/?.lua;;"

out=$(luajit /usr/bin/busted --lpath="mod/tests/?.lua;mod/BalatroMCP/?.lua" \
  --coverage --coverage-config-file=mod/.luacov -o TAP mod/tests/unit 2>&1)
tests=$?
printf '%s\n' "$out" | grep -v '^ok '
echo "$(printf '%s\n' "$out" | grep -c '^ok ') passed, $(printf '%s\n' "$out" | grep -c '^not ok ') failed"

luajit tools/vendor/luacov/luacov-report.lua -c mod/.luacov || exit 1
# The report's summary table: "file hits missed percent" rows after "Summary".
awk -v min="$MIN" -v tests="$tests" '
  /^Summary/ { on = 1; next }
  on && $1 ~ /^mod\// {
    print "  " $0
    all_h += $2; all_m += $3
    if ($1 ~ /^mod\/BalatroMCP\/bmcp\//) { b_h += $2; b_m += $3 }
  }
  END {
    if (b_h + b_m == 0) { print "lua coverage: the report names no file of bmcp/" > "/dev/stderr"; exit 2 }
    b = 100 * b_h / (b_h + b_m); a = 100 * all_h / (all_h + all_m)
    printf "lua coverage: %.2f%% of lines in mod/BalatroMCP/bmcp/ (%d/%d), %.2f%% in mod/BalatroMCP/ (%d/%d), target %s%%\n", b, b_h, b_h + b_m, a, all_h, all_h + all_m, min
    if (tests != 0) { print "lua coverage: tests FAILED" > "/dev/stderr"; exit 1 }
    if (b < min) { print "lua coverage: bmcp/ is under the target" > "/dev/stderr"; exit 1 }
  }' "$OUT/luacov.report.out"
