"""Alpaca execution: the `Venue` contract over alpaca-py's TradingClient (Trading API v2).

How alpaca-py is used, and what is changed in it (alpaca-py is pinned, 0.44; the proofs are in
tests/integration/test_alpaca_venue.py, against libs/common/testing/fake_alpaca_trading.py):

* Endpoint: Alpaca's paper endpoint unless `paper = false`; `base_url` overrides both (a local
  fake in tests: `TradingClient(url_override=...)`).
* Retries are ours. alpaca-py's RESTClient sleeps 3 s and re-sends up to 3 times on 429 and 504,
  POST /v2/orders included, and TradingClient offers no way to turn that off; a re-sent order
  after a 504 could be a second order. So the client's `_retry` is set to 0 after construction
  and every retry decision is made here: only idempotent calls (GETs, cancels) are retried, with
  exponential backoff and jitter, at the venue's own wait after a 429; submit and close-all are
  sent once. urllib3 retries are off too (max_retries=0).
* Timeouts: alpaca-py sets none (a hung connection would block execution forever); the session
  gets a default timeout, and a timeout is VenueUnavailable: the outcome is unknown, and an
  order is then found by client order id (`query`), never sent again.
* Money is exact: alpaca-py's Order model types qty and prices `str | float` and its order
  requests hold floats, so the client runs with `raw_data=True` (plain dicts, no models), every
  JSON number is parsed as Decimal (Alpaca sends decimal strings anyway), and order bodies carry
  qty and limit_price as decimal text in place of the request model's floats.
* Rate limits: Alpaca allows 200 requests per minute per account. A sliding-window governor
  keeps under `rate_limit_per_min`, and stops sending when a reply says none are left
  (X-RateLimit-Remaining: 0) or after a 429, until the window resets (X-RateLimit-Reset); a
  call that would wait longer than `rate_wait_max_s` raises VenueRateLimited without sending.
* Credentials come from APCA_API_KEY_ID / APCA_API_SECRET_KEY, or from files named by
  APCA_API_KEY_ID_FILE / APCA_API_SECRET_KEY_FILE or the config (mounted secrets). They are
  never logged, and every repr shows <redacted>.

Alpaca order status -> Flotilla status (FINAL and WORKING below; a status that can still fill
stays working, because a terminal status makes execution stop following the order):

  new, accepted, pending_new, accepted_for_bidding, pending_review, held,
  partially_filled, pending_cancel, pending_replace, stopped, suspended,
  done_for_day, calculated            -> working: partially_filled if anything filled, else new
                                         (calculated with everything filled -> filled)
  filled -> filled; canceled -> canceled; expired -> expired
  rejected -> rejected ("venue_rejected"); replaced -> canceled ("venue_replaced")
  anything else -> unknown ("venue_unmapped_status")

Errors -> VenueError: 401 and 403 without Alpaca's code -> venue_auth; 403 40310000 ->
venue_insufficient_buying_power, venue_insufficient_balance (selling more crypto than held) or
venue_forbidden; 404 -> venue_unknown_order; 422 "client_order_id must be unique" ->
venue_duplicate_order; 422 on a cancel -> venue_not_cancelable; other 400/422 ->
venue_invalid_order; other 4xx -> venue_error; 429 -> VenueRateLimited; 5xx, timeouts,
connection errors and unreadable replies -> VenueUnavailable.

Beyond the contract: `close_all_positions()` (EMERGENCY: DELETE /v2/positions?cancel_orders=true,
sent once) returns a CloseAllResult; `buying_power()`; `from_config(FleetConfig)` builds the
adapter from [execution] venue_url / live / venue_timeout_ms and the [instruments] whose venue
is "alpaca" (a pair named BASE+QUOTE trades as "BASE/QUOTE", anything else as its own ticker).

Fills come from account activities (FILL), paged by activity id. Alpaca reports no fee on a fill
(stocks trade without commission; its crypto fee is taken from the credited asset and posted
separately), so VenueFill.fee is 0 in the quote currency; Alpaca does not say maker or taker
either, so market orders are reported as taker and limit orders as maker.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
import requests
from requests.adapters import HTTPAdapter

from libs.common.config import ConfigError, FleetConfig
from libs.common.messages import TERMINAL_STATUSES, OrderRequest, OrderStatus, OrderType, Side

from .venue import (
    Venue,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
)

# alpaca.trading imports its stream module, which imports websockets' legacy client, deprecated
# (a warning at import) since websockets 14; the REST client does not use it.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.common.enums import BaseURL
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

log = logging.getLogger(__name__)

ZERO = Decimal(0)
REDACTED = "<redacted>"
KEY_ENV, SECRET_ENV = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"
MAX_OPEN_ORDERS = 500  # Alpaca's largest page of GET /v2/orders
ACTIVITY_PAGE = 100  # Alpaca's largest page of account activities
MAX_ACTIVITY_PAGES = 10  # per fills_since call: keeps one call inside the rate budget
FILLS_FROM_START = "start"  # cursor: every fill the account has (it had none when we began)
RATE_WINDOW_S = 60.0
MAX_VENUE_WAIT_S = 60.0  # Alpaca's window is a minute: never believe a longer wait

WORKING = frozenset(
    {
        "new",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "pending_review",
        "held",
        "partially_filled",
        "pending_cancel",  # may still fill until the cancel is confirmed
        "pending_replace",
        "stopped",  # a trade is guaranteed but has not happened yet
        "suspended",  # not tradable now, not dead either
        "done_for_day",  # resumes next session (gtc)
        "calculated",  # done for the day, settlement pending
    }
)
# Statuses that end an order; `replaced` ends this id (its replacement is another order).
FINAL: dict[str, tuple[OrderStatus, str]] = {
    "filled": ("filled", ""),
    "canceled": ("canceled", ""),
    "expired": ("expired", ""),
    "rejected": ("rejected", "venue_rejected"),
    "replaced": ("canceled", "venue_replaced"),
}


class AlpacaVenueConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How to reach Alpaca's Trading API and how hard to use it."""

    paper: bool = True  # Alpaca's paper endpoint (paper-api.alpaca.markets); false = live money
    base_url: str = ""  # overrides the endpoint, e.g. "http://127.0.0.1:8767" for a local fake
    symbols: dict[str, str] = {}  # Flotilla symbol -> Alpaca symbol ("BTCUSD" -> "BTC/USD")
    key_id_file: str = ""  # mounted secret files, used when the environment has no credentials
    secret_key_file: str = ""
    time_in_force: str = "gtc"  # crypto takes gtc or ioc; stocks day, gtc, ioc, fok, opg, cls
    request_timeout_s: float = 5.0
    rate_limit_per_min: int = 200  # Alpaca: 200 requests per minute per account
    rate_wait_max_s: float = 2.0  # wait at most this for a request slot, else VenueRateLimited
    retry_attempts: int = 3  # attempts of an idempotent call; submit and close-all get one
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0
    settle_polls: int = 3  # re-reads of a cancel until Alpaca reports the order final
    settle_interval_s: float = 0.1


