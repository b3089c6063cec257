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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq

from . import topics
from .bus import DECODE_ERRORS, Publisher, Subscriber, new_socket, send_nowait
from .clock import Clock, LiveClock
from .cluster import Lease
from .config import SINGLE_WRITERS, FleetConfig, bind_url, service_config
from .messages import ControlMessage, DeadmanTrip, StateAck, StateRequest, TradingState
from .metrics import BUS, LEASE_HELD, LOOP_HEARTBEAT, config_hash, serve_metrics
from .store import StateStore, open_store
from .trading_gate import TradingGate

log = logging.getLogger(__name__)
VERSION = "0.1.0"
STATS_INTERVAL_NS = 500_000_000
BEAT_INTERVAL_NS = 1_000_000_000
READY_REFRESH_NS = 1_000_000_000
LEASE_POLL_S = 0.5
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
        self._last_beat_ns = 0
        self._drained_written = False
        self._ready_written: tuple[bytes, int] = (b"", 0)
        self._owned: list[Any] = []
        self.lease: Lease | None = None
        self._metrics_served = False

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
        """Expose /metrics with build info carrying the config hash (once per process)."""
        if self._metrics_served:
            return
        self._metrics_served = True
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

    def mark_feed_ready(self, control: ControlLink, view: bytes = b"1") -> None:
        """Tell market-data we hear its stream, once we have also heard the trading state.

        The mark has a TTL (a crashed process's mark must not satisfy a later start) and is
        refreshed at most once a second unless `view` (a replica's membership view) changed.
        """
        if control.gate.state is None:
            return
        now = self.clock.monotonic_ns()
        last_view, last_ns = self._ready_written
        if view == last_view and now - last_ns < READY_REFRESH_NS:
            return
        ttl_ms = self.cfg.cluster.ready_ttl_ms
        self.store.set(f"ready:{self.service}:{self.instance}", view, ttl_ms=ttl_ms)
        self._ready_written = (view, now)

    def wait_for_lease(self) -> bool:
        """Single writers: stand by until this instance holds the lease; False if told to stop."""
        if self.service not in SINGLE_WRITERS:
            return True
        # A standby serves metrics too: it is alive (health check) and visibly not the writer.
        self.serve_metrics(service_config(self.cfg, self.service).metrics_port)
        self.lease = Lease(self.store, self.service, self.instance, self.cfg.cluster.lease_ttl_ms)
        announced = False
        while not self.stop_requested:
            if self.lease.try_acquire():
                LEASE_HELD.set(1)
                log.info("holding the %s lease: this instance is the active writer", self.service)
                return True
            if not announced:
                log.warning(
                    "another %s instance (%s) is the active writer; standing by",
                    self.service,
                    self.lease.holder_now(),
                )
                announced = True
            self.beat()
            time.sleep(LEASE_POLL_S)  # SIGTERM sets stop_requested; the loop re-checks it
        return False

    def maintain(self) -> None:
        """Called from every service loop: liveness beat and lease renewal (raises LeaseLost)."""
        now = self.clock.monotonic_ns()
        if now - self._last_beat_ns < BEAT_INTERVAL_NS:
            return
        self.beat(now)
        if self.lease is not None:
            try:
                self.lease.renew()
            except Exception:
                LEASE_HELD.set(0)
                raise

    def beat(self, now_ns: int | None = None) -> None:
        """Show the health check that this process's main loop is still turning."""
        self._last_beat_ns = self.clock.monotonic_ns() if now_ns is None else now_ns
        LOOP_HEARTBEAT.set_to_current_time()

    def save_stats(
        self, stats: Callable[[], dict[str, Any]], drained: bool = False, force: bool = False
    ) -> None:
        """Write this instance's counters to the store (at most every 500 ms unless forced).

        `stats` is called only when a write is due: building it can cost more than a message.
        """
        now = self.clock.monotonic_ns()
        recent = now - self._last_stats_ns < STATS_INTERVAL_NS
        if not force and recent and (not drained or self._drained_written):
            return
        self._last_stats_ns = now
        doc = {
            "service": self.service,
            "instance": self.instance,
            "updated_ns": self.clock.time_ns(),
        }
        doc.update(stats())
        self.store.set(f"stats:{self.service}:{self.instance}", json.dumps(doc).encode())
        if drained:
            self.store.set(f"drained:{self.service}:{self.instance}", b"1")
            self._drained_written = True

    def close(self) -> None:
        """Close every owned socket (newest first), release the lease, close the store."""
        while self._owned:
            self._owned.pop().close()
        if self.lease is not None:
            self.lease.release()
            LEASE_HELD.set(0)
        self.ctx.destroy(linger=0)  # closed sockets keep their own LINGER; this only hits strays
        self.store.close()


