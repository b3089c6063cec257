"""Risk's book: positions from fills, working-order exposure, counters, and its persistence."""

from __future__ import annotations

import json
import logging
from collections import Counter
from decimal import Decimal
from typing import Any

from libs.common.messages import TERMINAL_STATUSES, Fill, OrderUpdate
from libs.common.positions import Position, quantize_money
from libs.common.store import StateStore

from .checks import SymbolBook

log = logging.getLogger(__name__)
STATE_KEY = "risk:book"


class RiskBook:
    """Everything risk must not lose across a restart, plus the live quote cache."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = {s: SymbolBook() for s in symbols}
        self.last_fill_seq = 0
        self.working: dict[str, tuple[str, str, Decimal]] = {}  # coid -> (symbol, side, leaves)
        self.orders_sent = 0
        self.rejections: Counter[str] = Counter()
        self.order_timeouts = 0

    def apply_fill(self, fill: Fill) -> bool:
        """Fold a fill in exactly once (by fill_seq); False if it is a duplicate."""
        if fill.fill_seq <= self.last_fill_seq:
            return False
        book = self.symbols.get(fill.symbol)
        if book is None:
            log.error("fill for unknown symbol %s ignored: %s", fill.symbol, fill.fill_id)
        else:
            book.position.apply_fill(fill.side, fill.qty, fill.price, fill.fee)
        self.last_fill_seq = fill.fill_seq
        return True

    def track_order(self, coid: str, symbol: str, side: str, leaves: Decimal) -> None:
        """Count an order's unfilled quantity as exposure until it ends."""
        self.untrack(coid)
        self.working[coid] = (symbol, side, leaves)
        self._add_exposure(symbol, side, leaves)

    def apply_update(self, upd: OrderUpdate) -> None:
        """Refresh an order's leaves from execution's update; drop it when terminal."""
        if upd.status in TERMINAL_STATUSES:
            self.untrack(upd.client_order_id)
        elif upd.client_order_id in self.working or upd.status != "unknown":
            self.track_order(upd.client_order_id, upd.symbol, upd.side, upd.qty - upd.filled_qty)

    def untrack(self, coid: str) -> None:
        """Stop counting an order's exposure."""
        entry = self.working.pop(coid, None)
        if entry is not None:
            self._add_exposure(entry[0], entry[1], -entry[2])

    def _add_exposure(self, symbol: str, side: str, qty: Decimal) -> None:
        """Adjust one side's working quantity."""
        book = self.symbols.get(symbol)
        if book is None:
            return
        if side == "buy":
            book.exposure.buy += qty
        else:
            book.exposure.sell += qty

    def mark(self, symbol: str) -> Decimal | None:
        """Mid of the last quote, the price open positions are valued at."""
        q = self.symbols[symbol].quote
        return None if q is None else (q.bid_px + q.ask_px) / 2

    def total_pnl(self) -> Decimal:
        """Realized plus unrealized PnL over every symbol (the panic rules' input)."""
        return sum(
            (
                b.position.realized_pnl + b.position.unrealized(self.mark(s))
                for s, b in self.symbols.items()
            ),
            Decimal(0),
        )

    def summary(self) -> dict[str, Any]:
        """Positions and PnL as decimal strings."""
        realized = sum((b.position.realized_pnl for b in self.symbols.values()), Decimal(0))
        unrealized = sum(
            (b.position.unrealized(self.mark(s)) for s, b in self.symbols.items()), Decimal(0)
        )
        return {
            "positions": {s: str(b.position.qty) for s, b in self.symbols.items()},
            "avg_prices": {s: str(b.position.avg_px) for s, b in self.symbols.items()},
            "fees": quantize_money(
                sum((b.position.fees for b in self.symbols.values()), Decimal(0))
            ),
            "marks": {s: str(m) for s in self.symbols if (m := self.mark(s)) is not None},
            "realized_pnl": quantize_money(realized),
            "unrealized_pnl": quantize_money(unrealized),
            "last_fill_seq": self.last_fill_seq,
            "orders_sent": self.orders_sent,
            "orders_rejected": dict(self.rejections),
            "order_timeouts": self.order_timeouts,
            "working_orders": len(self.working),
        }

    def save(self, store: StateStore) -> None:
        """Persist what a restarted risk needs so it neither loses nor double-counts."""
        doc = {
            "last_fill_seq": self.last_fill_seq,
            "positions": {s: _position_doc(b.position) for s, b in self.symbols.items()},
            "working": {k: [s, side, str(q)] for k, (s, side, q) in self.working.items()},
            "orders_sent": self.orders_sent,
            "rejections": dict(self.rejections),
            "order_timeouts": self.order_timeouts,
        }
        store.set(STATE_KEY, json.dumps(doc).encode())

    def load(self, store: StateStore) -> bool:
        """Restore a saved book; False when there is none (a fresh start)."""
        raw = store.get(STATE_KEY)
        if raw is None:
            return False
        doc = json.loads(raw)
        self.last_fill_seq = int(doc["last_fill_seq"])
        for sym, pos in doc["positions"].items():
            if sym in self.symbols:
                self.symbols[sym].position = Position(**{k: Decimal(v) for k, v in pos.items()})
        for coid, (sym, side, qty) in doc["working"].items():
            self.track_order(coid, sym, side, Decimal(qty))
        self.orders_sent = int(doc["orders_sent"])
        self.rejections.update(doc["rejections"])
        self.order_timeouts = int(doc["order_timeouts"])
        return True


def _position_doc(p: Position) -> dict[str, str]:
    """A position as decimal strings."""
    return {
        "qty": str(p.qty),
        "avg_px": str(p.avg_px),
        "realized_pnl": str(p.realized_pnl),
        "fees": str(p.fees),
    }
