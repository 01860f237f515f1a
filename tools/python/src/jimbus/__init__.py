"""jimbus: a Python client for the jimbus event bus.

    from jimbus import Client
    with Client("127.0.0.1:50051") as client:
        for hand in client.hands():
            print(hand.cascade_info.cascade_id, hand.cascade_info.trigger_count)

`Client` is synchronous; `jimbus.aio.AsyncClient` has the same methods as
coroutines and async iterators. The protobuf messages are in `jimbus.pb`.
"""

from jimbus import pb
from jimbus._core import PublishResult, Start
from jimbus.client import Client, Subscription
from jimbus.delivery import Delivery, Hand, to_pandas
from jimbus.errors import (
    BadPattern,
    FlowControlError,
    InvalidRequest,
    JimbusError,
    Overloaded,
    ServerError,
    StorageFull,
    TooManyUnacked,
    Unreachable,
)

__version__ = "0.1.0"

__all__ = [
    "BadPattern",
    "Client",
    "Delivery",
    "FlowControlError",
    "Hand",
    "InvalidRequest",
    "JimbusError",
    "Overloaded",
    "PublishResult",
    "ServerError",
    "Start",
    "StorageFull",
    "Subscription",
    "TooManyUnacked",
    "Unreachable",
    "pb",
    "to_pandas",
]
