#!/usr/bin/env bash
# tools/suites.d/deploy.sh renders the Mermaid diagrams of docs/ with Mermaid itself
# (npm, tools/tests/deploy/mermaid) in Debian's Chromium (tools/deps.d/deploy.apt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/deploy/mermaid"
if [[ -f node_modules/.package-lock.json && ! package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "deps.d/deploy: mermaid present"
else
  echo "deps.d/deploy: npm ci (tools/tests/deploy/mermaid)"
  npm ci --no-audit --no-fund --ignore-scripts
fi
