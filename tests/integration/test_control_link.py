"""A service's control link on real ZeroMQ: a silent kill switch trips its dead man's switch and
is told so, unless the service is itself stopping (the kill switch going first is then normal).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from libs.common.clock import FakeClock
from libs.common.config import DEFAULT_CONFIG, load_config, with_port_offset
from libs.common.messages import ControlMessage, DeadmanTrip, StateRequest
from libs.common.runtime import ControlLink, Runtime
from libs.common.store import EmbeddedStore
from tests.unit.builders import trading_state


class KillSwitchEnd:
    """The kill switch's ROUTER for acks, trips and snapshot requests (bound, never answering)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(endpoint)
        self.decoder = msgspec.msgpack.Decoder(ControlMessage)

    def received(self, wait_s: float = 0.3) -> list[Any]:
        """Every message that arrives within wait_s."""
        got = []
        deadline = time.monotonic() + wait_s
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            if self.sock.poll(left_ms):
                _identity, frame = self.sock.recv_multipart()
                got.append(self.decoder.decode(frame))
        return got

    def close(self) -> None:
        """Close the socket and context."""
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def link(
    port_offset: int, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ControlLink, Runtime, KillSwitchEnd]]:
    """A risk service's control link facing a kill switch that has gone silent."""
    monkeypatch.setenv("FLOTILLA_INSTANCE", "risk-1")
    base = load_config(DEFAULT_CONFIG, env={})
    cfg = msgspec.structs.replace(base, bus=with_port_offset(base.bus, port_offset))
    kill_switch = KillSwitchEnd(cfg.bus.ctl_ack.replace("127.0.0.1", "*"))
    rt = Runtime("risk", cfg, tmp_path, clock, EmbeddedStore(tmp_path / "state.sqlite"))
    try:
        control = ControlLink(rt)
        assert [type(m) for m in kill_switch.received()] == [StateRequest]  # asked at start
        control.apply(trading_state("ACTIVE", seq=7, heartbeat_interval_ms=100))
        kill_switch.received()  # its acknowledgement
        yield control, rt, kill_switch
    finally:
        rt.close()
        kill_switch.close()


def test_a_silent_kill_switch_trips_the_service_and_is_told(
    link: tuple[ControlLink, Runtime, KillSwitchEnd], clock: FakeClock
) -> None:
    control, _rt, kill_switch = link
    clock.advance_ms(301)
    control.check()

    trips = [m for m in kill_switch.received() if isinstance(m, DeadmanTrip)]
    assert control.gate.mode() == "HALTED"
    assert [(t.service, t.instance, t.last_seq, t.silent_ms) for t in trips] == [
        ("risk", "risk-1", 7, 301)
    ]


def test_a_stopping_service_halts_silently_and_reports_no_trip(
    link: tuple[ControlLink, Runtime, KillSwitchEnd], clock: FakeClock
) -> None:
    control, rt, kill_switch = link
    rt.stop_requested = True  # SIGTERM: the whole fleet is stopping, the kill switch went first
    clock.advance_ms(301)
    control.check()

    assert control.gate.mode() == "HALTED"
    assert not any(isinstance(m, DeadmanTrip) for m in kill_switch.received())
