#!/usr/bin/env bash
# The web view (/ui) end to end: tools/ui-tests drives Debian's headless
# Chromium through playwright-core against the real jimbus ($JIMBUS_BIN): a
# session on the Farm page within a second, a 200-trigger hand on the Hand
# page in order with its depths, pause and gap-free resume of a session's feed,
# non-zero ingest on the Server page, a phone-sized layout, a page that resumes
# by itself across a server restart. Screenshots go to a temporary folder;
# UI_SCREENSHOTS=docs/ui refreshes the README's.
set -euo pipefail
ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$ROOT"
export JIMBUS_BIN="${JIMBUS_BIN:-$ROOT/target/debug/jimbus}"
[[ -x "$JIMBUS_BIN" ]] || { echo "no jimbus binary at $JIMBUS_BIN (cargo build --bin jimbus)" >&2; exit 1; }
[[ -x /usr/bin/chromium ]] || { echo "chromium is not installed: apt-get install chromium" >&2; exit 1; }
[[ -d tools/ui-tests/node_modules/playwright-core ]] || bash tools/deps.d/ui.sh
cd tools/ui-tests
# Run in-process (node:test), so a timeout's SIGTERM reaches the handler that
# stops the server the tests started.
exec timeout 300 node ui.test.mjs
