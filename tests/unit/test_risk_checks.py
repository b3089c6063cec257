"""Risk pre-trade checks: every refusal reason, exposure from working orders, the rate limit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from libs.common.messages import Signal
from services.risk.book import RiskBook
from services.risk.checks import REASONS, Exposure, RateLimiter, SymbolBook, check_signal

from .builders import BTC, MS, T0, D, limits, quote, signal

# The default quote is 60000.00 / 60000.10, so the mid is 60000.05 and a 50 bps collar
# allows prices within 300.00025 of it.


def quoted_book(bid: str = "60000.00", ask: str = "60000.10") -> SymbolBook:
    """A flat book that has seen a quote."""
    return SymbolBook(quote=quote(bid=bid, ask=ask))


def fresh_rate() -> RateLimiter:
    """A rate limiter like the shipped config: 3 orders per 10 s."""
    return RateLimiter(3, 10_000)


def check(sig: Signal, book: SymbolBook | None = None, **limit_kw: object) -> str:
    """Run the checks against BTCUSDT with shipped-like limits."""
    return check_signal(sig, BTC, book or quoted_book(), limits(**limit_kw), fresh_rate())


# --- static checks ----------------------------------------------------------------------


def test_risk_accepts_an_order_within_every_limit() -> None:
    assert check(signal(qty="0.001")) == ""


def test_risk_refuses_a_symbol_it_has_no_instrument_for() -> None:
    reason = check_signal(signal(symbol="XRPUSDT"), None, quoted_book(), limits(), fresh_rate())

    assert reason == "unknown_instrument"


@pytest.mark.parametrize(
    "qty",
    ["0.000015", "0.0010001", "0", "-0.001", "NaN", "Infinity", "1E+30"],
    ids=["half_increment", "off_increment", "zero", "negative", "nan", "infinite", "absurd"],
)
def test_risk_refuses_quantity_that_is_not_a_positive_multiple_of_the_size_increment(
    qty: str,
) -> None:
    assert check(signal(qty=qty)) == "invalid_qty"


def test_risk_fails_closed_for_a_symbol_without_configured_limits() -> None:
    no_position_limit = limits(max_position={})
    no_qty_limit = limits(max_order_qty={})

    assert check_signal(signal(), BTC, quoted_book(), no_position_limit, fresh_rate()) == (
        "no_limit_configured"
    )
    assert check_signal(signal(), BTC, quoted_book(), no_qty_limit, fresh_rate()) == (
        "no_limit_configured"
    )


def test_risk_refuses_order_larger_than_max_order_qty() -> None:
    assert check(signal(qty="0.002")) == ""
    assert check(signal(qty="0.00201")) == "max_order_qty"


def test_risk_refuses_to_price_an_order_before_it_has_seen_a_quote() -> None:
    assert check(signal(), SymbolBook(quote=None)) == "no_reference_price"


@pytest.mark.parametrize(
    ("side", "limit_px", "expected"),
    [
        ("buy", "60300.05", ""),  # exactly 50 bps above the mid
        ("buy", "60300.06", "price_collar"),
        ("sell", "59700.05", ""),  # exactly 50 bps below the mid
        ("sell", "59700.04", "price_collar"),
        ("buy", "59000.00", "price_collar"),  # far below: a fat finger on either side
        ("sell", "61000.00", "price_collar"),
    ],
)
def test_risk_collars_limit_price_against_its_own_mid_on_both_sides(
    side: str, limit_px: str, expected: str
) -> None:
    assert check(signal(side=side, limit_px=limit_px, ref_px="60000.05")) == expected


@pytest.mark.parametrize(
    ("ref_px", "expected"),
    [("60000.10", ""), ("60300.06", "price_collar"), ("59700.04", "price_collar")],
)
def test_risk_collars_market_order_by_the_price_the_strategy_saw(
    ref_px: str, expected: str
) -> None:
    assert check(signal(ref_px=ref_px)) == expected


def test_risk_collars_limit_order_by_its_limit_not_its_reference_price() -> None:
    sane_ref_wild_limit = signal(limit_px="61000.00", ref_px="60000.10")
    wild_ref_sane_limit = signal(limit_px="60000.10", ref_px="61000.00")

    assert check(sane_ref_wild_limit) == "price_collar"
    assert check(wild_ref_sane_limit) == ""


@pytest.mark.parametrize(
    ("book", "sig"),
    [
        (quoted_book(bid="NaN"), signal()),
        (quoted_book(ask="Infinity"), signal()),
        (quoted_book(), signal(ref_px="NaN")),
        (quoted_book(), signal(limit_px="Infinity")),
    ],
    ids=["nan_bid", "infinite_ask", "nan_ref_px", "infinite_limit"],
)
def test_risk_refuses_non_finite_prices_instead_of_crashing(book: SymbolBook, sig: Signal) -> None:
    assert check(sig, book) == "price_collar"


def test_risk_refuses_order_whose_notional_exceeds_the_cap() -> None:
    # 0.002 BTC at 60000.10 is 120.0002 USDT
    assert check(signal(qty="0.002"), max_order_notional=D("120.0002")) == ""
    assert check(signal(qty="0.002"), max_order_notional=D("120.0001")) == "max_order_notional"


def test_risk_caps_notional_of_a_limit_order_at_its_limit_price() -> None:
    sig = signal(qty="0.002", limit_px="60250.00", ref_px="60000.10")  # 120.5 USDT at the limit

    assert check(sig, max_order_notional=D("120.2")) == "max_order_notional"


# --- position and working-order exposure ------------------------------------------------


def test_risk_refuses_order_that_would_exceed_max_position() -> None:
    book = quoted_book()
    book.position.apply_fill("buy", D("0.002"), D("60000"), D("0"))

    assert check(signal(side="buy", qty="0.001"), book) == ""  # lands exactly on 0.003
    assert check(signal(side="buy", qty="0.002"), book) == "max_position"


def test_risk_refuses_short_that_would_exceed_max_position() -> None:
    book = quoted_book()
    book.position.apply_fill("sell", D("0.002"), D("60000"), D("0"))

    assert check(signal(side="sell", qty="0.002", ref_px="60000.00"), book) == "max_position"


def test_risk_counts_orders_sent_but_not_yet_filled_toward_max_position() -> None:
    # SEC 15c3-5: exposure is what has been entered, not only what has filled.
    risk = RiskBook(["BTCUSDT"])
    risk.symbols["BTCUSDT"].quote = quote()
    risk.track_order("o-1", "BTCUSDT", "buy", D("0.002"))
    risk.track_order("o-2", "BTCUSDT", "buy", D("0.001"))
    book = risk.symbols["BTCUSDT"]

    assert book.position.qty == 0
    assert check(signal(side="buy", qty="0.001"), book) == "max_position"


def test_risk_frees_exposure_when_a_working_order_ends() -> None:
    risk = RiskBook(["BTCUSDT"])
    risk.symbols["BTCUSDT"].quote = quote()
    risk.track_order("o-1", "BTCUSDT", "buy", D("0.003"))
    risk.untrack("o-1")

    assert check(signal(side="buy", qty="0.001"), risk.symbols["BTCUSDT"]) == ""


def test_risk_does_not_let_working_buys_block_a_sell() -> None:
    book = quoted_book()
    book.exposure = Exposure(buy=D("0.003"), sell=D("0"))

    assert check(signal(side="sell", qty="0.002", ref_px="60000.00"), book) == ""


def test_risk_counts_working_sells_toward_the_short_limit() -> None:
    book = quoted_book()
    book.exposure = Exposure(buy=D("0"), sell=D("0.002"))

    assert check(signal(side="sell", qty="0.002", ref_px="60000.00"), book) == "max_position"


# --- rate limit -------------------------------------------------------------------------


class Gatekeeper:
    """What the risk service does with a verdict: an accepted order is recorded in the limiter."""

    def __init__(self, rate: RateLimiter) -> None:
        self.rate = rate
        self.book = quoted_book()

    def submit(self, at_ms: int) -> str:
        sig = signal(qty="0.00001", ts=T0 + at_ms * MS)
        reason = check_signal(sig, BTC, self.book, limits(), self.rate)
        if not reason:
            self.rate.record(sig.ts_event)
        return reason


def test_risk_refuses_orders_beyond_the_rate_limit_instead_of_queueing_them() -> None:
    gate = Gatekeeper(RateLimiter(3, 10_000))

    verdicts = [gate.submit(at_ms) for at_ms in (0, 100, 200, 300, 400)]

    assert verdicts == ["", "", "", "rate_limit", "rate_limit"]
    assert len(gate.rate.sent) == 3  # the refused ones are not waiting to go out later


def test_rate_limit_window_slides_by_event_time() -> None:
    gate = Gatekeeper(RateLimiter(3, 10_000))
    for at_ms in (0, 4_000, 8_000):
        assert gate.submit(at_ms) == ""

    assert gate.submit(9_999) == "rate_limit"  # all three still inside the window
    assert gate.submit(10_000) == ""  # the order at 0 has left the window
    assert gate.submit(10_001) == "rate_limit"  # exactly one slot was freed
    assert gate.submit(14_000) == ""  # the order at 4000 has left too


def test_rate_limit_is_not_consumed_by_refused_orders() -> None:
    gate = Gatekeeper(RateLimiter(1, 1_000))
    assert gate.submit(0) == ""
    for at_ms in range(100, 1_000, 100):
        assert gate.submit(at_ms) == "rate_limit"

    assert gate.submit(1_000) == ""


def test_every_refusal_reason_is_a_published_reason_code() -> None:
    produced = {
        check(signal(qty="0")),
        check(signal(qty="0.01")),
        check(signal(), SymbolBook()),
        check(signal(ref_px="1")),
        check(signal(), max_order_notional=D("1")),
        check(signal(), max_position={"BTCUSDT": D("0.0001")}),
        check_signal(signal(), None, quoted_book(), limits(), fresh_rate()),
        check_signal(signal(), BTC, quoted_book(), limits(max_position={}), fresh_rate()),
    }

    assert produced <= set(REASONS)
    assert "" not in produced


# --- property: an accepted order never breaks a limit -------------------------------------

INC = BTC.size_increment
MID = D("60000.05")
units = st.integers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from(["buy", "sell"]),
    qty_units=units(-2, 250),
    position_units=units(-300, 300),
    working_buy_units=units(0, 200),
    working_sell_units=units(0, 200),
    max_position_units=units(1, 400),
    max_qty_units=units(1, 400),
    notional_cents=units(1_000, 30_000),
    price_offset_cents=units(-40_000, 40_000),
    is_limit=st.booleans(),
)
def test_accepted_order_never_lets_worst_case_position_or_order_size_exceed_limits(
    side: str,
    qty_units: int,
    position_units: int,
    working_buy_units: int,
    working_sell_units: int,
    max_position_units: int,
    max_qty_units: int,
    notional_cents: int,
    price_offset_cents: int,
    is_limit: bool,
) -> None:
    qty = qty_units * INC
    max_position = max_position_units * INC
    max_qty = max_qty_units * INC
    max_notional = Decimal(notional_cents) / 100
    price = MID + Decimal(price_offset_cents) / 100
    book = quoted_book(bid="60000.00", ask="60000.10")
    book.position.qty = position_units * INC
    book.exposure = Exposure(buy=working_buy_units * INC, sell=working_sell_units * INC)
    sig = signal(
        side=side,
        qty=str(qty),
        ref_px=str(MID if is_limit else price),
        limit_px=str(price) if is_limit else None,
    )
    lim = limits(
        max_order_qty={"BTCUSDT": max_qty},
        max_position={"BTCUSDT": max_position},
        max_order_notional=max_notional,
    )

    reason = check_signal(sig, BTC, book, lim, RateLimiter(1_000, 1_000))
    event(reason or "accepted")

    if side == "buy":
        worst = book.position.qty + book.exposure.buy + qty
    else:
        worst = book.position.qty - book.exposure.sell - qty
    within_limits = (
        qty > 0
        and qty <= max_qty
        and abs(price - MID) / MID * 10_000 <= D("50")
        and qty * price <= max_notional
        and (abs(worst) <= max_position or abs(worst) < abs(book.position.qty))
    )
    if reason == "":
        assert qty > 0
        assert qty <= max_qty
        assert qty * price <= max_notional
        assert abs(worst) <= max_position or abs(worst) < abs(book.position.qty)
    else:
        assert reason in REASONS
    assert (reason == "") == within_limits  # and nothing inside the limits is refused


def test_risk_allows_an_order_that_shrinks_an_oversized_position() -> None:
    book = quoted_book(bid="60000.00", ask="60000.10")
    book.position.qty = D("0.010")  # over the 0.003 limit, e.g. after the limit was lowered
    lim = limits(max_position={"BTCUSDT": D("0.003")})

    reducing = check_signal(
        signal(side="sell", qty="0.001", ref_px="60000.00"), BTC, book, lim, RateLimiter(10, 1000)
    )
    growing = check_signal(signal(side="buy", qty="0.001"), BTC, book, lim, RateLimiter(10, 1000))

    assert reducing == ""
    assert growing == "max_position"
