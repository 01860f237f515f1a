#!/usr/bin/env python3
"""Benchmark (not a test): how fast one Python process consumes deliveries.

    python tools/python/benchmark.py --events 100000

Starts $JIMBUS_BIN (default target/debug/jimbus) on loopback with a temporary
data directory (or uses --target), publishes --events heartbeats with
`Client.publish`, then consumes them from `earliest` and prints one line per
mode with deliveries per second, and per second of this process's CPU time
(the figure that does not depend on what else the machine runs):
  raw      grpcio alone (SubscribeResponse.FromString per message): the floor
  sync     jimbus.Client.subscribe, ephemeral
  durable  jimbus.Client.subscribe with a durable name and automatic batched acks
  durable10k  the same with max_in_flight=10000 (the server's default is 1000)
  async    jimbus.aio.AsyncClient.subscribe, ephemeral
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from jimbus import Client, pb
from jimbus._core import CHANNEL_OPTIONS
from jimbus.aio import AsyncClient

PATTERN = "balatro.bench.HEARTBEAT"
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread (grpc's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = os.environ.get("JIMBUS_BIN", str(ROOT / "target" / "debug" / "jimbus"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIMBUS_")}
    env["RUST_LOG"] = "info"
    process = subprocess.Popen(
        [binary, "--log-format", "json", "serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    for raw in process.stderr:
        if b'"jimbus ready"' in raw:
            record = json.loads(raw)
            threading_drain(process)
            return process, record.get("fields", record)["grpc"]
    raise SystemExit("jimbus exited before it was ready")


def threading_drain(process: subprocess.Popen[bytes]) -> None:
    import threading

    def drain() -> None:
        assert process.stderr is not None
        for _ in process.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()


def publish(target: str, events: int) -> float:
    started = time.perf_counter()
    batch = []
    with Client(target) as client:
        for n in range(1, events + 1):
            batch.append(
                pb.events_pb2.Event(
                    event_id=f"bench-{n}",
                    event_type="HEARTBEAT",
                    session_id="bench",
                    heartbeat=pb.events_pb2.HeartbeatEvent(uptime=float(n), mod_version="1.0.0"),
                )
            )
            if len(batch) == 10_000:
                assert client.publish(batch).accepted == len(batch)
                batch = []
        if batch:
            assert client.publish(batch).accepted == len(batch)
    return time.perf_counter() - started


def consume_raw(target: str, events: int) -> float:
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        subscribe = channel.unary_stream(
            "/jimbot.bus.v1.EventBusService/Subscribe",
            request_serializer=pb.bus_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=pb.bus_pb2.SubscribeResponse.FromString,
        )
        started = time.perf_counter()
        call = subscribe(pb.bus_pb2.SubscribeRequest(pattern=PATTERN, start=pb.bus_pb2.START_POSITION_EARLIEST))
        n = 0
        for _ in call:
            n += 1
            if n == events:
                break
        elapsed = time.perf_counter() - started
        call.cancel()
    return elapsed


def consume_sync(target: str, events: int, durable: str | None, max_in_flight: int = 0) -> float:
    with Client(target) as client:
        started = time.perf_counter()
        with client.subscribe(PATTERN, start="earliest", durable=durable, max_in_flight=max_in_flight) as sub:
            n = 0
            for delivery in sub:
                n += 1
                if n == events:
                    if durable:
                        sub.ack(delivery)
                    break
            elapsed = time.perf_counter() - started
    return elapsed


async def consume_async(target: str, events: int) -> float:
    async with AsyncClient(target) as client:
        started = time.perf_counter()
        async with client.subscribe(PATTERN, start="earliest") as sub:
            n = 0
            async for _ in sub:
                n += 1
                if n == events:
                    break
            elapsed = time.perf_counter() - started
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--target", help="an already running jimbus (it must not hold session 'bench')")
    parser.add_argument("--modes", default="raw,sync,durable,async")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        server = None
        target = args.target
        if target is None:
            server, target = start_server(data)
        try:
            took = publish(target, args.events)
            print(f"published {args.events} events in {took:.2f} s ({args.events / took:,.0f}/s)")
            for mode in args.modes.split(","):
                cpu_before = cpu_seconds()
                if mode == "raw":
                    elapsed = consume_raw(target, args.events)
                elif mode == "sync":
                    elapsed = consume_sync(target, args.events, None)
                elif mode == "durable":
                    elapsed = consume_sync(target, args.events, f"bench-{time.time_ns()}")
                elif mode == "durable10k":
                    elapsed = consume_sync(target, args.events, f"bench-{time.time_ns()}", 10_000)
                elif mode == "async":
                    elapsed = asyncio.run(consume_async(target, args.events))
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
                cpu = cpu_seconds() - cpu_before
                print(
                    f"{mode:10} {args.events} deliveries in {elapsed:.2f} s: {args.events / elapsed:,.0f}/s "
                    f"(this process used {cpu:.2f} CPU s: {args.events / cpu:,.0f} per CPU second)"
                )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
