"""The kill-switch latch: stored and audited before published, and latched across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from libs.common.clock import FakeClock
from libs.common.messages import Command, DeadmanTrip, Panic, TradingState
from libs.common.store import EmbeddedStore, StoreError
from services.kill_switch.audit import AUDIT_HEAD, AUDIT_LOG, verify
from services.kill_switch.latch import STATE_KEY, CommandRefused, Latch

HB_MS = 100


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "s.sqlite")
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


COOLDOWN_MS = 3_000


def latch(store: EmbeddedStore, clock: FakeClock, initial: str = "ACTIVE") -> Latch:
    return Latch(store, clock, HB_MS, initial, COOLDOWN_MS)  # type: ignore[arg-type]


def cmd(action: str, operator: str = "", reason: str = "", strategy: str = "") -> Command:
    return Command(
        ts_event=1,
        ts_init=1,
        action=action,  # type: ignore[arg-type]
        operator=operator,
        reason=reason,
        strategy=strategy,
    )


def panic(rule: str, action: str, strategy: str = "") -> Panic:
    return Panic(
        ts_event=1,
        ts_init=1,
        rule=rule,
        action=action,
        detail=f"{rule} fired",
        strategy=strategy,  # type: ignore[arg-type]
    )


def after_cooldown(clock: FakeClock) -> None:
    clock.advance_ms(COOLDOWN_MS + 1)


def stored_state(store: EmbeddedStore) -> TradingState:
    raw = store.get(STATE_KEY)
    assert raw is not None
    return msgspec.json.decode(raw, type=TradingState)


def audit(store: EmbeddedStore) -> list[tuple[str, int]]:
    """The transitions in the audit log, as (state, seq)."""
    entries = [msgspec.json.decode(r) for r in store.read_log(AUDIT_LOG)]
    return [
        (e["record"]["state"], e["record"]["seq"]) for e in entries if e["kind"] == "transition"
    ]


def audit_kinds(store: EmbeddedStore) -> list[str]:
    return [msgspec.json.decode(r)["kind"] for r in store.read_log(AUDIT_LOG)]


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


def test_every_halt_is_a_new_sequenced_transition(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt", reason="first"))

    again = ks.apply(cmd("halt", reason="second"))

    assert (again.state, again.seq, again.reason) == ("HALTED", 3, "second")
    assert audit(store) == [("ACTIVE", 1), ("HALTED", 2), ("HALTED", 3)]
    assert audit_kinds(store) == ["transition", "transition", "command", "transition", "command"]


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
    after_cooldown(clock)

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
    after_cooldown(clock)

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


def test_resume_inside_the_cooldown_is_refused_and_audited(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt"))
    clock.advance_ms(COOLDOWN_MS - 10)

    with pytest.raises(CommandRefused, match="cooldown"):
        ks.apply(cmd("resume", operator="alice"))
    clock.advance_ms(11)
    assert ks.apply(cmd("resume", operator="alice")).state == "ACTIVE"

    commands = [msgspec.json.decode(r) for r in store.read_log(AUDIT_LOG)]
    outcomes = [e["record"]["outcome"] for e in commands if e["kind"] == "command"]
    assert outcomes[1].startswith("refused: cooldown")


def test_each_mode_command_moves_to_its_mode(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)
    for action, mode in (
        ("reduce", "REDUCING"),
        ("pause", "PAUSED"),
        ("halt", "HALTED"),
        ("emergency", "EMERGENCY"),
    ):
        assert ks.apply(cmd(action, reason=action)).state == mode


def test_loosening_without_resume_needs_an_operator_too(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    ks.apply(cmd("halt"))
    after_cooldown(clock)

    with pytest.raises(CommandRefused, match="operator"):
        ks.apply(cmd("reduce", reason="unwind"))  # REDUCING lets orders through: looser than HALTED
    assert ks.apply(cmd("reduce", reason="unwind", operator="carol")).state == "REDUCING"


def test_a_hard_trigger_latches_halted_and_release_never_resumes(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)

    pressed = ks.set_trigger("gpio:estop", True, "emergency stop pressed")
    assert pressed is not None and (pressed.state, pressed.source) == ("HALTED", "gpio")
    after_cooldown(clock)
    with pytest.raises(CommandRefused, match="hard trigger"):
        ks.apply(cmd("resume", operator="alice"))

    assert ks.set_trigger("gpio:estop", False, "released") is None
    assert ks.state.state == "HALTED"  # releasing the button resumes nothing
    assert ks.apply(cmd("resume", operator="alice")).state == "ACTIVE"


def test_tamper_is_reported_with_its_own_source(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)

    state = ks.set_trigger("gpio:tamper", True, "enclosure opened")

    assert state is not None and (state.state, state.source) == ("HALTED", "tamper")


def test_panics_only_tighten(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)

    soft = ks.on_panic(panic("drawdown_soft", "reduce"))
    hard = ks.on_panic(panic("drawdown_hard", "halt"))
    again = ks.on_panic(panic("drawdown_soft", "reduce"))

    assert soft is not None and (soft.state, soft.source) == ("REDUCING", "panic:drawdown_soft")
    assert hard is not None and (hard.state, hard.source) == ("HALTED", "panic:drawdown_hard")
    assert again is None and ks.state.state == "HALTED"


def test_a_throttled_strategy_stays_disabled_until_an_operator_resumes_it(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)

    state = ks.on_panic(panic("fill_throttle", "disable_strategy", strategy="ofi"))
    assert state is not None and state.state == "ACTIVE"
    assert list(state.halted_strategies) == ["ofi"]
    after_cooldown(clock)
    with pytest.raises(CommandRefused, match="operator"):
        ks.apply(cmd("resume", strategy="ofi"))
    resumed = ks.apply(cmd("resume", strategy="ofi", operator="dave"))

    assert resumed.halted_strategies == {}


def test_strategy_halts_survive_a_restart(store: EmbeddedStore, clock: FakeClock) -> None:
    latch(store, clock).apply(cmd("halt", strategy="ofi", reason="misbehaving"))

    assert latch(store, clock).state.halted_strategies == {"ofi": "misbehaving"}


def test_a_deadman_trip_relatches_unless_a_later_state_superseded_it(
    store: EmbeddedStore, clock: FakeClock
) -> None:
    ks = latch(store, clock)
    trip = DeadmanTrip(
        ts_event=1, ts_init=1, service="risk", instance="risk-1", last_seq=1, silent_ms=350
    )

    state = ks.on_deadman(trip)
    late = ks.on_deadman(trip)  # a second service tripping at the same old seq

    assert state is not None and (state.state, state.seq, state.source) == ("HALTED", 2, "deadman")
    assert "risk-1" in state.reason
    assert late is None


def test_the_audit_log_of_a_session_verifies(store: EmbeddedStore, clock: FakeClock) -> None:
    ks = latch(store, clock)
    for i in range(20):
        ks.apply(cmd("halt", reason=f"drill {i}"))
    ks.on_panic(panic("quote_stale", "halt"))
    ks.set_trigger("gpio:estop", True, "pressed")

    assert verify(store.read_log(AUDIT_LOG), store.get(AUDIT_HEAD)) == []
