"""Binance spot websocket JSON -> normalised messages.

The replay feed and (later) the live feed both call `parse_stream_message`, so a recording is
parsed exactly as the live combined stream delivers it.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.common.messages import Quote, Trade

VENUE = "binance"


class ParseError(ValueError):
    """A message that is not valid Binance stream JSON of a kind we understand."""


class _TradeEvent(msgspec.Struct):
    """`<symbol>@trade` payload (field names are Binance's)."""

    e: str
    E: int
    s: str
    t: int
    p: Decimal
    q: Decimal
    T: int
    m: bool


class _BookTickerEvent(msgspec.Struct):
    """`<symbol>@bookTicker` payload; spot carries no exchange timestamp."""

    u: int
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
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParseError(str(exc)) from exc
    return None


def _to_trade(ev: _TradeEvent, ts_init: int) -> Trade:
    """`m` true means the buyer was the maker, so the taker (aggressor) sold."""
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
