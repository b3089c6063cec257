"""AlpacaVenue with the real alpaca-py TradingClient against the local fake Alpaca Trading API.

Nothing leaves 127.0.0.1. Each test starts its own fake (a thread, milliseconds) and counts
what reached it: the requests and the orders at the venue are the proof, not the adapter's word.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import requests

from libs.common.messages import OrderRequest
from libs.common.testing.credentials import throwaway_pair
from libs.common.testing.fake_alpaca_trading import FakeAlpacaTrading
from services.execution.alpaca_venue import FILLS_FROM_START, AlpacaVenue, AlpacaVenueConfig
from services.execution.venue import VenueRateLimited, VenueRejected, VenueUnavailable

with warnings.catch_warnings():  # alpaca.trading's websockets.legacy import (see alpaca_venue)
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.models import Order, Position, TradeAccount
    from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

KEY, SECRET = throwaway_pair("PK")  # made per run: no credential lives in the repo
ENV = {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET}
SYMBOLS = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
BTC, ETH = D("60001.37"), D("2500.25")


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    """A fresh fake venue with a price for each symbol."""
    with FakeAlpacaTrading(KEY, SECRET, prices={"BTC/USDT": BTC, "ETH/USDT": ETH}) as f:
        yield f


def venue_for(fake: FakeAlpacaTrading, **overrides: Any) -> AlpacaVenue:
    """An adapter pointed at the fake, with short waits so failures show fast."""
    fields: dict[str, Any] = {
        "base_url": fake.url,
        "symbols": SYMBOLS,
        "request_timeout_s": 2.0,
        "backoff_base_s": 0.05,
        "rate_wait_max_s": 3.0,
        "settle_interval_s": 0.02,
    }
    fields.update(overrides)
    return AlpacaVenue(AlpacaVenueConfig(**fields), env=ENV)


@pytest.fixture
def venue(fake: FakeAlpacaTrading) -> Iterator[AlpacaVenue]:
    """The adapter under test."""
    v = venue_for(fake)
    yield v
    v.close()


def order(
    coid: str,
    side: str = "buy",
    qty: str = "0.001",
    limit: str | None = None,
    symbol: str = "BTCUSDT",
) -> OrderRequest:
    """A risk-approved order for the alpaca venue."""
    return OrderRequest(
        ts_event=1,
        ts_init=1,
        client_order_id=coid,
        signal_id=coid,
        strategy="ofi",
        venue="alpaca",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type="market" if limit is None else "limit",
        qty=D(qty),
        limit_px=None if limit is None else D(limit),
    )


def posts(fake: FakeAlpacaTrading) -> int:
    """POST /v2/orders requests the fake received."""
    return len(fake.requests("POST", "/v2/orders"))


# --- the fake speaks what alpaca-py's models expect ---------------------------------------------


def test_alpaca_py_models_parse_every_fake_reply(fake: FakeAlpacaTrading) -> None:
    """The real SDK, with its pydantic models on, reads each endpoint the adapter uses."""
    client = TradingClient(KEY, SECRET, url_override=fake.url)
    try:
        placed = client.submit_order(
            MarketOrderRequest(
                symbol="BTC/USDT", qty=0.001, side=OrderSide.BUY, time_in_force=TimeInForce.GTC
            )
        )
        client.submit_order(
            LimitOrderRequest(
                symbol="ETH/USDT",
                qty=0.5,
                limit_price=2000,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                client_order_id="rest-1",
            )
        )
        assert isinstance(placed, Order)
        assert isinstance(client.get_order_by_id(placed.id), Order)
        assert isinstance(client.get_order_by_client_id("rest-1"), Order)
        assert len(client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))) == 1
        [position] = client.get_all_positions()
        assert isinstance(position, Position) and position.symbol == "BTCUSDT"
        assert isinstance(client.get_account(), TradeAccount)
        assert [c.status for c in client.cancel_orders()] == [200]  # type: ignore[union-attr]
        closed = client.close_all_positions(cancel_orders=True)
        assert [c.status for c in closed] == [200]  # type: ignore[union-attr]
        assert client.get_all_positions() == []
    finally:
        client._session.close()


# --- orders -------------------------------------------------------------------------------------


def test_market_order_fills_and_money_stays_exact(
    fake: FakeAlpacaTrading, venue: AlpacaVenue
) -> None:
    """qty 0.000123 at 60001.37: exact on the wire out, in the order, the fill and the position."""
    reply = venue.submit(order("m-1", qty="0.000123"))
    assert (reply.client_order_id, reply.status, reply.qty) == ("m-1", "new", D("0.000123"))
    sent = fake.requests("POST", "/v2/orders")[0].body
    assert '"qty": "0.000123"' in sent  # decimal text, not alpaca-py's float
    now = venue.query("BTCUSDT", "m-1")
    assert now is not None
    assert (now.status, now.filled_qty, now.avg_px) == ("filled", D("0.000123"), BTC)
    assert now.symbol == "BTCUSDT" and now.venue_order_id == reply.venue_order_id
    assert now.update_ns > 1_700_000_000 * 10**9
    fills, cursor = venue.fills_since(FILLS_FROM_START)
    assert [(f.client_order_id, f.qty, f.price, f.liquidity) for f in fills] == [
        ("m-1", D("0.000123"), BTC, "taker")
    ]
    assert fills[0].fee == 0 and fills[0].fee_asset == "USDT" and fills[0].symbol == "BTCUSDT"
    assert venue.positions() == {"BTCUSDT": D("0.000123")}
    assert venue.fills_since(cursor) == ([], cursor)


def test_money_exact_even_when_the_venue_sends_json_numbers() -> None:
    """JSON numbers are parsed as Decimal, never through a binary float."""
    with FakeAlpacaTrading(KEY, SECRET, prices={"BTC/USDT": BTC}, money_as_numbers=True) as fake:
        v = venue_for(fake)
        try:
            v.submit(order("n-1", qty="0.000123", limit="60001.37"))
            raw = requests.get(
                f"{fake.url}/v2/orders:by_client_order_id?client_order_id=n-1",
                headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET},
                timeout=2,
            )
            assert '"limit_price":60001.37' in raw.text  # a JSON number on the wire
            got = v.query("BTCUSDT", "n-1")
            assert got is not None
            assert (got.qty, got.limit_px, got.avg_px) == (D("0.000123"), BTC, BTC)
            assert type(got.avg_px) is D
            assert v.positions() == {"BTCUSDT": D("0.000123")}
        finally:
            v.close()


def test_limit_order_rests_then_fills_at_its_price(
    fake: FakeAlpacaTrading, venue: AlpacaVenue
) -> None:
    """A limit below the market works; when the price reaches it, it fills at the limit (maker)."""
    venue.submit(order("l-1", limit="59000.5"))
    [working] = venue.open_orders()
    assert (working.client_order_id, working.status, working.limit_px) == (
        "l-1",
        "new",
        D("59000.5"),
    )
    fake.set_price("BTC/USDT", D("58999"))
    done = venue.query("BTCUSDT", "l-1")
    assert done is not None and (done.status, done.avg_px) == ("filled", D("59000.5"))
    fills, _ = venue.fills_since(FILLS_FROM_START)
    assert [(f.price, f.liquidity) for f in fills] == [(D("59000.5"), "maker")]
    assert venue.open_orders() == []


def test_partial_fills_give_position_and_average_price(
    fake: FakeAlpacaTrading, venue: AlpacaVenue
) -> None:
    """Three chunks at three prices: filled_qty, avg_px, each fill and the position all agree."""
    fake.set_max_fill_qty(D("0.0004"))
    venue.submit(order("p-1", qty="0.001"))
    first = venue.query("BTCUSDT", "p-1")
    assert first is not None and (first.status, first.filled_qty) == (
        "partially_filled",
        D("0.0004"),
    )
    assert [o.client_order_id for o in venue.open_orders()] == ["p-1"]
    fake.set_price("BTC/USDT", D("60002.37"))
    fake.set_price("BTC/USDT", D("60003.37"))
    done = venue.query("BTCUSDT", "p-1")
    assert done is not None
    assert (done.status, done.filled_qty, done.avg_px) == ("filled", D("0.001"), D("60002.17"))
    fills, _ = venue.fills_since(FILLS_FROM_START)
    assert [(f.qty, f.price) for f in fills] == [
        (D("0.0004"), D("60001.37")),
        (D("0.0004"), D("60002.37")),
        (D("0.0002"), D("60003.37")),
    ]
    assert len({f.trade_id for f in fills}) == 3
    notional = sum((f.qty * f.price for f in fills), D(0))
    assert notional / sum((f.qty for f in fills), D(0)) == done.avg_px
    assert venue.positions() == {"BTCUSDT": D("0.001")}
    assert fake.state.positions["BTC/USDT"].avg_entry_price == D("60002.17")


def test_cancel_a_working_order(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """Cancel by client order id: canceled, and gone from the open orders."""
    venue.submit(order("c-1", limit="50000"))
    done = venue.cancel("BTCUSDT", "c-1")
    assert (done.client_order_id, done.status) == ("c-1", "canceled")
    assert venue.open_orders() == []
    assert fake.orders("c-1")[0].status == "canceled"


def test_cancel_after_the_fill_is_too_late(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """The order fills while the cancel is on its way: 422 at the venue, 'filled' to us."""
    venue.submit(order("c-2", limit="50000"))
    fake.fill_before_next_cancel()
    done = venue.cancel("BTCUSDT", "c-2")
    assert (done.status, done.filled_qty, done.avg_px) == ("filled", D("0.001"), D("50000"))
    [delete] = [r for r in fake.requests("DELETE") if r.path.startswith("/v2/orders/")]
    assert delete.status == 422
    # already filled when asked: the state comes back without another DELETE
    venue.submit(order("c-3"))
    assert venue.cancel("BTCUSDT", "c-3").status == "filled"
    assert len(fake.requests("DELETE")) == 1


def test_unknown_orders(venue: AlpacaVenue) -> None:
    """An order the venue never had: query None, cancel venue_unknown_order."""
    assert venue.query("BTCUSDT", "never-sent") is None
    with pytest.raises(VenueRejected) as err:
        venue.cancel("BTCUSDT", "never-sent")
    assert err.value.reason == "venue_unknown_order"


@pytest.mark.parametrize(
    ("setup", "req", "reason", "code"),
    [
        ("poor", order("r-1", qty="1"), "venue_insufficient_buying_power", "40310000"),
        ("", order("r-2", side="sell", qty="0.5"), "venue_insufficient_balance", "40310000"),
        ("dup", order("r-3", qty="0.0001"), "venue_duplicate_order", "40010001"),
        ("day", order("r-4", qty="0.0001"), "venue_invalid_order", "40010001"),
    ],
)
def test_rejection_has_a_clear_reason(
    fake: FakeAlpacaTrading, setup: str, req: OrderRequest, reason: str, code: str
) -> None:
    """Alpaca's refusals come back as VenueRejected with a stable reason and Alpaca's code."""
    v = venue_for(fake, time_in_force="day" if setup == "day" else "gtc")
    try:
        if setup == "poor":
            fake.set_buying_power(D("100"))
        if setup == "dup":
            v.submit(req)
        before = len(fake.orders())
        with pytest.raises(VenueRejected) as err:
            v.submit(req)
        assert (err.value.reason, err.value.venue_code) == (reason, code)
        assert err.value.message
        assert len(fake.orders()) == before  # nothing was placed
    finally:
        v.close()


def test_bad_credentials_are_venue_auth_and_never_shown(
    fake: FakeAlpacaTrading, caplog: pytest.LogCaptureFixture
) -> None:
    """401 -> venue_auth; the keys appear in no log line, repr or error."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Secret-0000111122223333"
    v = AlpacaVenue(
        AlpacaVenueConfig(base_url=fake.url, symbols=SYMBOLS),
        env={"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": wrong},
    )
    try:
        with pytest.raises(VenueRejected) as err:
            v.submit(order("a-1"))
        assert err.value.reason == "venue_auth"
        with pytest.raises(VenueRejected):
            v.open_orders()
        texts = [caplog.text, repr(v), str(v), str(err.value), repr(err.value), repr(v.cfg)]
        for text in texts:
            assert KEY not in text and wrong not in text
    finally:
        v.close()