class ControlLink:
    """Subscribes to ctl.state, keeps the TradingGate, acknowledges each new seq, and trips the
    dead man's switch when the state goes silent."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.gate = TradingGate(rt.clock, rt.cfg.missed_heartbeats_to_halt)
        self.sub = rt.subscriber(rt.cfg.bus.ctl_pub, ControlMessage)
        self.sub.subscribe(topics.exact(topics.CTL_STATE))
        self._ack = rt.own(new_socket(rt.ctx, zmq.DEALER, linger_ms=0, hwm=1000))
        self._ack.connect(rt.cfg.bus.ctl_ack)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ControlMessage)
        self._requested_mono_ns = 0
        self.request_snapshot()

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The SUB socket to register with the service's poller."""
        return self.sub.sock

    @property
    def sockets(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """Both sockets the state can arrive on: the ctl.state SUB and the snapshot DEALER."""
        return (self.sub.sock, self._ack)

    def ready(self, polled: dict[Any, Any]) -> bool:
        """True when a poll result shows a state message waiting on either socket."""
        return self.sub.sock in polled or self._ack in polled

    def request_snapshot(self) -> None:
        """Ask the kill switch for the state now: a starting service must not wait a heartbeat."""
        self._requested_mono_ns = self._rt.clock.monotonic_ns()
        now = self._rt.clock.time_ns()
        req = StateRequest(
            ts_event=now, ts_init=now, service=self._rt.service, instance=self._rt.instance
        )
        # A full queue means the kill switch is unreachable: the dead man's switch will say so.
        send_nowait(self._ack, [self._encoder.encode(req)], "ctl")

    def _probe_if_quiet(self) -> None:
        """Quiet for a heartbeat: ask directly. A SUB that is still joining (or a lost PUB
        message) must not trip the dead man's switch while the kill switch itself answers."""
        state = self.gate.state
        if state is None or self.gate.silent_ms() < state.heartbeat_interval_ms:
            return
        if (
            self._rt.clock.monotonic_ns() - self._requested_mono_ns
            < state.heartbeat_interval_ms * 1_000_000
        ):
            return
        self.request_snapshot()

    def drain(self) -> None:
        """Apply every waiting state message (published or sent as a snapshot), then check."""
        for env in self.sub.recv_batch():
            if isinstance(env.msg, TradingState):
                self.apply(env.msg)
        self._drain_snapshots()
        self.check()

    def _drain_snapshots(self) -> None:
        """Snapshot replies on the DEALER; junk is counted, never fatal."""
        while True:
            try:
                frame = self._ack.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = self._decoder.decode(frame)
            except DECODE_ERRORS:
                BUS.decode_errors.labels("ctl").inc()
                continue
            if isinstance(msg, TradingState):
                self.apply(msg)

    def check(self) -> None:
        """Dead man's switch: on the first silent check, halt locally and tell the kill switch."""
        self._probe_if_quiet()
        if not self.gate.check_deadman():
            return
        state = self.gate.state
        assert state is not None
        silent_ms = self.gate.silent_ms()
        if self._rt.stop_requested:
            # Shutting down with the fleet: the kill switch stopping first is expected, not an
            # alarm. The gate has latched HALTED all the same.
            log.info("no ctl.state for %d ms while stopping: trading HALTED", silent_ms)
            return
        log.error("no ctl.state for %d ms: dead man's switch tripped, trading HALTED", silent_ms)
        now = self._rt.clock.time_ns()
        trip = DeadmanTrip(
            ts_event=now,
            ts_init=now,
            service=self._rt.service,
            instance=self._rt.instance,
            last_seq=state.seq,
            silent_ms=silent_ms,
        )
        self._send(trip, "dead man's trip")

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
            self._send(ack, f"ack of state seq {state.seq}")

    def _send(self, msg: Any, what: str) -> None:
        """One message to the kill switch's ROUTER, never blocking the service."""
        if not send_nowait(self._ack, [self._encoder.encode(msg)], "ctl"):
            log.warning("could not send %s: queue to the kill switch full", what)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (what container log collectors parse)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON, with the traceback (if any) in `exc`."""
        doc = {
            "ts": self.formatTime(record),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(service: str) -> None:
    """One line per event on stderr; JSON when FLOTILLA_LOG_JSON=1 (containers)."""
    level = os.environ.get("FLOTILLA_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("FLOTILLA_LOG_JSON") == "1":
        handler.setFormatter(JsonLogFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
