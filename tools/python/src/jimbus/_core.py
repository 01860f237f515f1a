"""What the sync and asyncio clients share: targets, start positions, requests,
backoff, and the resume bookkeeping that keeps a reconnected subscription free
of gaps and of repeats it cannot flag.

Nothing here does I/O; the two clients own their channels, threads and tasks.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from jimbus._proto.jimbot.bus.v1 import bus_pb2
from jimbus._proto.jimbot.events.v1 import events_pb2
from jimbus.delivery import Delivery
from jimbus.errors import BadPattern

DEFAULT_TARGET = "127.0.0.1:50051"
SERVICE = "/jimbot.bus.v1.EventBusService/"

# Fast reconnects (grpc's own default backoff starts at 1 s and grows to 120 s),
# keepalives that notice a vanished server, and room for large aggregated hands.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

# Publish splits its events into requests of at most this many events / bytes.
PUBLISH_CHUNK_EVENTS = 1000
PUBLISH_CHUNK_BYTES = 1 << 20

# A start position: "latest", "earliest", "offset:N", "time:RFC3339", an int
# offset, a datetime, or None (latest; for a durable name, where it left off).
Start = Union[str, int, _dt.datetime, None]
EventLike = Union[events_pb2.Event, Mapping[str, Any]]


def target_of(url: str | None) -> str:
    """`host:port` from "host:port", "http://host:port" or "grpc://host:port" (default: $JIMBUS_GRPC_TARGET)."""
    text = url or os.environ.get("JIMBUS_GRPC_TARGET") or DEFAULT_TARGET
    text = re.sub(r"^(grpc|http)://", "", text).rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"bad jimbus address {url!r}: expected host:port")
    return text


@dataclass(frozen=True)
class StartSpec:
    """A parsed start position, as SubscribeRequest fields."""

    position: bus_pb2.StartPosition
    offset: int = 0
    time_us: int | None = None

    def apply(self, request: bus_pb2.SubscribeRequest) -> None:
        request.start = self.position
        request.start_offset = self.offset
        if self.time_us is not None:
            request.start_time.FromMicroseconds(self.time_us)


def parse_start(start: Start) -> StartSpec:
    """Turns latest | earliest | offset:N | time:RFC3339 | int | datetime | None into a StartSpec."""
    if start is None:
        return StartSpec(bus_pb2.START_POSITION_UNSPECIFIED)
    if isinstance(start, bool):
        raise ValueError(f"bad start {start!r}")
    if isinstance(start, int):
        if start < 0:
            raise ValueError(f"bad start offset {start}: must be >= 0")
        return StartSpec(bus_pb2.START_POSITION_OFFSET, offset=start)
    if isinstance(start, _dt.datetime):
        if start.tzinfo is None:
            raise ValueError("a start datetime must be timezone-aware")
        stamp = Timestamp()
        stamp.FromDatetime(start.astimezone(_dt.timezone.utc))
        return StartSpec(bus_pb2.START_POSITION_TIME, time_us=stamp.ToMicroseconds())
    if start == "latest":
        return StartSpec(bus_pb2.START_POSITION_LATEST)
    if start == "earliest":
        return StartSpec(bus_pb2.START_POSITION_EARLIEST)
    kind, _, value = start.partition(":")
    if kind == "offset" and value.isdigit():
        return StartSpec(bus_pb2.START_POSITION_OFFSET, offset=int(value))
    if kind == "time" and value:
        stamp = Timestamp()
        try:
            stamp.FromJsonString(value)
        except ValueError as error:
            raise ValueError(f"bad RFC 3339 time {value!r}: {error}") from None
        return StartSpec(bus_pb2.START_POSITION_TIME, time_us=stamp.ToMicroseconds())
    raise ValueError(f"bad start {start!r}: expected latest, earliest, offset:N or time:RFC3339")


@dataclass(frozen=True)
class SubscribeOptions:
    """Everything a subscription needs to open, and to reopen after a dropped connection."""

    pattern: str
    start: StartSpec
    durable: str | None = None
    auto_ack: bool = True
    max_in_flight: int = 0
    ack_wait: float | None = None
    max_deliver: int = 0

    def request(self, start: StartSpec | None = None) -> bus_pb2.SubscribeRequest:
        request = bus_pb2.SubscribeRequest(
            pattern=self.pattern,
            durable_name=self.durable or "",
            max_in_flight=self.max_in_flight,
            max_deliver=self.max_deliver,
        )
        (start or self.start).apply(request)
        if self.ack_wait is not None:
            request.ack_wait.CopyFrom(Duration(seconds=int(self.ack_wait), nanos=int(self.ack_wait % 1 * 1e9)))
        return request


def subscribe_options(
    pattern: str,
    start: Start,
    durable: str | None,
    auto_ack: bool,
    max_in_flight: int,
    ack_wait: float | None,
    max_deliver: int,
) -> SubscribeOptions:
    """Checks what the client can check itself (the server checks the pattern's syntax)."""
    if not pattern or not pattern.strip():
        raise BadPattern("the pattern is empty")
    if max_in_flight < 0 or max_deliver < 0 or (ack_wait is not None and ack_wait < 0):
        raise ValueError("max_in_flight, max_deliver and ack_wait must not be negative")
    return SubscribeOptions(pattern, parse_start(start), durable or None, auto_ack, max_in_flight, ack_wait, max_deliver)


def session_token(session: str) -> str:
    """A session id as it appears in a topic (the server's own replacement of . * > and spaces)."""
    if session == "*":
        return session
    return re.sub(r"[.*>\s]", "_", session)


def hands_pattern(session: str) -> str:
    return f"balatro.{session_token(session)}.aggregated"


class Backoff:
    """Exponential backoff with jitter: 0.1 s doubling to 2 s, until an optional total timeout."""

    def __init__(self, timeout: float | None, first: float = 0.1, cap: float = 2.0) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = first
        self.cap = cap

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def next_delay(self) -> float:
        """How long to wait before the next attempt (never past the deadline)."""
        delay = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, self.cap)
        left = self.remaining()
        return delay if left is None else min(delay, left)


