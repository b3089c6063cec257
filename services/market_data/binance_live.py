"""Live Binance spot feed over python-binance: trades, bookTicker and an L2 book per symbol.

One combined websocket (`<sym>@trade`, `<sym>@bookTicker`, `<sym>@depth@100ms` for every
symbol) through python-binance's BinanceSocketManager, and REST depth snapshots through its
AsyncClient. Trades and bookTickers go through `parse_stream_message`, the normaliser the replay
uses, so live and replayed messages are identical. Depth diffs keep an `L2Book` per symbol by
Binance's snapshot + diff procedure; a gap or a new connection means a new snapshot (a resync);
each applied diff's book top is checked against bookTicker.

Failures: every disconnect, failed connect or watchdog restart (no message for
`silence_timeout_s`) is followed by a reconnect after an exponential backoff with jitter.
REST answers 429/418 block all REST calls for the Retry-After the venue asks for. Everything is
counted (`stats()`), and `staleness()` says how long each symbol has been silent.

The asyncio loop runs in its own thread, so the synchronous ZeroMQ service drives it with
`start()`, `get()`/`drain()`, `stats()`, `staleness()` and `close()`.

Pointing it at another venue (the local fake): `LiveFeedConfig(venue_url="http://127.0.0.1:N")`
sets python-binance's documented instance URLs, `AsyncClient.API_URL` (REST, "<url>/api") and
`BinanceSocketManager.STREAM_URL` ("ws://127.0.0.1:N/"), after construction: no patching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import random
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec

from libs.common.messages import Quote, Trade

from .binance import ParseError, parse_stream_message
from .l2book import (
    DepthSnapshot,
    L2Book,
    Outcome,
    Ticker,
    TopCheck,
    Verdict,
    parse_depth_diff,
    parse_depth_snapshot,
)

# python-binance 1.0.37 imports websockets' legacy WebSocketClientProtocol (for a type check in
# its order API, unused here), which websockets >= 14 reports as deprecated at import time.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance import AsyncClient, BinanceSocketManager
    from binance.exceptions import BinanceAPIException, BinanceRequestException, ReadLoopClosed

log = logging.getLogger(__name__)
T = TypeVar("T")
RATE_LIMIT_STATUSES = (418, 429)  # 429: over a limit; 418: IP banned for repeating that
REST_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, BinanceRequestException, ParseError)


@dataclass(frozen=True)
class LiveFeedConfig:
    """What to subscribe to, where, and how patiently."""

    symbols: tuple[str, ...]
    venue_url: str = ""  # "" = Binance itself; "http://127.0.0.1:N" = a fake (REST + streams)
    depth_limit: int = 5000  # snapshot levels per side (Binance's maximum; weight 250)
    backoff_initial_s: float = 0.5  # first reconnect / REST retry waits 0.25..0.5 s
    backoff_max_s: float = 30.0
    silence_timeout_s: float = 10.0  # watchdog: no message at all for this long -> reconnect
    connect_timeout_s: float = 10.0
    rest_timeout_s: float = 10.0
    max_retry_after_s: float = 600.0  # a longer 418 ban is honoured in steps of this
    queue_max: int = 100_000  # normalised messages waiting for the service; beyond: dropped
    ws_queue_max: int = 10_000  # python-binance's own queue (it drops the connection past it)


@dataclass
class FeedCounters:
    """Everything the feed counts; read from any thread through BinanceLiveFeed.stats()."""

    connects: int = 0  # websocket connections attempted
    reconnects: int = 0  # of those, after the first
    connection_failures: int = 0  # attempts that did not connect
    disconnects: int = 0  # connections that ended on a venue or network error
    watchdog_restarts: int = 0  # connections ended by the watchdog (silent too long)
    snapshots: int = 0  # REST snapshots that synced a book
    resyncs: int = 0  # of those, after a symbol's first
    resyncs_by_reason: dict[str, int] = field(default_factory=lambda: {"gap": 0, "reconnect": 0})
    gaps: int = 0  # broken U/u chains
    stale_snapshots: int = 0  # snapshots older than the buffered stream (fetched again)
    ticker_checks: int = 0
    ticker_mismatches: int = 0
    rest_requests: int = 0
    rest_rate_limited: int = 0  # 429 / 418 answers
    rest_errors: int = 0  # any other REST failure
    messages: dict[str, int] = field(
        default_factory=lambda: {"trade": 0, "bookTicker": 0, "depth": 0, "other": 0}
    )
    parse_errors: int = 0
    queue_drops: int = 0  # normalised messages dropped because the service did not keep up
    published: dict[str, int] = field(default_factory=dict)  # trades + quotes per symbol


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with "equal jitter": half the capped exponential plus a random part
    up to the other half, so clients spread out yet never retry at once."""
    ceiling = min(max_s, initial_s * 2 ** min(attempt, 30))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def venue_urls(venue_url: str) -> tuple[str, str]:
    """(python-binance API_URL, STREAM_URL) for a venue base URL like http://127.0.0.1:8765."""
    parts = urlsplit(venue_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"venue URL must be http(s)://host:port, not {venue_url!r}")
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{parts.scheme}://{parts.netloc}/api", f"{ws_scheme}://{parts.netloc}/"


