"""Pre-trade checks: pure functions from a signal and the risk book to a reason code.

An empty string means the order may go. Every refusal has a stable, bounded reason code that
is counted and published. Exposure counts working orders, not just fills (SEC 15c3-5).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from libs.common.config import Instrument, RiskLimits
from libs.common.messages import Quote, Signal
from libs.common.positions import Position

BPS = Decimal(10_000)
MS = 1_000_000

REASONS = (
    "state_unknown",
    "state_stale",
    "trading_halted",
    "trading_reducing",
    "trading_paused",
    "trading_emergency",
    "halt_pending",
    "strategy_halted",
    "recovering",
    "unknown_instrument",
    "invalid_qty",
    "no_limit_configured",
    "max_order_qty",
    "no_reference_price",
    "price_collar",
    "max_order_notional",
    "max_position",
    "rate_limit",
    "duplicate_signal",
)


@dataclass
class Exposure:
    """Quantities still working at the venue, per side (unknown outcomes count as working)."""

    buy: Decimal = Decimal(0)
    sell: Decimal = Decimal(0)


class RateLimiter:
    """At most `limit` accepted orders per `window_ms` of event time; excess is refused, never queued."""

    def __init__(self, limit: int, window_ms: int) -> None:
        self.limit = limit
        self.window_ns = window_ms * MS
        self.sent: deque[int] = deque()

    def would_exceed(self, ts_ns: int) -> bool:
        """True when one more order at ts_ns would break the limit."""
        while self.sent and self.sent[0] <= ts_ns - self.window_ns:
            self.sent.popleft()
        return len(self.sent) >= self.limit

    def record(self, ts_ns: int) -> None:
        """Count an order that was sent."""
        self.sent.append(ts_ns)


@dataclass
class SymbolBook:
    """What risk knows about one symbol."""

    position: Position = field(default_factory=Position)
    exposure: Exposure = field(default_factory=Exposure)
    quote: Quote | None = None


def check_signal(
    sig: Signal,
    instrument: Instrument | None,
    book: SymbolBook,
    limits: RiskLimits,
    rate: RateLimiter,
) -> str:
    """Run every static check in order; the first failure's reason code, or ''."""
    if instrument is None:
        return "unknown_instrument"
    try:
        if sig.qty <= 0 or sig.qty % instrument.size_increment != 0:
            return "invalid_qty"
    except InvalidOperation:  # NaN, infinite, or too many digits to be a real quantity
        return "invalid_qty"
    max_qty = limits.max_order_qty.get(sig.symbol)
    max_pos = limits.max_position.get(sig.symbol)
    if max_qty is None or max_pos is None:
        return "no_limit_configured"  # fail closed: an unlimited symbol is not tradable
    if sig.qty > max_qty:
        return "max_order_qty"
    return _price_checks(sig, book, limits) or _exposure_checks(sig, book, max_pos, rate)


def _price_checks(sig: Signal, book: SymbolBook, limits: RiskLimits) -> str:
    """Collar the order's price against our own last quote, then cap its notional."""
    if book.quote is None:
        return "no_reference_price"
    mid = (book.quote.bid_px + book.quote.ask_px) / 2
    price = sig.limit_px if sig.limit_px is not None else sig.ref_px
    if (
        not (mid.is_finite() and price.is_finite())
        or mid <= 0
        or abs(price - mid) / mid * BPS > limits.collar_bps
    ):
        return "price_collar"
    if sig.qty * price > limits.max_order_notional:
        return "max_order_notional"
    return ""


def _exposure_checks(sig: Signal, book: SymbolBook, max_pos: Decimal, rate: RateLimiter) -> str:
    """Worst-case position if every working order on this side fills, then the order rate.

    Over the limit is refused unless the order strictly shrinks |position| (a position can end
    up oversized after a limit is lowered; reducing it must stay possible).
    """
    pos = book.position.qty
    if sig.side == "buy":
        worst = pos + book.exposure.buy + sig.qty
    else:
        worst = pos - book.exposure.sell - sig.qty
    if abs(worst) > max_pos and abs(worst) >= abs(pos):
        return "max_position"  # an order that shrinks an oversized position is still allowed
    if rate.would_exceed(sig.ts_event):
        return "rate_limit"
    return ""
