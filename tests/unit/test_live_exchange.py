"""LiveExchange: the journal-first, never-resend rules for a live venue.

The venue here is an in-memory double of the Venue protocol that behaves like an exchange
(orders, fills, a lost reply); the real adapters are tested against local fake venues in
tests/integration/test_binance_venue.py and test_alpaca_venue.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from libs.common.clock import FakeClock
from libs.common.messages import Fill, OrderRequest, OrderUpdate
from libs.common.store import EmbeddedStore
from services.execution.live import LiveExchange
from services.execution.venue import VenueFill, VenueOrder, VenueRejected, VenueUnavailable

D = Decimal


class BookVenue:
    """An exchange in memory: accepts orders, fills them on demand, can lose a reply."""

    name = "testvenue"

    def __init__(self) -> None:
        self.orders: dict[str, VenueOrder] = {}
        self.fills: list[VenueFill] = []
        self.submits = 0
        self.lose_next_reply = False
        self.reject_next = ""
        self.held: dict[str, Decimal] = {}

    def submit(self, req: OrderRequest) -> VenueOrder:
        self.submits += 1
        if self.reject_next:
            reason, self.reject_next = self.reject_next, ""
            raise VenueRejected(reason, "-2010", "refused")
        order = VenueOrder(
            req.client_order_id,
            f"v{self.submits}",
            req.symbol,
            req.side,
            req.order_type,
            "new",
            req.qty,
            D(0),
        )
        self.orders[req.client_order_id] = order
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise VenueUnavailable("read timeout")
        return order

    def fill(self, coid: str, qty: str, price: str) -> None:
        order = self.orders[coid]
        filled = order.filled_qty + D(qty)
        status = "filled" if filled == order.qty else "partially_filled"
        self.orders[coid] = replace(order, filled_qty=filled, status=status, avg_px=D(price))
        signed = D(qty) if order.side == "buy" else -D(qty)
        self.held[order.symbol] = self.held.get(order.symbol, D(0)) + signed
        self.fills.append(
            VenueFill(
                coid,
                str(len(self.fills) + 1),
                order.symbol,
                order.side,
                D(qty),
                D(price),
                D("0.01"),
                "USDT",
                "taker",
                1,
            )
        )

    def cancel(self, symbol: str, coid: str) -> VenueOrder:
        order = self.orders.get(coid)
        if order is None:
            raise VenueRejected("venue_unknown_order")
        if order.status in ("new", "partially_filled"):
            order = self.orders[coid] = replace(order, status="canceled")
        return order

    def query(self, symbol: str, coid: str) -> VenueOrder | None:
        return self.orders.get(coid)

    def open_orders(self) -> list[VenueOrder]:
        return [o for o in self.orders.values() if o.status in ("new", "partially_filled")]

    def cancel_all(self) -> list[VenueOrder]:
        return [self.cancel(o.symbol, o.client_order_id) for o in self.open_orders()]

    def positions(self) -> dict[str, Decimal]:
        return dict(self.held)

    def fills_since(self, cursor: str) -> tuple[list[VenueFill], str]:
        start = int(cursor or 0)
        return self.fills[start:], str(len(self.fills))

    def close(self) -> None:
        pass


class Recorder:
    """What LiveExchange emitted before returning (the journal-first record)."""

    def __init__(self) -> None:
        self.events: list[OrderUpdate | Fill] = []

    def __call__(self, events: list[OrderUpdate | Fill]) -> None:
        self.events += events


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "s.sqlite")
    yield s
    s.close()


def exchange(store: EmbeddedStore, venue: BookVenue) -> tuple[LiveExchange, Recorder, FakeClock]:
    clock, rec = FakeClock(), Recorder()
    return LiveExchange(venue, store, clock, rec, 250, 2_000, 5_000), rec, clock  # type: ignore[arg-type]


def order(coid: str = "fl-1", side: str = "buy", qty: str = "0.002") -> OrderRequest:
    return OrderRequest(
        ts_event=1,
        ts_init=1,
        client_order_id=coid,
        signal_id=coid,
        strategy="ofi",
        venue="binance",
        symbol="BTCUSDT",
        side=side,
        order_type="market",
        qty=D(qty),  # type: ignore[arg-type]
    )


def test_an_order_is_journaled_as_unknown_before_the_venue_hears_of_it(
    store: EmbeddedStore,
) -> None:
    venue = BookVenue()
    ex, rec, _ = exchange(store, venue)
    seen_before_send: list[str] = []
    real_submit = venue.submit

    def spy(req: OrderRequest) -> VenueOrder:
        seen_before_send.extend(e.status for e in rec.events if isinstance(e, OrderUpdate))
        return real_submit(req)

    venue.submit = spy  # type: ignore[method-assign]
    events = ex.submit(order())

    assert seen_before_send == ["unknown"]
    assert [e.status for e in events if isinstance(e, OrderUpdate)] == ["new"]


def test_a_lost_reply_is_resolved_by_query_and_never_resent(store: EmbeddedStore) -> None:
    venue = BookVenue()
    venue.lose_next_reply = True
    ex, _, clock = exchange(store, venue)

    events = ex.submit(order())
    assert [e.status for e in events if isinstance(e, OrderUpdate)] == ["unknown"]
    clock.advance_ms(300)
    resolved = ex.poll()

    assert venue.submits == 1
    assert [e.status for e in resolved if isinstance(e, OrderUpdate)] == ["new"]
    assert ex.orders["fl-1"].status == "new"


def test_an_order_the_venue_never_got_is_rejected_only_after_the_grace(
    store: EmbeddedStore,
) -> None:
    venue = BookVenue()
    ex, _, clock = exchange(store, venue)
    venue.submit = lambda req: (_ for _ in ()).throw(VenueUnavailable("connect timeout"))  # type: ignore[method-assign]

    ex.submit(order())
    clock.advance_ms(300)
    assert ex.poll() == []  # absent, but it may still be in flight
    clock.advance_ms(5_000)
    late = ex.poll()

    assert [(e.status, e.reason) for e in late if isinstance(e, OrderUpdate)] == [
        ("rejected", "venue_never_received")
    ]


def test_a_venue_rejection_carries_its_reason_code(store: EmbeddedStore) -> None:
    venue = BookVenue()
    venue.reject_next = "venue_insufficient_balance"
    ex, _, _ = exchange(store, venue)

    events = ex.submit(order())

    assert [(e.status, e.reason) for e in events if isinstance(e, OrderUpdate)] == [
        ("rejected", "venue_insufficient_balance")
    ]


def test_partial_fills_give_fill_seqs_quantity_and_average_price(store: EmbeddedStore) -> None:
    venue = BookVenue()
    ex, _, clock = exchange(store, venue)
    ex.submit(order(qty="0.003"))
    venue.fill("fl-1", "0.001", "60000")
    venue.fill("fl-1", "0.002", "60003")
    clock.advance_ms(300)

    events = ex.poll()
    clock.advance_ms(300)
    again = ex.poll()

    fills = [e for e in events if isinstance(e, Fill)]
    assert [f.fill_seq for f in fills] == [1, 2]
    assert ex.orders["fl-1"].status == "filled"
    assert ex.orders["fl-1"].notional / ex.orders["fl-1"].filled == D("60002")
    assert again == []  # each venue trade once


def test_cancel_all_reaches_every_open_order(store: EmbeddedStore) -> None:
    venue = BookVenue()
    ex, _, _ = exchange(store, venue)
    for i in range(3):
        ex.submit(order(coid=f"fl-{i}"))

    events = ex.cancel_all("trading_halted")

    assert sorted(e.client_order_id for e in events if isinstance(e, OrderUpdate)) == [
        "fl-0",
        "fl-1",
        "fl-2",
    ]
    assert venue.open_orders() == [] and ex.working() == []


def test_reconcile_reports_foreign_orders_and_position_drift(store: EmbeddedStore) -> None:
    venue = BookVenue()
    ex, _, _ = exchange(store, venue)
    assert ex.reconcile({}) == ([], [])  # first start: the baseline is the venue's positions
    venue.orders["someone-else"] = VenueOrder(
        "someone-else", "v9", "BTCUSDT", "buy", "limit", "new", D("1"), D(0)
    )
    venue.held["BTCUSDT"] = D("0.5")

    _, problems = exchange(store, venue)[0].reconcile({})

    assert any("someone-else" in p for p in problems)
    assert any("BTCUSDT: venue position 0.5" in p for p in problems)


def test_a_restart_with_orders_open_at_the_venue_reconciles_cleanly(store: EmbeddedStore) -> None:
    venue = BookVenue()
    first, rec, _ = exchange(store, venue)
    first.reconcile({})  # the first start stores the baseline
    first.submit(order(coid="fl-rest", qty="0.005"))
    venue.fill("fl-rest", "0.002", "60000")
    journaled = [e for e in rec.events if isinstance(e, OrderUpdate)]

    restarted, _, _ = exchange(store, venue)
    for upd in journaled:  # what execution restores from its journal
        restarted.restore(upd)
    events, problems = restarted.reconcile({"BTCUSDT": D("0.002")})

    assert problems == []
    assert [o.req.client_order_id for o in restarted.working()] == ["fl-rest"]
    assert restarted.orders["fl-rest"].status == "partially_filled"
    assert [e.filled_qty for e in events if isinstance(e, OrderUpdate)] == [D("0.002")]
