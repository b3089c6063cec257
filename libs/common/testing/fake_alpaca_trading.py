"""A local fake of Alpaca's Trading API v2 (REST), for alpaca-py's TradingClient and our adapter.

Alpaca serves trading on its own host (paper-api.alpaca.markets), apart from market data, so
this is a separate fake from `fake_alpaca.py` (the market-data streams). What it speaks, as
alpaca-py 0.44 calls it and Alpaca's public API reference documents it:

  GET    /v2/account                        the account (TradeAccount)
  POST   /v2/orders                         market and limit orders; qty, side, type,
                                            time_in_force, client_order_id, limit_price
  GET    /v2/orders?status=open|closed|all&limit=&direction=&symbols=
  GET    /v2/orders:by_client_order_id?client_order_id=
  GET    /v2/orders/{id}
  DELETE /v2/orders/{id}                    204; 422 when the order is no longer cancelable
  DELETE /v2/orders                         cancel all: 207 [{"id","status","body"}]
  GET    /v2/positions
  DELETE /v2/positions[?cancel_orders=true] close all: 207 [{"symbol","status","order_id","body"}]
  GET    /v2/account/activities/FILL?direction=&page_size=&page_token=   (also
         /v2/account/activities?activity_types=FILL)

Errors are Alpaca's status codes and JSON bodies {"code": N, "message": "..."}: 401 40110000
(bad keys), 403 40310000 (insufficient buying power; insufficient balance to sell crypto), 404
40410000 (order not found), 422 40010001 (invalid order; "client_order_id must be unique"), 422
42210000 (order is not cancelable), 429 42910000 (rate limit exceeded), 5xx 50010000. Every
answer carries X-RateLimit-Limit / -Remaining / -Reset (epoch seconds) as Alpaca's do; requests
are counted per minute (Alpaca: 200 per account), every authenticated request counting,
refused ones too.

Money is decimal text on the wire, as Alpaca sends it (`money_as_numbers=True` sends JSON
numbers instead, to prove a client does not round them through binary floats).

Matching, kept simple and deterministic: each symbol has a current price (`prices`,
`set_price`, or the next entry of `price_path` on `step()`). The reply to POST /v2/orders is the
order as accepted ("pending_new", nothing filled, as Alpaca answers crypto orders); the fake
then matches it at once. A market order fills at the current price (it waits, "new", while the
symbol has none). A limit order fills at the current price if marketable on arrival, otherwise
at its limit price once a later price reaches it. `set_max_fill_qty(q)` caps each match at q,
so an order fills in chunks, one per matching event (arrival, each later price of its symbol).
Symbols with "/" are crypto (time in force gtc or ioc, no short selling: a sell needs the
position); others are stocks (shorting allowed). Fees are not modelled (Alpaca charges none on
stocks; its crypto fee is taken from the credited asset and is not reported per fill).

Test controls: `lose_next_order_reply()` places the next order and then drops the connection
without a reply (or stalls past the client's timeout first); `fail_next(n, status)` answers the
next n requests with a 5xx (or a 429 with X-RateLimit-Remaining 0) without acting on them;
`fill_before_next_cancel()` (the cancel arrives too late: 422); `set_buying_power(x)`;
`set_max_fill_qty(q)`; `place(...)` (an order from another session); `requests()` is a log of
every request, `orders()` every order.

Run it for demos: `python -m libs.common.testing.fake_alpaca_trading --port 8767`, then
TradingClient(key, secret, url_override="http://127.0.0.1:8767") with the key and secret it prints
(made per run, or FLOTILLA_FAKE_VENUE_KEY / _SECRET; libs/common/testing/credentials.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from libs.common.testing.credentials import fake_venue_pair

ZERO = Decimal(0)
RATE_LIMIT_PER_MIN = 200  # Alpaca Trading API: 200 requests per minute per account
OPEN_STATUSES = frozenset({"pending_new", "new", "accepted", "partially_filled"})
CRYPTO_TIF = frozenset({"gtc", "ioc"})
STOCK_TIF = frozenset({"day", "gtc", "ioc", "fok", "opg", "cls"})
MAX_CLIENT_ORDER_ID = 128
ASSET_NS = uuid.UUID("5f1e8a44-3c2b-4d67-9a0e-1f2a3b4c5d6e")  # stable asset ids per symbol

Payload = dict[str, Any] | list[Any] | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: str
    status: int  # what the fake answered; 0 = no reply (dropped)
    mono_s: float


@dataclass
class FakeOrder:
    """An order at the fake venue."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    created_at: datetime
    status: str = "pending_new"
    filled_qty: Decimal = ZERO
    notional_filled: Decimal = ZERO
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    rested: bool = False  # seen by a matching event without filling completely

    @property
    def leaves(self) -> Decimal:
        """Quantity still to fill."""
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        """Can still fill."""
        return self.status in OPEN_STATUSES

    @property
    def crypto(self) -> bool:
        """Crypto pairs are written BASE/QUOTE."""
        return "/" in self.symbol


