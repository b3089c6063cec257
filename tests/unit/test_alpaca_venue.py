"""AlpacaVenue's pure parts: status and error mapping, credentials and redaction, the rate
governor, exact order bodies, timestamps, and how alpaca-py is configured (no network)."""

from __future__ import annotations

import json
import warnings
from decimal import Decimal as D
from pathlib import Path

import pytest

from libs.common.config import ConfigError, parse_config
from libs.common.messages import OrderRequest
from libs.common.testing.credentials import throwaway_pair
from services.execution.alpaca_venue import (
    FINAL,
    WORKING,
    AlpacaCredentials,
    AlpacaVenue,
    AlpacaVenueConfig,
    RateGovernor,
    classify_error,
    decimal_text,
    map_status,
    rfc3339_ns,
)
from services.execution.venue import VenueRateLimited, VenueRejected, VenueUnavailable

with warnings.catch_warnings():  # alpaca.trading's websockets.legacy import (see alpaca_venue)
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.trading.enums import OrderStatus as AlpacaStatus

KEY, SECRET = throwaway_pair("PK")  # made per run: no credential lives in the repo
ENV = {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET}


def venue(**cfg: object) -> AlpacaVenue:
    """An adapter that is never asked to send anything."""
    return AlpacaVenue(AlpacaVenueConfig(**cfg), env=ENV)  # type: ignore[arg-type]


def req(qty: str, limit: str | None = None, symbol: str = "BTCUSD") -> OrderRequest:
    """A market or limit buy."""
    return OrderRequest(
        ts_event=1,
        ts_init=1,
        client_order_id="u-1",
        signal_id="s",
        strategy="ofi",
        venue="alpaca",
        symbol=symbol,
        side="buy",
        order_type="market" if limit is None else "limit",
        qty=D(qty),
        limit_px=None if limit is None else D(limit),
    )


# --- statuses -----------------------------------------------------------------------------------


def test_every_alpaca_status_is_mapped_deliberately() -> None:
    """Each status alpaca-py knows is in exactly one of FINAL and WORKING."""
    known = {s.value for s in AlpacaStatus}
    assert known == set(FINAL) | WORKING
    assert not set(FINAL) & WORKING
    for status in known:
        assert map_status(status, D(0), D(1))[0] != "unknown"


@pytest.mark.parametrize(
    ("alpaca", "filled", "expected"),
    [
        ("new", "0", ("new", "")),
        ("pending_new", "0", ("new", "")),
        ("accepted", "0", ("new", "")),
        ("accepted_for_bidding", "0", ("new", "")),
        ("held", "0", ("new", "")),
        ("partially_filled", "0.4", ("partially_filled", "")),
        ("pending_cancel", "0", ("new", "")),  # may still fill until the cancel is confirmed
        ("pending_cancel", "0.4", ("partially_filled", "")),
        ("pending_replace", "0.4", ("partially_filled", "")),
        ("done_for_day", "0.4", ("partially_filled", "")),
        ("stopped", "0", ("new", "")),
        ("suspended", "0", ("new", "")),
        ("calculated", "0.4", ("partially_filled", "")),
        ("calculated", "1", ("filled", "")),
        ("filled", "1", ("filled", "")),
        ("canceled", "0.4", ("canceled", "")),
        ("expired", "0", ("expired", "")),
        ("rejected", "0", ("rejected", "venue_rejected")),
        ("replaced", "0", ("canceled", "venue_replaced")),
        ("something_new", "0", ("unknown", "venue_unmapped_status")),
    ],
)
def test_status_mapping(alpaca: str, filled: str, expected: tuple[str, str]) -> None:
    """Working statuses stay working (partially filled once something filled)."""
    assert map_status(alpaca, D(filled), D(1)) == expected


# --- errors -------------------------------------------------------------------------------------


def body(code: int, message: str) -> str:
    """Alpaca's error body."""
    return json.dumps({"code": code, "message": message})


@pytest.mark.parametrize(
    ("op", "status", "text", "reason"),
    [
        ("submit", 403, body(40310000, "insufficient buying power"), "venue_insufficient_buying_power"),
        ("submit", 403, body(40310000, "insufficient balance for BTC (requested: 1, available: 0)"), "venue_insufficient_balance"),
        ("submit", 403, body(40310000, "account is not allowed to short"), "venue_forbidden"),
        ("submit", 403, '{"message": "forbidden."}', "venue_auth"),
        ("submit", 401, body(40110000, "request is not authorized"), "venue_auth"),
        ("submit", 422, body(40010001, "client_order_id must be unique"), "venue_duplicate_order"),
        ("submit", 422, body(40010001, "qty must be > 0"), "venue_invalid_order"),
        ("submit", 400, "bad request", "venue_invalid_order"),
        ("cancel", 422, body(42210000, "order is not cancelable"), "venue_not_cancelable"),
        ("cancel", 404, body(40410000, "order not found"), "venue_unknown_order"),
        ("query", 404, "Not Found", "venue_unknown_order"),
        ("submit", 409, "conflict", "venue_error"),
    ],
)  # fmt: skip
def test_rejection_reasons(op: str, status: int, text: str, reason: str) -> None:
    """Every 4xx is a VenueRejected with a stable reason; Alpaca's code and message kept."""
    err = classify_error(op, status, text, {}, 0.0)
    assert isinstance(err, VenueRejected) and err.reason == reason
    if text.startswith("{") and "code" in text:
        assert err.venue_code == str(json.loads(text)["code"])


