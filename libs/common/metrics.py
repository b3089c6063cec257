"""Prometheus metrics shared by every service, and the HTTP endpoint that serves them.

Names follow prometheus.io naming: `flotilla_` prefix, snake_case, base units, `_total` on
counters, and labels with bounded values only (a topic family, a reason code; never an id).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from prometheus_client import Counter, Gauge, Info, start_http_server

log = logging.getLogger(__name__)


class _BusMetrics:
    """Counters every bus socket updates."""

    def __init__(self) -> None:
        self.messages_sent = Counter(
            "flotilla_bus_messages_sent", "Messages published, by topic family", ["family"]
        )
        self.messages_received = Counter(
            "flotilla_bus_messages_received",
            "Messages received and decoded, by topic family",
            ["family"],
        )
        self.decode_errors = Counter(
            "flotilla_bus_decode_errors",
            "Frames dropped because they could not be decoded, by topic family",
            ["family"],
        )
        self.messages_conflated = Counter(
            "flotilla_bus_messages_conflated",
            "Messages not decoded because a newer one on the same topic was already waiting",
            ["family"],
        )
        self.sequence_gaps = Counter(
            "flotilla_bus_sequence_gap_messages",
            "Messages missing according to per-topic sequence numbers, by topic family",
            ["family"],
        )


BUS = _BusMetrics()

TRADING_STATE = Gauge(
    "flotilla_trading_state_seq",
    "Sequence number of the last trading state this service applied",
)
TRADING_ALLOWED = Gauge(
    "flotilla_trading_allowed",
    "1 when this service currently believes trading is allowed (ACTIVE and fresh), else 0",
)
LOOP_HEARTBEAT = Gauge(
    "flotilla_loop_heartbeat_timestamp_seconds",
    "Unix time at which this service's main loop last turned (the health check reads it)",
)
LEASE_HELD = Gauge(
    "flotilla_lease_held",
    "1 while this instance holds its single-writer lease (execution, risk, kill-switch), else 0",
)
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
