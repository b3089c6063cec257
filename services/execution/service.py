"""execution: the order socket, the paper exchange, the journal, and the last trading-state check."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

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
    MarketData,
    OrderChannel,
    OrderReply,
    OrderRequest,
    OrderUpdate,
    Quote,
    RiskEvent,
    StreamEnd,
)
from libs.common.metrics import BUS
from libs.common.runtime import ControlLink, Runtime

from .journal import Journal
from .paper import FeeSchedule, PaperExchange

log = logging.getLogger(__name__)
POLL_MS = 50
CANCEL_ON = ("trading_halted", "trading_emergency", "state_stale")

ORDERS = PromCounter(
    "flotilla_execution_orders", "Orders received on the order socket, by outcome", ["outcome"]
)
FILLS = PromCounter("flotilla_execution_fills", "Fills from the paper exchange")
TICK_TO_ORDER = Histogram(
    "flotilla_execution_tick_to_order_seconds",
    "From market-data's publish of the tick that caused an order to execution's receipt of it",
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0),
)


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
        self.paper = PaperExchange(fees)
        self.journal = Journal(rt.run_dir / "journal")
        self.fills: list[Fill] = []
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
        self.restore()
        self.journal.open()
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
        for sock in (self.control.socket, self.orders, self.md.sock, self.risk.sock):
            self.poller.register(sock, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)

    def restore(self) -> None:
        """Rebuild orders and the fill counter from the journal, so a restart never re-fills."""
        updates, fills = self.journal.load()
        for fill in fills:
            self.fills.append(fill)
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
            if self.control.socket in ready:
                self.control.drain()
            self.enforce_state()
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

    def md_batch(self) -> list[Any]:
        """Waiting market data. With no working order only the newest quote per symbol can
        matter (nothing rests on the book to fill, and the next order meets the latest touch),
        so a backlog is conflated; with working orders every quote is matched."""
        return self.md.recv_batch() if self.paper.open else self.md.recv_latest()

    def enforce_state(self) -> None:
        """A halt (or a silent kill switch) cancels every working order."""
        if not self.paper.open:
            return
        reason = self.control.gate.refusal()
        if reason in CANCEL_ON:
            now = self.rt.clock.time_ns()
            for order in self.paper.working():
                self.emit(self.paper.cancel(order.req.client_order_id, now, reason))
            log.warning("cancelled all working orders: %s", reason)

    def serve_order_requests(self) -> None:
        """Answer every waiting request; a malformed one gets a rejection, never a crash."""
        while True:
            try:
                frame = self.orders.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.control.drain()  # a halt that landed while we were busy applies to this order
            self.enforce_state()
            self.orders.send(self._encoder.encode(self.handle_request(frame)))

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
                events = self.paper.cancel(
                    req.client_order_id, self.rt.clock.time_ns(), "requested"
                )
                self.emit(events)
                return self.reply(
                    req.client_order_id, bool(events), "canceled" if events else "unknown"
                )
            case FillsSince():
                return self.fill_batch(req.after_seq)
        return self.reply("", False, "rejected", "unsupported_request")

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
            self.emit([self.paper.reject(req, self.rt.clock.time_ns(), reason)])
            return self.reply(req.client_order_id, False, "rejected", reason)
        ORDERS.labels("accepted").inc()
        self.emit(self.paper.submit(req))
        return self.reply(req.client_order_id, True, self.paper.orders[req.client_order_id].status)

    def order_refusal(self, req: OrderRequest) -> str:
        """Why this order must not reach the venue, or ''. The trading state is checked here, last."""
        if reason := self.control.gate.refusal():
            return reason
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
            if self.control.gate.allowed():
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
                FILLS.inc()
                self.pub.publish(topics.exec_fill(ev.venue, ev.symbol), ev)
            else:
                self.pub.publish(topics.exec_order(ev.venue, ev.symbol), ev)

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
        """Final counters, then the journal files."""
        self.rt.save_stats(self.stats, drained=self.sent_end, force=True)
        self.journal.close()
        if self.latencies_ns:  # every sample, in arrival order, for `make bench`
            np.save(self.rt.run_dir / "tick_to_order_ns.npy", np.array(self.latencies_ns, np.int64))
