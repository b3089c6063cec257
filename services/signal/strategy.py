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

from libs.common.config import OfiParams
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

    def on_quote(self, q: Quote) -> None:
        """Keep the touch and the microprice's lean relative to the mid."""
        self.quote = q
        bid, ask = float(q.bid_px), float(q.ask_px)
        bq, aq = float(q.bid_qty), float(q.ask_qty)
        if bq + aq <= 0 or bid <= 0:
            return
        mid = (bid + ask) / 2
        micro = (bid * aq + ask * bq) / (bq + aq)
        self.micro_edge_bps = (micro - mid) / mid * 1e4

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
        return self._decide(direction, imbalance)

    def _direction(self, imbalance: float) -> int:
        """+1 / -1 when imbalance and microprice agree past their thresholds, else 0."""
        edge = self.p.min_microprice_edge_bps
        if imbalance >= self.p.entry_threshold and self.micro_edge_bps >= edge:
            return 1
        if imbalance <= -self.p.entry_threshold and self.micro_edge_bps <= -edge:
            return -1
        return 0

    def _decide(self, direction: int, imbalance: float) -> Decision:
        """Buy at the ask or sell at the bid (the price a marketable order expects)."""
        assert self.quote is not None
        side: Side = "buy" if direction > 0 else "sell"
        ref = self.quote.ask_px if side == "buy" else self.quote.bid_px
        limit = ref if self.p.order_type == "limit" else None
        return Decision(side=side, qty=self.qty, ref_px=ref, limit_px=limit, score=imbalance)
