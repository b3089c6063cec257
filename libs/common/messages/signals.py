"""Strategy output: a trading intent for one symbol."""

from __future__ import annotations

from typing import Literal

from .base import Message, Money, Side

OrderType = Literal["market", "limit"]


class Signal(Message, frozen=True, kw_only=True, tag="signal"):
    """A strategy's intent to trade; risk decides whether it becomes an order."""

    signal_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    qty: Money
    order_type: OrderType
    limit_px: Money | None = None
    ref_px: Money  # the price the strategy saw; risk collars it against its own last quote
    score: float = 0.0  # indicator value behind the decision (diagnostic, not money)
    origin_mono_ns: int = 0  # CLOCK_MONOTONIC at market-data's publish of the triggering tick


class StreamEnd(Message, frozen=True, kw_only=True, tag="stream_end"):
    """A service has finished its input and published everything it will publish."""

    service: str
    instance: str
    counts: dict[str, int] = {}


SignalMessage = Signal | StreamEnd
