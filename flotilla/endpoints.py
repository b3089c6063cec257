"""Metrics endpoints of a fleet and one scrape of each: shared by `flotilla top` and the
read-only dashboard (this module needs no rich, which the container images do not carry)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from libs.common.config import SERVICES, FleetConfig, service_config

from .metrics_tail import Sample, SampleKey, Unreachable, scrape

SCRAPE_TIMEOUT_S = 1.0
MODE = "flotilla_trading_state"  # {state} = 1 for the mode a service obeys
KS_HALTED = "flotilla_killswitch_halted"


class BadEndpoint(ValueError):
    """An --endpoint that is not SERVICE=URL."""


@dataclass(frozen=True)
class Endpoint:
    """One metrics endpoint of one service instance."""

    service: str
    url: str

    @property
    def instance(self) -> str:
        """host:port, which tells replicas apart."""
        return urlsplit(self.url).netloc or self.url


@dataclass(frozen=True)
class Scrape:
    """What one endpoint answered at one moment: samples, or the reason it did not."""

    endpoint: Endpoint
    samples: dict[SampleKey, Sample] | None
    error: str = ""
    at: float = field(default_factory=lambda: time.monotonic())  # looked up per call: tests fake it


def default_endpoints(cfg: FleetConfig, port_offset: int) -> list[Endpoint]:
    """Every service's configured metrics port on this host."""
    return [
        Endpoint(s, f"http://127.0.0.1:{service_config(cfg, s).metrics_port + port_offset}/metrics")
        for s in SERVICES
    ]


def parse_endpoint(spec: str) -> Endpoint:
    """SERVICE=URL; a URL without a scheme gets http://, one without a path gets /metrics."""
    service, sep, url = spec.partition("=")
    if not sep or not url:
        raise BadEndpoint(f"--endpoint {spec!r}: expected SERVICE=URL")
    if service not in SERVICES:
        raise BadEndpoint(f"--endpoint {spec!r}: unknown service (one of {', '.join(SERVICES)})")
    if "://" not in url:
        url = "http://" + url
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/metrics"
    return Endpoint(service, url)


def one_line(reason: str) -> str:
    """A short reason: no errno prefix, no newlines."""
    reason = re.sub(r"^\[Errno -?\d+\]\s*", "", reason).replace("\n", " ").strip()
    return (reason[:77] + "...") if len(reason) > 80 else (reason or "no answer")


def scrape_one(endpoint: Endpoint) -> Scrape:
    """Scrape one endpoint; failure becomes a one-line reason, never an exception."""
    try:
        samples = scrape(endpoint.url, SCRAPE_TIMEOUT_S)
    except Unreachable as exc:
        return Scrape(endpoint, None, one_line(str(exc)))
    return Scrape(endpoint, samples)


def obeyed_mode(samples: dict[SampleKey, Sample]) -> str | None:
    """The mode a service obeys (its flotilla_trading_state set to 1); the kill switch has no
    gate of its own, so for it the latch's flotilla_killswitch_halted says."""
    for (name, labels), sample in samples.items():
        if name == MODE and sample.value == 1:
            return dict(labels).get("state")
    halted = [s.value for (name, _), s in samples.items() if name == KS_HALTED]
    if halted:
        return "ACTIVE" if halted[0] == 0 else "not ACTIVE"
    return None
