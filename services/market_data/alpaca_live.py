"""Live Alpaca market data over alpaca-py's data streams: trades, quotes and minute bars.

Crypto through `CryptoDataStream` (/v1beta3/crypto/us), stocks through `StockDataStream` on the
IEX or SIP feed (/v2/iex, /v2/sip). alpaca-py does the websocket, the msgpack framing, the
auth and subscribe handshakes and the dispatch to our handler (raw_data=True: the wire dicts,
with nanosecond msgpack timestamps); every message goes through `AlpacaNormaliser`, the one
normaliser for Alpaca data (see alpaca.py for how prices stay exact). Bars are counted and not
published (Flotilla has no bar message).

Connection lifecycle is ours, not alpaca-py's `run()`: each connection is one stream object
driven through alpaca-py's own steps (`_start_ws`: connect + auth; `_send_subscribe_msg`;
`_consume`: read + dispatch), so that every connect, reconnect, resubscription (a resync: the
stream has no replay, so the gap's data is lost and only the subscription is restored),
disconnect and watchdog restart is counted, and the backoff is ours: exponential with equal
jitter, reset once a connection delivered data. Those are private methods of alpaca-py, which
is why its version is pinned exactly in pyproject.toml.

Refusals: "auth failed" (402) and "insufficient subscription" (409, e.g. SIP without the plan)
cannot be fixed by retrying, so the feed stops: `error` says why and `alive` turns False.
"connection limit exceeded" (406; usually our previous connection not yet reaped) and every
other failure is retried with backoff. Any venue error message is counted by code.

The asyncio loop runs in its own thread, so the synchronous ZeroMQ service drives it exactly
like the Binance live feed: `start()`, `get()`/`drain()`, `stats()`, `staleness()`, `alive`,
`close()`; plus `error`.

Pointing it at another venue (the local fake): `AlpacaFeedConfig(venue_url="http://127.0.0.1:N")`
passes alpaca-py's documented `url_override` = "ws://127.0.0.1:N/v1beta3/crypto/us" (or
/v2/iex, /v2/sip): no patching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from libs.common.messages import Quote, Trade

from .alpaca import STREAM_ERRORS, AlpacaNormaliser, AlpacaSymbol, AssetClass
from .binance import ParseError

# alpaca-py 0.44 imports websockets' legacy client, which websockets >= 14 reports as
# deprecated at import time; the client itself works (and is what alpaca-py tests against).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import websockets
    from alpaca.data.enums import DataFeed
    from alpaca.data.live.crypto import CryptoDataStream
    from alpaca.data.live.stock import StockDataStream
    from alpaca.data.live.websocket import DataStream

log = logging.getLogger(__name__)
KEY_ENV, SECRET_ENV = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"  # alpaca's own variable names
FATAL_REFUSALS = {402: "auth failed", 409: "insufficient subscription"}
_CODE_OF = {msg: code for code, msg in STREAM_ERRORS.items()}
_KIND = {"t": "trade", "q": "quote", "b": "bar"}
CONNECT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    websockets.WebSocketException,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class AlpacaFeedConfig:
    """What to subscribe to, where, and how patiently."""

    symbols: tuple[AlpacaSymbol, ...]  # see alpaca.symbols_from_instruments
    asset_class: AssetClass = "crypto"
    stock_feed: Literal["iex", "sip"] = "iex"
    venue_url: str = ""  # "" = Alpaca itself; "http://127.0.0.1:N" = a fake
    api_key: str = ""  # "" = $APCA_API_KEY_ID
    secret_key: str = ""  # "" = $APCA_API_SECRET_KEY
    backoff_initial_s: float = 0.5  # first reconnect waits 0.25..0.5 s
    backoff_max_s: float = 30.0
    silence_timeout_s: float = 10.0  # watchdog: no market data at all for this long -> reconnect
    connect_timeout_s: float = 10.0  # connect + auth + subscribe
    queue_max: int = 100_000  # normalised messages waiting for the service; beyond: dropped


@dataclass
class FeedCounters:
    """Everything the feed counts; read from any thread through AlpacaLiveFeed.stats()."""

    connects: int = 0  # websocket connections attempted
    reconnects: int = 0  # of those, after the first
    connection_failures: int = 0  # attempts that did not get to streaming
    disconnects: int = 0  # connections that ended on a venue or network error
    watchdog_restarts: int = 0  # connections ended by the watchdog (silent too long)
    auth_failures: int = 0  # connections refused at auth (402, 406, 409, ...)
    venue_errors: dict[int, int] = field(default_factory=dict)  # error messages by code
    subscriptions: int = 0  # subscription confirmations from the venue
    resyncs: int = 0  # subscriptions restored on a new connection (after the first)
    messages: dict[str, int] = field(
        default_factory=lambda: {"trade": 0, "quote": 0, "bar": 0, "other": 0}
    )
    bars: dict[str, int] = field(default_factory=dict)  # per symbol; counted, not published
    parse_errors: int = 0
    queue_drops: int = 0  # normalised messages dropped because the service did not keep up
    published: dict[str, int] = field(default_factory=dict)  # trades + quotes per symbol


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: half the capped exponential plus a random part
    up to the other half, so clients spread out yet never retry at once."""
    ceiling = min(max_s, initial_s * 2 ** min(attempt, 30))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def stream_url(venue_url: str, asset_class: AssetClass, stock_feed: str = "iex") -> str | None:
    """alpaca-py's `url_override` for a venue base URL (None: alpaca-py's own Alpaca URL)."""
    if not venue_url:
        return None
    parts = urlsplit(venue_url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"venue URL must be http(s)://host:port, not {venue_url!r}")
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    path = "/v1beta3/crypto/us" if asset_class == "crypto" else f"/v2/{stock_feed}"
    return f"{scheme}://{parts.netloc}{path}"


