"""Panic rules: market, execution and PnL conditions that must stop or shrink trading.

Pure logic: no sockets and no clock reads. Every method takes `now_mono_ns` (CLOCK_MONOTONIC,
for windows and staleness) and `now_ns` (wall clock, for the Panic's timestamps and the UTC
day), so tests drive time by hand and a replay can use its recorded time.

Every rule is edge-triggered per key (a symbol, a strategy, or "" for fleet-wide rules): it
fires once when its condition becomes true and re-arms only after the condition has been seen
false again, so a persisting condition publishes one Panic, not one per tick.

Decisions beyond the brief (see tests/unit/test_panic_rules.py):
- A quote that is crossed or locked (ask <= bid), has a price <= 0, or a non-finite price or
  size fires "crossed_quote" (halt): such a book comes from a broken feed or parser, and trading
  against it (price collars use its mid) is unsafe. It neither refreshes staleness nor enters
  the spread window (a zero or negative spread would drag the median down and make every
  later normal spread look like a blow-out).
- A non-finite total PnL fires "invalid_pnl" (halt) and leaves the baseline and peak alone:
  loss limits that silently stop working on NaN are the failure SAFETY.md warns about.
- Slippage needs a finite expected price > 0 and a finite fill price; otherwise no verdict.
- A drop straight past drawdown_hard fires drawdown_soft then drawdown_hard (mildest first,
  so a consumer applying them in order ends HALTED).
- spread_blowout needs the spread above ratio x median continuously for
  spread_blowout_persist_ms (monotonic time from the episode's first wide quote to a later wide
  quote, or to check(): a blow-out with no further quotes fires from the timer). A valid quote
  back at or under the threshold ends the episode and re-arms the rule; an unusable quote
  neither ends nor extends it (crossed_quote speaks for it).
- Every valid quote, wide or not, enters the median window (as before persistence existed), so
  a spread that has really widened for good becomes the new normal instead of a blow-out that
  never ends. But until an episode has fired, its quotes are judged against the median from
  before it began: at the recording's peak rate (275 BTCUSDT quotes in 250 ms) half a 500-quote
  window fills with the blow-out's own quotes within the persistence time, and that must not
  talk a real blow-out out of persisting. Once fired, the live median decides when it ends.
- feed_ended() and feed_live() drop open blow-outs: the downtime is no evidence either way.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Literal, NamedTuple

from libs.common.config import PanicConfig
from libs.common.messages import Fill, Quote
from libs.common.messages.orders import Panic

BPS = Decimal(10_000)
MS = 1_000_000
DAY_NS = 86_400 * 1_000_000_000  # UTC days: epoch time has no leap seconds
RULES = (
    "quote_stale",
    "spread_blowout",
    "crossed_quote",
    "slippage",
    "fill_throttle",
    "venue_error_cascade",
    "daily_loss",
    "drawdown_soft",
    "drawdown_hard",
    "invalid_pnl",
)
Action = Literal["reduce", "halt", "disable_strategy"]
_MAX_PLACES = Decimal("1E-8")


def fmt(value: Decimal) -> str:
    """A decimal string for the audit log, cut to 8 places when a division made it longer."""
    try:
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -8:
            value = value.quantize(_MAX_PLACES)
    except InvalidOperation:  # too many digits to quantize; the full string is still exact
        pass
    return str(value)


class RollingMedian:
    """Median of the last `size` values: a deque for age order, a sorted list for rank."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fifo: deque[Decimal] = deque()
        self.ranked: list[Decimal] = []

    def __len__(self) -> int:
        """How many values the window holds."""
        return len(self.fifo)

    def add(self, value: Decimal) -> None:
        """Append a value, dropping the oldest once the window is full."""
        self.fifo.append(value)
        insort(self.ranked, value)
        if len(self.fifo) > self.size:
            old = self.fifo.popleft()
            del self.ranked[bisect_left(self.ranked, old)]

    def median(self) -> Decimal:
        """The middle value (mean of the two middle ones for an even count); window not empty."""
        n = len(self.ranked)
        mid = n // 2
        if n % 2:
            return self.ranked[mid]
        return (self.ranked[mid - 1] + self.ranked[mid]) / 2


class EventWindow:
    """Timestamps of events within the last `window_ns` (an event at now - window is out)."""

    def __init__(self, window_ms: int) -> None:
        self.window_ns = window_ms * MS
        self.times: deque[int] = deque()

    def add(self, now_mono_ns: int) -> int:
        """Record an event at now and return how many fall in the window ending now."""
        self.times.append(now_mono_ns)
        while self.times and self.times[0] <= now_mono_ns - self.window_ns:
            self.times.popleft()
        return len(self.times)

    def add_none(self, now_mono_ns: int) -> int:
        """How many events fall in the window ending now, recording none."""
        while self.times and self.times[0] <= now_mono_ns - self.window_ns:
            self.times.popleft()
        return len(self.times)


