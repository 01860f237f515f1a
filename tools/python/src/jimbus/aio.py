"""The asyncio client: `AsyncClient` and `AsyncSubscription`, on grpc.aio.

The same behaviour as `jimbus.client` (eager registration with `open()` or
`async with`, reconnect with backoff, batched acks after the loop body), with
an asyncio task sending the acks instead of a thread.

    async with AsyncClient("127.0.0.1:50051") as client:
        async for hand in client.hands():
            print(hand.cascade_info.trigger_count)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import grpc.aio

from jimbus import _core
from jimbus._core import Backoff, EventLike, PublishResult, Start, SubscribeOptions, Tracker
from jimbus._proto.jimbot.bus.v1 import bus_pb2
from jimbus.client import ACK_BATCH, ACK_INTERVAL_S, MAX_PENDING_ACKS, Position
from jimbus.delivery import Delivery, Hand
from jimbus.errors import JimbusError, TooManyUnacked, Unreachable, from_rpc_error, is_retryable, status_of, translate

if TYPE_CHECKING:
    from google.protobuf.message import Message

    _Stream = grpc.aio.UnaryStreamCall[Message, bus_pb2.SubscribeResponse]

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _AsyncAckSender:
    """Sends acks in batches from one task; `add` waits while `max_pending` are queued."""

    def __init__(self, client: AsyncClient, durable: str, tracker: Tracker) -> None:
        self._client = client
        self._durable = durable
        self._tracker = tracker
        self._queue: asyncio.Queue[Position] = asyncio.Queue(maxsize=MAX_PENDING_ACKS)
        self.error: JimbusError | None = None
        self.sent = 0
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def add(self, position: Position) -> None:
        if self.error is not None:
            raise self.error
        await self._queue.put(position)

    async def _batch(self) -> list[Position]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_INTERVAL_S
        while len(batch) < ACK_BATCH:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._batch()
            try:
                await self._client._send_ack(self._durable, batch)
                self._tracker.confirmed(batch)
                self.sent += len(batch)
            except grpc.RpcError as error:
                code, details = status_of(error)
                if not is_retryable(code, details):
                    self.error = translate(code, details, "ack")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def close(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            pass
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class AsyncSubscription(Generic[T]):
    """A subscription for `async for`. It opens on first iteration, or at once with
    `await sub.open()` / `async with` (then it is registered before it returns)."""

    def __init__(
        self, client: AsyncClient, options: SubscribeOptions, transform: Callable[[Delivery], T | None], reconnect: bool
    ) -> None:
        self._client = client
        self.options = options
        self._transform = transform
        self._reconnect = reconnect
        self._tracker = Tracker(options)
        self._call: _Stream | None = None
        self._acks: _AsyncAckSender | None = None
        self._closed = False
        self._handed_out: set[Position] = set()
        self._limit = options.max_in_flight or 1000
        self.reconnects = 0

    async def open(self) -> AsyncSubscription[T]:
        if self._call is None:
            if self.options.durable and self._acks is None:
                self._acks = _AsyncAckSender(self._client, self.options.durable, self._tracker)
            try:
                self._call = await self._open_with(Backoff(self._client.connect_timeout), self.options.start, "connect")
            except BaseException:
                if self._acks is not None:
                    await self._acks.close(0)
                    self._acks = None
                raise
            self._client._subscriptions.add(self)
        return self

    async def _open(self, start: _core.StartSpec) -> _Stream:
        """One attempt; fails fast while nothing listens (see Subscription._open)."""
        client = self._client
        call = client._subscribe(self.options.request(start), metadata=client._metadata)
        await call.initial_metadata()
        if call.done():
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), await call.details())
        self._tracker.opened()
        return call

    async def _open_with(self, backoff: Backoff, start: _core.StartSpec, what: str) -> _Stream:
        last = "no answer"
        while not self._closed:
            try:
                return await self._open(start)
            except grpc.RpcError as error:
                code, details = status_of(error)
                if not is_retryable(code, details):
                    raise translate(code, details, self._client.target, self.options.pattern) from None
                last = f"{code.name if code else 'UNKNOWN'}: {details}"
            if backoff.expired():
                raise Unreachable(f"could not {what} to jimbus at {self._client.target}: {last}")
            await asyncio.sleep(backoff.next_delay())
        raise _Closed()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._run()

    async def _run(self) -> AsyncIterator[T]:
        await self.open()
        tracker, transform = self._tracker, self._transform
        auto_acks = self._acks if self.options.auto_ack else None
        manual = self._acks is not None and auto_acks is None
        while not self._closed:
            assert self._call is not None
            try:
                async for message in self._call:
                    delivery = tracker.admit(message)
                    if delivery is None:
                        continue
                    item = transform(delivery)
                    if item is None:  # not for the caller (a state-only aggregated message)
                        if self._acks is not None:
                            await self._acks.add(delivery.position)
                        continue
                    if manual:
                        self._handed_out.add(delivery.position)
                    yield item
                    if auto_acks is not None:
                        await auto_acks.add(delivery.position)
                    elif manual and len(self._handed_out) >= self._limit:
                        raise TooManyUnacked(
                            f"{len(self._handed_out)} deliveries are unacknowledged (max_in_flight "
                            f"{self._limit}): ack them with AsyncSubscription.ack before asking for more"
                        )
            except grpc.RpcError as error:
                if self._closed:
                    return
                code, details = status_of(error)
                if not (self._reconnect and is_retryable(code, details)):
                    raise translate(code, details, self._client.target, self.options.pattern) from None
            except asyncio.CancelledError:
                if self._closed:
                    return
                raise
            if self._closed:
                return
            if not self._reconnect:
                raise Unreachable(f"jimbus at {self._client.target} closed the subscription")
            backoff = Backoff(self._client.reconnect_timeout)
            try:
                self._call = await self._open_with(backoff, tracker.resume_start(), "reconnect")
            except _Closed:
                return
            self.reconnects += 1
            if self._closed:  # closed while the new stream was opening
                self._call.cancel()
                return

    async def ack(self, *items: Delivery | Position) -> None:
        """Queues acks (batched) for deliveries of a durable subscription with auto_ack=False."""
        if self._acks is None:
            raise ValueError("only durable subscriptions are acknowledged (open it first)")
        for item in items:
            position = item.position if isinstance(item, Delivery) else item
            self._handed_out.discard(position)
            await self._acks.add(position)

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Sends pending acks (waiting at most `flush_timeout`), then cancels the stream."""
        if self._closed:
            return
        self._closed = True
        if self._acks is not None:
            await self._acks.close(flush_timeout)
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncSubscription[T]:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Closed(Exception):
    pass


