"""Fixtures: a real `jimbus serve` on loopback ($JIMBUS_BIN, default
target/debug/jimbus) with its own data directory, whose addresses come from its
"jimbus ready" log line, and events to publish. Self-contained: the package's
tests need nothing else from the repository but the binary."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jimbus.pb import events_pb2

ROOT = Path(__file__).resolve().parents[3]
READY_TIMEOUT_S = 60


def jimbus_bin() -> Path:
    return Path(os.environ.get("JIMBUS_BIN", ROOT / "target" / "debug" / "jimbus"))


def free_port() -> int:
    """A port free right now (for a server that must come back on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Jimbus:
    """A running `jimbus serve`; `restart` brings it back on the same ports and data."""

    def __init__(self, data_dir: Path, grpc_port: int = 0) -> None:
        self.data_dir = data_dir
        self.grpc_port = grpc_port
        self.log: list[str] = []
        self._start()

    def _start(self) -> None:
        binary = jimbus_bin()
        if not binary.is_file():
            pytest.fail(f"{binary} does not exist: run `cargo build --bin jimbus` (or set JIMBUS_BIN)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}
        env["RUST_LOG"] = "info"
        args = [str(binary), "--log-format", "json", "serve", "--http", "127.0.0.1:0"]
        args += ["--grpc", f"127.0.0.1:{self.grpc_port}", "--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        ready: queue.Queue[dict[str, object] | None] = queue.Queue()
        threading.Thread(target=self._read_log, args=(self.process, ready), daemon=True).start()
        try:
            record = ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            record = None
        if record is None:
            self.process.kill()
            self.process.wait()
            pytest.fail("jimbus did not log 'jimbus ready':\n" + "\n".join(self.log[-50:]))
        fields = record.get("fields", record)
        assert isinstance(fields, dict)
        self.http: str = fields["http"]
        self.grpc: str = fields["grpc"]

    def _read_log(self, process: subprocess.Popen[bytes], ready: queue.Queue[dict[str, object] | None]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if '"jimbus ready"' in line:
                ready.put(json.loads(line))
        ready.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        assert self.grpc_port, "restart needs a fixed gRPC port"
        self.stop(sig)
        self._start()


@pytest.fixture
def jimbus(tmp_path: Path) -> Iterator[Jimbus]:
    server = Jimbus(tmp_path / "data")
    yield server
    server.stop()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Jimbus]:
    server = Jimbus(tmp_path / "data", grpc_port=free_port())
    yield server
    server.stop()


def heartbeat(session: str, n: int) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=f"{session}-{n}",
        event_type="HEARTBEAT",
        session_id=session,
        source="pytest",
        heartbeat=events_pb2.HeartbeatEvent(uptime=float(n), mod_version="1.0.0"),
    )


def heartbeats(session: str, first: int, last: int) -> list[events_pb2.Event]:
    """Events n = first..last (inclusive), ids "<session>-<n>", uptime n."""
    return [heartbeat(session, n) for n in range(first, last + 1)]


def hand(session: str, number: int, jokers: list[str]) -> list[events_pb2.Event]:
    """One scored hand: HAND_EVAL_START, a JOKER_TRIGGER per joker, HAND_EVAL_COMPLETE."""

    def scoring(kind: str, i: int, step: events_pb2.ScoringEvent) -> events_pb2.Event:
        return events_pb2.Event(
            event_id=f"{session}-h{number}-{i}",
            event_type="SCORING",
            subtype=kind,
            session_id=session,
            source="pytest",
            scoring=step,
        )

    events = [scoring("HAND_EVAL_START", 0, events_pb2.ScoringEvent(hand_eval_start=events_pb2.HandEvalStart(hand_type="Flush")))]
    for i, name in enumerate(jokers, start=1):
        trigger = events_pb2.ScoringJokerTrigger(
            joker=events_pb2.Joker(name=name, id=f"j{i}", position=i), chips=10.0, mult=2.0, trigger_index=i
        )
        events.append(scoring("JOKER_TRIGGER", i, events_pb2.ScoringEvent(joker_trigger=trigger)))
    complete = events_pb2.HandEvalComplete(triggers=len(jokers), final_chips=100.0, final_mult=4.0)
    events.append(scoring("HAND_EVAL_COMPLETE", len(jokers) + 1, events_pb2.ScoringEvent(hand_eval_complete=complete)))
    return events
