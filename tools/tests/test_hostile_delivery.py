"""Issue 19 from the Python side: what the server accepts from a hostile client,
a default Python gRPC client (grpcio with the upb protobuf runtime and its
default recursion and message-size limits) receives, decodes and prints as
protobuf JSON; and a PublishBatch stream of 20,000 one-event messages, which
grpcio sends one small DATA frame each, is stored whole."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
from google.protobuf import json_format

from jimbot.bus.v1 import bus_pb2, bus_pb2_grpc
from jimbot.events.v1 import events_pb2

SESSION = "hostile"
# A delivery nests at most 100 messages; an unknown top-level key's value sits at
# level 5 and each list adds 2 (see core/tests/fixtures/compat/DIALECT.md).
MAX_LISTS = (100 - 5) // 2
MAX_OBJECTS = (100 - 5) // 3


def post(server, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{server.http}{path}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def event(extra: str) -> bytes:
    return ('{"type":"HEARTBEAT","session_id":"' + SESSION + '",' + extra + "}").encode()


def accepted_events() -> list[bytes]:
    nested_objects = '{"k":' * MAX_OBJECTS + "1" + "}" * MAX_OBJECTS
    big = ",".join(["12345.5"] * 150_000)  # about 1.7 MB encoded, under the 2 MiB cap
    return [
        event('"deep":' + "[" * MAX_LISTS + "1" + "]" * MAX_LISTS),
        event('"deep":' + nested_objects),
        event('"odd":inf,"list":[nan,-inf,-nan],"nested":{"x":-inf}'),
        event('"note":"lone \\ud800 and \\udc00 pair \\ud83d\\ude00","raw":"bell\x07 esc\x1b"'),
        event('"x":"first","x":"last"'),
        event('"big":[' + big + "]"),
    ]


def test_a_default_python_client_receives_and_prints_every_accepted_hostile_event(jimbus):
    events = accepted_events()
    too_deep = event('"deep":' + "[" * (MAX_LISTS + 1) + "1" + "]" * (MAX_LISTS + 1))
    body = b'{"events":[' + b",".join(events + [too_deep]) + b"]}"
    status, answer = post(jimbus, "/api/v1/events/batch", body)
    assert status == 200, answer
    assert answer["accepted"] == len(events), answer
    assert [r["index"] for r in answer["rejected"]] == [len(events)], answer

    with grpc.insecure_channel(jimbus.grpc) as channel:
        stub = bus_pb2_grpc.EventBusServiceStub(channel)
        request = bus_pb2.SubscribeRequest(
            pattern=f"balatro.{SESSION}.>", start=bus_pb2.START_POSITION_EARLIEST
        )
        stream = stub.Subscribe(request, timeout=60)
        received = [next(stream) for _ in events]
        stream.cancel()
    extras = []
    for delivery in received:
        assert delivery.WhichOneof("body") == "event"
        printed = json.loads(json_format.MessageToJson(delivery))
        extras.append(printed["event"]["extra"])
    assert extras[2]["odd"] == "Infinity" and extras[2]["list"] == ["NaN", "-Infinity", "NaN"]
    assert extras[3]["note"] == "lone \ufffd and \ufffd pair \U0001f600"
    assert extras[4]["x"] == "last"
    assert len(extras[5]["big"]) == 150_000


def test_a_stream_of_20000_one_event_messages_is_stored_whole(jimbus):
    count = 20_000

    def messages():
        for i in range(count):
            yield bus_pb2.PublishBatchRequest(
                events=[
                    events_pb2.Event(
                        event_type="HEARTBEAT",
                        session_id="py-stream",
                        event_id=f"s{i}",
                        heartbeat=events_pb2.HeartbeatEvent(),
                    )
                ]
            )

    with grpc.insecure_channel(jimbus.grpc) as channel:
        answer = bus_pb2_grpc.EventBusServiceStub(channel).PublishBatch(messages(), timeout=120)
    assert answer.accepted == count, answer
    assert not answer.rejected
