"""TradingGate: a service trades only on a fresh ACTIVE state and fails closed otherwise."""

from __future__ import annotations

import msgspec

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


def test_a_stale_gate_stays_halted_when_the_same_state_comes_back() -> None:
    clock = FakeClock()
    gate = TradingGate(clock)
    gate.on_state(trading_state("ACTIVE", seq=1))
    clock.advance_ms(1_000)
    assert gate.refusal() == "state_stale"
    assert gate.check_deadman()  # what ControlLink does once it has read every waiting message

    gate.on_state(trading_state("ACTIVE", seq=1))  # a frozen kill switch thaws (SIGCONT)

    assert gate.refusal() == "state_stale"
    assert gate.mode() == "HALTED"


def test_a_tripped_gate_obeys_the_next_transition() -> None:
    clock = FakeClock()
    gate = TradingGate(clock)
    gate.on_state(trading_state("ACTIVE", seq=1))
    clock.advance_ms(1_000)
    assert gate.check_deadman()
    assert not gate.check_deadman()  # reported once

    gate.on_state(trading_state("HALTED", seq=2))
    assert gate.refusal() == "trading_halted"
    gate.on_state(trading_state("ACTIVE", seq=3))

    assert gate.allowed()


def test_reducing_lets_only_reducing_orders_through() -> None:
    gate = TradingGate(FakeClock())
    gate.on_state(trading_state("REDUCING", seq=1))

    assert gate.refusal(reduces=False) == "trading_reducing"
    assert gate.refusal(reduces=True) == ""


def test_paused_and_emergency_refuse_even_reducing_orders() -> None:
    gate = TradingGate(FakeClock())
    for seq, mode in enumerate(("PAUSED", "HALTED", "EMERGENCY"), start=1):
        gate.on_state(trading_state(mode, seq=seq))
        assert gate.refusal(reduces=True) == f"trading_{mode.lower()}"


def test_a_halted_strategy_is_refused_while_others_trade() -> None:
    gate = TradingGate(FakeClock())
    state = trading_state("ACTIVE", seq=1)
    gate.on_state(msgspec.structs.replace(state, halted_strategies={"ofi": "fill throttle"}))

    assert gate.refusal("ofi") == "strategy_halted"
    assert gate.refusal("pulse") == ""


def test_a_prepared_halt_blocks_orders_until_its_state_is_heard() -> None:
    gate = TradingGate(FakeClock())
    gate.on_state(trading_state("ACTIVE", seq=1))

    assert gate.prepare(2)
    assert gate.refusal() == "halt_pending"
    gate.on_state(trading_state("ACTIVE", seq=1))  # a heartbeat of the old state changes nothing
    assert gate.refusal() == "halt_pending"
    gate.on_state(trading_state("HALTED", seq=2))

    assert gate.refusal() == "trading_halted"
    assert not gate.prepare(2)  # already heard


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
