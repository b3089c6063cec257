"""Container health checks (flotilla/health.py): liveness, readiness, scraping, exit codes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from flotilla.health import Unhealthy, check, main, scrape

BEAT = "flotilla_loop_heartbeat_timestamp_seconds"
ALL_SERVICES = ["market-data", "signal", "risk", "execution", "kill-switch"]


def samples(age_s: float | None = 1.0, lease: float = 0.0, seq: float = 0.0) -> dict[str, float]:
    """Scraped samples: a heartbeat age_s seconds old (None: never beat), lease and state seq."""
    beat = 0.0 if age_s is None else time.time() - age_s
    return {BEAT: beat, "flotilla_lease_held": lease, "flotilla_trading_state_seq": seq}


# --- check(): liveness ----------------------------------------------------------------------


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_fresh_heartbeat_is_alive(service: str) -> None:
    check(service, samples(age_s=1.0), ready=False, max_age_s=10.0)


def test_a_standby_single_writer_is_alive() -> None:
    check("risk", samples(age_s=1.0, lease=0.0, seq=0.0), ready=False, max_age_s=10.0)


def test_a_stale_heartbeat_is_unhealthy_and_says_for_how_long() -> None:
    with pytest.raises(Unhealthy, match=r"signal: main loop has not turned for 3\d\.\d s"):
        check("signal", samples(age_s=30.0), ready=False, max_age_s=10.0)


@pytest.mark.parametrize("scraped", [samples(age_s=None), {}], ids=["zero", "absent"])
def test_a_missing_heartbeat_is_unhealthy_with_a_clear_message(scraped: dict[str, float]) -> None:
    with pytest.raises(Unhealthy, match=r"^risk: main loop has not reported a heartbeat yet$"):
        check("risk", scraped, ready=False, max_age_s=10.0)


# --- check(): readiness ---------------------------------------------------------------------


@pytest.mark.parametrize("service", ["risk", "execution", "kill-switch"])
def test_a_standby_single_writer_is_not_ready(service: str) -> None:
    with pytest.raises(Unhealthy, match="standing by"):
        check(service, samples(lease=0.0, seq=5.0), ready=True, max_age_s=10.0)


@pytest.mark.parametrize("service", ["risk", "execution"])
def test_a_lease_holder_is_ready_once_it_has_heard_the_trading_state(service: str) -> None:
    with pytest.raises(Unhealthy, match="trading state"):
        check(service, samples(lease=1.0, seq=0.0), ready=True, max_age_s=10.0)
    check(service, samples(lease=1.0, seq=1.0), ready=True, max_age_s=10.0)


def test_the_kill_switch_is_ready_as_soon_as_it_holds_the_lease() -> None:
    check("kill-switch", samples(lease=1.0, seq=0.0), ready=True, max_age_s=10.0)


@pytest.mark.parametrize("service", ["market-data", "signal"])
def test_other_services_are_ready_once_they_have_heard_the_trading_state(service: str) -> None:
    with pytest.raises(Unhealthy, match="has not heard the trading state"):
        check(service, samples(lease=0.0, seq=0.0), ready=True, max_age_s=10.0)
    check(service, samples(lease=0.0, seq=3.0), ready=True, max_age_s=10.0)


def test_readiness_still_requires_liveness() -> None:
    with pytest.raises(Unhealthy, match="has not turned"):
        check("signal", samples(age_s=30.0, seq=3.0), ready=True, max_age_s=10.0)


# --- scrape() and main() against a real metrics endpoint ------------------------------------


class MetricsEndpoint:
    """A real prometheus_client /metrics server exposing what a running service exposes."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.beat = Gauge(BEAT, "loop heartbeat", registry=registry)
        self.seq = Gauge("flotilla_trading_state_seq", "state seq", registry=registry)
        Gauge("flotilla_lease_held", "lease", registry=registry).set(0)
        labelled = Gauge("flotilla_labelled", "by family", ["family"], registry=registry)
        labelled.labels(family="md").set(7)  # labelled samples: health must ignore them
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.port = int(self.server.server_port)

    def serve(self, beat_age_s: float, seq: float) -> None:
        """Expose a heartbeat beat_age_s old and this trading-state seq."""
        self.beat.set(time.time() - beat_age_s)
        self.seq.set(seq)

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MetricsEndpoint]:
    """One server on a free loopback port for the module (stopping one takes 0.5 s)."""
    served = MetricsEndpoint()
    yield served
    served.stop()


def unused_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_scrape_reads_unlabelled_samples(endpoint: MetricsEndpoint) -> None:
    endpoint.serve(beat_age_s=1.0, seq=4.0)

    scraped = scrape(endpoint.port, timeout_s=2.0)

    assert scraped["flotilla_trading_state_seq"] == 4.0
    assert scraped["flotilla_lease_held"] == 0.0
    assert time.time() - scraped[BEAT] == pytest.approx(1.0, abs=5.0)
    assert "flotilla_labelled" not in scraped


def test_scrape_of_an_unreachable_endpoint_is_unhealthy() -> None:
    port = unused_port()

    with pytest.raises(Unhealthy, match=f"127.0.0.1:{port}/metrics unreachable"):
        scrape(port, timeout_s=2.0)


def test_main_exits_0_for_a_live_service_and_1_when_not_ready(
    endpoint: MetricsEndpoint, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.serve(beat_age_s=1.0, seq=0.0)
    monkeypatch.setenv("FLOTILLA__SIGNAL__METRICS_PORT", str(endpoint.port))

    assert main(["signal"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["signal", "--ready"]) == 1
    assert capsys.readouterr().err == "health: signal: has not heard the trading state yet\n"


def test_main_takes_the_service_from_the_environment(
    endpoint: MetricsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint.serve(beat_age_s=1.0, seq=2.0)
    monkeypatch.setenv("FLOTILLA__MARKET_DATA__METRICS_PORT", str(endpoint.port))
    monkeypatch.setenv("FLOTILLA_SERVICE", "market-data")

    assert main(["--ready"]) == 0


def test_main_with_an_unreachable_endpoint_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOTILLA__RISK__METRICS_PORT", str(unused_port()))

    assert main(["risk", "--timeout", "1"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("health: metrics endpoint http://127.0.0.1:")
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")


def test_main_with_an_unreadable_config_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOTILLA_CONFIG", "/nonexistent/flotilla.toml")

    assert main(["risk"]) == 1
    assert capsys.readouterr().err.startswith("health: cannot read config")


@pytest.mark.parametrize("argv", [["trader"], []], ids=["unknown", "none"])
def test_main_with_an_unknown_service_exits_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLOTILLA_SERVICE", raising=False)

    assert main(argv) == 2
    assert "unknown service" in capsys.readouterr().err
