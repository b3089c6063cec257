"""`flotilla metrics`: values first, then counter rates; a dead service is one line, exit 1."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from flotilla.metrics_tail import Sample, follow_frame, frames, run_metrics


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Counter, Gauge]]:
    """A real Prometheus endpoint with one counter and one gauge of our own."""
    registry = CollectorRegistry()
    fills = Counter("flotilla_test_fills", "Fills", registry=registry)
    state = Gauge("flotilla_test_state_seq", "State seq", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics", fills, state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_first_frame_prints_current_values(endpoint) -> None:
    """Counters and gauges show their current value, by name."""
    url, fills, state = endpoint
    fills.inc(7)
    state.set(3)
    (lines,) = list(frames(url, follow=False, interval_s=0, count=1, pattern=None))
    assert "flotilla_test_fills_total 7" in lines
    assert "flotilla_test_state_seq 3" in lines
    assert not any("_created" in line for line in lines)


def test_following_prints_counter_rates_and_gauge_values() -> None:
    """Between frames a counter shows (new - old) / seconds; a gauge shows its value."""
    key_fills = ("flotilla_test_fills_total", ())
    key_state = ("flotilla_test_state_seq", ())
    before = {key_fills: Sample("counter", 10), key_state: Sample("gauge", 1)}
    after = {key_fills: Sample("counter", 30), key_state: Sample("gauge", 2)}
    lines = follow_frame(before, after, 2.0, None)
    assert lines == ["flotilla_test_fills_total 10/s", "flotilla_test_state_seq 2"]


def test_grep_keeps_only_matching_samples(endpoint) -> None:
    """--grep filters on name{labels}."""
    url, _fills, _state = endpoint
    (lines,) = list(frames(url, False, 0, 1, re.compile("state_seq")))
    assert lines == ["flotilla_test_state_seq 0"]


def test_follow_with_a_count_stops_after_that_many_frames(endpoint, capsys) -> None:
    """--follow --count 2: a values frame then a rates frame, each with a header."""
    url, fills, _state = endpoint
    fills.inc(1)
    assert run_metrics("risk", url, True, "fills", 0.05, 2) == 0
    out = capsys.readouterr().out
    assert out.count("--- risk") == 2
    assert "flotilla_test_fills_total 1\n" in out
    assert "flotilla_test_fills_total 0/s" in out


def test_an_unreachable_service_is_one_line_and_exit_1(capsys) -> None:
    """No traceback: one line naming the service and URL."""
    url = f"http://127.0.0.1:{free_port()}/metrics"
    assert run_metrics("signal", url, False, None, 1.0, 1) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"flotilla metrics: cannot reach signal at {url}")


def test_a_bad_grep_pattern_is_a_usage_error(capsys) -> None:
    """An invalid regex is refused before any request."""
    assert run_metrics("risk", "http://127.0.0.1:1/metrics", False, "([", 1.0, 1) == 2
    assert "bad --grep pattern" in capsys.readouterr().err
