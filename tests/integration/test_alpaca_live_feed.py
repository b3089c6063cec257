"""The live Alpaca feed (real alpaca-py streams) against the local fake Alpaca replaying the
bundled recording: exact normalised trades and quotes, bars counted, reconnect after a dropped
connection, refusals (auth, connection limit, SIP) without a tight reconnect loop, the
watchdog, the stock stream, and the REST client. Every wait is bounded; all traffic is local."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from libs.common.config import load_config
from libs.common.messages import Quote, Trade
from libs.common.testing.credentials import throwaway_pair
from libs.common.testing.fake_alpaca import DEFAULT_DATA, AlpacaRecording, Event, FakeAlpacaThread
from libs.common.testing.fleet import wait_until
from services.market_data.alpaca import AlpacaSymbol, symbols_from_instruments
from services.market_data.alpaca_live import AlpacaFeedConfig, AlpacaLiveFeed, stream_url

SYMBOLS = ("BTCUSDT", "ETHUSDT")
SPEED = 20  # ~4,000 messages/s: the first minute bars come ~2.5 s in
WAIT_S = 15  # every wait below is bounded by this
_KEY, _SECRET = throwaway_pair("alpaca-data")  # the fake data stream accepts any pair
KEYS = {"api_key": _KEY, "secret_key": _SECRET}


@pytest.fixture(scope="module")
def recording() -> AlpacaRecording:
    """The bundled 2024-08-08 recordings as Alpaca events, built once for the module."""
    return AlpacaRecording.load(DEFAULT_DATA)


@pytest.fixture(scope="module")
def symbols() -> tuple[AlpacaSymbol, ...]:
    """BTC/USDT and ETH/USDT with the fleet config's increments."""
    return symbols_from_instruments(load_config().instruments, SYMBOLS)


@contextmanager
def live(
    recording: AlpacaRecording,
    symbols: tuple[AlpacaSymbol, ...],
    feed_kwargs: dict[str, Any] | None = None,
    **fake_kwargs: Any,
) -> Iterator[tuple[FakeAlpacaThread, AlpacaLiveFeed]]:
    """A fake venue and a live feed pointed at it; both stopped afterwards, whatever happens."""
    with FakeAlpacaThread(recording, **{"speed": SPEED, **fake_kwargs}) as fake:
        kwargs = {**KEYS, "venue_url": fake.url, "backoff_initial_s": 0.2, **(feed_kwargs or {})}
        feed = AlpacaLiveFeed(AlpacaFeedConfig(symbols, **kwargs), rng=random.Random(7))
        feed.start()
        try:
            yield fake, feed
        finally:
            feed.close(timeout_s=10)
            assert not feed.alive, "the feed's thread must end on close()"


def collect(feed: AlpacaLiveFeed, out: list[Trade | Quote]) -> int:
    """Drain what is waiting into out; returns how many messages out holds."""
    out.extend(feed.drain())
    return len(out)


def by_kind(recording: AlpacaRecording, kind: str, symbol: str) -> list[Event]:
    """The recording's events of one kind and symbol, in replay order."""
    return [e for e in recording.events if e.kind == kind and e.symbol == symbol]


