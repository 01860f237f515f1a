"""The package as installed: typed, complete, its generated modules equal to what
proto/ generates, and its command-line entry point working."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Jimbus, heartbeats

import jimbus
from jimbus import Client

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def test_installed_package_ships_types_and_generated_modules() -> None:
    files = importlib.resources.files("jimbus")
    assert (files / "py.typed").is_file()
    for generated in ["bus/v1/bus_pb2.py", "bus/v1/bus_pb2.pyi", "events/v1/events_pb2.py", "events/v1/events_pb2.pyi"]:
        assert (files / "_proto" / "jimbot" / generated).is_file(), generated
    # The suite tests the installed wheel, not the source tree.
    if "JIMBUS_PY_TEST_INSTALLED" in __import__("os").environ:
        assert "site-packages" in str(Path(jimbus.__file__).resolve())


def test_generated_modules_match_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the modules")
    result = subprocess.run(
        [sys.executable, str(PACKAGE_DIR / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "match proto/" in result.stdout


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
