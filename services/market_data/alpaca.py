"""Alpaca market-data messages (as alpaca-py delivers them with raw_data=True) -> Trade / Quote.

The live feed (alpaca_live.py) and any replay of recorded Alpaca frames (`decode_frame`) go
through `AlpacaNormaliser.normalise`, so both produce identical messages.

Exactness. Alpaca's websocket speaks msgpack, in which prices and sizes are binary float64:
there is no decimal text on the wire to keep. A float64 holds every decimal of up to 15
significant digits such that Python's shortest round-trip `repr` gives that decimal back, so
`Decimal(repr(x))` recovers the venue's number exactly whenever it had <= 15 significant digits
(all of the recording's prices and sizes: at most 7 + 8). `Decimal(x)` would instead expand the
binary value (61234.56 -> 61234.55999999999767...). The result is then quantised to the
instrument's increment from config; a value that this changes (more digits than the increment,
i.e. precision already lost or a wrong increment) is counted in `inexact` and logged. JSON
frames (Alpaca's text mode, REST) are decoded with Decimal for every number, so there the wire
text itself becomes the Decimal.

Bars (`T: "b"`, also updated/daily bars) map to nothing: Flotilla has no bar message and the
strategies work on trades and quotes. The normaliser counts them (`bars`) and returns None.

Alpaca quotes carry no sequence number: `Quote.update_id` is a per-symbol counter of this
normaliser (1, 2, ...). Crypto trades name the taker side (`tks` "B"/"S"); stock trades do not,
so their aggressor is inferred by the quote rule against the last quote's mid, then the tick
rule, counted in `aggressor_inferred`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

import msgpack
import msgspec

from libs.common.config import Instrument
from libs.common.messages import Quote, Side, Trade

from .binance import ParseError

log = logging.getLogger(__name__)

VENUE = "alpaca"
AssetClass = Literal["crypto", "stocks"]
TRADE, QUOTE = "t", "q"
BAR_TYPES = frozenset({"b", "u", "d"})  # minute bars, updated bars, daily bars
MAX_ID = 2**63 - 1  # the bus carries ids as signed 64-bit at most
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_json = msgspec.json.Decoder(float_hook=Decimal)  # JSON numbers keep their exact text
# Alpaca's stream error messages ({"T":"error","code":N,"msg":...}), from its public docs.
STREAM_ERRORS = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    500: "internal error",
}


@dataclass(frozen=True, slots=True)
class AlpacaSymbol:
    """One instrument: Alpaca's name for it, Flotilla's, and the increments to quantise to."""

    alpaca: str  # "BTC/USDT" (crypto) or "AAPL" (stocks)
    symbol: str  # Flotilla's instrument key, e.g. "BTCUSDT"
    price_increment: Decimal | None = None
    size_increment: Decimal | None = None


def alpaca_name(symbol: str, inst: Instrument, asset_class: AssetClass) -> str:
    """Alpaca's name: "BASE/QUOTE" for crypto pairs, the ticker itself for stocks."""
    return f"{inst.base}/{inst.quote}" if asset_class == "crypto" else symbol


def symbols_from_instruments(
    instruments: Mapping[str, Instrument],
    names: Iterable[str] | None = None,
    asset_class: AssetClass = "crypto",
) -> tuple[AlpacaSymbol, ...]:
    """AlpacaSymbols for the named instruments (all if None), increments from the config."""
    chosen = list(instruments) if names is None else list(names)
    missing = [n for n in chosen if n not in instruments]
    if missing:
        raise ValueError(f"not in [instruments]: {', '.join(missing)}")
    return tuple(
        AlpacaSymbol(
            alpaca_name(n, instruments[n], asset_class),
            n,
            instruments[n].price_increment,
            instruments[n].size_increment,
        )
        for n in chosen
    )


def decode_frame(raw: bytes | str) -> list[dict[str, Any]]:
    """One websocket frame as alpaca-py decodes it: msgpack (binary) or JSON (text), a list."""
    try:
        if isinstance(raw, str) or raw[:1] in (b"[", b"{"):
            out = _json.decode(raw)
        else:
            out = msgpack.unpackb(raw)  # msgpack timestamps stay msgpack.Timestamp (ns)
    except (ValueError, msgspec.DecodeError, msgpack.UnpackException, RecursionError) as exc:
        raise ParseError(f"undecodable frame: {exc}") from exc
    frame = out if isinstance(out, list) else [out]
    if not all(isinstance(m, dict) for m in frame):
        raise ParseError("a frame must be a list of objects")
    return frame


