"""The kill-switch latch: stored and audited before published, and latched across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from libs.common.clock import FakeClock
from libs.common.messages import Command, TradingState
from libs.common.store import EmbeddedStore, StoreError
from services.kill_switch.latch import AUDIT_LOG, STATE_KEY, CommandRefused, Latch

HB_MS = 100


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "s.sqlite")
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def latch(store: EmbeddedStore, clock: FakeClock, initial: str = "ACTIVE") -> Latch:
    return Latch(store, clock, HB_MS, initial)  # type: ignore[arg-type]


def cmd(action: str, operator: str = "", reason: str = "") -> Command:
    return Command(ts_event=1, ts_init=1, action=action, operator=operator, reason=reason)  # type: ignore[arg-type]


def stored_state(store: EmbeddedStore) -> TradingState:
    raw = store.get(STATE_KEY)
    assert raw is not None
    return msgspec.json.decode(raw, type=TradingState)


def audit(store: EmbeddedStore) -> list[tuple[str, int]]:
    entries = [msgspec.json.decode(r, type=TradingState) for r in store.read_log(AUDIT_LOG)]
    return [(e.state, e.seq) for e in entries]


def test_fresh_store_starts_in_the_configured_initial_state_at_seq_1(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock, initial="ACTIVE")

    assert (ks.state.state, ks.state.seq) == ("ACTIVE", 1)
    assert (stored_state(store).state, stored_state(store).seq) == ("ACTIVE", 1)
    assert audit(store) == [("ACTIVE", 1)]


def test_halt_is_stored_and_audited_by_the_time_apply_returns(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    clock.advance_ms(5)

    state = ks.apply(cmd("halt", reason="runaway strategy"))

    assert (state.state, state.seq) == ("HALTED", 2)
    assert stored_state(store) == state
    assert state.reason == "runaway strategy"
    assert state.changed_ns == clock.time_ns()
    assert audit(store) == [("ACTIVE", 1), ("HALTED", 2)]


def test_a_halt_that_cannot_be_stored_is_not_applied(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    store.close()  # the store is gone: the transition must not be published

    with pytest.raises(StoreError):
        ks.apply(cmd("halt"))

    assert (ks.state.state, ks.state.seq) == ("ACTIVE", 1)


def test_halting_twice_changes_nothing(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)
    first = ks.apply(cmd("halt"))

    again = ks.apply(cmd("halt"))

    assert again == first
    assert again.seq == 2
    assert audit(store) == [("ACTIVE", 1), ("HALTED", 2)]


def test_resume_without_an_operator_is_refused(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt"))

    for anonymous in ("", "   "):
        with pytest.raises(CommandRefused, match="operator"):
            ks.apply(cmd("resume", operator=anonymous))

    assert (ks.state.state, ks.state.seq) == ("HALTED", 2)
    assert stored_state(store).state == "HALTED"


def test_resume_by_a_named_operator_reactivates_with_the_next_seq(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt"))

    state = ks.apply(cmd("resume", operator="alice"))

    assert (state.state, state.seq, state.operator) == ("ACTIVE", 3, "alice")
    assert stored_state(store) == state
    assert audit(store) == [("ACTIVE", 1), ("HALTED", 2), ("ACTIVE", 3)]


def test_halt_survives_a_kill_switch_restart(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock, initial="ACTIVE")
    ks.apply(cmd("halt"))

    restarted = latch(store, clock, initial="ACTIVE")

    assert (restarted.state.state, restarted.state.seq) == ("HALTED", 2)
    assert audit(store) == [("ACTIVE", 1), ("HALTED", 2)]  # a restart is not a transition


def test_seq_keeps_growing_across_a_restart(store: EmbeddedStore, clock: FakeClock) -> None:
    latch(store, clock).apply(cmd("halt"))

    state = latch(store, clock).apply(cmd("resume", operator="bob"))

    assert state.seq == 3


def test_status_and_heartbeat_report_without_changing_state(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt"))
    clock.advance_ms(1_000)

    status = ks.apply(cmd("status"))
    beat = ks.heartbeat()

    assert (status.state, status.seq) == ("HALTED", 2)
    assert (beat.state, beat.seq) == ("HALTED", 2)
    assert beat.ts_init == clock.time_ns()
    assert len(audit(store)) == 2
