"""`flotilla top`: real Prometheus endpoints in-process, the rendered text checked cell by cell."""

from __future__ import annotations

import argparse
import io
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flotilla import endpoints, top
from flotilla.cli import main

# The real execution buckets, so the p99 below is the one the service's histogram would give.
BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeService:
    """One service's metrics, under their real names, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter("flotilla_bus_messages_received", "", ["family"], registry=r)
        self.sent = Counter("flotilla_bus_messages_sent", "", ["family"], registry=r)
        self.gaps = Counter("flotilla_bus_sequence_gap_messages", "", ["family"], registry=r)
        self.mode = Gauge("flotilla_trading_state", "", ["state"], registry=r)
        self.allowed = Gauge("flotilla_trading_allowed", "", registry=r)
        self.seq = Gauge("flotilla_trading_state_seq", "", registry=r)
        self.lease = Gauge("flotilla_lease_held", "", registry=r)

    def obey(self, mode: str, seq: int) -> None:
        """Export the trading state as libs.common.trading_gate does."""
        for name in ("ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY", "UNKNOWN"):
            self.mode.labels(name).set(1 if name == mode else 0)
        self.allowed.set(1 if mode == "ACTIVE" else 0)
        self.seq.set(seq)


@dataclass
class Fleet:
    """The fake services, their endpoints, and what happens between two scrapes."""

    endpoints: list[str]
    between_scrapes: list[Callable[[], None]]


def serve(registry: CollectorRegistry, servers: list[tuple]) -> str:
    """A real metrics HTTP server for `registry` on an ephemeral port; its URL."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    servers.append((server, thread))
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def market_data() -> FakeService:
    """Publishes md."""
    md = FakeService()
    md.obey("ACTIVE", 7)
    md.sent.labels("md").inc(1000)
    return md


def risk() -> tuple[FakeService, Callable[[], None]]:
    """Receives md and signals, refuses some, holds a book; 60 in and 4 out between scrapes."""
    rk = FakeService()
    rk.obey("ACTIVE", 7)
    rk.lease.set(1)
    rk.received.labels("md").inc(500)
    rk.gaps.labels("md").inc(3)
    rejections = Counter("flotilla_risk_rejections", "", ["reason"], registry=rk.registry)
    rejections.labels("max_position").inc(2)
    rejections.labels("rate_limit").inc(3)
    rejections.labels("trading_halted").inc(0)
    Counter("flotilla_risk_orders_sent", "", registry=rk.registry).inc(40)
    realized = Gauge("flotilla_risk_realized_pnl", "", ["symbol"], registry=rk.registry)
    unrealized = Gauge("flotilla_risk_unrealized_pnl", "", ["symbol"], registry=rk.registry)
    realized.labels("BTCUSDT").set(12.5)
    realized.labels("ETHUSDT").set(-2.25)
    unrealized.labels("BTCUSDT").set(1.0)
    unrealized.labels("ETHUSDT").set(-0.5)

    def traffic() -> None:
        rk.received.labels("md").inc(50)
        rk.received.labels("sig").inc(10)
        rk.sent.labels("risk").inc(4)

    return rk, traffic


def execution(lease: int) -> FakeService:
    """The writer (lease 1) fills and times orders; a standby (lease 0) has done nothing."""
    ex = FakeService()
    ex.obey("ACTIVE", 7)
    ex.lease.set(lease)
    orders = Counter("flotilla_execution_orders", "", ["outcome"], registry=ex.registry)
    fills = Counter("flotilla_execution_fills", "", registry=ex.registry)
    latency = Histogram(
        "flotilla_execution_tick_to_order_seconds", "", buckets=BUCKETS, registry=ex.registry
    )
    if lease:
        orders.labels("accepted").inc(38)
        orders.labels("rejected").inc(2)
        fills.inc(30)
        for _ in range(98):
            latency.observe(0.0008)
        for _ in range(2):
            latency.observe(0.02)
    return ex


