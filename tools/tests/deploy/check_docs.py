"""Checks the deploy documentation against what it cites.

    python check_docs.py

- Every figure quoted in docs/tuning.md (numbers with thousands separators or
  decimals) appears verbatim in docs/perf.md: the tuning guide quotes
  measurements, it does not invent them.
- Every relative link and every repository path in backquotes in
  docs/architecture.md, docs/tuning.md and deploy/README.md exists.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOCS = ["docs/architecture.md", "docs/tuning.md", "deploy/README.md"]
PATH_PREFIXES = ("deploy/", "docs/", "tools/", "net/src/", "core/src/", "proto/", "perf/", "mod/")


def quoted_figures():
    tuning = (ROOT / "docs/tuning.md").read_text()
    perf = (ROOT / "docs/perf.md").read_text()
    figures = set(re.findall(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+\.\d+)(?![\w.])", tuning))
    if len(figures) < 10:
        return [f"docs/tuning.md quotes only {len(figures)} figures"]
    return [f"docs/tuning.md quotes {n}, which docs/perf.md does not contain" for n in sorted(figures) if n not in perf]


def paths():
    errors, checked = [], 0
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        base = (ROOT / doc).parent
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            checked += 1
            if not (base / link).exists():
                errors.append(f"{doc}: link {link} does not exist")
        for path in re.findall(r"`([a-z][\w./-]+)`", text):
            if path.startswith(PATH_PREFIXES) and "*" not in path:
                checked += 1
                if not (ROOT / path).exists():
                    errors.append(f"{doc}: {path} does not exist")
    if checked < 20:
        errors.append(f"only {checked} links and paths found in {DOCS}")
    print(f"check_docs: {checked} links and paths checked")
    return errors


def main():
    errors = quoted_figures() + paths()
    for error in errors:
        print(f"check_docs: {error}", file=sys.stderr)
    print(f"check_docs: {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