def refusal_code(exc: BaseException) -> int | None:
    """Alpaca's error code for an error message alpaca-py raised as ValueError(msg)."""
    return _CODE_OF.get(str(exc))


class _Observed:
    """Mixin for alpaca-py streams: control messages go to `on_control` before alpaca-py."""

    on_control: Callable[[dict[str, Any]], None] = staticmethod(lambda _msg: None)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        """Report subscription acks and errors (alpaca-py only logs them), then dispatch."""
        if msg.get("T") in ("subscription", "error"):
            self.on_control(msg)
        await super()._dispatch(msg)  # type: ignore[misc]


class _CryptoStream(_Observed, CryptoDataStream):
    """CryptoDataStream that reports control messages."""


class _StockStream(_Observed, StockDataStream):
    """StockDataStream that reports control messages."""


class AlpacaLiveFeed:
    """The feed; see the module docstring. Thread-safe methods: all the public ones."""

    def __init__(
        self,
        cfg: AlpacaFeedConfig,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        if not cfg.symbols:
            raise ValueError("no symbols to subscribe to")
        self.cfg = cfg
        self._key = cfg.api_key or os.environ.get(KEY_ENV, "")
        self._secret = cfg.secret_key or os.environ.get(SECRET_ENV, "")
        if not self._key or not self._secret:
            raise ValueError(
                f"Alpaca needs an API key and secret (config, or ${KEY_ENV} / ${SECRET_ENV})"
            )
        self._url = stream_url(cfg.venue_url, cfg.asset_class, cfg.stock_feed)
        self.symbols = tuple(s.symbol for s in cfg.symbols)
        self._by_name = {s.alpaca: s.symbol for s in cfg.symbols}
        self.normaliser = AlpacaNormaliser(cfg.symbols)
        self.counters = FeedCounters(
            published=dict.fromkeys(self.symbols, 0), bars=dict.fromkeys(self.symbols, 0)
        )
        self.messages: queue.Queue[Trade | Quote] = queue.Queue(maxsize=cfg.queue_max)
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._error: str | None = None
        self._closing = threading.Event()  # close() also cancels; this makes sure it sticks
        self._started_mono = time.monotonic()
        self._last_rx_mono = self._started_mono  # any market data (watchdog)
        self._symbol_rx_mono: dict[str, float | None] = dict.fromkeys(self.symbols)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run_loop, name="alpaca-live", daemon=True)

    # --- the synchronous interface -----------------------------------------------------------

    def start(self) -> None:
        """Start the feed's thread; connecting goes on in the background."""
        self._started_mono = self._last_rx_mono = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._main())
        self._thread.start()

    def get(self, timeout_s: float = 0.0) -> Trade | Quote | None:
        """The next normalised message, waiting up to timeout_s; None if there is none."""
        try:
            if timeout_s <= 0:
                return self.messages.get_nowait()
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def drain(self, max_items: int = 10_000) -> list[Trade | Quote]:
        """Up to max_items messages that are already waiting, without blocking."""
        out: list[Trade | Quote] = []
        with contextlib.suppress(queue.Empty):
            while len(out) < max_items:
                out.append(self.messages.get_nowait())
        return out

    def staleness(self) -> dict[str, float]:
        """Seconds since each symbol's last trade, quote or bar (since start() if none yet)."""
        now = time.monotonic()
        return {
            s: now - (t if t is not None else self._started_mono)
            for s, t in self._symbol_rx_mono.items()
        }

    def stats(self) -> dict[str, Any]:
        """A copy of the counters, plus staleness, the normaliser's counts and the error."""
        out: dict[str, Any] = {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self.counters).items()
        }
        out["inexact"] = self.normaliser.inexact
        out["aggressor_inferred"] = self.normaliser.aggressor_inferred
        out["staleness_s"] = self.staleness()
        out["error"] = self._error
        return out

    @property
    def alive(self) -> bool:
        """Whether the feed's thread is running (False after a fatal refusal: see `error`)."""
        return self._thread.is_alive()

    @property
    def error(self) -> str | None:
        """Why the feed stopped by itself (auth failed, insufficient subscription), or None."""
        return self._error

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop: close the websocket, end the thread. Idempotent."""
        if self._loop is None or self._task is None:
            return  # never started
        self._closing.set()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("alpaca live feed thread did not stop within %.1f s", timeout_s)

    # --- the loop ----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        """Thread body: run the feed, then cancel whatever is left on the loop."""
        loop, task = self._loop, self._task
        assert loop is not None and task is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass  # close()
        except Exception:
            log.exception("alpaca live feed died")  # a bug: `alive` turns False for the service
        finally:
            leftovers = asyncio.all_tasks(loop)
            for left in leftovers:
                left.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        """Connect, and reconnect after every failure with backoff, until cancelled or refused."""
        failures = 0
        while not self._closing.is_set():
            delivered = await self._connection()
            if self._error is not None:
                log.error("alpaca feed stopped: %s", self._error)
                return
            failures = 0 if delivered else failures + 1
            await asyncio.sleep(
                backoff_delay(
                    failures, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng
                )
            )
            self.counters.reconnects += 1

    def _new_stream(self) -> _CryptoStream | _StockStream:
        """A fresh alpaca-py stream with our handler on trades, quotes and bars."""
        params = {  # replaces alpaca-py's defaults (ping 10 s, pong 180 s, queue 1024)
            "ping_interval": 10,
            "ping_timeout": 20,
            "max_queue": 1024,
            "open_timeout": self.cfg.connect_timeout_s,
            "close_timeout": 2,
        }
        stream: _CryptoStream | _StockStream
        if self.cfg.asset_class == "crypto":
            stream = _CryptoStream(
                self._key,
                self._secret,
                raw_data=True,
                url_override=self._url,
                websocket_params=params,
            )
        else:
            feed = DataFeed.SIP if self.cfg.stock_feed == "sip" else DataFeed.IEX
            stream = _StockStream(
                self._key,
                self._secret,
                raw_data=True,
                feed=feed,
                url_override=self._url,
                websocket_params=params,
            )
        stream.on_control = self._on_control
        names = tuple(self._by_name)
        stream.subscribe_trades(self._on_data, *names)
        stream.subscribe_quotes(self._on_data, *names)
        stream.subscribe_bars(self._on_data, *names)
        return stream

    async def _connection(self) -> bool:
        """One connection's life; True if it delivered at least one market-data message."""
        stream = self._new_stream()
        self.counters.connects += 1
        try:
            await asyncio.wait_for(self._open(stream), self.cfg.connect_timeout_s)
        except ValueError as exc:  # alpaca-py: the venue answered an error, or no welcome
            self._refused(exc)
            await self._close_stream(stream)
            return False
        except CONNECT_ERRORS as exc:
            self.counters.connection_failures += 1
            log.warning("alpaca websocket connect failed: %r", exc)
            await self._close_stream(stream)
            return False
        if self.counters.connects > 1:
            self.counters.resyncs += 1
        log.info("alpaca %s stream connected: %d symbols", self.cfg.asset_class, len(self.symbols))
        self._last_rx_mono = time.monotonic()
        rx_before = sum(self.counters.messages.values())
        reader = asyncio.create_task(stream._consume())
        try:
            await self._watch(reader)
        finally:
            await self._end(stream, reader)
        return sum(self.counters.messages.values()) > rx_before

    async def _open(self, stream: DataStream) -> None:
        """alpaca-py's connect + auth, then its subscribe message."""
        await stream._start_ws()
        await stream._send_subscribe_msg()
        stream._running = True

    def _refused(self, exc: ValueError) -> None:
        """The venue refused the connection: stop for good on 402/409, else retry later."""
        self.counters.connection_failures += 1
        code = refusal_code(exc)
        if code is None:
            log.warning("alpaca websocket handshake failed: %s", exc)
            return
        self.counters.auth_failures += 1
        self._count_error(code)
        if code in FATAL_REFUSALS:
            self._error = f"alpaca refused the connection: {exc} ({code})"
        else:
            log.warning("alpaca refused the connection: %s (%d): retrying", exc, code)

    async def _watch(self, reader: asyncio.Task[bool]) -> None:
        """Wait for the reader to end, or end it when the connection has gone silent."""
        check_every = min(1.0, self.cfg.silence_timeout_s / 4)
        while True:
            done, _ = await asyncio.wait({reader}, timeout=check_every)
            if done:
                self.counters.disconnects += 1
                exc = reader.exception()
                if isinstance(exc, websockets.WebSocketException | OSError):
                    log.warning("alpaca websocket lost: %r", exc)
                else:  # a bug in handling a message: reconnecting is the best we can do
                    log.error("alpaca websocket reader ended: reconnecting", exc_info=exc)
                return
            silent = time.monotonic() - self._last_rx_mono
            if silent > self.cfg.silence_timeout_s:
                self.counters.watchdog_restarts += 1
                log.warning("alpaca websocket silent for %.1f s: restarting it", silent)
                return

    async def _end(self, stream: DataStream, reader: asyncio.Task[bool]) -> None:
        """Stop the reader and close the socket. Closing also ends a reader that missed its
        cancel: Python 3.11's wait_for (inside alpaca-py's _consume) can swallow a cancel that
        arrives just as a frame does."""
        reader.cancel()
        await self._close_stream(stream)
        done, _ = await asyncio.wait({reader}, timeout=5.0)  # wait() never swallows our cancel
        if done and not reader.cancelled():
            reader.exception()  # retrieved (asyncio would log it); _watch reported it if it mattered

    async def _close_stream(self, stream: DataStream) -> None:
        """Close alpaca-py's websocket; abort the TCP connection if the close handshake hangs."""
        ws = stream._ws
        stream._running = False
        if ws is None:
            return
        try:
            await asyncio.wait_for(ws.close(), 3.0)
        except Exception:  # a dead peer: the handshake cannot finish
            with contextlib.suppress(Exception):
                ws.transport.abort()

    # --- messages ----------------------------------------------------------------------------

    def _on_control(self, msg: dict[str, Any]) -> None:
        """Count subscription confirmations and venue errors."""
        if msg.get("T") == "subscription":
            self.counters.subscriptions += 1
            return
        code = msg.get("code")
        self._count_error(code if isinstance(code, int) else 0)
        log.warning("alpaca error message: %s (%s)", msg.get("msg"), code)

    def _count_error(self, code: int) -> None:
        """Count a venue error by its code."""
        self.counters.venue_errors[code] = self.counters.venue_errors.get(code, 0) + 1

    async def _on_data(self, msg: Any) -> None:
        """alpaca-py's handler for trades, quotes and bars (raw dicts: raw_data=True)."""
        self._on_message(msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        """Normalise and publish a trade or quote; count a bar."""
        self._last_rx_mono = now = time.monotonic()
        kind = _KIND.get(msg.get("T"), "other")  # type: ignore[arg-type]
        symbol = self._by_name.get(msg.get("S"))  # type: ignore[arg-type]
        if symbol is None or kind == "other":
            self.counters.messages["other"] += 1
            return
        self._symbol_rx_mono[symbol] = now
        self.counters.messages[kind] += 1
        if kind == "bar":
            self.counters.bars[symbol] += 1
        try:
            out = self.normaliser.normalise(msg, self._clock_ns())
        except ParseError as exc:
            self.counters.parse_errors += 1
            log.warning("unparseable %s %s dropped: %s", symbol, kind, exc)
            return
        if out is None:
            return
        try:
            self.messages.put_nowait(out)
            self.counters.published[symbol] += 1
        except queue.Full:
            self.counters.queue_drops += 1
