"""The paper exchange: fills market and limit orders against the replayed top of book.

Liquidity is the quoted size at the touch; what one order takes is gone until the next quote
replaces it, so two orders cannot both fill the same displayed size. An order bigger than the
touch fills partially and keeps working against later quotes. A resting limit order fills at
its own price (maker) when the opposite touch reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from libs.common.messages import Fill, OrderRequest, OrderUpdate, Quote

BPS = Decimal(10_000)
ZERO = Decimal(0)


@dataclass
class WorkingOrder:
    """An order at the paper venue and how much of it has filled."""

    req: OrderRequest
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    status: str = "new"
    reason: str = ""

    @property
    def leaves(self) -> Decimal:
        """Quantity still to fill."""
        return self.req.qty - self.filled


@dataclass
class Touch:
    """The latest quote and how much of its displayed size we already consumed."""

    quote: Quote
    bid_taken: Decimal = ZERO
    ask_taken: Decimal = ZERO


@dataclass
class FeeSchedule:
    """Fees in basis points of notional, charged in the quote currency."""

    taker_bps: Decimal
    maker_bps: Decimal
    quote_asset: dict[str, str] = field(default_factory=dict)


def order_from_update(upd: OrderUpdate) -> WorkingOrder:
    """An order as its latest journaled update describes it (what a restart rebuilds)."""
    req = OrderRequest(
        ts_event=upd.ts_event,
        ts_init=upd.ts_init,
        client_order_id=upd.client_order_id,
        signal_id="",
        strategy=upd.strategy,
        venue=upd.venue,
        symbol=upd.symbol,
        side=upd.side,
        order_type=upd.order_type,
        qty=upd.qty,
        limit_px=upd.limit_px,
    )
    notional = (upd.avg_px or ZERO) * upd.filled_qty
    return WorkingOrder(req, upd.filled_qty, notional, upd.status, upd.reason)


class PaperExchange:
    """Matching state for every symbol; emits OrderUpdate and Fill events, mutates nothing else."""

    def __init__(self, fees: FeeSchedule, first_fill_seq: int = 1) -> None:
        self.fees = fees
        self.touch: dict[str, Touch] = {}
        self.orders: dict[str, WorkingOrder] = {}
        self.open: dict[str, WorkingOrder] = {}  # the working subset: quotes scan only these
        self.next_fill_seq = first_fill_seq

    def working(self) -> list[WorkingOrder]:
        """Orders that can still fill."""
        return list(self.open.values())

    def _track(self, order: WorkingOrder) -> None:
        """Keep `open` in step with the order's status."""
        if order.status in ("new", "partially_filled"):
            self.open[order.req.client_order_id] = order
        else:
            self.open.pop(order.req.client_order_id, None)

    def submit(self, req: OrderRequest) -> list[OrderUpdate | Fill]:
        """Accept an order and match what is marketable now (events carry the order's event time)."""
        order = WorkingOrder(req)
        self.orders[req.client_order_id] = order
        self._track(order)
        events: list[OrderUpdate | Fill] = [self._update(order, req.ts_event)]
        touch = self.touch.get(req.symbol)
        if touch is not None:
            events += self._match(order, touch, req.ts_event, taker=True)
        return events

    def on_quote(self, q: Quote) -> list[OrderUpdate | Fill]:
        """A new touch: fresh liquidity for every working order (events carry the quote's time)."""
        touch = self.touch[q.symbol] = Touch(q)
        events: list[OrderUpdate | Fill] = []
        for order in self.working():  # a copy: fills remove orders from `open` as we go
            if order.req.symbol == q.symbol:
                events += self._match(
                    order, touch, q.ts_event, taker=order.req.order_type == "market"
                )
        return events

    def set_touch(self, q: Quote) -> None:
        """Record a quote without matching anything (used while trading is halted)."""
        self.touch[q.symbol] = Touch(q)

    def reject(self, req: OrderRequest, now_ns: int, reason: str) -> OrderUpdate:
        """Record a refused order so a retry of the same id is recognised."""
        order = WorkingOrder(req, status="rejected", reason=reason)
        self.orders[req.client_order_id] = order
        return self._update(order, now_ns)

    def restore(self, upd: OrderUpdate) -> None:
        """Rebuild an order from its latest journaled state (later updates overwrite earlier)."""
        order = order_from_update(upd)
        self.orders[upd.client_order_id] = order
        self._track(order)

    def snapshot(self, order: WorkingOrder, now_ns: int) -> OrderUpdate:
        """An order's current state as a message."""
        return self._update(order, now_ns)

    def cancel(self, coid: str, now_ns: int, reason: str) -> list[OrderUpdate | Fill]:
        """Cancel one working order (no-op for finished ones)."""
        order = self.orders.get(coid)
        if order is None or order.status not in ("new", "partially_filled"):
            return []
        order.status, order.reason = "canceled", reason
        self._track(order)
        return [self._update(order, now_ns)]

    def _match(
        self, order: WorkingOrder, touch: Touch, event_ns: int, taker: bool
    ) -> list[OrderUpdate | Fill]:
        """Fill as much of the order as the untaken touch allows at an acceptable price."""
        q, buy = touch.quote, order.req.side == "buy"
        price, shown = (
            (q.ask_px, q.ask_qty - touch.ask_taken)
            if buy
            else (q.bid_px, q.bid_qty - touch.bid_taken)
        )
        limit = order.req.limit_px
        if limit is not None and (price > limit if buy else price < limit):
            return []
        qty = min(order.leaves, shown)
        if qty <= 0:
            return []
        if buy:
            touch.ask_taken += qty
        else:
            touch.bid_taken += qty
        fill_px = price if taker or limit is None else limit
        return self._fill(order, qty, fill_px, event_ns, "taker" if taker else "maker")

    def _fill(
        self, order: WorkingOrder, qty: Decimal, price: Decimal, event_ns: int, liquidity: str
    ) -> list[OrderUpdate | Fill]:
        """Book one fill and the order's new state, stamped with the market event time."""
        order.filled += qty
        order.notional += qty * price
        order.status = "filled" if order.leaves == 0 else "partially_filled"
        self._track(order)
        bps = self.fees.taker_bps if liquidity == "taker" else self.fees.maker_bps
        req = order.req
        fill = Fill(
            ts_event=event_ns,
            ts_init=event_ns,
            fill_seq=self.next_fill_seq,
            fill_id=f"{req.client_order_id}-{self.next_fill_seq}",
            client_order_id=req.client_order_id,
            strategy=req.strategy,
            venue=req.venue,
            symbol=req.symbol,
            side=req.side,
            qty=qty,
            price=price,
            fee=qty * price * bps / BPS,
            fee_asset=self.fees.quote_asset.get(req.symbol, "USDT"),
            liquidity="taker" if liquidity == "taker" else "maker",
        )
        self.next_fill_seq += 1
        return [fill, self._update(order, event_ns)]

    def _update(self, order: WorkingOrder, now_ns: int) -> OrderUpdate:
        """The order's current state as a message."""
        req = order.req
        return OrderUpdate(
            ts_event=now_ns,
            ts_init=now_ns,
            client_order_id=req.client_order_id,
            strategy=req.strategy,
            venue=req.venue,
            symbol=req.symbol,
            side=req.side,
            order_type=req.order_type,
            status=order.status,  # type: ignore[arg-type]
            qty=req.qty,
            filled_qty=order.filled,
            avg_px=(order.notional / order.filled) if order.filled else None,
            limit_px=req.limit_px,
            reason=order.reason,
        )
