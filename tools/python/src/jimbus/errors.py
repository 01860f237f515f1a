"""The exceptions the client raises. Every one derives from `JimbusError`.

gRPC status codes are translated once, here, so callers never need to catch
`grpc.RpcError` themselves.
"""

from __future__ import annotations

import grpc


class JimbusError(Exception):
    """Base class of every error this package raises."""


class Unreachable(JimbusError, ConnectionError):
    """No jimbus answered at the target within the connect (or reconnect) timeout."""


class InvalidRequest(JimbusError, ValueError):
    """The server rejected the request as malformed (gRPC INVALID_ARGUMENT)."""


class BadPattern(InvalidRequest):
    """The topic pattern is not valid NATS syntax (`*` one token, `>` the rest, `-` exclusions)."""


class FlowControlError(JimbusError):
    """A flow-control limit stopped the call; slow down, ack, or retry later."""


class Overloaded(FlowControlError):
    """The server shed load (its queues or memory budget are full): retry later."""


class StorageFull(FlowControlError):
    """The server's disk (or JetStream's storage) is full: nothing of the call was
    stored, and the same call succeeds once space returns."""


class TooManyUnacked(FlowControlError):
    """With automatic acks turned off, `max_in_flight` deliveries are unacknowledged,
    so the server will send nothing new until some are acked."""


class ServerError(JimbusError):
    """Any other failure the server reported, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def is_retryable(code: grpc.StatusCode | None, details: str) -> bool:
    """True for failures a reconnect can cure: the connection dropped or the server restarts."""
    # CANCELLED: a server shutting down resets its streams; a cancel of our own
    # is told apart by the caller, which knows it closed the subscription.
    retry = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    )
    return code in retry and "overloaded" not in details


def translate(code: grpc.StatusCode | None, details: str, target: str, pattern: str | None = None) -> JimbusError:
    """Maps a gRPC status to the exception this package documents."""
    details = details or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if pattern is not None and details.startswith("pattern"):
            return BadPattern(f"bad pattern {pattern!r}: {details}")
        return InvalidRequest(details)
    if code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details:
        return Overloaded(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "no space left" in details:
        return StorageFull(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return FlowControlError(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unreachable(f"jimbus at {target} is unavailable: {details}")
    return ServerError(code or grpc.StatusCode.UNKNOWN, details)


def from_rpc_error(error: grpc.RpcError, target: str, pattern: str | None = None) -> JimbusError:
    code, details = status_of(error)
    return translate(code, details, target, pattern)


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The status of a failed call (grpc's sync and aio errors both have code() and details())."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    return (code() if callable(code) else None, (details() if callable(details) else None) or str(error))
