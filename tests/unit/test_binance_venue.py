"""The Binance adapter's pure parts: status and error mapping, answers to VenueOrder / VenueFill
with exact decimals, the fills cursor, credentials and their redaction, endpoint selection, and
the rate governor's arithmetic on a controlled clock."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from libs.common.config import ConfigError, parse_config
from libs.common.messages import OrderRequest
from libs.common.testing.credentials import throwaway_pair
from services.execution.binance_venue import (
    TESTNET_URL,
    BinanceVenue,
    BinanceVenueConfig,
    Credentials,
    CredentialsError,
    RateGovernor,
    Secret,
    _Client,
    base_url,
    classify,
    dec,
    decode_cursor,
    encode_cursor,
    map_status,
    reason_for,
    venue_fill,
    venue_order,
    wire_decimal,
)
from services.execution.venue import VenueRateLimited, VenueRejected, VenueUnavailable

CREDS = Credentials(Secret("key"), Secret("secret"))


# --- statuses and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "executed", "expected"),
    [
        ("NEW", "0", "new"),
        ("PARTIALLY_FILLED", "1", "partially_filled"),
        ("FILLED", "2", "filled"),
        ("CANCELED", "0", "canceled"),
        ("REJECTED", "0", "rejected"),
        ("EXPIRED", "0.5", "expired"),
        ("EXPIRED_IN_MATCH", "0", "expired"),
        ("PENDING_CANCEL", "0", "new"),  # still working until the cancel completes
        ("PENDING_CANCEL", "0.1", "partially_filled"),
        ("SOMETHING_NEW", "0", "unknown"),  # never guess: execution queries again
    ],
)
def test_binance_statuses_map_onto_flotillas(status: str, executed: str, expected: str) -> None:
    assert map_status(status, Decimal(executed)) == expected


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (
            -2010,
            "Account has insufficient balance for requested action.",
            "venue_insufficient_balance",
        ),
        (-2010, "Duplicate order sent.", "venue_duplicate_order"),
        (-2010, "Market is closed.", "venue_order_rejected"),
        (-1013, "Filter failure: LOT_SIZE", "venue_filter_failure"),
        (-1013, "Filter failure: NOTIONAL", "venue_filter_failure"),
        (-1111, "Precision is over the maximum defined for this asset.", "venue_filter_failure"),
        (-1121, "Invalid symbol.", "venue_unknown_symbol"),
        (-2011, "Unknown order sent.", "venue_unknown_order"),
        (-2013, "Order does not exist.", "venue_unknown_order"),
        (-2014, "API-key format invalid.", "venue_auth"),
        (-2015, "Invalid API-key, IP, or permissions for action.", "venue_auth"),
        (-1022, "Signature for this request is not valid.", "venue_auth"),
        (-1021, "Timestamp for this request is outside of the recvWindow.", "venue_timestamp"),
        (-1102, "Mandatory parameter 'side' was not sent", "venue_bad_request"),
        (-1100, "Illegal characters found in parameter 'quantity'", "venue_bad_request"),
        (-9999, "Something new.", "venue_rejected"),
    ],
)
def test_binance_error_codes_become_stable_reasons(code: int, message: str, reason: str) -> None:
    assert reason_for(code, message) == reason
    error = classify(400 if code not in (-2014, -2015) else 401, code, message, None)
    assert isinstance(error, VenueRejected)
    assert (error.reason, error.venue_code, error.message) == (reason, str(code), message)


def test_rate_limits_server_errors_and_unknown_outcomes_are_not_rejections() -> None:
    too_many = classify(429, -1003, "Too much request weight used", 7.0)
    assert isinstance(too_many, VenueRateLimited) and not too_many.banned
    assert too_many.retry_after_s == 7.0
    banned = classify(418, -1003, "IP banned until 1700000000000", None, default_ban_s=120)
    assert isinstance(banned, VenueRateLimited) and banned.banned and banned.retry_after_s == 120
    orders = classify(429, -1015, "Too many new orders", 3.0)
    assert isinstance(orders, VenueRateLimited) and orders.retry_after_s == 3.0
    for status, code in ((503, -1001), (500, 0), (502, -1000), (400, -1007), (400, -1006)):
        error = classify(status, code, "...", None)
        assert type(error) is VenueUnavailable, (status, code)  # outcome unknown: query it
    waf = classify(403, 0, "", None)
    assert isinstance(waf, VenueRejected) and waf.reason == "venue_forbidden"


# --- answers ------------------------------------------------------------------------------------


def order_answer(**changes: Any) -> dict[str, Any]:
    """A GET /api/v3/order answer, as Binance documents it."""
    return {
        "symbol": "BTCUSDT",
        "orderId": 28,
        "orderListId": -1,
        "clientOrderId": "ofi-7-1",
        "price": "61000.00000000",
        "origQty": "0.30000000",
        "executedQty": "0.20000000",
        "cummulativeQuoteQty": "12200.10000000",
        "status": "PARTIALLY_FILLED",
        "timeInForce": "GTC",
        "type": "LIMIT",
        "side": "BUY",
        "time": 1723161253937,
        "updateTime": 1723161254001,
        **changes,
    }


def test_an_order_answer_becomes_a_venue_order_with_exact_decimals() -> None:
    order = venue_order(order_answer())
    assert (order.client_order_id, order.venue_order_id, order.symbol) == (
        "ofi-7-1",
        "28",
        "BTCUSDT",
    )
    assert (order.side, order.order_type, order.status) == ("buy", "limit", "partially_filled")
    assert (order.qty, order.filled_qty) == (Decimal("0.3"), Decimal("0.2"))
    assert order.avg_px == Decimal("61000.5") and order.limit_px == Decimal("61000")
    assert order.update_ns == 1723161254001 * 1_000_000 and order.reason == ""
    market = venue_order(order_answer(type="MARKET", price="0.00000000", executedQty="0", cummulativeQuoteQty="0", status="EXPIRED"))  # fmt: skip
    assert (market.order_type, market.limit_px, market.avg_px) == ("market", None, None)
    assert (market.status, market.reason) == ("expired", "venue_expired")


def test_a_cancel_answer_names_the_order_by_orig_client_order_id() -> None:
    answer = order_answer(
        origClientOrderId="ofi-7-1", clientOrderId="cancel-123", status="CANCELED"
    )
    del answer["updateTime"]
    answer["transactTime"] = 1723161255000
    order = venue_order(answer)
    assert (order.client_order_id, order.status) == ("ofi-7-1", "canceled")
    assert order.update_ns == 1723161255000 * 1_000_000


def test_a_trade_becomes_a_venue_fill_with_its_commission() -> None:
    fill = venue_fill(
        {
            "symbol": "ETHUSDT",
            "id": 900004,
            "orderId": 5000002,
            "price": "2683.81000000",
            "qty": "0.10000000",
            "quoteQty": "268.38100000",
            "commission": "0.26838100",
            "commissionAsset": "USDT",
            "time": 1723161253937,
            "isBuyer": False,
            "isMaker": True,
        },
        "ofi-8-1",
    )
    assert (fill.client_order_id, fill.trade_id, fill.side, fill.liquidity) == (
        "ofi-8-1",
        "900004",
        "sell",
        "maker",
    )
    assert (fill.price, fill.qty, fill.fee, fill.fee_asset) == (
        Decimal("2683.81"),
        Decimal("0.1"),
        Decimal("0.268381"),
        "USDT",
    )


def test_json_numbers_parse_as_decimal_and_floats_are_refused() -> None:
    response = requests.Response()
    response.status_code = 200
    response._content = b'{"price": 0.1, "qty": "0.2", "orderId": 12}'
    parsed = _Client._handle_response(response)
    assert parsed == {"price": Decimal("0.1"), "qty": "0.2", "orderId": 12}
    assert isinstance(parsed["price"], Decimal)
    assert dec("0.10000000") == Decimal("0.1") and dec(3) == 3
    with pytest.raises(TypeError):
        dec(0.1)
    with pytest.raises(TypeError):
        dec(True)
    assert (
        wire_decimal(Decimal("1E-8")) == "0.00000001"
        and wire_decimal(Decimal("0.0100")) == "0.0100"
    )


def test_the_fills_cursor_round_trips_and_refuses_garbage() -> None:
    ids = {"BTCUSDT": 900012, "ETHUSDT": -1}
    assert encode_cursor(ids) == "BTCUSDT:900012,ETHUSDT:-1"
    assert decode_cursor(encode_cursor(ids)) == ids and decode_cursor("") == {}
    for bad in ("BTCUSDT", "BTCUSDT:x", ":5", "BTCUSDT:1.5"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


# --- credentials and endpoints ------------------------------------------------------------------


def test_a_secret_never_shows_its_value() -> None:
    value = throwaway_pair("binance")[1]
    secret = Secret(value)
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "{}".format(secret),  # noqa: UP032
        repr([secret]),
    ):
        assert value not in text
    assert value not in repr(Credentials(secret, secret))
    assert secret.reveal() == value
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_credentials_come_from_variables_or_mounted_files(tmp_path: Path) -> None:
    creds = Credentials.from_env({"BINANCE_API_KEY": "k1", "BINANCE_API_SECRET": "s1"})
    assert (creds.api_key.reveal(), creds.api_secret.reveal()) == ("k1", "s1")
    (tmp_path / "key").write_text("k2\n")
    (tmp_path / "secret").write_text("  s2  \n")
    creds = Credentials.from_env(
        {
            "BINANCE_API_KEY_FILE": str(tmp_path / "key"),
            "BINANCE_API_SECRET_FILE": str(tmp_path / "secret"),
        }
    )
    assert (creds.api_key.reveal(), creds.api_secret.reveal()) == ("k2", "s2")
    testnet = Credentials.from_env({"TN_API_KEY": "k3", "TN_API_SECRET": "s3"}, prefix="TN")
    assert testnet.api_key.reveal() == "k3"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"BINANCE_API_SECRET": "s"}, "BINANCE_API_KEY .or BINANCE_API_KEY_FILE. is not set"),
        (
            {"BINANCE_API_KEY": "k", "BINANCE_API_KEY_FILE": "/x", "BINANCE_API_SECRET": "s"},
            "not both",
        ),
        ({"BINANCE_API_KEY": "k", "BINANCE_API_SECRET_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_missing_or_ambiguous_credentials_are_refused_without_their_values(
    env: dict[str, str], complaint: str
) -> None:
    with pytest.raises(CredentialsError, match=complaint) as refused:
        Credentials.from_env(env)
    assert "'k'" not in str(refused.value) and "'s'" not in str(refused.value)


def test_the_endpoint_is_the_testnet_unless_configured_and_production_needs_live() -> None:
    assert base_url(BinanceVenueConfig(("BTCUSDT",))) == TESTNET_URL
    assert base_url(BinanceVenueConfig(("BTCUSDT",), url="testnet")) == TESTNET_URL
    assert base_url(BinanceVenueConfig(("BTCUSDT",), url="http://127.0.0.1:8765/")) == (
        "http://127.0.0.1:8765"
    )
    for url in ("production", "https://api.binance.com", "https://api3.binance.com"):
        with pytest.raises(ValueError, match="live"):
            base_url(BinanceVenueConfig(("BTCUSDT",), url=url))
        assert base_url(BinanceVenueConfig(("BTCUSDT",), url=url, live=True)).startswith(
            "https://api"
        )
    with pytest.raises(ValueError, match="http"):
        base_url(BinanceVenueConfig(("BTCUSDT",), url="ws://127.0.0.1:1"))


def test_the_adapter_sends_executions_ids_unchanged_and_never_makes_one_up() -> None:
    venue = BinanceVenue(BinanceVenueConfig(("BTCUSDT",), url="http://127.0.0.1:9"), CREDS)
    try:
        req = OrderRequest(
            ts_event=0,
            ts_init=0,
            client_order_id="ofi-42-BTCUSDT-1",
            signal_id="s",
            strategy="ofi",
            venue="binance",
            symbol="BTCUSDT",
            side="sell",
            order_type="limit",
            qty=Decimal("0.00100"),
            limit_px=Decimal("61000.10"),
        )
        assert venue._order_params(req) == {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "LIMIT",
            "quantity": "0.00100",
            "price": "61000.10",
            "timeInForce": "GTC",
            "newClientOrderId": "ofi-42-BTCUSDT-1",
            "newOrderRespType": "RESULT",
        }
        assert venue._client.API_SECRET is None and "secret" not in repr(venue)
    finally:
        venue.close()


def test_from_fleet_config() -> None:
    inst = {"price_increment": "0.01", "size_increment": "0.0001", "quote": "USDT"}
    raw: dict[str, Any] = {
        "instruments": {
            "ETHUSDT": {**inst, "base": "ETH", "venue": "binance"},
            "BTCUSDT": {**inst, "base": "BTC", "venue": "binance"},
            "AAPL": {**inst, "base": "AAPL", "venue": "alpaca"},
        },
        "execution": {"venue": "binance", "venue_url": "", "venue_timeout_ms": 1500},
    }
    env = {"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"}
    venue = BinanceVenue.from_config(parse_config(raw), env=env)
    try:
        assert (venue.url, venue.cfg.symbols, venue.cfg.timeout_s) == (
            TESTNET_URL,
            ("BTCUSDT", "ETHUSDT"),
            1.5,
        )
        assert venue.cfg.base_assets == {"BTCUSDT": "BTC", "ETHUSDT": "ETH"}
    finally:
        venue.close()
    raw["execution"]["venue_url"] = "production"
    with pytest.raises(ConfigError, match="live"):
        BinanceVenue.from_config(parse_config(raw), env=env)
    raw["execution"]["live"] = True
    BinanceVenue.from_config(parse_config(raw), env=env).close()  # nothing is sent yet
    with pytest.raises(ConfigError, match="BINANCE_API_SECRET"):
        BinanceVenue.from_config(parse_config(raw), env={"BINANCE_API_KEY": "k"})


def test_building_the_client_leaves_no_event_loop_behind() -> None:
    def build() -> None:
        BinanceVenue(BinanceVenueConfig(("BTCUSDT",), url="http://127.0.0.1:9"), CREDS).close()
        with pytest.raises(RuntimeError):
            asyncio.get_event_loop()  # this thread still has none

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    gc.collect()  # an unclosed loop would warn here (and warnings are errors)


# --- the rate governor --------------------------------------------------------------------------


class Clock:
    """A controlled wall clock and monotonic clock; sleep advances both."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.wall, self.mono = wall, 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds
        self.mono += seconds


