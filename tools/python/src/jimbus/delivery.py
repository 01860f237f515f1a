"""What a subscription yields: `Delivery`, and `to_pandas` for a list of hands.

A delivery wraps the server's SubscribeResponse without copying it; its
`delivery_count` is the larger of the server's count and the client's own
count of how often it yielded that position (see `_core.Tracker`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Union

from google.protobuf import json_format

from jimbus._proto.jimbot.bus.v1 import bus_pb2
from jimbus._proto.jimbot.events.v1 import events_pb2

if TYPE_CHECKING:
    import pandas

Hand = events_pb2.BalatroGameStateEvent


class Delivery:
    """One delivery of a subscription: where the event lives, and its body."""

    __slots__ = ("message", "delivery_count")

    def __init__(self, message: bus_pb2.SubscribeResponse, delivery_count: int) -> None:
        self.message = message
        # 1 on first delivery; more when the server or this client saw it before.
        self.delivery_count = delivery_count

    @property
    def topic(self) -> str:
        return self.message.topic

    @property
    def partition(self) -> int:
        return self.message.partition

    @property
    def offset(self) -> int:
        return self.message.offset

    @property
    def position(self) -> tuple[int, int]:
        """(partition, offset): what identifies the event for an ack."""
        return (self.message.partition, self.message.offset)

    @property
    def redelivered(self) -> bool:
        """True when this event may have been handled before (delivery_count > 1)."""
        return self.delivery_count > 1

    @property
    def kind(self) -> str:
        """"event", "aggregated" or "dead_letter"."""
        return self.message.WhichOneof("body") or ""

    @property
    def event(self) -> events_pb2.Event | None:
        """The raw event, for topics balatro.<session>.<event_type>."""
        return self.message.event if self.message.HasField("event") else None

    @property
    def aggregated(self) -> Hand | None:
        """The aggregated hand, for topics balatro.<session>.aggregated."""
        return self.message.aggregated if self.message.HasField("aggregated") else None

    @property
    def dead_letter(self) -> bus_pb2.DeadLetter | None:
        return self.message.dead_letter if self.message.HasField("dead_letter") else None

    def to_dict(self) -> dict[str, Any]:
        """Canonical protobuf JSON as a dict (topic, partition, offset, deliveryCount, and the body)."""
        as_dict = json_format.MessageToDict(self.message)
        as_dict["deliveryCount"] = self.delivery_count
        return as_dict

    def __repr__(self) -> str:
        return (
            f"Delivery(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"delivery_count={self.delivery_count}, kind={self.kind!r})"
        )


def hand_row(hand: Hand) -> dict[str, Any]:
    """One flat row per hand: the cascade's shape and the game state it was scored in."""
    cascade = hand.cascade_info
    base = hand.base
    return {
        "session_id": hand.session_id,
        "cascade_id": cascade.cascade_id,
        "hand_type": cascade.hand_type,
        "cards": list(cascade.cards),
        "trigger_count": cascade.trigger_count,
        "depth": cascade.depth,
        "duration_ms": cascade.duration_ms,
        "chips_delta": cascade.chips_delta,
        "mult_delta": cascade.mult_delta,
        "score_delta": cascade.score_delta,
        "complete": cascade.complete,
        "part": cascade.part,
        "final_part": cascade.final_part,
        "first_trigger_at": cascade.first_trigger_at.ToDatetime() if cascade.HasField("first_trigger_at") else None,
        "last_trigger_at": cascade.last_trigger_at.ToDatetime() if cascade.HasField("last_trigger_at") else None,
        "jokers": [t.joker_name for t in hand.triggers],
        "phase": base.phase,
        "ante": base.ante if base.HasField("ante") else None,
        "round": base.round if base.HasField("round") else None,
        "money": base.money if base.HasField("money") else None,
        "score": base.score if base.HasField("score") else None,
        "coalesced_game_states": hand.coalesced_game_states,
        "correlation_id": hand.correlation_id,
    }


def to_pandas(hands: Iterable[Union[Hand, Delivery]]) -> pandas.DataFrame:
    """A DataFrame with one row per hand (see `hand_row`); needs the `pandas` extra."""
    try:
        import pandas
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("to_pandas needs pandas: pip install 'jimbus[pandas]'") from error
    rows = []
    for item in hands:
        hand = item.aggregated if isinstance(item, Delivery) else item
        if hand is None:
            raise ValueError(f"{item!r} is not an aggregated hand")
        rows.append(hand_row(hand))
    frame: pandas.DataFrame = pandas.DataFrame(rows, columns=list(hand_row(Hand()).keys()))
    return frame
