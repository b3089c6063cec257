"""execution: the order socket, the paper exchange, the journal, and the last trading-state check."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar, get_args

import msgspec
import numpy as np
import zmq
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from libs.common import topics
from libs.common.bus import DECODE_ERRORS
from libs.common.messages import (
    CancelRequest,
    FeedStatus,
    Fill,
    FillBatch,
    FillsSince,
    HaltPrepare,
    MarketData,
    OrderChannel,
    OrderReply,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Quote,
    RiskEvent,
    StateAck,
    StreamEnd,
)
from libs.common.metrics import BUS, EVERY_CALL, SampledTimer
from libs.common.positions import shrinks_position
from libs.common.runtime import ControlLink, Runtime

from .journal import Journal
from .live import LiveExchange
from .live import describe as describe_mismatch
from .paper import FeeSchedule, PaperExchange
from .venues import open_venue

log = logging.getLogger(__name__)
POLL_MS = 50
CANCEL_ON = ("trading_halted", "trading_emergency", "state_stale")
# Refusals under which resting orders must not match: nothing may trade (a halted or silent
# fleet). PAUSED and REDUCING keep working orders live, EMERGENCY only its flattening orders.
# A prepared halt stops matching too: from the prepare on, nothing at all happens at the venue
# until the transition is heard (a PAUSED prepare costs working orders a millisecond).
NO_MATCH_ON = ("trading_halted", "state_stale", "state_unknown", "halt_pending")
EMERGENCY_STRATEGY = "emergency"  # flattening orders execution itself sends in EMERGENCY

ORDERS = PromCounter(
    "flotilla_execution_orders", "Orders received on the order socket, by outcome", ["outcome"]
)
FILLS = PromCounter("flotilla_execution_fills", "Fills from the paper exchange")
CANCELS = PromCounter(
    "flotilla_execution_cancels",
    "Cancel results: canceled, too_late (already filled), unknown (no such order)",
    ["result"],
)
for _result in ("canceled", "too_late", "unknown"):
    CANCELS.labels(_result)
TICK_TO_ORDER = Histogram(
    "flotilla_execution_tick_to_order_seconds",
    "From market-data's publish of the tick that caused an order to execution's receipt of it",
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0),
)
ORDER_UPDATES = PromCounter(
    "flotilla_execution_order_updates",
    "Order updates journaled and published, by status",
    ["status"],
)
UPDATES_BY_STATUS = {status: ORDER_UPDATES.labels(status) for status in get_args(OrderStatus)}
REJECTIONS = PromCounter(
    "flotilla_execution_rejections", "Orders execution refused, by reason", ["reason"]
)
for _reason in (
    "state_unknown",
    "state_stale",
    "halt_pending",
    "trading_halted",
    "trading_paused",
    "trading_reducing",
    "trading_emergency",
    "strategy_halted",
    "reduce_only_would_grow",
    "stale_order",
    "unknown_instrument",
    "limit_without_price",
    "reconcile_mismatch",
):
    REJECTIONS.labels(_reason)  # every known reason at 0, so rate() works from the start
# The venue is the paper exchange here. A live venue adapter labels its own venue, and
# increments the reconnect counter when its connection to the venue is re-established.
VENUE = "paper"
VENUE_REQUEST = Histogram(
    "flotilla_execution_venue_request_seconds",
    "Time spent in one request to the venue, by venue and operation (submit, cancel)",
    ["venue", "op"],
    buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 5.0),
)
VENUE_TIMERS = {op: VENUE_REQUEST.labels(VENUE, op) for op in ("submit", "cancel")}
VENUE_ERRORS = PromCounter(
    "flotilla_execution_venue_errors", "Venue requests that raised, by venue", ["venue"]
)
VENUE_RECONNECTS = PromCounter(
    "flotilla_execution_venue_reconnects",
    "Connections to the venue re-established (0 for the paper exchange), by venue",
    ["venue"],
)
VENUE_ERRORS.labels(VENUE)
VENUE_RECONNECTS.labels(VENUE)
REQUEST_TIMER = SampledTimer("execution_request", EVERY_CALL)  # one order-socket request
R = TypeVar("R")


class ExecutionService:
    """Single writer per account: the only process that talks to the venue."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.execution
        fees = FeeSchedule(
            self.cfg.taker_fee_bps,
            self.cfg.maker_fee_bps,
            {s: i.quote for s, i in rt.cfg.instruments.items()},
        )
        # The paper exchange, or a live venue behind the same interface (services/execution/live.py).
        self.paper: PaperExchange | LiveExchange = PaperExchange(fees)
        self.live: LiveExchange | None = None
        self.reconcile_problems: list[str] = []
        self.reconciled_seq = 0
        self.journal = Journal(rt.run_dir / "journal")
        self.fills: list[Fill] = []
        self.positions: dict[str, Decimal] = {}  # net qty per symbol, from our own fills
        self.rejections: Counter[str] = Counter()
        self.orders_received = 0
        self.latencies_ns: list[int] = []
        self.md_ended = False
        self.risk_ended = False
        self.sent_end = False
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(OrderChannel)

    def start(self) -> None:
        """Reload the journal, bind the order socket and event PUB, connect md and control."""
        if self.cfg.venue != "paper":
            self.live = self.paper = LiveExchange(
                open_venue(self.rt.cfg),
                self.rt.store,
                self.rt.clock,
                self.emit,
                self.cfg.venue_poll_interval_ms,
                self.cfg.venue_sync_interval_ms,
                self.cfg.venue_unknown_grace_ms,
            )
        self.restore()
        self.journal.open()
        if self.live is not None:
            self.reconcile()
        bus = self.rt.cfg.bus
        self.orders = self.rt.own(self.rt.ctx.socket(zmq.REP))
        self.orders.setsockopt(zmq.LINGER, 0)
        self.rt.bind(self.orders, bus.orders)
        self.pub = self.rt.publisher(bus.exec_pub, bind=True)
        self.md = self.rt.subscriber(bus.md_pub, MarketData)
        self.md.subscribe(topics.family("md", "quote"))
        self.md.subscribe(topics.family("md", "status"))
        self.risk = self.rt.subscriber(bus.risk_pub, RiskEvent)
        self.risk.subscribe(topics.exact(topics.risk_end()))
        self.control = ControlLink(self.rt)
        self.poller = zmq.Poller()
        for sock in (*self.control.sockets, self.orders, self.md.sock, self.risk.sock):
            self.poller.register(sock, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)

    def restore(self) -> None:
        """Rebuild orders and the fill counter from the journal, so a restart never re-fills."""
        updates, fills = self.journal.load()
        for fill in fills:
            self.fills.append(fill)
            self.track_position(fill)
            if self.live is not None:
                self.live.restore_fill(fill)
        self.paper.next_fill_seq = (fills[-1].fill_seq + 1) if fills else 1
        for upd in updates:
            self.paper.restore(upd)
        self.orders_received = len({u.client_order_id for u in updates})
        if updates or fills:
            log.info("journal restored: %d orders, %d fills", self.orders_received, len(fills))

    def run(self) -> int:
        """Control first on every pass, then orders, then quotes."""
        while not self.rt.stop_requested:
            self.rt.maintain()
            ready = dict(self.poller.poll(POLL_MS))
            if self.control.ready(ready):
                self.control.drain()
            else:
                self.control.check()
            self.enforce_state()
            if self.live is not None:
                self.keep_up_with_venue()
            if self.orders in ready:
                self.serve_order_requests()
            if self.md.sock in ready:
                for env in self.md_batch():
                    self.on_market_data(env.msg)
            if self.risk.sock in ready:
                batch = self.risk.recv_batch()
                self.risk_ended |= any(isinstance(env.msg, StreamEnd) for env in batch)
            self.maybe_end()
            self.rt.save_stats(self.stats, drained=self.sent_end)
        return 0

    def keep_up_with_venue(self) -> None:
        """Live venue: fills and order states from the venue; a blocked start re-checked when
        an operator resumes."""
        assert self.live is not None
        self.emit(self.live.poll())
        state = self.control.gate.state
        resumed = state is not None and state.state == "ACTIVE" and state.seq > self.reconciled_seq
        if self.reconcile_problems and resumed:
            self.reconcile()

    def reconcile(self) -> None:
        """Journal against venue; any mismatch blocks new orders, with a report to read."""
        assert self.live is not None
        state = self.control.gate.state if hasattr(self, "control") else None
        self.reconciled_seq = state.seq if state is not None else 0
        self.emit(self.live.poll_fills())  # fills made while we were away, before comparing
        events, self.reconcile_problems = self.live.reconcile(dict(self.positions))
        self.emit(events)
        report = self.rt.run_dir / "reconcile_report.txt"
        if self.reconcile_problems:
            report.write_text(describe_mismatch(self.reconcile_problems))
            log.error("%s", describe_mismatch(self.reconcile_problems))
        else:
            report.unlink(missing_ok=True)
            log.info("journal and venue agree: %d working orders", len(self.live.working()))

    def md_batch(self) -> list[Any]:
        """Waiting market data. With no working order only the newest quote per symbol can
        matter (nothing rests on the book to fill, and the next order meets the latest touch),
        so a backlog is conflated; with working orders every quote is matched."""
        return self.md.recv_batch() if self.paper.open else self.md.recv_latest()

    def enforce_state(self) -> None:
        """Cancel what the state forbids: everything when halted or silent, everything but the
        flattening orders in EMERGENCY, a halted strategy's orders; then flatten in EMERGENCY."""
        gate = self.control.gate
        if not self.paper.open and (gate.state is None or gate.state.state != "EMERGENCY"):
            return
        reason = gate.refusal()
        halted = gate.state.halted_strategies if gate.state is not None else {}
        doomed = [
            o
            for o in self.paper.working()
            if (reason in CANCEL_ON and not self.is_flattening(o.req, reason))
            or o.req.strategy in halted
        ]
        self.cancel_orders(doomed, reason or "strategy_halted")
        if reason == "trading_emergency":
            self.flatten(gate.state.seq if gate.state is not None else 0)

    def is_flattening(self, req: OrderRequest, reason: str) -> bool:
        """An EMERGENCY flattening order survives the EMERGENCY cancel-all (and only that)."""
        return reason == "trading_emergency" and req.strategy == EMERGENCY_STRATEGY

    def cancel_orders(self, orders: list[Any], reason: str) -> None:
        """Cancel each order at the venue and report every result."""
        if not orders:
            return
        if self.live is not None and reason in ("trading_halted", "state_stale"):
            self.emit(self.live.cancel_all(reason))  # reaches every open order at the venue
            log.warning("cancel-all at %s: %s", self.live.venue.name, reason)
            return
        now = self.rt.clock.time_ns()
        for order in orders:
            coid = order.req.client_order_id
            self.report_cancel(coid, self.venue("cancel", self.paper.cancel, coid, now, reason))
        log.warning("cancelled %d working orders: %s", len(orders), reason)

    def report_cancel(self, coid: str, events: list[Any]) -> str:
        """Journal and publish a cancel's outcome; 'too_late' when the order already filled."""
        self.emit(events)
        if events:
            result = "canceled"
        elif coid in self.paper.orders and self.paper.orders[coid].status == "filled":
            result = "too_late"
        else:
            result = "unknown"
        CANCELS.labels(result).inc()
        if result != "canceled":
            log.warning("cancel of %s: %s", coid, result)
        return result

    def flatten(self, seq: int) -> None:
        """EMERGENCY: one reduce-only market order per open position, sent by execution itself."""
        for symbol, qty in self.positions.items():
            if qty == 0 or self.flattening(symbol):
                continue
            coid = f"fl-emg-{seq}-{symbol}"
            n = 1
            while coid in self.paper.orders:  # an earlier attempt ended without flattening
                n += 1
                coid = f"fl-emg-{seq}-{symbol}-{n}"
            self.submit_flatten(coid, symbol, qty)

    def flattening(self, symbol: str) -> bool:
        """True when a flattening order for this symbol is still working."""
        return any(
            o.req.symbol == symbol and o.req.strategy == EMERGENCY_STRATEGY
            for o in self.paper.working()
        )

    def submit_flatten(self, coid: str, symbol: str, position: Decimal) -> None:
        """Journal and send one reduce-only market order closing `position`."""
        now = self.rt.clock.time_ns()
        inst = self.rt.cfg.instruments.get(symbol)
        req = OrderRequest(
            ts_event=now,
            ts_init=now,
            client_order_id=coid,
            signal_id="",
            strategy=EMERGENCY_STRATEGY,
            venue=inst.venue if inst is not None else "paper",
            symbol=symbol,
            side="sell" if position > 0 else "buy",
            order_type="market",
            qty=abs(position),
            reduce_only=True,
        )
        log.warning("EMERGENCY: flattening %s %s with %s", position, symbol, coid)
        ORDERS.labels("flatten").inc()
        self.emit(self.venue("submit", self.paper.submit, req))

    def serve_order_requests(self) -> None:
        """Answer every waiting request; a malformed one gets a rejection, never a crash."""
        while True:
            try:
                frame = self.orders.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.control.drain()  # a halt that landed while we were busy applies to this order
            self.enforce_state()
            t0 = REQUEST_TIMER.start()
            reply = self.handle_request(frame)
            REQUEST_TIMER.stop(t0)
            self.orders.send(self._encoder.encode(reply))

    def handle_request(self, frame: bytes) -> Any:
        """Decode and dispatch one request on the order socket."""
        try:
            req = self._decoder.decode(frame)
        except DECODE_ERRORS as exc:
            BUS.decode_errors.labels("orders").inc()
            log.warning("malformed order request rejected: %s", exc)
            return self.reply("", False, "rejected", "malformed_request")
        match req:
            case OrderRequest():
                return self.on_order(req)
            case CancelRequest():
                return self.on_cancel(req)
            case FillsSince():
                BUS.snapshots["fills"].inc()
                return self.fill_batch(req.after_seq)
            case HaltPrepare():
                return self.on_prepare(req)
        return self.reply("", False, "rejected", "unsupported_request")

    def on_cancel(self, req: CancelRequest) -> OrderReply:
        """Cancel one order; the reply says canceled, too late (already filled) or unknown."""
        coid = req.client_order_id
        result = self.report_cancel(
            coid,
            self.venue("cancel", self.paper.cancel, coid, self.rt.clock.time_ns(), "requested"),
        )
        if result == "canceled":
            return self.reply(coid, True, "canceled")
        if result == "too_late":
            return self.reply(coid, False, "filled", "too_late_already_filled")
        existing = self.paper.orders.get(coid)
        status = existing.status if existing is not None else "unknown"
        return self.reply(coid, False, status, "not_working" if existing else "unknown_order")

    def on_prepare(self, prep: HaltPrepare) -> StateAck:
        """Phase one of a halt: refuse new orders from now until state `seq` is heard."""
        if self.control.gate.prepare(prep.seq):
            log.info("halt-prepare seq %d (%s): new orders refused", prep.seq, prep.state)
        now = self.rt.clock.time_ns()
        return StateAck(
            ts_event=prep.ts_event,
            ts_init=now,
            service=self.rt.service,
            instance=self.rt.instance,
            seq=prep.seq,
            state=prep.state,
        )

    def track_position(self, fill: Fill) -> None:
        """Net quantity per symbol from our own fills (what EMERGENCY flattens)."""
        signed = fill.qty if fill.side == "buy" else -fill.qty
        inst = self.rt.cfg.instruments.get(fill.symbol)
        if inst is not None and fill.fee_asset == inst.base:
            signed -= fill.fee  # a spot venue takes a buy's fee out of the coin bought (Binance)
        self.positions[fill.symbol] = self.positions.get(fill.symbol, Decimal(0)) + signed

    def shrinks(self, req: OrderRequest) -> bool:
        """True when the order shrinks |position| even if our working orders on its side fill."""
        working = sum(
            (
                o.leaves
                for o in self.paper.working()
                if o.req.symbol == req.symbol and o.req.side == req.side
            ),
            Decimal(0),
        )
        return shrinks_position(
            self.positions.get(req.symbol, Decimal(0)), working, req.side, req.qty
        )

    def on_order(self, req: OrderRequest) -> OrderReply:
        """Idempotency, trading state, age and instrument checks, then journal and match."""
        existing = self.paper.orders.get(req.client_order_id)
        if existing is not None:
            return self.reply(
                req.client_order_id, False, existing.status, "duplicate_client_order_id"
            )
        if req.origin_mono_ns:
            latency_ns = self.rt.clock.monotonic_ns() - req.origin_mono_ns
            self.latencies_ns.append(latency_ns)
            TICK_TO_ORDER.observe(latency_ns / 1e9)
        self.orders_received += 1
        reason = self.order_refusal(req)
        if reason:
            self.rejections[reason] += 1
            ORDERS.labels("rejected").inc()
            REJECTIONS.labels(reason).inc()
            self.emit([self.paper.reject(req, self.rt.clock.time_ns(), reason)])
            return self.reply(req.client_order_id, False, "rejected", reason)
        ORDERS.labels("accepted").inc()
        self.emit(self.venue("submit", self.paper.submit, req))
        return self.reply(req.client_order_id, True, self.paper.orders[req.client_order_id].status)

    def order_refusal(self, req: OrderRequest) -> str:
        """Why this order must not reach the venue, or ''. The trading state is checked here, last."""
        reduces = self.shrinks(req)
        if reason := self.control.gate.refusal(req.strategy, reduces):
            return reason
        if self.reconcile_problems:
            return "reconcile_mismatch"
        if req.reduce_only and not reduces:
            return "reduce_only_would_grow"
        age_ms = (self.rt.clock.time_ns() - req.ts_init) / 1e6
        if age_ms > self.cfg.max_order_age_ms:
            return "stale_order"
        if req.symbol not in self.rt.cfg.instruments:
            return "unknown_instrument"
        if req.order_type == "limit" and req.limit_px is None:
            return "limit_without_price"
        return ""

    def on_market_data(self, msg: Any) -> None:
        """New touch: working orders may fill, if trading is still allowed."""
        if isinstance(msg, Quote):
            if self.control.gate.refusal() not in NO_MATCH_ON:
                self.emit(self.paper.on_quote(msg))
            else:
                self.paper.set_touch(msg)  # keep the book current, but match nothing while halted
        elif isinstance(msg, FeedStatus):
            self.md_ended = self.md_ended or msg.state == "end"
            self.rt.mark_feed_ready(self.control)

    def emit(self, events: list[OrderUpdate | Fill]) -> None:
        """Journal first, then publish: nothing is announced that a restart would forget."""
        now = self.rt.clock.time_ns()
        for event in events:
            ev = msgspec.structs.replace(event, ts_init=now)  # ts_init: created here (wall clock)
            self.journal.record(ev)
            if isinstance(ev, Fill):
                self.fills.append(ev)
                self.track_position(ev)
                FILLS.inc()
                self.pub.publish(topics.exec_fill(ev.venue, ev.symbol), ev)
            else:
                UPDATES_BY_STATUS[ev.status].inc()
                self.pub.publish(topics.exec_order(ev.venue, ev.symbol), ev)

    @staticmethod
    def venue(op: str, call: Callable[..., R], *args: Any) -> R:
        """One request to the venue, timed, and counted as an error if it raises."""
        t0 = time.perf_counter()
        try:
            return call(*args)
        except Exception:
            VENUE_ERRORS.labels(VENUE).inc()
            raise
        finally:
            VENUE_TIMERS[op].observe(time.perf_counter() - t0)

    def fill_batch(self, after_seq: int) -> FillBatch:
        """Fills after a seq plus open orders: what a restarted risk needs to catch up."""
        now = self.rt.clock.time_ns()
        missed = [f for f in self.fills if f.fill_seq > after_seq]
        open_orders = [self.paper.snapshot(o, now) for o in self.paper.working()]
        last = self.fills[-1].fill_seq if self.fills else 0
        return FillBatch(
            ts_event=now, ts_init=now, fills=missed, last_fill_seq=last, open_orders=open_orders
        )

    def reply(self, coid: str, accepted: bool, status: Any, reason: str = "") -> OrderReply:
        """A synchronous answer on the order socket."""
        now = self.rt.clock.time_ns()
        return OrderReply(
            ts_event=now,
            ts_init=now,
            client_order_id=coid,
            accepted=accepted,
            status=status,
            reason=reason,
        )

    def maybe_end(self) -> None:
        """After market data and risk have ended, announce the last fill seq."""
        if self.sent_end or not (self.md_ended and self.risk_ended):
            return
        self.sent_end = True
        now = self.rt.clock.time_ns()
        last = self.fills[-1].fill_seq if self.fills else 0
        end = StreamEnd(
            ts_event=now,
            ts_init=now,
            service="execution",
            instance=self.rt.instance,
            counts={"last_fill_seq": last, "fills": len(self.fills)},
        )
        self.pub.publish(topics.exec_end(), end)

    def stats(self) -> dict[str, Any]:
        """Counters for summary.json."""
        lat = np.array(self.latencies_ns, dtype=np.int64)
        return {
            "orders_received": self.orders_received,
            "orders_rejected": dict(self.rejections),
            "fills": len(self.fills),
            "working_orders": len(self.paper.working()),
            "tick_to_order_p50_ns": int(np.percentile(lat, 50)) if lat.size else None,
            "tick_to_order_p99_ns": int(np.percentile(lat, 99)) if lat.size else None,
            "tick_to_order_p999_ns": int(np.percentile(lat, 99.9)) if lat.size else None,
            "tick_to_order_samples": int(lat.size),
            "sequence_gaps": self.md.sequence_gaps + self.risk.sequence_gaps,
            "decode_errors": self.md.decode_errors + self.risk.decode_errors,
        }

    def close(self) -> None:
        """Last fills from a live venue, final counters, then the journal files."""
        if self.live is not None:
            self.emit(self.live.poll_fills())
            self.live.venue.close()
        self.rt.save_stats(self.stats, drained=self.sent_end, force=True)
        self.journal.close()
        if self.latencies_ns:  # every sample, in arrival order, for `make bench`
            np.save(self.rt.run_dir / "tick_to_order_ns.npy", np.array(self.latencies_ns, np.int64))
