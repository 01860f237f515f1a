#!/usr/bin/env bash
# The web view's end-to-end tests: playwright-core (the driver only; the browser
# is Debian's chromium from ui.apt) from tools/ui-tests/package-lock.json. Node
# and npm are not in ui.apt: install-test-deps.sh installs them only when the
# commands are missing (Node.js from elsewhere, e.g. nodesource, conflicts with
# Debian's npm package). playwright-core ~1.61 still runs on Debian 12's Node 18.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../ui-tests"
if [[ -f node_modules/.package-lock.json && ! package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "ui: node modules present"
else
  npm ci --no-audit --no-fund
fi