@dataclass
class Tracker:
    """Resume bookkeeping of one subscription.

    Ephemeral: remembers the highest offset yielded per partition, drops any
    delivery at or below it after a reconnect (an exact repeat), and reopens from
    the original start (earliest, offset, time; latest becomes the time it was
    first opened), so partitions that had not delivered anything yet lose nothing.

    Durable: the server resumes the named consumer at its ack floor. Positions
    yielded but not yet confirmed acked are remembered, and a delivery of one of
    them again gets a delivery_count above the times it was yielded, even when a
    restarted server, which forgot its in-flight counts, says 1.
    """

    options: SubscribeOptions
    opened_at_us: int = 0
    last: dict[int, int] = field(default_factory=dict)
    yielded: dict[tuple[int, int], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Bound on remembered unconfirmed positions (the server's own bound is max_in_flight).
    limit: int = 1_000_000

    def opened(self) -> None:
        if self.opened_at_us == 0:
            self.opened_at_us = time.time_ns() // 1000

    def admit(self, message: bus_pb2.SubscribeResponse) -> Delivery | None:
        """The delivery to yield for `message`, or None when it is a known repeat."""
        if not self.options.durable:
            partition, offset = message.partition, message.offset
            if self.last.get(partition, -1) >= offset:
                return None
            self.last[partition] = offset
            return Delivery(message, message.delivery_count)
        key = (message.partition, message.offset)
        with self.lock:
            seen = self.yielded.get(key, 0)
            count = max(message.delivery_count, seen + 1)
            self.yielded[key] = count
            if len(self.yielded) > self.limit:
                del self.yielded[next(iter(self.yielded))]
        return Delivery(message, count)

    def confirmed(self, positions: Iterable[tuple[int, int]]) -> None:
        """The server stored these acks: they will not be delivered again."""
        with self.lock:
            for key in positions:
                self.yielded.pop(key, None)

    def unacked(self) -> int:
        return len(self.yielded)

    def resume_start(self) -> StartSpec:
        """Where a reopened subscription starts (see the class doc)."""
        start = self.options.start
        if self.options.durable:
            return start  # ignored by the server for an existing consumer
        if start.position in (bus_pb2.START_POSITION_UNSPECIFIED, bus_pb2.START_POSITION_LATEST):
            # A second of margin for records stamped just before the first open
            # but appended after it; they are older than what was asked for, never a gap.
            return StartSpec(bus_pb2.START_POSITION_TIME, time_us=max(self.opened_at_us - 1_000_000, 0))
        return start


def to_event(event: EventLike) -> events_pb2.Event:
    if isinstance(event, events_pb2.Event):
        return event
    return json_format.ParseDict(dict(event), events_pb2.Event())


def publish_chunks(events: Iterable[EventLike]) -> Iterator[tuple[int, bus_pb2.PublishRequest]]:
    """Splits events into requests of bounded size, each with the index of its first event."""
    request = bus_pb2.PublishRequest()
    size = 0
    first = 0
    index = 0
    for item in events:
        event = to_event(item)
        event_size = event.ByteSize()
        if request.events and (len(request.events) >= PUBLISH_CHUNK_EVENTS or size + event_size > PUBLISH_CHUNK_BYTES):
            yield first, request
            request, size, first = bus_pb2.PublishRequest(), 0, index
        request.events.append(event)
        size += event_size
        index += 1
    if request.events:
        yield first, request


@dataclass
class PublishResult:
    """The outcome of a publish: accepted events are durable."""

    accepted: int = 0
    duplicates: int = 0
    # (index of the event in what was passed to publish, why it was rejected)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def add(self, first: int, response: bus_pb2.PublishResponse) -> None:
        self.accepted += response.accepted
        self.duplicates += response.duplicates
        self.rejected.extend((first + r.index, r.error) for r in response.rejected)
