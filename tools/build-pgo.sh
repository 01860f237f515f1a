#!/usr/bin/env bash
# Builds the release `jimbus` with profile-guided optimisation (PGO), for
# farms that want the last tenth of CPU per event (docs/tuning.md, "A build
# trained on load"; docs/perf.md, "Thirty-seventh pass"):
#
#   tools/build-pgo.sh [OUT]        # default OUT: target/pgo/jimbus
#
# It builds an instrumented server, runs it on loopback under the load
# generator (the mod's dialect, 50-event and 1-event batches, gRPC producers
# and subscribers, a restart that recovers the log), merges the counts the
# server wrote at exit, and builds the server again with them. The load
# generator checks that every acknowledged event reached its subscribers, so
# a training run that loses events fails the build.
#
# Needs what `cargo build --release` needs, plus llvm-profdata of rustc's own
# LLVM: the rustup component `llvm-tools` (added when missing), or
# LLVM_PROFDATA=PATH. The two builds take their own target folders under
# target/pgo/, so the usual target/release stays as it was. On this 2-core
# machine the whole run takes about 12 minutes.
set -euo pipefail
out=${1:+$(realpath -m -- "$1")}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source perf/lib.sh
out=${out:-target/pgo/jimbus}
work=$PWD/target/pgo
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
if [[ ! -x $profdata && -z ${LLVM_PROFDATA:-} ]]; then
  rustup component add llvm-tools
fi
[[ -x $profdata ]] || { echo "build-pgo: no llvm-profdata at $profdata" >&2; exit 2; }
require_tools curl curl

say() { echo "build-pgo: $*" >&2; }
rm -rf "$work/profiles" "$work/train"
mkdir -p "$work/profiles" "$work/train"

say "building the load generator and the instrumented server"
cargo build --release --locked -p jimbus-perf --bin jimbus-load
CARGO_TARGET_DIR=$work/generate RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" \
  cargo build --release --locked --bin jimbus
load=target/release/jimbus-load server=$work/generate/release/jimbus
# The build scripts ran instrumented too: only the server's counts are kept.
rm -f "$work/profiles/"*.profraw

trap 'stop "${pid:-}"' EXIT
# train PHASE LOAD_FLAGS...: one run of the server (its defaults, `--fsync
# batch` among them) under the load generator, stopped with SIGTERM so that it
# writes its counts as it exits.
train() {
  local phase=$1
  shift
  say "training: $phase"
  start_jimbus "$server" "$work/train" --no-ui
  "$load" --url "http://127.0.0.1:$http/api/v1/events/batch" --grpc "127.0.0.1:$grpc" --server-pid "$pid" \
    --quiet --json "$work/train/$phase.json" "$@"
  stop "$pid"
  pid=
  cp "$work/train/server.log" "$work/train/$phase.log"
  python3 - "$work/train/$phase.json" <<'CHECK' || { say "training run $phase failed (its server log: $work/train/$phase.log)"; exit 1; }
import json, sys
report = json.load(open(sys.argv[1]))
problems = [f"{key} {report[key]}" for key in ("errors", "lost") if report[key]] + ["nothing accepted"] * (report["accepted"] == 0)
print(f"{report['accepted']} events acknowledged, {report['errors']} errors, lost {report['lost']}", file=sys.stderr)
sys.exit(", ".join(problems) if problems else 0)
CHECK
}
# start_jimbus gives each run DIR/data: the second phase keeps the first's
# log, so the server recovers it at start.
train batches --sessions 64 --duration 8 --subscribers 2
train small-requests --sessions 32 --batch 1 --duration 4 --subscribers 1 --pattern 'balatro.*.aggregated'
train grpc-producers --sessions 16 --duration 4 --grpc-producers 2 --subscribers 1

compgen -G "$work/profiles/*.profraw" >/dev/null || { say "the server wrote no profile"; exit 1; }
"$profdata" merge -o "$work/jimbus.profdata" "$work/profiles"
say "building the server with the profile"
CARGO_TARGET_DIR=$work/use RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/jimbus.profdata" \
  cargo build --release --locked --bin jimbus
install -D -m 0755 "$work/use/release/jimbus" "$out"
say "built $out"
