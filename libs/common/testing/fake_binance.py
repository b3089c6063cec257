"""A local fake of Binance spot (REST + websocket streams) that replays a recording and trades.

Speaks enough of Binance's documented spot protocol for python-binance and for our live feed:

  REST  GET /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo[?symbol=|symbols=],
        /api/v3/depth?symbol=&limit= (the fake's current book, with its true lastUpdateId)
  WS    /stream?streams=a/b/c (combined: {"stream":..,"data":..}), /ws/<stream> (raw payloads),
        and SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS requests on either

and one spot account (`SpotAccount`) on the signed (USER_DATA / TRADE) endpoints:

  POST /api/v3/order (MARKET; LIMIT GTC/IOC/FOK; newClientOrderId; newOrderRespType ACK, RESULT,
  FULL), DELETE and GET /api/v3/order (orderId or origClientOrderId), GET and DELETE
  /api/v3/openOrders, GET /api/v3/account, GET /api/v3/myTrades (fromId, orderId, limit).

Signed requests are checked as Binance does: the X-MBX-APIKEY header (-2014 missing, -2015
wrong; HTTP 401), an HMAC-SHA256 `signature` of the query string followed by the body with the
configured secret (-1022), `timestamp` within `recvWindow` (default 5000 ms, at most 60000;
-1021, -1131). Orders are refused with Binance's codes and messages: -1102/-1100/-1106/-1115/
-1116/-1117/-1130 (parameters), -1121 (symbol), -1013 (PRICE_FILTER, LOT_SIZE, NOTIONAL from the
published exchangeInfo filters), -2010 (insufficient balance; "Duplicate order sent." while an
order with the same newClientOrderId is open - a reused id is accepted once the earlier order
has closed, as on Binance), -2011 (cancel of an unknown or closed order, filled ones included),
-2013 (query of an unknown order). Matching is described at `SpotAccount`.

The recorded lines are sent byte for byte at recorded pace divided by `speed` (0: flat out).
The fake keeps each symbol's book from the recorded REST snapshot plus every depth diff it has
replayed, so a depth request always answers the book as of the last diff it sent (before the
snapshot's moment: the recorded snapshot, which is then ahead of the stream, as on Binance).

Rate limits as Binance counts them: REQUEST_WEIGHT per minute (documented weights per endpoint;
X-MBX-USED-WEIGHT-1M on every answer) and ORDERS per 10 s and per day (X-MBX-ORDER-COUNT-10S /
-1D on order answers). Over a limit: 429 (-1003 weight, -1015 orders) with Retry-After. A client
that keeps sending before a 429's Retry-After has passed is banned (`ban_after` such requests):
418 with Retry-After for `ban_s`, every request refused until then.

Test controls: pause/resume, drop every websocket connection, skip one depth diff (a gap the
clients must detect), make REST answer 429/418 with Binance's error body and Retry-After, make
the next requests answer 5xx (before or after doing the work), lose the reply of the next
order request (placed, then the connection is closed, or the answer held past the client's
timeout), print a market trade, set balances, skew the server clock, and a log of every REST
request.

Run it for demos: `python -m libs.common.testing.fake_binance --port 8765 --speed 10`, then point
a client at http://127.0.0.1:8765 (REST, under /api) and ws://127.0.0.1:8765/ (streams), with
the API key and secret it prints at start (made per run, or taken from FLOTILLA_FAKE_VENUE_KEY /
FLOTILLA_FAKE_VENUE_SECRET; libs/common/testing/credentials.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import hmac
import logging
import math
import re
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
from aiohttp import WSMsgType, web

from libs.common.config import DEFAULT_CONFIG
from libs.common.testing.credentials import fake_venue_pair
from libs.common.testing.loop_thread import FakeOnLoopThread
from services.market_data.binance import ParseError
from services.market_data.l2book import (
    DepthDiff,
    DepthSnapshot,
    L2Book,
    Level,
    Outcome,
    parse_depth_diff,
    parse_depth_snapshot,
    split_stream,
)
from services.market_data.replay import LineCounter, read_lines

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DATA = tuple(
    DEFAULT_CONFIG.parents[1] / "data" / "binance" / f"spot_{s}_20240808.gz"
    for s in ("btcusdt", "ethusdt")
)
MAX_DEPTH_LIMIT = 5000  # Binance truncates larger limits to this
WEIGHT_LIMIT_1M = 6000  # spot REQUEST_WEIGHT per minute
CONNECTION_QUEUE_MAX = 100_000  # a client this far behind is disconnected, as Binance does
# Known spot filters; other symbols get 8-decimal increments.
INCREMENTS = {"BTCUSDT": ("0.01000000", "0.00001000"), "ETHUSDT": ("0.01000000", "0.00010000")}
QUOTE_ASSETS = ("USDT", "FDUSD", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
TOO_MANY = "Too many requests; current limit of IP(127.0.0.1) is {limit} requests per minute. Please use the websocket for live updates to avoid polling the API."
BANNED = "Way too many requests; IP(127.0.0.1) banned until {until}. Please use the websocket for live updates to avoid bans."
TOO_MANY_ORDERS = "Too many new orders; current limit is {limit} orders per {interval}."
ORDER_LIMIT_10S = 100  # spot ORDERS per 10 s (and per day, below), as exchangeInfo publishes
ORDER_LIMIT_1D = 200_000
BAN_AFTER = 3  # requests sent before a 429's Retry-After passed that earn a 418 ban
BAN_S = 120  # Binance's shortest IP ban; repeat offenders get longer ones there
# The credentials the fake accepts unless told otherwise: made per run, never stored.
API_KEY, API_SECRET = fake_venue_pair("fake-binance")
DEFAULT_BALANCES = {"USDT": Decimal("100000"), "BTC": Decimal("1"), "ETH": Decimal("10")}
COMMISSION_RATE = Decimal("0.001")  # 0.1% maker and taker, Binance's base spot rate
ZERO = Decimal(0)
EIGHT_PLACES = Decimal("0.00000001")
FIRST_ORDER_ID = 5_000_001  # distinct ranges, so an order id passed off as a trade id shows
FIRST_TRADE_ID = 900_001
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60_000
CLIENT_ID = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
DECIMAL_PARAM = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
# Request weights of the endpoints the fake serves (others: 1), from Binance's spot docs.
WEIGHTS = {
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/order"): 4,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/myTrades"): 20,  # 5 with orderId
    ("GET", "/api/v3/openOrders"): 6,  # 80 without a symbol
}


# --- the recording ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedLine:
    """One recorded stream message."""

    recv_ns: int
    stream: str  # as recorded, e.g. "btcusdt@depth@100ms"
    symbol: str  # "BTCUSDT"
    envelope: bytes  # the combined-stream message, byte for byte (what /stream sends)
    data: bytes  # its `data` part (what /ws/<stream> sends)
    diff: DepthDiff | None  # parsed, for depth lines


@dataclass(frozen=True)
class Recording:
    """Every stream line of one or more recordings in arrival order, and each symbol's snapshot."""

    lines: tuple[RecordedLine, ...]
    snapshots: dict[str, DepthSnapshot]

    @property
    def symbols(self) -> tuple[str, ...]:
        """Symbols with a snapshot (those the fake can serve depth for)."""
        return tuple(sorted(self.snapshots))

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Recording:
        """Parse recordings (gzip or plain); each file holds one symbol, as recorded."""
        per_file: list[list[RecordedLine]] = []
        snapshots: dict[str, DepthSnapshot] = {}
        for path in paths:
            lines, snapshot = _load_file(Path(path))
            per_file.append(lines)
            if snapshot is not None and lines:
                snapshots.setdefault(lines[0].symbol, snapshot)
        merged = heapq.merge(*per_file, key=lambda line: line.recv_ns)
        return cls(tuple(merged), snapshots)


