"""The live Binance feed (real python-binance) against the local fake Binance replaying the
bundled recording: normalisation identical to the replay, reconnect + resync after a dropped
connection, resync after a depth gap, the watchdog, and REST rate limits honoured."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest

from libs.common.messages import Quote, Trade
from libs.common.testing.fake_binance import DEFAULT_DATA, FakeBinanceThread, Recording
from libs.common.testing.fleet import wait_until
from services.market_data.binance import parse_stream_message
from services.market_data.binance_live import (
    AsyncClient,
    BinanceLiveFeed,
    BinanceSocketManager,
    LiveFeedConfig,
    backoff_delay,
    venue_urls,
)
from services.market_data.l2book import DepthSnapshot

SYMBOLS = ("BTCUSDT", "ETHUSDT")
SPEED = 10  # ~2,000 messages/s for both symbols: fast, yet light on a shared 2-core machine
WAIT_S = 15  # every wait below is bounded by this


@pytest.fixture(scope="module")
def recording() -> Recording:
    """The bundled 2024-08-08 recordings, parsed once for the module."""
    return Recording.load(DEFAULT_DATA)


@contextmanager
def live(
    recording: Recording, silence_s: float = 5.0, **fake_kwargs: Any
) -> Iterator[tuple[FakeBinanceThread, BinanceLiveFeed]]:
    """A fake venue and a live feed pointed at it; both stopped afterwards, whatever happens."""
    with FakeBinanceThread(recording, speed=SPEED, **fake_kwargs) as fake:
        cfg = LiveFeedConfig(SYMBOLS, venue_url=fake.url, silence_timeout_s=silence_s)
        feed = BinanceLiveFeed(cfg, rng=random.Random(7))
        feed.start()
        try:
            yield fake, feed
        finally:
            feed.close(timeout_s=10)
            assert not feed.alive, "the feed's thread must end on close()"


def rebuild(recording: Recording, symbol: str, last_update_id: int) -> DepthSnapshot:
    """The book from scratch: the recorded snapshot plus every recorded diff up to
    last_update_id, by plain dict updates (independent of L2Book)."""
    snap = recording.snapshots[symbol]
    bids, asks, last = dict(snap.bids), dict(snap.asks), snap.last_update_id
    for line in recording.lines:
        d = line.diff
        if d is None or line.symbol != symbol or d.last_id <= snap.last_update_id:
            continue
        if d.last_id > last_update_id:
            break
        assert d.first_id <= last + 1, "the recording's chain is unbroken"
        for side, levels in ((bids, d.bids), (asks, d.asks)):
            for price, qty in levels:
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        last = d.last_id
    assert last == last_update_id, f"{symbol}: no recorded diff ends at {last_update_id}"
    return DepthSnapshot(
        last, tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))
    )


def book_at(feed: BinanceLiveFeed, symbol: str, update_id: int) -> DepthSnapshot | None:
    """The feed's book of symbol if it is at update_id."""
    book = feed.book(symbol)
    return book if book is not None and book.last_update_id == update_id else None


def assert_books_match_a_rebuild(
    fake: FakeBinanceThread, feed: BinanceLiveFeed, recording: Recording
) -> None:
    """With the fake paused, each feed book catches up with the venue's and equals a rebuild."""
    fake.pause()
    for symbol in SYMBOLS:
        venue_id = fake.book(symbol).last_update_id
        book = wait_until(
            functools.partial(book_at, feed, symbol, venue_id),
            WAIT_S,
            interval_s=0.05,
            what=f"{symbol} book at the venue's update id {venue_id}",
        )
        assert book == rebuild(recording, symbol, venue_id)
        assert book == fake.book(symbol)
        assert len(book.bids) > 900 and len(book.asks) > 900


def total(counts: dict[str, int]) -> int:
    """Sum of per-symbol counts."""
    return sum(counts.values())


def without_local_times(msg: Trade | Quote) -> Trade | Quote:
    """Drop what depends on when we received it: ts_init, and a quote's ts_event (bookTicker
    has no exchange time, so its event time is the receive time)."""
    if isinstance(msg, Quote):
        return msgspec.structs.replace(msg, ts_event=0, ts_init=0)
    return msgspec.structs.replace(msg, ts_init=0)


