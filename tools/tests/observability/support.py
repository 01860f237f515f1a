"""Real processes for the observability checks: `jimbus serve` on loopback port 0
(its addresses read from its own "jimbus ready" log line), a JetStream
nats-server on free ports, and the short mod-dialect load that makes jimbus
export its metrics. Every wait polls a condition with a deadline; nothing
sleeps to synchronise.

tools/suites.d/observability.sh runs the check_*.py files of this folder with
--confcutdir, so they stand alone: no generated code, no fixture from
tools/tests/conftest.py. (Their names keep them out of `pytest tools/tests`.)"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
READY_TIMEOUT_S = 60


def jimbus_bin() -> Path:
    return Path(os.environ.get("JIMBUS_BIN", ROOT / "target" / "debug" / "jimbus"))


def tool(name: str, env: str) -> str:
    """A binary from `$env`, tools/.venv/bin or PATH; the test fails when it is missing."""
    found = os.environ.get(env) or shutil.which(name, path=f"{ROOT / 'tools/.venv/bin'}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} is not installed: run tools/install-test-deps.sh (or set {env})")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, condition: Callable[[], object], timeout: float = 30.0, every: float = 0.1):
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError) as e:  # not up yet
            last_error = e
        time.sleep(every)  # a polling interval, not a synchronisation
    pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Jimbus:
    """A running `jimbus serve` with its own data directory."""

    def __init__(self, data_dir: Path, *args: str):
        binary = jimbus_bin()
        if not binary.is_file():
            pytest.fail(f"{binary} does not exist: run `cargo build --bin jimbus` (or set JIMBUS_BIN)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}
        env["RUST_LOG"] = "info"
        command = [str(binary), "--log-format", "json", "serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
        command += ["--data-dir", str(data_dir), *args]
        self.log: list[str] = []
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)
        ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        try:
            record = ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            record = None
        if record is None:
            self.stop()
            pytest.fail("jimbus did not log 'jimbus ready':\n" + "\n".join(self.log[-40:]))
        fields = record.get("fields", record)
        self.http: str = fields["http"]
        self.grpc: str = fields["grpc"]
        self.url = f"http://{self.http}"

    def _read_log(self, ready: queue.Queue) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if '"jimbus ready"' in line:
                ready.put(json.loads(line))
        ready.put(None)  # the server exited before it was ready

    def metrics(self) -> str:
        status, body = http("GET", f"{self.url}/metrics")
        assert status == 200, body
        return body.decode()

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        status, answer = http("POST", f"{self.url}{path}", body)
        return status, json.loads(answer or b"{}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Nats:
    """A single JetStream nats-server on free loopback ports."""

    def __init__(self, store: Path):
        self.port, self.monitor = free_port(), free_port()
        self.log = open(store.parent / "nats.log", "wb")
        self.process = subprocess.Popen(
            [tool("nats-server", "NATS_SERVER"), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor), "-sd", str(store)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until("nats-server /healthz",
                   lambda: http("GET", f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true")[0] == 200)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def exported_names(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition (histograms as _bucket/_sum/_count)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def bucket_bounds(text: str, histogram: str) -> set[str]:
    """The `le` values exported for `histogram`."""
    prefix = f"{histogram}_bucket{{"
    bounds = set()
    for line in text.splitlines():
        if line.startswith(prefix):
            for label in line[len(prefix):].split("}", 1)[0].split(","):
                key, _, value = label.partition("=")
                if key == "le":
                    bounds.add(value.strip('"'))
    return bounds


def game(session: str, hand: int) -> list[dict]:
    """One scored hand in the mod's dialect: two game states, a start, five triggers, a complete."""
    events = []

    def push(kind: str, subtype: str | None, payload: dict, timestamp: float) -> None:
        event = {"event_id": f"{session}-{hand}-{len(events)}", "source": "BalatroMCP", "type": kind,
                 "session_id": session, "payload": payload, "timestamp": timestamp}
        if subtype:
            event["subtype"] = subtype
        events.append(event)

    push("GAME_STATE", None, {"money": 4, "ante": 1, "phase": "SELECTING_HAND"}, 1e12)
    push("GAME_STATE", None, {"money": 5, "ante": 1, "phase": "SELECTING_HAND"}, 1e12)
    push("SCORING", "HAND_EVAL_START", {"hand_type": "Flush", "cards": ["1", "2"]}, 1.0)
    for i in range(5):
        push("SCORING", "JOKER_TRIGGER", {"joker": {"name": f"Joker {i}", "position": i + 1}, "chips": 10,
                                          "mult": 2, "score_contribution": 1, "trigger_index": i}, 1000.0 + i)
    push("SCORING", "HAND_EVAL_COMPLETE", {"duration_ms": 3.5, "final_chips": 120, "final_mult": 40,
                                           "triggers": 5}, 2.0)
    return events


def post_game(server: Jimbus, session: str, hand: int) -> None:
    events = game(session, hand)
    status, answer = server.post("/api/v1/events/batch", json.dumps({"events": events}).encode())
    assert status == 200 and answer["accepted"] == len(events), (status, answer)


def short_load(server: Jimbus) -> None:
    """Every kind of answer the dashboard charts: hands to aggregate, a retried
    batch (dedup hits), a batch with an invalid event (rejected, dead-lettered),
    a malformed body (400) and single events."""
    for hand in range(4):
        post_game(server, f"obs-{hand % 2}", hand)
    retried = json.dumps({"events": game("obs-0", 0)}).encode()
    status, answer = server.post("/api/v1/events/batch", retried)
    assert status == 200 and answer["duplicates"] == len(game("obs-0", 0)), answer
    mixed = {"events": [{"event_id": "ok-1", "type": "HEARTBEAT", "payload": {"uptime": 1}}, {"payload": 5}]}
    status, answer = server.post("/api/v1/events/batch", json.dumps(mixed).encode())
    assert status == 200 and [r["index"] for r in answer["rejected"]] == [1], answer
    status, _ = server.post("/api/v1/events", b'{"type":')
    assert status == 400
    status, _ = server.post("/api/v1/events", b'{"type":"HEARTBEAT","payload":{"uptime":2}}')
    assert status == 200


class Tail:
    """`jimbus tail '>'`: a live gRPC subscriber, as a user runs it."""

    def __init__(self, server: Jimbus):
        self.process = subprocess.Popen([str(jimbus_bin()), "tail", ">", "--grpc", server.grpc],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def durable_subscribe(grpc_address: str, name: str, pattern: str = ">", wanted: int = 1) -> int:
    """Opens a durable subscription from the earliest record, takes `wanted`
    deliveries without acknowledging them, and leaves: the consumer stays, with
    a backlog. The SubscribeRequest (pattern = 1, durable_name = 2, start = 3)
    is encoded by hand, so no generated code is needed."""
    import grpc

    def text(field: int, value: str) -> bytes:
        data = value.encode()
        return bytes([field << 3 | 2]) + _varint(len(data)) + data

    request = text(1, pattern) + text(2, name) + bytes([3 << 3, 2])  # START_POSITION_EARLIEST
    with grpc.insecure_channel(grpc_address) as channel:
        subscribe = channel.unary_stream("/jimbot.bus.v1.EventBusService/Subscribe",
                                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
        call = subscribe(request, timeout=30)
        received = 0
        for _ in call:
            received += 1
            if received >= wanted:
                break
        call.cancel()
    return received

