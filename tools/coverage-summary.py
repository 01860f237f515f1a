#!/usr/bin/env python3
"""Per-crate line coverage from `cargo llvm-cov report --json --summary-only`.

    coverage-summary.py SUMMARY.json ROOT [--min PERCENT] [--crates proto,core,net]

Prints one row per crate (lines, regions, functions), each counted crate's
files from the worst up, and the combined figure of the counted crates. Exits 1
when the combined line coverage is under --min, 2 when the report names no file
of a counted crate (a report that measured nothing must not pass). Crates that
are not counted (perf: benchmarks and the load generator) are listed apart.
"""

import argparse
import json
import sys
from pathlib import Path

KINDS = ("lines", "regions", "functions")


def crate_of(filename: str, root: Path) -> str:
    try:
        rel = Path(filename).resolve().relative_to(root)
    except ValueError:
        return "(outside)"
    return rel.parts[0] if len(rel.parts) > 1 else "(root)"


def pct(covered: int, count: int) -> float:
    return 100.0 * covered / count if count else 100.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("summary")
    ap.add_argument("root")
    ap.add_argument("--min", type=float, default=80.0)
    ap.add_argument("--crates", default="proto,core,net")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    counted = args.crates.split(",")
    data = json.loads(Path(args.summary).read_text())["data"][0]

    crates: dict[str, dict[str, list[int]]] = {}
    files: dict[str, list[tuple[float, str, int]]] = {}
    for f in data["files"]:
        crate = crate_of(f["filename"], root)
        sums = crates.setdefault(crate, {k: [0, 0] for k in KINDS})
        for k in KINDS:
            sums[k][0] += f["summary"][k]["covered"]
            sums[k][1] += f["summary"][k]["count"]
        lines = f["summary"]["lines"]
        rel = str(Path(f["filename"]).resolve().relative_to(root)) if crate != "(outside)" else f["filename"]
        files.setdefault(crate, []).append((pct(lines["covered"], lines["count"]), rel, lines["count"] - lines["covered"]))

    print(f"{'crate':<10} {'lines':>22} {'regions':>22} {'functions':>20}")
    total = {k: [0, 0] for k in KINDS}
    for crate in counted + sorted(set(crates) - set(counted)):
        if crate not in crates:
            continue
        s = crates[crate]
        row = "  ".join(f"{s[k][0]:>7}/{s[k][1]:<7} {pct(*s[k]):6.2f}%" for k in KINDS)
        note = "" if crate in counted else "   (not counted)"
        print(f"{crate:<10} {row}{note}")
        if crate in counted:
            for k in KINDS:
                total[k][0] += s[k][0]
                total[k][1] += s[k][1]
    row = "  ".join(f"{total[k][0]:>7}/{total[k][1]:<7} {pct(*total[k]):6.2f}%" for k in KINDS)
    print(f"{'+'.join(counted):<10} {row}")

    print("\nfiles under 80 % lines (counted crates), worst first:")
    for crate in counted:
        for p, rel, missed in sorted(files.get(crate, [])):
            if p < 80.0:
                print(f"  {p:6.2f}%  {missed:>5} lines missed  {rel}")

    missing = [c for c in counted if c not in crates]
    if missing:
        print(f"coverage: no file of {', '.join(missing)} in the report", file=sys.stderr)
        return 2
    combined = pct(*total["lines"])
    if combined < args.min:
        print(f"coverage: {combined:.2f}% of lines in {'+'.join(counted)}, under the {args.min:g}% target", file=sys.stderr)
        return 1
    print(f"\ncoverage: {combined:.2f}% of lines in {'+'.join(counted)} (target {args.min:g}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
