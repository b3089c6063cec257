"""What a service believes about the trading state, failing closed.

Trading is allowed only when the last state heard permits it and was heard within
`missed_heartbeats` heartbeat intervals. Silence for longer trips the dead man's switch: the
service treats the fleet as HALTED and stays so until it hears a *newer* transition (a kill
switch that thaws and re-sends the same ACTIVE state does not resume anything by itself).
A service that has never heard the state does not trade.
"""

from __future__ import annotations

from .clock import Clock
from .messages import TradingState
from .metrics import TRADING_ALLOWED, TRADING_MODE, TRADING_MODES, TRADING_STATE

# Refusal codes for each mode that stops new orders (REDUCING lets reducing orders through).
MODE_REFUSALS = {
    "REDUCING": "trading_reducing",
    "PAUSED": "trading_paused",
    "HALTED": "trading_halted",
    "EMERGENCY": "trading_emergency",
}


class TradingGate:
    """Tracks ctl.state and answers 'may this order go now?'."""

    def __init__(self, clock: Clock, missed_heartbeats: int = 3) -> None:
        self._clock = clock
        self._missed = missed_heartbeats
        self.state: TradingState | None = None
        self._heard_mono_ns = 0
        self.tripped_seq: int | None = None  # dead man's switch tripped at this seq
        self.prepared_seq = 0  # execution: a restricting transition is announced but not heard
        self._shown = ""

    def on_state(self, state: TradingState) -> bool:
        """Apply a state message; True when its seq is new (the caller acknowledges it)."""
        if self.state is not None and state.seq < self.state.seq:
            return False  # a stale or replayed state never rolls the seq back
        is_new = self.state is None or state.seq != self.state.seq
        self.state = state
        self._heard_mono_ns = self._clock.monotonic_ns()
        if self.tripped_seq is not None and state.seq > self.tripped_seq:
            self.tripped_seq = None  # a transition made after the silence: obey it
        TRADING_STATE.set(state.seq)
        self.show()
        return is_new

    def prepare(self, seq: int) -> bool:
        """Block new orders until state `seq` is heard (two-phase halt); False if already heard."""
        if self.state is not None and self.state.seq >= seq:
            return False
        self.prepared_seq = max(self.prepared_seq, seq)
        self.show()
        return True

    def silent_ms(self) -> int:
        """Milliseconds since the state was last heard."""
        return (self._clock.monotonic_ns() - self._heard_mono_ns) // 1_000_000

    def too_silent(self) -> bool:
        """True when more than `missed_heartbeats` heartbeat intervals passed without the state."""
        if self.state is None:
            return False
        return self.silent_ms() > self._missed * self.state.heartbeat_interval_ms

    def check_deadman(self) -> bool:
        """Trip (latch) the dead man's switch if the state went silent; True on the tripping call.

        Call it only after reading every waiting control message: a service that was merely
        busy has the heartbeats in its queue, and that is not the kill switch's silence.
        """
        if self.tripped_seq is not None or not self.too_silent():
            return False
        assert self.state is not None  # too_silent() is False without a state
        self.tripped_seq = self.state.seq
        self.show()
        return True

    def mode(self) -> str:
        """The mode this service obeys now: a silent or tripped state counts as HALTED."""
        if self.state is None:
            return "UNKNOWN"
        if self.tripped_seq is not None or self.prepared_seq > self.state.seq or self.too_silent():
            return "HALTED"
        return self.state.state

    def refusal(self, strategy: str = "", reduces: bool = False) -> str:
        """Empty when this order may go, else the reason code for refusing it.

        `reduces`: the order strictly shrinks |position| (allowed in REDUCING).
        """
        if self.state is None:
            return "state_unknown"
        if self.tripped_seq is not None or self.too_silent():
            return "state_stale"
        if self.prepared_seq > self.state.seq:
            return "halt_pending"
        mode = self.state.state
        if mode != "ACTIVE" and not (mode == "REDUCING" and reduces):
            return MODE_REFUSALS.get(mode, "state_unknown")
        if strategy and strategy in self.state.halted_strategies:
            return "strategy_halted"
        return ""

    def allowed(self) -> bool:
        """True when an opening order may go out right now (ACTIVE and fresh)."""
        ok = not self.refusal()
        TRADING_ALLOWED.set(1 if ok else 0)
        return ok

    def show(self) -> None:
        """Export the mode obeyed now as flotilla_trading_state{state} (only on change)."""
        mode = self.mode()
        if mode == self._shown:
            return
        self._shown = mode
        for name in TRADING_MODES:
            TRADING_MODE.labels(name).set(1 if name == mode else 0)
        TRADING_ALLOWED.set(1 if mode == "ACTIVE" else 0)
