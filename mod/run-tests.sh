#!/bin/sh
# Runs every Lua unit test of the mod under LuaJIT (busted, Debian's lua-busted),
# prints each result as TAP and ends with the line "N passed, M failed".
# Exits nonzero when a test fails or the suite cannot run.
# Needs: apt-get install luajit lua-busted lua-socket lua-cjson
set -u
cd "$(dirname "$0")/.." || exit 2
out=$(luajit /usr/bin/busted --lpath="mod/tests/?.lua;mod/BalatroMCP/?.lua" -o TAP mod/tests/unit 2>&1)
status=$?
printf '%s\n' "$out"
passed=$(printf '%s\n' "$out" | grep -c '^ok ')
failed=$(printf '%s\n' "$out" | grep -c '^not ok ')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
