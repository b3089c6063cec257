"""The paper exchange: fills against the replayed touch, partial fills, maker/taker, fees."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.common.messages import Fill, OrderUpdate
from services.execution.paper import FeeSchedule, PaperExchange

from .builders import MS, T0, D, order, quote

TAKER_BPS = D("10")
MAKER_BPS = D("2")


def exchange(first_fill_seq: int = 1) -> PaperExchange:
    """A paper venue with distinct taker and maker fees."""
    return PaperExchange(FeeSchedule(taker_bps=TAKER_BPS, maker_bps=MAKER_BPS), first_fill_seq)


def fills(events: list[OrderUpdate | Fill]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def last_update(events: list[OrderUpdate | Fill]) -> OrderUpdate:
    return [e for e in events if isinstance(e, OrderUpdate)][-1]


def test_market_buy_fills_at_the_ask_up_to_the_displayed_size_and_keeps_working() -> None:
    ex = exchange()
    ex.on_quote(quote(bid="99.90", ask="100.00", ask_qty="0.5"))

    events = ex.submit(order("o-1", side="buy", qty="0.8"))

    [f] = fills(events)
    assert (f.qty, f.price, f.liquidity) == (D("0.5"), D("100.00"), "taker")
    upd = last_update(events)
    assert upd.status == "partially_filled"
    assert upd.filled_qty == D("0.5")
    assert [o.req.client_order_id for o in ex.working()] == ["o-1"]
    assert ex.orders["o-1"].leaves == D("0.3")


def test_market_order_remainder_fills_on_the_next_quote() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="100.00", ask_qty="0.5"))
    ex.submit(order("o-1", side="buy", qty="0.8"))

    events = ex.on_quote(quote(ask="100.01", ask_qty="2", ts=T0 + 5 * MS))

    [f] = fills(events)
    assert (f.qty, f.price, f.liquidity) == (D("0.3"), D("100.01"), "taker")
    assert f.ts_event == T0 + 5 * MS  # stamped with the market event that filled it
    upd = last_update(events)
    assert upd.status == "filled"
    assert upd.filled_qty == D("0.8")
    assert upd.avg_px == D("100.00375")  # (0.5 * 100.00 + 0.3 * 100.01) / 0.8, exactly
    assert ex.working() == []


def test_market_sell_fills_at_the_bid() -> None:
    ex = exchange()
    ex.on_quote(quote(bid="99.90", bid_qty="1", ask="100.00"))

    [f] = fills(ex.submit(order("o-1", side="sell", qty="0.4")))

    assert (f.side, f.qty, f.price) == ("sell", D("0.4"), D("99.90"))


def test_market_order_submitted_before_any_quote_waits_for_one() -> None:
    ex = exchange()

    assert fills(ex.submit(order("o-1", qty="0.1"))) == []
    [f] = fills(ex.on_quote(quote(ask="100.00")))

    assert f.price == D("100.00")


def test_two_orders_cannot_both_consume_the_same_displayed_size() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="100.00", ask_qty="0.5"))

    first = fills(ex.submit(order("o-1", qty="0.3")))
    second = fills(ex.submit(order("o-2", qty="0.3")))
    third = fills(ex.submit(order("o-3", qty="0.3")))

    assert [f.qty for f in first] == [D("0.3")]
    assert [f.qty for f in second] == [D("0.2")]
    assert third == []


def test_orders_working_on_a_quote_share_its_size_in_time_priority() -> None:
    ex = exchange()
    ex.submit(order("o-1", qty="0.3"))
    ex.submit(order("o-2", qty="0.3"))

    events = ex.on_quote(quote(ask="100.00", ask_qty="0.4"))

    assert [(f.client_order_id, f.qty) for f in fills(events)] == [
        ("o-1", D("0.3")),
        ("o-2", D("0.1")),
    ]


def test_marketable_limit_order_fills_at_the_touch_as_taker() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="100.00", ask_qty="1"))

    [f] = fills(ex.submit(order("o-1", qty="0.2", limit_px="100.50")))

    assert (f.price, f.liquidity) == (D("100.00"), "taker")
    assert f.fee == D("0.2") * D("100.00") * TAKER_BPS / 10_000


def test_limit_order_that_is_not_marketable_does_not_fill() -> None:
    ex = exchange()
    ex.on_quote(quote(bid="99.90", ask="100.00"))

    events = ex.submit(order("o-1", qty="0.2", limit_px="99.95"))
    later = ex.on_quote(quote(bid="99.91", ask="99.96"))

    assert fills(events) == [] and fills(later) == []
    assert last_update(events).status == "new"
    assert [o.req.client_order_id for o in ex.working()] == ["o-1"]


def test_resting_limit_fills_at_its_own_price_as_maker_when_the_touch_crosses_it() -> None:
    ex = exchange()
    ex.on_quote(quote(bid="99.90", ask="100.00"))
    ex.submit(order("o-1", side="buy", qty="0.2", limit_px="99.95"))

    [f] = fills(ex.on_quote(quote(bid="99.80", ask="99.90", ask_qty="1")))

    assert (f.price, f.liquidity) == (D("99.95"), "maker")
    assert f.fee == D("0.2") * D("99.95") * MAKER_BPS / 10_000


def test_resting_limit_sell_fills_at_its_own_price_when_the_bid_reaches_it() -> None:
    ex = exchange()
    ex.on_quote(quote(bid="99.90", ask="100.00"))
    ex.submit(order("o-1", side="sell", qty="0.2", limit_px="100.05"))

    [f] = fills(ex.on_quote(quote(bid="100.05", bid_qty="1", ask="100.10")))

    assert (f.side, f.price, f.liquidity) == ("sell", D("100.05"), "maker")


def test_canceled_order_never_fills() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="100.00"))
    ex.submit(order("o-1", qty="0.2", limit_px="99.00"))

    upd = last_update(ex.cancel("o-1", T0 + MS, "user"))
    later = ex.on_quote(quote(bid="98.00", ask="98.50"))

    assert (upd.status, upd.reason) == ("canceled", "user")
    assert fills(later) == []
    assert ex.working() == []


def test_cancel_of_an_unknown_or_finished_order_changes_nothing() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="100.00"))
    ex.submit(order("o-1", qty="0.2"))  # fully filled at once

    assert ex.cancel("o-1", T0, "late") == []
    assert ex.cancel("nope", T0, "unknown") == []
    assert ex.orders["o-1"].status == "filled"


def test_fee_is_notional_times_bps_over_ten_thousand_exactly() -> None:
    ex = PaperExchange(FeeSchedule(taker_bps=D("7.5"), maker_bps=D("0")))
    ex.on_quote(quote(ask="61837.64", ask_qty="1"))

    [f] = fills(ex.submit(order("o-1", qty="0.00123")))

    assert f.fee == Decimal("0.0570452229")  # 0.00123 * 61837.64 = 76.0602972 USDT, at 7.5 bps
    assert f.fee_asset == "USDT"


def test_fill_seq_is_gap_free_and_increasing_across_symbols() -> None:
    ex = exchange(first_fill_seq=41)  # e.g. continuing after a restart
    ex.on_quote(quote(symbol="BTCUSDT", ask="60000.00", ask_qty="0.001"))
    ex.on_quote(quote(symbol="ETHUSDT", ask="2500.00", ask_qty="0.01"))

    events = ex.submit(order("b-1", symbol="BTCUSDT", qty="0.002"))
    events += ex.submit(order("e-1", symbol="ETHUSDT", qty="0.02"))
    events += ex.on_quote(quote(symbol="BTCUSDT", ask="60000.10", ask_qty="1"))
    events += ex.on_quote(quote(symbol="ETHUSDT", ask="2500.10", ask_qty="1"))

    seqs = [f.fill_seq for f in fills(events)]
    assert seqs == [41, 42, 43, 44]
    assert len({f.fill_id for f in fills(events)}) == 4


def test_fill_money_fields_are_decimals_and_survive_the_wire_exactly() -> None:
    ex = exchange()
    ex.on_quote(quote(ask="61837.64", ask_qty="0.00075"))
    events = ex.submit(order("o-1", qty="0.001"))
    events += ex.on_quote(quote(ask="61837.65", ask_qty="1"))

    for f in fills(events):
        assert all(isinstance(v, Decimal) for v in (f.qty, f.price, f.fee))
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(f), type=Fill) == f
    for upd in (e for e in events if isinstance(e, OrderUpdate)):
        assert isinstance(upd.filled_qty, Decimal)
        assert upd.avg_px is None or isinstance(upd.avg_px, Decimal)


def test_restart_restores_only_unfinished_orders_as_working() -> None:
    before = exchange()
    before.on_quote(quote(ask="100.00", ask_qty="0.5"))
    journaled = before.submit(order("done", qty="0.2")) + before.submit(order("partial", qty="0.8"))
    updates = [e for e in journaled if isinstance(e, OrderUpdate)]

    after = exchange()
    for upd in updates:
        after.restore(upd)

    assert [o.req.client_order_id for o in after.working()] == ["partial"]
    assert after.orders["done"].status == "filled"
    assert after.orders["partial"].leaves == D("0.5")
