"""The synchronous client against the real server: publish, subscribe from every
start position, hands and to_pandas, durable acks, and its exceptions."""

from __future__ import annotations

import math
import socket

import pytest
from conftest import Jimbus, hand, heartbeats
from helpers import take


from jimbus import BadPattern, Client, Delivery, TooManyUnacked, Unreachable, to_pandas
from jimbus.pb import events_pb2

RAW = "balatro.*.HEARTBEAT"


def uptimes(deliveries: list[Delivery]) -> list[int]:
    return [int(d.event.heartbeat.uptime) for d in deliveries if d.event is not None]


def test_publish_then_subscribe_from_earliest(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        result = client.publish(heartbeats("s1", 1, 5))
        assert (result.accepted, result.duplicates, result.rejected) == (5, 0, [])
        # A retry of the same events is deduplicated by event_id.
        assert client.publish(heartbeats("s1", 1, 2)).duplicates == 2
        with client.subscribe(RAW, start="earliest") as sub:
            deliveries = take(sub, 5)
    assert uptimes(deliveries) == [1, 2, 3, 4, 5]
    first = deliveries[0]
    assert first.topic == "balatro.s1.HEARTBEAT" and first.kind == "event"
    assert first.delivery_count == 1 and not first.redelivered
    assert [d.event.sequence for d in deliveries if d.event] == [1, 2, 3, 4, 5]
    as_dict = first.to_dict()
    assert as_dict["topic"] == "balatro.s1.HEARTBEAT"
    assert as_dict["deliveryCount"] == 1
    assert as_dict["event"]["eventId"] == "s1-1"
    assert as_dict["event"]["heartbeat"] == {"modVersion": "1.0.0", "uptime": 1.0}


def test_publish_accepts_dicts_and_reports_rejections_by_index(jimbus: Jimbus) -> None:
    good = {"eventId": "d-1", "eventType": "HEARTBEAT", "sessionId": "s2", "heartbeat": {"uptime": 3}}
    bad = {"eventId": "d-2", "eventType": "HEARTBEAT", "heartbeat": {"uptime": 4}}  # no session_id
    with Client(jimbus.grpc) as client:
        result = client.publish([good, bad])
    assert result.accepted == 1
    assert [index for index, _ in result.rejected] == [1]
    assert "session_id" in result.rejected[0][1]


def test_publish_splits_large_lists_and_numbers_rejections_across_requests(jimbus: Jimbus) -> None:
    events = heartbeats("big", 1, 2500)
    events[2100].ClearField("session_id")
    with Client(jimbus.grpc) as client:
        result = client.publish(events)
        assert result.accepted == 2499
        assert [index for index, _ in result.rejected] == [2100]
        assert client.topics("balatro.big.>") == {"balatro.big.HEARTBEAT": 2499}


def test_latest_sees_only_what_was_published_after_subscribe_returned(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        client.publish(heartbeats("s1", 1, 2))
        with client.subscribe(RAW) as sub:  # registered when subscribe returns
            client.publish(heartbeats("s1", 3, 4))
            assert uptimes(take(sub, 2)) == [3, 4]


def test_offset_and_time_starts(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        client.publish(heartbeats("s1", 1, 5))
        with client.subscribe(RAW, start="offset:3") as sub:
            assert uptimes(take(sub, 2)) == [4, 5]
        with client.subscribe(RAW, start=3) as sub:
            assert uptimes(take(sub, 2)) == [4, 5]
        with client.subscribe(RAW, start="time:2000-01-01T00:00:00Z") as sub:
            assert uptimes(take(sub, 5)) == [1, 2, 3, 4, 5]


def test_hands_yield_typed_aggregated_hands_and_to_pandas(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        client.publish(hand("trainer-1", 1, ["Joker", "Blueprint", "Baron"]) + hand("trainer-1", 2, ["Mime", "Baron"]))
        with client.hands(start="earliest") as sub:
            hands = take(sub, 2)
        with client.hands(session="someone.else", start="earliest") as other:
            assert other.options.pattern == "balatro.someone_else.aggregated"
    assert all(isinstance(h, events_pb2.BalatroGameStateEvent) for h in hands)
    assert [h.cascade_info.trigger_count for h in hands] == [3, 2]
    assert [t.joker_name for t in hands[0].triggers] == ["Joker", "Blueprint", "Baron"]
    assert {h.session_id for h in hands} == {"trainer-1"}
    frame = to_pandas(hands)
    assert list(frame["trigger_count"]) == [3, 2]
    assert list(frame["hand_type"]) == ["Flush", "Flush"]
    assert list(frame["jokers"])[1] == ["Mime", "Baron"]
    assert bool(frame["complete"].all())
    assert not math.isnan(float(frame["chips_delta"][0]))


def test_hands_skip_state_only_messages(jimbus: Jimbus) -> None:
    state = events_pb2.Event(
        event_id="gs-1",
        event_type="GAME_STATE",
        session_id="st",
        game_state=events_pb2.GameStateEvent(phase="SELECTING_HAND", ante=3),
    )
    with Client(jimbus.grpc) as client:
        client.publish([state])
        # The window closes with no hand: a state-only message on the aggregated topic.
        with client.subscribe("balatro.st.aggregated", start="earliest") as sub:
            [only_state] = take(sub, 1)
        assert only_state.aggregated is not None
        assert not only_state.aggregated.HasField("cascade_info")
        client.publish(hand("st", 1, ["Joker"]))
        with client.hands("st", start="earliest", durable="hands") as hands:
            [first] = take(hands, 1)
    assert first.cascade_info.trigger_count == 1
    assert first.base.ante == 3  # the merged game state rides along


def test_durable_acks_after_the_loop_body_and_resumes_after_them(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        # Only what is read: deliveries the server sent ahead to a closed subscription
        # come again with delivery_count 2 (the server cannot know they were not handled).
        client.publish(heartbeats("s1", 1, 3))
        with client.subscribe(RAW, start="earliest", durable="trainer") as sub:
            got = take(sub, 3)
            sub.ack(got[-1])  # take() left the loop inside the last body: ack it by hand
            assert sub.flush_acks()
        assert uptimes(got) == [1, 2, 3]
        client.publish(heartbeats("s1", 4, 6))
        # No start: a durable subscription resumes after its last acknowledged event.
        with client.subscribe(RAW, durable="trainer") as sub:
            again = take(sub, 3)
    assert uptimes(again) == [4, 5, 6]
    assert [d.delivery_count for d in again] == [1, 1, 1]


def test_manual_acks_and_too_many_unacked(jimbus: Jimbus) -> None:
    with Client(jimbus.grpc) as client:
        client.publish(heartbeats("s1", 1, 5))
        with client.subscribe(RAW, start="earliest", durable="manual", auto_ack=False, max_in_flight=3) as sub:
            it = iter(sub)
            first = [next(it) for _ in range(3)]
            with pytest.raises(TooManyUnacked, match="3 deliveries are unacknowledged"):
                next(it)
            assert client.ack("manual", first) == 3  # the direct, unbatched ack
        with client.subscribe(RAW, durable="manual", auto_ack=False, max_in_flight=3) as sub:
            rest = take(sub, 2)
            sub.ack(*rest)
            assert sub.flush_acks()
    assert uptimes(first) == [1, 2, 3] and uptimes(rest) == [4, 5]


@pytest.mark.parametrize("pattern", ["balatro.>.x", "a..b", "balatro.* -"])
def test_bad_pattern_is_a_clear_exception(jimbus: Jimbus, pattern: str) -> None:
    with Client(jimbus.grpc) as client:
        with pytest.raises(BadPattern, match="bad pattern"):
            client.subscribe(pattern)
        with pytest.raises(BadPattern):
            client.subscribe("")


def test_unreachable_server_is_a_clear_exception() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with Client(f"http://127.0.0.1:{port}", connect_timeout=0.5) as client:
            with pytest.raises(Unreachable, match=f"127.0.0.1:{port}"):
                client.subscribe(">")
            with pytest.raises(Unreachable):
                client.publish(heartbeats("s1", 1, 1))
            with pytest.raises(ConnectionError):  # Unreachable is a ConnectionError
                client.topics()


def test_bad_start_is_a_value_error() -> None:
    with Client("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="bad start 'yesterday'"):
            client.subscribe(">", start="yesterday")
