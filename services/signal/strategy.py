"""Order-flow imbalance with a microprice filter, over a numpy ring buffer of recent trades.

Imbalance = sum(signed taker qty) / sum(|qty|) over the last `window_trades` trades, in [-1, 1].
When it crosses +threshold (buyers dominate) and the microprice leans up, the strategy buys;
crossing -threshold with the microprice leaning down, it sells. It only flips regime, so signals
alternate buy/sell and the position it asks for stays within one order size of flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from libs.common.config import OfiParams, PulseParams
from libs.common.messages import Quote, Side, Trade

MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What the strategy wants: a side, a size, a reference price, and the indicator value."""

    side: Side
    qty: Decimal
    ref_px: Decimal
    limit_px: Decimal | None
    score: float
    key: str  # unique per decision of a symbol; the signal id is built from it


class OfiStrategy:
    """Per-symbol state for the order-flow-imbalance strategy."""

    def __init__(self, params: OfiParams, symbol: str) -> None:
        self.p = params
        self.qty = params.order_qty[symbol]
        self.flow = np.zeros(params.window_trades, dtype=np.float64)
        self.count = 0
        self.regime = 0
        self.last_signal_ns = -(10**18)
        self.quote: Quote | None = None
        self.micro_edge_bps = 0.0

    def on_quote(self, q: Quote) -> Decision | None:
        """Keep the touch and the microprice's lean relative to the mid (never decides)."""
        self.quote = q
        bid, ask = float(q.bid_px), float(q.ask_px)
        bq, aq = float(q.bid_qty), float(q.ask_qty)
        if bq + aq <= 0 or bid <= 0:
            return None
        mid = (bid + ask) / 2
        micro = (bid * aq + ask * bq) / (bq + aq)
        self.micro_edge_bps = (micro - mid) / mid * 1e4
        return None

    def on_trade(self, t: Trade) -> Decision | None:
        """Add the trade's signed size; return a decision when the regime flips."""
        signed = float(t.qty) if t.aggressor == "buy" else -float(t.qty)
        self.flow[self.count % self.flow.size] = signed
        self.count += 1
        if self.count < self.flow.size or self.quote is None:
            return None
        gross = float(np.abs(self.flow).sum())
        imbalance = float(self.flow.sum()) / gross if gross > 0 else 0.0
        direction = self._direction(imbalance)
        if direction == 0 or direction == self.regime:
            return None
        if t.ts_event - self.last_signal_ns < self.p.cooldown_ms * MS:
            return None
        self.regime = direction
        self.last_signal_ns = t.ts_event
        return self._decide(direction, imbalance, str(t.trade_id))

    def _direction(self, imbalance: float) -> int:
        """+1 / -1 when imbalance and microprice agree past their thresholds, else 0."""
        edge = self.p.min_microprice_edge_bps
        if imbalance >= self.p.entry_threshold and self.micro_edge_bps >= edge:
            return 1
        if imbalance <= -self.p.entry_threshold and self.micro_edge_bps <= -edge:
            return -1
        return 0

    def _decide(self, direction: int, imbalance: float, key: str) -> Decision:
        """Buy at the ask or sell at the bid (the price a marketable order expects)."""
        assert self.quote is not None
        side: Side = "buy" if direction > 0 else "sell"
        ref = self.quote.ask_px if side == "buy" else self.quote.bid_px
        limit = ref if self.p.order_type == "limit" else None
        return Decision(
            side=side, qty=self.qty, ref_px=ref, limit_px=limit, score=imbalance, key=key
        )


class PulseStrategy:
    """`make bench`'s load generator: a market order every `every_ticks` ticks (trades and
    quotes), alternating buy and sell so the position stays within one order of flat."""

    order_type = "market"

    def __init__(self, params: PulseParams, symbol: str) -> None:
        self.every = params.every_ticks
        self.qty = params.order_qty[symbol]
        self.ticks = 0
        self.orders = 0
        self.quote: Quote | None = None

    def on_quote(self, q: Quote) -> Decision | None:
        """Count the tick; keep the touch for the reference price."""
        self.quote = q
        return self._tick()

    def on_trade(self, t: Trade) -> Decision | None:
        """Count the tick."""
        return self._tick()

    def _tick(self) -> Decision | None:
        """Every Nth tick with a known touch: the next order of the alternation."""
        self.ticks += 1
        if self.quote is None or self.ticks % self.every:
            return None
        self.orders += 1
        side: Side = "buy" if self.orders % 2 else "sell"
        ref = self.quote.ask_px if side == "buy" else self.quote.bid_px
        return Decision(
            side=side, qty=self.qty, ref_px=ref, limit_px=None, score=0.0, key=f"p{self.orders}"
        )
