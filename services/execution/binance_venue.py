"""Binance spot execution through python-binance's synchronous `Client`: the `Venue` contract.

Calls and their Binance request weights (REQUEST_WEIGHT per minute, 6,000 by default):

  submit       POST   /api/v3/order        1, and 1 on the ORDERS counters (10 s and 1 day)
  cancel       DELETE /api/v3/order        1   (-2011 -> a query, to tell "filled" from "unknown")
  query        GET    /api/v3/order        4   (by origClientOrderId; -2013 -> None)
  open_orders  GET    /api/v3/openOrders   6 per configured symbol
  cancel_all   DELETE /api/v3/openOrders   1 per configured symbol
  positions    GET    /api/v3/account      20  (base-asset free + locked, per symbol)
  fills_since  GET    /api/v3/myTrades     20 per configured symbol per page (fromId cursor);
                                           asked at most every `fills_interval_s` unless an
                                           order was sent or cancelled since

Client order ids are execution's: the adapter sends `req.client_order_id` as newClientOrderId
and never makes one up or changes one (an id Binance would refuse is refused here, unsent).

Failures map onto the contract's errors. An answer with a Binance error code is a
`VenueRejected` with a stable reason (`reason_for`), except 429/418, which are
`VenueRateLimited`, and 5xx or Binance's "execution status unknown" codes, which are
`VenueUnavailable`, like timeouts and connection failures: the outcome of the request is unknown
and execution resolves it with `query`. Only idempotent calls (query, open_orders, positions,
fills_since) are retried here, with exponential backoff and jitter; submit, cancel and
cancel_all never are, and requests' own retries are off.

Rate limits (`RateGovernor`): every call is counted against Binance's fixed windows before it
is sent, and the counts are corrected from the X-MBX-USED-WEIGHT-1M and X-MBX-ORDER-COUNT-*
headers of every answer. A call that would exceed a limit waits for the next window (up to
`max_wait_s`) or raises `VenueRateLimited` unsent; background calls (queries, polls) may use
only `1 - reserve_fraction` of each budget, so they cannot starve orders and cancels. After a
429 or 418 every call raises `VenueRateLimited` unsent until its Retry-After has passed, so the
adapter cannot walk into a ban, or extend one.

Positions are the base assets' balances (free + locked). Binance takes a buy's commission in the
base asset (a sell's in the quote; BNB if the account pays fees in BNB), so a base balance moves
by the fill quantities less the fees whose fee_asset is that base asset.

Money is exact: answers are parsed with JSON numbers as Decimal (Binance sends prices and
quantities as strings anyway), and quantities go out as plain decimal strings.

Credentials come from BINANCE_API_KEY / BINANCE_API_SECRET or, for mounted secrets,
BINANCE_API_KEY_FILE / BINANCE_API_SECRET_FILE; they live in `Secret`s, whose repr and str are
redacted, and are never logged. The endpoint is Binance's spot testnet unless configured;
Binance's production endpoint also needs `live=True`.

Not thread-safe: one instance per thread (execution is single-threaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from libs.common.config import ConfigError, FleetConfig
from libs.common.messages import OrderRequest, OrderStatus, OrderType

from .venue import (
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
)

# python-binance 1.0.37 imports websockets' legacy WebSocketClientProtocol (for its websocket
# API, unused here), which websockets >= 14 reports as deprecated at import time.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance import Client
    from binance.exceptions import BinanceAPIException, BinanceRequestException

log = logging.getLogger(__name__)
T = TypeVar("T")

TESTNET_URL = "https://testnet.binance.vision"
PRODUCTION_URL = "https://api.binance.com"
URL_ALIASES = {"": TESTNET_URL, "testnet": TESTNET_URL, "production": PRODUCTION_URL}
CLIENT_ORDER_ID = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")  # what Binance accepts as newClientOrderId
ZERO = Decimal(0)
MS_NS = 1_000_000
TRADES_PAGE = 1000  # myTrades' largest page
MAX_TRADE_PAGES = 5  # per symbol per fills_since call; the cursor carries on from there

# Binance spot request weights of the calls made here.
WEIGHT_ORDER = 1
WEIGHT_CANCEL = 1
WEIGHT_QUERY = 4
WEIGHT_OPEN_ORDERS = 6  # with a symbol (80 without: never used)
WEIGHT_CANCEL_ALL = 1
WEIGHT_ACCOUNT = 20
WEIGHT_MY_TRADES = 20
WEIGHT_EXCHANGE_INFO = 20
WEIGHT_TIME = 1

STATUSES: dict[str, OrderStatus] = {
    "NEW": "new",
    "PENDING_NEW": "new",  # an order list's leg not yet in the book
    "PARTIALLY_FILLED": "partially_filled",
    "FILLED": "filled",
    "CANCELED": "canceled",
    "REJECTED": "rejected",
    "EXPIRED": "expired",
    "EXPIRED_IN_MATCH": "expired",  # self-trade prevention expired it
}
STATUS_REASONS = {
    "REJECTED": "venue_rejected",
    "EXPIRED": "venue_expired",
    "EXPIRED_IN_MATCH": "venue_self_trade_prevention",
}
MARKET_TYPES = frozenset({"MARKET", "STOP_LOSS", "TAKE_PROFIT"})
# Codes after which the request may or may not have taken effect (Binance: "execution status
# unknown"), and server-side failures; like a timeout, they leave the outcome to a query.
UNKNOWN_OUTCOME_CODES = frozenset({-1000, -1001, -1006, -1007, -1008, -1016})
REASONS = {
    -1013: "venue_filter_failure",  # PRICE_FILTER, LOT_SIZE, NOTIONAL, ...
    -1111: "venue_filter_failure",  # more decimals than the asset allows
    -1121: "venue_unknown_symbol",
    -2011: "venue_unknown_order",  # cancel: unknown, or no longer working
    -2013: "venue_unknown_order",  # query: no such order
    -1002: "venue_auth",
    -1022: "venue_auth",  # bad signature: the wrong secret
    -1099: "venue_auth",
    -2014: "venue_auth",
    -2015: "venue_auth",  # wrong key, IP not allowed, or no trading permission
    -1021: "venue_timestamp",  # our clock is off (resynced at once)
    -1015: "venue_too_many_orders",
    -1003: "venue_too_many_requests",
}
BAD_REQUEST_CODES = range(-1199, -1099)  # 11xx: the request was malformed (a bug here)


# --- credentials --------------------------------------------------------------------------------


class CredentialsError(ValueError):
    """The API key or secret is missing or unreadable (the message never holds a value)."""


class Secret:
    """A credential whose repr and str are redacted; `reveal()` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself: only for signing and the API-key header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**redacted**')"

    __str__ = __repr__

    def __format__(self, _spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Credentials:
    """Binance API key and secret."""

    api_key: Secret
    api_secret: Secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, prefix: str = "BINANCE") -> Credentials:
        """From PREFIX_API_KEY / PREFIX_API_SECRET, or files named by PREFIX_API_KEY_FILE /
        PREFIX_API_SECRET_FILE (mounted secrets)."""
        env = os.environ if env is None else env
        return cls(_credential(env, f"{prefix}_API_KEY"), _credential(env, f"{prefix}_API_SECRET"))


