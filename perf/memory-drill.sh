#!/usr/bin/env bash
# Peak RSS of a server under two bodies made to take memory no budget
# counted (docs/perf.md, "Twelfth pass"):
#
#   perf/memory-drill.sh BIN [BIN...]
#
# For each binary, on a fresh server and data directory each:
#   jokers:  four 8 MiB batches at once, each one GAME_STATE whose `jokers`
#            are 2.8 million empty objects, on the default 256 MiB budget;
#   chunked: forty 7.5 MiB bodies sent chunked (no Content-Length) and left
#            unfinished, on a 64 MiB budget; counted 2 s after the last is sent;
#   subscriptions: 500,000 events posted (jimbus-load), then a thousand gRPC
#            subscriptions from the start that read one delivery or none, on
#            the default budget; counted 5 s after the last is opened;
#   wide:    the same thousand subscriptions on 16 shards, over 20,000 events
#            of 4 KiB each (64 sessions, so every shard holds some);
#   streams: 500,000 events posted, then a thousand live-view streams
#            (/api/v1/stream) from the start whose clients read nothing
#            past the answer's head (4 KiB socket buffers).
# DRILLS="jokers wide" runs only those.
# It prints each server's VmHWM (and VmRSS) and the answers. It needs
# target/release/jimbus-load and tools/.venv's grpcio (tools/install-test-deps.sh).
# Run nothing else meanwhile.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c '
import sys
n = (8 << 20) // 3 - 100
open(sys.argv[1], "w").write("{\"events\":[{\"type\":\"GAME_STATE\",\"payload\":{\"jokers\":[" + ",".join(["{}"] * n) + "]}}]}")
' "$work/jokers.json"

jokers() { # jokers PORT
  local codes
  codes=$(for _ in 1 2 3 4; do
    curl -s -o /dev/null -w '%{http_code} ' -H 'Content-Type: application/json' \
      --data-binary @"$work/jokers.json" "http://127.0.0.1:$1/api/v1/events/batch" &
  done; wait)
  echo "answers $codes"
}

chunked() { # chunked PORT
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
chunk = b"x" * 65536
sockets, refused = [], 0
for _ in range(40):
    s = socket.create_connection(("127.0.0.1", port))
    sockets.append(s)
    try:
        s.sendall(b"POST /api/v1/events/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"1f\r\n{\"events\":[{\"type\":\"A\",\"note\":\"\r\n")
        for _ in range(120):
            s.sendall(b"10000\r\n" + chunk + b"\r\n")
    except OSError:
        refused += 1
time.sleep(2)
answered = 0
for s in sockets:
    s.setblocking(False)
    try:
        answered += s.recv(64).startswith(b"HTTP/1.1 503")
    except BlockingIOError:
        pass
    s.close()
print(f"refused while sending {refused}, answered 503 {answered}")
PY
}

open_subscriptions() { # open_subscriptions GRPC_PORT
  "$here/../tools/.venv/bin/python" - "$1" <<'PY'
import sys, time, grpc
sys.path.insert(0, "tools/python/src")
from jimbus._proto.jimbot.bus.v1 import bus_pb2
channels = [grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") for _ in range(10)]
calls, opened, refused = [], 0, 0
for i in range(1000):
    subscribe = channels[i % 10].unary_stream(
        "/jimbot.bus.v1.EventBusService/Subscribe",
        request_serializer=bus_pb2.SubscribeRequest.SerializeToString,
        response_deserializer=bus_pb2.SubscribeResponse.FromString)
    call = subscribe(bus_pb2.SubscribeRequest(pattern=">", start=bus_pb2.START_POSITION_EARLIEST))
    try:
        next(call)
        opened += 1
        calls.append(call)
    except grpc.RpcError as e:
        refused += e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
time.sleep(5)
print(f"subscriptions open {opened}, refused for memory {refused}")
for call in calls:
    call.cancel()
PY
}

post_half_a_million() { # post_half_a_million PORT
  "$here/../target/release/jimbus-load" --url "http://127.0.0.1:$1/api/v1/events/batch" --events 500000 \
    --duration 30 >/dev/null
}

subscriptions() { # subscriptions PORT GRPC_PORT
  post_half_a_million "$1"
  open_subscriptions "$2"
}

wide() { # wide PORT GRPC_PORT
  python3 - "$1" <<'PY'
import json, sys, urllib.request
note = "x" * 4096
for i in range(400):
    events = [{"type": "MONEY_CHANGED", "session_id": f"wide-{i % 64}", "note": note,
               "payload": {"old_value": 1, "new_value": 2, "difference": 1}} for _ in range(50)]
    request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v1/events/batch",
                                     json.dumps({"events": events}).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()
PY
  open_subscriptions "$2"
}

streams() { # streams PORT GRPC_PORT
  post_half_a_million "$1"
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
streams, opened, refused = [], 0, 0
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /api/v1/stream?from=earliest&pattern=balatro.%3E HTTP/1.1\r\nHost: x\r\n\r\n")
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        opened += 1
        streams.append(s)
    else:
        refused += 1
        s.close()
time.sleep(5)
print(f"streams open {opened}, refused {refused}")
PY
}

for bin in "$@"; do
  for drill in ${DRILLS:-jokers chunked subscriptions wide streams}; do
    budget=268435456 shards=2
    [[ $drill == chunked ]] && budget=67108864
    [[ $drill == wide ]] && shards=16
    port=$(free_port) grpc=$(free_port)
    "$bin" serve --http "127.0.0.1:$port" --grpc "127.0.0.1:$grpc" --data-dir "$work/data-$drill" \
      --memory-budget "$budget" --shards "$shards" >"$work/log" 2>&1 &
    pid=$!
    wait_ready "$pid" "http://127.0.0.1:$port/ready"
    result=$("$drill" "$port" "$grpc")
    echo "$bin $drill (budget $((budget >> 20)) MiB, $shards shards): $result; $(grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | tr -s ' \t\n' ' ')"
    stop "$pid"
    rm -rf "$work/data-$drill"
  done
done