def test_trades_and_quotes_arrive_exact_and_bars_are_counted(
    recording: AlpacaRecording, symbols: tuple[AlpacaSymbol, ...]
) -> None:
    """From the first replayed message on, every trade and quote equals the recording's, to the
    last digit and nanosecond; the first minute bar of each symbol arrives and is counted."""
    with live(recording, symbols, paused=True) as (fake, feed):
        wait_until(lambda: feed.stats()["subscriptions"] >= 1, WAIT_S, what="subscribed")
        fake.resume()
        got: list[Trade | Quote] = []
        wait_until(
            lambda: collect(feed, got) and all(feed.stats()["bars"][s] >= 1 for s in SYMBOLS),
            WAIT_S,
            what="a bar of each symbol",
        )
        fake.pause()
        sent = fake.stats()["sent"]  # every trade and quote replayed went to this one client
        wait_until(
            lambda: sum(feed.stats()["published"].values()) == sent["t"] + sent["q"],
            WAIT_S,
            what="everything sent to arrive",
        )
        collect(feed, got)
        stats = feed.stats()
    for symbol in SYMBOLS:
        trades = [m for m in got if isinstance(m, Trade) and m.symbol == symbol]
        quotes = [m for m in got if isinstance(m, Quote) and m.symbol == symbol]
        want_t = by_kind(recording, "t", symbol)[: len(trades)]
        want_q = by_kind(recording, "q", symbol)[: len(quotes)]
        assert len(trades) > 100 and len(quotes) > 100
        assert [(t.trade_id, t.price, t.qty, t.ts_event) for t in trades] == [
            (e.fields["i"], e.fields["p"], e.fields["s"], e.fields["t"]) for e in want_t
        ]
        assert [(q.bid_px, q.bid_qty, q.ask_px, q.ask_qty, q.ts_event) for q in quotes] == [
            (e.fields["bp"], e.fields["bs"], e.fields["ap"], e.fields["as"], e.fields["t"])
            for e in want_q
        ]
        assert all(t.venue == "alpaca" for t in trades)
        assert trades[0].price.as_tuple().exponent == -2  # quantised to the 0.01 increment
        assert stats["published"][symbol] == len(trades) + len(quotes)
    assert stats["messages"]["bar"] == sum(stats["bars"].values()) == sent["b"] >= 2
    assert (stats["inexact"], stats["parse_errors"], stats["queue_drops"]) == (0, 0, 0)
    assert (stats["connects"], stats["reconnects"], stats["error"]) == (1, 0, None)


def test_a_dropped_connection_is_reconnected_counted_and_data_resumes(
    recording: AlpacaRecording, symbols: tuple[AlpacaSymbol, ...]
) -> None:
    """A network failure mid-stream: the feed reconnects after a backoff, resubscribes (a
    resync), and trades and quotes flow again; everything is counted on both sides."""
    with live(recording, symbols) as (fake, feed):
        wait_until(lambda: sum(feed.stats()["published"].values()) > 500, WAIT_S, what="data")
        assert fake.drop_connections() == 1
        wait_until(lambda: feed.stats()["reconnects"] >= 1, WAIT_S, what="a reconnect")
        before = sum(feed.stats()["published"].values())
        wait_until(
            lambda: sum(feed.stats()["published"].values()) > before + 500,
            WAIT_S,
            what="data after the reconnect",
        )
        stats, fake_stats = feed.stats(), fake.stats()
    assert stats["disconnects"] == 1 and stats["reconnects"] == 1 and stats["connects"] == 2
    assert stats["resyncs"] == 1 and stats["subscriptions"] == 2
    assert fake_stats["ws_accepted"] == 2 and fake_stats["auth_attempts"] == 2
    assert max(stats["staleness_s"].values()) < 5


def test_auth_failure_is_a_clear_error_without_a_reconnect_loop(
    recording: AlpacaRecording, symbols: tuple[AlpacaSymbol, ...]
) -> None:
    """402 auth failed: the feed stops with an error naming it; the fake sees one attempt."""
    with FakeAlpacaThread(recording, speed=SPEED) as fake:
        fake.set(reject_auth=True)
        cfg = AlpacaFeedConfig(symbols, venue_url=fake.url, backoff_initial_s=0.05, **KEYS)
        feed = AlpacaLiveFeed(cfg)
        feed.start()
        try:
            wait_until(lambda: not feed.alive, WAIT_S, what="the feed to stop")
            time.sleep(1.0)  # a reconnect loop would show up here
            fake_stats = fake.stats()
        finally:
            feed.close()
    assert feed.error is not None and "auth failed" in feed.error and "402" in feed.error
    assert fake_stats["ws_accepted"] == 1 and fake_stats["auth_attempts"] == 1
    assert fake_stats["errors_sent"] == {402: 1}
    stats = feed.stats()
    assert (stats["auth_failures"], stats["venue_errors"], stats["reconnects"]) == (1, {402: 1}, 0)


