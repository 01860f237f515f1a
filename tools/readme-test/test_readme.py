"""The README's commands, run as a new user would.

README command 1 runs verbatim (read from the README itself, so the test follows
the text) in a fresh `git clone` of this repository, as the working directory,
on the default ports: it must build, start on the embedded default with its
relative data directory, take an event that `jimbus tail` then reads back, and
stop cleanly on SIGTERM. Every line of the README's "Using it" block is then run
as shown, with the release binary on PATH; a line this file does not know fails
the test, so the README cannot grow a command that nothing runs.

The clone shares this checkout's cargo target directory (CARGO_TARGET_DIR), so
dependencies are not compiled twice; the clone's own crates still build from the
clone's sources.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import threading
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BUILD_TIMEOUT_S = 1800  # a cold release build on two cores, when the cache is empty
STEP_TIMEOUT_S = 60
HTTP = "127.0.0.1:8080"
GRPC = "127.0.0.1:50051"


def code_blocks(text: str) -> list[list[str]]:
    """The README's ```sh blocks, each as its command lines (comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [[line.strip() for line in b.splitlines() if line.strip() and not line.strip().startswith("#")] for b in blocks]


def section_block(text: str, heading: str) -> list[str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return code_blocks(section)[0]


def strip_comment(line: str) -> str:
    """A command line without its trailing `# ...` remark (outside quotes)."""
    quoted = False
    for i, c in enumerate(line):
        if c == "'":
            quoted = not quoted
        if c == "#" and not quoted and i > 0 and line[i - 1] == " ":
            return line[:i].rstrip()
    return line


def port_free(address: str) -> bool:
    """Nothing listens there (connections of an earlier server may still be in
    TIME_WAIT, which does not keep a server from binding)."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) != 0


def wait_until(condition, timeout_s: float, what: str, alive=None) -> None:
    """Polls `condition` until it holds; fails with `what` after `timeout_s`, or
    at once when `alive` says the process under test has gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if alive is not None and not alive():
            pytest.fail(f"the process exited while waiting for {what}")
        time.sleep(0.1)  # polling interval, not a synchronisation
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{HTTP}/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def post_event(body: dict, path: str = "/api/v1/events") -> dict:
    request = urllib.request.Request(
        f"http://{HTTP}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "BalatroMCP/1.0"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(timeout=STEP_TIMEOUT_S)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    for address in (HTTP, GRPC):
        if not port_free(address):
            pytest.fail(f"{address} is in use: README command 1 listens there; stop whatever holds it")
    where = tmp_path_factory.mktemp("fresh") / "jimbus"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
    return where


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}
    env["CARGO_TARGET_DIR"] = str(ROOT / "target")
    env["PATH"] = f"{ROOT / 'target' / 'release'}:{env['PATH']}"
    return env


def test_command_1_starts_the_server_from_a_fresh_clone(clone: Path, environment: dict[str, str]) -> None:
    command = code_blocks(README.read_text())[0][0]
    assert command.startswith("cargo run"), f"README command 1 is no longer the server: {command!r}"
    # Run as the shell would split it, without a shell in between: `cargo run`
    # execs the server, so the signal below reaches jimbus itself.
    server = subprocess.Popen(shlex.split(command), cwd=clone, env=environment)
    try:
        wait_until(ready, BUILD_TIMEOUT_S, "README command 1 to answer /ready", alive=lambda: server.poll() is None)
        answer = post_event({"type": "HEARTBEAT", "source": "BalatroMCP", "payload": {"uptime": 1}})
        assert answer["accepted"] == 1, answer
        tail = subprocess.run(
            ["jimbus", "tail", ">", "--from-start", "--count", "1", "--grpc", GRPC],
            env=environment, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
        )
        assert tail.returncode == 0, tail.stderr
        assert json.loads(tail.stdout)["event"]["eventType"] == "HEARTBEAT", tail.stdout
        assert (clone / "jimbus-data").is_dir(), "the default data dir is ./jimbus-data"
    finally:
        status = stop(server)
    assert status == 0, f"jimbus exited {status} on SIGTERM"


class UsingIt:
    """Runs the "Using it" block's lines, one handler per known line."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir, self.env = workdir, env
        self.server: subprocess.Popen | None = None

    def run(self, line: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            line, shell=True, cwd=self.workdir, env=self.env, capture_output=True, text=True,
            timeout=STEP_TIMEOUT_S, **kwargs,
        )

    def serve(self, line: str) -> None:
        self.server = subprocess.Popen(shlex.split(line), cwd=self.workdir, env=self.env)
        wait_until(ready, STEP_TIMEOUT_S, f"{line!r} to answer /ready", alive=lambda: self.server.poll() is None)

    def live_tail(self, line: str) -> None:
        """A tail without --count runs until interrupted: it must print what is
        published after it started, then stop on SIGINT."""
        # As from a terminal, where Ctrl-C reaches it: a test run started in the
        # background (`cmd &` in a script) ignores SIGINT, and its children
        # inherit that, so the tail would never see the interrupt.
        tail = subprocess.Popen(
            shlex.split(line), cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in tail.stdout], daemon=True).start()
        try:
            # A subscription starting at "latest" may open after a first post: post
            # until a line arrives (each post is a new, valid event).
            deadline = time.monotonic() + STEP_TIMEOUT_S
            first = None
            n = 0
            while first is None and time.monotonic() < deadline and tail.poll() is None:
                n += 1
                post_event({
                    "type": "SCORING", "subtype": "HAND_EVAL_START", "source": "BalatroMCP",
                    "event_id": f"readme-{n}", "payload": {"hand_type": "Pair"},
                })
                try:
                    first = lines.get(timeout=0.5)
                except queue.Empty:
                    pass
            assert first is not None, f"{line!r} printed nothing"
            assert json.loads(first)["event"]["eventType"] == "SCORING", first
        finally:
            tail.send_signal(signal.SIGINT)
            tail.wait(timeout=STEP_TIMEOUT_S)

    def counted_tail(self, line: str) -> None:
        result = self.run(line)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 10, result.stdout
        assert all("event" in json.loads(x) for x in lines)

    def publish(self, line: str) -> None:
        result = self.run(line)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["accepted"] == 1, result.stdout


def test_every_using_it_command_works_as_shown(clone: Path, environment: dict[str, str], tmp_path: Path) -> None:
    lines = [strip_comment(line) for line in section_block(README.read_text(), "Using it")]
    runner = UsingIt(tmp_path, environment)
    handlers = {
        "jimbus serve ": runner.serve,
        "jimbus tail 'balatro.*.SCORING'": runner.live_tail,
        "jimbus tail '>' --from-start --count 10": runner.counted_tail,
        "echo ": runner.publish,
    }
    try:
        for line in lines:
            handler = next((h for prefix, h in handlers.items() if line.startswith(prefix)), None)
            assert handler is not None, f"README 'Using it' line {line!r} is not run by this test: add it here"
            if handler == runner.counted_tail:
                # Ten events to read back, whatever ran before.
                for i in range(10):
                    post_event({"type": "HEARTBEAT", "source": "BalatroMCP", "event_id": f"c-{i}", "payload": {"n": i}})
            handler(line)
        # The Python subscriber's example, elsewhere in the README, runs against
        # the same server, from the repository root as its paths say.
        examples = [x for block in code_blocks(README.read_text()) for x in block if "tools/subscriber.py" in x]
        assert examples, "the README shows no subscriber example"
        for i in range(3):  # enough scoring events for any --count the example shows, up to 3
            post_event({"type": "SCORING", "subtype": "HAND_EVAL_COMPLETE", "source": "BalatroMCP",
                        "event_id": f"sub-{i}", "payload": {"hand_type": "Pair"}})
        for line in examples:
            result = subprocess.run(
                line, shell=True, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
            )
            assert result.returncode == 0, f"{line!r}: {result.stderr}"
            assert all(json.loads(x)["topic"] for x in result.stdout.splitlines()), result.stdout
            assert result.stdout.strip(), f"{line!r} printed nothing"
    finally:
        if runner.server is not None:
            assert stop(runner.server) == 0
    assert runner.server is not None, "the 'Using it' block starts no server"