def kill_switch() -> FakeService:
    """The latch: seq 7, ACTIVE, and no flotilla_trading_state of its own."""
    ks = FakeService()
    ks.lease.set(1)
    Gauge("flotilla_killswitch_state_seq", "", registry=ks.registry).set(7)
    Gauge("flotilla_killswitch_halted", "", registry=ks.registry).set(0)
    return ks


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Every service up except signal, whose port nobody listens on; execution twice."""
    servers: list[tuple] = []
    rk, traffic = risk()
    specs = [
        f"market-data={serve(market_data().registry, servers)}",
        f"signal=http://127.0.0.1:{free_port()}/metrics",
        f"risk={serve(rk.registry, servers)}",
        f"execution={serve(execution(lease=1).registry, servers)}",
        f"execution={serve(execution(lease=0).registry, servers)}",
        f"kill-switch={serve(kill_switch().registry, servers)}",
    ]
    yield Fleet(specs, [traffic])
    with ThreadPoolExecutor() as pool:  # each shutdown waits up to 0.5 s: wait for all at once
        list(pool.map(lambda st: st[0].shutdown(), servers))
    for server, thread in servers:
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch, fleet: Fleet) -> None:
    """top's sleep advances a fake monotonic clock and runs the fleet's traffic: exact rates."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        for step in fleet.between_scrapes:
            step()

    fake = SimpleNamespace(sleep=sleep, monotonic=lambda: now[0], strftime=time.strftime)
    monkeypatch.setattr(top, "time", fake)
    monkeypatch.setattr(endpoints, "time", fake)  # where each scrape is timestamped


def args(endpoints: list[str], interval: float = 2.0) -> argparse.Namespace:
    """What flotilla.cli's parser gives `top --once`."""
    return argparse.Namespace(
        once=True, interval=interval, count=0, endpoint=endpoints, port_offset=0
    )


def rows(text: str, service: str) -> list[list[str]]:
    """The whitespace-split cells of every table row for `service`."""
    return [line.split() for line in text.splitlines() if line.split()[:1] == [service]]


def cell(cells: list[str], column: str) -> str:
    """One named column of a split row."""
    return cells[top.COLUMNS.index(column)]


def render(fleet: Fleet, interval: float = 2.0) -> tuple[int, str]:
    """run_top --once into a string (not a terminal); exit code and text."""
    out = io.StringIO()
    code = top.run_top(SimpleNamespace(), args(fleet.endpoints, interval), out)  # type: ignore[arg-type]
    return code, out.getvalue()


@pytest.mark.usefixtures("fake_clock")
def test_once_renders_every_service_with_correct_numbers(fleet: Fleet) -> None:
    """Rates from the two scrapes' deltas, totals, p99 from buckets, PnL summed over symbols."""
    code, text = render(fleet)
    assert code == 0
    (rk,) = rows(text, "risk")
    assert cell(rk, "up") == "up"
    assert cell(rk, "state") == "ACTIVE"
    assert cell(rk, "allowed") == "yes"
    assert cell(rk, "seq") == "7"
    assert cell(rk, "in/s") == "30.0"  # (50 md + 10 sig) / 2 s
    assert cell(rk, "out/s") == "2.0"
    assert cell(rk, "gaps") == "3"
    assert cell(rk, "p99 ms") == "-"
    assert cell(rk, "orders") == "40"
    assert cell(rk, "fills") == "-"
    assert cell(rk, "rejects") == "5"
    assert cell(rk, "pnl") == "10.75"  # 12.5 - 2.25 + 1.0 - 0.5
    writer, standby = sorted(rows(text, "execution"), key=len)  # only the standby has a note
    # 98 at 0.8 ms and 2 at 20 ms: rank 99 lies halfway through the (10 ms, 25 ms] bucket.
    assert cell(writer, "p99 ms") == "17.500"
    assert (cell(writer, "orders"), cell(writer, "fills"), cell(writer, "rejects")) == (
        "40",
        "30",
        "2",
    )
    assert cell(writer, "in/s") == "0.0"
    assert len(writer) == len(top.COLUMNS) - 1  # no note: the writer holds its lease
    assert cell(standby, "note") == "standby"
    assert cell(standby, "p99 ms") == "-"  # no observations yet
    assert cell(standby, "fills") == "0"
    (ks,) = rows(text, "kill-switch")
    assert (cell(ks, "state"), cell(ks, "seq"), cell(ks, "allowed")) == ("ACTIVE", "7", "yes")
    (md,) = rows(text, "market-data")
    assert cell(md, "out/s") == "0.0"
    assert cell(md, "pnl") == "-"


