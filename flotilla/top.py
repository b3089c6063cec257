"""`flotilla top`: one live table of every service of a fleet, from their /metrics endpoints.

Endpoints: by default each service's `metrics_port` from the config (plus `--port-offset`) on
127.0.0.1; or `--endpoint SERVICE=URL`, repeatable, several per service (scaled replicas).

Every frame compares two scrapes `--interval` seconds apart (a baseline is taken first): message
rates in/out are the counter deltas between them, so every frame, `--once` included, shows
rates; `--once --interval 0` scrapes once and shows "-" for rates. Gaps, orders, fills, rejections are totals since the
process started; p99 is tick-to-order latency from execution's histogram since start; PnL is
risk's realized + unrealized summed over symbols. "-" means "not this service's metric" or
"not known yet". A service that does not answer is a row saying DOWN with a one-line reason.

Output: a live-updating table on a terminal (columns that do not fit its width are left out,
least useful first); plain text without colour or escape codes when stdout is not a terminal
(one full-width table per frame, so it pipes into grep and files).

Exit codes: 0 when the last frame had at least one service up, 1 when every endpoint was down
(the frame is still printed), 2 for a bad --endpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from libs.common.config import SERVICES, SINGLE_WRITERS, FleetConfig

from .endpoints import (
    KS_HALTED,
    MODE,
    BadEndpoint,
    Endpoint,
    Scrape,
    default_endpoints,
    obeyed_mode,
    parse_endpoint,
    scrape_one,
)
from .metrics_tail import Sample, SampleKey

PIPE_WIDTH = 200  # not a terminal: wide enough that no column is ever truncated

# Every metric `top` reads; tests check each one is exported by the code.
RECEIVED = "flotilla_bus_messages_received_total"
SENT = "flotilla_bus_messages_sent_total"
GAPS = "flotilla_bus_sequence_gap_messages_total"
ALLOWED = "flotilla_trading_allowed"
STATE_SEQ = "flotilla_trading_state_seq"
KS_STATE_SEQ = "flotilla_killswitch_state_seq"
LEASE_HELD = "flotilla_lease_held"
LATENCY_BUCKETS = "flotilla_execution_tick_to_order_seconds_bucket"
EXEC_ORDERS = "flotilla_execution_orders_total"
RISK_ORDERS = "flotilla_risk_orders_sent_total"
FILLS = "flotilla_execution_fills_total"
RISK_REJECTIONS = "flotilla_risk_rejections_total"
REALIZED = "flotilla_risk_realized_pnl"
UNREALIZED = "flotilla_risk_unrealized_pnl"
METRICS = (
    RECEIVED,
    SENT,
    GAPS,
    MODE,
    ALLOWED,
    STATE_SEQ,
    KS_STATE_SEQ,
    KS_HALTED,
    LEASE_HELD,
    LATENCY_BUCKETS,
    EXEC_ORDERS,
    RISK_ORDERS,
    FILLS,
    RISK_REJECTIONS,
    REALIZED,
    UNREALIZED,
)

COLUMNS = (
    "service",
    "instance",
    "up",
    "state",
    "allowed",
    "seq",
    "in/s",
    "out/s",
    "gaps",
    "p99 ms",
    "orders",
    "fills",
    "rejects",
    "pnl",
    "note",
)


def scrape_all(pool: ThreadPoolExecutor, endpoints: list[Endpoint]) -> list[Scrape]:
    """Every endpoint concurrently, so one hanging host costs one timeout, not one each."""
    return list(pool.map(scrape_one, endpoints))


def total(samples: dict[SampleKey, Sample], name: str, **match: str) -> float | None:
    """Sum of the samples called `name` whose labels include `match`; None when there are none."""
    values = [
        s.value
        for (n, labels), s in samples.items()
        if n == name and all((k, v) in labels for k, v in match.items())
    ]
    return sum(values) if values else None


def counter_delta(before: float | None, after: float | None) -> float:
    """Increase of a counter; a drop means the process restarted, so count from zero."""
    before, after = before or 0.0, after or 0.0
    return after if after < before else after - before


def rate(before: Scrape | None, after: Scrape, name: str) -> float | None:
    """Per-second increase of a counter family between two scrapes; None without two."""
    if before is None or before.samples is None or after.samples is None:
        return None
    seconds = after.at - before.at
    if seconds <= 0:
        return None
    return counter_delta(total(before.samples, name), total(after.samples, name)) / seconds


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """q-quantile of cumulative (upper bound, count) buckets, as Prometheus' histogram_quantile."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):  # in the overflow bucket: the highest finite bound is all we know
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def latency_p99(samples: dict[SampleKey, Sample]) -> float | None:
    """p99 of execution's tick-to-order histogram, in seconds (None: no observations)."""
    buckets = [
        (float(dict(labels)["le"]), s.value)
        for (name, labels), s in samples.items()
        if name == LATENCY_BUCKETS
    ]
    return quantile(0.99, buckets)


