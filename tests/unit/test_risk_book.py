"""Risk's book: fills counted exactly once, and a restart that neither loses nor double counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.messages import OrderUpdate
from libs.common.store import EmbeddedStore
from services.risk.book import RiskBook

from .builders import T0, D, fill, quote

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "s.sqlite")
    yield s
    s.close()


def update(coid: str, status: str, qty: str, filled: str, side: str = "buy") -> OrderUpdate:
    return OrderUpdate(
        ts_event=T0,
        ts_init=T0,
        client_order_id=coid,
        strategy="ofi",
        venue="binance",
        symbol="BTCUSDT",
        side=side,  # type: ignore[arg-type]
        order_type="market",
        status=status,  # type: ignore[arg-type]
        qty=D(qty),
        filled_qty=D(filled),
    )


def test_a_fill_delivered_twice_moves_the_position_once() -> None:
    book = RiskBook(SYMBOLS)
    f = fill(1, side="buy", qty="0.001", price="60000")

    first = book.apply_fill(f)
    second = book.apply_fill(f)

    assert (first, second) == (True, False)
    assert book.symbols["BTCUSDT"].position.qty == D("0.001")
    assert book.last_fill_seq == 1


def test_an_older_fill_arriving_late_is_not_counted_again() -> None:
    book = RiskBook(SYMBOLS)
    book.apply_fill(fill(1, qty="0.001"))
    book.apply_fill(fill(2, qty="0.002"))

    assert book.apply_fill(fill(1, qty="0.001")) is False
    assert book.symbols["BTCUSDT"].position.qty == D("0.003")


def test_working_order_exposure_follows_execution_updates() -> None:
    book = RiskBook(SYMBOLS)
    book.track_order("o-1", "BTCUSDT", "buy", D("0.002"))

    book.apply_update(update("o-1", "partially_filled", qty="0.002", filled="0.0015"))
    assert book.symbols["BTCUSDT"].exposure.buy == D("0.0005")

    book.apply_update(update("o-1", "filled", qty="0.002", filled="0.002"))
    assert book.symbols["BTCUSDT"].exposure.buy == 0
    assert book.working == {}


def test_risk_restart_restores_positions_fill_seq_exposure_and_counters(
    store: EmbeddedStore,
) -> None:
    before = RiskBook(SYMBOLS)
    before.apply_fill(fill(1, side="buy", qty="0.003", price="60000.10", fee="0.18"))
    before.apply_fill(fill(2, side="sell", qty="0.001", price="60010.20", fee="0.06"))
    before.apply_fill(fill(3, side="sell", qty="0.02", price="2500.5", symbol="ETHUSDT"))
    before.track_order("o-9", "BTCUSDT", "sell", D("0.001"))
    before.track_order("o-10", "BTCUSDT", "buy", D("0.002"))
    before.rejections["max_position"] += 2
    before.rejections["rate_limit"] += 1
    before.orders_sent = 5
    before.order_timeouts = 1
    before.save(store)

    after = RiskBook(SYMBOLS)
    restored = after.load(store)

    assert restored is True
    assert after.last_fill_seq == 3
    for sym in SYMBOLS:
        assert after.symbols[sym].position == before.symbols[sym].position
    assert after.symbols["BTCUSDT"].position.qty == D("0.002")
    assert after.symbols["BTCUSDT"].exposure.sell == D("0.001")
    assert after.symbols["BTCUSDT"].exposure.buy == D("0.002")
    assert after.working == before.working
    assert after.rejections == {"max_position": 2, "rate_limit": 1}
    assert (after.orders_sent, after.order_timeouts) == (5, 1)


def test_restarted_risk_does_not_double_count_a_fill_it_already_applied(
    store: EmbeddedStore,
) -> None:
    before = RiskBook(SYMBOLS)
    f = fill(7, side="buy", qty="0.001")
    before.apply_fill(f)
    before.save(store)

    after = RiskBook(SYMBOLS)
    after.load(store)
    replayed = after.apply_fill(f)  # execution re-sends it on recovery

    assert replayed is False
    assert after.symbols["BTCUSDT"].position.qty == D("0.001")


def test_restored_position_keeps_exact_decimals(store: EmbeddedStore) -> None:
    before = RiskBook(SYMBOLS)
    before.apply_fill(fill(1, side="buy", qty="0.1", price="0.1", fee="0.00000001"))
    before.apply_fill(fill(2, side="buy", qty="0.2", price="0.2", fee="0.00000002"))
    before.save(store)

    after = RiskBook(SYMBOLS)
    after.load(store)

    pos = after.symbols["BTCUSDT"].position
    assert pos.qty == D("0.3")
    assert pos.fees == D("0.00000003")
    assert pos.avg_px == before.symbols["BTCUSDT"].position.avg_px


def test_a_fresh_store_means_a_fresh_book(store: EmbeddedStore) -> None:
    book = RiskBook(SYMBOLS)

    assert book.load(store) is False
    assert book.last_fill_seq == 0


def test_summary_values_open_positions_at_the_mid() -> None:
    book = RiskBook(SYMBOLS)
    book.apply_fill(fill(1, side="buy", qty="0.001", price="60000"))
    book.symbols["BTCUSDT"].quote = quote(bid="60010.00", ask="60010.10")

    summary = book.summary()

    assert summary["unrealized_pnl"] == "0.01005000"  # 0.001 * (60010.05 - 60000)
    assert summary["positions"]["BTCUSDT"] == "0.001"
