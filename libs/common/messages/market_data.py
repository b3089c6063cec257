"""Normalised market data: trades and top-of-book quotes, plus feed status."""

from __future__ import annotations

from typing import Literal

from .base import Message, Money, Side


class Trade(Message, frozen=True, kw_only=True, tag="trade"):
    """One trade print; `aggressor` is the taker's side."""

    venue: str
    symbol: str
    price: Money
    qty: Money
    aggressor: Side
    trade_id: int


class Quote(Message, frozen=True, kw_only=True, tag="quote"):
    """Best bid and offer with their sizes."""

    venue: str
    symbol: str
    bid_px: Money
    bid_qty: Money
    ask_px: Money
    ask_qty: Money
    update_id: int


class FeedStatus(Message, frozen=True, kw_only=True, tag="feed_status"):
    """Feed lifecycle: `waiting` for consumers, `live`, or `end` with per-symbol tick counts."""

    venue: str
    state: Literal["waiting", "live", "end"]
    published: dict[str, int] = {}
    # Live feeds: milliseconds since the last message per symbol (the venue side of staleness).
    staleness_ms: dict[str, int] = {}


MarketData = Trade | Quote | FeedStatus