def timestamp_ns(value: Any) -> int:
    """Nanoseconds since the epoch from a msgpack Timestamp, an RFC 3339 string or int ns."""
    if isinstance(value, msgpack.Timestamp):
        ns = value.to_unix_nano()
    elif isinstance(value, str):
        ns = _rfc3339_ns(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        ns = value
    else:
        raise ParseError(f"not a timestamp: {value!r}")
    if not 0 <= ns <= MAX_ID:
        raise ParseError(f"timestamp out of range: {value!r}")
    return ns


def _rfc3339_ns(text: str) -> int:
    """RFC 3339 with up to 9 fractional digits, exactly (datetime alone keeps microseconds)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ParseError(f"not an RFC 3339 timestamp: {text!r}")
    offset = "+00:00" if m[3] == "Z" else m[3]
    try:
        whole = datetime.fromisoformat(m[1] + offset)
    except ValueError as exc:
        raise ParseError(f"not an RFC 3339 timestamp: {text!r}") from exc
    seconds = (whole - _EPOCH) // _SECOND
    return seconds * 1_000_000_000 + int((m[2] or "").ljust(9, "0"))


def wire_decimal(value: Any) -> Decimal:
    """The decimal the venue sent: shortest round-trip text of a float, or an exact number."""
    if isinstance(value, bool):
        raise ParseError(f"not a number: {value!r}")
    try:
        if isinstance(value, float):
            out = Decimal(repr(value))  # never Decimal(value): that expands the binary fraction
        elif isinstance(value, Decimal | int | str):
            out = Decimal(value)
        else:
            raise ParseError(f"not a number: {value!r}")
    except InvalidOperation as exc:
        raise ParseError(f"not a number: {value!r}") from exc
    if not out.is_finite() or out < 0:
        raise ParseError(f"price or size must be finite and >= 0: {value!r}")
    return out


class AlpacaNormaliser:
    """Alpaca trade / quote dicts -> Trade / Quote; see the module docstring. One per feed."""

    def __init__(self, symbols: Iterable[AlpacaSymbol]) -> None:
        self.symbols = {s.alpaca: s for s in symbols}
        self.bars = 0
        self.inexact = 0
        self.unknown_symbols = 0
        self.aggressor_inferred = 0
        self._quote_seq: dict[str, int] = {}
        self._last_mid: dict[str, Decimal] = {}  # for stock trades' aggressor
        self._last_trade: dict[str, tuple[Decimal, Side]] = {}

    def normalise(self, msg: Mapping[str, Any], ts_init: int) -> Trade | Quote | None:
        """One Alpaca message; None for bars and control or unknown kinds; ParseError if bad."""
        kind = msg.get("T")
        if kind in BAR_TYPES:
            self.bars += 1
            return None
        if kind not in (TRADE, QUOTE):
            return None
        sym = self.symbols.get(msg.get("S"))  # type: ignore[arg-type]
        if sym is None:
            self.unknown_symbols += 1
            return None
        try:
            if kind == TRADE:
                return self._trade(sym, msg, ts_init)
            return self._quote(sym, msg, ts_init)
        except KeyError as exc:
            raise ParseError(f"{kind!r} message without {exc}") from exc

    def money(self, value: Any, increment: Decimal | None, what: str) -> Decimal:
        """A price or size, exact, quantised to the instrument's increment when it has one."""
        out = wire_decimal(value)
        if increment is None:
            return out
        try:
            q = out.quantize(increment, ROUND_HALF_EVEN)
        except InvalidOperation as exc:  # too many digits for the context: absurd, not money
            raise ParseError(f"{what} {value!r} cannot be quantised to {increment}") from exc
        if q != out:
            self.inexact += 1
            if self.inexact <= 10 or self.inexact % 1000 == 0:  # a bad increment must not flood
                log.warning(
                    "%s %r is not a multiple of %s (%d so far)",
                    what,
                    value,
                    increment,
                    self.inexact,
                )
        return q

    def _trade(self, sym: AlpacaSymbol, msg: Mapping[str, Any], ts_init: int) -> Trade:
        """A trade; the id is Alpaca's `i`."""
        price = self.money(msg["p"], sym.price_increment, f"{sym.symbol} price")
        qty = self.money(msg["s"], sym.size_increment, f"{sym.symbol} size")
        trade_id = msg.get("i", 0)
        if (
            not isinstance(trade_id, int)
            or isinstance(trade_id, bool)
            or not 0 <= trade_id <= MAX_ID
        ):
            raise ParseError(f"bad trade id {trade_id!r}")
        ts_event = timestamp_ns(msg["t"])
        side = self._aggressor(sym.symbol, msg.get("tks"), price)
        self._last_trade[sym.symbol] = (price, side)
        return Trade(
            ts_event=ts_event,
            ts_init=ts_init,
            venue=VENUE,
            symbol=sym.symbol,
            price=price,
            qty=qty,
            aggressor=side,
            trade_id=trade_id,
        )

    def _aggressor(self, symbol: str, taker: Any, price: Decimal) -> Side:
        """Crypto's taker side; for stocks the quote rule, then the tick rule, else buy."""
        if taker == "B":
            return "buy"
        if taker == "S":
            return "sell"
        self.aggressor_inferred += 1
        mid = self._last_mid.get(symbol)
        if mid is not None and price != mid:
            return "buy" if price > mid else "sell"
        last = self._last_trade.get(symbol)
        if last is None:
            return "buy"
        last_price, last_side = last
        if price == last_price:
            return last_side  # zero tick: same side as the previous trade
        return "buy" if price > last_price else "sell"

    def _quote(self, sym: AlpacaSymbol, msg: Mapping[str, Any], ts_init: int) -> Quote:
        """A top-of-book quote; update_id counts this symbol's quotes."""
        bid = self.money(msg["bp"], sym.price_increment, f"{sym.symbol} bid")
        ask = self.money(msg["ap"], sym.price_increment, f"{sym.symbol} ask")
        bid_qty = self.money(msg["bs"], sym.size_increment, f"{sym.symbol} bid size")
        ask_qty = self.money(msg["as"], sym.size_increment, f"{sym.symbol} ask size")
        ts_event = timestamp_ns(msg["t"])
        seq = self._quote_seq.get(sym.symbol, 0) + 1
        self._quote_seq[sym.symbol] = seq
        if bid > 0 and ask > 0:  # a one-sided book has no mid
            self._last_mid[sym.symbol] = (bid + ask) / 2
        return Quote(
            ts_event=ts_event,
            ts_init=ts_init,
            venue=VENUE,
            symbol=sym.symbol,
            bid_px=bid,
            bid_qty=bid_qty,
            ask_px=ask,
            ask_qty=ask_qty,
            update_id=seq,
        )
