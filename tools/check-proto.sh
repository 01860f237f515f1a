#!/usr/bin/env bash
# buf lint, then buf breaking against the previous commit of main (HEAD~1).
#
# PROTO_AGAINST=<git ref> compares with another commit instead (e.g. origin/main).
# With a single commit, or when the previous commit has no proto/, there is
# nothing to compare with: breaking is skipped and says so.
# The rules live in proto/buf.yaml; proto/README.md says what counts as breaking.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUF="$ROOT/tools/node_modules/.bin/buf"
[[ -x "$BUF" ]] || {
  echo "check-proto: buf is missing; run tools/install-test-deps.sh" >&2
  exit 1
}

echo "check-proto: buf lint proto"
"$BUF" lint proto
echo "check-proto: lint ok"

against="${PROTO_AGAINST:-HEAD~1}"
if ! commit="$(git rev-parse --verify --quiet "$against^{commit}")"; then
  echo "check-proto: no commit $against (a repository with one commit?): nothing to compare, breaking check skipped"
  exit 0
fi
if ! git cat-file -e "$commit:proto" 2>/dev/null; then
  echo "check-proto: $against has no proto/: nothing to compare, breaking check skipped"
  exit 0
fi

# The previous schemas, exported from git; works in worktrees and shallow clones
# alike, as long as the commit itself is present.
previous="$(mktemp -d)"
trap 'rm -rf "$previous"' EXIT
git archive "$commit" proto | tar -x -C "$previous"

echo "check-proto: buf breaking proto against $against ($(git rev-parse --short "$commit"))"
"$BUF" breaking proto --against "$previous/proto"
echo "check-proto: no breaking changes"
