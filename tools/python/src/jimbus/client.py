"""The synchronous client: `Client`, `Subscription` and the ack sender thread.

A subscription opens its stream eagerly (so it is registered when `subscribe`
returns), reconnects with backoff when the connection drops, and for a durable
name acks each delivery after the loop body that received it, in batches sent
by one background thread with a bounded number of positions outstanding.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import grpc.experimental

from jimbus import _core
from jimbus._core import Backoff, EventLike, PublishResult, Start, SubscribeOptions, Tracker
from jimbus._proto.jimbot.bus.v1 import bus_pb2
from jimbus.delivery import Delivery, Hand
from jimbus.errors import (
    JimbusError,
    TooManyUnacked,
    Unreachable,
    from_rpc_error,
    is_retryable,
    status_of,
    translate,
)

if TYPE_CHECKING:
    AckFuture = grpc.Future[bus_pb2.AckResponse]
    _Stream = grpc._CallIterator[bus_pb2.SubscribeResponse]

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Position = tuple[int, int]

# Acks: positions per request, positions queued or being sent at most, and how
# long the sender waits to fill a batch.
ACK_BATCH = 1000
MAX_PENDING_ACKS = 10_000
ACK_INTERVAL_S = 0.02
MAX_ACK_REQUESTS = 4


class _AckSender:
    """Sends acks of one durable subscription in batches from a background thread.

    Bounded twice: `add` blocks while `max_pending` positions are queued or
    unanswered, and at most `max_requests` Ack requests are in flight at once.
    A failed ack is not retried: the server sends the delivery again and the
    tracker flags it as a repeat. One lock and a list, not a queue.Queue: `add`
    runs once per delivery and must cost little more than an append.
    """

    def __init__(
        self,
        send: Callable[[list[Position]], AckFuture],
        tracker: Tracker,
        max_batch: int = ACK_BATCH,
        max_pending: int = MAX_PENDING_ACKS,
        interval: float = ACK_INTERVAL_S,
        max_requests: int = MAX_ACK_REQUESTS,
    ) -> None:
        self._send = send
        self._tracker = tracker
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._interval = interval
        self._cond = threading.Condition()
        self._pending: list[Position] = []
        self._outstanding = 0  # queued, or sent and not yet answered
        self._closing = False
        self._slots = threading.BoundedSemaphore(max_requests)
        self.error: JimbusError | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._loop, name="jimbus-acks", daemon=True)
        self._thread.start()

    def add(self, position: Position) -> None:
        if self.error is not None:
            raise self.error
        with self._cond:
            while self._outstanding >= self._max_pending and not self._closing:
                self._cond.wait()
            self._pending.append(position)
            self._outstanding += 1
            if len(self._pending) == 1 or len(self._pending) >= self._max_batch:
                self._cond.notify_all()

    def _take(self) -> list[Position] | None:
        """The next batch: waits for a first position, then up to `interval` for a full batch."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = time.monotonic() + self._interval
            while len(self._pending) < self._max_batch and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._slots.acquire()
            try:
                future = self._send(batch)
            except Exception as error:  # the channel is closed
                self._settle(batch, None, error)
                continue
            future.add_done_callback(functools.partial(self._settled, batch))

    def _settled(self, batch: list[Position], future: AckFuture) -> None:
        """Runs when an Ack request is answered (on a grpc thread)."""
        try:
            future.result()
        except Exception as error:
            self._settle(batch, future, error)
        else:
            self._settle(batch, future, None)

    def _settle(self, batch: list[Position], future: AckFuture | None, error: Exception | None) -> None:
        if error is None:
            self._tracker.confirmed(batch)
            self.sent += len(batch)
        elif isinstance(error, grpc.RpcError):
            code, details = status_of(error)
            if not is_retryable(code, details):
                self.error = translate(code, details, "ack")
        else:
            self.error = JimbusError(f"ack failed: {error!r}")
        self._slots.release()
        with self._cond:
            self._outstanding -= len(batch)
            self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        """Waits until every queued ack was answered; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._outstanding:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)


class Subscription(Generic[T]):
    """An open subscription; iterate it for deliveries (or hands), close it when done.

    Use it as a context manager so that pending acks are sent and the stream is
    cancelled on exit. Iterating blocks until the next delivery arrives.
    """

    def __init__(
        self,
        client: Client,
        options: SubscribeOptions,
        transform: Callable[[Delivery], T | None],
        reconnect: bool = True,
    ) -> None:
        self._client = client
        self.options = options
        self._transform = transform
        self._reconnect = reconnect
        self._tracker = Tracker(options)
        self._closed = False
        self._close_lock = threading.Lock()
        self._reading = False
        self._handed_out: set[Position] = set()
        self._limit = options.max_in_flight or 1000
        self.reconnects = 0
        self._acks: _AckSender | None = None
        if options.durable:
            durable = options.durable
            self._acks = _AckSender(lambda batch: client._ack_future(durable, batch), self._tracker)
        try:
            self._call = self._open_first()
        except BaseException:
            if self._acks is not None:
                self._acks.close(0)
            raise
        client._subscriptions.add(self)

    # -- opening -------------------------------------------------------------
    def _open(self, start: _core.StartSpec) -> _Stream:
        """One attempt. It fails fast (UNAVAILABLE) while nothing listens; a server
        that accepts and then never answers is given up on by the keepalive."""
        client = self._client
        call = client._subscribe(self.options.request(start), metadata=client._metadata)
        call.initial_metadata()  # the server answers the headers once the subscription is registered
        # A refused call ends with its headers; a finished call is its own RpcError.
        if isinstance(call, grpc.Future) and call.done() and isinstance(call, grpc.RpcError):
            if call.code() != grpc.StatusCode.OK:
                raise call
        self._tracker.opened()
        return call

    def _open_first(self) -> _Stream:
        backoff = Backoff(self._client.connect_timeout)
        return self._open_with(backoff, self.options.start, "connect")

    def _open_with(self, backoff: Backoff, start: _core.StartSpec, what: str) -> _Stream:
        last = "no answer"
        while not self._closed:
            try:
                return self._open(start)
            except grpc.RpcError as error:
                code, details = status_of(error)
                if not is_retryable(code, details):
                    raise translate(code, details, self._client.target, self.options.pattern) from None
                last = f"{code.name if code else 'UNKNOWN'}: {details}"
            if backoff.expired():
                raise Unreachable(f"could not {what} to jimbus at {self._client.target}: {last}")
            time.sleep(backoff.next_delay())
        raise _Closed()

    # -- iterating -----------------------------------------------------------
    def __iter__(self) -> Iterator[T]:
        return self._run()

    def _run(self) -> Iterator[T]:
        tracker, transform = self._tracker, self._transform
        auto_acks = self._acks if self.options.auto_ack else None
        manual = self._acks is not None and auto_acks is None
        while not self._closed:
            call = self._call
            try:
                while True:
                    self._reading = True
                    try:
                        message = next(call)
                    except StopIteration:
                        break
                    finally:
                        self._reading = False
                    delivery = tracker.admit(message)
                    if delivery is None:
                        continue
                    item = transform(delivery)
                    if item is None:  # not for the caller (a state-only aggregated message)
                        if self._acks is not None:
                            self._acks.add(delivery.position)
                        continue
                    if manual:
                        self._handed_out.add(delivery.position)
                    yield item
                    if auto_acks is not None:
                        auto_acks.add(delivery.position)
                    elif manual and len(self._handed_out) >= self._limit:
                        raise TooManyUnacked(
                            f"{len(self._handed_out)} deliveries are unacknowledged (max_in_flight "
                            f"{self._limit}): ack them with Subscription.ack before asking for more"
                        )
            except grpc.RpcError as error:
                _drain(call)
                if self._closed:
                    return
                code, details = status_of(error)
                if not (self._reconnect and is_retryable(code, details)):
                    raise translate(code, details, self._client.target, self.options.pattern) from None
            _drain(call)
            if self._closed:
                return
            if not self._reconnect:
                raise Unreachable(f"jimbus at {self._client.target} closed the subscription")
            try:
                self._call = self._open_with(Backoff(self._client.reconnect_timeout), tracker.resume_start(), "reconnect")
            except _Closed:
                return
            self.reconnects += 1
            if self._closed:  # closed while the new stream was opening: close() cancelled the old one
                self._call.cancel()
                _drain(self._call)
                return

    # -- acks and closing ----------------------------------------------------
    def ack(self, *items: Delivery | Position) -> None:
        """Queues acks (batched) for deliveries of a durable subscription with auto_ack=False."""
        if self._acks is None:
            raise ValueError("only durable subscriptions are acknowledged")
        for item in items:
            position = item.position if isinstance(item, Delivery) else item
            self._handed_out.discard(position)
            self._acks.add(position)

    def flush_acks(self, timeout: float | None = 10.0) -> bool:
        """Waits until every queued ack was answered by the server; False on timeout."""
        return True if self._acks is None else self._acks.flush(timeout)

    def close(self, flush_timeout: float = 5.0) -> None:
        """Sends pending acks (waiting at most `flush_timeout`), then cancels the stream."""
        with self._close_lock:
            if self._closed:
                return
            if self._acks is not None:
                self._acks.close(flush_timeout)
            self._closed = True
            self._call.cancel()
            if not self._reading:  # else the reading thread drains it
                _drain(self._call)

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Closed(Exception):
    """The subscription was closed while reconnecting."""


class Client:
    """A connection to one jimbus server (gRPC, plaintext).

    `url` is "host:port" (also "http://…" or "grpc://…"); default
    $JIMBUS_GRPC_TARGET or 127.0.0.1:50051. Calls raise `Unreachable` when no
    server answers within `connect_timeout`; a subscription whose connection
    drops reconnects for up to `reconnect_timeout` seconds (None: forever).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        connect_timeout: float = 5.0,
        reconnect_timeout: float | None = 60.0,
        request_id: str | None = None,
    ) -> None:
        self.target = _core.target_of(url)
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self._metadata = (("x-request-id", request_id),) if request_id else None
        self._subscriptions: weakref.WeakSet[Subscription[Any]] = weakref.WeakSet()
        # Streams are read on the caller's thread instead of through grpc's channel
        # spin thread: about 1.5-2x the deliveries per second.
        options = [*_core.CHANNEL_OPTIONS, (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
        self._channel = grpc.insecure_channel(self.target, options=options)
        service = _core.SERVICE
        self._subscribe = self._channel.unary_stream(
            service + "Subscribe",
            request_serializer=bus_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=bus_pb2.SubscribeResponse.FromString,
        )
        self._publish = self._channel.unary_unary(
            service + "Publish",
            request_serializer=bus_pb2.PublishRequest.SerializeToString,
            response_deserializer=bus_pb2.PublishResponse.FromString,
        )
        self._ack = self._channel.unary_unary(
            service + "Ack",
            request_serializer=bus_pb2.AckRequest.SerializeToString,
            response_deserializer=bus_pb2.AckResponse.FromString,
        )
        self._list_topics = self._channel.unary_unary(
            service + "ListTopics",
            request_serializer=bus_pb2.ListTopicsRequest.SerializeToString,
            response_deserializer=bus_pb2.ListTopicsResponse.FromString,
        )

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None) -> Resp:
        """A unary call, tried again for up to `connect_timeout` while the server cannot
        be reached (not when it is overloaded). The server deduplicates events by
        event_id and acks by position, so a request that did arrive changes nothing twice."""
        backoff = Backoff(self.connect_timeout)
        while True:
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code, details = status_of(error)
                if code != grpc.StatusCode.UNAVAILABLE or "overloaded" in details or backoff.expired():
                    raise
            time.sleep(backoff.next_delay())

    def subscribe(
        self,
        pattern: str,
        start: Start = None,
        durable: str | None = None,
        *,
        auto_ack: bool = True,
        max_in_flight: int = 0,
        ack_wait: float | None = None,
        max_deliver: int = 0,
        reconnect: bool = True,
    ) -> Subscription[Delivery]:
        """Subscribes to topics matching `pattern` (NATS syntax); iterate the result.

        `start`: "latest", "earliest", "offset:N" or an int, "time:RFC3339" or an
        aware datetime; None is latest, or where a durable subscription left off.
        With `durable`, each delivery is acked after the loop body that received
        it unless `auto_ack=False` (then call `Subscription.ack`).
        """
        options = _core.subscribe_options(pattern, start, durable, auto_ack, max_in_flight, ack_wait, max_deliver)
        return Subscription(self, options, _identity, reconnect)

    def hands(
        self,
        session: str = "*",
        start: Start = None,
        durable: str | None = None,
        *,
        auto_ack: bool = True,
        max_in_flight: int = 0,
        ack_wait: float | None = None,
        max_deliver: int = 0,
        reconnect: bool = True,
    ) -> Subscription[Hand]:
        """Aggregated hands of one session (or every one: "*") as BalatroGameStateEvent
        messages, from `balatro.<session>.aggregated`; the options are subscribe's.

        Only hands: a message that carries only a coalesced game state (a window
        in which no hand closed) is skipped, and acked when durable. Subscribe
        to the pattern itself to see those too."""
        pattern = _core.hands_pattern(session)
        options = _core.subscribe_options(pattern, start, durable, auto_ack, max_in_flight, ack_wait, max_deliver)
        return Subscription(self, options, _hand_of, reconnect)

    def publish(self, events: Iterable[EventLike], timeout: float | None = 60.0) -> PublishResult:
        """Publishes events (messages or canonical-JSON dicts); returns once they are durable.

        Large lists are split into requests of at most 1000 events or 1 MiB.
        Raises `Overloaded` when the server sheds load (retrying is safe for
        events with an event_id: the server deduplicates them).
        """
        result = PublishResult()
        for first, request in _core.publish_chunks(events):
            try:
                response = self._call(self._publish, request, timeout)
            except grpc.RpcError as error:
                raise from_rpc_error(error, self.target) from None
            result.add(first, response)
        return result

    def ack(self, durable: str, items: Iterable[Delivery | Position], timeout: float | None = 30.0) -> int:
        """Acks positions of a durable subscription now (unbatched); returns how many were in flight."""
        try:
            return self._send_ack(durable, [i.position if isinstance(i, Delivery) else i for i in items], timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None

    def _send_ack(self, durable: str, positions: list[Position], timeout: float | None = 30.0) -> int:
        response = self._call(self._ack, _ack_request(durable, positions), timeout)
        return response.acked

    def _ack_future(self, durable: str, positions: list[Position]) -> AckFuture:
        return self._ack.future(_ack_request(durable, positions), timeout=30.0, metadata=self._metadata)

    def topics(self, pattern: str = "", timeout: float | None = 30.0) -> dict[str, int]:
        """Every topic (matching `pattern`, if given) with its number of events."""
        try:
            response = self._call(self._list_topics, bus_pb2.ListTopicsRequest(pattern=pattern), timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target, pattern) from None
        return {t.name: t.events for t in response.topics}

    def close(self) -> None:
        """Closes every open subscription (sending their pending acks), then the channel."""
        for sub in list(self._subscriptions):
            sub.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ack_request(durable: str, positions: list[Position]) -> bus_pb2.AckRequest:
    return bus_pb2.AckRequest(
        durable_name=durable, positions=[bus_pb2.AckPosition(partition=p, offset=o) for p, o in positions]
    )


def _drain(call: _Stream) -> None:
    """Consumes what a finished or cancelled single-threaded stream still has due.

    Read on the caller's thread (SingleThreadedUnaryStream), a stream's last
    completions are only taken off its queue by the reader; a cancelled one left
    there keeps the call, and with it the connection, alive after close. Only the
    thread that reads the stream may call this. grpc exposes no public way to do
    it, so it degrades to nothing if those internals change.
    """
    state = getattr(call, "_state", None)
    consume = getattr(call, "_consume_next_event", None)
    due = getattr(state, "due", None)
    if consume is None or not isinstance(due, set):
        return
    while due:
        consume()


def _identity(delivery: Delivery) -> Delivery:
    return delivery


def _hand_of(delivery: Delivery) -> Hand | None:
    """The hand, or None for a message that carries only a coalesced game state."""
    hand = delivery.message.aggregated
    return hand if hand.HasField("cascade_info") else None