@dataclass
class FakePosition:
    """A net position by order symbol (e.g. "BTC/USD"; Alpaca reports it as "BTCUSD")."""

    symbol: str
    qty: Decimal = ZERO
    avg_entry_price: Decimal = ZERO


@dataclass(frozen=True)
class FakeFill:
    """One FILL activity."""

    id: str
    order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    order_status: str
    transaction_time: datetime


@dataclass
class _Failures:
    """Injected failures, consumed one per request."""

    remaining: int = 0
    status: int = 503
    reset_in_s: float = 1.0
    lose_order_reply: bool = False
    stall_s: float = 0.0
    fill_before_cancel: bool = False


@dataclass
class _Reply:
    """What to answer: status 0 means no reply at all (the connection is closed)."""

    status: int
    payload: Payload = None
    stall_s: float = 0.0
    headers: dict[str, str] | None = None  # None: the rate-limit window's own headers


@dataclass
class _State:
    """Everything the venue knows; guarded by FakeAlpacaTrading.lock."""

    cash: Decimal
    prices: dict[str, Decimal]
    path: deque[tuple[str, Decimal]]
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    positions: dict[str, FakePosition] = field(default_factory=dict)
    fills: list[FakeFill] = field(default_factory=list)
    max_fill_qty: Decimal | None = None


