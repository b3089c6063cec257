"""In-process micro benchmarks of the two hot calls on the order path (raw ns samples).

Each function times every call with perf_counter_ns, after WARMUP calls that are excluded, on
the shipped config (`load_config()`) and inputs shaped like the fleet's. An optional Counter
receives what each timed call returned, so a caller can see the work really happened.
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal

import numpy as np

from libs.common.config import FleetConfig, load_config
from libs.common.messages import Fill, OrderRequest, Quote, Side, Signal
from services.execution.paper import FeeSchedule, PaperExchange
from services.risk.book import RiskBook
from services.risk.checks import RateLimiter, check_signal

WARMUP = 1000
T0 = 1_723_161_254_000_000_000  # an event time inside the bundled recording (ns)
MS = 1_000_000
TOUCH = {"BTCUSDT": ("61234.56", "61234.57"), "ETHUSDT": ("2601.30", "2601.31")}
COLLAR_MISS_EVERY = 20  # one signal in 20 is priced outside the collar and refused


def _quote(symbol: str, ts: int, update_id: int) -> Quote:
    """A top of book around the recording's prices, with ample size."""
    bid, ask = TOUCH[symbol]
    return Quote(
        ts_event=ts,
        ts_init=ts,
        venue="binance",
        symbol=symbol,
        bid_px=Decimal(bid),
        bid_qty=Decimal("12.5"),
        ask_px=Decimal(ask),
        ask_qty=Decimal("9.75"),
        update_id=update_id,
    )


def _side(i: int) -> Side:
    """Alternate buy and sell so positions stay bounded."""
    return "buy" if i % 2 == 0 else "sell"


def _signals(cfg: FleetConfig, count: int) -> list[Signal]:
    """Market signals on BTCUSDT/ETHUSDT at the touch, spaced past the rate limit in event time."""
    limits = cfg.risk.limits
    gap_ns = limits.rate_window_ms * MS // limits.max_orders_per_window + MS
    out = []
    for i in range(count):
        symbol = "BTCUSDT" if i % 4 < 2 else "ETHUSDT"
        bid, ask = TOUCH[symbol]
        ref = Decimal(ask if _side(i) == "buy" else bid)
        if i % COLLAR_MISS_EVERY == COLLAR_MISS_EVERY - 1:
            ref *= Decimal("1.02")  # 200 bps away from mid: price_collar
        out.append(
            Signal(
                ts_event=T0 + i * gap_ns,
                ts_init=T0 + i * gap_ns,
                signal_id=f"ofi-{symbol}-{i:09d}",
                strategy="ofi",
                venue="binance",
                symbol=symbol,
                side=_side(i),
                qty=cfg.signal.ofi.order_qty[symbol],
                order_type="market",
                ref_px=ref,
                origin_mono_ns=123_456_789 + i,
            )
        )
    return out


def risk_check_latency(n: int, outcomes: Counter[str] | None = None) -> np.ndarray:
    """Per-call ns of services.risk.checks.check_signal over realistic, mostly passing signals."""
    cfg = load_config()
    limits = cfg.risk.limits
    book = RiskBook(list(cfg.instruments))
    for i, symbol in enumerate(TOUCH):
        book.symbols[symbol].quote = _quote(symbol, T0, i + 1)
    rate = RateLimiter(limits.max_orders_per_window, limits.rate_window_ms)
    samples = np.empty(WARMUP + n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i, sig in enumerate(_signals(cfg, WARMUP + n)):
        instrument, sym_book = cfg.instruments.get(sig.symbol), book.symbols[sig.symbol]
        t0 = clock()
        reason = check_signal(sig, instrument, sym_book, limits, rate)
        samples[i] = clock() - t0
        if not reason:
            rate.record(sig.ts_event)  # as risk does when it sends the order
        if outcomes is not None and i >= WARMUP:
            outcomes[reason] += 1
    return samples[WARMUP:]


def _orders(count: int) -> list[OrderRequest]:
    """Market orders of 0.001 BTC with unique ids, alternating sides."""
    return [
        OrderRequest(
            ts_event=T0 + i * MS,
            ts_init=T0 + i * MS,
            client_order_id=f"fl-ofi-BTCUSDT-{i:09d}",
            signal_id=f"ofi-BTCUSDT-{i:09d}",
            strategy="ofi",
            venue="binance",
            symbol="BTCUSDT",
            side=_side(i),
            order_type="market",
            qty=Decimal("0.001"),
            origin_mono_ns=123_456_789 + i,
        )
        for i in range(count)
    ]


def paper_match_latency(n: int, outcomes: Counter[str] | None = None) -> np.ndarray:
    """Per-call ns of PaperExchange.submit for a market order against a fresh touch."""
    cfg = load_config()
    fees = FeeSchedule(
        cfg.execution.taker_fee_bps,
        cfg.execution.maker_fee_bps,
        {s: i.quote for s, i in cfg.instruments.items()},
    )
    paper = PaperExchange(fees)
    samples = np.empty(WARMUP + n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i, req in enumerate(_orders(WARMUP + n)):
        paper.on_quote(_quote("BTCUSDT", req.ts_event - MS // 2, i + 1))  # a quote between orders
        t0 = clock()
        events = paper.submit(req)
        samples[i] = clock() - t0
        if outcomes is not None and i >= WARMUP:
            outcomes["fill"] += sum(isinstance(e, Fill) for e in events)
            outcomes[paper.orders[req.client_order_id].status] += 1
    return samples[WARMUP:]
