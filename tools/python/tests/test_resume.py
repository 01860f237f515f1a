"""Resume without gaps: a durable consumer whose client is SIGKILLed, and
subscriptions (ephemeral and durable) whose server restarts under them. Every
event arrives; a repeat is either dropped (ephemeral, an exact repeat) or
flagged by a delivery count above 1 (durable)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import Jimbus, heartbeats
from helpers import take, take_until

from jimbus import Client, Delivery, Unreachable

RAW = "balatro.*.HEARTBEAT"
CHILD = textwrap.dedent(
    """
    import sys
    from jimbus import Client
    with Client(sys.argv[1]) as client:
        for d in client.subscribe("balatro.*.HEARTBEAT", start="earliest", durable="killed"):
            print(int(d.event.heartbeat.uptime), d.delivery_count, flush=True)
    """
)


def uptime(d: Delivery) -> int:
    assert d.event is not None
    return int(d.event.heartbeat.uptime)


def test_durable_resume_after_the_client_is_killed(jimbus: Jimbus) -> None:
    total, killed_after = 200, 60
    with Client(jimbus.grpc) as client:
        client.publish(heartbeats("k", 1, total))
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, jimbus.grpc], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        guard = threading.Timer(60, child.kill)  # a hung child ends the readline below
        guard.start()
        try:
            assert child.stdout is not None
            handled = [int(child.stdout.readline().split()[0]) for _ in range(killed_after)]
            child.send_signal(signal.SIGKILL)  # no chance to send its pending acks
            child.wait(timeout=30)
        finally:
            guard.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        assert handled == list(range(1, killed_after + 1))

        # What the killed client held and had not acked comes again, flagged; the rest once.
        # (Redeliveries and first deliveries may interleave: order is not checked.)
        everything = set(range(1, total + 1))
        with client.subscribe(RAW, durable="killed") as sub:
            resumed = take_until(sub, lambda got: set(handled) | {uptime(d) for d in got} >= everything)
        seen = [uptime(d) for d in resumed]
        assert len(seen) == len(set(seen)), "the resumed stream repeats an event"
        assert min(seen) <= killed_after, "the resumed stream starts after what was acked"
        for d in resumed:
            if uptime(d) in handled:
                assert d.delivery_count > 1 and d.redelivered, f"{d} repeats event {uptime(d)} unflagged"


def test_ephemeral_subscription_survives_a_server_restart(restartable: Jimbus) -> None:
    with Client(restartable.grpc, reconnect_timeout=60) as client:
        client.publish(heartbeats("r", 1, 50))
        with client.subscribe(RAW, start="earliest") as sub:
            before = take(sub, 50)
            restartable.restart()
            client.publish(heartbeats("r", 51, 100))
            after = take(sub, 50)
            assert sub.reconnects >= 1
    # The reopened stream replays from the start; what was already yielded is dropped.
    assert [uptime(d) for d in before + after] == list(range(1, 101))
    assert all(d.delivery_count == 1 for d in before + after)


def test_latest_subscription_survives_a_server_restart(restartable: Jimbus) -> None:
    with Client(restartable.grpc) as client:
        client.publish(heartbeats("l", 1, 10))  # before the subscription: never delivered
        with client.subscribe(RAW) as sub:
            client.publish(heartbeats("l", 11, 20))
            before = take(sub, 10)
            restartable.restart()
            client.publish(heartbeats("l", 21, 30))
            after = take(sub, 10)
    assert [uptime(d) for d in before + after] == list(range(11, 31))


def test_durable_subscription_survives_a_server_crash_and_flags_repeats(restartable: Jimbus) -> None:
    with Client(restartable.grpc) as client:
        client.publish(heartbeats("d", 1, 50))
        with client.subscribe(RAW, start="earliest", durable="crash", auto_ack=False) as sub:
            before = take(sub, 50)
            sub.ack(*before[:30])
            assert sub.flush_acks()
            restartable.restart(signal.SIGKILL)  # in-flight state and delivery counts are lost
            client.publish(heartbeats("d", 51, 100))
            after = take(sub, 70)
            sub.ack(*after)
            assert sub.flush_acks()
    assert [uptime(d) for d in before] == list(range(1, 51))
    # Nothing lost: 31..50 were delivered but not acked, so they come again, flagged.
    assert [uptime(d) for d in after] == list(range(31, 101))
    assert all(d.delivery_count >= 2 for d in after[:20])
    assert all(d.delivery_count == 1 for d in after[20:])


def test_reconnect_gives_up_with_unreachable_after_reconnect_timeout(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc, reconnect_timeout=1.0) as client:
        client.publish(heartbeats("g", 1, 1))
        sub = client.subscribe(RAW, start="earliest")
        assert [uptime(d) for d in take(sub, 1)] == [1]
        jimbus.stop()
        with pytest.raises(Unreachable, match="could not reconnect"):
            take(sub, 1)
        # Closing the client closes what it opened; doing it twice is harmless.
        client.close()
        sub.close()