def test_connection_limit_is_retried_with_growing_backoff(
    recording: AlpacaRecording, symbols: tuple[AlpacaSymbol, ...]
) -> None:
    """406 connection limit exceeded: retried, but with exponential backoff (a handful of
    attempts in 3 s, not hundreds), and the feed streams once the venue lets it in."""
    with live(recording, symbols, connection_limit=0) as (fake, feed):
        time.sleep(3.0)
        attempts = fake.stats()["ws_accepted"]
        fake.set(connection_limit=None)
        wait_until(lambda: sum(feed.stats()["published"].values()) > 100, WAIT_S, what="data")
        stats = feed.stats()
    # 0.2 s initial backoff with equal jitter: waits of >= 0.1, 0.2, 0.4, 0.8, 1.6 s ...
    assert 3 <= attempts <= 6
    assert stats["venue_errors"][406] == stats["auth_failures"] >= attempts - 1
    assert stats["error"] is None and stats["subscriptions"] == 1


def test_the_watchdog_restarts_a_silent_feed_and_staleness_grows(
    recording: AlpacaRecording, symbols: tuple[AlpacaSymbol, ...]
) -> None:
    """A connection that stays open but sends nothing is restarted (counted); staleness says
    how long each symbol has been silent."""
    with live(recording, symbols, feed_kwargs={"silence_timeout_s": 1.0}) as (fake, feed):
        wait_until(lambda: sum(feed.stats()["published"].values()) > 100, WAIT_S, what="data")
        fake.pause()
        wait_until(lambda: feed.stats()["watchdog_restarts"] >= 1, WAIT_S, what="the watchdog")
        stale = feed.staleness()
        fake.resume()
        wait_until(lambda: max(feed.staleness().values()) < 0.5, WAIT_S, what="fresh data")
        stats, accepted = feed.stats(), fake.stats()["ws_accepted"]
    assert min(stale.values()) > 1.0
    assert stats["reconnects"] >= 1 and accepted >= 2 and stats["disconnects"] == 0


def test_the_stock_stream_on_iex_and_a_refused_sip_feed(recording: AlpacaRecording) -> None:
    """StockDataStream on /v2/iex streams (aggressors inferred: stocks have no taker side);
    /v2/sip without the plan is "insufficient subscription" and the feed stops."""
    stock = (AlpacaSymbol("BTCUSDT", "BTCUSDT"),)  # the fake's stock streams keep the name
    with live(recording, stock, feed_kwargs={"asset_class": "stocks"}) as (_fake, feed):
        got: list[Trade | Quote] = []
        wait_until(
            lambda: collect(feed, got) and any(isinstance(m, Trade) for m in got),
            WAIT_S,
            what="a stock trade",
        )
        assert feed.stats()["aggressor_inferred"] >= 1
    sip = {"asset_class": "stocks", "stock_feed": "sip"}
    with live(recording, stock, feed_kwargs=sip, sip_allowed=False) as (fake, feed):
        wait_until(lambda: not feed.alive, WAIT_S, what="the feed to stop")
        assert feed.error is not None and "insufficient subscription" in feed.error
        assert fake.stats()["ws_accepted"] == 1


