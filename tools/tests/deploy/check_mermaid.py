"""Renders every ```mermaid block of the given Markdown files with Mermaid
itself (tools/tests/deploy/mermaid/node_modules, `npm ci` there) in headless
Chromium, and fails on any diagram Mermaid cannot parse or render.

    python check_mermaid.py docs/architecture.md [more.md ...]

The page loads Mermaid's browser bundle from disk, renders each diagram to SVG
and writes a JSON verdict into the page, which `chromium --dump-dom` prints.
"""

import html
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
BUNDLE = HERE / "mermaid/node_modules/mermaid/dist/mermaid.min.js"
CHROMIUM = os.environ.get("CHROMIUM", "chromium")

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="%(bundle)s"></script></head><body><pre id="out">pending</pre>
<script>
const diagrams = %(diagrams)s;
(async () => {
  const results = [];
  try {
    mermaid.initialize({startOnLoad: false, securityLevel: "strict"});
    for (const [i, d] of diagrams.entries()) {
      try {
        await mermaid.parse(d.text);
        const {svg} = await mermaid.render("d" + i, d.text);
        results.push({name: d.name, ok: svg.includes("<svg") && !svg.includes("Syntax error"), svg: svg.length});
      } catch (e) {
        results.push({name: d.name, ok: false, error: String(e && e.message || e)});
      }
    }
  } catch (e) {
    results.push({name: "mermaid", ok: false, error: String(e)});
  }
  document.getElementById("out").textContent = "@@RESULT@@" + JSON.stringify(results) + "@@END@@";
})();
</script></body></html>"""


def diagrams(paths):
    found = []
    for path in paths:
        text = pathlib.Path(path).read_text()
        for n, match in enumerate(re.finditer(r"^```mermaid\n(.*?)^```", text, re.S | re.M), 1):
            line = text[: match.start()].count("\n") + 1
            found.append({"name": f"{path}:{line} (diagram {n})", "text": match.group(1)})
    return found


def main():
    if not BUNDLE.exists():
        sys.exit(f"check_mermaid: {BUNDLE} is missing: run npm ci in {BUNDLE.parents[2]}")
    found = diagrams(sys.argv[1:])
    if not found:
        sys.exit("check_mermaid: no mermaid diagrams found")
    with tempfile.TemporaryDirectory() as tmp:
        page = pathlib.Path(tmp) / "page.html"
        page.write_text(PAGE % {"bundle": BUNDLE.as_uri(), "diagrams": json.dumps(found)})
        run = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", "--allow-file-access-from-files",
             "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    match = re.search(r"@@RESULT@@(.*?)@@END@@", html.unescape(run.stdout), re.S)
    if not match:
        sys.exit(f"check_mermaid: no verdict from Chromium (status {run.returncode}): {run.stderr[-1500:]}")
    results = json.loads(match.group(1))
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"check_mermaid: {r['name']}: {r.get('error', 'no SVG')}", file=sys.stderr)
    print(f"check_mermaid: {len(results)} diagrams rendered, {len(failed)} failed")
    sys.exit(1 if failed or len(results) != len(found) else 0)


if __name__ == "__main__":
    main()
