"""Bus and processing metrics: bytes and messages per family, the age of each received stream,
high-water-mark drops, sampled processing time, and an exposition promtool accepts."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from prometheus_client import REGISTRY, generate_latest

from libs.common import topics
from libs.common.bus import Publisher, Subscriber, send_nowait
from libs.common.clock import FakeClock
from libs.common.messages import MarketData
from libs.common.metrics import TRAFFIC, SampledTimer

from .builders import quote

TOPIC = topics.md_quote("binance", "BTCUSDT")
SERVICE_MODULES = [
    "services.market_data.service",
    "services.signal.service",
    "services.risk.service",
    "services.execution.service",
    "services.kill_switch.service",
]


class FrameSocket:
    """Stands in for a PUB (keeps what is sent) and a SUB (hands it back, then zmq.Again)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes, copy: bool = True) -> None:
        self.frames.append(bytes(frame))

    def recv(self, flags: int = 0) -> bytes:
        if not self.frames:
            raise zmq.Again()
        return self.frames.pop(0)

    def setsockopt(self, option: int, value: Any) -> None:
        pass


def value(name: str, **labels: str) -> float:
    """One sample from the process registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def published(count: int, topic: str = TOPIC) -> list[bytes]:
    """Frames of `count` quotes as a Publisher sends them."""
    sock = FrameSocket()
    pub = Publisher(sock, FakeClock())  # type: ignore[arg-type]
    for _ in range(count):
        pub.publish(topic, quote())
    return sock.frames


def subscriber(role: str, frames: list[bytes]) -> Subscriber[Any]:
    """A Subscriber with its own role (its own age series) reading `frames`."""
    sock = FrameSocket()
    sock.frames = list(frames)
    sub: Subscriber[Any] = Subscriber(sock, MarketData, role=role)  # type: ignore[arg-type]
    sub.subscribe(topics.family("md", "quote"))
    return sub


def test_publish_counts_messages_and_every_byte_of_the_frames_per_family() -> None:
    """messages_sent and sent_bytes grow by exactly what went on the wire."""
    msgs, nbytes = (
        value("flotilla_bus_messages_sent_total", family="md"),
        value("flotilla_bus_sent_bytes_total", family="md"),
    )
    frames = published(3)
    assert value("flotilla_bus_messages_sent_total", family="md") - msgs == 3
    assert value("flotilla_bus_sent_bytes_total", family="md") - nbytes == sum(map(len, frames))


def test_receive_counts_decoded_messages_and_their_bytes_but_not_junk() -> None:
    """A decode error is not a received message, nor received bytes."""
    good = published(2)
    msgs = value("flotilla_bus_messages_received_total", family="md")
    nbytes = value("flotilla_bus_received_bytes_total", family="md")
    sub = subscriber("t_recv", [good[0], good[1][:-3]])

    assert len(sub.recv_batch()) == 1
    assert sub.decode_errors == 1
    assert value("flotilla_bus_messages_received_total", family="md") - msgs == 1
    assert value("flotilla_bus_received_bytes_total", family="md") - nbytes == len(good[0])


def test_conflated_frames_are_received_and_counted_as_conflated() -> None:
    """recv_latest decodes only the newest of three: all three are received, two conflated."""
    frames = published(3)
    msgs = value("flotilla_bus_messages_received_total", family="md")
    conflated = value("flotilla_bus_messages_conflated_total", family="md")
    sub = subscriber("t_latest", frames)

    assert [env.seq for env in sub.recv_latest()] == [3]
    assert value("flotilla_bus_messages_received_total", family="md") - msgs == 3
    assert value("flotilla_bus_messages_conflated_total", family="md") - conflated == 2


def test_a_stream_age_counts_from_subscribing_and_resets_on_each_message() -> None:
    """Exported at once (a stream that never speaks still shows), reset by a received batch."""
    sub = subscriber("t_age", [])
    age = value("flotilla_bus_last_message_age_seconds", role="t_age", family="md")
    assert 0 <= age < 5
    TRAFFIC.received("t_age", "md").last_mono_ns -= 30 * 10**9  # as if silent for 30 s
    assert value("flotilla_bus_last_message_age_seconds", role="t_age", family="md") >= 30

    sub.sock.frames = published(1)  # type: ignore[attr-defined]
    assert len(sub.recv_batch()) == 1
    assert value("flotilla_bus_last_message_age_seconds", role="t_age", family="md") < 5


def test_stream_labels_stay_bounded_under_hostile_topics() -> None:
    """A topic outside the known families is family="other", whatever its name."""
    sub = subscriber("t_hostile", published(1, topic="evil.x1") + published(1, topic="evil.x2"))
    assert len(sub.recv_batch()) == 2  # Quote payloads on unknown topics still decode
    families = {
        s.labels["family"]
        for metric in REGISTRY.collect()
        if metric.name == "flotilla_bus_last_message_age_seconds"
        for s in metric.samples
        if s.labels["role"] == "t_hostile"
    }
    assert families == {"md", "other"}  # md: the subscription itself


def test_a_send_at_the_high_water_mark_is_dropped_and_counted() -> None:
    """A DEALER with no peer cannot queue: NOBLOCK raises zmq.Again, counted per family."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        before = value("flotilla_bus_hwm_dropped_messages_total", family="ctl")
        assert send_nowait(sock, [b"state request"], "ctl") is False
        assert value("flotilla_bus_hwm_dropped_messages_total", family="ctl") - before == 1
    finally:
        sock.close(linger=0)
        ctx.term()


