"""Average-cost positions and PnL, exact in Decimal."""

from __future__ import annotations

from decimal import Decimal

from libs.common.positions import Position, quantize_money

from .builders import D

NO_FEE = D("0")


def test_opening_a_long_sets_quantity_and_entry_price() -> None:
    pos = Position()

    pos.apply_fill("buy", D("0.5"), D("100.25"), NO_FEE)

    assert (pos.qty, pos.avg_px, pos.realized_pnl) == (D("0.5"), D("100.25"), D("0"))


def test_adding_to_a_position_averages_the_entry_price() -> None:
    pos = Position()
    pos.apply_fill("buy", D("1"), D("100"), NO_FEE)

    pos.apply_fill("buy", D("3"), D("104"), NO_FEE)

    assert pos.qty == D("4")
    assert pos.avg_px == D("103")  # (100 + 312) / 4
    assert pos.realized_pnl == 0


def test_tenths_add_up_exactly() -> None:
    pos = Position()

    pos.apply_fill("buy", D("0.1"), D("1"), NO_FEE)
    pos.apply_fill("buy", D("0.2"), D("1"), NO_FEE)

    assert pos.qty == D("0.3")  # not 0.30000000000000004


def test_partial_close_realizes_pnl_on_the_closed_part_only() -> None:
    pos = Position()
    pos.apply_fill("buy", D("0.3"), D("100"), NO_FEE)

    pos.apply_fill("sell", D("0.1"), D("100.1"), NO_FEE)

    assert pos.realized_pnl == D("0.01")  # 0.1 * 0.1, exact
    assert pos.qty == D("0.2")
    assert pos.avg_px == D("100")  # the rest keeps its entry price


def test_closing_a_short_at_a_lower_price_is_a_profit() -> None:
    pos = Position()
    pos.apply_fill("sell", D("2"), D("110"), NO_FEE)

    pos.apply_fill("buy", D("2"), D("100"), NO_FEE)

    assert pos.qty == 0
    assert pos.realized_pnl == D("20")
    assert pos.avg_px == 0


def test_flipping_through_zero_realizes_the_old_side_and_opens_the_new_at_the_fill_price() -> None:
    pos = Position()
    pos.apply_fill("buy", D("1"), D("100"), NO_FEE)

    pos.apply_fill("sell", D("3"), D("110"), NO_FEE)

    assert pos.realized_pnl == D("10")
    assert pos.qty == D("-2")
    assert pos.avg_px == D("110")


def test_fees_reduce_realized_pnl_and_are_totalled() -> None:
    pos = Position()
    pos.apply_fill("buy", D("1"), D("100"), D("0.1"))

    pos.apply_fill("sell", D("1"), D("101"), D("0.101"))

    assert pos.fees == D("0.201")
    assert pos.realized_pnl == D("0.799")  # 1 gross - 0.201 fees


def test_fees_alone_make_a_round_trip_at_the_same_price_a_loss() -> None:
    pos = Position()
    pos.apply_fill("buy", D("0.001"), D("60000"), D("0.06"))
    pos.apply_fill("sell", D("0.001"), D("60000"), D("0.06"))

    assert pos.realized_pnl == D("-0.12")


def test_unrealized_pnl_marks_the_open_position() -> None:
    long = Position()
    long.apply_fill("buy", D("2"), D("100"), NO_FEE)
    short = Position()
    short.apply_fill("sell", D("2"), D("110"), NO_FEE)

    assert long.unrealized(D("101.5")) == D("3.0")
    assert short.unrealized(D("100")) == D("20")
    assert long.unrealized(None) == 0
    assert Position().unrealized(D("100")) == 0


def test_unrealized_is_zero_after_closing_and_realized_holds_the_result() -> None:
    pos = Position()
    pos.apply_fill("buy", D("0.1"), D("0.2"), NO_FEE)
    pos.apply_fill("sell", D("0.1"), D("0.3"), NO_FEE)

    assert pos.unrealized(D("1")) == 0
    assert pos.realized_pnl == D("0.01")


def test_pnl_is_reported_with_eight_decimal_places() -> None:
    assert quantize_money(D("0.1") + D("0.2")) == "0.30000000"
    assert quantize_money(D("-0.123456789")) == "-0.12345679"
    assert all(isinstance(v, Decimal) for v in (Position().qty, Position().realized_pnl))
