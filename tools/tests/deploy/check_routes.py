"""Checks that docs/openapi.yaml documents every route the server has, and the
stream that schemathesis cannot test (it never ends).

    python check_routes.py docs/openapi.yaml http://127.0.0.1:PORT

Routes are read from net/src/http/mod.rs: every path literal in its routing code
("/health", "{ingest}/health", "/batch" under the ingest path, "/ui/" as a
prefix). Each must be a path of the document. Then GET /api/v1/stream must
answer 200 text/event-stream with its headers at once, and a bad start 400.
"""

import http.client
import pathlib
import re
import sys
import urllib.parse

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
INGEST = "/api/v1/events"  # the default --ingest-path


def server_routes():
    source = (ROOT / "net/src/http/mod.rs").read_text()
    routes = {INGEST}
    for literal in re.findall(r'"((?:\{ingest\})?/[A-Za-z0-9_./-]*)"', source):
        if literal.startswith("{ingest}"):
            routes.add(INGEST + literal[len("{ingest}"):])
        elif literal == "/batch":
            routes.add(INGEST + "/batch")
        elif literal.endswith("/") and len(literal) > 1:
            routes.add(literal + "{file}")  # a prefix: files under it
        else:
            routes.add(literal)
    return routes


def check_stream(base):
    url = urllib.parse.urlsplit(base)
    errors = []
    for query, status, media in (("pattern=%3E", 200, "text/event-stream"), ("from=nonsense", 400, "application/json")):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", f"/api/v1/stream?{query}")
        response = conn.getresponse()  # the headers only: a stream's body never ends
        got = response.getheader("content-type", "")
        if response.status != status or not got.startswith(media):
            errors.append(f"GET /api/v1/stream?{query}: {response.status} {got}, expected {status} {media}")
        conn.close()
    return errors


def main():
    spec = yaml.safe_load(open(sys.argv[1]))
    documented = set(spec["paths"])
    errors = [f"{route} is served but not documented in {sys.argv[1]}" for route in sorted(server_routes() - documented)]
    if len(sys.argv) > 2:
        errors += check_stream(sys.argv[2])
    for error in errors:
        print(f"check_routes: {error}", file=sys.stderr)
    print(f"check_routes: {len(server_routes())} routes in net/src/http/mod.rs, {len(documented)} documented, {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
