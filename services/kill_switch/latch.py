"""The latched trading state: every transition is stored (and audited) before it is published."""

from __future__ import annotations

import logging

import msgspec

from libs.common.clock import Clock
from libs.common.messages import Command, TradingMode, TradingState
from libs.common.store import StateStore

log = logging.getLogger(__name__)
STATE_KEY = "ctl:state"
AUDIT_LOG = "ctl:audit"


class CommandRefused(Exception):
    """The command is not allowed now; the message says why."""


class Latch:
    """Owns the trading state; only explicit commands change it, and a restart keeps it."""

    def __init__(
        self, store: StateStore, clock: Clock, heartbeat_interval_ms: int, initial: TradingMode
    ) -> None:
        self._store = store
        self._clock = clock
        self._hb_ms = heartbeat_interval_ms
        self._encoder = msgspec.json.Encoder()
        self.state = self._load() or self._transition(
            initial, "initial state", "startup", "", seq=1
        )

    def _load(self) -> TradingState | None:
        """The latched state from the store, if any (a HALTED fleet stays HALTED across restarts)."""
        raw = self._store.get(STATE_KEY)
        if raw is None:
            return None
        state = msgspec.json.decode(raw, type=TradingState)
        log.info("latched state restored: %s seq=%d (%s)", state.state, state.seq, state.reason)
        return msgspec.structs.replace(state, heartbeat_interval_ms=self._hb_ms)

    def apply(self, cmd: Command) -> TradingState:
        """Carry out halt / resume; raise CommandRefused with a reason otherwise."""
        if cmd.action == "halt":
            if self.state.state == "HALTED":
                return self.state  # already latched; a second halt changes nothing
            return self._next("HALTED", cmd)
        if cmd.action == "resume":
            if not cmd.operator.strip():
                raise CommandRefused("resume needs an operator name (--operator)")
            if self.state.state == "ACTIVE":
                return self.state
            return self._next("ACTIVE", cmd)
        if cmd.action == "status":
            return self.state
        raise CommandRefused(f"unknown action {cmd.action!r}")

    def _next(self, mode: TradingMode, cmd: Command) -> TradingState:
        """The next transition, with the next seq."""
        reason = cmd.reason or f"{cmd.action} by {cmd.source}"
        return self._transition(mode, reason, cmd.source, cmd.operator, seq=self.state.seq + 1)

    def _transition(
        self, mode: TradingMode, reason: str, source: str, operator: str, seq: int
    ) -> TradingState:
        """Store and audit the new state; only then does the caller publish it."""
        now = self._clock.time_ns()
        state = TradingState(
            ts_event=now,
            ts_init=now,
            state=mode,
            seq=seq,
            reason=reason,
            source=source,
            operator=operator,
            changed_ns=now,
            heartbeat_interval_ms=self._hb_ms,
        )
        encoded = self._encoder.encode(state)
        self._store.set(STATE_KEY, encoded)
        self._store.append(AUDIT_LOG, encoded)
        self.state = state
        log.warning(
            "trading state -> %s seq=%d source=%s operator=%s reason=%s",
            mode,
            seq,
            source,
            operator,
            reason,
        )
        return state

    def heartbeat(self) -> TradingState:
        """The current state, re-stamped for re-publication."""
        now = self._clock.time_ns()
        return msgspec.structs.replace(self.state, ts_init=now)
