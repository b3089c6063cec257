"""The base struct every wire message derives from."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Side = Literal["buy", "sell"]
Money = Decimal  # exact decimal: prices, quantities, notionals, PnL. Never float.


# gc=False: messages are plain immutable data that can never be part of a reference cycle, so
# the cyclic garbage collector need not track the tens of thousands created per second (its
# collections were a source of multi-millisecond pauses on the hot path).
class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every wire message: event time at the source and creation time here (int ns)."""

    ts_event: int
    ts_init: int


def opposite(side: Side) -> Side:
    """The other side of the book."""
    return "sell" if side == "buy" else "buy"
