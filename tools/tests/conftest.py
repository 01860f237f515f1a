"""Shared pytest fixtures: the generated Python stubs on sys.path, and a real
`jimbus serve` on loopback port 0 whose addresses come from its own "jimbus ready"
log line (never guessed, never waited for with a sleep)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN_PYTHON = ROOT / "gen" / "python"
if not (GEN_PYTHON / "jimbot" / "bus" / "v1" / "bus_pb2.py").is_file():
    raise pytest.UsageError(f"{GEN_PYTHON} has no generated code: run tools/proto-gen first")
sys.path.insert(0, str(GEN_PYTHON))

READY_TIMEOUT_S = 60


def jimbus_bin() -> Path:
    return Path(os.environ.get("JIMBUS_BIN", ROOT / "target" / "debug" / "jimbus"))


class Jimbus:
    """A running `jimbus serve` with its own data directory."""

    def __init__(self, data_dir: Path):
        binary = jimbus_bin()
        if not binary.is_file():
            pytest.fail(f"{binary} does not exist: run `cargo build --bin jimbus` (or set JIMBUS_BIN)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}
        env["RUST_LOG"] = "info"
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [
                str(binary),
                "--log-format",
                "json",
                "serve",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        try:
            record = ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            record = None
        if record is None:
            self.process.kill()
            self.process.wait()
            pytest.fail("jimbus did not log 'jimbus ready':\n" + "\n".join(self.log))
        fields = record.get("fields", record)
        self.http: str = fields["http"]
        self.grpc: str = fields["grpc"]

    def _read_log(self, ready: queue.Queue) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if '"jimbus ready"' in line:
                ready.put(json.loads(line))
        ready.put(None)  # the server exited before it was ready

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code (the server drains and exits 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def jimbus(tmp_path: Path):
    server = Jimbus(tmp_path / "data")
    yield server
    server.terminate()
