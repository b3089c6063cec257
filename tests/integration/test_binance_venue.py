"""The Binance execution adapter (real python-binance Client) against the local fake Binance:
orders, partial fills and commissions, cancels, rejections with reason codes, cancel-all,
429/418 without a ban loop, a lost reply resolved by query (exactly one order), a restart
reconciled from the venue, and credentials that never show. Plus the fake's own protocol."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests

from libs.common.messages import OrderRequest
from libs.common.testing.credentials import throwaway_pair
from libs.common.testing.fake_binance import (
    API_KEY,
    API_SECRET,
    DEFAULT_DATA,
    FakeBinanceThread,
    Recording,
)
from libs.common.testing.fleet import wait_until
from services.execution.binance_venue import (
    BinanceVenue,
    BinanceVenueConfig,
    CancelAllIncomplete,
    Credentials,
    Secret,
)
from services.execution.venue import VenueRateLimited, VenueRejected, VenueUnavailable

SYMBOLS = ("BTCUSDT", "ETHUSDT")
CREDS = Credentials(Secret(API_KEY), Secret(API_SECRET))
RATE = Decimal("0.001")  # the fake's commission
WAIT_S = 15  # every wait below is bounded by this


@pytest.fixture(scope="module")
def recording() -> Recording:
    """The bundled 2024-08-08 recordings, parsed once for the module."""
    return Recording.load(DEFAULT_DATA)


@pytest.fixture
def fake(recording: Recording) -> Iterator[FakeBinanceThread]:
    """A paused fake: its book is the recorded snapshot until a test resumes it."""
    with FakeBinanceThread(recording, paused=True) as fake:
        yield fake


@contextmanager
def venue_at(
    fake: FakeBinanceThread, creds: Credentials = CREDS, **cfg: Any
) -> Iterator[BinanceVenue]:
    """An adapter pointed at the fake, closed afterwards."""
    config = BinanceVenueConfig(
        cfg.pop("symbols", SYMBOLS),
        url=fake.url,
        timeout_s=cfg.pop("timeout_s", 2.0),
        backoff_initial_s=0.05,
        **cfg,
    )
    venue = BinanceVenue(config, creds)
    try:
        yield venue
    finally:
        venue.close()


@pytest.fixture
def venue(fake: FakeBinanceThread) -> Iterator[BinanceVenue]:
    """An adapter on the `fake` fixture."""
    with venue_at(fake) as venue:
        yield venue


def order(
    coid: str, side: str = "buy", qty: str | Decimal = "0.01", px: str | Decimal | None = None
) -> OrderRequest:
    """A market order, or a limit order when px is given."""
    symbol = "ETHUSDT" if coid.startswith("eth") else "BTCUSDT"
    return OrderRequest(
        ts_event=0,
        ts_init=0,
        client_order_id=coid,
        signal_id="sig",
        strategy="ofi",
        venue="binance",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type="market" if px is None else "limit",
        qty=Decimal(qty),
        limit_px=None if px is None else Decimal(px),
    )


def asks(fake: FakeBinanceThread, n: int = 3) -> list[tuple[Decimal, Decimal]]:
    """The best n ask levels of the fake's BTCUSDT book."""
    return list(fake.book("BTCUSDT").asks[:n])


# --- orders, fills, cancels ---------------------------------------------------------------------


