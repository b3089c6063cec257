"""A local fake of Alpaca's market-data service (websocket streams + a little REST) that replays
the bundled Binance recording re-expressed as Alpaca messages.

What alpaca-py (0.44) and Alpaca's public docs show of the protocol, as the fake speaks it:

  WS    /v1beta3/crypto/us (crypto), /v2/iex and /v2/sip (stocks). On connect the server sends
        [{"T":"success","msg":"connected"}]; the client sends {"action":"auth","key":..,
        "secret":..} and gets [{"T":"success","msg":"authenticated"}]; then
        {"action":"subscribe","trades":[..],"quotes":[..],"bars":[..]} (and "unsubscribe"),
        answered by [{"T":"subscription", <every channel>: [symbols], ...}]. Data comes as
        arrays of {"T":"t"|"q"|"b","S":symbol,...}. A client that sends the handshake header
        `Content-Type: application/msgpack` (alpaca-py always does) gets binary msgpack frames,
        prices as float64 and `t` as a msgpack timestamp (ns); any other gets JSON text frames
        with `t` as RFC 3339 with nanoseconds and prices as exact JSON numbers.
        Errors are [{"T":"error","code":N,"msg":..}] with Alpaca's codes: 400 invalid syntax,
        401 not authenticated, 402 auth failed, 403 already authenticated, 404 auth timeout,
        405 symbol limit exceeded, 406 connection limit exceeded, 407 slow client,
        409 insufficient subscription, 410 invalid subscribe action for this feed. After 402,
        404, 406, 407 and 409 the server closes the connection.
  REST  GET /v1beta3/crypto/us/latest/{trades,quotes,bars}?symbols=A,B and
        /v1beta3/crypto/us/bars?symbols=..&timeframe=1Min: the state as of the last replayed
        message, as CryptoHistoricalDataClient(url_override=...) reads it. With auth rejected,
        401 {"message": "unauthorized"}.

The recording: BINANCE_SYMBOL -> "BASE/QUOTE" on the crypto stream (BTCUSDT -> "BTC/USDT", a
pair Alpaca lists), the Binance symbol itself on the stock streams (the same data in stock
message shapes, for exercising StockDataStream). Trades keep Binance's trade time, id, price,
size and taker side (`m` true -> "S"); quotes are bookTickers stamped with the recorder's
receive time (bookTicker has no exchange time); 1-minute bars are built from the trades and sent
when a symbol's first trade of a later minute is replayed (as Alpaca sends a bar just after its
minute). Prices and sizes stay the recording's decimals until they are put on the wire.

Test controls: pause/resume, drop every connection, reject authentication (402), a connection
limit per key (406), a symbol limit (405), SIP refused (409), and counters of connections,
auth attempts and errors sent.

Run it for demos: `python -m libs.common.testing.fake_alpaca --port 8766 --speed 10`, then point
alpaca-py at ws://127.0.0.1:8766/v1beta3/crypto/us (`url_override`) with any key and secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgpack
import msgspec
from aiohttp import WSMsgType, web

from libs.common.config import DEFAULT_CONFIG
from libs.common.messages import Quote, Trade
from libs.common.testing.loop_thread import FakeOnLoopThread
from services.market_data.alpaca import STREAM_ERRORS
from services.market_data.binance import ParseError, parse_stream_message
from services.market_data.replay import LineCounter, read_lines

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DATA = tuple(
    DEFAULT_CONFIG.parents[1] / "data" / "binance" / f"spot_{s}_20240808.gz"
    for s in ("btcusdt", "ethusdt")
)
QUOTE_ASSETS = ("USDT", "USDC", "USD", "BTC", "ETH")
CRYPTO_CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
STOCK_CHANNELS = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
)
CHANNEL_OF = {"t": "trades", "q": "quotes", "b": "bars"}
ERRORS = STREAM_ERRORS
CLOSING_ERRORS = frozenset({402, 404, 406, 407, 409})
AUTH_TIMEOUT_S = 10.0  # Alpaca closes a connection that has not authenticated within 10 s
SLOW_CLIENT_FRAMES = 10_000  # frames queued for one client before it is cut off (407)
BATCH_MAX = 500  # messages per frame at most when several are due at once
MINUTE_NS = 60_000_000_000
_json = msgspec.json.Encoder(decimal_format="number")  # exact digits, as JSON numbers


def pair_of(binance_symbol: str) -> str:
    """Alpaca's crypto pair for a Binance symbol: BTCUSDT -> BTC/USDT."""
    for quote in QUOTE_ASSETS:
        if binance_symbol.endswith(quote) and binance_symbol != quote:
            return f"{binance_symbol[: -len(quote)]}/{quote}"
    raise ValueError(f"no known quote asset in {binance_symbol!r}")


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC with nine fractional digits, as Alpaca's JSON carries timestamps."""
    seconds, frac = divmod(ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{frac:09d}Z"


# --- the recording as Alpaca events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One Alpaca message to send: `fields` are crypto-shaped, money still Decimal, `t` int ns."""

    recv_ns: int  # replay pacing (the recorder's clock)
    kind: Literal["t", "q", "b"]
    symbol: str  # the Binance symbol, e.g. "BTCUSDT"
    fields: dict[str, Any]


@dataclass
class _BarBuilder:
    """One symbol's minute bar in the making."""

    minute_ns: int
    o: Decimal
    h: Decimal
    low: Decimal
    c: Decimal
    v: Decimal = Decimal(0)
    n: int = 0
    notional: Decimal = Decimal(0)

    def add(self, trade: Trade) -> None:
        """Fold one trade in."""
        self.h, self.low, self.c = max(self.h, trade.price), min(self.low, trade.price), trade.price
        self.v += trade.qty
        self.n += 1
        self.notional += trade.price * trade.qty

    def fields(self) -> dict[str, Any]:
        """Alpaca's bar fields (t: the minute's start)."""
        vw = (self.notional / self.v).quantize(Decimal("1e-9")) if self.v else self.c
        return {
            "t": self.minute_ns,
            "o": self.o,
            "h": self.h,
            "l": self.low,
            "c": self.c,
            "v": self.v,
            "n": self.n,
            "vw": vw,
        }


@dataclass(frozen=True)
class AlpacaRecording:
    """Every trade, quote and bar of the recordings, in replay order."""

    events: tuple[Event, ...]
    symbols: tuple[str, ...]  # Binance symbols

    @classmethod
    def load(cls, paths: Iterable[Path]) -> AlpacaRecording:
        """Parse recordings (one symbol per file, as recorded) and build the bars."""
        per_file = [list(_ticks(Path(p))) for p in paths]
        merged = heapq.merge(*per_file, key=lambda item: item[0])
        events = list(_with_bars(merged))
        return cls(tuple(events), tuple(sorted({e.symbol for e in events})))

    def trades(self, symbol: str) -> list[Event]:
        """A symbol's trade events (tests compare against them)."""
        return [e for e in self.events if e.kind == "t" and e.symbol == symbol]


def _ticks(path: Path) -> Iterator[tuple[int, Trade | Quote]]:
    """(recv_ns, Trade | Quote) for one file, parsed by the Binance normaliser."""
    for recv_ns, raw in read_lines(path, LineCounter()):
        try:
            msg = parse_stream_message(raw, recv_ns, recv_ns)
        except ParseError as exc:
            log.warning("%s: unparseable line skipped: %s", path.name, exc)
            continue
        if msg is not None:
            yield recv_ns, msg


def _with_bars(ticks: Iterable[tuple[int, Trade | Quote]]) -> Iterator[Event]:
    """Trade and quote events, each symbol's bar sent before its first trade of a later minute."""
    bars: dict[str, _BarBuilder] = {}
    for recv_ns, msg in ticks:
        if isinstance(msg, Quote):
            yield Event(recv_ns, "q", msg.symbol, _quote_fields(msg))
            continue
        minute = msg.ts_event - msg.ts_event % MINUTE_NS
        bar = bars.get(msg.symbol)
        if bar is not None and minute > bar.minute_ns:
            yield Event(recv_ns, "b", msg.symbol, bar.fields())
            bar = None
        if bar is None:
            bar = bars[msg.symbol] = _BarBuilder(minute, msg.price, msg.price, msg.price, msg.price)
        if minute == bar.minute_ns:  # a trade of an already-sent minute is in no bar
            bar.add(msg)
        yield Event(recv_ns, "t", msg.symbol, _trade_fields(msg))


def _trade_fields(t: Trade) -> dict[str, Any]:
    """Alpaca crypto trade fields."""
    return {
        "t": t.ts_event,
        "p": t.price,
        "s": t.qty,
        "i": t.trade_id,
        "tks": "B" if t.aggressor == "buy" else "S",
    }


def _quote_fields(q: Quote) -> dict[str, Any]:
    """Alpaca crypto quote fields."""
    return {"t": q.ts_event, "bp": q.bid_px, "bs": q.bid_qty, "ap": q.ask_px, "as": q.ask_qty}


# --- wire formats -------------------------------------------------------------------------------


def render(event: Event, asset_class: str, name: str) -> dict[str, Any]:
    """The message dict (money Decimal, t int ns) for crypto or stock streams."""
    out: dict[str, Any] = {"T": event.kind, "S": name, **event.fields}
    if asset_class == "stocks":
        if event.kind == "t":
            del out["tks"]  # stock trades carry no taker side
            out.update(x="V", c=["@"], z="C")
        elif event.kind == "q":
            out.update(bx="V", ax="V", c=["R"], z="C")
    return out


def encode(messages: Sequence[dict[str, Any]], fmt: str) -> bytes | str:
    """One frame: msgpack (float64 money, timestamp ext) or JSON text (exact numbers, RFC 3339)."""
    if fmt == "msgpack":
        return msgpack.packb([_for_msgpack(m) for m in messages])
    return _json.encode([_for_json(m) for m in messages]).decode()


def _for_msgpack(msg: dict[str, Any]) -> dict[str, Any]:
    """Decimal -> float (what Alpaca's msgpack carries), t -> msgpack timestamp."""
    return {
        k: (
            msgpack.Timestamp.from_unix_nano(v)
            if k == "t" and isinstance(v, int)
            else float(v)
            if isinstance(v, Decimal)
            else v
        )
        for k, v in msg.items()
    }


def _for_json(msg: dict[str, Any]) -> dict[str, Any]:
    """t -> RFC 3339 text; Decimals are written as exact JSON numbers by the encoder."""
    return {k: (rfc3339(v) if k == "t" and isinstance(v, int) else v) for k, v in msg.items()}


def error(code: int, msg: str | None = None) -> dict[str, Any]:
    """Alpaca's error message."""
    return {"T": "error", "code": code, "msg": msg or ERRORS[code]}


# --- the server ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    """One websocket client."""

    ws: web.WebSocketResponse
    request: web.Request
    asset_class: Literal["crypto", "stocks"]
    feed: str  # "us", "iex", "sip"
    fmt: Literal["msgpack", "json"]
    key: str = ""
    authenticated: bool = False
    subs: dict[str, set[str]] = field(default_factory=dict)
    queue: asyncio.Queue[bytes | str | None] = field(default_factory=asyncio.Queue)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this endpoint answers with."""
        return CRYPTO_CHANNELS if self.asset_class == "crypto" else STOCK_CHANNELS

    def wants(self, channel: str, name: str) -> bool:
        """Whether this client subscribed to channel for name (or "*")."""
        subs = self.subs.get(channel)
        return bool(subs) and (name in subs or "*" in subs)  # type: ignore[operator]


class FakeAlpaca:
    """The fake venue; every method runs on its event loop (see FakeAlpacaThread for tests)."""

    def __init__(
        self,
        recording: AlpacaRecording,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        paused: bool = False,
        connection_limit: int | None = None,
        symbol_limit: int | None = None,
        sip_allowed: bool = True,
        auth_timeout_s: float = AUTH_TIMEOUT_S,
    ) -> None:
        self.recording = recording
        self.host = host
        self.port = port
        self.speed = speed
        self.connection_limit = connection_limit  # authenticated connections per key and feed
        self.symbol_limit = symbol_limit  # trades + quotes symbols per connection
        self.sip_allowed = sip_allowed
        self.auth_timeout_s = auth_timeout_s
        self.reject_auth = False
        self.cursor = 0
        self.ws_accepted = 0  # websocket connections accepted (every attempt that got through)
        self.auth_attempts = 0
        self.errors_sent: dict[int, int] = {}
        self.sent: dict[str, int] = {"t": 0, "q": 0, "b": 0}  # events replayed (not per client)
        self.latest: dict[tuple[str, str], Event] = {}  # (kind, symbol) -> last replayed
        self.bars: dict[str, list[Event]] = {}
        self._conns: set[_Conn] = set()
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self._anchor: tuple[float, int] | None = None
        self._runner: web.AppRunner | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self._pairs = {s: pair_of(s) for s in recording.symbols}
        self._from_pair = {p: s for s, p in self._pairs.items()}

    @property
    def url(self) -> str:
        """Base URL: REST under it; websockets at ws://host:port/v1beta3/crypto/us, /v2/iex."""
        return f"http://{self.host}:{self.port}"

    def stream_url(self, path: str = "/v1beta3/crypto/us") -> str:
        """A websocket endpoint's URL (alpaca-py's `url_override`)."""
        return f"ws://{self.host}:{self.port}{path}"

    def name_of(self, symbol: str, asset_class: str = "crypto") -> str:
        """The name a Binance symbol has on a stream: "BTC/USDT" (crypto) or itself (stocks)."""
        return self._pairs[symbol] if asset_class == "crypto" else symbol

    async def start(self) -> None:
        """Listen and start replaying (unless paused)."""
        app = web.Application()
        app.router.add_get("/v1beta3/crypto/{loc}", self._ws_crypto)
        app.router.add_get("/v2/{feed}", self._ws_stocks)
        app.router.add_get("/v1beta3/crypto/{loc}/latest/{what}", self._rest_latest)
        app.router.add_get("/v1beta3/crypto/{loc}/bars", self._rest_bars)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
        """Disconnect every client: a TCP abort (network failure) or a close frame."""
        conns = list(self._conns)
        for conn in conns:
            if abrupt and conn.request.transport is not None:
                conn.request.transport.abort()
            else:
                await conn.ws.close(code=1001, message=b"going away")
        return len(conns)

    @property
    def connections(self) -> int:
        """Open websocket connections."""
        return len(self._conns)

    # --- replay ------------------------------------------------------------------------------

    async def _replay(self) -> None:
        """Send every event at its paced time, batching those due together, then stay quiet."""
        events = self.recording.events
        while self.cursor < len(events):
            await self._running.wait()
            await self._pace(events[self.cursor].recv_ns)
            if not self._running.is_set():
                continue  # paused while waiting
            batch = self._due_batch()
            self._emit(batch)
        self.finished.set()
        log.info("fake alpaca: recording finished (%d events)", len(events))

    def _due_batch(self) -> list[Event]:
        """The next event and every following one that is already due (up to BATCH_MAX)."""
        events = self.recording.events
        batch = [events[self.cursor]]
        self.cursor += 1
        while self.cursor < len(events) and len(batch) < BATCH_MAX:
            if self._delay(events[self.cursor].recv_ns) > 0.001:
                break
            batch.append(events[self.cursor])
            self.cursor += 1
        return batch

    def _delay(self, recv_ns: int) -> float:
        """Seconds until an event recorded at recv_ns is due (0 when flat out)."""
        if self.speed <= 0:
            return 0.0
        if self._anchor is None:
            self._anchor = (time.monotonic(), recv_ns)
        mono0, recv0 = self._anchor
        return mono0 + (recv_ns - recv0) / 1e9 / self.speed - time.monotonic()

    async def _pace(self, recv_ns: int) -> None:
        """Wait until the event is due; always yield so clients and REST get in."""
        delay = self._delay(recv_ns)
        await asyncio.sleep(delay if delay > 0.001 else 0)

    def _emit(self, batch: list[Event]) -> None:
        """Record the events as the latest state and queue one frame per interested client."""
        for ev in batch:
            self.sent[ev.kind] += 1
            self.latest[(ev.kind, ev.symbol)] = ev
            if ev.kind == "b":
                self.bars.setdefault(ev.symbol, []).append(ev)
        for conn in list(self._conns):
            if not conn.authenticated:
                continue
            wanted = [
                render(ev, conn.asset_class, self.name_of(ev.symbol, conn.asset_class))
                for ev in batch
                if conn.wants(CHANNEL_OF[ev.kind], self.name_of(ev.symbol, conn.asset_class))
            ]
            if not wanted:
                continue
            if conn.queue.qsize() >= SLOW_CLIENT_FRAMES:
                self._slow(conn)
                continue
            conn.queue.put_nowait(encode(wanted, conn.fmt))

    def _slow(self, conn: _Conn) -> None:
        """A client too far behind: drop its backlog, tell it 407, close (as Alpaca does)."""
        while not conn.queue.empty():
            conn.queue.get_nowait()
        self._fail(conn, 407)

    # --- websocket ---------------------------------------------------------------------------

    async def _ws_crypto(self, request: web.Request) -> web.StreamResponse:
        """/v1beta3/crypto/us."""
        if request.match_info["loc"] != "us":
            raise web.HTTPNotFound()
        return await self._ws(request, "crypto", "us")

    async def _ws_stocks(self, request: web.Request) -> web.StreamResponse:
        """/v2/iex, /v2/sip."""
        feed = request.match_info["feed"]
        if feed not in ("iex", "sip"):
            raise web.HTTPNotFound()
        return await self._ws(request, "stocks", feed)

    async def _ws(
        self, request: web.Request, asset_class: Literal["crypto", "stocks"], feed: str
    ) -> web.WebSocketResponse:
        """One client connection: welcome, auth, subscriptions, data."""
        msgpack_wanted = request.headers.get("Content-Type", "") == "application/msgpack"
        ws = web.WebSocketResponse(heartbeat=None)  # the client pings (alpaca-py every 10 s)
        await ws.prepare(request)
        conn = _Conn(ws, request, asset_class, feed, "msgpack" if msgpack_wanted else "json")
        self._conns.add(conn)
        self.ws_accepted += 1
        writer = asyncio.create_task(self._write(conn))
        timeout = asyncio.get_running_loop().call_later(
            self.auth_timeout_s, self._auth_timeout, conn
        )
        self._send(conn, [{"T": "success", "msg": "connected"}])
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    self._on_request(conn, msg.data)
        finally:
            timeout.cancel()
            self._conns.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _write(self, conn: _Conn) -> None:
        """Send queued frames in order; None closes the connection."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                frame = await conn.queue.get()
                if frame is None:
                    await conn.ws.close()
                    return
                if isinstance(frame, bytes):
                    await conn.ws.send_bytes(frame)
                else:
                    await conn.ws.send_str(frame)

    def _send(self, conn: _Conn, messages: list[dict[str, Any]], close: bool = False) -> None:
        """Queue a control frame (and a close after it)."""
        conn.queue.put_nowait(encode(messages, conn.fmt))
        if close:
            conn.queue.put_nowait(None)

    def _fail(self, conn: _Conn, code: int) -> None:
        """Send an error; the codes Alpaca closes on close the connection."""
        self._count_error(code)
        if code in CLOSING_ERRORS:
            conn.authenticated = False  # nothing more is sent to it but the close
        self._send(conn, [error(code)], close=code in CLOSING_ERRORS)

    def _count_error(self, code: int) -> None:
        """Count an error sent."""
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1

    def _auth_timeout(self, conn: _Conn) -> None:
        """404 for a client that never authenticated."""
        if not conn.authenticated and conn in self._conns:
            self._fail(conn, 404)

    def _on_request(self, conn: _Conn, data: bytes | str) -> None:
        """One client message (msgpack or JSON, whatever the frame's format)."""
        try:
            req = msgpack.unpackb(data) if isinstance(data, bytes) else msgspec.json.decode(data)
            action = req["action"] if isinstance(req, dict) else None
        except (ValueError, msgspec.DecodeError, KeyError, TypeError):
            action = None
        if action == "auth":
            self._auth(conn, req)
        elif action in ("subscribe", "unsubscribe"):
            self._subscription(conn, req, action == "subscribe")
        else:
            self._fail(conn, 400)

    def _auth(self, conn: _Conn, req: dict[str, Any]) -> None:
        """Check the keys, the feed and the connection limit."""
        self.auth_attempts += 1
        if conn.authenticated:
            return self._fail(conn, 403)
        key, secret = req.get("key"), req.get("secret")
        if self.reject_auth or not isinstance(key, str) or not key or not secret:
            return self._fail(conn, 402)
        if conn.feed == "sip" and not self.sip_allowed:
            return self._fail(conn, 409)
        if self.connection_limit is not None and self._open_sessions(key, conn.feed) >= (
            self.connection_limit
        ):
            return self._fail(conn, 406)
        conn.key, conn.authenticated = key, True
        conn.subs = {ch: set() for ch in conn.channels}
        self._send(conn, [{"T": "success", "msg": "authenticated"}])
        return None

    def _open_sessions(self, key: str, feed: str) -> int:
        """Authenticated connections of this key on this feed."""
        return sum(1 for c in self._conns if c.authenticated and c.key == key and c.feed == feed)

    def _subscription(self, conn: _Conn, req: dict[str, Any], add: bool) -> None:
        """Apply a (un)subscribe request and answer with the whole subscription."""
        if not conn.authenticated:
            return self._fail(conn, 401)
        changes: dict[str, list[str]] = {}
        for channel, names in req.items():
            if channel == "action":
                continue
            if channel not in conn.channels or channel in ("corrections", "cancelErrors"):
                return self._fail(conn, 410)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return self._fail(conn, 400)
            changes[channel] = names
        for channel, names in changes.items():
            (conn.subs[channel].update if add else conn.subs[channel].difference_update)(names)
        if conn.asset_class == "stocks":  # corrections and cancel errors follow trades
            conn.subs["corrections"] = set(conn.subs["trades"])
            conn.subs["cancelErrors"] = set(conn.subs["trades"])
        if self.symbol_limit is not None and self._symbols(conn) > self.symbol_limit:
            for channel, names in changes.items():  # refused: the subscription stays as it was
                (conn.subs[channel].difference_update if add else conn.subs[channel].update)(names)
            return self._fail(conn, 405)
        answer: dict[str, Any] = {"T": "subscription"}
        answer.update({ch: sorted(conn.subs[ch]) for ch in conn.channels})
        self._send(conn, [answer])
        return None

    @staticmethod
    def _symbols(conn: _Conn) -> int:
        """Distinct trade and quote symbols (bars are not limited on Alpaca)."""
        return len(conn.subs["trades"] | conn.subs["quotes"])

    # --- REST --------------------------------------------------------------------------------

    def _rest_symbols(self, request: web.Request) -> list[str] | web.Response:
        """The requested pairs, or an error answer."""
        if self.reject_auth:
            return web.json_response({"message": "unauthorized"}, status=401)
        if request.match_info["loc"] != "us":
            return web.json_response({"message": "Not Found"}, status=404)
        raw = request.query.get("symbols", "")
        names = [s for s in raw.split(",") if s]
        if not names:
            return web.json_response({"message": "missing symbols"}, status=400)
        return names

    async def _rest_latest(self, request: web.Request) -> web.Response:
        """GET .../latest/{trades,quotes,bars}: the last replayed of each known pair."""
        names = self._rest_symbols(request)
        if isinstance(names, web.Response):
            return names
        what = request.match_info["what"]
        kind = {"trades": "t", "quotes": "q", "bars": "b"}.get(what)
        if kind is None:
            return web.json_response({"message": "Not Found"}, status=404)
        out: dict[str, Any] = {}
        for name in names:
            ev = self.latest.get((kind, self._from_pair.get(name, "")))
            if ev is not None:
                out[name] = _for_json({**ev.fields})
        return _json_response({what: out})

    async def _rest_bars(self, request: web.Request) -> web.Response:
        """GET .../bars?symbols=&timeframe=1Min: the minute bars replayed so far (one page)."""
        names = self._rest_symbols(request)
        if isinstance(names, web.Response):
            return names
        if request.query.get("timeframe", "1Min") not in ("1Min", "1T"):
            return web.json_response({"message": "only 1Min bars in the fake"}, status=422)
        out = {
            name: [
                _for_json({**ev.fields}) for ev in self.bars.get(self._from_pair.get(name, ""), [])
            ]
            for name in names
        }
        return _json_response({"bars": out, "next_page_token": None})


def _json_response(body: dict[str, Any]) -> web.Response:
    """A JSON answer whose numbers keep their exact digits."""
    return web.Response(body=_json.encode(body), content_type="application/json")


# --- running it in a thread (tests) or as a program (demos) -------------------------------------


class FakeAlpacaThread(FakeOnLoopThread[FakeAlpaca]):
    """A FakeAlpaca on its own event loop in a daemon thread, with blocking controls."""

    def __init__(self, recording: AlpacaRecording, **kwargs: Any) -> None:
        super().__init__(lambda: FakeAlpaca(recording, **kwargs), "fake-alpaca")

    def stream_url(self, path: str = "/v1beta3/crypto/us") -> str:
        """See FakeAlpaca.stream_url."""
        assert self.fake is not None, "not started"
        return self.fake.stream_url(path)

    def set(self, **attrs: Any) -> None:
        """Change controls: reject_auth, connection_limit, symbol_limit, sip_allowed, speed."""
        allowed = {"reject_auth", "connection_limit", "symbol_limit", "sip_allowed", "speed"}
        unknown = set(attrs) - allowed
        if unknown:
            raise ValueError(f"not a control: {', '.join(sorted(unknown))}")

        def apply(fake: FakeAlpaca) -> None:
            for name, value in attrs.items():
                setattr(fake, name, value)

        self.call(apply)

    def stats(self) -> dict[str, Any]:
        """Counters: ws_accepted, auth_attempts, errors_sent, sent, cursor, connections."""
        return self.call(
            lambda f: {
                "ws_accepted": f.ws_accepted,
                "auth_attempts": f.auth_attempts,
                "errors_sent": dict(f.errors_sent),
                "sent": dict(f.sent),
                "cursor": f.cursor,
                "connections": f.connections,
            }
        )


async def _serve(args: argparse.Namespace) -> None:
    """Run until cancelled (Ctrl-C, SIGTERM)."""
    recording = AlpacaRecording.load(args.data)
    fake = FakeAlpaca(recording, host=args.host, port=args.port, speed=args.speed)
    await fake.start()
    pairs = ", ".join(fake.name_of(s) for s in recording.symbols)
    print(
        f"fake alpaca on {fake.url}: crypto {fake.stream_url()}, stocks "
        f"{fake.stream_url('/v2/iex')}; {len(recording.events)} events of {pairs} "
        f"at speed {args.speed or 'max'}",
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m libs.common.testing.fake_alpaca --port N --speed X [--data FILE ...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766, help="0 picks a free port")
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
