#!/usr/bin/env python3
"""Memory per open HTTP connection, for docs/perf.md and docs/tuning.md.

    python3 perf/connection-memory.py JIMBUS_BINARY [COUNT] [idle|head|none]

Starts the binary with one shard on free loopback ports, opens COUNT
connections (default 1,000) and prints the growth of the server's VmRSS per
connection and what the memory budget charged per connection
(`jimbus_budget_used_bytes`). Modes: `idle` sends one `GET /health` on each
and keeps it open, `head` sends an unfinished 60,000-byte head on each (held
until the header timeout), `none` sends nothing. Needs `ulimit -n` above
COUNT plus a few.
"""

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    raise SystemExit(f"no {key} for {pid}")


def metric(http, name):
    page = urllib.request.urlopen(f"http://{http}/metrics").read().decode()
    for line in page.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise SystemExit(f"no {name}")


def wait_until(check, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def ready(http):
    try:
        return urllib.request.urlopen(f"http://{http}/ready").status == 200
    except OSError:
        return False


def open_connections(http, count, mode):
    host, port = http.split(":")
    head = b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"h" * 60_000
    connections = []
    for _ in range(count):
        conn = socket.create_connection((host, int(port)))
        if mode == "idle":
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(4096)
        elif mode == "head":
            conn.sendall(head)
        connections.append(conn)
    return connections


def settled_rss(pid):
    """VmRSS once three reads 200 ms apart agree within 64 KiB."""
    readings = [status_kib(pid, "VmRSS:")]
    while len(readings) < 3 or max(readings[-3:]) - min(readings[-3:]) > 64:
        time.sleep(0.2)
        readings.append(status_kib(pid, "VmRSS:"))
    return readings[-1]


def main():
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    mode = sys.argv[3] if len(sys.argv) > 3 else "idle"
    http, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as data:
        args = [binary, "serve", "--data-dir", data, "--http", http, "--grpc", grpc, "--shards", "1"]
        args += ["--max-connections", str(count + 16)]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: ready(http), "the server to be ready")
            rss, used = settled_rss(server.pid), metric(http, "jimbus_budget_used_bytes")
            connections = open_connections(http, count, mode)
            grown = settled_rss(server.pid) - rss
            charged = metric(http, "jimbus_budget_used_bytes") - used
            print(f"{mode}: {count} connections, VmRSS {grown / count:.1f} KiB and budget "
                  f"{charged / count / 1024:.1f} KiB per connection")
            for conn in connections:
                conn.close()
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
