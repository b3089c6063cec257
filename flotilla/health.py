"""Container health checks: `python -m flotilla.health [--ready] [SERVICE]`.

Liveness (the default, Docker's HEALTHCHECK and Kubernetes' livenessProbe): the service's
metrics endpoint answers and its main loop turned within the last `--max-age` seconds. A
standby single writer is alive. Readiness (`--ready`, Kubernetes' readinessProbe): alive, and
either holding its single-writer lease or, for the other services, having heard the trading
state. Exit 0 when healthy, 1 with one line on stderr when not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from libs.common.config import (
    SERVICES,
    SINGLE_WRITERS,
    ConfigError,
    load_config,
    service_config,
)

from .metrics_tail import Unreachable
from .metrics_tail import scrape as scrape_url

SECTIONS = {service: service.replace("-", "_") for service in SERVICES}


class Unhealthy(Exception):
    """The check failed; the message says why."""


def scrape(port: int, timeout_s: float) -> dict[str, float]:
    """Sample name -> value of every unlabelled sample on the local metrics endpoint."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        samples = scrape_url(url, timeout_s)
    except Unreachable as exc:
        raise Unhealthy(f"metrics endpoint {url} unreachable: {exc}") from exc
    return {name: sample.value for (name, labels), sample in samples.items() if not labels}


def check(service: str, samples: dict[str, float], ready: bool, max_age_s: float) -> None:
    """Raise Unhealthy unless the scraped samples show a live (and, if asked, ready) service."""
    beat = samples.get("flotilla_loop_heartbeat_timestamp_seconds", 0.0)
    if beat <= 0:  # the gauge's initial 0 would otherwise read as "not turned for 55 years"
        raise Unhealthy(f"{service}: main loop has not reported a heartbeat yet")
    age = time.time() - beat
    if age > max_age_s:
        raise Unhealthy(f"{service}: main loop has not turned for {age:.1f} s")
    if not ready:
        return
    if service in SINGLE_WRITERS and samples.get("flotilla_lease_held", 0.0) != 1.0:
        raise Unhealthy(f"{service}: standing by (another instance holds the lease)")
    if service != "kill-switch" and samples.get("flotilla_trading_state_seq", 0.0) <= 0:
        raise Unhealthy(f"{service}: has not heard the trading state yet")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, scrape, check; exit code for Docker and Kubernetes probes."""
    p = argparse.ArgumentParser(prog="python -m flotilla.health", description=__doc__)
    p.add_argument("service", nargs="?", default=os.environ.get("FLOTILLA_SERVICE"))
    p.add_argument("--ready", action="store_true", help="readiness instead of liveness")
    p.add_argument("--max-age", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--timeout", type=float, default=2.0, help="HTTP timeout in seconds")
    args = p.parse_args(argv)
    if args.service not in SECTIONS:
        print(f"health: unknown service {args.service!r} (set FLOTILLA_SERVICE)", file=sys.stderr)
        return 2
    try:
        cfg = load_config()
        port = service_config(cfg, args.service).metrics_port
        check(args.service, scrape(port, args.timeout), args.ready, args.max_age)
    except (ConfigError, Unhealthy) as exc:
        print(f"health: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