@pytest.mark.usefixtures("fake_clock")
def test_a_down_service_is_one_row_with_a_reason(fleet: Fleet) -> None:
    """No traceback: DOWN, dashes, and why, on the service's own line."""
    _code, text = render(fleet)
    assert "Traceback" not in text
    (signal,) = rows(text, "signal")
    assert cell(signal, "up") == "DOWN"
    assert "refused" in " ".join(signal).lower()
    assert "5/6 up" in text


@pytest.mark.usefixtures("fake_clock")
def test_not_a_terminal_means_no_escape_codes(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain text even when the environment asks rich for colour."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    _code, text = render(fleet)
    assert "\x1b" not in text
    assert "risk" in text


def test_once_with_interval_zero_scrapes_once_and_shows_no_rates(fleet: Fleet) -> None:
    """One scrape: rates are '-', everything else is there."""
    code, text = render(fleet, interval=0)
    assert code == 0
    (rk,) = rows(text, "risk")
    assert (cell(rk, "in/s"), cell(rk, "out/s"), cell(rk, "orders")) == ("-", "-", "40")


def test_every_endpoint_down_prints_the_frame_and_exits_1() -> None:
    """Exit 1 only when nothing answered; the frame still says which and why."""
    out = io.StringIO()
    down = [f"risk=http://127.0.0.1:{free_port()}/metrics"]
    assert top.run_top(SimpleNamespace(), args(down, 0), out) == 1  # type: ignore[arg-type]
    (rk,) = rows(out.getvalue(), "risk")
    assert cell(rk, "up") == "DOWN"


def test_cli_top_once_with_an_endpoint(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """The real entry point: scheme-less SERVICE=HOST:PORT, plain text on captured stdout."""
    risk_url = next(e for e in fleet.endpoints if e.startswith("risk="))
    host_port = risk_url.removeprefix("risk=http://").removesuffix("/metrics")
    assert main(["top", "--once", "--interval", "0.05", "--endpoint", f"risk={host_port}"]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text
    (rk,) = rows(text, "risk")
    assert (cell(rk, "instance"), cell(rk, "pnl"), cell(rk, "in/s")) == (host_port, "10.75", "0.0")


def test_cli_top_bad_endpoint_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the service name is one line on stderr."""
    assert main(["top", "--once", "--endpoint", "rsik=127.0.0.1:1"]) == 2
    assert "unknown service" in capsys.readouterr().err


def test_default_endpoints_follow_the_config_and_port_offset() -> None:
    """One endpoint per service: its metrics_port plus the offset, on loopback."""
    from libs.common.config import SERVICES, parse_config

    endpoints = top.default_endpoints(parse_config({}), 100)
    assert [e.service for e in endpoints] == list(SERVICES)
    assert endpoints[0].url == "http://127.0.0.1:9201/metrics"


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ([(0.1, 0.0), (float("inf"), 0.0)], None),  # no observations
        ([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.198),
        ([(0.1, 10.0), (float("inf"), 100.0)], 0.1),  # in the overflow bucket: highest bound
        ([(float("inf"), 5.0), (0.5, 5.0)], 0.495),  # unsorted input; first bucket from 0
    ],
)
def test_quantile_interpolates_like_histogram_quantile(
    buckets: list[tuple[float, float]], expected: float | None
) -> None:
    """Linear inside the bucket that holds the rank, as Prometheus does."""
    got = top.quantile(0.99, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_a_counter_that_went_down_restarted() -> None:
    """A restarted process counts from zero: the delta is its new value."""
    assert top.counter_delta(100, 130) == 30
    assert top.counter_delta(100, 7) == 7
    assert top.counter_delta(None, 5) == 5


def test_a_narrow_terminal_drops_the_least_useful_columns_first() -> None:
    """Everything fits a pipe; 80 columns keep service, state, rates and money."""
    line = ["risk", "127.0.0.1:9103", "up", "ACTIVE", "yes", "7", "30.0", "2.0", "3"]
    cells = [[*line, "-", "40", "-", "5", "10.75", ""]]
    assert top.fitting_columns(cells, top.PIPE_WIDTH) == list(top.COLUMNS)
    narrow = top.fitting_columns(cells, 80)
    assert not {"allowed", "seq"} & set(narrow)
    assert {"service", "up", "state", "in/s", "out/s", "orders", "pnl"} <= set(narrow)