def _credential(env: Mapping[str, str], name: str) -> Secret:
    """One credential from the variable or the file it names; never both."""
    value, path = env.get(name, ""), env.get(f"{name}_FILE", "")
    if value and path:
        raise CredentialsError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialsError(f"{name}_FILE: cannot read {path} ({exc.strerror})") from None
    if not value:
        raise CredentialsError(f"{name} (or {name}_FILE) is not set")
    return Secret(value)


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinanceVenueConfig:
    """Where and how the adapter trades."""

    symbols: tuple[str, ...]  # what open_orders, cancel_all, positions and fills_since cover
    url: str = ""  # "" or "testnet": Binance spot testnet; "production"; or http(s)://host[:port]
    live: bool = False  # required for Binance's production endpoint
    base_assets: Mapping[str, str] = field(default_factory=dict)  # symbol -> base asset
    timeout_s: float = 5.0  # connect and read timeout of every request
    recv_window_ms: int = 5_000  # how stale a signed request may arrive (Binance: <= 60,000)
    weight_limit_1m: int = 6_000  # Binance spot REQUEST_WEIGHT per minute
    order_limit_10s: int = 100  # Binance spot ORDERS per 10 s
    order_limit_1d: int = 200_000  # Binance spot ORDERS per day
    reserve_fraction: float = 0.2  # share of each budget only submit and cancel may use
    max_wait_s: float = 0.5  # wait this long at most for budget, else VenueRateLimited
    retries: int = 2  # extra attempts of an idempotent call after VenueUnavailable
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    default_ban_s: float = 120.0  # a 418 without Retry-After (Binance's shortest ban)
    fills_interval_s: float = 1.0  # myTrades at most this often unless we sent or cancelled since


