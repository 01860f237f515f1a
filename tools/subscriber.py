#!/usr/bin/env python3
"""The example Python subscriber, now `jimbus-py tail` of the jimbus package
(tools/python): this shim runs it from the source tree, with the same flags.

    tools/.venv/bin/python tools/subscriber.py --pattern 'balatro.*.SCORING'
    tools/.venv/bin/python tools/subscriber.py --pattern '>' --start earliest --count 10

It needs only grpcio and protobuf (tools/requirements.txt); the package ships
its generated modules, so tools/proto-gen is not needed. Installed, the same
command is `jimbus-py tail PATTERN [flags]` (pip install ./tools/python).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "python" / "src"))

try:
    from jimbus.cli import main
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.exit(f"subscriber: {error}; install the tools (tools/install-test-deps.sh)")

if __name__ == "__main__":
    sys.exit(main(["tail", *sys.argv[1:]]))