def test_trades_and_quotes_arrive_normalised_exactly_as_the_replay_of_the_same_lines(
    recording: Recording,
) -> None:
    with live(recording, paused=True) as (fake, feed):
        wait_until(lambda: fake.connections == 1, WAIT_S, what="the feed's websocket connection")
        fake.resume()
        wait_until(lambda: fake.cursor >= 8_000, WAIT_S, interval_s=0.05, what="8,000 lines sent")
        fake.pause()
        sent = recording.lines[: fake.cursor]
        expected = [parse_stream_message(line.envelope, line.recv_ns, 0) for line in sent]
        want = [without_local_times(m) for m in expected if m is not None]
        got: list[Trade | Quote] = []

        def received_all() -> bool:
            got.extend(feed.drain())
            return len(got) >= len(want)

        wait_until(received_all, WAIT_S, interval_s=0.05, what=f"{len(want)} messages")

        assert [without_local_times(m) for m in got] == want
        assert {type(m) for m in got} == {Trade, Quote}
        assert all(isinstance(m.price, Decimal) for m in got if isinstance(m, Trade))
        stats = feed.stats()
        assert stats["parse_errors"] == 0 and stats["queue_drops"] == 0
        assert stats["gaps"] == 0 and stats["resyncs"] == 0 and stats["reconnects"] == 0
        assert stats["ticker_checks"] > 500 and stats["ticker_mismatches"] == 0
        assert_books_match_a_rebuild(fake, feed, recording)


def test_a_dropped_connection_reconnects_and_resyncs_to_the_book_a_rebuild_gives(
    recording: Recording,
) -> None:
    with live(recording) as (fake, feed):
        wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books synced")
        wait_until(lambda: total(feed.counters.published) > 2_000, WAIT_S, what="2,000 messages")

        assert fake.drop_connections(abrupt=True) == 1

        wait_until(
            lambda: feed.counters.reconnects == 1, WAIT_S, interval_s=0.05, what="a reconnect"
        )
        wait_until(
            lambda: (
                feed.counters.resyncs_by_reason["reconnect"] == 2
                and all(feed.synced(s) for s in SYMBOLS)
            ),
            WAIT_S,
            interval_s=0.05,
            what="both books resynced",
        )
        applied = feed.counters.messages["depth"]
        wait_until(
            lambda: feed.counters.messages["depth"] > applied + 20,
            WAIT_S,
            what="diffs after the resync",
        )
        assert_books_match_a_rebuild(fake, feed, recording)
        stats = feed.stats()
        assert (
            stats["connects"] == 2 and stats["disconnects"] == 1 and stats["watchdog_restarts"] == 0
        )
        assert stats["ticker_mismatches"] == 0 and stats["ticker_checks"] > 0
        assert fake.ws_accepted == 2


def test_a_depth_gap_is_detected_and_resynced_without_reconnecting(recording: Recording) -> None:
    with live(recording) as (fake, feed):
        wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books synced")
        wait_until(lambda: feed.counters.messages["depth"] > 50, WAIT_S, what="diffs applied")

        fake.inject_gap("BTCUSDT")

        wait_until(
            lambda: feed.counters.resyncs_by_reason["gap"] == 1,
            WAIT_S,
            interval_s=0.05,
            what="a gap resync",
        )
        assert feed.counters.gaps == 1
        wait_until(lambda: feed.synced("BTCUSDT"), WAIT_S, what="BTCUSDT synced again")
        assert_books_match_a_rebuild(fake, feed, recording)
        stats = feed.stats()
        assert stats["connects"] == 1 and stats["resyncs"] == 1 and stats["ticker_mismatches"] == 0
        assert len(fake.requests("/api/v3/depth")) == 3  # one per symbol, then BTCUSDT's resync


