"""Positions and PnL by the average-cost method, in exact decimals.

Risk folds live fills through this; `flotilla report` folds the journal through the same code,
so the two can only disagree if the fills differ.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

ZERO = Decimal(0)


class Position(msgspec.Struct, kw_only=True):
    """One symbol's net quantity, average entry price, realized PnL (net of fees) and fees."""

    qty: Decimal = ZERO
    avg_px: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    def apply_fill(self, side: str, qty: Decimal, price: Decimal, fee: Decimal) -> None:
        """Fold one fill in: reduce first (realizing PnL), then open any remainder."""
        signed = qty if side == "buy" else -qty
        self.fees += fee
        self.realized_pnl -= fee
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            self._open(signed, price)
            return
        closing = min(abs(signed), abs(self.qty))
        direction = Decimal(1) if self.qty > 0 else Decimal(-1)
        self.realized_pnl += closing * (price - self.avg_px) * direction
        remainder = abs(signed) - closing
        self.qty -= closing * direction
        if self.qty == 0:
            self.avg_px = ZERO
        if remainder > 0:
            self._open(remainder if signed > 0 else -remainder, price)

    def _open(self, signed: Decimal, price: Decimal) -> None:
        """Add to (or start) a position at a volume-weighted average price."""
        new_qty = self.qty + signed
        self.avg_px = (self.avg_px * abs(self.qty) + price * abs(signed)) / abs(new_qty)
        self.qty = new_qty

    def unrealized(self, mark: Decimal | None) -> Decimal:
        """Open PnL against a mark price (zero when flat or unmarked)."""
        if mark is None or self.qty == 0:
            return ZERO
        return (mark - self.avg_px) * self.qty


def quantize_money(value: Decimal) -> str:
    """A decimal string with 8 places: how PnL is written to summaries and reports."""
    return str(value.quantize(Decimal("0.00000001")))


def shrinks_position(
    position: Decimal, working_same_side: Decimal, side: str, qty: Decimal
) -> bool:
    """True when an order strictly shrinks |position| even if every working order on its side
    fills first, without crossing through zero (what REDUCING and reduce-only orders allow)."""
    if qty <= 0:
        return False
    if side == "sell":
        return position > 0 and position - working_same_side - qty >= 0
    return position < 0 and position + working_same_side + qty <= 0