def test_a_market_order_walks_the_book_and_its_fills_carry_exact_commission(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    _, cursor = venue.fills_since("")
    (p0, q0), (p1, q1), (p2, q2) = asks(fake)
    assert q2 >= Decimal("0.0001")
    qty = q0 + q1 + Decimal("0.0001")

    placed = venue.submit(order("mkt-1", qty=qty))

    expected = [(p0, q0), (p1, q1), (p2, Decimal("0.0001"))]
    notional = sum((p * q for p, q in expected), Decimal(0))
    assert (placed.status, placed.filled_qty, placed.qty) == ("filled", qty, qty)
    assert placed.avg_px == notional / qty and placed.order_type == "market"
    assert placed.client_order_id == "mkt-1" and placed.limit_px is None
    fills, cursor = venue.fills_since(cursor)
    assert [(f.price, f.qty) for f in fills] == expected
    assert all(f.client_order_id == "mkt-1" and f.side == "buy" for f in fills)
    assert all(f.liquidity == "taker" and f.fee_asset == "BTC" for f in fills)
    assert [f.fee for f in fills] == [q * RATE for _, q in expected]  # exact, 8 decimals
    assert len({f.trade_id for f in fills}) == 3
    fees = sum((f.fee for f in fills), Decimal(0))
    assert venue.positions()["BTCUSDT"] == Decimal(1) + qty - fees  # commission taken in BTC
    assert venue.fills_since(cursor) == ([], cursor)


def test_a_partial_fill_rests_then_fills_as_maker_with_the_right_average_price(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    fake.set_balances({"USDT": "300000"})
    _, cursor = venue.fills_since("")
    (p0, q0), (p1, q1) = asks(fake, 2)
    qty = q0 + q1 + Decimal("0.5")

    placed = venue.submit(order("part-1", qty=qty, px=p1))  # marketable up to the 2nd level

    assert (placed.status, placed.filled_qty) == ("partially_filled", q0 + q1)
    assert placed.avg_px == (p0 * q0 + p1 * q1) / (q0 + q1) and placed.limit_px == p1
    assert [o.client_order_id for o in venue.open_orders()] == ["part-1"]
    fake.print_trade("BTCUSDT", p1 - Decimal("0.01"), "0.2")  # trades through: 0.2 fills
    assert venue.query("BTCUSDT", "part-1").filled_qty == q0 + q1 + Decimal("0.2")  # type: ignore[union-attr]
    fake.print_trade("BTCUSDT", p1, "5")  # at the price, not through it: nothing
    fake.print_trade("BTCUSDT", p1 - Decimal("0.02"), "5")  # the rest
    final = venue.query("BTCUSDT", "part-1")

    assert final is not None and (final.status, final.filled_qty) == ("filled", qty)
    fills, _ = venue.fills_since(cursor)
    assert [(f.price, f.qty, f.liquidity) for f in fills] == [
        (p0, q0, "taker"),
        (p1, q1, "taker"),
        (p1, Decimal("0.2"), "maker"),
        (p1, Decimal("0.3"), "maker"),
    ]
    # position and average price from the fills agree with the venue's order
    position = sum((f.qty for f in fills), Decimal(0))
    avg = sum((f.qty * f.price for f in fills), Decimal(0)) / position
    assert position == qty and final.avg_px == avg
    balances = fake.balances()
    assert balances["USDT"].locked == 0  # the limit's reservation is released in full
    assert balances["USDT"].free == Decimal(300_000) - sum(
        (f.qty * f.price for f in fills), Decimal(0)
    )
    fees = sum((f.fee for f in fills), Decimal(0))
    assert venue.positions()["BTCUSDT"] == Decimal(1) + qty - fees


def test_a_resting_order_fills_when_the_replayed_market_trades_through_it(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    _, cursor = venue.fills_since("")
    bid = fake.book("BTCUSDT").bids[0][0]
    assert venue.submit(order("rest-1", qty="0.01", px=bid)).status == "new"
    fake.resume()
    wait_until(
        lambda: venue.query("BTCUSDT", "rest-1").status == "filled",  # type: ignore[union-attr]
        WAIT_S,
        interval_s=0.2,
        what="the resting order filled by replayed trades",
    )
    fills, _ = venue.fills_since(cursor)  # one per market trade through it, as it came
    assert {(f.price, f.liquidity, f.client_order_id) for f in fills} == {(bid, "maker", "rest-1")}
    assert sum((f.qty for f in fills), Decimal(0)) == Decimal("0.01")


def test_cancel_a_working_order_and_a_filled_one_comes_back_filled(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    assert venue.submit(order("lim-1", px="50000")).status == "new"
    canceled = venue.cancel("BTCUSDT", "lim-1")
    assert (canceled.client_order_id, canceled.status, canceled.filled_qty) == (
        "lim-1",
        "canceled",
        0,
    )
    assert venue.cancel("BTCUSDT", "lim-1").status == "canceled"  # -2011, then the query
    venue.submit(order("mkt-2"))
    too_late = venue.cancel("BTCUSDT", "mkt-2")  # Binance: -2011 for a filled order too
    assert (too_late.status, too_late.filled_qty) == ("filled", Decimal("0.01"))
    with pytest.raises(VenueRejected) as never:
        venue.cancel("BTCUSDT", "never-sent")
    assert (never.value.reason, never.value.venue_code) == ("venue_unknown_order", "-2011")
    assert venue.query("BTCUSDT", "never-sent") is None
    assert [r.status for r in fake.requests("/api/v3/order", "DELETE")] == [200, 400, 400, 400]
    assert fake.balances()["USDT"].locked == 0


@pytest.mark.parametrize(
    ("req", "reason", "code"),
    [
        (order("bal-1", qty="2"), "venue_insufficient_balance", "-2010"),  # ~124k USDT needed
        (order("lot-1", qty="0.000001"), "venue_filter_failure", "-1013"),  # LOT_SIZE
        (order("px-1", px="50000.001"), "venue_filter_failure", "-1013"),  # PRICE_FILTER
        (order("ntl-1", qty="0.00001"), "venue_filter_failure", "-1013"),  # NOTIONAL (~0.6 USDT)
        (order("eth-bal", side="sell", qty="11"), "venue_insufficient_balance", "-2010"),
    ],
)
def test_a_rejection_has_a_clear_reason_and_leaves_no_order(
    fake: FakeBinanceThread, venue: BinanceVenue, req: OrderRequest, reason: str, code: str
) -> None:
    with pytest.raises(VenueRejected) as refused:
        venue.submit(req)
    assert (refused.value.reason, refused.value.venue_code) == (reason, code)
    assert refused.value.message  # Binance's own words, e.g. "Filter failure: LOT_SIZE"
    assert fake.orders() == []
    assert venue.query(req.symbol, req.client_order_id) is None


def test_duplicate_unknown_symbol_and_auth_rejections(fake: FakeBinanceThread) -> None:
    with venue_at(fake, symbols=("BTCUSDT", "NOPEUSDT")) as venue:
        venue.submit(order("dup-1", px="50000"))
        with pytest.raises(VenueRejected, match="venue_duplicate_order"):
            venue.submit(order("dup-1", px="50000"))  # while the first is open
        nope = msgspec_replace(order("nope-1"), symbol="NOPEUSDT")
        with pytest.raises(VenueRejected) as unknown:
            venue.submit(nope)
        assert (unknown.value.reason, unknown.value.venue_code) == ("venue_unknown_symbol", "-1121")
        assert len(fake.orders(client_order_id="dup-1")) == 1
    for creds in (
        Credentials(Secret(API_KEY), Secret(throwaway_pair("wrong")[1])),  # -1022 bad signature
        Credentials(Secret(throwaway_pair("wrong")[0]), Secret(API_SECRET)),  # -2015
    ):
        with venue_at(fake, creds) as venue, pytest.raises(VenueRejected) as denied:
            venue.submit(order("auth-1"))
        assert denied.value.reason == "venue_auth"
    assert fake.orders(client_order_id="auth-1") == []


def test_orders_binance_would_refuse_are_refused_unsent(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    venue.open_orders()  # the clock sync and a request, so the count below is only orders
    before = len(fake.requests())
    for req, reason in (
        (order("has space"), "venue_invalid_client_order_id"),
        (order("x" * 37), "venue_invalid_client_order_id"),
        (msgspec_replace(order("sol-1"), symbol="SOLUSDT"), "venue_symbol_not_configured"),
    ):
        with pytest.raises(VenueRejected, match=reason):
            venue.submit(req)
    assert len(fake.requests()) == before


def test_a_reused_client_order_id_is_accepted_by_binance_once_the_first_closed(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    # The trap execution's journal guards against: the adapter passes ids through unchanged.
    venue.submit(order("reuse-1", px="50000"))
    venue.cancel("BTCUSDT", "reuse-1")
    again = venue.submit(order("reuse-1", px="51000"))
    assert again.status == "new" and again.client_order_id == "reuse-1"
    assert len(fake.orders(client_order_id="reuse-1")) == 2
    assert venue.query("BTCUSDT", "reuse-1").limit_px == Decimal("51000")  # type: ignore[union-attr]


def test_cancel_all_reaches_every_open_order_in_every_symbol(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    working = ["b1", "b2", "b3", "eth-1", "eth-2"]
    for coid in working:
        venue.submit(order(coid, px="2000" if coid.startswith("eth") else "50000"))
    venue.submit(order("filled-1"))

    canceled = venue.cancel_all()

    assert sorted(o.client_order_id for o in canceled) == sorted(working)
    assert {o.status for o in canceled} == {"canceled"}
    assert [o for o in fake.orders() if o.is_open] == []
    assert venue.open_orders() == []
    assert len(fake.requests("/api/v3/openOrders", "DELETE")) == 2  # one per symbol
    assert venue.cancel_all() == []  # nothing open: Binance's -2011 is not an error here


def test_cancel_all_tries_every_symbol_and_names_those_it_missed(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    venue.submit(order("b1", px="50000"))
    venue.submit(order("eth-1", px="2000"))
    fake.fail_server(503, times=1, path="/api/v3/openOrders", method="DELETE")
    with pytest.raises(CancelAllIncomplete) as partly:
        venue.cancel_all()
    assert [o.client_order_id for o in partly.value.done] == ["eth-1"]
    assert list(partly.value.failed) == ["BTCUSDT"]
    assert [o.client_order_id for o in venue.cancel_all()] == ["b1"]  # a second pass gets it


# --- failures: rate limits, lost replies, 5xx, restarts -----------------------------------------


def test_429_then_418_block_every_call_until_retry_after_without_a_ban_loop(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    venue.open_orders()  # clock synced: from here on only the calls under test
    for status in (429, 418):
        fake.fail_rest(status=status, times=1, retry_after_s=1, path="*")
        with pytest.raises(VenueRateLimited) as limited:
            venue.query("BTCUSDT", "any")
        assert limited.value.banned == (status == 418) and 0 < limited.value.retry_after_s <= 1
        refused_at = fake.requests()[-1].mono
        sent = len(fake.requests())
        for call in (
            lambda: venue.submit(order("blocked-1")),
            lambda: venue.query("BTCUSDT", "any"),
            venue.open_orders,
            venue.positions,
            lambda: venue.fills_since(""),
        ):
            with pytest.raises(VenueRateLimited):
                call()
        with pytest.raises(CancelAllIncomplete) as halted:
            venue.cancel_all()
        assert 0 < halted.value.retry_after_s <= 1
        assert len(fake.requests()) == sent  # nothing reached the venue
        wait_until(lambda: venue.governor.blocked_for() == 0, WAIT_S, what="Retry-After over")
        assert venue.query("BTCUSDT", "any") is None  # answered again
        assert fake.requests()[-1].mono >= refused_at + 0.99
    assert fake.bans == 0
    assert fake.orders(client_order_id="blocked-1") == []


def test_the_governor_keeps_under_the_weight_limit_and_keeps_a_reserve_for_orders(
    recording: Recording,
) -> None:
    if time.time() % 60 > 50:  # both count per wall-clock minute: start well inside one
        time.sleep(60.5 - time.time() % 60)
    with (
        FakeBinanceThread(recording, paused=True, weight_limit_1m=100) as fake,
        venue_at(fake, weight_limit_1m=100, max_wait_s=0.0) as venue,
    ):
        queries = 0
        with pytest.raises(VenueRateLimited) as limited:
            while True:
                venue.query("BTCUSDT", "any")  # weight 4, background: 80 of the 100
                queries += 1
        assert queries == 19 and not limited.value.banned  # 1 (time) + 19 * 4 = 77
        assert venue.submit(order("essential-1")).status == "filled"  # from the reserve
        assert {r.status for r in fake.requests()} <= {200, 400}  # never a 429
        assert fake.requests()[-1].method == "POST"


@pytest.mark.parametrize("delay_s", [0.0, 1.0], ids=["connection-closed", "answer-too-late"])
def test_a_lost_reply_leaves_exactly_one_order_which_query_finds(
    fake: FakeBinanceThread, delay_s: float
) -> None:
    with venue_at(fake, timeout_s=0.5) as venue:
        fake.lose_reply(delay_s=delay_s)
        with pytest.raises(VenueUnavailable) as unknown:
            venue.submit(order("lost-1"))
        assert not isinstance(unknown.value, VenueRateLimited)
        found = venue.query("BTCUSDT", "lost-1")
        assert found is not None and (found.status, found.filled_qty) == ("filled", Decimal("0.01"))
        posts = fake.requests("/api/v3/order", "POST")
        assert [p.lost for p in posts] == [True]  # sent once, never again
        assert len(fake.orders(client_order_id="lost-1")) == 1


@pytest.mark.parametrize("processed", [True, False], ids=["taken-effect", "refused"])
def test_a_5xx_on_submit_is_unknown_and_never_resent(
    fake: FakeBinanceThread, venue: BinanceVenue, processed: bool
) -> None:
    fake.fail_server(503, times=1, path="/api/v3/order", method="POST", processed=processed)
    with pytest.raises(VenueUnavailable):
        venue.submit(order("5xx-1"))
    assert len(fake.requests("/api/v3/order", "POST")) == 1
    found = venue.query("BTCUSDT", "5xx-1")
    assert (found is not None) == processed


def test_idempotent_calls_are_retried_with_backoff(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    venue.submit(order("q-1", px="50000"))
    fake.fail_server(503, times=2, path="/api/v3/order", method="GET")
    assert venue.query("BTCUSDT", "q-1").status == "new"  # type: ignore[union-attr]
    assert [r.status for r in fake.requests("/api/v3/order", "GET")] == [503, 503, 200]
    fake.fail_server(503, times=3, path="/api/v3/openOrders", method="GET")
    with pytest.raises(VenueUnavailable):
        venue.open_orders()  # 1 + 2 retries, then it gives up
    assert venue.counters["retries"] == 4


def test_a_restarted_adapter_finds_the_open_orders_and_the_fills_at_the_venue(
    fake: FakeBinanceThread,
) -> None:
    with venue_at(fake) as first:
        _, cursor = first.fills_since("")
        first.submit(order("r-1", px="50000", qty="0.02"))
        first.submit(order("eth-r-2", side="sell", px="3000", qty="0.5"))
        first.submit(order("r-3"))
        fake.print_trade("BTCUSDT", "49999", "0.005")  # r-1 partly filled while "down"
    with venue_at(fake) as second:  # a new process: no memory of the first
        open_now = {o.client_order_id: o for o in second.open_orders()}
        assert set(open_now) == {"r-1", "eth-r-2"}
        assert (open_now["r-1"].status, open_now["r-1"].filled_qty) == (
            "partially_filled",
            Decimal("0.005"),
        )
        assert (open_now["eth-r-2"].side, open_now["eth-r-2"].limit_px) == ("sell", Decimal(3000))
        assert second.query("BTCUSDT", "r-3").status == "filled"  # type: ignore[union-attr]
        fills, _ = second.fills_since(cursor)
        assert sorted((f.client_order_id, f.liquidity) for f in fills) == [
            ("r-1", "maker"),
            ("r-3", "taker"),
        ]


def test_fills_since_is_idempotent_per_cursor_and_learns_unseen_order_ids(
    fake: FakeBinanceThread,
) -> None:
    with venue_at(fake) as first:
        _, cursor = first.fills_since("")
        first.submit(order("f-1"))
        first.submit(order("eth-f-2", qty="0.1"))
    with venue_at(fake, fills_interval_s=0.0) as second:
        a = second.fills_since(cursor)
        lookups = len([r for r in fake.requests("/api/v3/order", "GET") if "orderId=" in r.query])
        b = second.fills_since(cursor)
        assert a == b and {f.client_order_id for f in a[0]} == {"f-1", "eth-f-2"}
        assert lookups == 2  # one query per unseen order, then remembered
        assert second.fills_since(a[1]) == ([], a[1])


def test_fills_are_polled_at_once_after_our_orders_and_otherwise_at_most_every_interval(
    fake: FakeBinanceThread,
) -> None:
    with venue_at(fake, fills_interval_s=1.0) as venue:
        _, cursor = venue.fills_since("")
        polls = len(fake.requests("/api/v3/myTrades"))
        assert venue.fills_since(cursor) == ([], cursor)  # nothing sent since: not asked
        assert len(fake.requests("/api/v3/myTrades")) == polls
        venue.submit(order("thr-1"))
        fills, cursor = venue.fills_since(cursor)  # we just traded: asked at once
        assert [f.client_order_id for f in fills] == ["thr-1"]
        venue.submit(order("thr-2", px=fake.book("BTCUSDT").bids[0][0]))
        assert venue.fills_since(cursor)[0] == []  # resting: nothing yet
        fake.print_trade("BTCUSDT", "1000", "1")  # the market fills it, unknown to us
        assert venue.fills_since(cursor) == ([], cursor)  # within the interval
        fills = wait_until(
            lambda: venue.fills_since(cursor)[0], WAIT_S, interval_s=0.1, what="the maker fill"
        )
        assert [(f.client_order_id, f.liquidity) for f in fills] == [("thr-2", "maker")]


def test_a_clock_off_by_seconds_is_measured_and_resynced(
    fake: FakeBinanceThread, venue: BinanceVenue
) -> None:
    fake.set_clock_skew(-30_000)  # the venue's clock 30 s behind ours
    assert venue.query("BTCUSDT", "any") is None  # synced before the first signed call
    venue.submit(order("clock-1", px="50000"))
    fake.set_clock_skew(+30_000)  # it jumps: our timestamps now look 30 s old
    with pytest.raises(VenueRejected, match="venue_timestamp"):
        venue.submit(order("clock-2", px="50000"))  # refused, certainly not placed
    assert venue.submit(order("clock-3", px="50000")).status == "new"  # resynced
    fake.set_clock_skew(0)
    assert venue.query("BTCUSDT", "clock-1") is not None  # an idempotent call resyncs and retries
    assert fake.orders(client_order_id="clock-2") == []


# --- credentials ---------------------------------------------------------------------------------


SECRET_KEY, SECRET_SECRET = throwaway_pair("binance")  # made per run: none lives in the repo


def test_credentials_never_appear_in_logs_reprs_or_errors(
    recording: Recording, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, python-binance's, urllib3's
    (tmp_path / "key").write_text(SECRET_KEY + "\n")
    (tmp_path / "secret").write_text(SECRET_SECRET + "\n")
    env = {
        "BINANCE_API_KEY_FILE": str(tmp_path / "key"),
        "BINANCE_API_SECRET_FILE": str(tmp_path / "secret"),
    }
    seen: list[str] = []
    with FakeBinanceThread(
        recording, paused=True, api_key=SECRET_KEY, api_secret=SECRET_SECRET
    ) as fake:
        cfg = BinanceVenueConfig(SYMBOLS, url=fake.url, timeout_s=0.5)
        venue = BinanceVenue(cfg, env=env)  # from mounted secret files
        try:
            seen += [repr(venue), str(venue), repr(venue.cfg), repr(venue.__dict__)]
            seen.append(repr(Credentials.from_env(env)))
            venue.submit(order("log-1", px="50000"))
            fake.lose_reply()
            fake.fail_rest(status=429, times=1, retry_after_s=1, path="/api/v3/openOrders")
            for call in (
                lambda: venue.submit(order("log-2")),  # reply lost
                lambda: venue.submit(order("log-3", qty="5")),  # rejected
                venue.open_orders,  # 429
                venue.open_orders,  # blocked
            ):
                with pytest.raises(Exception) as failed:
                    call()
                seen += [str(failed.value), repr(failed.value)]
            assert venue._client.API_SECRET is None  # only the Secret holds it
            wait_until(lambda: venue.governor.blocked_for() == 0, WAIT_S, what="Retry-After over")
        finally:
            venue.close()
        with venue_at(fake, Credentials(Secret(SECRET_KEY), Secret("wrong"))) as wrong:
            with pytest.raises(VenueRejected) as denied:
                wrong.positions()
            seen.append(str(denied.value))
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert caplog.records  # there was logging to look at
    for text in seen:
        assert SECRET_KEY not in text and SECRET_SECRET not in text
    with pytest.raises(TypeError):
        pickle.dumps(Credentials.from_env(env))


# --- the fake's protocol (what the adapter relies on) -------------------------------------------


def signed(fake: FakeBinanceThread, method: str, path: str, **params: Any) -> requests.Response:
    """A request signed with python-binance's own code path (parameter order, HMAC)."""
    with venue_at(fake) as venue:
        client = venue._client
        with contextlib.suppress(Exception):  # the answer, whatever it says
            client._request(method, client._create_api_uri(path), True, data=dict(params))
        return client.response


def test_the_fake_checks_keys_signatures_and_timestamps(fake: FakeBinanceThread) -> None:
    api = fake.url + "/api/v3/account"
    now = int(time.time() * 1000)
    assert_error(requests.get(f"{api}?timestamp={now}&signature=00", timeout=5), 401, -2014)
    headers = {"X-MBX-APIKEY": "someone-else"}
    assert_error(
        requests.get(f"{api}?timestamp={now}&signature=00", headers=headers, timeout=5), 401, -2015
    )
    headers = {"X-MBX-APIKEY": API_KEY}
    assert_error(
        requests.get(f"{api}?timestamp={now}&signature=00", headers=headers, timeout=5), 400, -1022
    )
    assert_error(requests.get(f"{api}?signature=00", headers=headers, timeout=5), 400, -1102)
    for query, code in (
        (f"timestamp={now - 10_000}", -1021),  # older than the default 5000 ms window
        (f"timestamp={now + 5_000}", -1021),  # ahead of the server
        (f"timestamp={now}&recvWindow=70000", -1131),
    ):
        url = f"{api}?{query}&signature={sign(query)}"
        assert_error(requests.get(url, headers=headers, timeout=5), 400, code)
    query = f"timestamp={now}&recvWindow=5000"
    ok = requests.get(f"{api}?{query}&signature={sign(query)}", headers=headers, timeout=5)
    assert ok.status_code == 200 and ok.headers["X-MBX-USED-WEIGHT-1M"]
    assert {b["asset"]: b["free"] for b in ok.json()["balances"]}["USDT"] == "100000.00000000"


def test_the_fake_counts_orders_per_10_seconds(recording: Recording) -> None:
    if time.time() % 10 > 7:  # three orders inside one 10-second window
        time.sleep(10.2 - time.time() % 10)
    with FakeBinanceThread(recording, paused=True, order_limit_10s=2) as fake:
        answers = [
            signed(fake, "post", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                   timeInForce="GTC", quantity="0.01", price="50000", newClientOrderId=f"oc-{n}")
            for n in range(3)
        ]  # fmt: skip
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert [a.headers.get("X-MBX-ORDER-COUNT-10S") for a in answers[:2]] == ["1", "2"]
        assert answers[2].json()["code"] == -1015 and int(answers[2].headers["Retry-After"]) <= 11


def test_the_fake_bans_a_client_that_keeps_sending_after_a_429(recording: Recording) -> None:
    with FakeBinanceThread(recording, paused=True, ban_after=2, ban_s=30) as fake:
        ping = fake.url + "/api/v3/ping"
        fake.fail_rest(status=429, times=1, retry_after_s=5, path="*")
        statuses = [requests.get(ping, timeout=5).status_code for _ in range(4)]
        assert statuses == [429, 429, 418, 418]  # 1 ignored Retry-After is forgiven, not 2
        banned = requests.get(ping, timeout=5)
        assert banned.json()["code"] == -1003 and 25 <= int(banned.headers["Retry-After"]) <= 30
        assert fake.bans == 1


def test_the_fake_answers_python_binance_order_endpoints(fake: FakeBinanceThread) -> None:
    placed = signed(fake, "post", "order", symbol="BTCUSDT", side="SELL", type="MARKET",
                    quantity="0.1", newClientOrderId="full-1")  # fmt: skip
    body = placed.json()
    assert body["status"] == "FILLED" and body["clientOrderId"] == "full-1"
    assert [f["commissionAsset"] for f in body["fills"]] == ["USDT"]  # FULL: the default
    assert body["fills"][0]["price"] == f"{fake.book('BTCUSDT').bids[0][0]:.8f}"
    ack = signed(fake, "post", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                 timeInForce="GTC", quantity="0.01", price="50000", newOrderRespType="ACK")  # fmt: skip
    assert set(ack.json()) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    for params, code in (
        (dict(side="BUY", type="MARKET", quantity="0.01", price="1"), -1106),
        (dict(side="BUY", type="LIMIT", quantity="0.01", price="50000"), -1102),
        (dict(side="UP", type="MARKET", quantity="0.01"), -1117),
        (dict(side="BUY", type="MARKET", quantity="0.01", newClientOrderId="bad.id"), -1100),
    ):
        assert_error(signed(fake, "post", "order", symbol="BTCUSDT", **params), 400, code)
    assert_error(signed(fake, "delete", "openOrders"), 400, -1102)
    fake.set_balances({"USDT": "300000"})
    (p0, q0), (p1, _) = asks(fake, 2)
    ioc = signed(fake, "post", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                 timeInForce="IOC", quantity=str(q0 + 1), price=str(p0)).json()  # fmt: skip
    assert (ioc["status"], Decimal(ioc["executedQty"])) == ("EXPIRED", q0)  # the rest expired
    fok = signed(fake, "post", "order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                 timeInForce="FOK", quantity="0.01", price=str(p1)).json()  # fmt: skip
    assert (fok["status"], fok["fills"]) == ("EXPIRED", [])  # level 0 is gone; level 1 too small
    trades = signed(fake, "get", "myTrades", symbol="BTCUSDT", fromId=0).json()
    assert [t["isBuyer"] for t in trades] == [False, True] and trades[0]["orderId"] == body[
        "orderId"
    ]


def assert_error(response: requests.Response, status: int, code: int) -> None:
    """A Binance error answer with this HTTP status and code."""
    assert (response.status_code, response.json()["code"]) == (status, code), response.text


def sign(query: str) -> str:
    """HMAC-SHA256 of a query string with the fake's secret."""
    return hmac.new(API_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()


def msgspec_replace(req: OrderRequest, **changes: Any) -> OrderRequest:
    """A copy of an order request with some fields changed."""
    return msgspec.structs.replace(req, **changes)
