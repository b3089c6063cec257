"""signal: runs the strategy over its symbols' trades and quotes, publishes sig.* intents."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import zmq

from libs.common import topics
from libs.common.bus import Envelope
from libs.common.messages import FeedStatus, MarketData, Quote, Signal, StreamEnd, Trade
from libs.common.runtime import ControlLink, Runtime

from .strategy import Decision, OfiStrategy

log = logging.getLogger(__name__)
POLL_MS = 50


class SignalService:
    """One replica: subscribes only to its symbols, emits signals, forwards end-of-stream."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.signal
        self.symbols = list(self.cfg.symbols or rt.cfg.instruments)
        self.strategies = {s: OfiStrategy(self.cfg.ofi, s) for s in self.symbols}
        self.ticks_received: Counter[str] = Counter()
        self.signals: Counter[str] = Counter()
        self.foreign_symbol_drops = 0
        self.feed_seen = False
        self.ended = False

    def start(self) -> None:
        """Connect to market data, the control plane and risk's signal inlet."""
        bus = self.rt.cfg.bus
        self.md = self.rt.subscriber(bus.md_pub, MarketData)
        for sym in self.symbols:
            venue = self.rt.cfg.instruments[sym].venue
            self.md.subscribe(topics.exact(topics.md_trade(venue, sym)))
            self.md.subscribe(topics.exact(topics.md_quote(venue, sym)))
        self.md.subscribe(topics.family("md", "status"))
        self.pub = self.rt.publisher(bus.sig_in, bind=False)
        self.control = ControlLink(self.rt)
        self.poller = zmq.Poller()
        self.poller.register(self.md.sock, zmq.POLLIN)
        self.poller.register(self.control.socket, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)

    def run(self) -> int:
        """Poll market data and control until asked to stop."""
        while not self.rt.stop_requested:
            ready = dict(self.poller.poll(POLL_MS))
            if self.control.socket in ready:
                self.control.drain()
            if self.md.sock in ready:
                for env in self.md.recv_batch():
                    self.on_market_data(env)
            self.rt.save_stats(self.stats(), drained=self.ended)
        return 0

    def on_market_data(self, env: Envelope[Any]) -> None:
        """Dispatch one market-data message."""
        match env.msg:
            case Trade() as t if t.symbol in self.strategies:
                self.ticks_received[t.symbol] += 1
                decision = self.strategies[t.symbol].on_trade(t)
                if decision is not None:
                    self.emit(t, decision, env.pub_mono_ns)
            case Quote() as q if q.symbol in self.strategies:
                self.ticks_received[q.symbol] += 1
                self.strategies[q.symbol].on_quote(q)
            case FeedStatus() as status:
                self.on_feed_status(status)
            case _:
                self.foreign_symbol_drops += 1  # not one of ours: counted, never a KeyError

    def emit(self, trade: Trade, d: Decision, origin_mono_ns: int) -> None:
        """Publish a signal; its id is derived from the triggering trade, so it is stable."""
        sig = Signal(
            ts_event=trade.ts_event,
            ts_init=self.rt.clock.time_ns(),
            signal_id=f"{self.cfg.strategy}-{trade.symbol}-{trade.trade_id}",
            strategy=self.cfg.strategy,
            venue=trade.venue,
            symbol=trade.symbol,
            side=d.side,
            qty=d.qty,
            order_type=self.cfg.ofi.order_type,
            limit_px=d.limit_px,
            ref_px=d.ref_px,
            score=d.score,
            origin_mono_ns=origin_mono_ns,
        )
        self.pub.publish(topics.signal(self.cfg.strategy, trade.symbol), sig)
        self.signals[trade.symbol] += 1

    def on_feed_status(self, status: FeedStatus) -> None:
        """First status: tell market-data we hear it. `end`: forward end-of-stream to risk."""
        if not self.feed_seen:
            self.rt.mark_feed_ready(self.control)
            self.feed_seen = self.control.gate.state is not None
        if status.state == "end" and not self.ended:
            self.ended = True
            now = self.rt.clock.time_ns()
            end = StreamEnd(
                ts_event=now,
                ts_init=now,
                service=self.rt.service,
                instance=self.rt.instance,
                counts={"signals": sum(self.signals.values())},
            )
            self.pub.publish(topics.signal_end(self.rt.instance), end)
            log.info(
                "feed ended: %d ticks, %d signals",
                self.ticks_received.total(),
                self.signals.total(),
            )

    def stats(self) -> dict[str, Any]:
        """Counters for summary.json."""
        return {
            "ticks_received": dict(self.ticks_received),
            "signals": dict(self.signals),
            "sequence_gaps": self.md.sequence_gaps,
            "decode_errors": self.md.decode_errors,
            "foreign_symbol_drops": self.foreign_symbol_drops,
        }

    def close(self) -> None:
        """Write final counters; the Runtime closes the sockets."""
        self.rt.save_stats(self.stats(), drained=self.ended, force=True)