def test_429_waits_for_the_reset_and_5xx_is_unavailable() -> None:
    """429: VenueRateLimited until X-RateLimit-Reset (Retry-After first; capped at a minute)."""
    err = classify_error(
        "query", 429, body(42910000, "rate limit exceeded"), {"X-RateLimit-Reset": "1012"}, 1000.5
    )
    assert isinstance(err, VenueRateLimited) and err.retry_after_s == 11.5
    err = classify_error(
        "query", 429, "", {"Retry-After": "3", "X-RateLimit-Reset": "1012"}, 1000.0
    )
    assert isinstance(err, VenueRateLimited) and err.retry_after_s == 3
    err = classify_error("query", 429, "", {"X-RateLimit-Reset": "99999"}, 1000.0)
    assert isinstance(err, VenueRateLimited) and err.retry_after_s == 60
    err = classify_error("query", 429, "", {}, 1000.0)
    assert isinstance(err, VenueRateLimited) and err.retry_after_s == 1
    for status in (500, 502, 503, 504):
        err = classify_error("submit", status, "<html>gateway</html>", {}, 0.0)
        assert type(err) is VenueUnavailable  # outcome unknown: resolved by query


# --- credentials --------------------------------------------------------------------------------


def test_credentials_from_env_then_files(tmp_path: Path) -> None:
    """$NAME first, then $NAME_FILE, then the config's file; values stripped."""
    cfg = AlpacaVenueConfig()
    assert AlpacaCredentials.load(cfg, ENV).secrets() == (KEY, SECRET)
    (tmp_path / "k").write_text(f" {KEY}\n")
    (tmp_path / "s").write_text(f"{SECRET}\n")
    env = {
        "APCA_API_KEY_ID_FILE": str(tmp_path / "k"),
        "APCA_API_SECRET_KEY_FILE": str(tmp_path / "s"),
    }
    assert AlpacaCredentials.load(cfg, env).secrets() == (KEY, SECRET)
    cfg = AlpacaVenueConfig(key_id_file=str(tmp_path / "k"), secret_key_file=str(tmp_path / "s"))
    assert AlpacaCredentials.load(cfg, {}).secrets() == (KEY, SECRET)
    assert AlpacaCredentials.load(cfg, {"APCA_API_KEY_ID": "envkey"}).secrets() == (
        "envkey",
        SECRET,
    )


