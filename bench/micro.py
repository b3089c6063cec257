"""In-process micro benchmarks of the hot calls on the order path (raw ns samples).

Each function times every call with perf_counter_ns, after WARMUP calls that are excluded, on
the shipped config (`load_config()`) and inputs shaped like the fleet's. An optional Counter
receives what each timed call returned, so a caller can see the work really happened.
`bus_message_cost` times blocks of messages instead (a per-message clock read would cost as
much as the metrics it measures) and reports each block's mean per message.
"""

from __future__ import annotations

import inspect
import textwrap
import time
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import zmq

from libs.common import bus, topics
from libs.common.config import FleetConfig, load_config
from libs.common.messages import Fill, MarketData, OrderRequest, Quote, Side, Signal
from libs.common.metrics import SampledTimer
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


# --- the cost of the bus and processing metrics -------------------------------------------------

BLOCK = 100  # messages per timed block, about one recv_batch under load
METRIC_LINE = "tally."  # the hot-path metric statements in bus.py all update a Tally


class _LoopbackSocket:
    """A PUB and SUB in one: keeps what is sent and hands it back (no ZeroMQ in the figure)."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()

    def send(self, frame: bytes, copy: bool = True) -> None:
        self.frames.append(frame)

    def recv(self, flags: int = 0) -> bytes:
        if not self.frames:
            raise zmq.Again()
        return self.frames.popleft()

    def setsockopt(self, option: int, value: Any) -> None:
        pass


def _strip_metrics(func: Callable[..., Any], expected: int) -> Callable[..., Any]:
    """The shipped function recompiled without its Tally statements: the same code, minus the
    metrics, so 'without' never drifts from 'with'. Fails if bus.py changed shape."""
    lines = textwrap.dedent(inspect.getsource(func)).splitlines()
    kept = [line for line in lines if not line.strip().startswith(METRIC_LINE)]
    if len(lines) - len(kept) != expected:
        raise RuntimeError(f"{func.__qualname__}: expected {expected} metric lines to strip")
    namespace: dict[str, Any] = {}
    code = "\n".join(["from __future__ import annotations", *kept])  # as bus.py is compiled
    exec(compile(code, inspect.getsourcefile(func) or "bus.py", "exec"), vars(bus), namespace)
    stripped: Callable[..., Any] = namespace[func.__name__]
    return stripped


class _BarePublisher(bus.Publisher):
    """bus.Publisher without its traffic tally."""

    publish = _strip_metrics(bus.Publisher.publish, 2)


class _BareSubscriber(bus.Subscriber[Any]):
    """bus.Subscriber without its traffic tally."""

    _decode = _strip_metrics(bus.Subscriber._decode, 3)


def bus_message_cost(n: int, with_metrics: bool) -> np.ndarray:
    """Per-message ns of publish, recv_batch and a handler under a 1-in-64 SampledTimer (the
    signal service's loop), over quotes; without metrics: the same code with them stripped."""
    sock = _LoopbackSocket()
    pub_cls, sub_cls = (
        (bus.Publisher, bus.Subscriber) if with_metrics else (_BarePublisher, _BareSubscriber)
    )
    pub: bus.Publisher = pub_cls(sock)  # type: ignore[arg-type]
    sub: bus.Subscriber[Any] = sub_cls(sock, MarketData)  # type: ignore[arg-type]
    timer = SampledTimer("bench", 64) if with_metrics else None
    topic = topics.md_quote("binance", "BTCUSDT")
    msgs = [_quote("BTCUSDT", T0 + i * MS, i + 1) for i in range(BLOCK)]
    blocks = WARMUP // BLOCK + max(1, n // BLOCK)
    samples = np.empty(blocks, dtype=np.int64)
    handled = 0
    clock = time.perf_counter_ns
    for b in range(blocks):
        t0 = clock()
        for msg in msgs:
            pub.publish(topic, msg)
        for env in sub.recv_batch(BLOCK):
            if timer is not None:  # as signal's loop times each tick
                started = timer.start()
                handled += env.seq > 0  # the handler: trivial, so the figure is the bus's own
                if started:
                    timer.stop(started)
            else:
                handled += env.seq > 0
        samples[b] = (clock() - t0) // BLOCK
    if handled != blocks * BLOCK:
        raise RuntimeError(f"bus benchmark lost messages: {handled} of {blocks * BLOCK}")
    return samples[WARMUP // BLOCK :]
