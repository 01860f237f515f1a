#!/usr/bin/env python3
"""Writes the fuzz seed corpus (fuzz/seeds/<target>/) from the compat fixtures.

Run from the repo root: python3 fuzz/make_seeds.py. The seeds are committed;
rerun this when the fixtures or a file format change. Formats, as the Rust code
writes them: core/src/record.rs (log records), core/src/checkpoint.rs (segment
index, shard checkpoint), core/src/consumer_state.rs (consumers.json, journal).
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "core/tests/fixtures/compat"
SEEDS = ROOT / "fuzz/seeds"

_TABLE = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _TABLE.append(c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def record(offset: int, kind: int, topic: str, message: bytes, time_us: int = 1_764_500_000_000_000) -> bytes:
    t = topic.encode()
    rest = struct.pack("<IQQBHB", len(t) + len(message), offset, time_us, kind, len(t), 0) + t + message
    return struct.pack("<I", crc32c(rest)) + rest


def sealed(magic: bytes, body: bytes) -> bytes:
    data = magic + body
    return data + struct.pack("<I", crc32c(data))


def text(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def pairs(items) -> bytes:
    return struct.pack("<Q", len(items)) + b"".join(text(k) + struct.pack("<Q", v) for k, v in items)


def journal_entry(name: str, incarnation: int, floor: int, offsets) -> bytes:
    payload = text(name) + struct.pack("<QQQ", incarnation, floor, len(offsets))
    payload += b"".join(struct.pack("<Q", o) for o in offsets)
    return struct.pack("<II", len(payload), crc32c(payload)) + payload


def write(target: str, name: str, data: bytes) -> None:
    path = SEEDS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    fixtures = sorted(p for p in FIXTURES.glob("*.json"))
    for p in fixtures:
        body = p.read_bytes()
        write("dialect", p.stem, body)
        write("http_path", p.stem + ".batch", b"\x00" + body)
        write("http_path", p.stem + ".single", b"\x01" + body)

    # Inputs that once crashed a target, kept so every run replays them first.
    # A form feed after '[': skip_ws counted it as whitespace, the JSON reader
    # did not, and the event's byte count underflowed (ingest.rs read_events).
    write("dialect", "regress-form-feed-in-events", b'{"events":[\x0c')
    write("http_path", "regress-form-feed-in-events", b'\x00{"events":[\x0c')

    # Segments: fixture bodies as messages, then the same damaged.
    records = [record(i, 1 + i % 3, f"balatro.s{i % 3}.{p.stem.upper()}", p.read_bytes()[:300])
               for i, p in enumerate(fixtures[:8])]
    segment = b"".join(records)
    write("segment", "whole", segment)
    write("segment", "torn_tail", segment[:-7])
    damaged = bytearray(segment)
    damaged[len(records[0]) + 40] ^= 0x10
    write("segment", "flipped_second", bytes(damaged))
    positions, at = [], 0
    for r in records:
        positions.append(at)
        at += len(r)
    index = struct.pack("<QQQ", len(segment), 1_764_500_000_000_000, len(positions))
    index += b"".join(struct.pack("<I", p) for p in positions) + struct.pack("<Q", 1) + struct.pack("<QQ", 1, 0)
    write("segment", "index", sealed(b"JIDX\x00\x00\x00\x01", index))

    # State files: selector byte, then the file.
    options = {"max_in_flight": 1000, "ack_wait_ms": 30000, "max_deliver": 5}
    old = {"trainer": {"pattern": "balatro.>", "ack_floor": 4, "acked": [6, 5, 9], "options": options}}
    new = {"trainer": {"pattern": "balatro.*.SCORING", "ack_floor": 7, "acked": [],
                       "acked_ranges": [[9, 12], [20, 21]], "options": options, "incarnation": 1764500000000000}}
    write("state_files", "consumers_old", b"\x00" + json.dumps(old).encode())
    write("state_files", "consumers_new", b"\x00" + json.dumps(new).encode())
    journal = journal_entry("c", 0, 3, [4, 7]) + journal_entry("c", 0, 8, [10, 11, 12]) + journal_entry("gone", 2, 0, [1])
    write("state_files", "journal", b"\x01" + journal)
    checkpoint = struct.pack("<Q", 120) + pairs([("s1", 40), ("s2", 81)]) + pairs([("balatro.s1.SCORING", 39)])
    checkpoint += struct.pack("<Q", 100)
    write("state_files", "checkpoint", b"\x02" + sealed(b"JCKP\x00\x00\x00\x02", checkpoint))
    both = json.dumps({"c": new["trainer"] | {"incarnation": 0}}).encode() + b"\xff" + journal
    write("state_files", "snapshot_and_journal", b"\x03" + both)


if __name__ == "__main__":
    main()