def test_the_rest_client_reads_the_fakes_latest_quotes_and_bars(
    recording: AlpacaRecording,
) -> None:
    """alpaca-py's CryptoHistoricalDataClient against the fake's REST: latest quotes and the
    minute bars replayed so far; a rejected key is HTTP 401 as alpaca-py reports it."""
    from alpaca.common.exceptions import APIError
    from alpaca.data.historical.crypto import CryptoHistoricalDataClient
    from alpaca.data.requests import CryptoBarsRequest, CryptoLatestQuoteRequest
    from alpaca.data.timeframe import TimeFrame

    with FakeAlpacaThread(recording, speed=0) as fake:  # flat out: every bar is there at once
        wait_until(lambda: fake.call(lambda f: f.finished.is_set()), WAIT_S, what="replay end")
        client = CryptoHistoricalDataClient(url_override=fake.url)
        latest = client.get_crypto_latest_quote(
            CryptoLatestQuoteRequest(symbol_or_symbols=["BTC/USDT"])
        )
        last_q = by_kind(recording, "q", "BTCUSDT")[-1]
        assert latest["BTC/USDT"].bid_price == float(last_q.fields["bp"])
        bars = client.get_crypto_bars(
            CryptoBarsRequest(symbol_or_symbols="ETH/USDT", timeframe=TimeFrame.Minute)
        )
        assert len(bars["ETH/USDT"]) == len(by_kind(recording, "b", "ETHUSDT")) >= 5
        fake.set(reject_auth=True)
        with pytest.raises(APIError) as err:
            client.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols="BTC/USDT"))
        assert err.value.status_code == 401


def test_stream_urls_for_every_feed() -> None:
    """The url_override the feed gives alpaca-py for each venue and feed."""
    assert stream_url("", "crypto") is None  # alpaca-py's own production URL
    assert stream_url("http://127.0.0.1:9", "crypto") == "ws://127.0.0.1:9/v1beta3/crypto/us"
    assert stream_url("https://h:1", "stocks", "sip") == "wss://h:1/v2/sip"
    with pytest.raises(ValueError):
        stream_url("127.0.0.1:9", "crypto")


def test_the_fakes_protocol_errors_and_json_mode(recording: AlpacaRecording) -> None:
    """Without the msgpack header the fake speaks JSON text (RFC 3339 ns, exact numbers) and
    answers protocol mistakes with Alpaca's error codes."""

    async def session(url: str) -> list[Any]:
        answers: list[Any] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:

            async def ask(request: dict[str, Any] | str) -> Any:
                await (ws.send_str(request) if isinstance(request, str) else ws.send_json(request))
                answers.append(json.loads(await asyncio.wait_for(ws.receive_str(), WAIT_S)))
                return answers[-1]

            answers.append(json.loads(await ws.receive_str()))  # the welcome
            await ask({"action": "subscribe", "trades": ["BTC/USDT"]})  # 401: not yet
            await ask("not json")  # 400
            await ask({"action": "auth", "key": "k", "secret": "s"})
            await ask({"action": "auth", "key": "k", "secret": "s"})  # 403
            await ask({"action": "subscribe", "corrections": ["BTC/USDT"]})  # 410 on crypto
            await ask({"action": "subscribe", "trades": ["BTC/USDT", "ETH/USDT", "X/USD"]})  # 405
            await ask({"action": "subscribe", "trades": ["BTC/USDT"]})
            data = json.loads(await asyncio.wait_for(ws.receive_str(), WAIT_S))
            answers.append(data)
        return answers

    with FakeAlpacaThread(recording, speed=SPEED, symbol_limit=2) as fake:
        answers = asyncio.run(session(fake.stream_url()))
        errors_sent = fake.stats()["errors_sent"]
    assert answers[0] == [{"T": "success", "msg": "connected"}]
    codes = [a[0].get("code") for a in answers[1:]]
    assert codes == [401, 400, None, 403, 410, 405, None, None]
    assert answers[3] == [{"T": "success", "msg": "authenticated"}]
    assert answers[7][0]["T"] == "subscription" and answers[7][0]["trades"] == ["BTC/USDT"]
    trade = answers[8][0]
    assert trade["T"] == "t" and trade["S"] == "BTC/USDT"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", trade["t"])
    assert errors_sent == {401: 1, 400: 1, 403: 1, 410: 1, 405: 1}