def base_url(cfg: BinanceVenueConfig) -> str:
    """The venue's base URL; refuses Binance production unless `live`."""
    url = URL_ALIASES.get(cfg.url, cfg.url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Binance URL must be http(s)://host[:port], not {cfg.url!r}")
    host = parts.hostname or ""
    if (host == "binance.com" or host.endswith(".binance.com")) and not cfg.live:
        raise ValueError(f"{host} is Binance production: it needs live = true")
    return f"{parts.scheme}://{parts.netloc}"


# --- mapping Binance onto Flotilla --------------------------------------------------------------


def map_status(status: str, executed: Decimal) -> OrderStatus:
    """Binance's order status as Flotilla's. PENDING_CANCEL (documented as unused) means the
    order is still working until the cancel completes, so it stays new / partially filled."""
    if status == "PENDING_CANCEL":
        return "partially_filled" if executed > 0 else "new"
    return STATUSES.get(status, "unknown")


def reason_for(code: int, message: str) -> str:
    """A stable, bounded reason code for a Binance error answer."""
    if code == -2010:  # NEW_ORDER_REJECTED: the message says why
        text = message.lower()
        if "insufficient balance" in text:
            return "venue_insufficient_balance"
        if "duplicate order" in text:
            return "venue_duplicate_order"
        return "venue_order_rejected"
    if code in REASONS:
        return REASONS[code]
    if code in BAD_REQUEST_CODES:
        return "venue_bad_request"
    return "venue_rejected"


def classify(
    status: int, code: int, message: str, retry_after_s: float | None, default_ban_s: float = 120.0
) -> VenueError:
    """The contract's error for a Binance error answer (HTTP status, code, message)."""
    if status in (418, 429):
        banned = status == 418
        wait = retry_after_s if retry_after_s is not None else (default_ban_s if banned else 60.0)
        return VenueRateLimited(f"binance {status} ({code}): {message}", wait, banned)
    if status >= 500 or code in UNKNOWN_OUTCOME_CODES:
        return VenueUnavailable(f"binance {status} ({code}): {message}")
    if status == 403:  # Binance's web application firewall: the request never reached it
        return VenueRejected("venue_forbidden", str(code), message)
    return VenueRejected(reason_for(code, message), str(code), message)


def dec(value: Any) -> Decimal:
    """Exact Decimal from a JSON string, integer or Decimal; a binary float is refused."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"not an exact decimal: {type(value).__name__}")


def wire_decimal(value: Decimal) -> str:
    """A price or quantity as Binance wants it: plain digits, never an exponent."""
    return format(value, "f")


def venue_order(payload: Mapping[str, Any]) -> VenueOrder:
    """An order answer (new, query, open orders, cancel) as a VenueOrder."""
    status = payload["status"]
    executed = dec(payload["executedQty"])
    quote = dec(payload.get("cummulativeQuoteQty", "0"))
    price = dec(payload.get("price", "0"))
    kind: OrderType = "market" if payload["type"] in MARKET_TYPES else "limit"
    stamp = next(
        (
            payload[k]
            for k in ("updateTime", "transactTime", "workingTime", "time")
            if payload.get(k)
        ),
        0,
    )
    side = payload["side"]
    if side not in ("BUY", "SELL"):
        raise ValueError(f"unknown side {side!r}")
    return VenueOrder(
        # a cancel's answer names the order origClientOrderId (its clientOrderId is the cancel's)
        client_order_id=payload.get("origClientOrderId") or payload["clientOrderId"],
        venue_order_id=str(payload["orderId"]),
        symbol=payload["symbol"],
        side="buy" if side == "BUY" else "sell",
        order_type=kind,
        status=map_status(status, executed),
        qty=dec(payload["origQty"]),
        filled_qty=executed,
        avg_px=quote / executed if executed else None,
        limit_px=price if kind == "limit" and price > 0 else None,
        reason=STATUS_REASONS.get(status, ""),
        update_ns=int(stamp) * MS_NS,
    )


def venue_fill(payload: Mapping[str, Any], client_order_id: str) -> VenueFill:
    """A myTrades entry as a VenueFill."""
    return VenueFill(
        client_order_id=client_order_id,
        trade_id=str(payload["id"]),
        symbol=payload["symbol"],
        side="buy" if payload["isBuyer"] else "sell",
        qty=dec(payload["qty"]),
        price=dec(payload["price"]),
        fee=dec(payload["commission"]),
        fee_asset=payload["commissionAsset"],
        liquidity="maker" if payload["isMaker"] else "taker",
        ts_ns=int(payload["time"]) * MS_NS,
    )


def encode_cursor(last_ids: Mapping[str, int]) -> str:
    """fills_since's cursor: the last trade id seen per symbol (-1: none yet), e.g.
    "BTCUSDT:900012,ETHUSDT:-1"."""
    return ",".join(f"{symbol}:{last}" for symbol, last in sorted(last_ids.items()))


def decode_cursor(cursor: str) -> dict[str, int]:
    """The inverse of encode_cursor; "" is an empty map (every symbol from now on)."""
    last_ids: dict[str, int] = {}
    for part in filter(None, cursor.split(",")):
        symbol, sep, last = part.partition(":")
        if not sep or not symbol or not re.fullmatch(r"-?[0-9]+", last):
            raise ValueError(f"not a Binance fills cursor: {cursor!r}")
        last_ids[symbol] = int(last)
    return last_ids


def retry_after(response: Any) -> float | None:
    """The Retry-After header of an answer, in seconds."""
    headers = getattr(response, "headers", None) or {}
    try:
        value = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


# --- rate limits --------------------------------------------------------------------------------


@dataclass
class Window:
    """A fixed counting window aligned on the epoch, as Binance's are."""

    length_s: float
    limit: int
    index: int = -1
    used: int = 0

    def roll(self, now: float) -> None:
        """Start counting afresh when a new window has begun."""
        index = int(now // self.length_s)
        if index != self.index:
            self.index, self.used = index, 0

    def ends_in(self, now: float) -> float:
        """Seconds until this window ends."""
        return (int(now // self.length_s) + 1) * self.length_s - now


class RateGovernor:
    """Keeps to Binance's REQUEST_WEIGHT and ORDERS limits, and blocks after a 429 / 418."""

    def __init__(
        self,
        weight_limit_1m: int = 6_000,
        order_limit_10s: int = 100,
        order_limit_1d: int = 200_000,
        reserve_fraction: float = 0.2,
        max_wait_s: float = 0.5,
        default_ban_s: float = 120.0,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.weight = Window(60, weight_limit_1m)
        self.orders_10s = Window(10, order_limit_10s)
        self.orders_1d = Window(86_400, order_limit_1d)
        self.reserve_fraction = reserve_fraction
        self.max_wait_s = max_wait_s
        self.default_ban_s = default_ban_s
        self.wall, self.mono, self.sleep = wall, mono, sleep
        self.blocked_until = 0.0  # monotonic
        self.banned = False
        self.waits = 0  # calls that waited for the next window
        self.refusals = 0  # calls refused unsent

    def acquire(self, weight: int, orders: int = 0, essential: bool = False) -> None:
        """Count a call about to be sent, waiting up to max_wait_s for room; VenueRateLimited
        (unsent) while blocked by a 429 / 418, or when the room is further away."""
        blocked = self.blocked_for()
        if blocked > 0:
            self.refusals += 1
            kind = "banned (418)" if self.banned else "rate limited (429)"
            raise VenueRateLimited(f"binance: {kind}, not sending", blocked, self.banned)
        wait = self.wait_needed(weight, orders, essential)
        if wait > 0:
            if wait > self.max_wait_s:
                self.refusals += 1
                raise VenueRateLimited("binance: rate budget used up, not sending", wait)
            self.waits += 1
            self.sleep(wait)
            if self.wait_needed(weight, orders, essential) > 0:  # a clock that did not move on
                self.refusals += 1
                raise VenueRateLimited("binance: rate budget used up, not sending", wait)
        self.weight.used += weight
        self.orders_10s.used += orders
        self.orders_1d.used += orders

    def wait_needed(self, weight: int, orders: int, essential: bool) -> float:
        """Seconds until the call fits every window (0: now)."""
        now = self.wall()
        share = 1.0 if essential else 1.0 - self.reserve_fraction
        wait = 0.0
        for window, n in (
            (self.weight, weight),
            (self.orders_10s, orders),
            (self.orders_1d, orders),
        ):
            window.roll(now)
            if n and window.used + n > math.floor(window.limit * share):
                wait = max(wait, window.ends_in(now))
        return wait

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take the venue's own counts (they include other clients of the same IP / account)."""
        now = self.wall()
        for name, window in (
            ("X-MBX-USED-WEIGHT-1M", self.weight),
            ("X-MBX-ORDER-COUNT-10S", self.orders_10s),
            ("X-MBX-ORDER-COUNT-1D", self.orders_1d),
        ):
            value = headers.get(name)
            if value is not None and value.isdigit():
                window.roll(now)
                window.used = max(window.used, int(value))

    def rate_limited(self, exc: VenueRateLimited) -> None:
        """A 429 / 418 answer: send nothing at all until its Retry-After has passed."""
        self.blocked_until = max(self.blocked_until, self.mono() + exc.retry_after_s)
        self.banned = exc.banned or (self.banned and self.blocked_for() > 0)

    def blocked_for(self) -> float:
        """Seconds every call is still refused for, after a 429 / 418."""
        left = self.blocked_until - self.mono()
        if left <= 0:
            self.banned = False
            return 0.0
        return left


# --- python-binance -----------------------------------------------------------------------------


class _Client(Client):
    """python-binance's Client, changed in two ways: JSON numbers parse as Decimal (never a
    binary float), and the API secret stays in its Secret instead of a plain attribute."""

    def __init__(self, credentials: Credentials, timeout_s: float) -> None:
        self._secret = credentials.api_secret
        super().__init__(
            credentials.api_key.reveal(), None, requests_params={"timeout": timeout_s}, ping=False
        )

    def _hmac_signature(self, query_string: str) -> str:
        """HMAC-SHA256 of the parameters with the secret (what python-binance does)."""
        key = self._secret.reveal().encode()
        return hmac.new(key, query_string.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _handle_response(response: requests.Response) -> Any:
        """python-binance's handling, with exact decimals."""
        if not 200 <= response.status_code < 300:
            raise BinanceAPIException(response, response.status_code, response.text)
        if response.text == "":
            return {}
        try:
            return json.loads(response.text, parse_float=Decimal)
        except ValueError:
            raise BinanceRequestException(f"Invalid Response: {response.text[:200]}") from None


def make_client(credentials: Credentials, url: str, cfg: BinanceVenueConfig) -> _Client:
    """A Client pointed at `url`, with timeouts, recvWindow, and requests' own retries off.

    Built on a throwaway thread: python-binance's constructor takes the thread's asyncio loop
    (creating one if there is none) for a websocket API this adapter never uses; that loop is
    closed there instead of leaking into the caller's thread."""
    built: list[_Client] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            client = _Client(credentials, cfg.timeout_s)
            built.append(client)
            client.loop.close()
        except BaseException as exc:
            failed.append(exc)
        finally:
            asyncio.set_event_loop(None)

    thread = threading.Thread(target=build, name="binance-client-init")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    client = built[0]
    client.API_URL = url + "/api"  # python-binance's documented instance attribute
    client.REQUEST_RECVWINDOW = cfg.recv_window_ms
    for prefix in ("http://", "https://"):
        # never resend: a request whose answer was lost may have taken effect
        client.session.mount(prefix, HTTPAdapter(max_retries=0))
    return client


# --- the adapter --------------------------------------------------------------------------------


class CancelAllIncomplete(VenueUnavailable):
    """cancel_all reached some symbols but not others; `done` holds what it did cancel."""

    def __init__(self, done: list[VenueOrder], failed: dict[str, VenueError]) -> None:
        super().__init__(
            "cancel_all incomplete: " + ", ".join(f"{s}: {e}" for s, e in sorted(failed.items()))
        )
        self.done = done
        self.failed = failed
        waits = [e.retry_after_s for e in failed.values() if isinstance(e, VenueRateLimited)]
        self.retry_after_s = max(waits, default=0.0)


class BinanceVenue:
    """The Venue contract on Binance spot (see the module docstring)."""

    name = "binance"

    def __init__(
        self,
        cfg: BinanceVenueConfig,
        credentials: Credentials | None = None,
        *,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.url = base_url(cfg)
        self._client = make_client(credentials or Credentials.from_env(env), self.url, cfg)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.governor = RateGovernor(
            cfg.weight_limit_1m,
            cfg.order_limit_10s,
            cfg.order_limit_1d,
            cfg.reserve_fraction,
            cfg.max_wait_s,
            cfg.default_ban_s,
            wall=self._server_time,
            sleep=sleep,
        )
        self.counters: Counter[str] = Counter()
        self._client_ids: dict[tuple[str, str], str] = {}  # (symbol, orderId) -> client order id
        self._base_assets: dict[str, str] = dict(cfg.base_assets)
        self._clock_synced = False
        self._fills_polled_at = -math.inf  # monotonic
        self._order_activity = True  # sent or cancelled something since fills were last polled

    @classmethod
    def from_config(cls, cfg: FleetConfig, env: Mapping[str, str] | None = None) -> BinanceVenue:
        """From [execution] venue_url, live and venue_timeout_ms, and the [instruments] whose
        venue is "binance" (their base assets name the positions)."""
        ex = cfg.execution
        ours = {name: inst for name, inst in cfg.instruments.items() if inst.venue == "binance"}
        if not ours:
            raise ConfigError('[execution] venue = "binance" but no instrument trades there')
        venue_cfg = BinanceVenueConfig(
            symbols=tuple(sorted(ours)),
            url=ex.venue_url,
            live=ex.live,
            base_assets={name: inst.base for name, inst in ours.items()},
            timeout_s=ex.venue_timeout_ms / 1000,
        )
        try:
            return cls(venue_cfg, env=env)
        except ValueError as exc:  # a production URL without live, or missing credentials
            raise ConfigError(f"[execution] {exc}") from None

    def __repr__(self) -> str:
        return f"BinanceVenue(url={self.url!r}, symbols={self.cfg.symbols!r})"

    __str__ = __repr__

    # --- the contract -------------------------------------------------------------------------

    def submit(self, req: OrderRequest) -> VenueOrder:
        """Send one order with req.client_order_id; never retried (see the contract)."""
        params = self._order_params(req)
        self._order_activity = True
        payload = self._call(
            "submit", self._client.create_order, WEIGHT_ORDER, orders=1, essential=True, **params
        )
        return self._order(payload, "submit")

    def cancel(self, symbol: str, client_order_id: str) -> VenueOrder:
        """Cancel one order; a filled (or otherwise closed) order comes back in its final state."""
        self._order_activity = True
        try:
            payload = self._call(
                "cancel",
                self._client.cancel_order,
                WEIGHT_CANCEL,
                essential=True,
                symbol=symbol,
                origClientOrderId=client_order_id,
            )
        except VenueRejected as exc:
            if exc.venue_code != "-2011":
                raise
            # Binance answers -2011 alike for an order it never had and for one no longer
            # working (a filled one too): the query tells which.
            order = self.query(symbol, client_order_id)
            if order is None:
                raise
            return order
        return self._order(payload, "cancel")

    def query(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """The order's state by client order id; None when Binance has no such order."""
        try:
            payload = self._idempotent(
                "query",
                self._client.get_order,
                WEIGHT_QUERY,
                symbol=symbol,
                origClientOrderId=client_order_id,
            )
        except VenueRejected as exc:
            if exc.venue_code == "-2013":
                return None
            raise
        return self._order(payload, "query")

    def open_orders(self) -> list[VenueOrder]:
        """Every working order in the configured symbols."""
        orders: list[VenueOrder] = []
        for symbol in self.cfg.symbols:
            payload = self._idempotent(
                "open_orders", self._client.get_open_orders, WEIGHT_OPEN_ORDERS, symbol=symbol
            )
            orders += [self._order(p, "open_orders") for p in self._list(payload, "open_orders")]
        return orders

    def cancel_all(self) -> list[VenueOrder]:
        """Cancel every working order of every configured symbol (one request per symbol, each
        tried even if another fails); CancelAllIncomplete names the symbols not reached."""
        done: list[VenueOrder] = []
        failed: dict[str, VenueError] = {}
        self._order_activity = True
        for symbol in self.cfg.symbols:
            try:
                payload = self._call(
                    "cancel_all",
                    self._client.cancel_all_open_orders,
                    WEIGHT_CANCEL_ALL,
                    essential=True,
                    symbol=symbol,
                )
            except VenueRejected as exc:
                if exc.venue_code != "-2011":  # -2011: nothing was open in this symbol
                    failed[symbol] = exc
                continue
            except VenueUnavailable as exc:
                failed[symbol] = exc
                continue
            for entry in self._list(payload, "cancel_all"):
                # an order list (OCO, ...) answers with a report per order
                for report in entry.get("orderReports") or [entry]:
                    done.append(self._order(report, "cancel_all"))
        if failed:
            raise CancelAllIncomplete(done, failed)
        return done

    def positions(self) -> dict[str, Decimal]:
        """Base-asset balance (free + locked) of each configured symbol."""
        bases = self._bases()
        account = self._idempotent("positions", self._client.get_account, WEIGHT_ACCOUNT)
        try:
            held = {b["asset"]: dec(b["free"]) + dec(b["locked"]) for b in account["balances"]}
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise VenueUnavailable("positions: malformed answer from Binance") from None
        return {symbol: held.get(bases[symbol], ZERO) for symbol in self.cfg.symbols}

    def fills_since(self, cursor: str) -> tuple[list[VenueFill], str]:
        """Fills after `cursor` ("" = from now on) and the new cursor. A symbol missing from the
        cursor starts from now; nothing advances unless the whole call succeeds.

        myTrades costs 20 weight per symbol, so Binance is asked at most every
        `fills_interval_s` unless an order was sent or cancelled since the last time; in
        between the answer is "nothing yet" with the cursor unchanged (the fills come next)."""
        last_ids = decode_cursor(cursor)
        complete = all(symbol in last_ids for symbol in self.cfg.symbols)
        recent = time.monotonic() - self._fills_polled_at < self.cfg.fills_interval_s
        if complete and recent and not self._order_activity:
            return [], cursor
        self._order_activity = False  # activity from here on calls for another poll
        try:
            fills = self._poll_fills(last_ids)
        except BaseException:
            self._order_activity = True  # ask again next time, whatever the interval
            raise
        self._fills_polled_at = time.monotonic()
        return fills, encode_cursor(last_ids)

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close_connection()

    def stats(self) -> dict[str, Any]:
        """Counters: requests by call, retries, rate-limit waits and refusals, errors by kind."""
        return {
            **self.counters,
            "rate_waits": self.governor.waits,
            "rate_refusals": self.governor.refusals,
            "used_weight_1m": self.governor.weight.used,
            "orders_10s": self.governor.orders_10s.used,
            "blocked_for_s": self.governor.blocked_for(),
        }

    # --- requests -----------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        fn: Callable[..., T],
        weight: int,
        orders: int = 0,
        essential: bool = False,
        signed: bool = True,
        **params: Any,
    ) -> T:
        """One request: counted against the budget first, failures mapped onto the contract."""
        if signed and not self._clock_synced:
            self._sync_clock()
        self.governor.acquire(weight, orders, essential)
        self.counters[f"requests_{op}"] += 1
        try:
            result = fn(**params)
        except BinanceAPIException as exc:
            self._raise_mapped(op, exc)
        except BinanceRequestException:
            self.counters["unavailable"] += 1
            raise VenueUnavailable(f"{op}: unreadable answer from Binance") from None
        except requests.Timeout:
            self.counters["unavailable"] += 1
            raise VenueUnavailable(f"{op}: no answer within {self.cfg.timeout_s} s") from None
        except requests.RequestException as exc:
            # the message, not the exception: requests' exceptions carry the request, headers
            # (the API key) included
            self.counters["unavailable"] += 1
            raise VenueUnavailable(f"{op}: {type(exc).__name__} talking to {self.url}") from None
        self._observe(self._client.response)
        return result

    def _raise_mapped(self, op: str, exc: BinanceAPIException) -> NoReturn:
        """Turn a Binance error answer into the contract's error (blocking after a 429 / 418)."""
        self._observe(exc.response)
        code = exc.code if isinstance(exc.code, int) else 0
        error = classify(
            exc.status_code,
            code,
            str(exc.message),
            retry_after(exc.response),
            self.cfg.default_ban_s,
        )
        if isinstance(error, VenueRateLimited):
            self.governor.rate_limited(error)
            self.counters["rate_limited"] += 1
            log.warning(
                "binance %s: HTTP %d, every call blocked for %.1f s",
                op,
                exc.status_code,
                error.retry_after_s,
            )
        elif isinstance(error, VenueUnavailable):
            self.counters["unavailable"] += 1
            log.warning("binance %s: HTTP %d (%s), outcome unknown", op, exc.status_code, code)
        else:
            self.counters["rejected"] += 1
            if code == -1021:
                self._clock_synced = False  # resync before the next call
        raise error from None

    def _idempotent(self, op: str, fn: Callable[..., T], weight: int, **params: Any) -> T:
        """A call that may be repeated: retried after VenueUnavailable with backoff and jitter,
        never after a rate limit (retrying early is what earns a ban); once after -1021."""
        attempt = 0
        while True:
            try:
                return self._call(op, fn, weight, **params)
            except VenueRateLimited:
                raise
            except VenueUnavailable:
                if attempt >= self.cfg.retries:
                    raise
            except VenueRejected as exc:
                if exc.venue_code != "-1021" or attempt >= self.cfg.retries:
                    raise
            self.counters["retries"] += 1
            self._sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter, capped."""
        ceiling = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** min(attempt, 30))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _observe(self, response: Any) -> None:
        """The venue's rate-limit counters from an answer's headers."""
        headers = getattr(response, "headers", None)
        if headers is not None:
            self.governor.observe(headers)

    def _server_time(self) -> float:
        """Binance's clock as we know it (local clock plus the measured offset), in seconds."""
        return time.time() + self._client.timestamp_offset / 1000

    def _sync_clock(self) -> None:
        """Measure the offset of Binance's clock, which signed timestamps must be within
        recvWindow of (python-binance adds it to every timestamp)."""
        self._clock_synced = True  # one attempt per need: a failure surfaces on the call itself
        before = time.time()
        try:
            answer = self._call(
                "time", self._client.get_server_time, WEIGHT_TIME, essential=True, signed=False
            )
            server_ms = int(answer["serverTime"])
        except VenueRateLimited:
            self._clock_synced = False
            raise
        except (VenueError, KeyError, TypeError, ValueError):
            self._clock_synced = False
            log.warning("binance: could not read the server time; signing with the local clock")
            return
        local_ms = (before + time.time()) / 2 * 1000
        self._client.timestamp_offset = int(server_ms - local_ms)

    # --- answers ------------------------------------------------------------------------------

    def _order(self, payload: Any, op: str) -> VenueOrder:
        """Parse an order answer and remember its client order id for fills."""
        try:
            order = venue_order(payload)
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise VenueUnavailable(f"{op}: malformed order answer from Binance") from None
        self._client_ids[(order.symbol, order.venue_order_id)] = order.client_order_id
        return order

    @staticmethod
    def _list(payload: Any, op: str) -> list[Any]:
        """An answer that must be a JSON array."""
        if not isinstance(payload, list):
            raise VenueUnavailable(f"{op}: malformed answer from Binance (not a list)")
        return payload

    def _fill(self, trade: Mapping[str, Any]) -> VenueFill:
        """A myTrades entry, with the client order id of its order (queried if unseen)."""
        try:
            key = (trade["symbol"], str(trade["orderId"]))
            client_id = self._client_ids.get(key)
            if client_id is None:
                payload = self._idempotent(
                    "query", self._client.get_order, WEIGHT_QUERY, symbol=key[0], orderId=key[1]
                )
                client_id = self._order(payload, "query").client_order_id
            return venue_fill(trade, client_id)
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise VenueUnavailable("fills_since: malformed trade from Binance") from None

    def _poll_fills(self, last_ids: dict[str, int]) -> list[VenueFill]:
        """Every symbol's trades after its last id (updated in place); "from now" for new ones."""
        fills: list[VenueFill] = []
        for symbol in self.cfg.symbols:
            if symbol not in last_ids:
                last_ids[symbol] = self._latest_trade_id(symbol)
                continue
            for trade in self._trades_after(symbol, last_ids[symbol]):
                fills.append(self._fill(trade))
                last_ids[symbol] = max(last_ids[symbol], int(trade["id"]))
        return fills

    def _latest_trade_id(self, symbol: str) -> int:
        """The id of the account's latest trade in `symbol` (-1: none)."""
        trades = self._list(
            self._idempotent(
                "fills", self._client.get_my_trades, WEIGHT_MY_TRADES, symbol=symbol, limit=1
            ),
            "fills",
        )
        return int(trades[-1]["id"]) if trades else -1

    def _trades_after(self, symbol: str, last_id: int) -> Iterable[Mapping[str, Any]]:
        """The account's trades in `symbol` with ids above `last_id`, a few pages at most."""
        trades: list[Mapping[str, Any]] = []
        for _ in range(MAX_TRADE_PAGES):
            page = self._list(
                self._idempotent(
                    "fills",
                    self._client.get_my_trades,
                    WEIGHT_MY_TRADES,
                    symbol=symbol,
                    fromId=last_id + 1,
                    limit=TRADES_PAGE,
                ),
                "fills",
            )
            trades += page
            if len(page) < TRADES_PAGE:
                break
            last_id = int(page[-1]["id"])
        return trades

    def _bases(self) -> dict[str, str]:
        """Each configured symbol's base asset: from the config, else exchangeInfo (once)."""
        missing = [s for s in self.cfg.symbols if s not in self._base_assets]
        if missing:
            info = self._idempotent(
                "exchange_info", self._client.get_exchange_info, WEIGHT_EXCHANGE_INFO, signed=False
            )
            try:
                listed = {s["symbol"]: s["baseAsset"] for s in info["symbols"]}
            except (KeyError, TypeError):
                raise VenueUnavailable("exchange_info: malformed answer from Binance") from None
            for symbol in missing:
                if symbol not in listed:
                    raise VenueRejected("venue_unknown_symbol", "-1121", f"{symbol} is not listed")
                self._base_assets[symbol] = listed[symbol]
        return self._base_assets

    def _order_params(self, req: OrderRequest) -> dict[str, Any]:
        """POST /api/v3/order's parameters; VenueRejected (unsent) for an order Binance cannot
        take as it stands."""
        if req.symbol not in self.cfg.symbols:
            raise VenueRejected("venue_symbol_not_configured", message=req.symbol)
        if not CLIENT_ORDER_ID.match(req.client_order_id):
            raise VenueRejected("venue_invalid_client_order_id", message=req.client_order_id)
        params: dict[str, Any] = {
            "symbol": req.symbol,
            "side": "BUY" if req.side == "buy" else "SELL",
            "type": "MARKET" if req.order_type == "market" else "LIMIT",
            "quantity": wire_decimal(req.qty),
            "newClientOrderId": req.client_order_id,  # execution's id, never ours
            "newOrderRespType": "RESULT",
        }
        if req.order_type == "limit":
            if req.limit_px is None:
                raise VenueRejected("limit_without_price")
            params["price"] = wire_decimal(req.limit_px)
            params["timeInForce"] = "GTC"
        return params
