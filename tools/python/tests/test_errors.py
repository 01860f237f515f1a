"""How gRPC statuses become this package's exceptions. Unreachable and BadPattern
are also checked against the real server (test_sync, test_aio); an overloaded
server could not be provoked reliably over gRPC (its shards drain their queues
into the group commit at once), so that mapping is checked here alone."""

from __future__ import annotations

import grpc
import pytest

from jimbus import BadPattern, FlowControlError, InvalidRequest, Overloaded, ServerError, StorageFull, Unreachable
from jimbus.errors import is_retryable, translate


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "the bus is overloaded, retry later", Overloaded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large", FlowControlError),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the bus has no space left to store the events: log I/O failed: No space left on device (os error 28)",
            StorageFull,
        ),
        (grpc.StatusCode.UNAVAILABLE, "Connection refused", Unreachable),
        (grpc.StatusCode.INVALID_ARGUMENT, "pattern: '>' must be the last token", BadPattern),
        (grpc.StatusCode.INVALID_ARGUMENT, "durable_name: max_len=128", InvalidRequest),
        (grpc.StatusCode.PERMISSION_DENIED, "no", ServerError),
    ],
)
def test_statuses_map_to_documented_exceptions(code: grpc.StatusCode, details: str, expected: type) -> None:
    error = translate(code, details, "127.0.0.1:1", pattern="a.>.b")
    assert type(error) is expected
    assert details in str(error)


def test_overload_is_not_retried_as_a_lost_connection() -> None:
    assert not is_retryable(grpc.StatusCode.UNAVAILABLE, "the bus is overloaded, retry later")
    assert is_retryable(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert not is_retryable(grpc.StatusCode.INVALID_ARGUMENT, "pattern: bad")