def test_a_silent_feed_is_restarted_by_the_watchdog_and_staleness_shows_it(
    recording: Recording,
) -> None:
    with live(recording, silence_s=1.5) as (fake, feed):
        wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books synced")
        assert max(feed.staleness().values()) < 1.0

        fake.pause()
        wait_until(
            lambda: min(feed.staleness().values()) > 1.0,
            WAIT_S,
            interval_s=0.05,
            what="stale symbols",
        )
        wait_until(
            lambda: feed.counters.watchdog_restarts >= 1,
            WAIT_S,
            interval_s=0.05,
            what="a watchdog restart",
        )
        wait_until(
            lambda: feed.counters.reconnects >= 1 and fake.connections == 1,
            WAIT_S,
            what="reconnected",
        )

        fake.resume()
        wait_until(
            lambda: max(feed.staleness().values()) < 0.5,
            WAIT_S,
            interval_s=0.05,
            what="fresh symbols",
        )
        wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books resynced")
        assert feed.counters.disconnects == 0


@pytest.mark.parametrize("status", [429, 418])
def test_a_rate_limited_snapshot_waits_for_retry_after_then_succeeds_without_hammering(
    recording: Recording, status: int
) -> None:
    with FakeBinanceThread(recording, speed=SPEED) as fake:
        fake.fail_rest(status=status, times=2, retry_after_s=1, path="/api/v3/depth")
        feed = BinanceLiveFeed(LiveFeedConfig(SYMBOLS, venue_url=fake.url), rng=random.Random(7))
        feed.start()
        try:
            wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books synced")
        finally:
            feed.close()

        depth = fake.requests("/api/v3/depth")
        # Both symbols ask at once and are refused; nobody asks again before Retry-After passes.
        assert [r.status for r in depth] == [status, status, 200, 200]
        last_refusal = max(r.mono for r in depth[:2])
        assert min(r.mono for r in depth[2:]) >= last_refusal + 0.99
        assert feed.counters.rest_rate_limited == 2 and feed.counters.rest_errors == 0
        assert feed.counters.resyncs == 0


