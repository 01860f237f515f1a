"""`jimbus-py tail PATTERN`: print one JSON line per delivery (canonical protobuf JSON).

    jimbus-py tail 'balatro.*.SCORING'
    jimbus-py tail '>' --start earliest --count 10
    jimbus-py tail 'balatro.>' --durable trainer     # acks after printing; resumes next run

The flags are those of the former tools/subscriber.py (which now runs this).
Exit status: 0 after --count deliveries (or, without --count, when --timeout
ends the run); 1 when the server fails the call, cannot be reached, or --timeout
passes before --count deliveries arrived; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from jimbus import _core
from jimbus.client import Client
from jimbus.errors import JimbusError

PROG = "jimbus-py"


def _start(text: str) -> str:
    try:
        _core.parse_start(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description="A command-line client of jimbus (gRPC).")
    commands = top.add_subparsers(dest="command", required=True)
    tail = commands.add_parser(
        "tail", help="subscribe and print one JSON line per delivery", description=__doc__.splitlines()[0]
    )
    tail.add_argument("pattern_arg", nargs="?", metavar="PATTERN", help="topic pattern (same as --pattern)")
    tail.add_argument(
        "--target",
        default=os.environ.get("JIMBUS_GRPC_TARGET", _core.DEFAULT_TARGET),
        help="gRPC address host:port (default: $JIMBUS_GRPC_TARGET or 127.0.0.1:50051)",
    )
    tail.add_argument(
        "--pattern",
        default=None,
        help="topic pattern with NATS wildcards: '*' one token, '>' the rest (default: '>')",
    )
    tail.add_argument(
        "--durable",
        metavar="NAME",
        default="",
        help="durable subscription name; deliveries are acknowledged after printing",
    )
    tail.add_argument(
        "--start",
        type=_start,
        default=None,
        metavar="latest|earliest|offset:N|time:RFC3339",
        help="where to start (default: latest, or where a durable subscription left off)",
    )
    tail.add_argument("--count", type=_positive_int, help="exit 0 after this many deliveries")
    tail.add_argument(
        "--timeout", type=_positive_float, help="give up after this many seconds (exit 1 if --count is unmet)"
    )
    return top


def tail(args: argparse.Namespace) -> int:
    if args.pattern_arg and args.pattern and args.pattern_arg != args.pattern:
        print(f"{PROG}: give the pattern once (PATTERN or --pattern)", file=sys.stderr)
        return 2
    pattern = args.pattern_arg or args.pattern or ">"
    timed_out = threading.Event()
    received = 0
    with Client(args.target, connect_timeout=args.timeout or 5.0) as client:
        try:
            sub = client.subscribe(pattern, args.start, args.durable or None)
        except JimbusError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
        print(f"{PROG}: subscribed to {pattern!r} on {client.target}", file=sys.stderr, flush=True)
        timer = None
        if args.timeout is not None:
            def expire() -> None:
                timed_out.set()
                sub.close()

            timer = threading.Timer(args.timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            with sub:
                for delivery in sub:
                    line = json.dumps(delivery.to_dict(), separators=(",", ":"), ensure_ascii=False)
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                    received += 1
                    if args.count is not None and received >= args.count:
                        # Leaving the loop skips the automatic ack of this last delivery.
                        if args.durable:
                            sub.ack(delivery)
                        break
        except JimbusError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
        finally:
            if timer is not None:
                timer.cancel()
    if args.count is not None and received < args.count:
        why = f"timed out after {args.timeout} s" if timed_out.is_set() else "the stream ended"
        print(f"{PROG}: {why} with {received} of {args.count} deliveries", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "tail":
            return tail(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jimbus-py tail … | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