class FakeAlpacaTrading:
    """Alpaca's Trading API v2 on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        key_id: str = "",
        secret_key: str = "",
        prices: Mapping[str, Decimal] | None = None,
        price_path: Iterable[tuple[str, Decimal]] = (),
        buying_power: Decimal = Decimal("100000"),
        rate_limit_per_min: int = RATE_LIMIT_PER_MIN,
        money_as_numbers: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # Credentials are made per run unless given: no key, not even a fake one, is in the repo.
        default_key, default_secret = fake_venue_pair("fake-alpaca")
        self.key_id, self.secret_key = key_id or default_key, secret_key or default_secret
        self.rate_limit_per_min = rate_limit_per_min
        self.lock = threading.RLock()
        self.state = _State(cash=buying_power, prices=dict(prices or {}), path=deque(price_path))
        self.log: list[RecordedRequest] = []
        self._failures = _Failures()
        self._window: deque[float] = deque()  # wall-clock times of requests in the last minute
        self.money_as_numbers = money_as_numbers
        self._encoder = msgspec.json.Encoder(
            decimal_format="number" if money_as_numbers else "string"
        )
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),  # shutdown() waits up to one poll interval
            name="fake-alpaca-trading",
            daemon=True,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeAlpacaTrading:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> FakeAlpacaTrading:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>: what TradingClient's url_override takes."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- test controls ----------------------------------------------------------------------

    def set_price(self, symbol: str, price: Decimal) -> None:
        """A new current price for `symbol`; matches its open orders."""
        with self.lock:
            self.state.prices[symbol] = price
            for order in self._open(symbol):
                self._match(order)

    def step(self) -> bool:
        """Apply the next (symbol, price) of the price path; False when it is used up."""
        with self.lock:
            if not self.state.path:
                return False
            symbol, price = self.state.path.popleft()
        self.set_price(symbol, price)
        return True

    def set_buying_power(self, cash: Decimal) -> None:
        """Set the account's cash (= buying power: the fake account has no margin)."""
        with self.lock:
            self.state.cash = cash

    def set_max_fill_qty(self, qty: Decimal | None) -> None:
        """Cap every match at qty (partial fills), or None for whole fills."""
        with self.lock:
            self.state.max_fill_qty = qty

    def lose_next_order_reply(self, stall_s: float = 0.0) -> None:
        """Place the next POST /v2/orders, then close the connection without a reply."""
        with self.lock:
            self._failures.lose_order_reply, self._failures.stall_s = True, stall_s

    def fail_next(self, n: int = 1, status: int = 503, reset_in_s: float = 1.0) -> None:
        """Answer the next n requests with `status` (5xx or 429) without acting on them; a 429
        says no requests are left until `reset_in_s` from now (X-RateLimit-Reset)."""
        with self.lock:
            self._failures.remaining, self._failures.status = n, status
            self._failures.reset_in_s = reset_in_s

    def fill_before_next_cancel(self) -> None:
        """The next DELETE /v2/orders/{id} finds the order filled (it filled while the cancel
        was on its way), so it answers 422 not cancelable."""
        with self.lock:
            self._failures.fill_before_cancel = True

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """The request log, filtered by method and path."""
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def orders(self, client_order_id: str | None = None) -> list[FakeOrder]:
        """Every order the venue holds (with that client order id, if given)."""
        with self.lock:
            return [
                o
                for o in self.state.orders.values()
                if client_order_id is None or o.client_order_id == client_order_id
            ]

    def position(self, symbol: str) -> Decimal:
        """Net position of an order symbol ("BTC/USD")."""
        with self.lock:
            pos = self.state.positions.get(symbol)
            return pos.qty if pos is not None else ZERO

    def place(self, **fields: Any) -> FakeOrder:
        """Place an order directly (as another session would), e.g. before a 'restart'."""
        with self.lock:
            status, payload = self._submit(
                {k: str(v) if isinstance(v, Decimal) else v for k, v in fields.items()}
            )
            if status != 200:
                raise ValueError(f"fake refused the order: {status} {payload}")
            assert isinstance(payload, dict)
            return self.state.orders[payload["id"]]

    # --- HTTP plumbing ----------------------------------------------------------------------

    def handle(self, req: _Handler, method: str) -> None:
        """Answer one request (runs on the server's handler thread)."""
        parts = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length).decode() if length else ""
        reply = _Reply(0)
        try:
            with self.lock:
                reply = self._answer(req, method, parts.path, query, body)
        finally:
            with self.lock:
                self.log.append(
                    RecordedRequest(method, parts.path, query, body, reply.status, time.monotonic())
                )
        if reply.stall_s:
            time.sleep(reply.stall_s)  # outside the lock: the venue keeps serving others
        if reply.status == 0:
            req.close_connection = True  # the order exists; its reply is lost
            return
        self._reply(req, reply)

    def _answer(
        self, req: _Handler, method: str, path: str, query: dict[str, str], body: str
    ) -> _Reply:
        """The reply to one request, after auth, rate limit and injected failures."""
        if (
            req.headers.get("APCA-API-KEY-ID") != self.key_id
            or req.headers.get("APCA-API-SECRET-KEY") != self.secret_key
        ):
            return _Reply(401, _err(40110000, "request is not authorized"))
        if self._over_limit():
            return _Reply(429, _err(42910000, "rate limit exceeded"))
        if self._failures.remaining > 0:
            return self._injected_failure()
        if (
            method == "DELETE"
            and path.startswith("/v2/orders/")
            and self._failures.fill_before_cancel
        ):
            self._failures.fill_before_cancel = False
            self._fill_now(path.rsplit("/", 1)[1])
        status, payload = self._route(method, path, query, body)
        if method == "POST" and path == "/v2/orders" and self._failures.lose_order_reply:
            self._failures.lose_order_reply = False  # the order stands; only the reply is lost
            return _Reply(0, stall_s=self._failures.stall_s)
        return _Reply(status, payload)

    def _injected_failure(self) -> _Reply:
        """One of the failures fail_next asked for."""
        self._failures.remaining -= 1
        status = self._failures.status
        if status != 429:
            return _Reply(status, _err(50010000, "internal server error"))
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit_per_min),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(time.time() + self._failures.reset_in_s)),
        }
        return _Reply(429, _err(42910000, "rate limit exceeded"), headers=headers)

    def _fill_now(self, oid: str) -> None:
        """Fill what is left of an open order at its limit (or the current) price."""
        order = self.state.orders.get(oid)
        if order is not None and order.is_open:
            price = order.limit_price or self.state.prices[order.symbol]
            self._fill(order, order.leaves, price)

    def _over_limit(self) -> bool:
        """Count this request in the per-minute window; True when over Alpaca's limit."""
        now = time.time()
        while self._window and self._window[0] <= now - 60:
            self._window.popleft()
        self._window.append(now)
        return len(self._window) > self.rate_limit_per_min

    def _rate_headers(self) -> dict[str, str]:
        """Alpaca's rate-limit headers: the limit, what is left, and when the window resets."""
        with self.lock:
            now = time.time()
            used = sum(1 for t in self._window if t > now - 60)
            reset = math.ceil(self._window[0] + 60) if self._window else math.ceil(now)
        return {
            "X-RateLimit-Limit": str(self.rate_limit_per_min),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit_per_min - used)),
            "X-RateLimit-Reset": str(reset),
        }

    def _reply(self, req: _Handler, reply: _Reply) -> None:
        """Write the status, Alpaca's headers and the JSON body (none for 204)."""
        status, payload = reply.status, reply.payload
        data = b"" if status == 204 or payload is None else self._encoder.encode(payload)
        req.send_response(status)
        for name, value in (reply.headers or self._rate_headers()).items():
            req.send_header(name, value)
        if data:
            req.send_header("Content-Type", "application/json; charset=UTF-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if data:
            req.wfile.write(data)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: str
    ) -> tuple[int, Payload]:
        """Dispatch to the endpoint."""
        for verb, pattern, fn in self._routes():
            m = re.fullmatch(pattern, path)
            if m and verb == method:
                return fn(query, body, *m.groups())
        return 404, {"message": "Not Found"}

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Payload]]]]:
        """(method, path pattern, handler) for every endpoint."""
        return [
            ("GET", r"/v2/account", lambda q, b: (200, self._account_json())),
            ("POST", r"/v2/orders", lambda q, b: self._submit_body(b)),
            ("GET", r"/v2/orders", lambda q, b: self._list_orders(q)),
            ("DELETE", r"/v2/orders", lambda q, b: self._cancel_all()),
            ("GET", r"/v2/orders:by_client_order_id", lambda q, b: self._by_client_id(q)),
            ("GET", r"/v2/orders/([^/]+)", lambda q, b, oid: self._get_order(oid)),
            ("DELETE", r"/v2/orders/([^/]+)", lambda q, b, oid: self._cancel(oid)),
            ("GET", r"/v2/positions", lambda q, b: (200, self._positions_json())),
            ("DELETE", r"/v2/positions", lambda q, b: self._close_all(q)),
            ("GET", r"/v2/account/activities/([A-Z]+)", lambda q, b, t: self._activities(q, t)),
            ("GET", r"/v2/account/activities", lambda q, b: self._activities(q, None)),
        ]

    # --- endpoints --------------------------------------------------------------------------

    def _submit_body(self, body: str) -> tuple[int, Payload]:
        """POST /v2/orders from its JSON body."""
        try:
            fields = json.loads(body, parse_float=Decimal)
        except ValueError:
            return 400, _err(40010000, "request body format is invalid")
        if not isinstance(fields, dict):
            return 400, _err(40010000, "request body format is invalid")
        return self._submit(fields)

    def _submit(self, fields: dict[str, Any]) -> tuple[int, Payload]:
        """Validate, check funds, accept, then match: the reply is the order as accepted."""
        order_or_error = self._validate(fields)
        if isinstance(order_or_error, tuple):
            return order_or_error
        order = order_or_error
        refusal = self._funds_refusal(order)
        if refusal is not None:
            return 403, refusal
        self.state.orders[order.id] = order
        self.state.by_client_id[order.client_order_id] = order.id
        reply = self._order_json(order)
        self._match(order)
        if order.status == "pending_new":
            order.status = "new"  # routed; waits for a price
        if order.time_in_force == "ioc" and order.is_open:
            self._finish(order, "canceled")
        return 200, reply

    def _validate(self, f: dict[str, Any]) -> FakeOrder | tuple[int, Payload]:
        """The order, or Alpaca's 422 for what is wrong with it."""
        symbol, side, otype = f.get("symbol"), f.get("side"), f.get("type")
        tif = f.get("time_in_force")
        coid = str(f.get("client_order_id") or uuid.uuid4())
        qty, limit = _decimal(f.get("qty")), _decimal(f.get("limit_price"))
        problem = ""
        if not isinstance(symbol, str) or not symbol:
            problem = "symbol is required"
        elif side not in ("buy", "sell"):
            problem = "invalid side"
        elif otype not in ("market", "limit"):
            problem = "invalid order type"
        elif qty is None or qty <= 0:
            problem = "qty must be > 0"
        elif otype == "limit" and (limit is None or limit <= 0):
            problem = "limit_price is required for limit orders"
        elif otype == "market" and f.get("limit_price") is not None:
            problem = "limit_price is not allowed for market orders"
        elif tif not in (CRYPTO_TIF if "/" in symbol else STOCK_TIF):
            problem = f"invalid time_in_force {tif!s} for this asset"
        elif len(coid) > MAX_CLIENT_ORDER_ID:
            problem = "client_order_id must be no more than 128 characters"
        elif coid in self.state.by_client_id:
            problem = "client_order_id must be unique"
        if problem:
            return 422, _err(40010001, problem)
        assert isinstance(symbol, str) and qty is not None
        now = _now()
        return FakeOrder(
            id=str(uuid.uuid4()),
            client_order_id=coid,
            symbol=symbol,
            side=str(side),
            type=str(otype),
            time_in_force=str(tif),
            qty=qty,
            limit_price=limit if otype == "limit" else None,
            created_at=now,
            updated_at=now,
        )

    def _funds_refusal(self, order: FakeOrder) -> dict[str, Any] | None:
        """Alpaca's 403 when cash (buys) or a crypto position (sells) cannot cover the order."""
        if order.side == "buy":
            px = order.limit_price or self.state.prices.get(order.symbol)
            if px is not None and order.qty * px > self._buying_power():
                return _err(40310000, "insufficient buying power")
            return None
        if not order.crypto:
            return None  # stocks may be sold short
        available = self.position(order.symbol) - self._held(order.symbol, "sell")
        if order.qty > available:
            base = order.symbol.split("/")[0]
            return _err(
                40310000,
                f"insufficient balance for {base} (requested: {order.qty}, available: {available})",
            )
        return None

    def _buying_power(self) -> Decimal:
        """Cash less what open buy orders reserve."""
        reserved = sum(
            (
                o.leaves * (o.limit_price or self.state.prices.get(o.symbol, ZERO))
                for o in self.state.orders.values()
                if o.is_open and o.side == "buy"
            ),
            ZERO,
        )
        return self.state.cash - reserved

    def _held(self, symbol: str, side: str) -> Decimal:
        """Quantity reserved by open orders of one side."""
        return sum(
            (
                o.leaves
                for o in self.state.orders.values()
                if o.is_open and o.symbol == symbol and o.side == side
            ),
            ZERO,
        )

    def _list_orders(self, q: dict[str, str]) -> tuple[int, Payload]:
        """GET /v2/orders: by status (default open), newest first unless direction=asc."""
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            return 422, _err(40010001, "invalid status")
        limit = min(int(q.get("limit", "50")), 500)
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        orders = [
            o
            for o in self.state.orders.values()
            if (status == "all" or o.is_open == (status == "open"))
            and (symbols is None or o.symbol in symbols)
        ]
        orders.sort(key=lambda o: o.created_at, reverse=q.get("direction", "desc") == "desc")
        return 200, [self._order_json(o) for o in orders[:limit]]

    def _by_client_id(self, q: dict[str, str]) -> tuple[int, Payload]:
        """GET /v2/orders:by_client_order_id."""
        oid = self.state.by_client_id.get(q.get("client_order_id", ""))
        return self._get_order(oid or "")

    def _get_order(self, oid: str) -> tuple[int, Payload]:
        """GET /v2/orders/{id}."""
        order = self.state.orders.get(oid)
        if order is None:
            return 404, _err(40410000, "order not found")
        return 200, self._order_json(order)

    def _cancel(self, oid: str) -> tuple[int, Payload]:
        """DELETE /v2/orders/{id}: 204, or 422 once filled, canceled or expired."""
        order = self.state.orders.get(oid)
        if order is None:
            return 404, _err(40410000, "order not found")
        if not order.is_open:
            return 422, _err(42210000, "order is not cancelable")
        self._finish(order, "canceled")
        return 204, None

    def _cancel_all(self) -> tuple[int, Payload]:
        """DELETE /v2/orders: every open order canceled; 207 with one status per order."""
        out = []
        for order in self._open(None):
            self._finish(order, "canceled")
            out.append({"id": order.id, "status": 200, "body": self._order_json(order)})
        return 207, out

    def _close_all(self, q: dict[str, str]) -> tuple[int, Payload]:
        """DELETE /v2/positions: a market order against every position; 207 per symbol."""
        if q.get("cancel_orders", "").lower() == "true":
            self._cancel_all()
        out: list[dict[str, Any]] = []
        for pos in [p for p in self.state.positions.values() if p.qty != 0]:
            out.append(self._close_one(pos))
        return 207, out

    def _close_one(self, pos: FakePosition) -> dict[str, Any]:
        """Liquidate one position, or Alpaca's per-symbol 403 when open orders hold it."""
        side = "sell" if pos.qty > 0 else "buy"
        held = self._held(pos.symbol, side)
        wire_symbol = pos.symbol.replace("/", "")
        if held > 0:
            body = _err(
                40310000,
                f"insufficient qty available for order (requested: {abs(pos.qty)}, available: 0)",
            )
            body.update(
                symbol=wire_symbol, existing_qty=str(abs(pos.qty)), held_for_orders=str(held)
            )
            return {"symbol": wire_symbol, "status": 403, "body": body}
        status, payload = self._submit(
            {
                "symbol": pos.symbol,
                "qty": str(abs(pos.qty)),
                "side": side,
                "type": "market",
                "time_in_force": "gtc" if "/" in pos.symbol else "day",
            }
        )
        assert isinstance(payload, dict)
        order_id = payload.get("id") if status == 200 else None
        return {"symbol": wire_symbol, "status": status, "order_id": order_id, "body": payload}

    def _activities(self, q: dict[str, str], kind: str | None) -> tuple[int, Payload]:
        """GET /v2/account/activities[/FILL]: fills, paged by id (page_token = last id seen)."""
        kinds = {kind} if kind else set((q.get("activity_types") or "FILL").split(","))
        if not kinds <= {"FILL"}:
            return 200, []  # no other activity types happen at the fake
        fills = list(self.state.fills)
        if q.get("direction", "desc") == "desc":
            fills.reverse()
        token = q.get("page_token")
        if token:
            ids = [f.id for f in fills]
            fills = fills[ids.index(token) + 1 :] if token in ids else []
        size = min(int(q.get("page_size", "100")), 100)
        return 200, [self._fill_json(f) for f in fills[:size]]

    # --- matching ---------------------------------------------------------------------------

    def _open(self, symbol: str | None) -> list[FakeOrder]:
        """Open orders, oldest first (of one symbol, if given)."""
        return [
            o
            for o in self.state.orders.values()
            if o.is_open and (symbol is None or o.symbol == symbol)
        ]

    def _match(self, order: FakeOrder) -> None:
        """One matching event: fill what the current price allows, at most max_fill_qty."""
        price = self.state.prices.get(order.symbol)
        if price is None or not order.is_open:
            return
        limit, buy = order.limit_price, order.side == "buy"
        if limit is not None and (price > limit if buy else price < limit):
            order.rested = True
            return
        fill_px = limit if limit is not None and order.rested else price
        qty = order.leaves
        if self.state.max_fill_qty is not None:
            qty = min(qty, self.state.max_fill_qty)
        self._fill(order, qty, fill_px)
        order.rested = True

    def _fill(self, order: FakeOrder, qty: Decimal, price: Decimal) -> None:
        """Book one execution: the order, the position, the cash and a FILL activity."""
        now = _now()
        order.filled_qty += qty
        order.notional_filled += qty * price
        order.status = "filled" if order.leaves == 0 else "partially_filled"
        order.updated_at = now
        if order.status == "filled":
            order.filled_at = now
        signed = qty if order.side == "buy" else -qty
        self._book(order.symbol, signed, price)
        self.state.cash -= signed * price
        self.state.fills.append(
            FakeFill(
                id=_activity_id(now, len(self.state.fills) + 1),
                order_id=order.id,
                symbol=order.symbol,
                side=order.side,
                qty=qty,
                price=price,
                cum_qty=order.filled_qty,
                leaves_qty=order.leaves,
                order_status=order.status,
                transaction_time=now,
            )
        )

    def _book(self, symbol: str, signed_qty: Decimal, price: Decimal) -> None:
        """Average-cost position keeping: adding moves the average, reducing keeps it."""
        pos = self.state.positions.setdefault(symbol, FakePosition(symbol))
        new = pos.qty + signed_qty
        if pos.qty == 0 or (pos.qty > 0) != (new > 0):
            pos.avg_entry_price = price  # opened, or flipped through zero
        elif abs(new) > abs(pos.qty):
            pos.avg_entry_price = (pos.avg_entry_price * pos.qty + price * signed_qty) / new
        pos.qty = new
        if new == 0:
            del self.state.positions[symbol]

    def _finish(self, order: FakeOrder, status: str) -> None:
        """Move an open order to a final status other than filled."""
        now = _now()
        order.status, order.updated_at = status, now
        if status == "canceled":
            order.canceled_at = now

    # --- wire shapes ------------------------------------------------------------------------

    def _order_json(self, o: FakeOrder) -> dict[str, Any]:
        """Alpaca's order entity (every field alpaca-py's Order model reads)."""
        avg = o.notional_filled / o.filled_qty if o.filled_qty else None
        return {
            "id": o.id,
            "client_order_id": o.client_order_id,
            "created_at": _ts(o.created_at),
            "updated_at": _ts(o.updated_at or o.created_at),
            "submitted_at": _ts(o.created_at),
            "filled_at": _ts(o.filled_at),
            "expired_at": None,
            "canceled_at": _ts(o.canceled_at),
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(ASSET_NS, o.symbol)),
            "symbol": o.symbol,
            "asset_class": "crypto" if o.crypto else "us_equity",
            "notional": None,
            "qty": self._money(o.qty),
            "filled_qty": self._money(o.filled_qty),
            "filled_avg_price": self._money(avg) if avg is not None else None,
            "order_class": "simple",
            "order_type": o.type,
            "type": o.type,
            "side": o.side,
            "position_intent": "buy_to_open" if o.side == "buy" else "sell_to_close",
            "time_in_force": o.time_in_force,
            "limit_price": self._money(o.limit_price) if o.limit_price is not None else None,
            "stop_price": None,
            "status": o.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
            "expires_at": None,
        }

    def _positions_json(self) -> list[dict[str, Any]]:
        """Alpaca's position entities; crypto symbols without the slash, as Alpaca reports them."""
        out = []
        for p in self.state.positions.values():
            price = self.state.prices.get(p.symbol, p.avg_entry_price)
            crypto = "/" in p.symbol
            cost = p.qty * p.avg_entry_price
            value = p.qty * price
            out.append(
                {
                    "asset_id": str(uuid.uuid5(ASSET_NS, p.symbol)),
                    "symbol": p.symbol.replace("/", ""),
                    "exchange": "CRYPTO" if crypto else "NASDAQ",
                    "asset_class": "crypto" if crypto else "us_equity",
                    "asset_marginable": not crypto,
                    "qty": self._money(p.qty),
                    "avg_entry_price": self._money(p.avg_entry_price),
                    "side": "long" if p.qty > 0 else "short",
                    "market_value": self._money(value),
                    "cost_basis": self._money(cost),
                    "unrealized_pl": self._money(value - cost),
                    "unrealized_plpc": self._money(
                        ((value - cost) / abs(cost)).quantize(Decimal("1e-10"))
                    )
                    if cost
                    else "0",
                    "unrealized_intraday_pl": self._money(value - cost),
                    "unrealized_intraday_plpc": "0",
                    "current_price": self._money(price),
                    "lastday_price": self._money(price),
                    "change_today": "0",
                    "qty_available": self._money(
                        p.qty - self._held(p.symbol, "sell" if p.qty > 0 else "buy")
                    ),
                }
            )
        return out

    def _account_json(self) -> dict[str, Any]:
        """Alpaca's account entity (what TradeAccount needs, and the money fields)."""
        long_value = sum(
            (
                p.qty * self.state.prices.get(p.symbol, p.avg_entry_price)
                for p in self.state.positions.values()
                if p.qty > 0
            ),
            ZERO,
        )
        short_value = sum(
            (
                p.qty * self.state.prices.get(p.symbol, p.avg_entry_price)
                for p in self.state.positions.values()
                if p.qty < 0
            ),
            ZERO,
        )
        equity = self.state.cash + long_value + short_value
        bp = self._money(self._buying_power())
        return {
            "id": "8f7e6d5c-4b3a-4291-8c7d-6e5f4a3b2c1d",
            "account_number": "PA3FAKE00001",
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": bp,
            "regt_buying_power": bp,
            "non_marginable_buying_power": bp,
            "cash": self._money(self.state.cash),
            "accrued_fees": "0",
            "pending_transfer_out": "0",
            "pending_transfer_in": "0",
            "portfolio_value": self._money(equity),
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T14:00:00.000000Z",
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": True,
            "equity": self._money(equity),
            "last_equity": self._money(equity),
            "long_market_value": self._money(long_value),
            "short_market_value": self._money(short_value),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "options_buying_power": bp,
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    def _money(self, value: Decimal) -> str | Decimal:
        """Decimal text without an exponent, as Alpaca writes money (or the number itself)."""
        return value if self.money_as_numbers else format(value, "f")

    def _fill_json(self, f: FakeFill) -> dict[str, Any]:
        """Alpaca's FILL activity."""
        return {
            "id": f.id,
            "activity_type": "FILL",
            "transaction_time": _ts(f.transaction_time),
            "type": "fill" if f.leaves_qty == 0 else "partial_fill",
            "price": self._money(f.price),
            "qty": self._money(f.qty),
            "side": f.side,
            "symbol": f.symbol,
            "leaves_qty": self._money(f.leaves_qty),
            "order_id": f.order_id,
            "cum_qty": self._money(f.cum_qty),
            "order_status": f.order_status,
        }


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the FakeAlpacaTrading that owns the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as requests' Session expects
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request) ...
    disable_nagle_algorithm = True  # ... and without Nagle's delay against delayed ACKs

    def do_GET(self) -> None:
        self.server.fake.handle(self, "GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.fake.handle(self, "POST")  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:
        self.server.fake.handle(self, "DELETE")  # type: ignore[attr-defined]

    def do_PATCH(self) -> None:
        self.server.fake.handle(self, "PATCH")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the request log instead."""


def _err(code: int, message: str) -> dict[str, Any]:
    """Alpaca's error body."""
    return {"code": code, "message": message}


def _decimal(value: Any) -> Decimal | None:
    """A decimal from JSON text or number (None when absent or not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _now() -> datetime:
    """Wall-clock time; Alpaca stamps in UTC."""
    return datetime.now(UTC)


def _ts(t: datetime | None) -> str | None:
    """RFC 3339 with microseconds and Z, as Alpaca writes timestamps."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else None


def _activity_id(t: datetime, seq: int) -> str:
    """Alpaca's activity id shape: a timestamp to the millisecond, '::', and a unique id."""
    return f"{t.strftime('%Y%m%d%H%M%S')}{t.microsecond // 1000:03d}::{uuid.UUID(int=seq)}"


def main(argv: list[str] | None = None) -> int:
    """`python -m libs.common.testing.fake_alpaca_trading --port N [--price SYMBOL=PRICE ...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8767, help="0 picks a free port")
    parser.add_argument("--price", action="append", default=[], help="SYMBOL=PRICE, repeatable")
    args = parser.parse_args(argv)
    prices = {s: Decimal(p) for s, p in (kv.split("=", 1) for kv in args.price)}
    with FakeAlpacaTrading(prices=prices, host=args.host, port=args.port) as fake:
        # A throwaway pair for a local demo, printed so the operator can export it to the fleet.
        print(
            f"fake alpaca trading on {fake.url} (key {fake.key_id}, secret {fake.secret_key})",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a demo ends
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
