"""Game-thread cost of the mod under real LÖVE 11.4: a 500-trigger hand.

Runs the game-layout harness (mod/tests/game, scenario=bench) twice, headless:
once without the mod (the game's own cost of scoring the hand) and once with it
(hooks, payloads, encoding, channel pushes; the worker runs on its own thread
and, with no server at the URL, spills to the save folder). It reports, for the
frames that score a hand, the median wall time and the median CPU time of the
game thread alone (CLOCK_THREAD_CPUTIME_ID), and the mod's share per frame and
per event. Wall time includes waiting for a CPU on a busy machine; the thread
CPU time does not, and is the figure to compare.

Usage: python3 mod/bench/love_frame_cost.py [--triggers 500] [--runs 30]
Needs: the `love` Debian package. No server is needed.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GAME = HERE.parent / "tests" / "game"


def run(mod, triggers, runs):
    with tempfile.TemporaryDirectory(prefix="love-bench-") as save:
        out = subprocess.run(
            ["love", str(GAME), "scenario=bench", f"triggers={triggers}", f"runs={runs}", "wait=none",
             f"mod={mod}", "url=http://127.0.0.1:9/api/v1/events", "timeout_s=120"],
            env={"XDG_DATA_HOME": save, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    reports = [json.loads(line[3:]) for line in out.stdout.splitlines() if line.startswith("@@ ")]
    report = next((r for r in reports if r.get("event") == "report"), None)
    if report is None or report["scoring_frames"] != runs:
        raise SystemExit(f"the harness did not score {runs} hands:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--triggers", type=int, default=500)
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    base = run("none", a.triggers, a.runs)
    mod = run(str(HERE.parent / "BalatroMCP"), a.triggers, a.runs)
    events = a.triggers + 3  # HAND_EVAL_START, the triggers, HAND_EVAL_COMPLETE, SCORE_CHANGED
    version = subprocess.run(["love", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = mod["scoring_frame_median_cpu_ms"] - base["scoring_frame_median_cpu_ms"]
    wall = mod["scoring_frame_median_ms"] - base["scoring_frame_median_ms"]
    print(f"{version}: {a.runs} hands of {a.triggers} joker triggers, one scoring frame each")
    print(f"scoring frame, median: without the mod {base['scoring_frame_median_cpu_ms']:.3f} ms thread CPU "
          f"({base['scoring_frame_median_ms']:.3f} ms wall); with it {mod['scoring_frame_median_cpu_ms']:.3f} ms "
          f"thread CPU ({mod['scoring_frame_median_ms']:.3f} ms wall)")
    print(f"the mod's share: {cpu:.3f} ms thread CPU per frame ({wall:.3f} ms wall), "
          f"{cpu * 1000 / events:.2f} us per event ({events} events in the frame)")
    print(f"frame budget at 60 fps is 16.7 ms: the mod uses {cpu / 16.667 * 100:.1f}% of it in that frame")


if __name__ == "__main__":
    main()
