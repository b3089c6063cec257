"""Prometheus metrics shared by every service, and the HTTP endpoint that serves them.

Names follow prometheus.io naming: `flotilla_` prefix, snake_case, base units, `_total` on
counters, and labels with bounded values only (a topic family, a reason code; never an id).

Per-message figures (bus traffic, processing time) stay off prometheus_client's locked
counters: a labelled child's inc() measured 0.5-0.9 us here, and counting messages and bytes
on both ends takes four per message, against about 4.5 us for the whole publish, receive and
decode. The hot path adds to plain ints that a collector reads at scrape time,
and processing time is sampled (`make bench BENCH_ARGS="--only micro"` measures both).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import topics

log = logging.getLogger(__name__)

SNAPSHOT_KINDS = ("trading_state", "fills")  # kill switch StateRequest, execution FillsSince


class Tally:
    """One stream's counts as plain ints: the hot path adds, BusTraffic reads at scrape time.

    Only the owning (main) thread writes; a scrape thread reading an int sees a whole value.
    """

    __slots__ = ("conflated", "last_mono_ns", "messages", "nbytes")

    def __init__(self, now_ns: int = 0) -> None:
        self.messages = 0
        self.nbytes = 0
        self.conflated = 0
        self.last_mono_ns = now_ns


class BusTraffic(Collector):
    """Messages and bytes per topic family, and seconds since the last message per stream."""

    def __init__(self) -> None:
        self._sent: dict[str, Tally] = {}
        self._received: dict[tuple[str, str], Tally] = {}
        self._lock = threading.Lock()  # guards adding a stream against a scrape copying them

    def sent(self, family: str) -> Tally:
        """The tally every publisher of this process adds to for one family (create once)."""
        with self._lock:
            return self._sent.setdefault(family, Tally())

    def received(self, role: str, family: str) -> Tally:
        """The tally for one (socket role, family) stream; a new one's age counts from now."""
        with self._lock:
            tally = self._received.get((role, family))
            if tally is None:
                tally = self._received[(role, family)] = Tally(time.monotonic_ns())
            return tally

    def collect(self) -> Iterator[Metric]:
        """Counters summed per family, and the age of each received stream."""
        with self._lock:
            sent, received = list(self._sent.items()), list(self._received.items())
        yield from self._sent_families(sent)
        yield from self._received_families(received)

    @staticmethod
    def _sent_families(sent: list[tuple[str, Tally]]) -> Iterator[Metric]:
        """flotilla_bus_messages_sent_total and flotilla_bus_sent_bytes_total."""
        messages = CounterMetricFamily(
            "flotilla_bus_messages_sent", "Messages published, by topic family", labels=["family"]
        )
        nbytes = CounterMetricFamily(
            "flotilla_bus_sent_bytes",
            "Bytes published (whole frames: topic, header, payload), by topic family",
            labels=["family"],
        )
        for family, tally in sorted(sent, key=lambda item: item[0]):
            messages.add_metric([family], tally.messages)
            nbytes.add_metric([family], tally.nbytes)
        yield from (messages, nbytes)

    @staticmethod
    def _received_families(received: list[tuple[tuple[str, str], Tally]]) -> Iterator[Metric]:
        """Received messages, bytes and conflation per family; age per (role, family)."""
        per_family: dict[str, list[int]] = {}
        age = GaugeMetricFamily(
            "flotilla_bus_last_message_age_seconds",
            "Seconds since this process last received a message on a stream (or since it "
            "subscribed, if none came yet), by socket role (sub: a SUB socket, req: replies "
            "to its requests) and topic family",
            labels=["role", "family"],
        )
        now = time.monotonic_ns()
        for (role, family), tally in sorted(received, key=lambda item: item[0]):
            totals = per_family.setdefault(family, [0, 0, 0])
            totals[0] += tally.messages
            totals[1] += tally.nbytes
            totals[2] += tally.conflated
            age.add_metric([role, family], max(0, now - tally.last_mono_ns) / 1e9)
        families = (
            (
                "flotilla_bus_messages_received",
                "Messages received (decoded, or skipped as conflated), by topic family",
            ),
            ("flotilla_bus_received_bytes", "Bytes of the messages received, by topic family"),
            (
                "flotilla_bus_messages_conflated",
                "Messages not decoded because a newer one on the same topic was already waiting",
            ),
        )
        for i, (name, doc) in enumerate(families):
            counter = CounterMetricFamily(name, doc, labels=["family"])
            for family, totals in sorted(per_family.items()):
                counter.add_metric([family], totals[i])
            yield counter
        yield age


