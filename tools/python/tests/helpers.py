"""Bounded reads from subscriptions: a test never waits forever for a delivery."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from jimbus import Subscription
from jimbus.aio import AsyncSubscription

T = TypeVar("T")
TIMEOUT_S = 30.0


def take(sub: Subscription[T], count: int, timeout: float = TIMEOUT_S) -> list[T]:
    """The next `count` items; closes the subscription and fails if they do not come in time.

    The loop body of the last item completes only when the iterator is asked
    again, so its automatic ack is not sent: callers ack it or expect it again.
    """
    items: list[T] = []
    timer = threading.Timer(timeout, sub.close)
    timer.start()
    try:
        if count:
            for item in sub:
                items.append(item)
                if len(items) == count:
                    break
    finally:
        timer.cancel()
    assert len(items) == count, f"got {len(items)} of {count} items in {timeout} s"
    return items


def take_until(sub: Subscription[T], done: Callable[[list[T]], bool], timeout: float = TIMEOUT_S) -> list[T]:
    """Items until `done(items)` holds; closes the subscription and fails if it does not in time."""
    items: list[T] = []
    timer = threading.Timer(timeout, sub.close)
    timer.start()
    try:
        for item in sub:
            items.append(item)
            if done(items):
                return items
    finally:
        timer.cancel()
    raise AssertionError(f"the condition did not hold after {len(items)} items in {timeout} s")


async def atake(sub: AsyncSubscription[T], count: int, timeout: float = TIMEOUT_S) -> list[T]:
    items: list[T] = []

    async def read() -> None:
        async for item in sub:
            items.append(item)
            if len(items) == count:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"got {len(items)} of {count} items in {timeout} s") from None
    return items