@dataclass(frozen=True)
class AlpacaCredentials:
    """An API key id and secret; never shown."""

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"AlpacaCredentials(key_id={REDACTED}, secret_key={REDACTED})"

    __str__ = __repr__

    @classmethod
    def load(cls, cfg: AlpacaVenueConfig, env: Mapping[str, str]) -> AlpacaCredentials:
        """From the environment, else from secret files (env *_FILE, then the config)."""
        return cls(
            _secret(KEY_ENV, cfg.key_id_file, env),
            _secret(SECRET_ENV, cfg.secret_key_file, env),
        )

    def secrets(self) -> tuple[str, str]:
        """Both values (for redaction checks)."""
        return self.key_id, self.secret_key


def _secret(name: str, cfg_file: str, env: Mapping[str, str]) -> str:
    """One credential: $NAME, else the file $NAME_FILE, else cfg_file; never echoed in errors."""
    if env.get(name, "").strip():
        return env[name].strip()
    path = env.get(f"{name}_FILE", "") or cfg_file
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {name} from {path}: {exc.strerror}") from None
        if value:
            return value
        raise ConfigError(f"{name} file {path} is empty")
    raise ConfigError(f"no Alpaca credentials: set {name} or {name}_FILE")


@dataclass(frozen=True)
class CloseAllResult:
    """What close_all_positions did: the liquidation orders, and symbols it could not close."""

    orders: list[VenueOrder]
    failed: dict[str, str]  # symbol -> reason code