class _BusMetrics:
    """Bus events rare enough for prometheus_client counters (gaps, drops, bad frames)."""

    def __init__(self) -> None:
        self.decode_errors = Counter(
            "flotilla_bus_decode_errors",
            "Frames dropped because they could not be decoded, by topic family",
            ["family"],
        )
        self.sequence_gaps = Counter(
            "flotilla_bus_sequence_gap_messages",
            "Messages missing according to per-topic sequence numbers, by topic family",
            ["family"],
        )
        self.hwm_drops = Counter(
            "flotilla_bus_hwm_dropped_messages",
            "Messages dropped because a non-blocking send found the queue at its high-water "
            "mark, by topic family (PUB sockets drop silently: receivers count those as gaps)",
            ["family"],
        )
        for family in sorted(topics.FAMILIES):
            self.hwm_drops.labels(family)
        self.snapshot_requests = Counter(
            "flotilla_bus_snapshot_requests",
            "Snapshot requests served: trading_state (kill switch), fills (execution)",
            ["kind"],
        )
        # Children resolved once: services increment these directly.
        self.snapshots = {kind: self.snapshot_requests.labels(kind) for kind in SNAPSHOT_KINDS}


BUS = _BusMetrics()
TRAFFIC = BusTraffic()
REGISTRY.register(TRAFFIC)

PROCESSING = Histogram(
    "flotilla_processing_seconds",
    "Time to process one message in a service stage, sampled (1 in N calls; N per stage in "
    "the README), so _count counts samples, not messages",
    ["stage"],
    buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1),
)
SAMPLE_EVERY = 64  # per-tick stages: about 1,000 samples a minute at 1,000 ticks/s
# Orders and commands come thousands of times less often than ticks, and one observe (~1 us)
# is under 1% of an order's path (a REQ/REP round trip and a journal write): time every one.
EVERY_CALL = 1


class SampledTimer:
    """Times 1 in `every` calls of one stage into flotilla_processing_seconds{stage}.

    An unsampled call costs an increment and a modulo. On a per-tick path skip the second
    method call too: `t0 = timer.start(); work(); if t0: timer.stop(t0)`.
    """

    __slots__ = ("_calls", "_child", "every")

    def __init__(self, stage: str, every: int = SAMPLE_EVERY) -> None:
        self._child = PROCESSING.labels(stage)
        self._calls = 0
        self.every = every

    def start(self) -> int:
        """perf_counter_ns() when this call is sampled, else 0."""
        self._calls += 1
        if self._calls % self.every:
            return 0
        return time.perf_counter_ns()

    def stop(self, t0: int) -> None:
        """Observe the time since start() if that call was sampled."""
        if t0:
            self._child.observe((time.perf_counter_ns() - t0) / 1e9)


TRADING_STATE = Gauge(
    "flotilla_trading_state_seq",
    "Sequence number of the last trading state this service applied",
)
TRADING_ALLOWED = Gauge(
    "flotilla_trading_allowed",
    "1 when this service currently believes trading is allowed (ACTIVE and fresh), else 0",
)
TRADING_MODES = ("ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY", "UNKNOWN")
TRADING_MODE = Gauge(
    "flotilla_trading_state",
    "1 for the trading state this service is obeying now (a stale or unheard state is HALTED "
    "or UNKNOWN), 0 for the others",
    ["state"],
)
LOOP_HEARTBEAT = Gauge(
    "flotilla_loop_heartbeat_timestamp_seconds",
    "Unix time at which this service's main loop last turned (the health check reads it)",
)
LEASE_HELD = Gauge(
    "flotilla_lease_held",
    "1 while this instance holds its single-writer lease (execution, risk, kill-switch), else 0",
)
# Exposed as flotilla_build_info{service,version,config_hash} (the alerts compare replicas).
BUILD_INFO = Info("flotilla_build", "Version and config hash of this process")


def config_hash(raw: bytes) -> str:
    """A short, stable fingerprint of a config so replicas with different config are visible."""
    return hashlib.sha256(raw).hexdigest()[:12]


def serve_metrics(port: int, host: str, service: str, version: str, cfg_hash: str) -> Any:
    """Start the /metrics HTTP endpoint on host:port (port 0 disables it)."""
    BUILD_INFO.info({"service": service, "version": version, "config_hash": cfg_hash})
    if port <= 0:
        return None
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics for %s on :%d/metrics", service, port)
    return server
