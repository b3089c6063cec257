"""The latched trading state: every transition is stored and audited before it is published.

Rules (README "Kill switch"):
- halt, pause, reduce and emergency always record a new transition (even when the mode does not
  change: every operator act is sequenced and acknowledged); strategy halts add to the state's
  `halted_strategies`.
- Anything that loosens the state (resume, or a less restrictive mode) needs an operator name,
  is refused inside the cooldown after the last transition, and while a hard trigger holds.
- Panic rules and dead man's trips only ever tighten the state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from libs.common.clock import Clock
from libs.common.messages import (
    RESTRICTIVENESS,
    Command,
    DeadmanTrip,
    Panic,
    TradingMode,
    TradingState,
)
from libs.common.store import StateStore

from .audit import AuditLog

log = logging.getLogger(__name__)
STATE_KEY = "ctl:state"
COMMAND_MODES: dict[str, TradingMode] = {
    "halt": "HALTED",
    "pause": "PAUSED",
    "reduce": "REDUCING",
    "emergency": "EMERGENCY",
    "resume": "ACTIVE",
}
PANIC_MODES: dict[str, TradingMode] = {"reduce": "REDUCING", "halt": "HALTED"}
TRIGGER_SOURCES = {"gpio:tamper": "tamper"}  # other triggers report source "gpio"


class CommandRefused(Exception):
    """The command is not allowed now; the message says why."""


def tighter(mode: str, than: str) -> bool:
    """True when `mode` restricts trading more than `than`."""
    return RESTRICTIVENESS[mode] > RESTRICTIVENESS[than]


class Latch:
    """Owns the trading state; only explicit acts change it, and a restart keeps it."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        heartbeat_interval_ms: int,
        initial: TradingMode,
        cooldown_ms: int = 3_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._hb_ms = heartbeat_interval_ms
        self._cooldown_ns = cooldown_ms * 1_000_000
        self._encoder = msgspec.json.Encoder()
        self.audit = AuditLog(store)
        self.hard_triggers: dict[str, str] = {}  # trigger -> detail; re-asserted by GPIO on start
        # Called with the next state before a restricting transition is recorded (two-phase halt).
        self.prepare: Callable[[TradingState], None] = lambda _state: None
        self.state = self._load() or self._record(
            self._build(initial, "initial state", "startup", "", self._strategies())
        )

    # --- loading and recording ------------------------------------------------------------

    def _load(self) -> TradingState | None:
        """The latched state from the store, if any (a HALTED fleet stays HALTED across restarts)."""
        raw = self._store.get(STATE_KEY)
        if raw is None:
            return None
        state = msgspec.json.decode(raw, type=TradingState)
        log.info("latched state restored: %s seq=%d (%s)", state.state, state.seq, state.reason)
        # Hard triggers are live readings, not history: the GPIO panel re-asserts what still holds.
        return msgspec.structs.replace(state, heartbeat_interval_ms=self._hb_ms, hard_triggers=[])

    def _strategies(self) -> dict[str, str]:
        """The current per-strategy halts (none before the first state)."""
        current = getattr(self, "state", None)
        return dict(current.halted_strategies) if current is not None else {}

    def _build(
        self, mode: TradingMode, reason: str, source: str, operator: str, strategies: dict[str, str]
    ) -> TradingState:
        """The next transition, with the next seq."""
        now = self._clock.time_ns()
        current = getattr(self, "state", None)
        return TradingState(
            ts_event=now,
            ts_init=now,
            state=mode,
            seq=current.seq + 1 if current is not None else 1,
            reason=reason,
            source=source,
            operator=operator,
            changed_ns=now,
            heartbeat_interval_ms=self._hb_ms,
            halted_strategies=strategies,
            hard_triggers=sorted(self.hard_triggers),
        )

    def _record(self, state: TradingState) -> TradingState:
        """Store and audit the new state; only then does the caller publish it."""
        self._store.set(STATE_KEY, self._encoder.encode(state))
        self.audit.append("transition", msgspec.to_builtins(state), state.ts_event)
        self.state = state
        log.warning(
            "trading state -> %s seq=%d source=%s operator=%s reason=%s strategies=%s",
            state.state,
            state.seq,
            state.source,
            state.operator,
            state.reason,
            ",".join(state.halted_strategies) or "-",
        )
        return state

    def _transition(self, state: TradingState) -> TradingState:
        """Prepare execution for a restricting transition, then record it."""
        if self._restricts(state):
            self.prepare(state)
            # Stamp the record after execution stopped taking orders: "recorded at" is then a
            # moment after which no order can have reached the venue.
            now = self._clock.time_ns()
            state = msgspec.structs.replace(state, ts_event=now, ts_init=now, changed_ns=now)
        return self._record(state)

    def _restricts(self, state: TradingState) -> bool:
        """True when the new state stops orders (any mode but ACTIVE, or a new strategy halt)."""
        added = set(state.halted_strategies) - set(self.state.halted_strategies)
        return state.state != "ACTIVE" or bool(added)

    # --- commands -------------------------------------------------------------------------

    def apply(self, cmd: Command) -> TradingState:
        """Carry out one operator command; raise CommandRefused with a reason otherwise."""
        if cmd.action == "status":
            return self.state
        try:
            state = self._command(cmd)
        except CommandRefused as exc:
            self._audit_command(cmd, f"refused: {exc}")
            raise
        self._audit_command(cmd, f"seq {state.seq}")
        return state

    def _command(self, cmd: Command) -> TradingState:
        """The transition a command asks for (or the current state when nothing changes)."""
        mode = COMMAND_MODES.get(cmd.action)
        if mode is None:
            raise CommandRefused(f"unknown action {cmd.action!r}")
        reason = cmd.reason or f"{cmd.action} by {cmd.source}"
        if cmd.strategy:
            return self._strategy_command(cmd, reason)
        if tighter(self.state.state, mode):
            self._check_loosening(cmd)
        elif cmd.action == "resume":
            return self.state  # already ACTIVE: nothing to record
        strategies = self._strategies()
        return self._transition(self._build(mode, reason, cmd.source, cmd.operator, strategies))

    def _strategy_command(self, cmd: Command, reason: str) -> TradingState:
        """halt / resume of one strategy; other actions are fleet-wide only."""
        strategies = self._strategies()
        if cmd.action == "halt":
            strategies[cmd.strategy] = reason
        elif cmd.action == "resume":
            if cmd.strategy not in strategies:
                return self.state
            self._check_loosening(cmd)
            del strategies[cmd.strategy]
        else:
            raise CommandRefused(f"{cmd.action} applies to the whole fleet, not one strategy")
        mode = self.state.state
        return self._transition(self._build(mode, reason, cmd.source, cmd.operator, strategies))

    def _check_loosening(self, cmd: Command) -> None:
        """Loosening needs an operator, no hard trigger, and the cooldown to have passed."""
        if not cmd.operator.strip():
            raise CommandRefused(f"{cmd.action} needs an operator name (--operator)")
        if self.hard_triggers:
            held = ", ".join(f"{k} ({v})" for k, v in sorted(self.hard_triggers.items()))
            raise CommandRefused(f"a hard trigger is still active: {held}")
        left_ns = self.state.changed_ns + self._cooldown_ns - self._clock.time_ns()
        if left_ns > 0:
            raise CommandRefused(
                f"cooldown: {left_ns / 1e9:.1f} s left since the last transition (seq {self.state.seq})"
            )

    def _audit_command(self, cmd: Command, outcome: str) -> None:
        """Every command is in the audit log, refused ones included."""
        record = msgspec.to_builtins(cmd)
        record["outcome"] = outcome
        self.audit.append("command", record, self._clock.time_ns())

    # --- automatic triggers ---------------------------------------------------------------

    def tighten(self, mode: TradingMode, reason: str, source: str) -> TradingState | None:
        """Move to `mode` if it is tighter than the current one; None when nothing changes."""
        if not tighter(mode, self.state.state):
            return None
        return self._transition(self._build(mode, reason, source, "", self._strategies()))

    def on_panic(self, panic: Panic) -> TradingState | None:
        """A risk panic rule fired: audit it, tighten the state (never loosen)."""
        self.audit.append("panic", msgspec.to_builtins(panic), self._clock.time_ns())
        source = f"panic:{panic.rule}"
        if panic.action == "disable_strategy":
            if not panic.strategy or panic.strategy in self.state.halted_strategies:
                return None
            strategies = {**self._strategies(), panic.strategy: panic.detail}
            built = self._build(self.state.state, panic.detail, source, "", strategies)
            return self._transition(built)
        return self.tighten(PANIC_MODES[panic.action], panic.detail, source)

    def on_deadman(self, trip: DeadmanTrip) -> TradingState | None:
        """A service heard no state: latch HALTED unless a later transition already superseded."""
        self.audit.append("trigger", msgspec.to_builtins(trip), self._clock.time_ns())
        if trip.last_seq < self.state.seq:
            return None  # that service will hear the newer state and obey it
        reason = f"{trip.instance} heard no ctl.state for {trip.silent_ms} ms"
        return self.relatch(reason, "deadman")

    def relatch(self, reason: str, source: str) -> TradingState:
        """A new HALTED (or EMERGENCY) transition, so services tripped at the old seq rejoin."""
        mode: TradingMode = "EMERGENCY" if self.state.state == "EMERGENCY" else "HALTED"
        return self._transition(self._build(mode, reason, source, "", self._strategies()))

    def set_trigger(self, trigger: str, active: bool, detail: str) -> TradingState | None:
        """A hard trigger changed: active halts (latched); inactive only allows a later resume."""
        record = {"trigger": trigger, "active": active, "detail": detail}
        self.audit.append("trigger", record, self._clock.time_ns())
        if not active:
            self.hard_triggers.pop(trigger, None)
            self.state = msgspec.structs.replace(
                self.state, hard_triggers=sorted(self.hard_triggers)
            )
            return None  # releasing the button never resumes anything (ISO 13850)
        self.hard_triggers[trigger] = detail
        source = TRIGGER_SOURCES.get(trigger, "gpio")
        mode: TradingMode = "EMERGENCY" if self.state.state == "EMERGENCY" else "HALTED"
        return self._transition(self._build(mode, detail, source, "", self._strategies()))

    def heartbeat(self) -> TradingState:
        """The current state, re-stamped for re-publication."""
        return msgspec.structs.replace(self.state, ts_init=self._clock.time_ns())
