"""What every service process shares: identity, clock, store, ZMQ context, stop flag, stats.

Nothing here runs on the per-tick path except `ControlLink.drain`, which runs only for
ctl.state messages.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq

from . import topics
from .bus import Publisher, Subscriber, new_socket
from .clock import Clock, LiveClock
from .config import FleetConfig, bind_url
from .messages import ControlMessage, StateAck, TradingState
from .metrics import config_hash, serve_metrics
from .store import StateStore, open_store
from .trading_gate import TradingGate

log = logging.getLogger(__name__)
VERSION = "0.1.0"
STATS_INTERVAL_NS = 500_000_000
C = TypeVar("C")


def default_instance(service: str) -> str:
    """A unique, readable instance name: FLOTILLA_INSTANCE, else host-pid."""
    return os.environ.get("FLOTILLA_INSTANCE") or f"{service}-{socket.gethostname()}-{os.getpid()}"


def run_dir_from_env() -> Path:
    """The run directory (journal, stats, embedded store); FLOTILLA_RUN_DIR or ./runs/default."""
    path = Path(os.environ.get("FLOTILLA_RUN_DIR", "runs/default"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Runtime:
    """Per-process services: a service builds one in start() and closes it last."""

    def __init__(
        self,
        service: str,
        cfg: FleetConfig,
        run_dir: Path,
        clock: Clock | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.service = service
        self.cfg = cfg
        self.run_dir = run_dir
        self.instance = default_instance(service)
        self.clock: Clock = clock or LiveClock()
        self.store = store or open_store(run_dir / "state.sqlite")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.stop_requested = False
        self.force_stop = False
        self._last_stats_ns = 0
        self._owned: list[Any] = []

    def own(self, closable: C) -> C:
        """Register something with close(); Runtime.close closes it, newest first."""
        self._owned.append(closable)
        return closable

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask for a drained stop; a second one skips the drain."""

        def _handler(signum: int, _frame: Any) -> None:
            if self.stop_requested:
                self.force_stop = True
            self.stop_requested = True

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def serve_metrics(self, port: int) -> None:
        """Expose /metrics with build info carrying the config hash."""
        digest = config_hash(msgspec.json.encode(self.cfg))
        serve_metrics(port, self.cfg.metrics_host, self.service, VERSION, digest)

    def bind(self, sock: zmq.Socket[Any], url: str) -> None:
        """Bind to a configured endpoint (on bind_host when set, e.g. 0.0.0.0 in containers)."""
        sock.bind(bind_url(url, self.cfg.bus.bind_host))

    def publisher(self, url: str, bind: bool) -> Publisher:
        """A PUB socket that binds or connects to `url`."""
        sock = self.own(
            new_socket(
                self.ctx, zmq.PUB, linger_ms=self.cfg.bus.pub_linger_ms, hwm=self.cfg.bus.data_hwm
            )
        )
        if bind:
            self.bind(sock, url)
        else:
            sock.connect(url)
        return Publisher(sock, self.clock)

    def subscriber(self, url: str, message_type: Any, bind: bool = False) -> Subscriber[Any]:
        """A SUB socket that connects (or binds) to `url`."""
        sock = self.own(new_socket(self.ctx, zmq.SUB, hwm=self.cfg.bus.data_hwm))
        if bind:
            self.bind(sock, url)
        else:
            sock.connect(url)
        return Subscriber(sock, message_type)

    def mark_feed_ready(self, control: ControlLink) -> None:
        """Tell market-data we hear its stream, once we have also heard the trading state."""
        if control.gate.state is not None:
            self.store.set(f"ready:{self.service}:{self.instance}", b"1")

    def save_stats(self, stats: dict[str, Any], drained: bool = False, force: bool = False) -> None:
        """Write this instance's counters to the store (at most every 500 ms unless forced)."""
        now = self.clock.monotonic_ns()
        if not force and not drained and now - self._last_stats_ns < STATS_INTERVAL_NS:
            return
        self._last_stats_ns = now
        doc = {
            "service": self.service,
            "instance": self.instance,
            "updated_ns": self.clock.time_ns(),
        }
        doc.update(stats)
        self.store.set(f"stats:{self.service}:{self.instance}", json.dumps(doc).encode())
        if drained:
            self.store.set(f"drained:{self.service}:{self.instance}", b"1")

    def close(self) -> None:
        """Close every owned socket (newest first), terminate the context, close the store."""
        while self._owned:
            self._owned.pop().close()
        self.ctx.destroy(linger=0)  # closed sockets keep their own LINGER; this only hits strays
        self.store.close()


class ControlLink:
    """Subscribes to ctl.state, keeps the TradingGate, and acknowledges each new seq."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.gate = TradingGate(rt.clock, rt.cfg.missed_heartbeats_to_halt)
        self.sub = rt.subscriber(rt.cfg.bus.ctl_pub, ControlMessage)
        self.sub.subscribe(topics.exact(topics.CTL_STATE))
        self._ack = rt.own(new_socket(rt.ctx, zmq.DEALER, linger_ms=0, hwm=1000))
        self._ack.connect(rt.cfg.bus.ctl_ack)
        self._encoder = msgspec.msgpack.Encoder()

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The SUB socket to register with the service's poller."""
        return self.sub.sock

    def drain(self) -> None:
        """Apply every waiting state message."""
        for env in self.sub.recv_batch():
            if isinstance(env.msg, TradingState):
                self.apply(env.msg)

    def apply(self, state: TradingState) -> None:
        """Update the gate; acknowledge a new seq to the kill switch."""
        if self.gate.on_state(state):
            log.info("trading state %s seq=%d (%s)", state.state, state.seq, state.reason)
            ack = StateAck(
                ts_event=state.ts_event,
                ts_init=self._rt.clock.time_ns(),
                service=self._rt.service,
                instance=self._rt.instance,
                seq=state.seq,
                state=state.state,
            )
            try:
                self._ack.send(self._encoder.encode(ack), zmq.NOBLOCK)
            except zmq.Again:
                log.warning("could not acknowledge state seq %d: ack queue full", state.seq)


def setup_logging(service: str) -> None:
    """One line per event on stderr; JSON when FLOTILLA_LOG_JSON=1 (containers)."""
    level = os.environ.get("FLOTILLA_LOG_LEVEL", "INFO").upper()
    if os.environ.get("FLOTILLA_LOG_JSON") == "1":
        fmt = (
            '{"ts":"%(asctime)s","service":"'
            + service
            + '","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}'
        )
    else:
        fmt = f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
