"""risk: positions from fills, pre-trade checks on signals, orders to execution over REQ/REP."""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal
from typing import Any

import zmq
from prometheus_client import REGISTRY
from prometheus_client import Counter as PromCounter

from libs.common import topics
from libs.common.bus import Envelope, RequestClient, RequestTimeout
from libs.common.messages import (
    TERMINAL_STATUSES,
    ExecutionEvent,
    FeedStatus,
    Fill,
    FillBatch,
    FillsSince,
    MarketData,
    OrderChannelReply,
    OrderReply,
    OrderRequest,
    OrderUpdate,
    Panic,
    Quote,
    RiskDecision,
    Signal,
    SignalMessage,
    StreamEnd,
)
from libs.common.metrics import EVERY_CALL, SampledTimer
from libs.common.positions import shrinks_position
from libs.common.runtime import ControlLink, Runtime

from .book import RiskBook
from .book_metrics import BookCollector
from .checks import REASONS, RateLimiter, check_signal
from .panic import RULES as PANIC_RULES
from .panic import PanicMonitor

log = logging.getLogger(__name__)
POLL_MS = 50
BOOK_SAVE_INTERVAL_NS = 100_000_000
PANIC_CHECK_INTERVAL_NS = 50_000_000  # time-driven and PnL panic rules are evaluated this often

REJECTIONS = PromCounter(
    "flotilla_risk_rejections", "Signals refused by risk, by reason", ["reason"]
)
ORDERS_SENT = PromCounter("flotilla_risk_orders_sent", "Orders risk sent to execution")
PANICS = PromCounter("flotilla_risk_panics", "Panic rules fired, by rule", ["rule"])
for _rule in PANIC_RULES:
    PANICS.labels(_rule)
for _reason in REASONS:
    REJECTIONS.labels(_reason)  # export every reason at 0 so rate() works from the start
CHECK_TIMER = SampledTimer("risk_check", EVERY_CALL)  # pre-trade checks of one signal


