"""The Python subscriber against the real server: tools/subscriber.py, the shim
that runs `jimbus-py tail` of the package in tools/python from the source tree.
Events posted over HTTP in the field mod's JSON dialect come out as one JSON
line each, in order, with their values intact; the old script's flags work."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from conftest import ROOT

SUBSCRIBER = ROOT / "tools" / "subscriber.py"
RUN_TIMEOUT_S = 60
SESSION = "127.0.0.1-BalatroMCP"  # derived by the server: peer address + source
# Every raw event; `>` alone also matches the aggregated messages (balatro.<session>.aggregated).
RAW = "> -balatro.*.aggregated"

# Bodies as the field mod writes them: keys in any order, bare inf/nan, `{}` for
# an empty list, arrays of scalars as strings, both timestamp clocks.
EVENTS = [
    b'{"type":"GAME_STATE","source":"BalatroMCP","event_id":"py-1","version":1,'
    b'"payload":{"jokers":{},"ante":2,"money":4,"phase":"SELECTING_HAND"},"timestamp":1795531353000}',
    b'{"payload":{"old_value":4,"new_value":9,"difference":5},"event_id":"py-2","type":"MONEY_CHANGED",'
    b'"source":"BalatroMCP","timestamp":5.695104598999,"version":1}',
    b'{"event_id":"py-3","source":"BalatroMCP","type":"SCORE_CHANGED","version":1,'
    b'"payload":{"new_chips":inf,"old_chips":1e+308,"new_mult":nan,"old_mult":-inf},"timestamp":1795531353000}',
    b'{"event_id":"py-4","source":"BalatroMCP","type":"HEARTBEAT","version":1,'
    b'"payload":{"version":"1.0.0","uptime":12.5,"headless":false},"timestamp":1795531354000}',
    b'{"event_id":"py-5","source":"BalatroMCP","type":"MYSTERY_EVENT","version":1,'
    b'"payload":{"levels":["1","2"],"note":"kept"},"timestamp":1795531354000}',
]


def batch(events: list[bytes]) -> bytes:
    return (
        b'{"batch_id":"py-batch","events":[' + b",".join(events) + b'],"source":"BalatroMCP","timestamp":1795531353000}'
    )


def post(server, path: str, body: bytes) -> dict:
    request = urllib.request.Request(
        f"http://{server.http}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "BalatroMCP/1.0"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def post_batch(server, events: list[bytes]) -> None:
    answer = post(server, "/api/v1/events/batch", batch(events))
    assert answer == {"status": "ok", "accepted": len(events), "duplicates": 0, "rejected": []}


def subscriber_args(server, *args: str) -> list[str]:
    return [sys.executable, str(SUBSCRIBER), "--target", server.grpc, *args]


def run_subscriber(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        subscriber_args(server, *args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def lines_of(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_prints_every_posted_event_in_order(jimbus):
    post_batch(jimbus, EVENTS[:3])
    assert post(jimbus, "/api/v1/events", EVENTS[3])["accepted"] == 1
    post_batch(jimbus, EVENTS[4:])

    result = run_subscriber(jimbus, "--pattern", RAW, "--start", "earliest", "--count", "5", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    deliveries = lines_of(result)
    assert len(deliveries) == 5
    events = [d["event"] for d in deliveries]
    assert [e["eventId"] for e in events] == ["py-1", "py-2", "py-3", "py-4", "py-5"]
    assert [e["sequence"] for e in events] == ["1", "2", "3", "4", "5"]
    assert {e["sessionId"] for e in events} == {SESSION}
    assert [d["topic"] for d in deliveries] == [
        f"balatro.127_0_0_1-BalatroMCP.{kind}"
        for kind in ["GAME_STATE", "MONEY_CHANGED", "SCORE_CHANGED", "HEARTBEAT", "MYSTERY_EVENT"]
    ]

    state, money, score, heartbeat, mystery = events
    assert state["gameState"]["ante"] == 2
    assert state["gameState"]["money"] == 4.0
    assert state["gameState"]["phase"] == "SELECTING_HAND"
    assert "jokers" not in state["gameState"]  # `{}` is the empty list
    assert money["moneyChanged"] == {"oldValue": 4.0, "newValue": 9.0, "difference": 5.0}
    assert money["timing"]["clientTimestampMs"] == 5.695104598999
    assert score["scoreChanged"] == {
        "oldChips": 1e308,
        "newChips": "Infinity",
        "oldMult": "-Infinity",
        "newMult": "NaN",
    }
    assert heartbeat["heartbeat"]["modVersion"] == "1.0.0"
    assert heartbeat["heartbeat"]["uptime"] == 12.5
    assert mystery["eventType"] == "MYSTERY_EVENT"
    assert mystery["generic"]["payload"] == {"levels": ["1", "2"], "note": "kept"}
    assert all(d["deliveryCount"] == 1 for d in deliveries)


def test_pattern_selects_one_event_type(jimbus):
    post_batch(jimbus, EVENTS)
    result = run_subscriber(
        jimbus, "--pattern", "balatro.*.SCORE_CHANGED", "--start", "earliest", "--count", "1", "--timeout", "30"
    )
    assert result.returncode == 0, result.stderr
    deliveries = lines_of(result)
    assert [d["event"]["eventId"] for d in deliveries] == ["py-3"]


def test_live_subscription_sees_events_posted_after_it_subscribed(jimbus):
    post_batch(jimbus, EVENTS[:1])  # before the subscription: not delivered with --start latest
    process = subprocess.Popen(
        subscriber_args(jimbus, "--pattern", RAW, "--start", "latest", "--count", "2", "--timeout", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The subscriber says so on stderr once the server has answered the call.
        first = process.stderr.readline()
        assert "subscribed" in first, first
        post_batch(jimbus, EVENTS[1:3])
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    events = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert [e["eventId"] for e in events] == ["py-2", "py-3"]
    assert [e["sequence"] for e in events] == ["2", "3"]


def test_durable_subscriber_acks_and_resumes_after_them(jimbus):
    post_batch(jimbus, EVENTS[:3])
    first = run_subscriber(
        jimbus, "--pattern", RAW, "--durable", "trainer", "--start", "earliest", "--count", "3", "--timeout", "30"
    )
    assert first.returncode == 0, first.stderr
    assert [d["event"]["eventId"] for d in lines_of(first)] == ["py-1", "py-2", "py-3"]

    post_batch(jimbus, EVENTS[3:])
    # No --start: a durable subscription resumes after its last acknowledged event.
    second = run_subscriber(jimbus, "--pattern", RAW, "--durable", "trainer", "--count", "2", "--timeout", "30")
    assert second.returncode == 0, second.stderr
    deliveries = lines_of(second)
    assert [d["event"]["eventId"] for d in deliveries] == ["py-4", "py-5"]
    assert [d["deliveryCount"] for d in deliveries] == [1, 1]


def test_offset_start_skips_earlier_events(jimbus):
    post_batch(jimbus, EVENTS)
    result = run_subscriber(jimbus, "--pattern", RAW, "--start", "offset:3", "--count", "2", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert [d["event"]["eventId"] for d in lines_of(result)] == ["py-4", "py-5"]


def test_exits_1_when_count_is_not_reached_in_time(jimbus):
    post_batch(jimbus, EVENTS[:1])
    result = run_subscriber(jimbus, "--pattern", RAW, "--start", "earliest", "--count", "2", "--timeout", "1")
    assert result.returncode == 1
    assert [d["event"]["eventId"] for d in lines_of(result)] == ["py-1"]
    assert "timed out" in result.stderr and "1 of 2" in result.stderr


def test_positional_pattern_as_jimbus_py_tail_takes_it(jimbus):
    post_batch(jimbus, EVENTS)
    result = run_subscriber(jimbus, "balatro.*.MONEY_CHANGED", "--start", "earliest", "--count", "1", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert [d["event"]["eventId"] for d in lines_of(result)] == ["py-2"]


def test_unreachable_server_exits_1_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, str(SUBSCRIBER), "--target", "127.0.0.1:1", "--count", "1", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert "could not connect to jimbus at 127.0.0.1:1" in result.stderr


def test_bad_start_is_a_usage_error(jimbus):
    result = run_subscriber(jimbus, "--start", "yesterday")
    assert result.returncode == 2
    assert "bad start 'yesterday'" in result.stderr


def test_server_drains_and_exits_0_on_sigterm(jimbus):
    post_batch(jimbus, EVENTS[:2])
    assert jimbus.terminate() == 0