class AsyncClient:
    """The asyncio twin of `jimbus.Client` (same arguments and defaults)."""

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
        self._metadata = grpc.aio.Metadata(("x-request-id", request_id)) if request_id else None
        self._subscriptions: weakref.WeakSet[AsyncSubscription[Any]] = weakref.WeakSet()
        self._channel = grpc.aio.insecure_channel(self.target, options=_core.CHANNEL_OPTIONS)
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

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None
    ) -> Resp:
        """As `Client._call`: tried again while the server cannot be reached."""
        backoff = Backoff(self.connect_timeout)
        while True:
            try:
                return await method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code, details = status_of(error)
                if code != grpc.StatusCode.UNAVAILABLE or "overloaded" in details or backoff.expired():
                    raise
            await asyncio.sleep(backoff.next_delay())

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
    ) -> AsyncSubscription[Delivery]:
        """As `Client.subscribe`; iterate with `async for` (or `await .open()` first)."""
        options = _core.subscribe_options(pattern, start, durable, auto_ack, max_in_flight, ack_wait, max_deliver)
        return AsyncSubscription(self, options, _identity, reconnect)

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
    ) -> AsyncSubscription[Hand]:
        """As `Client.hands`: aggregated hands as BalatroGameStateEvent messages
        (state-only messages skipped)."""
        pattern = _core.hands_pattern(session)
        options = _core.subscribe_options(pattern, start, durable, auto_ack, max_in_flight, ack_wait, max_deliver)
        return AsyncSubscription(self, options, _hand_of, reconnect)

    async def publish(self, events: Iterable[EventLike], timeout: float | None = 60.0) -> PublishResult:
        """As `Client.publish`: returns once the events are durable."""
        result = PublishResult()
        for first, request in _core.publish_chunks(events):
            try:
                response = await self._call(self._publish, request, timeout)
            except grpc.RpcError as error:
                raise from_rpc_error(error, self.target) from None
            result.add(first, response)
        return result

    async def ack(self, durable: str, items: Iterable[Delivery | Position], timeout: float | None = 30.0) -> int:
        """Acks positions of a durable subscription now (unbatched)."""
        try:
            return await self._send_ack(durable, [i.position if isinstance(i, Delivery) else i for i in items], timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None

    async def _send_ack(self, durable: str, positions: list[Position], timeout: float | None = 30.0) -> int:
        request = bus_pb2.AckRequest(
            durable_name=durable, positions=[bus_pb2.AckPosition(partition=p, offset=o) for p, o in positions]
        )
        response = await self._call(self._ack, request, timeout)
        return response.acked

    async def close(self) -> None:
        """Closes every open subscription (sending their pending acks), then the channel."""
        for sub in list(self._subscriptions):
            await sub.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _identity(delivery: Delivery) -> Delivery:
    return delivery


def _hand_of(delivery: Delivery) -> Hand | None:
    """The hand, or None for a message that carries only a coalesced game state."""
    hand = delivery.message.aggregated
    return hand if hand.HasField("cascade_info") else None