def _load_file(path: Path) -> tuple[list[RecordedLine], DepthSnapshot | None]:
    """One file's stream lines and its REST snapshot line, if any."""
    lines: list[RecordedLine] = []
    snapshot: DepthSnapshot | None = None
    for recv_ns, raw in read_lines(path, LineCounter()):
        try:
            stream, data = split_stream(raw)
            if not stream:
                snapshot = snapshot or parse_depth_snapshot(raw)
                continue
            diff = parse_depth_diff(data) if "@depth" in stream else None
        except ParseError as exc:
            log.warning("%s: unparseable line skipped: %s", path.name, exc)
            continue
        symbol = stream.partition("@")[0].upper()
        lines.append(RecordedLine(recv_ns, stream, symbol, raw.rstrip(b"\r\n"), data, diff))
    return lines, snapshot


# --- the account: orders, matching, balances ----------------------------------------------------


class ApiError(Exception):
    """A Binance error answer: HTTP status plus the {"code", "msg"} body."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


def _bad(code: int, msg: str) -> ApiError:
    """A 400 answer (Binance's code for a request refused on its merits)."""
    return ApiError(400, code, msg)


def _missing(name: str) -> ApiError:
    """-1102 for a mandatory parameter that was not sent."""
    return _bad(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _fmt(value: Decimal) -> str:
    """Binance's wire format for prices and quantities: a string with 8 decimals."""
    return f"{value:.8f}"


@dataclass(frozen=True)
class SymbolRules:
    """A symbol's assets and exchangeInfo filters, as the matching engine enforces them."""

    symbol: str
    base: str
    quote: str
    tick: Decimal
    min_price: Decimal
    max_price: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal

    @classmethod
    def of(cls, symbol: str) -> SymbolRules:
        """The rules the fake's exchangeInfo publishes for `symbol`."""
        info = _symbol_info(symbol)
        f = {flt["filterType"]: flt for flt in info["filters"]}
        price, lot, notional = f["PRICE_FILTER"], f["LOT_SIZE"], f["NOTIONAL"]
        return cls(
            symbol,
            info["baseAsset"],
            info["quoteAsset"],
            Decimal(price["tickSize"]),
            Decimal(price["minPrice"]),
            Decimal(price["maxPrice"]),
            Decimal(lot["stepSize"]),
            Decimal(lot["minQty"]),
            Decimal(lot["maxQty"]),
            Decimal(notional["minNotional"]),
        )

    def check(self, qty: Decimal, price: Decimal | None, notional_px: Decimal | None) -> None:
        """-1013 filter failures, in Binance's order: PRICE_FILTER, LOT_SIZE, NOTIONAL."""
        if price is not None and (
            price < self.min_price or price > self.max_price or (price - self.min_price) % self.tick
        ):
            raise _bad(-1013, "Filter failure: PRICE_FILTER")
        if qty < self.min_qty or qty > self.max_qty or (qty - self.min_qty) % self.step:
            raise _bad(-1013, "Filter failure: LOT_SIZE")
        if notional_px is not None and qty * notional_px < self.min_notional:
            raise _bad(-1013, "Filter failure: NOTIONAL")


@dataclass
class Balance:
    """One asset of the account."""

    free: Decimal = ZERO
    locked: Decimal = ZERO


@dataclass
class FakeOrder:
    """An order at the fake venue, in Binance's vocabulary."""

    order_id: int
    symbol: str
    client_order_id: str
    side: str  # BUY | SELL
    type: str  # MARKET | LIMIT
    time_in_force: str  # GTC | IOC | FOK (MARKET orders report GTC, as Binance does)
    price: Decimal  # 0 for MARKET
    qty: Decimal
    time_ms: int
    executed: Decimal = ZERO
    quote: Decimal = ZERO  # cummulativeQuoteQty
    status: str = "NEW"
    update_ms: int = 0

    @property
    def leaves(self) -> Decimal:
        """Quantity still to fill."""
        return self.qty - self.executed

    @property
    def is_open(self) -> bool:
        """Still working (what openOrders lists and a cancel can reach)."""
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def wire(self) -> dict[str, Any]:
        """GET /api/v3/order's answer."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": _fmt(self.price),
            "origQty": _fmt(self.qty),
            "executedQty": _fmt(self.executed),
            "cummulativeQuoteQty": _fmt(self.quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": _fmt(ZERO),
            "icebergQty": _fmt(ZERO),
            "time": self.time_ms,
            "updateTime": self.update_ms,
            "isWorking": True,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": _fmt(ZERO),
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def placed(self, resp_type: str, fills: Sequence[FakeTrade]) -> dict[str, Any]:
        """POST /api/v3/order's answer in newOrderRespType ACK, RESULT or FULL."""
        ack = {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "transactTime": self.time_ms,
        }
        if resp_type == "ACK":
            return ack
        full = self.wire()
        result = ack | {
            k: full[k]
            for k in (
                "price",
                "origQty",
                "executedQty",
                "origQuoteOrderQty",
                "cummulativeQuoteQty",
                "status",
                "timeInForce",
                "type",
                "side",
                "workingTime",
                "selfTradePreventionMode",
            )
        }
        if resp_type == "RESULT":
            return result
        return result | {"fills": [t.order_fill() for t in fills]}

    def canceled(self, cancel_id: str, now_ms: int) -> dict[str, Any]:
        """DELETE /api/v3/order's answer (clientOrderId is the cancel's own id)."""
        full = self.wire()
        return {
            "symbol": self.symbol,
            "origClientOrderId": self.client_order_id,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": cancel_id,
            "transactTime": now_ms,
            **{
                k: full[k]
                for k in (
                    "price",
                    "origQty",
                    "executedQty",
                    "origQuoteOrderQty",
                    "cummulativeQuoteQty",
                    "status",
                    "timeInForce",
                    "type",
                    "side",
                    "selfTradePreventionMode",
                )
            },
        }


@dataclass(frozen=True)
class FakeTrade:
    """One execution of one of our orders."""

    id: int
    order_id: int
    symbol: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int
    is_buyer: bool
    is_maker: bool

    def wire(self) -> dict[str, Any]:
        """GET /api/v3/myTrades' entry."""
        return {
            "symbol": self.symbol,
            "id": self.id,
            "orderId": self.order_id,
            "orderListId": -1,
            "price": _fmt(self.price),
            "qty": _fmt(self.qty),
            "quoteQty": _fmt(self.price * self.qty),
            "commission": _fmt(self.commission),
            "commissionAsset": self.commission_asset,
            "time": self.time_ms,
            "isBuyer": self.is_buyer,
            "isMaker": self.is_maker,
            "isBestMatch": True,
        }

    def order_fill(self) -> dict[str, Any]:
        """An entry of a FULL order answer's `fills`."""
        return {
            "price": _fmt(self.price),
            "qty": _fmt(self.qty),
            "commission": _fmt(self.commission),
            "commissionAsset": self.commission_asset,
            "tradeId": self.id,
        }


@dataclass(frozen=True)
class NewOrder:
    """A validated POST /api/v3/order."""

    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    price: Decimal | None
    client_order_id: str
    resp_type: str


class SpotAccount:
    """One spot account at the fake: balances, orders and trades, matched against the fake's book.

    Matching (simple and documented, not Binance's engine): a MARKET order, and the marketable
    part of a LIMIT order, walk the fake's current book level by level (one trade per level, at
    the level's price, as taker); what an order takes from a level is gone until a replayed depth
    diff sets that level again. The rest of a LIMIT GTC order rests and fills, as maker at its
    own price, when a replayed (or printed) market trade goes strictly through that price, up to
    the trade's quantity, oldest order first. A MARKET order the book cannot fill completely
    ends EXPIRED with what it got, as on Binance. Commission is charged on the asset received
    (base when buying, quote when selling), rounded to 8 decimals.
    """

    def __init__(
        self,
        books: dict[str, L2Book],
        balances: dict[str, Decimal],
        maker_rate: Decimal = COMMISSION_RATE,
        taker_rate: Decimal = COMMISSION_RATE,
    ) -> None:
        self.books = books
        self.rules = {s: SymbolRules.of(s) for s in books}
        self.balances: defaultdict[str, Balance] = defaultdict(Balance)
        for asset, free in balances.items():
            self.balances[asset] = Balance(Decimal(free))
        self.maker_rate, self.taker_rate = maker_rate, taker_rate
        self.orders: dict[int, FakeOrder] = {}
        self.open: dict[int, FakeOrder] = {}  # the working subset, in arrival order
        self.trades: defaultdict[str, list[FakeTrade]] = defaultdict(list)
        self._by_client: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        self._taken: defaultdict[str, dict[tuple[str, Decimal], Decimal]] = defaultdict(dict)
        self._next_order_id = FIRST_ORDER_ID
        self._next_trade_id: defaultdict[str, int] = defaultdict(lambda: FIRST_TRADE_ID)
        self._next_cancel_id = 1

    # --- requests ----------------------------------------------------------------------------

    def place(self, new: NewOrder, now_ms: int) -> tuple[FakeOrder, list[FakeTrade]]:
        """Accept an order and match what is marketable now; ApiError if refused."""
        rules = self.rules[new.symbol]
        side = "asks" if new.side == "BUY" else "bids"
        best = self._best(new.symbol, side)
        rules.check(new.qty, new.price, new.price if new.price is not None else best)
        if any(self.orders[i].is_open for i in self._by_client[(new.symbol, new.client_order_id)]):
            raise _bad(-2010, "Duplicate order sent.")
        self._reserve(new, rules)
        order = FakeOrder(
            self._next_order_id,
            new.symbol,
            new.client_order_id,
            new.side,
            new.type,
            new.time_in_force,
            new.price if new.price is not None else ZERO,
            new.qty,
            now_ms,
            update_ms=now_ms,
        )
        self._next_order_id += 1
        self.orders[order.order_id] = order
        self._by_client[(order.symbol, order.client_order_id)].append(order.order_id)
        if new.time_in_force == "FOK" and self._fillable(order, new.price) < new.qty:
            self._finish(order, "EXPIRED", now_ms)
            return order, []
        fills = self._sweep(order, new.price, now_ms)
        if order.leaves > 0 and (new.type == "MARKET" or new.time_in_force != "GTC"):
            self._finish(order, "EXPIRED", now_ms)  # IOC rest, or a book too thin for a MARKET
        elif order.leaves > 0:
            self.open[order.order_id] = order
        return order, fills

    def find(self, symbol: str, order_id: int | None, client_id: str | None) -> FakeOrder | None:
        """An order by id or client id (the latest with that client id; open ones first)."""
        if order_id is not None:
            order = self.orders.get(order_id)
            return order if order is not None and order.symbol == symbol else None
        ids = self._by_client.get((symbol, client_id or ""), [])
        orders = [self.orders[i] for i in ids]
        return next((o for o in reversed(orders) if o.is_open), orders[-1] if orders else None)

    def cancel(self, order: FakeOrder, now_ms: int) -> str:
        """Cancel a working order; its cancel's own client id. -2011 if it is not working."""
        if not order.is_open:
            raise _bad(-2011, "Unknown order sent.")
        self._finish(order, "CANCELED", now_ms)
        cancel_id = f"cancel{self._next_cancel_id:016d}"
        self._next_cancel_id += 1
        return cancel_id

    def open_orders(self, symbol: str | None) -> list[FakeOrder]:
        """Working orders, oldest first."""
        return [o for o in self.open.values() if symbol is None or o.symbol == symbol]

    def my_trades(
        self, symbol: str, from_id: int | None, order_id: int | None, limit: int
    ) -> list[FakeTrade]:
        """myTrades: from `from_id` on, else the most recent `limit`; ascending ids."""
        trades = self.trades.get(symbol, [])
        if order_id is not None:
            trades = [t for t in trades if t.order_id == order_id]
        if from_id is not None:
            return [t for t in trades if t.id >= from_id][:limit]
        return trades[-limit:]

    # --- the market ---------------------------------------------------------------------------

    def on_diff(self, diff: DepthDiff) -> None:
        """A replayed diff sets levels anew: what we took from them is forgotten."""
        taken = self._taken.get(diff.symbol)
        if taken:
            for price, _qty in diff.bids:
                taken.pop(("bids", price), None)
            for price, _qty in diff.asks:
                taken.pop(("asks", price), None)

    def on_trade(self, symbol: str, price: Decimal, qty: Decimal, now_ms: int) -> list[FakeTrade]:
        """A market trade: resting orders it went strictly through fill at their own price."""
        fills: list[FakeTrade] = []
        for order in [o for o in self.open.values() if o.symbol == symbol]:
            if qty <= 0:
                break
            through = price < order.price if order.side == "BUY" else price > order.price
            if through:
                take = min(order.leaves, qty)
                qty -= take
                fills.append(self._fill(order, take, order.price, True, now_ms))
        return fills

    def has_open(self, symbol: str) -> bool:
        """True when a resting order of `symbol` could fill on a market trade."""
        return any(o.symbol == symbol for o in self.open.values())

    # --- internals ----------------------------------------------------------------------------

    def _best(self, symbol: str, side: str) -> Decimal | None:
        """The best price on `side` ("asks" / "bids") of the fake's book."""
        levels = self.books[symbol].levels(side, 1)
        return levels[0][0] if levels else None

    def _levels(self, symbol: str, side: str, limit: Decimal | None) -> Iterable[Level]:
        """(price, untaken quantity) best first, up to a limit price."""
        taken = self._taken[symbol]
        for price, qty in self.books[symbol].levels(side):
            if limit is not None and (price > limit if side == "asks" else price < limit):
                return
            avail = qty - taken.get((side, price), ZERO)
            if avail > 0:
                yield price, avail

    def _fillable(self, order: FakeOrder, limit: Decimal | None) -> Decimal:
        """How much of the order the book could fill now."""
        side = "asks" if order.side == "BUY" else "bids"
        return sum((q for _p, q in self._levels(order.symbol, side, limit)), ZERO)

    def _market_cost(self, symbol: str, qty: Decimal) -> Decimal:
        """Quote needed to buy `qty` (or as much as the book has) at market now."""
        cost = ZERO
        for price, avail in self._levels(symbol, "asks", None):
            take = min(qty, avail)
            cost, qty = cost + take * price, qty - take
            if qty <= 0:
                break
        return cost

    def _reserve(self, new: NewOrder, rules: SymbolRules) -> None:
        """Check the balance the order needs and lock it (LIMIT); -2010 if short."""
        if new.side == "BUY":
            asset = rules.quote
            need = (
                new.qty * new.price
                if new.price is not None
                else self._market_cost(new.symbol, new.qty)
            )
        else:
            asset, need = rules.base, new.qty
        bal = self.balances[asset]
        if bal.free < need:
            raise _bad(-2010, "Account has insufficient balance for requested action.")
        if new.type == "LIMIT":
            bal.free -= need
            bal.locked += need

    def _release(self, order: FakeOrder) -> None:
        """Unlock what a LIMIT order's unfilled rest held."""
        if order.type != "LIMIT" or order.leaves <= 0:
            return
        rules = self.rules[order.symbol]
        asset, amount = (
            (rules.quote, order.leaves * order.price)
            if order.side == "BUY"
            else (rules.base, order.leaves)
        )
        bal = self.balances[asset]
        bal.locked -= amount
        bal.free += amount

    def _finish(self, order: FakeOrder, status: str, now_ms: int) -> None:
        """End an order that did not fill completely."""
        self._release(order)
        order.status, order.update_ms = status, now_ms
        self.open.pop(order.order_id, None)

    def _sweep(self, order: FakeOrder, limit: Decimal | None, now_ms: int) -> list[FakeTrade]:
        """Take liquidity level by level (one trade per level) up to the limit price."""
        side = "asks" if order.side == "BUY" else "bids"
        taken = self._taken[order.symbol]
        fills: list[FakeTrade] = []
        for price, avail in list(self._levels(order.symbol, side, limit)):
            if order.leaves <= 0:
                break
            take = min(order.leaves, avail)
            taken[(side, price)] = taken.get((side, price), ZERO) + take
            fills.append(self._fill(order, take, price, False, now_ms))
        return fills

    def _fill(
        self, order: FakeOrder, qty: Decimal, price: Decimal, maker: bool, now_ms: int
    ) -> FakeTrade:
        """Book one execution: the order, both balances and the commission."""
        rules = self.rules[order.symbol]
        rate = self.maker_rate if maker else self.taker_rate
        base, quote = self.balances[rules.base], self.balances[rules.quote]
        if order.side == "BUY":
            commission, asset = (qty * rate).quantize(EIGHT_PLACES, ROUND_HALF_UP), rules.base
            if order.type == "LIMIT":  # locked at the limit price; any improvement comes back
                quote.locked -= qty * order.price
                quote.free += qty * (order.price - price)
            else:
                quote.free -= qty * price
            base.free += qty - commission
        else:
            commission = (qty * price * rate).quantize(EIGHT_PLACES, ROUND_HALF_UP)
            asset = rules.quote
            if order.type == "LIMIT":
                base.locked -= qty
            else:
                base.free -= qty
            quote.free += qty * price - commission
        order.executed += qty
        order.quote += qty * price
        order.update_ms = now_ms
        order.status = "FILLED" if order.leaves == 0 else "PARTIALLY_FILLED"
        if order.status == "FILLED":
            self.open.pop(order.order_id, None)
        trade = FakeTrade(
            self._next_trade_id[order.symbol],
            order.order_id,
            order.symbol,
            price,
            qty,
            commission,
            asset,
            now_ms,
            order.side == "BUY",
            maker,
        )
        self._next_trade_id[order.symbol] += 1
        self.trades[order.symbol].append(trade)
        return trade


# --- the server ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One REST request as the fake saw it."""

    mono: float  # time.monotonic() on arrival
    path: str
    query: str
    status: int
    method: str = "GET"
    lost: bool = False  # its reply was lost on purpose (lose_reply)


@dataclass
class _RestFailure:
    """Answer the next `times` requests to `path` with `status`."""

    status: int
    times: int
    retry_after_s: int
    path: str


@dataclass
class _ServerFailure:
    """Answer the next `times` matching requests with a 5xx, before or after doing the work."""

    status: int
    times: int
    path: str  # "*": any
    method: str  # "": any
    processed: bool  # True: the request takes effect, only the answer is an error


@dataclass
class _LostReply:
    """Do the next `times` matching requests, then close the connection or answer too late."""

    times: int
    path: str
    method: str
    delay_s: float  # 0: close the connection instead of answering


@dataclass(eq=False)
class _Conn:
    """One websocket client."""

    ws: web.WebSocketResponse
    request: web.Request
    combined: bool
    streams: set[str] = field(default_factory=set)  # lower-cased stream names
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


class FakeBinance:
    """The fake venue; every method runs on its event loop (see FakeBinanceThread for tests)."""

    def __init__(
        self,
        recording: Recording,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        paused: bool = False,
        weight_limit_1m: int = WEIGHT_LIMIT_1M,
        order_limit_10s: int = ORDER_LIMIT_10S,
        order_limit_1d: int = ORDER_LIMIT_1D,
        ban_after: int = BAN_AFTER,
        ban_s: int = BAN_S,
        api_key: str = API_KEY,
        api_secret: str = API_SECRET,
        balances: dict[str, Decimal] | None = None,
        commission_rate: Decimal = COMMISSION_RATE,
    ) -> None:
        self.recording = recording
        self.host = host
        self.port = port
        self.speed = speed
        self.weight_limit_1m = weight_limit_1m
        self.order_limit_10s = order_limit_10s
        self.order_limit_1d = order_limit_1d
        self.ban_after = ban_after
        self.ban_s = ban_s
        self.api_key = api_key
        self._api_secret = api_secret.encode()
        self.clock_skew_ms = 0  # added to the server's clock (time, timestamp checks, orders)
        self.bans = 0  # 418 bans imposed on a client that did not back off
        self.cursor = 0  # index of the next recorded line to send
        self.requests: list[RestRequest] = []
        self.ws_accepted = 0
        self.gaps_injected = 0
        self.slow_clients_dropped = 0
        self.books = {sym: _book_from(sym, snap) for sym, snap in recording.snapshots.items()}
        self.account = SpotAccount(
            self.books,
            DEFAULT_BALANCES if balances is None else balances,
            commission_rate,
            commission_rate,
        )
        self._conns: set[_Conn] = set()
        self._by_stream: defaultdict[str, set[_Conn]] = defaultdict(set)
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._anchor: tuple[float, int] | None = None  # (monotonic s, recv_ns) pacing origin
        self._gaps: list[str | None] = []  # symbols (None: any) whose next diff is skipped
        self._failures: list[_RestFailure] = []
        self._weight_minute = 0
        self._weight_used = 0
        self._orders_10s = (0, 0)  # (10-second window, orders in it)
        self._orders_1d = (0, 0)  # (UTC day, orders in it)
        self._backoff_until = 0.0  # monotonic: a 429 told the client to wait until then
        self._banned_until = 0.0  # monotonic: 418 for every request until then
        self._violations = 0  # requests sent before the current 429's Retry-After passed
        self._server_failures: list[_ServerFailure] = []
        self._lost_replies: list[_LostReply] = []
        self._next_auto_id = 1
        self._runner: web.AppRunner | None = None
        self._replay_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL for REST (python-binance: API_URL = url + "/api") and, as ws://, streams."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen and start replaying (unless paused)."""
        app = web.Application(middlewares=[self._rest_middleware])
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/depth", self._depth)
        app.router.add_post("/api/v3/order", self._new_order)
        app.router.add_get("/api/v3/order", self._query_order)
        app.router.add_delete("/api/v3/order", self._cancel_order)
        app.router.add_get("/api/v3/openOrders", self._open_orders)
        app.router.add_delete("/api/v3/openOrders", self._cancel_open_orders)
        app.router.add_get("/api/v3/account", self._account)
        app.router.add_get("/api/v3/myTrades", self._my_trades)
        app.router.add_get("/stream", self._ws)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/ws/{streams:.*}", self._ws)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the one picked, if port was 0
        self._replay_task = asyncio.create_task(self._replay())

    async def stop(self) -> None:
        """Stop replaying, close every connection and the listener."""
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        await self.drop_connections(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- controls ----------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop sending; connections stay open."""
        self._running.clear()

    def resume(self) -> None:
        """Send again from where it stopped, paced from now."""
        self._anchor = None
        self._running.set()

    async def drop_connections(self, abrupt: bool = True) -> int:
        """Disconnect every websocket client: abruptly (TCP abort, like a network failure) or
        with a close frame (like Binance's 24-hour disconnect). Returns how many."""
        conns = list(self._conns)
        for conn in conns:
            if abrupt and conn.request.transport is not None:
                conn.request.transport.abort()
            else:
                await conn.ws.close(code=1001, message=b"going away")
        return len(conns)

    def inject_gap(self, symbol: str | None = None) -> None:
        """Do not send the next depth diff of `symbol` (any symbol if None); the fake's own book
        still applies it, as the venue's would."""
        self._gaps.append(symbol.upper() if symbol else None)

    def fail_rest(
        self, status: int = 429, times: int = 1, retry_after_s: int = 1, path: str = "/api/v3/depth"
    ) -> None:
        """Answer the next `times` requests to `path` ("*": any) with 429 or 418."""
        self._failures.append(_RestFailure(status, times, retry_after_s, path))

    def fail_server(
        self,
        status: int = 503,
        times: int = 1,
        path: str = "*",
        method: str = "",
        processed: bool = False,
    ) -> None:
        """Answer the next `times` requests to `path` ("*": any) and `method` ("": any) with a
        5xx; with `processed` the request takes effect first (Binance: "execution status
        unknown"), otherwise it is refused (Binance: "unable to process your request")."""
        self._server_failures.append(_ServerFailure(status, times, path, method.upper(), processed))

    def lose_reply(
        self,
        times: int = 1,
        path: str = "/api/v3/order",
        method: str = "POST",
        delay_s: float = 0.0,
    ) -> None:
        """Do the next `times` matching requests (an order IS placed), then lose the answer:
        close the connection (delay_s 0) or answer only after `delay_s` (past a client timeout)."""
        self._lost_replies.append(_LostReply(times, path, method.upper(), delay_s))

    def set_balances(self, balances: dict[str, Decimal | str]) -> None:
        """Set the free balance of these assets (locked amounts stay)."""
        for asset, free in balances.items():
            self.account.balances[asset.upper()].free = Decimal(free)

    def print_trade(self, symbol: str, price: Decimal, qty: Decimal) -> list[FakeTrade]:
        """A market trade at `price`: resting orders it goes through fill (not sent on streams)."""
        return self.account.on_trade(symbol.upper(), Decimal(price), Decimal(qty), self.now_ms())

    def now_ms(self) -> int:
        """The server's clock (wall clock plus any skew), in ms since the epoch."""
        return int(time.time() * 1000) + self.clock_skew_ms

    def book(self, symbol: str) -> DepthSnapshot:
        """The fake's current book of `symbol`."""
        return self.books[symbol.upper()].snapshot()

    @property
    def connections(self) -> int:
        """Open websocket connections."""
        return len(self._conns)

    # --- replay ------------------------------------------------------------------------------

    async def _replay(self) -> None:
        """Send every recorded line at its paced time, then stay quiet."""
        lines = self.recording.lines
        while self.cursor < len(lines):
            await self._running.wait()
            line = lines[self.cursor]
            await self._pace(line.recv_ns)
            if not self._running.is_set():
                continue  # paused while waiting: re-check after resume
            self._emit(line)
            self.cursor += 1
        log.info("fake binance: recording finished (%d lines)", len(lines))

    async def _pace(self, recv_ns: int) -> None:
        """Wait until recorded time / speed has elapsed since the pacing origin."""
        if self.speed <= 0:
            if self.cursor % 64 == 0:
                await asyncio.sleep(0)  # flat out, but let clients and REST in
            return
        if self._anchor is None:
            self._anchor = (time.monotonic(), recv_ns)
        mono0, recv0 = self._anchor
        delay = mono0 + (recv_ns - recv0) / 1e9 / self.speed - time.monotonic()
        if delay > 0.001:
            await asyncio.sleep(delay)
        elif self.cursor % 64 == 0:
            await asyncio.sleep(0)

    def _emit(self, line: RecordedLine) -> None:
        """Advance the fake's book and send the line to its subscribers."""
        if line.diff is not None:
            book = self.books.get(line.symbol)
            if book is not None and book.on_diff(line.diff) is Outcome.GAP:
                log.error("fake binance: the recording's %s depth chain is broken", line.symbol)
            self.account.on_diff(line.diff)
            if self._take_gap(line.symbol):
                return
        elif line.stream.endswith("@trade") and self.account.has_open(line.symbol):
            self._market_trade(line)
        for conn in self._by_stream.get(line.stream.lower(), ()):
            if conn.queue.qsize() >= CONNECTION_QUEUE_MAX:
                self.slow_clients_dropped += 1
                if conn.request.transport is not None:
                    conn.request.transport.abort()
                continue
            conn.queue.put_nowait(line.envelope if conn.combined else line.data)

    def _market_trade(self, line: RecordedLine) -> None:
        """A replayed trade may fill resting orders."""
        try:
            trade = msgspec.json.decode(line.data, type=_TradePrint)
        except msgspec.DecodeError:
            return
        self.account.on_trade(line.symbol, trade.p, trade.q, self.now_ms())

    def _take_gap(self, symbol: str) -> bool:
        """True (once) if this symbol's diff is to be skipped."""
        for i, wanted in enumerate(self._gaps):
            if wanted is None or wanted == symbol:
                del self._gaps[i]
                self.gaps_injected += 1
                return True
        return False

    # --- websocket ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        """A stream connection: combined (/stream?streams=) or raw (/ws/<stream>)."""
        combined = request.path == "/stream"
        names = (
            request.query.get("streams", "") if combined else request.match_info.get("streams", "")
        )
        ws = web.WebSocketResponse(heartbeat=20, timeout=2.0)  # timeout: for the close handshake
        await ws.prepare(request)
        conn = _Conn(ws, request, combined)
        self._subscribe(conn, [n for n in names.split("/") if n])
        self._conns.add(conn)
        self.ws_accepted += 1
        writer = asyncio.create_task(self._write(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_request(conn, msg.data)
        finally:
            self._unsubscribe(conn, list(conn.streams))
            self._conns.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _write(self, conn: _Conn) -> None:
        """Send queued lines in order (text frames, as Binance does)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                payload = await conn.queue.get()
                await conn.ws.send_str(payload.decode())

    async def _on_request(self, conn: _Conn, text: str) -> None:
        """Binance's live subscribe requests: {"method":"SUBSCRIBE","params":[...],"id":1}."""
        try:
            req = msgspec.json.decode(text)
            method, params, req_id = req["method"], req.get("params", []), req["id"]
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
            await conn.ws.send_str('{"error":{"code":3,"msg":"Invalid JSON"}}')
            return
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            await conn.ws.send_str(
                msgspec.json.encode(
                    {"error": {"code": 2, "msg": "Invalid request"}, "id": req_id}
                ).decode()
            )
            return
        result: Any = None
        if method == "SUBSCRIBE":
            self._subscribe(conn, params)
        elif method == "UNSUBSCRIBE":
            self._unsubscribe(conn, params)
        elif method == "LIST_SUBSCRIPTIONS":
            result = sorted(conn.streams)
        else:
            await conn.ws.send_str(
                msgspec.json.encode(
                    {"error": {"code": 2, "msg": "Invalid request"}, "id": req_id}
                ).decode()
            )
            return
        await conn.ws.send_str(msgspec.json.encode({"result": result, "id": req_id}).decode())

    def _subscribe(self, conn: _Conn, names: Sequence[str]) -> None:
        """Stream names are matched case-insensitively; unknown ones simply never send."""
        for name in names:
            conn.streams.add(name.lower())
            self._by_stream[name.lower()].add(conn)

    def _unsubscribe(self, conn: _Conn, names: Sequence[str]) -> None:
        """Stop sending these streams to conn."""
        for name in names:
            conn.streams.discard(name.lower())
            self._by_stream[name.lower()].discard(conn)

    # --- REST --------------------------------------------------------------------------------

    @web.middleware
    async def _rest_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Log every REST request; inject failures; enforce rate limits and bans."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        lost: _LostReply | None = None
        response: web.StreamResponse | None
        response = self._injected_failure(request.path) or self._refusal(request)
        if response is None:
            failure = self._take(self._server_failures, request)
            if failure is not None and not failure.processed:
                response = _server_error(failure.status, processed=False)
            else:
                lost = self._take(self._lost_replies, request)
                response = await self._handle(request, handler)
                if failure is not None:
                    response = _server_error(failure.status, processed=True)
        assert response is not None
        self._account_limits(request, response)
        self.requests.append(
            RestRequest(
                time.monotonic(),
                request.path,
                request.query_string,
                response.status,
                request.method,
                lost is not None,
            )
        )
        if lost is not None:
            await self._lose(request, lost)
        return response

    async def _handle(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Run the endpoint; its ApiError becomes Binance's error answer."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return exc
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.msg)

    def _account_limits(self, request: web.Request, response: web.StreamResponse) -> None:
        """Rate-limit headers, and the back-off window or ban a 429 / 418 starts."""
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight_used)
        if request.method == "POST" and request.path == "/api/v3/order":
            response.headers["X-MBX-ORDER-COUNT-10S"] = str(self._orders_10s[1])
            response.headers["X-MBX-ORDER-COUNT-1D"] = str(self._orders_1d[1])
        if response.status in (418, 429) and _code_of(response) == -1003:
            # the IP's request limits; an order-count 429 (-1015) refuses only further orders
            until = time.monotonic() + float(response.headers.get("Retry-After", "0"))
            if response.status == 418:
                self._banned_until = max(self._banned_until, until)
            else:
                self._backoff_until = max(self._backoff_until, until)

    async def _lose(self, request: web.Request, lost: _LostReply) -> None:
        """Lose the answer: hold it past the client's timeout, or close the connection."""
        if lost.delay_s > 0:
            await asyncio.sleep(lost.delay_s)
        elif request.transport is not None:
            request.transport.abort()

    def _take(self, queue: list[Any], request: web.Request) -> Any:
        """The first queued failure that matches this request, used up once."""
        for item in queue:
            if (
                item.times > 0
                and item.path in (request.path, "*")
                and item.method in (request.method, "")
            ):
                item.times -= 1
                return item
        return None

    def _injected_failure(self, path: str) -> web.Response | None:
        """The next queued 429/418 for this path, if any."""
        for failure in self._failures:
            if failure.times > 0 and failure.path in (path, "*"):
                failure.times -= 1
                return _rate_limited(failure.status, failure.retry_after_s, self.weight_limit_1m)
        return None

    def _refusal(self, request: web.Request) -> web.Response | None:
        """A ban, a request sent inside a 429's back-off window, or a limit exceeded now."""
        now = time.monotonic()
        if now < self._banned_until:
            return _rate_limited(418, math.ceil(self._banned_until - now), self.weight_limit_1m)
        if now < self._backoff_until:
            self._violations += 1
            if self._violations >= self.ban_after:  # it will not back off: ban it, as Binance does
                self.bans += 1
                self._violations = 0
                return _rate_limited(418, self.ban_s, self.weight_limit_1m)
            return _rate_limited(429, math.ceil(self._backoff_until - now), self.weight_limit_1m)
        self._violations = 0
        return self._over_weight(request) or self._over_orders(request)

    def _over_weight(self, request: web.Request) -> web.Response | None:
        """Count the request's weight in the current minute; 429 past the limit."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += _weight(request)
        if self._weight_used <= self.weight_limit_1m:
            return None
        return _rate_limited(429, int(60 - now % 60) + 1, self.weight_limit_1m)

    def _over_orders(self, request: web.Request) -> web.Response | None:
        """Count a new order in its 10-second and daily windows; 429 (-1015) past a limit."""
        if request.method != "POST" or request.path != "/api/v3/order":
            return None
        now = time.time()
        window, day = int(now // 10), int(now // 86_400)
        n10 = self._orders_10s[1] if self._orders_10s[0] == window else 0
        n1d = self._orders_1d[1] if self._orders_1d[0] == day else 0
        if n10 >= self.order_limit_10s:
            msg = TOO_MANY_ORDERS.format(limit=self.order_limit_10s, interval="10 SECOND")
            return _error(429, -1015, msg, {"Retry-After": str(int(10 - now % 10) + 1)})
        if n1d >= self.order_limit_1d:
            msg = TOO_MANY_ORDERS.format(limit=self.order_limit_1d, interval="1 DAY")
            return _error(429, -1015, msg, {"Retry-After": str(int(86_400 - now % 86_400) + 1)})
        self._orders_10s, self._orders_1d = (window, n10 + 1), (day, n1d + 1)
        return None

    async def _ping(self, _request: web.Request) -> web.Response:
        """GET /api/v3/ping."""
        return web.json_response({})

    async def _time(self, _request: web.Request) -> web.Response:
        """GET /api/v3/time: the server clock (a client derives its signing offset from it)."""
        return web.json_response({"serverTime": self.now_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        """GET /api/v3/exchangeInfo for the recorded symbols (or the requested ones)."""
        wanted = _requested_symbols(request)
        symbols = self.recording.symbols if wanted is None else wanted
        unknown = [s for s in symbols if s not in self.recording.snapshots]
        if unknown:
            return _error(400, -1121, "Invalid symbol.")
        return web.json_response(_exchange_info(symbols))

    async def _depth(self, request: web.Request) -> web.Response:
        """GET /api/v3/depth?symbol=&limit=: the current book, best levels first."""
        symbol = request.query.get("symbol", "").upper()
        if not symbol:
            return _error(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        if symbol not in self.books:
            return _error(400, -1121, "Invalid symbol.")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _error(
                400,
                -1100,
                "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
            )
        if limit < 1:
            return _error(400, -1100, "Illegal characters found in parameter 'limit'.")
        snap = self.books[symbol].snapshot(min(limit, MAX_DEPTH_LIMIT))
        return web.Response(body=snap.to_json(), content_type="application/json")

    # --- signed endpoints (the account) -------------------------------------------------------

    async def _signed(self, request: web.Request) -> dict[str, str]:
        """The request's parameters, once its key, signature and timestamp pass Binance's checks."""
        body = await request.text()
        query = request.rel_url.raw_query_string
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        key = request.headers.get("X-MBX-APIKEY", "")
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        for name in ("timestamp", "signature"):
            if not params.get(name):
                raise _missing(name)
        # Binance signs totalParams: the query string, then the body, as sent (signature left out)
        payload = _unsigned(query) + _unsigned(body)
        expected = hmac.new(self._api_secret, payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params["signature"]):
            raise _bad(-1022, "Signature for this request is not valid.")
        self._check_time(params)
        return params

    def _check_time(self, params: dict[str, str]) -> None:
        """-1021 unless the timestamp is within recvWindow of the server's clock."""
        try:
            timestamp = int(params["timestamp"])
            window = Decimal(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        except (ValueError, InvalidOperation):
            raise _missing("timestamp") from None
        if window > MAX_RECV_WINDOW_MS:
            raise _bad(-1131, "recvWindow must be less than 60000.")
        now = self.now_ms()
        if timestamp >= now + 1000:
            raise _bad(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > window:
            raise _bad(-1021, "Timestamp for this request is outside of the recvWindow.")

    def _symbol(self, params: dict[str, str], required: bool = True) -> str:
        """The `symbol` parameter: -1102 if missing (and required), -1121 if not traded here."""
        symbol = params.get("symbol", "")
        if not symbol:
            if required:
                raise _missing("symbol")
            return ""
        if symbol not in self.account.rules:
            raise _bad(-1121, "Invalid symbol.")
        return symbol

    def _order_of(self, params: dict[str, str]) -> FakeOrder | None:
        """The order named by orderId or origClientOrderId."""
        symbol = self._symbol(params)
        order_id, client_id = _int_param(params, "orderId"), params.get("origClientOrderId")
        if order_id is None and not client_id:
            raise _bad(
                -1102,
                "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            )
        return self.account.find(symbol, order_id, client_id)

    def _new_order_of(self, params: dict[str, str]) -> NewOrder:
        """POST /api/v3/order's parameters, validated as Binance does."""
        for name in ("symbol", "side", "type"):
            if not params.get(name):
                raise _missing(name)
        symbol, side, kind = self._symbol(params), params["side"], params["type"]
        if side not in ("BUY", "SELL"):
            raise _bad(-1117, "Invalid side.")
        if kind not in ("MARKET", "LIMIT"):
            raise _bad(-1116, "Invalid orderType.")  # the fake trades only these two
        qty, price = _decimal_param(params, "quantity"), _decimal_param(params, "price")
        tif = params.get("timeInForce", "")
        if kind == "MARKET":
            if qty is None:
                raise _bad(
                    -1102,
                    "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!",
                )
            for name in ("timeInForce", "price"):
                if name in params:
                    raise _bad(-1106, f"Parameter '{name}' sent when not required.")
            tif = "GTC"  # what Binance reports for a MARKET order
        else:
            for name, value in (("timeInForce", tif), ("quantity", qty), ("price", price)):
                if not value:
                    raise _missing(name)
            if tif not in ("GTC", "IOC", "FOK"):
                raise _bad(-1115, "Invalid timeInForce.")
        if qty is not None and qty <= 0:
            raise _bad(-1013, "Invalid quantity.")
        if price is not None and price <= 0:
            raise _bad(-1013, "Invalid price.")
        client_id = params.get("newClientOrderId") or self._auto_id()
        if not CLIENT_ID.match(client_id):
            raise _bad(
                -1100,
                f"Illegal characters found in parameter 'newClientOrderId'; legal range is '{CLIENT_ID.pattern}'.",
            )
        resp_type = params.get("newOrderRespType", "FULL")
        if resp_type not in ("ACK", "RESULT", "FULL"):
            raise _bad(-1130, "Data sent for parameter 'newOrderRespType' is not valid.")
        assert qty is not None
        return NewOrder(symbol, side, kind, tif, qty, price, client_id, resp_type)

    def _auto_id(self) -> str:
        """A client order id for an order sent without one (Binance makes one up too)."""
        self._next_auto_id += 1
        return f"fakeauto{self._next_auto_id:020d}"

    async def _new_order(self, request: web.Request) -> web.Response:
        """POST /api/v3/order."""
        new = self._new_order_of(await self._signed(request))
        order, fills = self.account.place(new, self.now_ms())
        return web.json_response(order.placed(new.resp_type, fills))

    async def _query_order(self, request: web.Request) -> web.Response:
        """GET /api/v3/order: -2013 for an order the account never had."""
        order = self._order_of(await self._signed(request))
        if order is None:
            raise _bad(-2013, "Order does not exist.")
        return web.json_response(order.wire())

    async def _cancel_order(self, request: web.Request) -> web.Response:
        """DELETE /api/v3/order: -2011 for an unknown order or one no longer working."""
        params = await self._signed(request)
        order = self._order_of(params)
        if order is None:
            raise _bad(-2011, "Unknown order sent.")
        now = self.now_ms()
        cancel_id = self.account.cancel(order, now)
        return web.json_response(order.canceled(params.get("newClientOrderId") or cancel_id, now))

    async def _open_orders(self, request: web.Request) -> web.Response:
        """GET /api/v3/openOrders[?symbol=]."""
        symbol = self._symbol(await self._signed(request), required=False)
        return web.json_response([o.wire() for o in self.account.open_orders(symbol or None)])

    async def _cancel_open_orders(self, request: web.Request) -> web.Response:
        """DELETE /api/v3/openOrders?symbol=: every working order of the symbol (-2011 if none)."""
        symbol = self._symbol(await self._signed(request))
        orders = self.account.open_orders(symbol)
        if not orders:
            raise _bad(-2011, "Unknown order sent.")
        now = self.now_ms()
        return web.json_response([o.canceled(self.account.cancel(o, now), now) for o in orders])

    async def _account(self, request: web.Request) -> web.Response:
        """GET /api/v3/account: balances and commission rates."""
        params = await self._signed(request)
        omit_zero = params.get("omitZeroBalances", "false") == "true"
        balances = [
            {"asset": asset, "free": _fmt(bal.free), "locked": _fmt(bal.locked)}
            for asset, bal in sorted(self.account.balances.items())
            if not omit_zero or bal.free or bal.locked
        ]
        maker, taker = self.account.maker_rate, self.account.taker_rate
        return web.json_response(
            {
                "makerCommission": int(maker * 10_000),
                "takerCommission": int(taker * 10_000),
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {
                    "maker": _fmt(maker),
                    "taker": _fmt(taker),
                    "buyer": _fmt(ZERO),
                    "seller": _fmt(ZERO),
                },
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.now_ms(),
                "accountType": "SPOT",
                "balances": balances,
                "permissions": ["SPOT"],
                "uid": 354937868,
            }
        )

    async def _my_trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/myTrades?symbol=[&fromId=][&orderId=][&limit=] (limit 500, at most 1000)."""
        params = await self._signed(request)
        symbol = self._symbol(params)
        limit = min(max(_int_param(params, "limit") or 500, 1), 1000)
        trades = self.account.my_trades(
            symbol, _int_param(params, "fromId"), _int_param(params, "orderId"), limit
        )
        return web.json_response([t.wire() for t in trades])


class _TradePrint(msgspec.Struct):
    """The fields of a recorded trade that matching needs."""

    p: Decimal
    q: Decimal


def _code_of(response: web.StreamResponse) -> int | None:
    """The Binance error code of an error answer the fake made."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        code = msgspec.json.decode(body).get("code")
    except (msgspec.DecodeError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _unsigned(raw: str) -> str:
    """A raw query string or body without its signature parameter."""
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


def _int_param(params: dict[str, str], name: str) -> int | None:
    """An integer parameter; -1100 if it is not one."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise _bad(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(raw)


def _decimal_param(params: dict[str, str], name: str) -> Decimal | None:
    """A price or quantity parameter; -1100 unless it matches Binance's decimal pattern."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not DECIMAL_PARAM.match(raw):
        raise _bad(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '{DECIMAL_PARAM.pattern}'.",
        )
    return Decimal(raw)


def _server_error(status: int, processed: bool) -> web.Response:
    """Binance's 5xx: a request it could not process, or one whose outcome is unknown."""
    if processed:
        return _error(
            status,
            -1007,
            "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        )
    return _error(
        status, -1001, "Internal error; unable to process your request. Please try again."
    )


def _book_from(symbol: str, snapshot: DepthSnapshot) -> L2Book:
    """A book synced on a recorded snapshot."""
    book = L2Book(symbol)
    book.on_snapshot(snapshot)
    return book


def _weight(request: web.Request) -> int:
    """Binance spot request weights (depth by limit; openOrders and myTrades by parameters)."""
    path = request.path
    if path == "/api/v3/depth":
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return 1
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    if path == "/api/v3/openOrders" and request.method == "GET" and "symbol" not in request.query:
        return 80
    if path == "/api/v3/myTrades" and "orderId" in request.query:
        return 5
    return WEIGHTS.get((request.method, path), 1)


def _rate_limited(status: int, retry_after_s: int, limit: int) -> web.Response:
    """Binance's 429 (too many requests) or 418 (IP banned) answer."""
    if status == 418:
        msg = BANNED.format(until=int((time.time() + retry_after_s) * 1000))
    else:
        msg = TOO_MANY.format(limit=limit)
    return _error(status, -1003, msg, {"Retry-After": str(retry_after_s)})


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    """Binance's error body: {"code": -NNNN, "msg": "..."}."""
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _requested_symbols(request: web.Request) -> tuple[str, ...] | None:
    """`symbol=X` or `symbols=["X","Y"]`; None for all."""
    if "symbol" in request.query:
        return (request.query["symbol"].upper(),)
    if "symbols" in request.query:
        try:
            return tuple(str(s).upper() for s in msgspec.json.decode(request.query["symbols"]))
        except msgspec.DecodeError:
            return ("",)
    return None


def _exchange_info(symbols: Sequence[str]) -> dict[str, Any]:
    """The fields of Binance's answer that clients read, for these symbols."""
    return {
        "timezone": "UTC",
        "serverTime": int(time.time() * 1000),
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": WEIGHT_LIMIT_1M,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": 61000,
            },
        ],
        "exchangeFilters": [],
        "symbols": [_symbol_info(s) for s in symbols],
    }


def _symbol_info(symbol: str) -> dict[str, Any]:
    """One exchangeInfo symbol entry."""
    tick, step = INCREMENTS.get(symbol, ("0.00000001", "0.00000001"))
    quote = next((q for q in QUOTE_ASSETS if symbol.endswith(q) and symbol != q), symbol[-4:])
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": symbol[: -len(quote)],
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


# --- running it in a thread (tests) or as a program (demos) -------------------------------------


class FakeBinanceThread(FakeOnLoopThread[FakeBinance]):
    """A FakeBinance on its own event loop in a daemon thread, with blocking controls."""

    def __init__(self, recording: Recording, **kwargs: Any) -> None:
        super().__init__(lambda: FakeBinance(recording, **kwargs), "fake-binance")

    def inject_gap(self, symbol: str | None = None) -> None:
        """See FakeBinance.inject_gap."""
        self.call(lambda f: f.inject_gap(symbol))

    def fail_rest(
        self, status: int = 429, times: int = 1, retry_after_s: int = 1, path: str = "/api/v3/depth"
    ) -> None:
        """See FakeBinance.fail_rest."""
        self.call(lambda f: f.fail_rest(status, times, retry_after_s, path))

    def book(self, symbol: str) -> DepthSnapshot:
        """See FakeBinance.book."""
        return self.call(lambda f: f.book(symbol))

    def fail_server(
        self,
        status: int = 503,
        times: int = 1,
        path: str = "*",
        method: str = "",
        processed: bool = False,
    ) -> None:
        """See FakeBinance.fail_server."""
        self.call(lambda f: f.fail_server(status, times, path, method, processed))

    def lose_reply(
        self,
        times: int = 1,
        path: str = "/api/v3/order",
        method: str = "POST",
        delay_s: float = 0.0,
    ) -> None:
        """See FakeBinance.lose_reply."""
        self.call(lambda f: f.lose_reply(times, path, method, delay_s))

    def set_balances(self, balances: dict[str, Decimal | str]) -> None:
        """See FakeBinance.set_balances."""
        self.call(lambda f: f.set_balances(balances))

    def balances(self) -> dict[str, Balance]:
        """Every asset's balance (copies)."""
        return self.call(
            lambda f: {a: dataclasses.replace(b) for a, b in f.account.balances.items()}
        )

    def print_trade(self, symbol: str, price: Decimal | str, qty: Decimal | str) -> list[FakeTrade]:
        """See FakeBinance.print_trade."""
        return self.call(lambda f: f.print_trade(symbol, Decimal(price), Decimal(qty)))

    def orders(
        self, symbol: str | None = None, client_order_id: str | None = None
    ) -> list[FakeOrder]:
        """Every order the account ever had (copies), optionally of one symbol or client id."""
        return self.call(
            lambda f: [
                dataclasses.replace(o)
                for o in f.account.orders.values()
                if (symbol is None or o.symbol == symbol)
                and (client_order_id is None or o.client_order_id == client_order_id)
            ]
        )

    def trades(self, symbol: str) -> list[FakeTrade]:
        """Every execution of the account's orders in `symbol`."""
        return self.call(lambda f: list(f.account.trades.get(symbol, [])))

    def set_clock_skew(self, ms: int) -> None:
        """Move the server's clock by `ms` (a client's signed timestamps then look off)."""
        self.call(lambda f: setattr(f, "clock_skew_ms", ms))

    @property
    def bans(self) -> int:
        """418 bans imposed for not backing off."""
        return self.call(lambda f: f.bans)

    def requests(self, path: str | None = None, method: str | None = None) -> list[RestRequest]:
        """REST requests so far (to `path` and with `method` only, if given)."""
        return self.call(
            lambda f: [
                r
                for r in f.requests
                if (path is None or r.path == path) and (method is None or r.method == method)
            ]
        )

    @property
    def cursor(self) -> int:
        """Index of the next recorded line to send."""
        return self.call(lambda f: f.cursor)

    @property
    def connections(self) -> int:
        """Open websocket connections."""
        return self.call(lambda f: f.connections)

    @property
    def ws_accepted(self) -> int:
        """Websocket connections accepted so far."""
        return self.call(lambda f: f.ws_accepted)


async def _serve(args: argparse.Namespace) -> None:
    """Run until cancelled (Ctrl-C)."""
    recording = Recording.load(args.data)
    fake = FakeBinance(recording, host=args.host, port=args.port, speed=args.speed)
    await fake.start()
    print(
        f"fake binance on {fake.url} (REST {fake.url}/api, streams ws://{fake.host}:{fake.port}/): "
        f"{len(recording.lines)} lines of {', '.join(recording.symbols)} at speed {args.speed or 'max'}"
        f"; throwaway API key {API_KEY} and secret {API_SECRET} (export them as BINANCE_API_KEY /"
        " BINANCE_API_SECRET for a demo fleet)",
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m libs.common.testing.fake_binance --port N --speed X [--data FILE ...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="recorded pace multiple; 0 = flat out"
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", default=list(DEFAULT_DATA), help="recordings"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
