"""The package as installed: typed, complete, its generated modules equal to what
proto/ generates, and its command-line entry point working."""

from __future__ import annotations

import importlib.resources
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Jimbus, hand, heartbeats

import jimbus
from jimbus import Client

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def test_installed_package_ships_types_and_generated_modules() -> None:
    files = importlib.resources.files("jimbus")
    assert (files / "py.typed").is_file()
    for generated in ["bus/v1/bus_pb2.py", "bus/v1/bus_pb2.pyi", "events/v1/events_pb2.py", "events/v1/events_pb2.pyi"]:
        assert (files / "_proto" / "jimbot" / generated).is_file(), generated
    # The suite tests the installed wheel, not the source tree.
    if "JIMBUS_PY_TEST_INSTALLED" in os.environ:
        assert "site-packages" in str(Path(jimbus.__file__).resolve())


def test_generated_modules_match_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the modules")
    result = subprocess.run(
        [sys.executable, str(PACKAGE_DIR / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "match proto/" in result.stdout


def test_the_readme_example_prints_each_hands_trigger_count(jimbus: Jimbus) -> None:
    example = PACKAGE_DIR / "examples" / "hands.py"
    readme = (PACKAGE_DIR / "README.md").read_text("utf-8")
    assert example.read_text("utf-8").strip() in readme, "README.md and examples/hands.py differ"
    env = {**os.environ, "JIMBUS_GRPC_TARGET": jimbus.grpc}
    process = subprocess.Popen([sys.executable, str(example)], stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stdout or []:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        with Client(jimbus.grpc) as client:
            # It starts from latest: publish hands until it has subscribed and prints one.
            deadline = time.monotonic() + 30
            number = 0
            while time.monotonic() < deadline:
                number += 1
                client.publish(hand("example", number, ["Joker", "Baron", "Mime"]))
                try:
                    line = lines.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            else:
                pytest.fail("the example printed nothing in 30 s")
    finally:
        process.kill()
        process.wait()
    cascade_id, count = line.split()
    assert cascade_id and count == "3"


def test_cli_tail_prints_json_lines(jimbus: Jimbus) -> None:
    command = shutil.which("jimbus-py", path=str(Path(sys.executable).parent))
    assert command, "the jimbus-py entry point is not installed beside this python"
    with Client(jimbus.grpc) as client:
        client.publish(heartbeats("cli", 1, 3))
    result = subprocess.run(
        [command, "tail", "balatro.cli.>", "--target", jimbus.grpc, "--start", "earliest", "--count", "3", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"]["eventId"] for line in lines] == ["cli-1", "cli-2", "cli-3"]
    assert "subscribed to 'balatro.cli.>'" in result.stderr