def test_missing_or_unreadable_credentials_are_config_errors(tmp_path: Path) -> None:
    """The error names the variable, never a value."""
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        AlpacaCredentials.load(AlpacaVenueConfig(), {})
    with pytest.raises(ConfigError, match="APCA_API_SECRET_KEY"):
        AlpacaCredentials.load(AlpacaVenueConfig(), {"APCA_API_KEY_ID": KEY})
    with pytest.raises(ConfigError, match="cannot read"):
        AlpacaCredentials.load(AlpacaVenueConfig(key_id_file=str(tmp_path / "none")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty") as err:
        AlpacaCredentials.load(
            AlpacaVenueConfig(secret_key_file=str(tmp_path / "empty")), {"APCA_API_KEY_ID": KEY}
        )
    assert KEY not in str(err.value)


def test_credentials_and_venue_are_redacted() -> None:
    """repr and str show <redacted>, never a key."""
    creds = AlpacaCredentials(KEY, SECRET)
    v = venue()
    for text in (repr(creds), str(creds), repr(v), str(v), f"{v!r} {creds}"):
        assert KEY not in text and SECRET not in text
        assert "<redacted>" in text


# --- how alpaca-py is set up --------------------------------------------------------------------


def test_paper_endpoint_by_default_and_sdk_retries_off() -> None:
    """Paper unless told otherwise; alpaca-py's own 429/504 re-sends disabled; a timeout set."""
    v = venue()
    assert v.url == "https://paper-api.alpaca.markets"
    assert v._client._retry == 0 and v._client._retry_codes == []
    assert v._client._use_raw_data is True
    assert v._client._session.timeout_s == 5.0  # type: ignore[attr-defined]
    assert venue(paper=False).url == "https://api.alpaca.markets"
    assert venue(base_url="http://127.0.0.1:9").url == "http://127.0.0.1:9"
    v.close()


def test_from_fleet_config() -> None:
    """[execution] venue_url/live/timeout and the alpaca instruments become the adapter's config."""
    inst = {"base": "BTC", "quote": "USD", "price_increment": "0.01", "size_increment": "0.0001"}
    raw = {
        "instruments": {
            "BTCUSD": {**inst, "venue": "alpaca"},
            "AAPL": {**inst, "base": "AAPL", "venue": "alpaca"},
            "ETHUSDT": {**inst, "base": "ETH", "quote": "USDT"},  # a binance instrument
        },
        "execution": {
            "venue": "alpaca",
            "venue_url": "http://127.0.0.1:9/",
            "venue_timeout_ms": 1500,
        },
    }
    v = AlpacaVenue.from_config(parse_config(raw), env=ENV)
    assert v.cfg.symbols == {"BTCUSD": "BTC/USD", "AAPL": "AAPL"}
    assert (v.url, v.cfg.request_timeout_s) == ("http://127.0.0.1:9", 1.5)
    raw["execution"]["venue_url"] = "https://api.alpaca.markets"  # type: ignore[index]
    with pytest.raises(ConfigError, match="live"):
        AlpacaVenue.from_config(parse_config(raw), env=ENV)
    raw["execution"]["live"] = True  # type: ignore[index]
    assert AlpacaVenue.from_config(parse_config(raw), env=ENV).cfg.paper is False


# --- exact money on the wire --------------------------------------------------------------------


def test_order_body_carries_exact_decimal_text() -> None:
    """alpaca-py's request models hold floats: the body gets the decimal text instead."""
    v = venue(symbols={"BTCUSD": "BTC/USD"})
    b = v._order_body(req("0.000123", "60001.37"))
    assert (b["qty"], b["limit_price"], b["symbol"], b["type"]) == (
        "0.000123",
        "60001.37",
        "BTC/USD",
        "limit",
    )
    assert (b["side"], b["time_in_force"], b["client_order_id"]) == ("buy", "gtc", "u-1")
    b = v._order_body(req("0.00000001"))
    assert b["qty"] == "0.00000001" and "limit_price" not in b and b["type"] == "market"
    assert decimal_text(D("1E-8")) == "0.00000001" and decimal_text(D("6E+4")) == "60000"
    assert v._order_body(req("1", symbol="AAPL"))["symbol"] == "AAPL"


def test_wire_order_maps_exactly_and_symbols_back() -> None:
    """An Alpaca order dict -> VenueOrder: Decimals from the text, Flotilla's symbol."""
    v = venue(symbols={"BTCUSD": "BTC/USD"})
    raw = {
        "id": "61e69015-8549-4bfd-b9c3-01e75843f47d",
        "client_order_id": "u-1",
        "symbol": "BTC/USD",
        "side": "buy",
        "type": "limit",
        "status": "partially_filled",
        "qty": "0.001",
        "filled_qty": "0.000123",
        "filled_avg_price": "60001.37",
        "limit_price": "60001.37",
        "updated_at": "2024-08-08T09:30:00.123456789Z",
    }
    o = v._order(raw)
    assert (o.symbol, o.status, o.qty, o.filled_qty, o.avg_px, o.limit_px) == (
        "BTCUSD",
        "partially_filled",
        D("0.001"),
        D("0.000123"),
        D("60001.37"),
        D("60001.37"),
    )
    assert o.update_ns == 1_723_109_400_123_456_789
    assert v._symbol_from("BTCUSD") == "BTCUSD" and v._symbol_from("ETH/USDT") == "ETHUSDT"
    with pytest.raises(TypeError):  # a binary float never becomes money
        v._order({**raw, "qty": 0.001})


def test_rfc3339_to_ns() -> None:
    """Alpaca's timestamps to the nanosecond; offsets honoured; junk is 0."""
    assert rfc3339_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert rfc3339_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert rfc3339_ns("1970-01-01T01:00:00.000000001+01:00") == 1
    assert rfc3339_ns(None) == 0 and rfc3339_ns("yesterday") == 0


# --- rate governor ------------------------------------------------------------------------------


class Clock:
    """A manual monotonic clock whose sleep advances it."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_governor_keeps_a_per_minute_window() -> None:
    """Three a minute: the fourth waits for the oldest to leave the window."""
    clock = Clock()
    g = RateGovernor(3, clock=clock, sleep=clock.sleep)
    for i in range(3):
        clock.t = 100.0 + i
        g.acquire(max_wait_s=0)
    assert clock.slept == []
    with pytest.raises(VenueRateLimited) as err:
        g.acquire(max_wait_s=5)  # the oldest (t=100) leaves at 160: 58 s away
    assert err.value.retry_after_s == pytest.approx(58)
    g.acquire(max_wait_s=60)
    assert clock.slept == [pytest.approx(58)] and clock.t == pytest.approx(160)


def test_governor_honours_the_venue() -> None:
    """After a 429 or with none remaining, nothing goes until the venue's reset."""
    clock = Clock()
    g = RateGovernor(200, clock=clock, sleep=clock.sleep)
    g.block_for(1.5)
    g.acquire(max_wait_s=2)
    assert clock.slept == [pytest.approx(1.5)]
    g.observe(remaining=0, reset_in_s=30)
    with pytest.raises(VenueRateLimited):
        g.acquire(max_wait_s=2)
    g.observe(remaining=5, reset_in_s=3000)  # requests left: no wait, whatever the reset
    g.observe(remaining=0, reset_in_s=3000)  # a reset beyond a minute is not believed
    assert g.blocked_until - clock.t <= 60
