"""Binance spot websocket JSON -> normalised messages.

The replay feed and (later) the live feed both call `parse_stream_message`, so a recording is
parsed exactly as the live combined stream delivers it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec

from libs.common.messages import Quote, Trade

VENUE = "binance"


class ParseError(ValueError):
    """A message that is not valid Binance stream JSON of a kind we understand."""


# Bounds keep hostile values from overflowing the uint64 bus header or int-ns timestamps.
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=9_000_000_000_000)]  # ms, before year 2255
Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _TradeEvent(msgspec.Struct):
    """`<symbol>@trade` payload (field names are Binance's)."""

    e: str
    E: EpochMs
    s: str
    t: Id
    p: Decimal
    q: Decimal
    T: EpochMs
    m: bool


class _BookTickerEvent(msgspec.Struct):
    """`<symbol>@bookTicker` payload; spot carries no exchange timestamp."""

    u: Id
    s: str
    b: Decimal
    B: Decimal
    a: Decimal
    A: Decimal


class _Envelope(msgspec.Struct):
    """Combined-stream wrapper; REST depth snapshots have no `stream` key."""

    stream: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


_envelope = msgspec.json.Decoder(_Envelope)
_trade = msgspec.json.Decoder(_TradeEvent)
_book_ticker = msgspec.json.Decoder(_BookTickerEvent)
MS = 1_000_000


def parse_stream_message(raw: bytes, recv_ns: int, ts_init: int) -> Trade | Quote | None:
    """Normalise one combined-stream message; None for streams we do not publish (depth, snapshot)."""
    try:
        env = _envelope.decode(raw)
        kind = env.stream.partition("@")[2]
        if kind == "trade":
            return _to_trade(_trade.decode(env.data), ts_init)
        if kind == "bookTicker":
            return _to_quote(_book_ticker.decode(env.data), recv_ns, ts_init)
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        RecursionError,  # absurdly nested JSON
        UnicodeDecodeError,  # invalid UTF-8 inside a string
    ) as exc:
        raise ParseError(str(exc)) from exc
    return None


def _require_finite(*values: Decimal) -> None:
    """Decimal accepts "NaN" and "Infinity"; no price or size may be either."""
    if not all(v.is_finite() for v in values):
        raise ParseError(f"non-finite price or quantity in {values}")


def _to_trade(ev: _TradeEvent, ts_init: int) -> Trade:
    """`m` true means the buyer was the maker, so the taker (aggressor) sold."""
    _require_finite(ev.p, ev.q)
    return Trade(
        ts_event=ev.T * MS,
        ts_init=ts_init,
        venue=VENUE,
        symbol=ev.s,
        price=ev.p,
        qty=ev.q,
        aggressor="sell" if ev.m else "buy",
        trade_id=ev.t,
    )


def _to_quote(ev: _BookTickerEvent, recv_ns: int, ts_init: int) -> Quote:
    """bookTicker has no exchange time on spot, so the event time is the receive time."""
    _require_finite(ev.b, ev.B, ev.a, ev.A)
    return Quote(
        ts_event=recv_ns,
        ts_init=ts_init,
        venue=VENUE,
        symbol=ev.s,
        bid_px=ev.b,
        bid_qty=ev.B,
        ask_px=ev.a,
        ask_qty=ev.A,
        update_id=ev.u,
    )