def allowed(samples: dict[SampleKey, Sample]) -> str:
    """Whether trading is allowed: as this service believes, or as the kill switch's latch says
    (the kill switch has no gate of its own, so its flotilla_trading_allowed stays 0)."""
    halted = total(samples, KS_HALTED)
    value = total(samples, ALLOWED) if halted is None else 1 - halted
    return "-" if value is None else ("yes" if value == 1 else "no")


def state_seq(samples: dict[SampleKey, Sample]) -> float | None:
    """The state seq a service applied, or the kill switch's current one."""
    seq = total(samples, KS_STATE_SEQ)
    return seq if seq is not None else total(samples, STATE_SEQ)


def rejections(samples: dict[SampleKey, Sample]) -> float | None:
    """Risk's refusals by every reason, plus execution's rejected orders."""
    found = [
        total(samples, RISK_REJECTIONS),
        total(samples, EXEC_ORDERS, outcome="rejected"),
    ]
    return sum(v for v in found if v is not None) if any(v is not None for v in found) else None


def pnl(samples: dict[SampleKey, Sample]) -> float | None:
    """Realized + unrealized PnL over every symbol (risk only)."""
    realized, unrealized = total(samples, REALIZED), total(samples, UNREALIZED)
    if realized is None and unrealized is None:
        return None
    return (realized or 0.0) + (unrealized or 0.0)


# Which service owns each per-service column: elsewhere it is "-", and here a counter with no
# samples yet (labelled counters appear on first use) reads 0.
OWNERS = {
    "orders": ("risk", "execution"),
    "fills": ("execution",),
    "rejects": ("risk", "execution"),
    "pnl": ("risk",),
}


def owned(column: str, service: str, value: float | None) -> float | None:
    """The value, 0 for an owner that has not counted anything yet, None for others."""
    if service not in OWNERS[column]:
        return None
    return value if value is not None else 0.0


def orders(service: str, samples: dict[SampleKey, Sample]) -> float | None:
    """Orders sent (risk) or received (execution)."""
    return total(samples, RISK_ORDERS if service == "risk" else EXEC_ORDERS)


def note(service: str, samples: dict[SampleKey, Sample]) -> str:
    """'standby' for a single writer without its lease: it trades nothing, by design."""
    if service in SINGLE_WRITERS and total(samples, LEASE_HELD) == 0:
        return "standby"
    return ""


def row(before: Scrape | None, after: Scrape) -> list[str]:
    """One table row (cells as text) for one endpoint."""
    ep, samples = after.endpoint, after.samples
    if samples is None:
        return [ep.service, ep.instance, "DOWN", *["-"] * (len(COLUMNS) - 4), after.error]
    service = ep.service
    return [
        service,
        ep.instance,
        "up",
        obeyed_mode(samples) or "-",
        allowed(samples),
        fmt_int(state_seq(samples)),
        fmt_rate(rate(before, after, RECEIVED)),
        fmt_rate(rate(before, after, SENT)),
        fmt_int(total(samples, GAPS) or 0.0),
        fmt_ms(latency_p99(samples) if service == "execution" else None),
        fmt_int(owned("orders", service, orders(service, samples))),
        fmt_int(owned("fills", service, total(samples, FILLS))),
        fmt_int(owned("rejects", service, rejections(samples))),
        fmt_money(owned("pnl", service, pnl(samples))),
        note(service, samples),
    ]


def fmt_int(value: float | None) -> str:
    """A count or seq, or '-'."""
    return "-" if value is None else str(int(value))


def fmt_rate(value: float | None) -> str:
    """Messages per second with one decimal, or '-'."""
    return "-" if value is None else f"{value:.1f}"


def fmt_ms(seconds: float | None) -> str:
    """Seconds shown as milliseconds with three decimals, or '-'."""
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def fmt_money(value: float | None) -> str:
    """Quote currency with two decimals, or '-' (floats: for watching, never accounting)."""
    return "-" if value is None else f"{value:.2f}"