# --- rate governor ------------------------------------------------------------------------------


class RateGovernor:
    """Keeps requests under a per-minute limit (sliding window) and honours the venue's waits."""

    def __init__(
        self,
        per_min: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.per_min, self.window_s = per_min, window_s
        self.clock, self.sleep = clock, sleep
        self.sent: deque[float] = deque()
        self.blocked_until = 0.0
        self.waited_s = 0.0  # total time spent waiting for a slot (observability, tests)
        self.lock = threading.Lock()

    def acquire(self, max_wait_s: float) -> None:
        """Take a slot, sleeping up to max_wait_s for one; VenueRateLimited if that is not enough."""
        while True:
            with self.lock:
                wait = self._wait_s(self.clock())
                if wait <= 0:
                    self.sent.append(self.clock())
                    return
            if wait > max_wait_s:
                raise VenueRateLimited(
                    f"alpaca request budget spent: next slot in {wait:.2f}s", wait
                )
            self.waited_s += wait
            self.sleep(wait)

    def _wait_s(self, now: float) -> float:
        """Seconds until a request may be sent (0 = now)."""
        while self.sent and self.sent[0] <= now - self.window_s:
            self.sent.popleft()
        wait = self.blocked_until - now
        if len(self.sent) >= self.per_min:
            wait = max(wait, self.sent[0] + self.window_s - now)
        return wait

    def block_for(self, seconds: float) -> None:
        """Send nothing for `seconds` (the venue said so)."""
        with self.lock:
            self.blocked_until = max(self.blocked_until, self.clock() + seconds)

    def observe(self, remaining: int | None, reset_in_s: float | None) -> None:
        """A reply's rate headers: none left means wait for the reset."""
        if remaining is not None and remaining <= 0 and reset_in_s is not None:
            self.block_for(min(max(reset_in_s, 0.0), MAX_VENUE_WAIT_S))


# --- mappings (pure) ----------------------------------------------------------------------------


def map_status(alpaca_status: str, filled: Decimal, qty: Decimal) -> tuple[OrderStatus, str]:
    """Alpaca's order status onto Flotilla's, with a reason code for the unusual ones."""
    if alpaca_status in FINAL:
        return FINAL[alpaca_status]
    if alpaca_status == "calculated" and qty > 0 and filled >= qty:
        return "filled", ""
    if alpaca_status in WORKING:
        return ("partially_filled" if filled > 0 else "new"), ""
    return "unknown", "venue_unmapped_status"


def classify_error(
    op: str, status: int, body: str, headers: Mapping[str, str], now_epoch_s: float
) -> VenueError:
    """An HTTP error reply as the VenueError the contract names, with a stable reason code."""
    code, message = _error_fields(body)
    if status == 429:
        return VenueRateLimited(f"alpaca {op}: 429 {message}", _retry_after_s(headers, now_epoch_s))
    if status >= 500:
        return VenueUnavailable(f"alpaca {op}: HTTP {status} {message}")
    return VenueRejected(_reason(op, status, code, message), code, message)


def _reason(op: str, status: int, code: str, message: str) -> str:
    """The stable reason code of a 4xx."""
    text = message.lower()
    if status == 401 or (status == 403 and not code):
        return "venue_auth"
    if status == 403:
        if "buying power" in text:
            return "venue_insufficient_buying_power"
        if "insufficient" in text:
            return "venue_insufficient_balance"
        return "venue_forbidden"
    if status == 404:
        return "venue_unknown_order"
    if status == 422 and "client_order_id must be unique" in text:
        return "venue_duplicate_order"
    if status == 422 and op == "cancel":
        return "venue_not_cancelable"
    if status in (400, 422):
        return "venue_invalid_order"
    return "venue_error"


def _error_fields(body: str) -> tuple[str, str]:
    """Alpaca's {"code": N, "message": ...}, or ("", the text) for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", body.strip()[:200]
    if not isinstance(data, dict):
        return "", body.strip()[:200]
    code = data.get("code")
    return (str(code) if code is not None else ""), str(data.get("message", ""))[:200]


def _retry_after_s(headers: Mapping[str, str], now_epoch_s: float) -> float:
    """How long a 429 asks us to wait: Retry-After, else until X-RateLimit-Reset, else 1 s."""
    try:
        if headers.get("Retry-After"):
            return min(float(headers["Retry-After"]), MAX_VENUE_WAIT_S)
        if headers.get("X-RateLimit-Reset"):
            wait = float(headers["X-RateLimit-Reset"]) - now_epoch_s
            return min(max(wait, 0.0), MAX_VENUE_WAIT_S)
    except ValueError:
        pass
    return 1.0


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def rfc3339_ns(text: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (to the nanosecond); 0 if absent."""
    m = _RFC3339.fullmatch(text or "")
    if m is None:
        return 0
    zone = "+00:00" if m[3] == "Z" else m[3]
    seconds = int(datetime.fromisoformat(m[1] + zone).timestamp())  # whole seconds: exact
    return seconds * 1_000_000_000 + int((m[2] or "").ljust(9, "0")[:9])


def dec(value: Any) -> Decimal | None:
    """A Decimal from the wire (decimal text, or a number already parsed as Decimal)."""
    if value is None or value == "":
        return None
    if isinstance(value, float):  # cannot happen with _exact_json; refuse rather than round
        raise TypeError("binary float in a money field")
    return Decimal(str(value))


def decimal_text(value: Decimal) -> str:
    """Decimal as plain text for the wire (never an exponent)."""
    return format(value, "f")


# --- HTTP session -------------------------------------------------------------------------------


def _exact_json(resp: requests.Response, **_kwargs: Any) -> Any:
    """A reply's JSON with every number a Decimal."""
    return json.loads(resp.text, parse_float=Decimal)


class _Session(requests.Session):
    """The session alpaca-py sends through, plus what it lacks: timeout, exact JSON, no retries."""

    def __init__(self, timeout_s: float, on_response: Callable[[requests.Response], None]):
        super().__init__()
        self.timeout_s, self.on_response = timeout_s, on_response
        adapter = HTTPAdapter(max_retries=0)  # a lost reply must surface, never be re-sent below us
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Send with a timeout; alpaca-py then reads replies through our exact JSON parser."""
        kwargs.setdefault("timeout", self.timeout_s)
        resp = super().request(method, url, *args, **kwargs)
        resp.json = functools.partial(_exact_json, resp)  # type: ignore[method-assign]
        self.on_response(resp)
        return resp


# --- the venue ----------------------------------------------------------------------------------


class AlpacaVenue:
    """Alpaca's Trading API as a Flotilla Venue (one account; synchronous calls with timeouts)."""

    name = "alpaca"

    def __init__(
        self,
        cfg: AlpacaVenueConfig,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self._credentials = AlpacaCredentials.load(cfg, os.environ if env is None else env)
        self._sleep = sleep
        self.governor = RateGovernor(cfg.rate_limit_per_min, sleep=sleep)
        self._to_alpaca = dict(cfg.symbols)
        self._from_alpaca = {a: f for f, a in cfg.symbols.items()}
        self._from_alpaca.update({a.replace("/", ""): f for f, a in cfg.symbols.items()})
        self._order_ids: dict[str, tuple[str, OrderType]] = {}  # venue id -> (coid, type)
        self._client = self._make_client()
        if self.url == BaseURL.TRADING_LIVE.value:
            log.warning("alpaca venue: LIVE trading endpoint %s", self.url)

    @classmethod
    def from_config(cls, cfg: FleetConfig, env: Mapping[str, str] | None = None) -> AlpacaVenue:
        """From [execution] venue_url, live and venue_timeout_ms, and the alpaca [instruments]."""
        ex = cfg.execution
        url = ex.venue_url.rstrip("/")
        live = url == BaseURL.TRADING_LIVE.value
        if live and not ex.live:
            raise ConfigError(
                "[execution] venue_url is Alpaca's live endpoint: it needs live = true"
            )
        symbols = {
            name: f"{inst.base}/{inst.quote}" if name == inst.base + inst.quote else name
            for name, inst in cfg.instruments.items()
            if inst.venue == "alpaca"
        }
        venue_cfg = AlpacaVenueConfig(
            paper=not live,
            base_url=url,
            symbols=symbols,
            request_timeout_s=ex.venue_timeout_ms / 1000,
        )
        return cls(venue_cfg, env)

    def __repr__(self) -> str:
        return f"AlpacaVenue(url={self.url!r}, paper={self.cfg.paper}, credentials={REDACTED})"

    __str__ = __repr__

    @property
    def url(self) -> str:
        """The endpoint in use."""
        base = self._client._base_url
        return str(getattr(base, "value", base))

    def _make_client(self) -> TradingClient:
        """alpaca-py's TradingClient with our session, raw replies and its own retries off."""
        key, secret = self._credentials.secrets()
        client = TradingClient(
            key, secret, paper=self.cfg.paper, raw_data=True, url_override=self.cfg.base_url or None
        )
        # alpaca-py re-sends 429/504 itself (3 times, 3 s apart), POST /v2/orders included, and
        # TradingClient has no parameter for it: zero attempts, so every retry is decided here.
        client._retry = 0
        client._retry_codes = []
        client._session.close()
        client._session = _Session(self.cfg.request_timeout_s, self._on_response)
        return client

    # --- Venue ------------------------------------------------------------------------------

    def submit(self, req: OrderRequest) -> VenueOrder:
        """POST /v2/orders once; a lost or unreadable reply is VenueUnavailable (query decides)."""
        body = self._order_body(req)
        raw = self._call("submit", lambda: self._client.post("/orders", body), idempotent=False)
        try:
            return self._order(raw)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise VenueUnavailable(f"alpaca submit: unreadable reply ({exc!r})") from None

    def cancel(self, symbol: str, client_order_id: str) -> VenueOrder:
        """Cancel by client order id; a finished order comes back as it finished (too late)."""
        order = self.query(symbol, client_order_id)
        if order is None:
            raise VenueRejected("venue_unknown_order", "40410000", "order not found")
        if order.status in TERMINAL_STATUSES:
            return order
        try:
            oid = order.venue_order_id
            self._call("cancel", lambda: self._client.cancel_order_by_id(oid), idempotent=True)
        except VenueRejected as exc:
            if exc.reason != "venue_not_cancelable":
                raise
        return self._settle([order.venue_order_id])[0]

    def query(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """GET /v2/orders:by_client_order_id; None when Alpaca has no such order."""
        try:
            raw = self._call(
                "query",
                lambda: self._client.get_order_by_client_id(client_order_id),
                idempotent=True,
            )
        except VenueRejected as exc:
            if exc.reason == "venue_unknown_order":
                return None
            raise
        return self._order(raw)

    def open_orders(self) -> list[VenueOrder]:
        """Every order Alpaca holds as open (all symbols of the account)."""
        raws = self._orders_list(QueryOrderStatus.OPEN)
        if len(raws) >= MAX_OPEN_ORDERS:
            log.warning("alpaca open orders: %d returned, the list may be truncated", len(raws))
        return [self._order(r) for r in raws]

    def cancel_all(self) -> list[VenueOrder]:
        """DELETE /v2/orders, then the final state of every order it reached."""
        entries = self._call("cancel_all", self._client.cancel_orders, idempotent=True) or []
        ids = [str(e["id"]) for e in entries]
        for e in entries:
            if e.get("status") != 200:
                log.warning("alpaca cancel-all: order %s answered %s", e.get("id"), e.get("status"))
        return self._settle(ids) if ids else []

    def positions(self) -> dict[str, Decimal]:
        """Net position per Flotilla symbol (negative = short)."""
        raws = self._call("positions", self._client.get_all_positions, idempotent=True) or []
        out: dict[str, Decimal] = {}
        for p in raws:
            qty = dec(p["qty"]) or ZERO
            if p.get("side") == "short" and qty > 0:
                qty = -qty
            out[self._symbol_from(p["symbol"])] = qty
        return out

    def fills_since(self, cursor: str) -> tuple[list[VenueFill], str]:
        """FILL activities after `cursor` (an activity id; "" = from now on) and the new cursor."""
        if cursor == "":
            newest = self._activities({"direction": "desc", "page_size": 1})
            return [], str(newest[0]["id"]) if newest else FILLS_FROM_START
        token = None if cursor == FILLS_FROM_START else cursor
        raws: list[dict[str, Any]] = []
        for _ in range(MAX_ACTIVITY_PAGES):
            params: dict[str, Any] = {"direction": "asc", "page_size": ACTIVITY_PAGE}
            if token:
                params["page_token"] = token
            page = self._activities(params)
            raws += page
            token = str(page[-1]["id"]) if page else token
            if len(page) < ACTIVITY_PAGE:
                break
        return [self._fill(a) for a in raws], token or cursor

    def close(self) -> None:
        """Close the HTTP session."""
        self._client._session.close()

    # --- Alpaca-specific ----------------------------------------------------------------------

    def close_all_positions(self) -> CloseAllResult:
        """EMERGENCY: cancel every open order and liquidate every position (sent once)."""
        entries = self._call(
            "close_all",
            lambda: self._client.close_all_positions(cancel_orders=True),
            idempotent=False,
        )
        orders, failed = [], {}
        for e in entries or []:
            symbol = self._symbol_from(str(e.get("symbol", "")))
            body = e.get("body") or {}
            if e.get("status") == 200 and "client_order_id" in body:
                orders.append(self._order(body))
                continue
            err = classify_error(
                "close_all",
                int(e.get("status") or 0),
                json.dumps(body, default=str),
                {},
                time.time(),
            )
            failed[symbol] = getattr(err, "reason", "venue_unavailable")
            log.error("alpaca close-all: %s not closed: %s", symbol, err)
        return CloseAllResult(orders, failed)

    def buying_power(self) -> Decimal:
        """The account's buying power (GET /v2/account)."""
        raw = self._call("account", self._client.get_account, idempotent=True)
        return dec(raw.get("buying_power")) or ZERO

    # --- requests -----------------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[], Any], idempotent: bool) -> Any:
        """One venue call through the governor; idempotent ones retried with backoff."""
        attempts = max(1, self.cfg.retry_attempts) if idempotent else 1
        for attempt in range(attempts):
            self.governor.acquire(self.cfg.rate_wait_max_s)
            try:
                return fn()
            except VenueError:
                raise
            except Exception as exc:  # the SDK's and requests' errors, translated below
                err = self._translate(op, exc)
            if isinstance(err, VenueRateLimited):
                self.governor.block_for(err.retry_after_s)  # every call waits, not just this one
            if not self._retryable(err) or attempt + 1 >= attempts:
                raise err
            wait = self._backoff_s(attempt, err)
            log.warning("alpaca %s: %s; retry %d in %.2fs", op, err, attempt + 1, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _retryable(self, err: VenueError) -> bool:
        """Worth retrying now: no answer or a 5xx, or a 429 whose wait is short enough."""
        if isinstance(err, VenueRateLimited):
            return err.retry_after_s <= self.cfg.rate_wait_max_s  # else the caller comes back
        return isinstance(err, VenueUnavailable)

    def _backoff_s(self, attempt: int, err: VenueError) -> float:
        """Exponential backoff with jitter (so replicas do not retry in step), at least the venue's wait."""
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
        floor = err.retry_after_s if isinstance(err, VenueRateLimited) else 0.0
        return max(floor, base * random.uniform(0.5, 1.0))

    def _translate(self, op: str, exc: Exception) -> VenueError:
        """The SDK's, requests' and parsing errors as VenueErrors."""
        if isinstance(exc, APIError) and exc.response is not None:
            resp = exc.response
            return classify_error(op, resp.status_code, resp.text, resp.headers, time.time())
        if isinstance(exc, requests.Timeout):
            return VenueUnavailable(f"alpaca {op}: timed out after {self.cfg.request_timeout_s}s")
        if isinstance(exc, requests.RequestException):
            return VenueUnavailable(f"alpaca {op}: {type(exc).__name__}")
        return VenueUnavailable(f"alpaca {op}: {type(exc).__name__}: {exc}")

    def _on_response(self, resp: requests.Response) -> None:
        """Feed Alpaca's rate headers to the governor."""
        try:
            remaining = int(resp.headers["X-RateLimit-Remaining"])
            reset_in = float(resp.headers["X-RateLimit-Reset"]) - time.time()
        except (KeyError, ValueError):
            return
        self.governor.observe(remaining, reset_in)

    def _orders_list(self, status: QueryOrderStatus) -> list[dict[str, Any]]:
        """GET /v2/orders?status=..&limit=500."""
        flt = GetOrdersRequest(status=status, limit=MAX_OPEN_ORDERS, nested=False)
        return self._call("orders", lambda: self._client.get_orders(flt), idempotent=True) or []

    def _activities(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """GET /v2/account/activities/FILL (alpaca-py has no method for it: its plain GET)."""
        return (
            self._call(
                "fills",
                lambda: self._client.get("/account/activities/FILL", params),
                idempotent=True,
            )
            or []
        )

    def _settle(self, order_ids: list[str]) -> list[VenueOrder]:
        """Re-read orders until Alpaca reports them final (bounded): cancels are asynchronous."""
        latest: dict[str, VenueOrder] = {}
        pending = list(order_ids)
        for poll in range(max(1, self.cfg.settle_polls)):
            if poll:
                self._sleep(self.cfg.settle_interval_s)
            if len(pending) == 1:
                raws = [self._order_by_id(pending[0])]
            else:
                raws = self._orders_list(QueryOrderStatus.ALL)  # one request for many orders
            for raw in raws:
                if str(raw["id"]) in pending:
                    latest[str(raw["id"])] = self._order(raw)
            pending = [
                i for i in pending if i not in latest or latest[i].status not in TERMINAL_STATUSES
            ]
            if not pending:
                break
        for oid in [i for i in order_ids if i not in latest]:  # older than the list's page
            latest[oid] = self._order(self._order_by_id(oid))
        return [latest[i] for i in order_ids]

    def _order_by_id(self, order_id: str) -> dict[str, Any]:
        """GET /v2/orders/{id}."""
        get = functools.partial(self._client.get_order_by_id, order_id)
        return cast(dict[str, Any], self._call("query", get, idempotent=True))

    # --- wire -> Flotilla ---------------------------------------------------------------------

    def _order_body(self, req: OrderRequest) -> dict[str, Any]:
        """The POST /v2/orders body: alpaca-py's request model, with exact decimal text for money."""
        common: dict[str, Any] = {
            "symbol": self._to_alpaca.get(req.symbol, req.symbol),
            "qty": float(req.qty),  # the model's type; replaced by the exact text below
            "side": OrderSide(req.side),
            "time_in_force": TimeInForce(self.cfg.time_in_force),
            "client_order_id": req.client_order_id,
        }
        try:
            if req.order_type == "limit":
                if req.limit_px is None:
                    raise ValueError("a limit order needs limit_px")
                model: MarketOrderRequest | LimitOrderRequest = LimitOrderRequest(
                    limit_price=float(req.limit_px), **common
                )
            else:
                model = MarketOrderRequest(**common)
        except ValueError as exc:
            raise VenueRejected("venue_invalid_order", "", str(exc).splitlines()[0][:200]) from None
        body = model.to_request_fields()
        body["qty"] = decimal_text(req.qty)
        if req.limit_px is not None and req.order_type == "limit":
            body["limit_price"] = decimal_text(req.limit_px)
        return body

    def _order(self, raw: dict[str, Any]) -> VenueOrder:
        """An Alpaca order entity as a VenueOrder."""
        filled = dec(raw.get("filled_qty")) or ZERO
        qty = dec(raw.get("qty")) or filled  # notional orders (not ours) have no qty
        status, reason = map_status(str(raw["status"]), filled, qty)
        order_type = _order_type(str(raw.get("type") or raw.get("order_type") or "market"))
        coid = str(raw["client_order_id"])
        self._order_ids[str(raw["id"])] = (coid, order_type)
        return VenueOrder(
            client_order_id=coid,
            venue_order_id=str(raw["id"]),
            symbol=self._symbol_from(str(raw["symbol"])),
            side=cast(Side, str(raw["side"])),
            order_type=order_type,
            status=status,
            qty=qty,
            filled_qty=filled,
            avg_px=dec(raw.get("filled_avg_price")) if filled > 0 else None,
            limit_px=dec(raw.get("limit_price")),
            reason=reason,
            update_ns=rfc3339_ns(raw.get("updated_at")),
        )

    def _fill(self, a: dict[str, Any]) -> VenueFill:
        """A FILL activity as a VenueFill; the order's client id is looked up once if unseen."""
        order_id = str(a["order_id"])
        if order_id not in self._order_ids:
            self._order(self._order_by_id(order_id))
        coid, order_type = self._order_ids[order_id]
        symbol = str(a["symbol"])
        return VenueFill(
            client_order_id=coid,
            trade_id=str(a["id"]),
            symbol=self._symbol_from(symbol),
            side=cast(Side, str(a["side"])),
            qty=dec(a["qty"]) or ZERO,
            price=dec(a["price"]) or ZERO,
            fee=ZERO,  # Alpaca reports no fee per fill (module docstring)
            fee_asset=symbol.split("/")[1] if "/" in symbol else "USD",
            liquidity="taker" if order_type == "market" else "maker",
            ts_ns=rfc3339_ns(a.get("transaction_time")),
        )

    def _symbol_from(self, alpaca_symbol: str) -> str:
        """Flotilla's symbol for an Alpaca one (orders say "BTC/USD", positions "BTCUSD")."""
        return self._from_alpaca.get(alpaca_symbol, alpaca_symbol.replace("/", ""))


def _order_type(alpaca_type: str) -> OrderType:
    """market/limit as they are; stop orders trade as market, stop-limit as limit, once triggered."""
    kind: Literal["market", "limit"] = "limit" if "limit" in alpaca_type else "market"
    return kind


def _conforms(venue: AlpacaVenue) -> Venue:
    """mypy checks AlpacaVenue against the Venue protocol here."""
    return venue