def governor(clock: Clock, **kwargs: Any) -> RateGovernor:
    """A governor on the controlled clock: 100 weight / min, 10 orders / 10 s."""
    return RateGovernor(
        **{"weight_limit_1m": 100, "order_limit_10s": 10, "order_limit_1d": 1000, **kwargs},
        wall=lambda: clock.wall,
        mono=lambda: clock.mono,
        sleep=clock.sleep,
    )


def test_background_calls_keep_a_reserve_for_orders_and_cancels() -> None:
    clock = Clock(wall=1_700_000_000.0 + 5)  # 5 s into a minute (1_700_000_000 is 20 s past one)
    gov = governor(clock, reserve_fraction=0.2, max_wait_s=0.0)
    for _ in range(20):
        gov.acquire(4)  # 80 of 100: the background share
    with pytest.raises(VenueRateLimited) as refused:
        gov.acquire(4)
    assert refused.value.retry_after_s == pytest.approx(35.0)  # to the end of the minute
    assert not refused.value.banned and gov.weight.used == 80
    for _ in range(20):
        gov.acquire(1, orders=1 if _ < 10 else 0, essential=True)  # the reserve: 20 more
    with pytest.raises(VenueRateLimited):
        gov.acquire(1, essential=True)
    assert (gov.weight.used, gov.orders_10s.used, gov.refusals) == (100, 10, 2)