def order_key(s: Scrape) -> tuple[int, str]:
    """Fleet order (market-data first, kill-switch last), then instance."""
    service = s.endpoint.service
    return (SERVICES.index(service) if service in SERVICES else len(SERVICES), s.endpoint.url)


# Left out, in this order, while the table is wider than the terminal (a pipe is never narrow).
DROP_ORDER = ("allowed", "seq", "gaps", "instance", "note", "p99 ms")
TEXT_COLUMNS = ("service", "instance", "up", "state", "allowed", "note")


def fitting_columns(cells: list[list[str]], width: int) -> list[str]:
    """The columns to show: all, or without the least useful ones until they fit `width`."""
    # Each column: its widest cell, one space of padding either side, one between columns.
    need = {c: max(len(c), *(len(r[i]) for r in cells)) + 3 for i, c in enumerate(COLUMNS)}
    shown = list(COLUMNS)
    for column in DROP_ORDER:
        if sum(need[c] for c in shown) <= width:
            break
        shown.remove(column)
    return shown


def table(
    before: list[Scrape] | None, after: list[Scrape], seconds: float, width: int = PIPE_WIDTH
) -> Table:
    """The frame: one row per endpoint, down rows in red, as many columns as fit `width`."""
    previous = {s.endpoint: s for s in before or []}
    ordered = sorted(after, key=order_key)
    cells = [row(previous.get(s.endpoint), s) for s in ordered]
    up = sum(1 for s in after if s.samples is not None)
    rates = f"rates over {seconds:.1f} s" if before is not None else "no rates (one scrape)"
    t = Table(
        title=f"flotilla top  {time.strftime('%H:%M:%S')}  {up}/{len(after)} up",
        caption=f"{rates}; gaps, orders, fills, rejects: since start; "
        "p99: tick-to-order since start",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    shown = fitting_columns(cells, width)
    for name in shown:
        t.add_column(name, justify="left" if name in TEXT_COLUMNS else "right", no_wrap=True)
    for s, line in zip(ordered, cells, strict=True):
        picked = [cell for name, cell in zip(COLUMNS, line, strict=True) if name in shown]
        t.add_row(*picked, style=None if s.samples else "bold red")
    return t


def frames(
    endpoints: list[Endpoint], interval_s: float, count: int
) -> Iterator[tuple[list[Scrape] | None, list[Scrape]]]:
    """A baseline scrape, then (previous, current) once per interval (`count` in all; 0: forever)."""
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        previous = scrape_all(pool, endpoints) if interval_s > 0 else None
        shown = 0
        while count == 0 or shown < count:
            if previous is not None:
                time.sleep(interval_s)
            current = scrape_all(pool, endpoints)
            yield previous, current
            previous, shown = current, shown + 1


def console_for(out: TextIO) -> Console:
    """A terminal gets colour and live redraws; anything else plain text, wide, no escapes."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return Console(file=out, force_terminal=True)
    # Explicit, so FORCE_COLOR or TTY_COMPATIBLE in the environment cannot put codes in a pipe.
    return Console(file=out, force_terminal=False, no_color=True, width=PIPE_WIDTH)


def show(console: Console, endpoints: list[Endpoint], interval_s: float, count: int) -> bool:
    """Print the frames; True when the last one had at least one endpoint up."""
    any_up = False
    live = console.is_terminal and count != 1
    with Live(console=console, auto_refresh=False) if live else nullcontext() as screen:
        for before, after in frames(endpoints, interval_s, count):
            t = table(before, after, interval_s, console.width)  # the terminal may be resized
            if screen is None:
                console.print(t)
            else:
                screen.update(t, refresh=True)
            any_up = any(s.samples is not None for s in after)
    return any_up


def run_top(cfg: FleetConfig, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Resolve endpoints, show frames until --count/--once or Ctrl-C; see the exit codes above."""
    try:
        endpoints = [parse_endpoint(spec) for spec in args.endpoint] or default_endpoints(
            cfg, args.port_offset
        )
    except BadEndpoint as exc:
        print(f"flotilla top: {exc}", file=sys.stderr)
        return 2
    count = 1 if args.once else max(0, args.count)
    try:
        any_up = show(console_for(out or sys.stdout), endpoints, max(0.0, args.interval), count)
    except KeyboardInterrupt:
        return 0
    return 0 if any_up else 1