def test_a_venue_down_at_start_is_retried_with_backoff_until_it_answers(
    recording: Recording,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = LiveFeedConfig(SYMBOLS, venue_url=f"http://127.0.0.1:{port}", backoff_initial_s=0.2)
    feed = BinanceLiveFeed(cfg, rng=random.Random(7))
    feed.start()
    try:
        wait_until(lambda: feed.counters.connection_failures >= 3, WAIT_S, what="3 failed connects")
        assert feed.counters.rest_errors >= 1  # exchangeInfo, refused too
        assert not any(feed.synced(s) for s in SYMBOLS)
        with FakeBinanceThread(recording, speed=SPEED, port=port) as fake:
            wait_until(lambda: all(feed.synced(s) for s in SYMBOLS), WAIT_S, what="books synced")
            assert fake.ws_accepted == 1
            failures = feed.counters.connection_failures
            assert feed.counters.connects == failures + 1 and feed.counters.reconnects == failures
            # backoff doubles per failure (0.1-0.2 s, 0.2-0.4 s, ...): a handful, not a flood
            assert failures <= 8
    finally:
        feed.close()


def test_python_binance_single_stream_sockets_get_raw_payloads(recording: Recording) -> None:
    with FakeBinanceThread(recording, speed=SPEED, paused=True) as fake:

        async def first_trades(n: int) -> list[dict[str, Any]]:
            client = AsyncClient()
            client.API_URL, stream_url = venue_urls(fake.url)
            bsm = BinanceSocketManager(client)
            bsm.STREAM_URL = stream_url
            try:
                async with bsm.trade_socket("BTCUSDT") as sock:  # /ws/btcusdt@trade
                    fake.resume()
                    return [await asyncio.wait_for(sock.recv(), WAIT_S) for _ in range(n)]
            finally:
                await client.close_connection()

        got = asyncio.run(first_trades(20))
    trades = [line.data for line in recording.lines if line.stream == "btcusdt@trade"]
    assert got == [msgspec.json.decode(data) for data in trades[:20]]


def test_the_fake_accepts_live_subscribe_requests(recording: Recording) -> None:
    with FakeBinanceThread(recording, speed=SPEED, paused=True) as fake:

        async def session() -> list[Any]:
            async with aiohttp.ClientSession() as http, http.ws_connect(fake.url + "/ws") as ws:
                await ws.send_str('{"method":"SUBSCRIBE","params":["ethusdt@trade"],"id":1}')
                await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":2}')
                await ws.send_str('{"method":"SUBSCRIBE","params":"ethusdt@trade","id":3}')
                replies = [await ws.receive_json(timeout=WAIT_S) for _ in range(3)]
                fake.resume()  # only now, so that data cannot come between the replies
                return [*replies, await ws.receive_json(timeout=WAIT_S)]

        replies = asyncio.run(session())
    assert replies[:3] == [
        {"result": None, "id": 1},
        {"result": ["ethusdt@trade"], "id": 2},
        {"error": {"code": 2, "msg": "Invalid request"}, "id": 3},
    ]
    assert replies[3]["e"] == "trade" and replies[3]["s"] == "ETHUSDT"  # raw, no envelope


def http_get(url: str) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as resp:
            return resp.status, dict(resp.headers), msgspec.json.decode(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), msgspec.json.decode(err.read())


def test_the_fake_answers_binances_rest_protocol(recording: Recording) -> None:
    with FakeBinanceThread(recording, paused=True, weight_limit_1m=70) as fake:
        api = fake.url + "/api/v3"
        assert http_get(f"{api}/ping")[:3:2] == (200, {})
        assert http_get(f"{api}/time")[2]["serverTime"] > 1_700_000_000_000
        info = http_get(f'{api}/exchangeInfo?symbols=["ETHUSDT"]')[2]
        assert [
            (s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]
        ] == [("ETHUSDT", "TRADING", "ETH", "USDT")]
        status, headers, depth = http_get(f"{api}/depth?symbol=BTCUSDT&limit=5")
        snap = recording.snapshots["BTCUSDT"]  # nothing replayed yet: the recorded snapshot
        assert status == 200 and depth["lastUpdateId"] == snap.last_update_id
        assert depth["bids"] == [[f"{p:.8f}", f"{q:.8f}"] for p, q in snap.bids[:5]]
        assert depth["asks"] == [[f"{p:.8f}", f"{q:.8f}"] for p, q in snap.asks[:5]]
        assert headers["X-MBX-USED-WEIGHT-1M"] == "27"  # 1 + 1 + 20 + 5
        assert http_get(f"{api}/depth?symbol=NOPE")[::2] == (
            400,
            {"code": -1121, "msg": "Invalid symbol."},
        )
        assert http_get(f"{api}/depth")[2]["code"] == -1102

        # Past the weight limit (70 here; 37 used so far) Binance answers 429 with -1003 and Retry-After.
        status, headers, body = http_get(f"{api}/depth?symbol=BTCUSDT&limit=500")  # weight 25
        status, headers, body = http_get(f"{api}/depth?symbol=BTCUSDT&limit=500")
        assert status == 429 and body["code"] == -1003 and 1 <= int(headers["Retry-After"]) <= 61
        fake.fail_rest(status=418, times=1, retry_after_s=7, path="*")
        status, headers, body = http_get(f"{api}/ping")
        assert (status, body["code"], headers["Retry-After"]) == (418, -1003, "7")
        assert [r.status for r in fake.requests()][-3:] == [200, 429, 418]


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [[backoff_delay(n, 0.5, 30.0, rng) for _ in range(200)] for n in range(10)]
    for n, ds in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**n)
        assert all(ceiling / 2 <= d <= ceiling for d in ds)
        assert len({round(d, 6) for d in ds}) > 150  # jittered: clients do not retry in lockstep
    assert backoff_delay(10_000, 0.5, 30.0) <= 30.0


def test_venue_urls_point_python_binance_at_a_base_url() -> None:
    assert venue_urls("http://127.0.0.1:8765") == (
        "http://127.0.0.1:8765/api",
        "ws://127.0.0.1:8765/",
    )
    assert venue_urls("https://example.test/") == (
        "https://example.test/api",
        "wss://example.test/",
    )
    with pytest.raises(ValueError):
        venue_urls("127.0.0.1:8765")