class RiskService:
    """Single writer per account: checks every signal and owns the position book."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.risk
        self.book = RiskBook(list(rt.cfg.instruments))
        self.rate = RateLimiter(
            self.cfg.limits.max_orders_per_window, self.cfg.limits.rate_window_ms
        )
        self.seen_signals: set[str] = set()
        self.signals_received = 0
        self.needs_recovery = True
        self.md_ended = False
        self.signal_ends: dict[str, int] = {}
        self.sent_end = False
        self.exec_last_fill_seq: int | None = None
        self.book_dirty = False
        self.book_saved_ns = 0
        self.panic = PanicMonitor(self.cfg.panic, list(rt.cfg.instruments))
        self.expected_px: dict[str, Decimal] = {}  # coid -> the price the strategy expected
        self.next_panic_check_ns = 0

    def start(self) -> None:
        """Bind the signal inlet and decision PUB; connect md, execution and control."""
        bus = self.rt.cfg.bus
        self.signals = self.rt.subscriber(bus.sig_in, SignalMessage, bind=True)
        self.signals.subscribe(topics.family("sig"))
        self.md = self.rt.subscriber(bus.md_pub, MarketData)
        self.md.subscribe(topics.family("md", "quote"))
        self.md.subscribe(topics.family("md", "status"))
        self.exec = self.rt.subscriber(bus.exec_pub, ExecutionEvent)
        self.exec.subscribe(topics.family("exec"))
        self.pub = self.rt.publisher(bus.risk_pub, bind=True)
        self.orders: RequestClient[Any] = self.rt.own(
            RequestClient(self.rt.ctx, bus.orders, OrderChannelReply, self.cfg.order_timeout_ms)
        )
        self.control = ControlLink(self.rt)
        self.poller = zmq.Poller()
        for sock in (*self.control.sockets, self.exec.sock, self.md.sock, self.signals.sock):
            self.poller.register(sock, zmq.POLLIN)
        self.book_collector = BookCollector(self.book)
        REGISTRY.register(self.book_collector)
        if self.book.load(self.rt.store):
            log.info("restored book: last fill seq %d", self.book.last_fill_seq)
        self.rt.serve_metrics(self.cfg.metrics_port)

    def run(self) -> int:
        """Control first on every pass, then fills, then quotes, then signals."""
        while not self.rt.stop_requested:
            self.rt.maintain()
            ready = dict(self.poller.poll(POLL_MS))
            if self.control.ready(ready):
                self.control.drain()
            else:
                self.control.check()
            if self.needs_recovery:
                self.recover()
            if self.exec.sock in ready:
                for env in self.exec.recv_batch():
                    self.on_execution(env.msg)
            if self.md.sock in ready:
                # Risk needs only the current quote per symbol: conflate a backlog.
                for env in self.md.recv_latest():
                    self.on_market_data(env.msg)
            if self.signals.sock in ready:
                for env in self.signals.recv_batch(limit=100):
                    self.on_signal_message(env)
            self.check_panics()
            self.maybe_end()
            self.flush_book()
            self.rt.save_stats(self.stats, drained=self.drained())
        return 0

    # --- inputs -------------------------------------------------------------------------

    def on_market_data(self, msg: Any) -> None:
        """Keep the last quote per symbol (collar reference and marks)."""
        if isinstance(msg, Quote):
            book = self.book.symbols.get(msg.symbol)
            if book is not None:
                book.quote = msg
            self.raise_panics(self.panic.on_quote(msg, *self.now()))
        elif isinstance(msg, FeedStatus):
            if msg.state == "end":
                self.md_ended = True
                self.panic.feed_ended()  # a finished replay is not a stale market
            elif msg.state == "live":
                self.panic.feed_live(self.rt.clock.monotonic_ns())
            self.rt.mark_feed_ready(self.control)

    def on_execution(self, msg: Any) -> None:
        """Fills move positions (once each, in fill_seq order); updates move exposure."""
        match msg:
            case Fill() as fill:
                if fill.fill_seq > self.book.last_fill_seq + 1:
                    self.needs_recovery = True  # missed fills: fetch them before trusting the book
                    return
                if self.book.apply_fill(fill):
                    self.book_changed()
                    expected = self.expected_px.get(fill.client_order_id)
                    # Fill windows run on market time (the fill's event time): a replay at 100x
                    # is not a runaway strategy, and live, market time is wall time.
                    at = fill.ts_event
                    self.raise_panics(
                        self.panic.on_fill(fill, expected, at, self.rt.clock.time_ns())
                    )
            case OrderUpdate() as upd:
                self.book.apply_update(upd)
                if upd.status in TERMINAL_STATUSES:
                    self.expected_px.pop(upd.client_order_id, None)
            case StreamEnd() as end:
                self.exec_last_fill_seq = end.counts.get("last_fill_seq", 0)

    def on_signal_message(self, env: Envelope[Any]) -> None:
        """A signal to check, or a signal replica's end of stream."""
        match env.msg:
            case Signal() as sig:
                self.signals_received += 1
                self.on_signal(sig)
            case StreamEnd() as end:
                self.signal_ends[end.instance] = end.counts.get("signals", 0)

    def on_signal(self, sig: Signal) -> None:
        """Check, then send or refuse; every outcome is published as a RiskDecision."""
        t0 = CHECK_TIMER.start()
        reason = self.refusal(sig)
        CHECK_TIMER.stop(t0)
        if reason:
            self.refuse(sig, reason)
            return
        self.seen_signals.add(sig.signal_id)
        self.send_order(sig)

    def refusal(self, sig: Signal) -> str:
        """The first reason this signal may not become an order, or ''."""
        if self.control.gate.too_silent():
            self.control.drain()  # busy, not necessarily silent: the heartbeats may be queued
        if reason := self.control.gate.refusal(sig.strategy, self.reduces(sig)):
            return reason
        if self.needs_recovery:
            return "recovering"
        if sig.signal_id in self.seen_signals:
            return "duplicate_signal"
        instrument = self.rt.cfg.instruments.get(sig.symbol)
        book = self.book.symbols.get(sig.symbol)
        if instrument is None or book is None:
            return "unknown_instrument"
        return check_signal(sig, instrument, book, self.cfg.limits, self.rate)

    def reduces(self, sig: Signal) -> bool:
        """True when the signal's order shrinks |position| even if working orders on its side
        fill first (the only orders REDUCING lets through)."""
        book = self.book.symbols.get(sig.symbol)
        if book is None:
            return False
        working = book.exposure.buy if sig.side == "buy" else book.exposure.sell
        return shrinks_position(book.position.qty, working, sig.side, sig.qty)

    # --- outputs ------------------------------------------------------------------------

    def send_order(self, sig: Signal) -> None:
        """Send one order; a timeout leaves its outcome unknown and its exposure counted."""
        order = OrderRequest(
            ts_event=sig.ts_event,
            ts_init=self.rt.clock.time_ns(),
            client_order_id=client_order_id(sig.signal_id),
            signal_id=sig.signal_id,
            strategy=sig.strategy,
            venue=sig.venue,
            symbol=sig.symbol,
            side=sig.side,
            order_type=sig.order_type,
            qty=sig.qty,
            limit_px=sig.limit_px,
            origin_mono_ns=sig.origin_mono_ns,
        )
        self.rate.record(sig.ts_event)
        self.expected_px[order.client_order_id] = sig.limit_px or sig.ref_px
        self.book.track_order(order.client_order_id, order.symbol, order.side, order.qty)
        self.book.orders_sent += 1
        ORDERS_SENT.inc()
        try:
            reply = self.orders.request(order)
        except RequestTimeout as exc:
            self.book.order_timeouts += 1
            log.error("order %s outcome unknown: %s", order.client_order_id, exc)
            self.raise_panics(self.panic.on_venue_error("timeout", *self.now()))
            self.publish_decision(sig, True, "sent_outcome_unknown", order.client_order_id)
            self.book_changed()
            return
        self.on_order_reply(sig, order, reply)

    def on_order_reply(self, sig: Signal, order: OrderRequest, reply: Any) -> None:
        """Execution accepted (exposure stays until updates say otherwise) or rejected it."""
        if isinstance(reply, OrderReply) and reply.accepted:
            self.publish_decision(sig, True, "", order.client_order_id)
        else:
            self.book.untrack(order.client_order_id)
            why = reply.reason if isinstance(reply, OrderReply) else "bad_reply"
            log.warning("execution rejected %s: %s", order.client_order_id, why)
            if why.startswith("venue") or why == "bad_reply":
                self.raise_panics(self.panic.on_venue_error(why, *self.now()))
            self.publish_decision(sig, False, f"execution:{why}", order.client_order_id)
        self.book_changed()

    def refuse(self, sig: Signal, reason: str) -> None:
        """Count and publish a refusal."""
        self.book.rejections[reason] += 1
        REJECTIONS.labels(reason).inc()
        self.publish_decision(sig, False, reason, "")
        self.book_changed()

    def book_changed(self) -> None:
        """Mark the book for saving; it is written at most every BOOK_SAVE_INTERVAL_NS.

        Writing it on every fill put a store write on the order path. Losing the last interval
        in a crash loses nothing that matters: fills and working orders are re-fetched from
        execution on start (recover), and only counters could lag.
        """
        self.book_dirty = True
        self.flush_book()

    def flush_book(self, force: bool = False) -> None:
        """Write the book if it changed and the interval has passed (or force)."""
        now = self.rt.clock.monotonic_ns()
        if self.book_dirty and (force or now - self.book_saved_ns >= BOOK_SAVE_INTERVAL_NS):
            self.book.save(self.rt.store)
            self.book_dirty = False
            self.book_saved_ns = now

    def publish_decision(self, sig: Signal, accepted: bool, reason: str, coid: str) -> None:
        """Tell the world what risk decided about a signal."""
        decision = RiskDecision(
            ts_event=sig.ts_event,
            ts_init=self.rt.clock.time_ns(),
            signal_id=sig.signal_id,
            strategy=sig.strategy,
            symbol=sig.symbol,
            accepted=accepted,
            reason=reason,
            client_order_id=coid,
        )
        self.pub.publish(topics.risk_decision(sig.strategy), decision)

    # --- panic rules --------------------------------------------------------------------

    def now(self) -> tuple[int, int]:
        """(monotonic, wall) nanoseconds, as the panic rules take them."""
        return self.rt.clock.monotonic_ns(), self.rt.clock.time_ns()

    def check_panics(self) -> None:
        """Time-driven rules (staleness, a persistent spread blow-out) and the PnL rules."""
        mono, wall = self.now()
        if mono < self.next_panic_check_ns:
            return
        self.next_panic_check_ns = mono + PANIC_CHECK_INTERVAL_NS
        self.raise_panics(self.panic.check(mono, wall))
        self.raise_panics(self.panic.on_pnl(self.book.total_pnl(), mono, wall))

    def raise_panics(self, panics: list[Panic]) -> None:
        """Publish each panic on risk.panic for the kill switch, counted and logged."""
        for panic in panics:
            PANICS.labels(panic.rule).inc()
            log.error("PANIC %s -> %s: %s", panic.rule, panic.action, panic.detail)
            self.pub.publish(topics.RISK_PANIC, panic)

    # --- recovery and draining ----------------------------------------------------------

    def recover(self) -> None:
        """Fetch fills missed while down or lost in transit, from execution (zguide Clone)."""
        now = self.rt.clock.time_ns()
        try:
            reply = self.orders.request(
                FillsSince(ts_event=now, ts_init=now, after_seq=self.book.last_fill_seq)
            )
        except RequestTimeout:
            log.warning("execution not answering the recovery request yet; orders stay blocked")
            return
        if not isinstance(reply, FillBatch):
            log.error("unexpected recovery reply %r", type(reply).__name__)
            return
        applied = sum(1 for fill in reply.fills if self.book.apply_fill(fill))
        for upd in reply.open_orders:
            self.book.apply_update(upd)
        self.book.save(self.rt.store)
        self.needs_recovery = False
        log.info("recovered %d fills; book at fill seq %d", applied, self.book.last_fill_seq)

    def maybe_end(self) -> None:
        """Once market data and every signal replica have ended, tell execution."""
        if self.sent_end or not self.md_ended:
            return
        # Live replicas (TTL membership): a replica that died mid-stream is not waited for.
        replicas = {k.rsplit(":", 1)[1] for k in self.rt.store.keys("members:signal:")}
        if not replicas or not replicas.issubset(self.signal_ends):
            return
        self.sent_end = True
        now = self.rt.clock.time_ns()
        self.pub.publish(
            topics.risk_end(),
            StreamEnd(ts_event=now, ts_init=now, service="risk", instance=self.rt.instance),
        )

    def drained(self) -> bool:
        """True once every fill execution reported has been applied."""
        return (
            self.sent_end
            and self.exec_last_fill_seq is not None
            and self.book.last_fill_seq >= self.exec_last_fill_seq
        )

    def stats(self) -> dict[str, Any]:
        """Counters and book for summary.json."""
        doc = self.book.summary()
        doc.update(
            signals_received=self.signals_received,
            signals_announced=sum(self.signal_ends.values()),
            sequence_gaps=self.md.sequence_gaps
            + self.signals.sequence_gaps
            + self.exec.sequence_gaps,
            decode_errors=self.md.decode_errors
            + self.signals.decode_errors
            + self.exec.decode_errors,
        )
        return doc

    def close(self) -> None:
        """Persist the book and final counters; stop exporting the book."""
        REGISTRY.unregister(self.book_collector)
        self.book.save(self.rt.store)
        self.rt.save_stats(self.stats, drained=self.drained(), force=True)


def client_order_id(signal_id: str) -> str:
    """Derived from the signal id, so a retried intent can never become a second order."""
    coid = f"fl-{signal_id}"
    if len(coid) <= 36:  # Binance caps newClientOrderId at 36 characters
        return coid
    return "fl-" + hashlib.sha256(signal_id.encode()).hexdigest()[:33]