def test_credentials_from_secret_files_and_logs_stay_clean(
    fake: FakeAlpacaTrading, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mounted secret files work; a whole session of calls, errors included, logs no secret."""
    caplog.set_level(logging.DEBUG)
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    v = AlpacaVenue(
        AlpacaVenueConfig(
            base_url=fake.url,
            symbols=SYMBOLS,
            key_id_file=str(tmp_path / "key"),
            secret_key_file=str(tmp_path / "secret"),
            backoff_base_s=0.01,
        ),
        env={},
    )
    try:
        v.submit(order("s-1", limit="50000"))
        fake.fail_next(1, 503)
        v.open_orders()  # retried after the 503 (a warning is logged)
        fake.set_buying_power(D("1"))
        with pytest.raises(VenueRejected):
            v.submit(order("s-2"))
        v.cancel_all()
        assert "retry" in caplog.text
        for text in (caplog.text, repr(v), repr(v._credentials)):
            assert KEY not in text and SECRET not in text
    finally:
        v.close()


# --- cancel-all and close-all -------------------------------------------------------------------


def test_cancel_all_reaches_every_open_order(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """On a halt: ours and an order from another session, both symbols, one DELETE."""
    for i in range(4):
        venue.submit(order(f"h-{i}", limit=str(50000 + i)))
    venue.submit(order("h-eth", symbol="ETHUSDT", qty="0.5", limit="2000"))
    fake.place(symbol="ETH/USDT", qty="0.1", side="buy", type="limit", limit_price="1999",
               time_in_force="gtc", client_order_id="other-session")  # fmt: skip
    fake.set_max_fill_qty(D("0.0004"))
    venue.submit(order("h-part", qty="0.001"))  # partially filled, still working
    assert len(venue.open_orders()) == 7
    done = venue.cancel_all()
    assert sorted(o.client_order_id for o in done) == sorted(
        [f"h-{i}" for i in range(4)] + ["h-eth", "other-session", "h-part"]
    )
    assert {o.status for o in done} == {"canceled"}
    part = next(o for o in done if o.client_order_id == "h-part")
    assert part.filled_qty == D("0.0004")
    assert [o for o in fake.orders() if o.is_open] == []
    assert venue.open_orders() == []
    assert len(fake.requests("DELETE", "/v2/orders")) == 1


def test_close_all_positions_flattens(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """EMERGENCY: open orders canceled (they hold quantity), every position liquidated."""
    venue.submit(order("e-1", qty="0.002"))
    venue.submit(order("e-2", symbol="ETHUSDT", qty="0.75"))
    venue.submit(order("e-3", side="sell", qty="0.001", limit="70000"))  # holds 0.001 BTC
    assert venue.positions() == {"BTCUSDT": D("0.002"), "ETHUSDT": D("0.75")}
    result = venue.close_all_positions()
    assert result.failed == {}
    assert sorted((o.symbol, o.side, o.qty) for o in result.orders) == [
        ("BTCUSDT", "sell", D("0.002")),
        ("ETHUSDT", "sell", D("0.75")),
    ]
    assert venue.positions() == {}
    assert venue.open_orders() == []
    assert len(fake.requests("DELETE", "/v2/positions")) == 1


# --- failures: rate limits, lost replies, 5xx ---------------------------------------------------


def test_429_backs_off_for_idempotent_calls(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """A 429 on a query: wait for X-RateLimit-Reset, then one retry (no tight loop)."""
    venue.submit(order("q-1", limit="50000"))
    fake.fail_next(1, 429, reset_in_s=0.5)
    t0 = time.monotonic()
    got = venue.query("BTCUSDT", "q-1")
    elapsed = time.monotonic() - t0
    assert got is not None and got.status == "new"
    tries = fake.requests("GET", "/v2/orders:by_client_order_id")
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].mono_s - tries[0].mono_s >= 0.4  # waited for the reset, did not spin
    assert elapsed < 3


def test_429_on_submit_is_never_resent(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """alpaca-py would re-send a 429'd order after 3 s; ours goes once and says rate limited."""
    fake.fail_next(1, 429)
    with pytest.raises(VenueRateLimited) as err:
        venue.submit(order("q-2"))
    assert 0 < err.value.retry_after_s <= 2.5
    time.sleep(0.2)
    assert posts(fake) == 1 and fake.orders("q-2") == []


def test_venue_rate_limit_stops_all_requests_until_reset(fake: FakeAlpacaTrading) -> None:
    """Another process spent the account's budget: one 429, then nothing until the reset."""
    fake.rate_limit_per_min = 5
    other = TradingClient(KEY, SECRET, url_override=fake.url)
    for _ in range(5):
        other.get_account()
    other._session.close()
    v = venue_for(fake, rate_limit_per_min=1000)
    try:
        with pytest.raises(VenueRateLimited) as err:
            v.query("BTCUSDT", "x")  # 429, the window resets ~60 s on: not worth waiting now
        assert err.value.retry_after_s > 30
        t0 = time.monotonic()
        for _ in range(20):  # a caller hammering: refused here, never reaching the venue
            with pytest.raises(VenueRateLimited):
                v.submit(order("never"))
        assert time.monotonic() - t0 < 1
        assert [r.status for r in fake.requests()] == [200] * 5 + [429]
    finally:
        v.close()


def test_own_governor_keeps_under_the_per_minute_limit(fake: FakeAlpacaTrading) -> None:
    """rate_limit_per_min caps what we send: the request over it is refused locally."""
    v = venue_for(fake, rate_limit_per_min=3, rate_wait_max_s=0.2)
    try:
        for _ in range(3):
            v.open_orders()
        with pytest.raises(VenueRateLimited):
            v.open_orders()
        assert len(fake.requests()) == 3
    finally:
        v.close()


def test_no_requests_left_means_none_sent(fake: FakeAlpacaTrading) -> None:
    """X-RateLimit-Remaining 0 on a reply: the next call waits for the reset instead of a 429."""
    fake.rate_limit_per_min = 4
    v = venue_for(fake, rate_limit_per_min=1000, rate_wait_max_s=0.5)
    try:
        for _ in range(4):
            v.open_orders()
        with pytest.raises(VenueRateLimited):
            v.open_orders()
        assert [r.status for r in fake.requests()] == [200] * 4  # never a 429
    finally:
        v.close()


def test_5xx_retried_for_queries_never_for_submit(
    fake: FakeAlpacaTrading, venue: AlpacaVenue
) -> None:
    """503 on open orders: retried. 504 on submit (alpaca-py's own retry code): sent once."""
    fake.fail_next(2, 503)
    assert venue.open_orders() == []
    assert [r.status for r in fake.requests("GET", "/v2/orders")] == [503, 503, 200]
    fake.fail_next(1, 504)
    with pytest.raises(VenueUnavailable) as err:
        venue.submit(order("u-1"))
    assert not isinstance(err.value, VenueRateLimited)
    assert posts(fake) == 1
    assert venue.query("BTCUSDT", "u-1") is None  # a 5xx before acting: no order


def test_lost_reply_leaves_exactly_one_order(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """Accepted at the venue, reply lost: unknown to us, found by client order id, never resent."""
    fake.lose_next_order_reply()
    with pytest.raises(VenueUnavailable):
        venue.submit(order("lost-1"))
    found = venue.query("BTCUSDT", "lost-1")
    assert found is not None and found.status == "filled"
    assert posts(fake) == 1 and len(fake.orders("lost-1")) == 1


def test_timeout_is_unknown_not_resent() -> None:
    """The reply comes after the client's timeout: VenueUnavailable, one order at the venue."""
    with FakeAlpacaTrading(KEY, SECRET, prices={"BTC/USDT": BTC}) as fake:
        v = venue_for(fake, request_timeout_s=0.3)
        try:
            fake.lose_next_order_reply(stall_s=1.0)
            t0 = time.monotonic()
            with pytest.raises(VenueUnavailable, match="timed out"):
                v.submit(order("slow-1"))
            assert time.monotonic() - t0 < 1.0
            found = v.query("BTCUSDT", "slow-1")
            assert found is not None and len(fake.orders("slow-1")) == 1 and posts(fake) == 1
        finally:
            v.close()


# --- restart ------------------------------------------------------------------------------------


def test_restart_finds_what_is_open_at_the_venue(fake: FakeAlpacaTrading) -> None:
    """A new adapter (execution restarted) sees the venue's open orders, positions and fills."""
    first = venue_for(fake)
    first.submit(order("o-1", limit="50000"))
    first.submit(order("o-2", symbol="ETHUSDT", qty="0.25", limit="2400"))
    first.submit(order("o-3", qty="0.0005"))  # fills
    fake.set_max_fill_qty(D("0.0001"))
    first.submit(order("o-4", qty="0.0003"))  # partially filled, working
    first.close()

    second = venue_for(fake)
    try:
        open_ = {o.client_order_id: o for o in second.open_orders()}
        assert set(open_) == {"o-1", "o-2", "o-4"}
        assert (open_["o-2"].symbol, open_["o-2"].qty, open_["o-2"].limit_px) == (
            "ETHUSDT",
            D("0.25"),
            D("2400"),
        )
        assert (open_["o-4"].status, open_["o-4"].filled_qty) == ("partially_filled", D("0.0001"))
        assert second.positions() == {"BTCUSDT": D("0.0006")}
        fills, _ = second.fills_since(FILLS_FROM_START)  # order ids never seen by this adapter
        assert [(f.client_order_id, f.qty) for f in fills] == [
            ("o-3", D("0.0005")),
            ("o-4", D("0.0001")),
        ]
    finally:
        second.close()


def test_fills_cursor_from_now_on(fake: FakeAlpacaTrading, venue: AlpacaVenue) -> None:
    """Cursor "" skips what happened before; later fills come once, across pages."""
    venue.submit(order("f-0", qty="0.0001"))
    _, cursor = venue.fills_since("")
    fake.set_max_fill_qty(D("0.000001"))
    venue.submit(order("f-1", limit="60001.37", qty="0.000150"))  # 1 fill now
    for _ in range(149):
        fake.set_price("BTC/USDT", BTC)  # one more chunk each: 150 fills, two pages
    fills, cursor = venue.fills_since(cursor)
    assert len(fills) == 150 and {f.client_order_id for f in fills} == {"f-1"}
    assert sum((f.qty for f in fills), D(0)) == D("0.000150")
    assert venue.fills_since(cursor) == ([], cursor)


def test_price_path_drives_matching() -> None:
    """The fake's scripted prices: each step() is one matching event."""
    path = [("BTC/USDT", D("60500")), ("BTC/USDT", D("59000.25"))]
    with FakeAlpacaTrading(KEY, SECRET, prices={"BTC/USDT": BTC}, price_path=path) as fake:
        v = venue_for(fake)
        try:
            v.submit(order("pp-1", limit="59500"))
            assert fake.step() and v.open_orders()[0].status == "new"
            assert fake.step()
            done = v.query("BTCUSDT", "pp-1")
            assert done is not None and (done.status, done.avg_px) == ("filled", D("59500"))
            assert not fake.step()
        finally:
            v.close()