def test_the_sampled_timer_observes_one_call_in_every() -> None:
    """Eight calls with every=4: two observations; unsampled calls return 0 and observe nothing."""
    timer = SampledTimer("t_sampled", every=4)
    starts = []
    for _ in range(8):
        t0 = timer.start()
        starts.append(t0)
        timer.stop(t0)
    assert [t0 != 0 for t0 in starts] == [False, False, False, True] * 2
    assert value("flotilla_processing_seconds_count", stage="t_sampled") == 2
    assert value("flotilla_processing_seconds_sum", stage="t_sampled") > 0


@pytest.fixture
def every_service_imported() -> Iterator[None]:
    """Every service module's metrics registered, as the alert-rule name check does."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    yield


def test_the_whole_exposition_passes_promtool_check_metrics(every_service_imported: None) -> None:
    """Names, `_total` counters, units and help strings, as Prometheus' own linter sees them."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool not found: apt-get install prometheus (scripts/install-system-deps.sh)"
        )
    published(1)  # some traffic, so the collector's families carry samples
    subscriber("t_lint", published(1)).recv_batch()
    checked = subprocess.run(
        [exe, "check", "metrics"],
        input=generate_latest(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    text = generate_latest().decode()
    for name in (
        "flotilla_bus_received_bytes_total",
        "flotilla_bus_last_message_age_seconds",
        "flotilla_bus_snapshot_requests_total",
        "flotilla_processing_seconds_bucket",
        "flotilla_execution_venue_request_seconds_bucket",
        "flotilla_execution_venue_reconnects_total",
        "flotilla_market_data_feed_reconnects_total",
        "flotilla_execution_order_updates_total",
        "flotilla_execution_rejections_total",
    ):
        assert f"\n{name}{{" in text, name


def test_the_bench_baseline_is_the_bus_code_without_its_metrics() -> None:
    """bench/micro.py's 'metrics off' run moves every message but no tally; 'on' counts each."""
    from bench import micro

    blocks = micro.WARMUP // micro.BLOCK + 2
    before = value("flotilla_bus_messages_sent_total", family="md")
    received = value("flotilla_bus_messages_received_total", family="md")
    assert len(micro.bus_message_cost(2 * micro.BLOCK, with_metrics=False)) == 2
    assert value("flotilla_bus_messages_sent_total", family="md") == before
    assert value("flotilla_bus_messages_received_total", family="md") == received

    micro.bus_message_cost(2 * micro.BLOCK, with_metrics=True)
    assert value("flotilla_bus_messages_sent_total", family="md") - before == blocks * micro.BLOCK
    assert (
        value("flotilla_bus_messages_received_total", family="md") - received
        == blocks * micro.BLOCK
    )
