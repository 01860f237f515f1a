"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Jimbus, hand, heartbeats
from helpers import atake

from jimbus import BadPattern, Unreachable
from jimbus.aio import AsyncClient

RAW = "balatro.*.HEARTBEAT"


def test_async_publish_subscribe_hands(jimbus: Jimbus) -> None:
    async def main() -> None:
        async with AsyncClient(jimbus.grpc) as client:
            result = await client.publish(heartbeats("a", 1, 5) + hand("a", 1, ["Joker", "Baron"]))
            assert result.accepted == 9
            got = await atake(client.subscribe(RAW, start="earliest"), 5)
            assert [int(d.event.heartbeat.uptime) for d in got if d.event] == [1, 2, 3, 4, 5]
            hands = await atake(client.hands("a", start="earliest"), 1)
            assert hands[0].cascade_info.trigger_count == 2
            # Registered once open() returns: what is published next is seen from latest.
            async with client.subscribe(RAW) as live:
                await client.publish(heartbeats("a", 6, 7))
                assert [int(d.event.heartbeat.uptime) for d in await atake(live, 2) if d.event] == [6, 7]

    asyncio.run(main())


def test_async_durable_auto_acks_and_resumes(jimbus: Jimbus) -> None:
    async def main() -> None:
        async with AsyncClient(jimbus.grpc) as client:
            await client.publish(heartbeats("b", 1, 4))  # more would be sent ahead, then redelivered
            async with client.subscribe(RAW, start="earliest", durable="async") as sub:
                seen = []
                async for d in sub:
                    seen.append(int(d.event.heartbeat.uptime) if d.event else 0)
                    if len(seen) == 4:
                        await sub.ack(d)  # leaving the loop skips the automatic ack of this one
                        break
            await client.publish(heartbeats("b", 5, 6))
            async with client.subscribe(RAW, durable="async") as sub:
                rest = await atake(sub, 2)
            assert seen == [1, 2, 3, 4]
            assert [int(d.event.heartbeat.uptime) for d in rest if d.event] == [5, 6]
            assert [d.delivery_count for d in rest] == [1, 1]

    asyncio.run(main())


def test_async_survives_a_server_restart(restartable: Jimbus) -> None:
    async def main() -> None:
        async with AsyncClient(restartable.grpc) as client:
            await client.publish(heartbeats("c", 1, 20))
            async with client.subscribe(RAW, start="earliest") as sub:
                before = await atake(sub, 20)
                await asyncio.get_running_loop().run_in_executor(None, restartable.restart)
                await client.publish(heartbeats("c", 21, 40))
                after = await atake(sub, 20)
                assert sub.reconnects >= 1
            assert [int(d.event.heartbeat.uptime) for d in before + after if d.event] == list(range(1, 41))

    asyncio.run(main())


def test_async_errors(jimbus: Jimbus) -> None:
    async def main() -> None:
        async with AsyncClient(jimbus.grpc) as client:
            with pytest.raises(BadPattern):
                await client.subscribe("balatro.>.x").open()
        async with AsyncClient("127.0.0.1:1", connect_timeout=0.5) as nowhere:
            with pytest.raises(Unreachable):
                await nowhere.subscribe(">").open()
            with pytest.raises(Unreachable):
                await nowhere.publish(heartbeats("x", 1, 1))

    asyncio.run(main())
