"""signal: runs the strategy over its symbols' trades and quotes, publishes sig.* intents.

Replicas split the symbols among themselves: each registers in the state store with a TTL
heartbeat and owns the symbols that rendezvous hashing gives it over the live replicas
(libs/common/cluster.py). A replica subscribes only to the symbols it owns, and picks up a
dead replica's symbols within membership_ttl_ms + membership_interval_ms.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import zmq
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from libs.common import topics
from libs.common.bus import Envelope
from libs.common.cluster import Membership, assign
from libs.common.messages import FeedStatus, MarketData, Quote, Signal, StreamEnd, Trade
from libs.common.metrics import SampledTimer
from libs.common.runtime import ControlLink, Runtime

from .strategy import Decision, OfiStrategy, PulseStrategy

log = logging.getLogger(__name__)
POLL_MS = 50
# A subscription change needs a moment to reach market-data's PUB; a replica reports its view
# ready only on a feed status that market-data sent this long after the change.
SUBSCRIPTION_SETTLE_NS = 100_000_000

ASSIGNED = Gauge("flotilla_signal_assigned_symbols", "Symbols this replica currently owns")
REPLICAS = Gauge("flotilla_signal_live_replicas", "Live signal replicas this replica can see")
REBALANCES = PromCounter(
    "flotilla_signal_rebalances", "Times this replica's symbol assignment changed"
)
TICK_TIMER = SampledTimer("signal_tick")  # strategy + publish per market-data message, 1 in 64


class SignalService:
    """One replica: subscribes only to its symbols, emits signals, forwards end-of-stream."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.signal
        self.symbols = list(self.cfg.symbols or rt.cfg.instruments)
        self.strategies: dict[str, OfiStrategy | PulseStrategy] = {}
        cluster = rt.cfg.cluster
        self.membership = Membership(rt.store, "signal", rt.instance, cluster.membership_ttl_ms)
        self.membership_interval_ns = cluster.membership_interval_ms * 1_000_000
        self.next_membership_ns = 0
        self.view: list[str] = []
        self.assignment_changed_ns = 0
        self.ticks_received: Counter[str] = Counter()
        self.signals: Counter[str] = Counter()
        self.foreign_symbol_drops = 0
        self.ended = False
        self.order_type = "market" if self.cfg.strategy == "pulse" else self.cfg.ofi.order_type
        self.first_tick_mono_ns = 0  # receipt times, for `make bench`'s throughput figure
        self.last_tick_mono_ns = 0

    def start(self) -> None:
        """Connect to market data, the control plane and risk's signal inlet."""
        bus = self.rt.cfg.bus
        self.md = self.rt.subscriber(bus.md_pub, MarketData)
        self.md.subscribe(topics.family("md", "status"))
        self.pub = self.rt.publisher(bus.sig_in, bind=False)
        self.control = ControlLink(self.rt)
        self.poller = zmq.Poller()
        self.poller.register(self.md.sock, zmq.POLLIN)
        for sock in self.control.sockets:
            self.poller.register(sock, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)
        self.refresh_membership()

    def run(self) -> int:
        """Poll market data and control until asked to stop."""
        while not self.rt.stop_requested:
            self.rt.maintain()
            if self.rt.clock.monotonic_ns() >= self.next_membership_ns:
                self.refresh_membership()
            ready = dict(self.poller.poll(POLL_MS))
            if self.control.ready(ready):
                self.control.drain()
            else:
                self.control.check()
            if self.md.sock in ready:
                for env in self.md.recv_batch():
                    t0 = TICK_TIMER.start()
                    self.on_market_data(env)
                    if t0:  # sampled: 63 calls in 64 skip the call (bench/micro.py)
                        TICK_TIMER.stop(t0)
            self.rt.save_stats(self.stats, drained=self.ended)
        return 0

    def refresh_membership(self) -> None:
        """Heartbeat, then take exactly the symbols rendezvous hashing gives this replica."""
        self.next_membership_ns = self.rt.clock.monotonic_ns() + self.membership_interval_ns
        self.membership.heartbeat()
        members = self.membership.live_members()
        if self.rt.instance not in members:  # our key expired between set and scan: re-added
            members = sorted([*members, self.rt.instance])
        REPLICAS.set(len(members))
        if members != self.view:
            self.view = members
            self.apply_assignment(assign(self.symbols, members, self.rt.instance))
        self.publish_assignment()

    def apply_assignment(self, owned: list[str]) -> None:
        """Subscribe to symbols gained, unsubscribe (and forget) symbols lost."""
        gained = [s for s in owned if s not in self.strategies]
        lost = [s for s in self.strategies if s not in owned]
        for sym in gained:
            for topic in self.symbol_topics(sym):
                self.md.subscribe(topic)
            self.strategies[sym] = self.new_strategy(sym)
        for sym in lost:
            for topic in self.symbol_topics(sym):
                self.md.unsubscribe(topic)
            del self.strategies[sym]
        ASSIGNED.set(len(owned))
        if gained or lost:
            REBALANCES.inc()
            self.assignment_changed_ns = self.rt.clock.time_ns()
            log.info("replicas %s: own %s (gained %s, lost %s)", self.view, owned, gained, lost)

    def publish_assignment(self) -> None:
        """Record what this replica owns, for operators and the scaling tests."""
        doc = {
            "symbols": sorted(self.strategies),
            "members": self.view,
            "changed_ns": self.assignment_changed_ns,
        }
        self.rt.store.set(
            f"assign:signal:{self.rt.instance}",
            json.dumps(doc).encode(),
            ttl_ms=self.rt.cfg.cluster.membership_ttl_ms,
        )

    def new_strategy(self, symbol: str) -> OfiStrategy | PulseStrategy:
        """A fresh strategy instance for one symbol, of the configured kind."""
        if self.cfg.strategy == "pulse":
            return PulseStrategy(self.cfg.pulse, symbol)
        return OfiStrategy(self.cfg.ofi, symbol)

    def symbol_topics(self, symbol: str) -> list[bytes]:
        """The md topics one symbol arrives on."""
        venue = self.rt.cfg.instruments[symbol].venue
        return [
            topics.exact(topics.md_trade(venue, symbol)),
            topics.exact(topics.md_quote(venue, symbol)),
        ]

    def on_market_data(self, env: Envelope[Any]) -> None:
        """Dispatch one market-data message."""
        match env.msg:
            case Trade() as t if t.symbol in self.strategies:
                self.on_tick(t, self.strategies[t.symbol].on_trade(t), env.pub_mono_ns)
            case Quote() as q if q.symbol in self.strategies:
                self.on_tick(q, self.strategies[q.symbol].on_quote(q), env.pub_mono_ns)
            case FeedStatus() as status:
                self.on_feed_status(status)
            case _:
                self.foreign_symbol_drops += 1  # not one of ours: counted, never a KeyError

    def on_tick(self, tick: Trade | Quote, decision: Decision | None, origin_mono_ns: int) -> None:
        """Count a tick of ours; publish the strategy's decision, if any."""
        self.ticks_received[tick.symbol] += 1
        self.last_tick_mono_ns = time.monotonic_ns()
        if self.first_tick_mono_ns == 0:
            self.first_tick_mono_ns = self.last_tick_mono_ns
        if decision is not None:
            self.emit(tick, decision, origin_mono_ns)

    def emit(self, tick: Trade | Quote, d: Decision, origin_mono_ns: int) -> None:
        """Publish a signal; its id is derived from the triggering tick, so it is stable."""
        sig = Signal(
            ts_event=tick.ts_event,
            ts_init=self.rt.clock.time_ns(),
            signal_id=f"{self.cfg.strategy}-{tick.symbol}-{d.key}",
            strategy=self.cfg.strategy,
            venue=tick.venue,
            symbol=tick.symbol,
            side=d.side,
            qty=d.qty,
            order_type=self.order_type,
            limit_px=d.limit_px,
            ref_px=d.ref_px,
            score=d.score,
            origin_mono_ns=origin_mono_ns,
        )
        self.pub.publish(topics.signal(self.cfg.strategy, tick.symbol), sig)
        self.signals[tick.symbol] += 1

    def on_feed_status(self, status: FeedStatus) -> None:
        """Tell market-data we hear it and which replicas we see. `end`: tell risk."""
        if status.ts_init >= self.assignment_changed_ns + SUBSCRIPTION_SETTLE_NS:
            self.rt.mark_feed_ready(self.control, json.dumps(self.view).encode())
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
            "first_tick_mono_ns": self.first_tick_mono_ns,
            "last_tick_mono_ns": self.last_tick_mono_ns,
        }

    def close(self) -> None:
        """Write final counters and leave the group so survivors take our symbols at once."""
        self.rt.save_stats(self.stats, drained=self.ended, force=True)
        self.membership.leave()
