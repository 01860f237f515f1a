#!/usr/bin/env python3
"""Example jimbus subscriber in Python: grpcio plus the stubs in gen/python.

Subscribes to a topic pattern on jimbus's EventBusService and prints one JSON line
per delivery as it arrives (the SubscribeResponse in canonical protobuf JSON, on
one line: topic, partition, offset, deliveryCount and the event). With --durable
it acknowledges each delivery after printing it, so a later run with the same
name resumes after it.

    tools/proto-gen                 # once: generates gen/python
    tools/.venv/bin/python tools/subscriber.py --pattern 'balatro.*.SCORING'
    tools/.venv/bin/python tools/subscriber.py --pattern '>' --start earliest --count 10

Exit status: 0 after --count deliveries (or, without --count, when --timeout
ends the run or the server closes the stream); 1 when the server fails the call
or --timeout passes before --count deliveries arrived; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen" / "python"))

try:
    import grpc
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from jimbot.bus.v1 import bus_pb2, bus_pb2_grpc
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.exit(
        f"subscriber: {error}; install the tools (tools/install-test-deps.sh) "
        "and generate the stubs (tools/proto-gen)"
    )


def parse_start(text: str) -> dict:
    """Turns latest | earliest | offset:N | time:RFC3339 into SubscribeRequest fields."""
    if text == "latest":
        return {"start": bus_pb2.START_POSITION_LATEST}
    if text == "earliest":
        return {"start": bus_pb2.START_POSITION_EARLIEST}
    kind, _, value = text.partition(":")
    if kind == "offset" and value.isdigit():
        return {"start": bus_pb2.START_POSITION_OFFSET, "start_offset": int(value)}
    if kind == "time" and value:
        stamp = Timestamp()
        try:
            stamp.FromJsonString(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"bad RFC 3339 time {value!r}: {error}") from None
        return {"start": bus_pb2.START_POSITION_TIME, "start_time": stamp}
    raise argparse.ArgumentTypeError(
        f"bad start {text!r}: expected latest, earliest, offset:N or time:RFC3339"
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Subscribe to jimbus over gRPC and print one JSON line per delivery.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("JIMBUS_GRPC_TARGET", "127.0.0.1:50051"),
        help="gRPC address host:port (default: $JIMBUS_GRPC_TARGET or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--pattern",
        default=">",
        help="topic pattern with NATS wildcards: '*' one token, '>' the rest (default: '>')",
    )
    parser.add_argument(
        "--durable",
        metavar="NAME",
        default="",
        help="durable subscription name; deliveries are acknowledged after printing",
    )
    parser.add_argument(
        "--start",
        type=parse_start,
        default=None,
        metavar="latest|earliest|offset:N|time:RFC3339",
        help="where to start (default: latest, or where a durable subscription left off)",
    )
    parser.add_argument("--count", type=positive_int, help="exit 0 after this many deliveries")
    parser.add_argument(
        "--timeout", type=positive_float, help="give up after this many seconds (exit 1 if --count is unmet)"
    )
    return parser.parse_args(argv)


def to_json_line(message) -> str:
    """Canonical protobuf JSON on one line (non-finite doubles as "Infinity"/"NaN")."""
    as_dict = json_format.MessageToDict(message)
    return json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = args.target.removeprefix("http://")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def remaining() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    request = bus_pb2.SubscribeRequest(pattern=args.pattern, durable_name=args.durable, **(args.start or {}))
    received = 0
    with grpc.insecure_channel(target) as channel:
        stub = bus_pb2_grpc.EventBusServiceStub(channel)
        call = stub.Subscribe(request, timeout=remaining())
        try:
            # The server answers the headers once the subscription is registered.
            call.initial_metadata()
            print(f"subscriber: subscribed to {args.pattern!r} on {target}", file=sys.stderr, flush=True)
            for delivery in call:
                sys.stdout.write(to_json_line(delivery) + "\n")
                sys.stdout.flush()
                if args.durable:
                    ack = bus_pb2.AckRequest(
                        durable_name=args.durable,
                        positions=[bus_pb2.AckPosition(partition=delivery.partition, offset=delivery.offset)],
                    )
                    stub.Ack(ack, timeout=remaining())
                received += 1
                if args.count is not None and received >= args.count:
                    call.cancel()
                    return 0
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and args.count is None:
                return 0
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                print(
                    f"subscriber: timed out after {args.timeout} s with {received} of {args.count} deliveries",
                    file=sys.stderr,
                )
            else:
                print(f"subscriber: {code.name}: {error.details()}", file=sys.stderr)
            return 1
    if args.count is not None and received < args.count:
        print(f"subscriber: the stream ended after {received} of {args.count} deliveries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
