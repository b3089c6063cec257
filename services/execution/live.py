"""A live venue behind the paper exchange's interface, so execution's order path, journal,
cancels and flattening work unchanged whichever venue is configured.

The rules a live venue adds:
- An order is journaled as `unknown` before it is sent. A lost reply or a crash leaves it
  `unknown`; it is resolved only by asking the venue by client order id, never by sending again.
- Fills come from the venue (`fills_since`, cursor kept in the state store), deduplicated by
  the venue's trade id and numbered by execution's own gap-free `fill_seq`.
- Working orders are checked against the venue's open orders every `sync_interval_ms`, so a
  cancel or expiry at the venue reaches the journal.
- At start the journal is reconciled with the venue (open orders and positions); any mismatch
  blocks new orders with a readable report until an operator has put it right and resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

import msgspec

from libs.common.clock import Clock
from libs.common.messages import Fill, OrderRequest, OrderUpdate, Quote
from libs.common.store import StateStore

from .paper import ZERO, WorkingOrder, order_from_update
from .venue import (
    Venue,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
)

log = logging.getLogger(__name__)
CURSOR_KEY = "exec:venue_cursor"
BASELINE_KEY = "exec:venue_baseline"  # venue positions when the journal was empty
WORKING = ("new", "partially_filled", "unknown")
Event = OrderUpdate | Fill


class LiveExchange:
    """Orders at a live venue, tracked like the paper exchange tracks its own."""

    def __init__(
        self,
        venue: Venue,
        store: StateStore,
        clock: Clock,
        emit: Callable[[list[Event]], None],
        poll_interval_ms: int = 250,
        sync_interval_ms: int = 2_000,
        unknown_grace_ms: int = 5_000,
    ) -> None:
        self.venue = venue
        self.store = store
        self.clock = clock
        self.emit = emit  # journals and publishes: used to record an order before it is sent
        self.orders: dict[str, WorkingOrder] = {}
        self.open: dict[str, WorkingOrder] = {}
        self.next_fill_seq = 1
        self.seen_trades: set[str] = set()
        self.sent_mono_ns: dict[str, int] = {}  # client order id -> when we sent it
        self.poll_ns = poll_interval_ms * 1_000_000
        self.sync_ns = sync_interval_ms * 1_000_000
        self.grace_ns = unknown_grace_ms * 1_000_000
        self.next_poll_ns = 0
        self.next_sync_ns = 0
        self.next_cancel_all_ns = 0
        raw = store.get(CURSOR_KEY)
        self.cursor = raw.decode() if raw else ""

    # --- the paper exchange's interface ---------------------------------------------------

    def working(self) -> list[WorkingOrder]:
        """Orders that can still fill (unknown outcomes included: they may be live)."""
        return list(self.open.values())

    def _track(self, order: WorkingOrder) -> None:
        """Keep `open` in step with the order's status."""
        if order.status in WORKING:
            self.open[order.req.client_order_id] = order
        else:
            self.open.pop(order.req.client_order_id, None)

    def submit(self, req: OrderRequest) -> list[Event]:
        """Journal the order as unknown, send it once, then record what the venue said."""
        order = WorkingOrder(req, status="unknown", reason="sending")
        self.orders[req.client_order_id] = order
        self._track(order)
        self.emit([self.update(order)])  # on disk before the venue hears of it
        self.sent_mono_ns[req.client_order_id] = self.clock.monotonic_ns()
        try:
            reply = self.venue.submit(req)
        except VenueRejected as exc:
            return self._set(order, "rejected", exc.reason)
        except VenueRateLimited as exc:
            # Refused before matching (Binance, Alpaca answer 429/418 without placing it).
            log.error("order %s not placed, rate limited: %s", req.client_order_id, exc)
            return self._set(order, "rejected", "venue_rate_limited")
        except VenueUnavailable as exc:
            log.error("order %s outcome unknown: %s", req.client_order_id, exc)
            return self._set(order, "unknown", "venue_outcome_unknown")
        return self.apply(order, reply)

    def cancel(self, coid: str, now_ns: int, reason: str) -> list[Event]:
        """Cancel one working order at the venue; the venue's answer decides its state."""
        order = self.orders.get(coid)
        if order is None or order.status not in WORKING:
            return []
        try:
            reply = self.venue.cancel(order.req.symbol, coid)
        except VenueRejected as exc:
            log.warning("cancel of %s refused (%s): asking the venue", coid, exc.reason)
            return self.resolve(order)
        except VenueUnavailable as exc:
            log.error("cancel of %s: no answer (%s); retried on the next check", coid, exc)
            return []
        order.reason = reason
        return self.apply(order, reply)

    def cancel_all(self, reason: str) -> list[Event]:
        """Cancel every order the venue has open, ours or not (a halt must reach them all)."""
        now_mono = self.clock.monotonic_ns()
        if now_mono < self.next_cancel_all_ns:
            return []  # the last attempt left orders working: try again after a pause, not per loop
        self.next_cancel_all_ns = now_mono + self.poll_ns * 2
        try:
            replies = self.venue.cancel_all()
        except VenueError as exc:
            log.error("cancel-all incomplete (%s): the rest one by one", exc)
            events = self._apply_cancelled(list(getattr(exc, "done", [])), reason)
            now = self.clock.time_ns()
            rest = [o.req.client_order_id for o in self.working()]
            return events + [e for coid in rest for e in self.cancel(coid, now, reason)]
        return self._apply_cancelled(replies, reason)

    def _apply_cancelled(self, replies: list[VenueOrder], reason: str) -> list[Event]:
        """The final states cancel-all reported; an order the journal never sent is logged."""
        events: list[Event] = []
        for reply in replies:
            order = self.orders.get(reply.client_order_id)
            if order is None:
                log.error(
                    "cancelled an open order the journal never sent: %s", reply.client_order_id
                )
                continue
            order.reason = reason
            events += self.apply(order, reply)
        return events

    def reject(self, req: OrderRequest, now_ns: int, reason: str) -> OrderUpdate:
        """Record a refused order so a retry of the same id is recognised."""
        order = WorkingOrder(req, status="rejected", reason=reason)
        self.orders[req.client_order_id] = order
        return self.update(order, now_ns)

    def restore(self, upd: OrderUpdate) -> None:
        """Rebuild an order from its latest journaled state."""
        order = order_from_update(upd)
        self.orders[upd.client_order_id] = order
        self._track(order)

    def restore_fill(self, fill: Fill) -> None:
        """A journaled fill: its venue trade id is never applied twice."""
        self.seen_trades.add(fill.fill_id)

    def snapshot(self, order: WorkingOrder, now_ns: int) -> OrderUpdate:
        """An order's current state as a message."""
        return self.update(order, now_ns)

    def on_quote(self, _q: Quote) -> list[Event]:
        """The venue matches, not us: quotes change nothing here."""
        return []

    def set_touch(self, _q: Quote) -> None:
        """Nothing to keep: the venue has the book."""

    # --- keeping up with the venue ---------------------------------------------------------

    def poll(self) -> list[Event]:
        """Due work: new fills, unknown outcomes, and working orders against the venue's."""
        now = self.clock.monotonic_ns()
        events: list[Event] = []
        if now >= self.next_poll_ns:
            self.next_poll_ns = now + self.poll_ns
            events += self.poll_fills()
            events += self.resolve_unknown(now)
        if now >= self.next_sync_ns:
            self.next_sync_ns = now + self.sync_ns
            events += self.sync_open_orders(now)
        return events

    def poll_fills(self) -> list[Event]:
        """Fills since the stored cursor, each applied once, in the venue's order."""
        try:
            fills, cursor = self.venue.fills_since(self.cursor)
        except VenueError as exc:
            log.warning("fills not fetched this time: %s", exc)
            return []
        events: list[Event] = []
        for vf in fills:
            events += self.apply_fill(vf)
        if cursor != self.cursor:
            self.cursor = cursor
            self.store.set(CURSOR_KEY, cursor.encode())
        return events

    def apply_fill(self, vf: VenueFill) -> list[Event]:
        """One venue fill as a Fill with our fill_seq, and the order's new state."""
        fill_id = f"{self.venue.name}-{vf.symbol}-{vf.trade_id}"
        order = self.orders.get(vf.client_order_id)
        if fill_id in self.seen_trades:
            return []
        if order is None:
            log.error(
                "fill %s for an order not in the journal (%s): not applied",
                fill_id,
                vf.client_order_id,
            )
            return []
        self.seen_trades.add(fill_id)
        fill = Fill(
            ts_event=vf.ts_ns,
            ts_init=self.clock.time_ns(),
            fill_seq=self.next_fill_seq,
            fill_id=fill_id,
            client_order_id=vf.client_order_id,
            strategy=order.req.strategy,
            venue=self.venue.name,
            symbol=vf.symbol,
            side=vf.side,
            qty=vf.qty,
            price=vf.price,
            fee=vf.fee,
            fee_asset=vf.fee_asset,
            liquidity=vf.liquidity,
        )
        self.next_fill_seq += 1
        order.filled += vf.qty
        order.notional += vf.qty * vf.price
        if order.status in WORKING:
            order.status = "filled" if order.leaves <= 0 else "partially_filled"
        self._track(order)
        return [fill, self.update(order)]

    def resolve_unknown(self, now: int) -> list[Event]:
        """Ask the venue about every order whose outcome we do not know."""
        events: list[Event] = []
        for order in [o for o in self.open.values() if o.status == "unknown"]:
            events += self.resolve(order, now)
        return events

    def resolve(self, order: WorkingOrder, now: int | None = None) -> list[Event]:
        """Query one order by client order id; absent for longer than the grace: never arrived."""
        coid = order.req.client_order_id
        try:
            found = self.venue.query(order.req.symbol, coid)
        except VenueError as exc:
            log.warning("query of %s failed (%s); asking again later", coid, exc)
            return []
        if found is not None:
            return self.apply(order, found)
        sent = self.sent_mono_ns.get(coid, 0)
        if order.status == "unknown" and (now or self.clock.monotonic_ns()) - sent >= self.grace_ns:
            return self._set(order, "rejected", "venue_never_received")
        return []

    def sync_open_orders(self, now: int) -> list[Event]:
        """Orders we think are working but the venue no longer lists: ask for their end."""
        try:
            at_venue = {o.client_order_id for o in self.venue.open_orders()}
        except VenueError as exc:
            log.warning("open orders not fetched this time: %s", exc)
            return []
        events: list[Event] = []
        for order in self.working():
            if order.req.client_order_id not in at_venue and order.status != "unknown":
                events += self.resolve(order, now)
        return events

    def apply(self, order: WorkingOrder, reply: VenueOrder) -> list[Event]:
        """The venue's view of an order, taken as the truth for status (fills add quantity)."""
        if (
            reply.status in ("new", "partially_filled") and order.status == "unknown"
        ) or reply.status not in ("new", "partially_filled"):
            order.status = reply.status
        order.reason = reply.reason or order.reason
        if (
            order.status in ("filled", "partially_filled", "canceled", "expired")
            and reply.filled_qty > order.filled
        ):
            # The venue reports more than the fills we have seen: their fills follow via poll;
            # the quantity is taken now so exposure is right in the meantime.
            order.notional += (reply.filled_qty - order.filled) * (reply.avg_px or ZERO)
            order.filled = reply.filled_qty
        self._track(order)
        return [self.update(order)]

    def _set(self, order: WorkingOrder, status: str, reason: str) -> list[Event]:
        """Move an order to a state of our own deciding."""
        order.status, order.reason = status, reason
        self._track(order)
        return [self.update(order)]

    def update(self, order: WorkingOrder, now_ns: int | None = None) -> OrderUpdate:
        """The order's current state as a message."""
        req = order.req
        now = self.clock.time_ns() if now_ns is None else now_ns
        return OrderUpdate(
            ts_event=now,
            ts_init=now,
            client_order_id=req.client_order_id,
            strategy=req.strategy,
            venue=self.venue.name,
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

    # --- start-up reconciliation -------------------------------------------------------------

    def reconcile(self, journal_positions: dict[str, Decimal]) -> tuple[list[Event], list[str]]:
        """Journal against venue: catch up what the venue knows; report what does not add up."""
        events: list[Event] = []
        for order in self.working():
            events += self.resolve(order, self.clock.monotonic_ns() + self.grace_ns)
        try:
            problems = self.foreign_orders() + self.position_problems(journal_positions)
        except VenueError as exc:
            problems = [f"the venue could not be asked: {exc}"]
        return events, problems

    def foreign_orders(self) -> list[str]:
        """Open orders at the venue that the journal never sent."""
        return [
            f"open order at the venue not in the journal: {o.client_order_id} {o.side} {o.qty} {o.symbol}"
            for o in self.venue.open_orders()
            if o.client_order_id not in self.orders
        ]

    def position_problems(self, journal_positions: dict[str, Decimal]) -> list[str]:
        """Venue positions must equal the first-start baseline plus the journal's net fills."""
        venue = self.venue.positions()
        raw = self.store.get(BASELINE_KEY)
        if raw is None:
            if any(journal_positions.values()):
                return ["no position baseline stored, but the journal has fills"]
            self.store.set(BASELINE_KEY, msgspec.json.encode({k: str(v) for k, v in venue.items()}))
            return []
        baseline = {k: Decimal(v) for k, v in msgspec.json.decode(raw).items()}
        problems = []
        for symbol in sorted(set(venue) | set(journal_positions) | set(baseline)):
            expected = baseline.get(symbol, ZERO) + journal_positions.get(symbol, ZERO)
            actual = venue.get(symbol, ZERO)
            if actual != expected:
                problems.append(
                    f"{symbol}: venue position {actual} != baseline {baseline.get(symbol, ZERO)}"
                    f" + journal {journal_positions.get(symbol, ZERO)}"
                )
        return problems


def describe(problems: list[str]) -> str:
    """The reconciliation report an operator reads."""
    lines = [
        "execution stays HALTED: the venue and the journal disagree",
        *[f"- {p}" for p in problems],
    ]
    lines.append("Put the venue right (or the journal), then `flotilla resume --operator NAME`.")
    return "\n".join(lines) + "\n"
