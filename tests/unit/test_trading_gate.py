"""TradingGate: a service trades only on a fresh ACTIVE state and fails closed otherwise."""

from __future__ import annotations

from libs.common.clock import FakeClock
from libs.common.trading_gate import TradingGate

from .builders import trading_state


def test_gate_refuses_trading_before_it_has_heard_any_state() -> None:
    gate = TradingGate(FakeClock())

    assert gate.refusal() == "state_unknown"
    assert not gate.allowed()


def test_gate_allows_trading_on_a_fresh_active_state() -> None:
    gate = TradingGate(FakeClock())

    gate.on_state(trading_state("ACTIVE", seq=1))

    assert gate.refusal() == ""
    assert gate.allowed()


def test_gate_halts_trading_after_three_missed_heartbeats() -> None:
    clock = FakeClock()
    gate = TradingGate(clock, missed_heartbeats=3)
    gate.on_state(trading_state("ACTIVE", seq=1, heartbeat_interval_ms=100))

    clock.advance_ms(300)
    assert gate.allowed()  # three intervals of silence is still within the budget

    clock.advance_ms(1)
    assert gate.refusal() == "state_stale"
    assert not gate.allowed()


def test_gate_heartbeat_of_the_same_state_keeps_trading_alive() -> None:
    clock = FakeClock()
    gate = TradingGate(clock)
    active = trading_state("ACTIVE", seq=1)
    gate.on_state(active)

    for _ in range(10):
        clock.advance_ms(250)
        gate.on_state(active)  # a re-published heartbeat
        assert gate.allowed()


def test_gate_resumes_when_heartbeats_come_back_after_going_stale() -> None:
    clock = FakeClock()
    gate = TradingGate(clock)
    gate.on_state(trading_state("ACTIVE", seq=1))
    clock.advance_ms(1_000)
    assert gate.refusal() == "state_stale"

    gate.on_state(trading_state("ACTIVE", seq=1))

    assert gate.allowed()


def test_gate_refuses_trading_when_halted() -> None:
    gate = TradingGate(FakeClock())
    gate.on_state(trading_state("ACTIVE", seq=1))

    gate.on_state(trading_state("HALTED", seq=2))

    assert gate.refusal() == "trading_halted"
    assert not gate.allowed()


def test_gate_never_lets_an_older_state_override_a_newer_one() -> None:
    gate = TradingGate(FakeClock())
    gate.on_state(trading_state("HALTED", seq=5))

    applied = gate.on_state(trading_state("ACTIVE", seq=4))  # delayed or replayed

    assert applied is False
    assert gate.state is not None and gate.state.seq == 5
    assert gate.refusal() == "trading_halted"


def test_gate_stale_old_state_does_not_refresh_the_dead_mans_switch() -> None:
    clock = FakeClock()
    gate = TradingGate(clock)
    gate.on_state(trading_state("ACTIVE", seq=5))
    clock.advance_ms(400)

    gate.on_state(trading_state("ACTIVE", seq=4))

    assert gate.refusal() == "state_stale"


def test_gate_reports_a_new_seq_once_so_the_service_acknowledges_it_once() -> None:
    gate = TradingGate(FakeClock())

    first = gate.on_state(trading_state("ACTIVE", seq=1))
    repeat = gate.on_state(trading_state("ACTIVE", seq=1))
    newer = gate.on_state(trading_state("HALTED", seq=2))

    assert (first, repeat, newer) == (True, False, True)