def streams_for(symbols: Sequence[str]) -> list[str]:
    """The combined-stream names for every symbol."""
    return [
        f"{s.lower()}@{kind}" for s in symbols for kind in ("trade", "bookTicker", "depth@100ms")
    ]


def retry_after_s(exc: BinanceAPIException) -> float | None:
    """The Retry-After header of a rate-limit answer, in seconds."""
    headers = getattr(exc.response, "headers", None) or {}
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


class _ConnectionEnded(Exception):
    """python-binance reported that the websocket failed."""


class BinanceLiveFeed:
    """The feed; see the module docstring. Thread-safe methods: all the public ones."""

    def __init__(
        self,
        cfg: LiveFeedConfig,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.symbols = tuple(s.upper() for s in cfg.symbols)
        self.counters = FeedCounters(published=dict.fromkeys(self.symbols, 0))
        self.messages: queue.Queue[Trade | Quote] = queue.Queue(maxsize=cfg.queue_max)
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._api_url, self._stream_url = venue_urls(cfg.venue_url) if cfg.venue_url else ("", "")
        self._books = {s: L2Book(s) for s in self.symbols}
        self._checks = {s: TopCheck() for s in self.symbols}
        self._ever_synced: set[str] = set()
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._pending_reason: dict[str, str] = {}
        self._started_mono = time.monotonic()
        self._last_rx_mono = self._started_mono  # any message (watchdog)
        self._symbol_rx_mono: dict[str, float | None] = dict.fromkeys(self.symbols)
        self._rest_blocked_until = 0.0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run_loop, name="binance-live", daemon=True)

    # --- the synchronous interface -----------------------------------------------------------

    def start(self) -> None:
        """Start the feed's thread; connecting and syncing go on in the background."""
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
        """Seconds since each symbol's last message of any stream (since start() if none yet)."""
        now = time.monotonic()
        return {
            s: now - (t if t is not None else self._started_mono)
            for s, t in self._symbol_rx_mono.items()
        }

    def synced(self, symbol: str) -> bool:
        """Whether symbol's book currently follows the venue's."""
        return self._books[symbol.upper()].synced

    def stats(self) -> dict[str, Any]:
        """A copy of the counters, plus per-symbol sync state and staleness."""
        c = self.counters
        out: dict[str, Any] = {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(c).items()
        }
        out["synced"] = {s: self.synced(s) for s in self.symbols}
        out["staleness_s"] = self.staleness()
        return out

    @property
    def alive(self) -> bool:
        """Whether the feed's thread is running."""
        return self._thread.is_alive()

    def book(self, symbol: str, timeout_s: float = 5.0) -> DepthSnapshot | None:
        """A consistent copy of symbol's book (None unless synced), taken on the feed's loop."""
        book = self._books[symbol.upper()]

        async def copy() -> DepthSnapshot | None:
            return book.snapshot() if book.synced else None

        if self._loop is None or not self._thread.is_alive():
            return None
        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop: close the websocket and the HTTP session, end the thread. Idempotent."""
        if self._loop is None or self._task is None:
            return  # never started
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("binance live feed thread did not stop within %.1f s", timeout_s)

    # --- the loop ----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        """Thread body: run the feed, then cancel whatever python-binance left running."""
        loop, task = self._loop, self._task
        assert loop is not None and task is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass  # close()
        except Exception:
            log.exception("binance live feed died")  # a bug: `alive` turns False for the service
        finally:
            leftovers = asyncio.all_tasks(loop)
            for left in leftovers:
                left.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        """Connect, and reconnect after every failure with backoff, until cancelled."""
        self._client = AsyncClient()  # created on this loop: its aiohttp session belongs here
        if self._api_url:
            self._client.API_URL = self._api_url
        symbols_checked = asyncio.create_task(self._check_symbols())
        try:
            failures = 0
            while True:
                delivered = await self._connection()
                failures = 0 if delivered else failures + 1
                await asyncio.sleep(
                    backoff_delay(
                        failures, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng
                    )
                )
                self.counters.reconnects += 1
        finally:
            symbols_checked.cancel()
            await self._client.close_connection()

    async def _connection(self) -> bool:
        """One websocket connection's life; True if it delivered at least one message."""
        bsm = BinanceSocketManager(self._client, max_queue_size=self.cfg.ws_queue_max)
        if self._stream_url:
            bsm.STREAM_URL = self._stream_url
        sock = bsm.multiplex_socket(streams_for(self.symbols))
        sock.MAX_RECONNECTS = 0  # python-binance must not reconnect behind our back: we resync
        self.counters.connects += 1
        try:
            await asyncio.wait_for(sock.connect(), self.cfg.connect_timeout_s)
        except Exception as exc:  # python-binance re-raises whatever websockets raised
            self.counters.connection_failures += 1
            log.warning("binance websocket connect failed: %r", exc)
            await self._close_socket(sock)
            return False
        log.info("binance websocket connected: %d streams", 3 * len(self.symbols))
        self._last_rx_mono = time.monotonic()
        for symbol in self.symbols:  # the stream is open and buffering: now the snapshots
            self._request_sync(symbol, "reconnect")
        rx_before = sum(self.counters.messages.values())
        reader = asyncio.create_task(self._read(sock))
        try:
            await self._watch(reader)
        finally:
            reader.cancel()
            for task in self._syncing.values():
                task.cancel()  # the snapshots belong to this connection's buffered diffs
            self._syncing.clear()
            self._reset_books()
            await self._close_socket(sock)
        return sum(self.counters.messages.values()) > rx_before

    async def _watch(self, reader: asyncio.Task[None]) -> None:
        """Wait for the reader to end, or end it when the connection has gone silent."""
        check_every = min(1.0, self.cfg.silence_timeout_s / 4)
        while True:
            done, _ = await asyncio.wait({reader}, timeout=check_every)
            if done:
                exc = reader.exception()
                self.counters.disconnects += 1
                if isinstance(exc, _ConnectionEnded | ReadLoopClosed):
                    log.warning("binance websocket lost: %s", exc)
                else:  # a bug in handling a message: reconnecting is the best we can do
                    log.error("binance websocket reader failed: reconnecting", exc_info=exc)
                return
            silent = time.monotonic() - self._last_rx_mono
            if silent > self.cfg.silence_timeout_s:
                self.counters.watchdog_restarts += 1
                log.warning("binance websocket silent for %.1f s: restarting it", silent)
                return

    async def _close_socket(self, sock: Any) -> None:
        """Close the websocket first (python-binance's read loop then ends at once instead of
        after its 10 s receive timeout), then python-binance's wrapper."""
        with contextlib.suppress(Exception):
            if sock.ws is not None:
                await asyncio.wait_for(sock.ws.close(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sock.__aexit__(None, None, None), 5.0)

    def _reset_books(self) -> None:
        """A lost connection loses diffs and tickers: the books restart the procedure (and say
        they are not synced until the next connection's snapshots)."""
        for symbol in self.symbols:
            self._books[symbol].reset()
            self._checks[symbol].reset()

    async def _read(self, sock: Any) -> None:
        """Handle messages until python-binance reports the connection failed."""
        while True:
            msg = await sock.recv()
            self._on_message(msg)

    # --- messages ----------------------------------------------------------------------------

    def _on_message(self, msg: dict[str, Any]) -> None:
        """Route one combined-stream message."""
        self._last_rx_mono = now = time.monotonic()
        stream = msg.get("stream")
        if not isinstance(stream, str):
            if msg.get("e") == "error":  # python-binance's report of a failed read
                raise _ConnectionEnded(f"{msg.get('type')}: {msg.get('m')}")
            self.counters.messages["other"] += 1
            return
        name, _, kind = stream.partition("@")
        symbol = name.upper()
        if symbol not in self._books:
            self.counters.messages["other"] += 1
            return
        self._symbol_rx_mono[symbol] = now
        if kind.startswith("depth"):
            self.counters.messages["depth"] += 1
            self._on_depth(symbol, msgspec.json.encode(msg.get("data")))
        else:
            self.counters.messages[
                "trade" if kind == "trade" else "bookTicker" if kind == "bookTicker" else "other"
            ] += 1
            self._on_tick(symbol, msgspec.json.encode(msg))

    def _on_tick(self, symbol: str, raw: bytes) -> None:
        """Normalise a trade or bookTicker exactly as the replay does, check quotes, publish."""
        now = self._clock_ns()  # bookTicker has no exchange time: its event time is arrival
        try:
            out = parse_stream_message(raw, now, now)
        except ParseError as exc:
            self.counters.parse_errors += 1
            log.warning("unparseable %s message dropped: %s", symbol, exc)
            return
        if out is None:
            return
        if isinstance(out, Quote):
            self._count(
                self._checks[symbol].on_ticker(self._books[symbol], Ticker.from_quote(out)), symbol
            )
        try:
            self.messages.put_nowait(out)
            self.counters.published[symbol] += 1
        except queue.Full:
            self.counters.queue_drops += 1

    def _on_depth(self, symbol: str, data: bytes) -> None:
        """Feed a diff to the book; a gap asks for a snapshot."""
        try:
            diff = parse_depth_diff(data)
        except ParseError as exc:
            self.counters.parse_errors += 1
            log.warning("unparseable %s depth diff dropped: %s", symbol, exc)
            return
        book = self._books[symbol]
        before = book.last_update_id
        outcome = book.on_diff(diff)
        if outcome is Outcome.APPLIED:
            self._count(self._checks[symbol].after_diff(book), symbol)
        elif outcome is Outcome.GAP:
            self.counters.gaps += 1
            log.warning(
                "%s depth gap: diff %d..%d after %d: resyncing",
                symbol,
                diff.first_id,
                diff.last_id,
                before,
            )
            self._request_sync(symbol, "gap")

    def _count(self, verdict: Verdict | None, symbol: str) -> None:
        """Count a book-top check."""
        if verdict is None:
            return
        self.counters.ticker_checks += 1
        if verdict is Verdict.MISMATCH:
            self.counters.ticker_mismatches += 1
            n = self.counters.ticker_mismatches
            if n <= 10 or n % 1000 == 0:  # a systematic fault must not flood the log
                top = self._books[symbol].top()
                log.warning("%s book top %s disagrees with bookTicker (%d so far)", symbol, top, n)

    # --- snapshots ---------------------------------------------------------------------------

    def _request_sync(self, symbol: str, reason: str) -> None:
        """Fetch a snapshot for symbol unless a fetch is already under way."""
        self._pending_reason[symbol] = reason
        task = self._syncing.get(symbol)
        if task is None or task.done():
            self._syncing[symbol] = asyncio.get_running_loop().create_task(self._sync(symbol))

    async def _sync(self, symbol: str) -> None:
        """Fetch snapshots until one syncs the book (a too-old one is fetched again)."""
        book, attempt = self._books[symbol], 0
        while True:
            snap = await self._rest(f"depth {symbol}", lambda: self._fetch_depth(symbol))
            outcome = book.on_snapshot(snap)
            if outcome is Outcome.SYNCED:
                self._synced(symbol)
                return
            if outcome is Outcome.GAP:  # within the diffs buffered while it was fetched
                self.counters.gaps += 1
                self._pending_reason[symbol] = "gap"
            else:
                self.counters.stale_snapshots += 1
            # The venue's snapshot lags its stream: give it a moment, and more if it persists.
            initial_s = self.cfg.backoff_initial_s / 4
            await asyncio.sleep(
                backoff_delay(attempt, initial_s, self.cfg.backoff_max_s, self._rng)
            )
            attempt += 1

    def _synced(self, symbol: str) -> None:
        """Count the sync and check the fresh book against waiting tickers."""
        self.counters.snapshots += 1
        if symbol in self._ever_synced:
            self.counters.resyncs += 1
            reason = self._pending_reason.get(symbol, "reconnect")
            self.counters.resyncs_by_reason[reason] = (
                self.counters.resyncs_by_reason.get(reason, 0) + 1
            )
        self._ever_synced.add(symbol)
        book = self._books[symbol]
        log.info(
            "%s book synced at %d (%d bids, %d asks)",
            symbol,
            book.last_update_id,
            len(book.bids),
            len(book.asks),
        )
        self._checks[symbol].after_snapshot(book)

    async def _fetch_depth(self, symbol: str) -> DepthSnapshot:
        """GET /api/v3/depth through python-binance."""
        answer = await self._client.get_order_book(symbol=symbol, limit=self.cfg.depth_limit)
        return parse_depth_snapshot(msgspec.json.encode(answer))

    async def _check_symbols(self) -> None:
        """Warn once about symbols the venue does not list as trading (their streams stay silent)."""
        try:
            info = await self._rest("exchangeInfo", self._client.get_exchange_info)
            listed = {s["symbol"]: s.get("status") for s in info["symbols"]}
        except (KeyError, TypeError, AttributeError) as exc:
            log.error("unexpected exchangeInfo answer: %r", exc)
            return
        for symbol in self.symbols:
            if listed.get(symbol) != "TRADING":
                log.error(
                    "%s is not a trading symbol on the venue (status %s)",
                    symbol,
                    listed.get(symbol),
                )

    async def _rest(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A REST call, retried until it succeeds: after a 429/418 no REST call is made until
        the venue's Retry-After has passed; other failures back off exponentially."""
        attempt = 0
        while True:
            if (wait := self._rest_blocked_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
                continue  # another call may have extended the block meanwhile
            self.counters.rest_requests += 1
            try:
                return await asyncio.wait_for(call(), self.cfg.rest_timeout_s)
            except BinanceAPIException as exc:
                delay = self._on_api_error(what, exc, attempt)
            except REST_ERRORS as exc:
                self.counters.rest_errors += 1
                delay = backoff_delay(
                    attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng
                )
                log.warning("REST %s failed (%r): retrying in %.2f s", what, exc, delay)
            attempt += 1
            await asyncio.sleep(delay)

    def _on_api_error(self, what: str, exc: BinanceAPIException, attempt: int) -> float:
        """Block REST for Retry-After on 429/418; otherwise back off. Returns this call's delay."""
        backoff = backoff_delay(
            attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng
        )
        if exc.status_code not in RATE_LIMIT_STATUSES:
            self.counters.rest_errors += 1
            log.warning(
                "REST %s: HTTP %s %s: retrying in %.2f s", what, exc.status_code, exc, backoff
            )
            return backoff
        self.counters.rest_rate_limited += 1
        after = retry_after_s(exc)
        # At least Retry-After; never less than our own backoff, so "Retry-After: 0" is no loop.
        block = (
            max(min(after, self.cfg.max_retry_after_s), backoff) if after is not None else backoff
        )
        self._rest_blocked_until = max(self._rest_blocked_until, time.monotonic() + block)
        log.warning(
            "REST %s: HTTP %s (%s): no REST calls for %.1f s",
            what,
            exc.status_code,
            exc.message,
            block,
        )
        return 0.0  # the block itself is the wait