def test_a_call_waits_for_the_next_window_when_that_is_soon() -> None:
    clock = Clock(wall=1_700_000_039.5)  # 0.5 s before a minute ends
    gov = governor(clock, max_wait_s=1.0)
    gov.acquire(80)
    gov.acquire(5)  # waits for the new minute, then counts afresh
    assert clock.slept == [pytest.approx(0.5)] and gov.weight.used == 5 and gov.waits == 1


def test_orders_count_per_10_seconds_and_per_day() -> None:
    clock = Clock(wall=1_700_000_000.0)
    gov = governor(clock, order_limit_10s=3, order_limit_1d=4, max_wait_s=20.0)
    for _ in range(3):
        gov.acquire(1, orders=1, essential=True)
    gov.acquire(1, orders=1, essential=True)  # waited for the next 10 s window
    assert clock.slept == [pytest.approx(10.0)]
    with pytest.raises(VenueRateLimited) as daily:
        gov.acquire(1, orders=1, essential=True)  # the day's 4 are spent: far beyond max_wait_s
    assert daily.value.retry_after_s > 20
    gov.acquire(1)  # a query needs no order budget


def test_the_venues_counters_correct_ours_upwards() -> None:
    clock = Clock()
    gov = governor(clock)
    gov.acquire(1)
    gov.observe({"X-MBX-USED-WEIGHT-1M": "70", "X-MBX-ORDER-COUNT-10S": "4"})
    assert (gov.weight.used, gov.orders_10s.used) == (70, 4)  # another client of the same IP
    gov.observe({"X-MBX-USED-WEIGHT-1M": "2", "X-MBX-ORDER-COUNT-10S": "junk"})
    assert (gov.weight.used, gov.orders_10s.used) == (70, 4)  # never trust a lower count
    clock.sleep(60)
    gov.acquire(4)
    assert gov.weight.used == 4  # a new minute


def test_after_a_429_or_418_nothing_is_sent_until_retry_after() -> None:
    clock = Clock()
    gov = governor(clock)
    gov.rate_limited(VenueRateLimited("429", 3.0))
    clock.sleep(2.5)
    with pytest.raises(VenueRateLimited) as blocked:
        gov.acquire(1, orders=1, essential=True)  # not even an order or a cancel
    assert blocked.value.retry_after_s == pytest.approx(0.5) and not blocked.value.banned
    clock.sleep(0.5)
    gov.acquire(1)
    gov.rate_limited(VenueRateLimited("418", 120.0, banned=True))
    with pytest.raises(VenueRateLimited) as ban:
        gov.acquire(1)
    assert ban.value.banned and ban.value.retry_after_s == pytest.approx(120.0)
    clock.sleep(120)
    gov.acquire(1)
    assert not gov.banned and gov.refusals == 2