class OrdersInWindow:
    """Which orders already had a fill counted in the window; O(1) per fill (a deque ages them
    out in time order: scanning every order per fill made risk quadratic under load)."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.first: dict[str, int] = {}
        self.order: deque[tuple[int, str]] = deque()

    def counted(self, coid: str, now_ns: int) -> bool:
        """True if this order is already counted; else count it now."""
        while self.order and self.order[0][0] <= now_ns - self.window_ns:
            t, old = self.order.popleft()
            if self.first.get(old) == t:
                del self.first[old]
        if coid in self.first:
            return True
        self.first[coid] = now_ns
        self.order.append((now_ns, coid))
        return False


def quote_problem(q: Quote) -> str:
    """Why a quote is unusable as a book, or '' when it is a valid two-sided quote."""
    values = (q.bid_px, q.ask_px, q.bid_qty, q.ask_qty)
    if not all(v.is_finite() for v in values):
        return "non-finite price or size"
    if q.bid_px <= 0 or q.ask_px <= 0:
        return "price <= 0"
    if q.ask_px <= q.bid_px:
        return "crossed" if q.ask_px < q.bid_px else "locked"
    return ""


def adverse_slippage_bps(side: str, price: Decimal, expected: Decimal) -> Decimal:
    """How far a fill went against us in bps of the expected price; 0 when it was at or better."""
    adverse = price - expected if side == "buy" else expected - price
    return max(adverse, Decimal(0)) / expected * BPS


class Blowout(NamedTuple):
    """An open spread blow-out: when it started (monotonic), its latest wide spread, and the
    median that spread was judged against."""

    since_mono_ns: int
    spread: Decimal
    median: Decimal


class PanicMonitor:
    """Evaluates every panic rule and returns the Panics that newly fired."""

    def __init__(self, cfg: PanicConfig, symbols: Iterable[str]) -> None:
        self.cfg = cfg
        self.symbols = frozenset(symbols)
        self.counts: dict[str, int] = dict.fromkeys(RULES, 0)  # firings per rule, for metrics
        self.active: set[tuple[str, str]] = set()  # (rule, key) whose condition currently holds
        self.last_quote_mono: dict[str, int] = {}  # symbols seen: staleness is armed for these
        self.feed_is_live = True  # until told otherwise: a missed "live" must not disarm safety
        self.spreads = {s: RollingMedian(cfg.spread_window_quotes) for s in self.symbols}
        self.blowouts: dict[str, Blowout] = {}  # symbols whose spread is above the threshold now
        self.fills: dict[str, EventWindow] = {}
        self.filled_orders: dict[str, OrdersInWindow] = {}  # per strategy: orders counted
        self.venue_errors = EventWindow(cfg.venue_error_window_ms)
        self.day: int | None = None
        self.day_baseline = Decimal(0)
        self.peak: Decimal | None = None

    # --- edge triggering ------------------------------------------------------------------

    def _edge(self, rule: str, key: str, condition: bool) -> bool:
        """True exactly when (rule, key) turns true; a false condition re-arms it."""
        if not condition:
            self.active.discard((rule, key))
            return False
        if (rule, key) in self.active:
            return False
        self.active.add((rule, key))
        self.counts[rule] += 1
        return True

    @staticmethod
    def _panic(
        rule: str,
        action: Action,
        detail: str,
        now_ns: int,
        *,
        symbol: str = "",
        strategy: str = "",
        value: str = "",
        threshold: str = "",
    ) -> Panic:
        """A Panic stamped with the wall clock."""
        return Panic(
            ts_event=now_ns,
            ts_init=now_ns,
            rule=rule,
            action=action,
            detail=detail,
            symbol=symbol,
            strategy=strategy,
            value=value,
            threshold=threshold,
        )

    # --- market data ----------------------------------------------------------------------

    def on_quote(self, q: Quote, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """Refresh the symbol's quote time, then judge the book and its spread."""
        if not self.cfg.enabled or q.symbol not in self.symbols:
            return []
        problem = quote_problem(q)
        if problem:
            return self._bad_quote(q, problem, now_ns)
        self.active.discard(("crossed_quote", q.symbol))  # a valid book re-arms the rule
        self.last_quote_mono[q.symbol] = now_mono_ns
        self.active.discard(("quote_stale", q.symbol))  # a fresh quote clears staleness
        return self._spread(q, now_mono_ns, now_ns)

    def _bad_quote(self, q: Quote, problem: str, now_ns: int) -> list[Panic]:
        """An unusable book fires crossed_quote once per run of bad quotes."""
        if not self._edge("crossed_quote", q.symbol, True):
            return []
        detail = f"{q.symbol} unusable quote ({problem}): bid {q.bid_px} ask {q.ask_px}"
        finite = q.bid_px.is_finite() and q.ask_px.is_finite()
        return [
            self._panic(
                "crossed_quote",
                "halt",
                detail,
                now_ns,
                symbol=q.symbol,
                value=fmt(q.ask_px - q.bid_px) if finite else "",  # the spread, when there is one
                threshold="0",
            )
        ]

    def _spread(self, q: Quote, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """Spread against ratio x the median of the window before this quote (or before the
        open episode, until it fired), then add it to the window."""
        spread = q.ask_px - q.bid_px
        window = self.spreads[q.symbol]
        fired: list[Panic] = []
        if len(window) >= max(self.cfg.spread_min_samples, 1):  # a median needs one sample
            episode = self.blowouts.get(q.symbol)
            pending = episode is not None and ("spread_blowout", q.symbol) not in self.active
            median = episode.median if episode is not None and pending else window.median()
            if spread > self.cfg.spread_blowout_ratio * median:
                since = now_mono_ns if episode is None else episode.since_mono_ns
                self.blowouts[q.symbol] = Blowout(since, spread, median)
                fired = self._blowout_persisted(q.symbol, now_mono_ns, now_ns)
            else:  # back under the threshold: the episode is over and the rule re-arms
                self.blowouts.pop(q.symbol, None)
                self._edge("spread_blowout", q.symbol, False)
        window.add(spread)
        return fired

    def _blowout_persisted(self, symbol: str, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """Fire once when the symbol's open blow-out has lasted spread_blowout_persist_ms."""
        episode = self.blowouts[symbol]
        held_ns = now_mono_ns - episode.since_mono_ns
        persist_ms = self.cfg.spread_blowout_persist_ms
        if held_ns < persist_ms * MS or not self._edge("spread_blowout", symbol, True):
            return []
        ratio = self.cfg.spread_blowout_ratio
        held_ms = fmt(Decimal(held_ns) / MS)
        detail = (
            f"{symbol} spread {episode.spread} > {ratio}x median {episode.median} "
            f"for {held_ms} ms >= {persist_ms} ms"
        )
        return [
            self._panic(
                "spread_blowout",
                "halt",
                detail,
                now_ns,
                symbol=symbol,
                value=fmt(episode.spread),
                threshold=fmt(ratio * episode.median),
            )
        ]

    def check(self, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """Timer-driven rules while the feed is live: a symbol quiet for longer than
        quote_stale_ms, and a spread blow-out that has persisted with no further quote."""
        if not self.cfg.enabled or not self.feed_is_live:
            return []
        limit_ns = self.cfg.quote_stale_ms * MS
        fired: list[Panic] = []
        for symbol, last in self.last_quote_mono.items():
            age_ns = now_mono_ns - last
            if self._edge("quote_stale", symbol, age_ns > limit_ns):
                age_ms = Decimal(age_ns) / MS
                detail = f"{symbol} no quote for {age_ms} ms > {self.cfg.quote_stale_ms} ms"
                fired.append(
                    self._panic(
                        "quote_stale",
                        "halt",
                        detail,
                        now_ns,
                        symbol=symbol,
                        value=fmt(age_ms),
                        threshold=str(self.cfg.quote_stale_ms),
                    )
                )
        for symbol in list(self.blowouts):
            fired += self._blowout_persisted(symbol, now_mono_ns, now_ns)
        return fired

    def feed_ended(self) -> None:
        """The feed said it ended: a finished replay is not a stale market, nor a blown-out one,
        so disarm staleness and drop open spread blow-outs."""
        self.feed_is_live = False
        self.blowouts.clear()
        self.active = {k for k in self.active if k[0] not in ("quote_stale", "spread_blowout")}

    def feed_live(self, now_mono_ns: int) -> None:
        """The feed is live again: re-arm staleness, each seen symbol's clock restarting now, and
        judge spread blow-outs afresh from the next quote."""
        self.feed_is_live = True
        # Restart the clocks: the time the feed was down must not count as a stale market ...
        self.last_quote_mono = dict.fromkeys(self.last_quote_mono, now_mono_ns)
        # ... nor as a persisting blow-out.
        self.blowouts.clear()
        self.active = {k for k in self.active if k[0] != "spread_blowout"}

    # --- execution ------------------------------------------------------------------------

    def on_fill(
        self, fill: Fill, expected_px: Decimal | None, now_mono_ns: int, now_ns: int
    ) -> list[Panic]:
        """Adverse slippage against the expected price, and the per-strategy fill throttle."""
        if not self.cfg.enabled:
            return []
        return self._slippage(fill, expected_px, now_ns) + self._throttle(fill, now_mono_ns, now_ns)

    def _slippage(self, fill: Fill, expected_px: Decimal | None, now_ns: int) -> list[Panic]:
        """Fire when the fill is worse than expected by more than ratio x expected slippage."""
        if expected_px is None or not (expected_px.is_finite() and fill.price.is_finite()):
            return []  # no reference, no verdict
        if expected_px <= 0:
            return []
        bps = adverse_slippage_bps(fill.side, fill.price, expected_px)
        limit = self.cfg.slippage_ratio * self.cfg.expected_slippage_bps
        if not self._edge("slippage", fill.symbol, bps > limit):
            return []
        detail = (
            f"{fill.symbol} {fill.side} filled at {fill.price} vs expected {expected_px}: "
            f"{fmt(bps)} bps > {limit} bps"
        )
        return [
            self._panic(
                "slippage",
                "halt",
                detail,
                now_ns,
                symbol=fill.symbol,
                value=fmt(bps),
                threshold=fmt(limit),
            )
        ]

    def _throttle(self, fill: Fill, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """More than max_fills_per_window executed orders of one strategy in fill_window_ms
        disables it. Partial fills of one order count once: the throttle is about a strategy
        executing again and again, not about how thin the book was."""
        window = self.fills.setdefault(fill.strategy, EventWindow(self.cfg.fill_window_ms))
        seen = self.filled_orders.setdefault(fill.strategy, OrdersInWindow(window.window_ns))
        if seen.counted(fill.client_order_id, now_mono_ns):
            count = window.add_none(now_mono_ns)  # this order is already counted in the window
        else:
            count = window.add(now_mono_ns)
        limit = self.cfg.max_fills_per_window
        if not self._edge("fill_throttle", fill.strategy, count > limit):
            return []
        detail = f"strategy {fill.strategy} {count} fills in {self.cfg.fill_window_ms} ms > {limit}"
        return [
            self._panic(
                "fill_throttle",
                "disable_strategy",
                detail,
                now_ns,
                strategy=fill.strategy,  # no symbol: the scope is the whole strategy
                value=str(count),
                threshold=str(limit),
            )
        ]

    def on_venue_error(self, reason: str, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """venue_errors or more errors within venue_error_window_ms halt the fleet."""
        if not self.cfg.enabled:
            return []
        count = self.venue_errors.add(now_mono_ns)
        limit = self.cfg.venue_errors
        if not self._edge("venue_error_cascade", "", count >= limit):
            return []
        detail = (
            f"{count} venue errors in {self.cfg.venue_error_window_ms} ms >= {limit}, "
            f"last: {reason}"
        )
        return [
            self._panic(
                "venue_error_cascade",
                "halt",
                detail,
                now_ns,
                value=str(count),
                threshold=str(limit),
            )
        ]

    # --- PnL ------------------------------------------------------------------------------

    def on_pnl(self, total_pnl: Decimal, now_mono_ns: int, now_ns: int) -> list[Panic]:
        """Daily loss against the UTC day's first total, and drawdown from the running peak."""
        if not self.cfg.enabled:
            return []
        finite = total_pnl.is_finite()
        if self._edge("invalid_pnl", "", not finite):
            detail = f"total PnL is {total_pnl}: loss limits cannot be judged"
            return [self._panic("invalid_pnl", "halt", detail, now_ns, value=str(total_pnl))]
        if not finite:
            return []
        return self._daily_loss(total_pnl, now_ns) + self._drawdown(total_pnl, now_ns)

    def _daily_loss(self, total: Decimal, now_ns: int) -> list[Panic]:
        """Loss since the first total seen this UTC day, against daily_loss_limit."""
        day = now_ns // DAY_NS
        if day != self.day:
            self.day, self.day_baseline = day, total
        loss = self.day_baseline - total
        limit = self.cfg.daily_loss_limit
        if not self._edge("daily_loss", "", loss >= limit):
            return []
        detail = f"loss today {loss} >= limit {limit} (day opened at PnL {self.day_baseline})"
        return [
            self._panic("daily_loss", "halt", detail, now_ns, value=fmt(loss), threshold=fmt(limit))
        ]

    def _drawdown(self, total: Decimal, now_ns: int) -> list[Panic]:
        """Drawdown from the running peak: soft -> reduce, hard -> halt (mildest first)."""
        self.peak = total if self.peak is None else max(self.peak, total)
        drawdown = self.peak - total
        fired: list[Panic] = []
        levels: tuple[tuple[str, Action, Decimal], ...] = (
            ("drawdown_soft", "reduce", self.cfg.drawdown_soft),
            ("drawdown_hard", "halt", self.cfg.drawdown_hard),
        )
        for rule, action, limit in levels:
            if self._edge(rule, "", drawdown >= limit):
                detail = f"drawdown {drawdown} from peak {self.peak} >= {limit}"
                fired.append(
                    self._panic(
                        rule, action, detail, now_ns, value=fmt(drawdown), threshold=fmt(limit)
                    )
                )
        return fired
