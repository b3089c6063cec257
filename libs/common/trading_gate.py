"""What a service believes about the trading state, failing closed.

Trading is allowed only when the last state heard is ACTIVE and it was heard within
`missed_heartbeats` heartbeat intervals (dead man's switch). A service that has never heard
the state does not trade.
"""

from __future__ import annotations

from .clock import Clock
from .messages import TradingState
from .metrics import TRADING_ALLOWED, TRADING_STATE


class TradingGate:
    """Tracks ctl.state and answers 'may I trade now?'."""

    def __init__(self, clock: Clock, missed_heartbeats: int = 3) -> None:
        self._clock = clock
        self._missed = missed_heartbeats
        self.state: TradingState | None = None
        self._heard_mono_ns = 0

    def on_state(self, state: TradingState) -> bool:
        """Apply a state message; True when its seq is new (the caller acknowledges it)."""
        is_new = self.state is None or state.seq != self.state.seq
        if self.state is not None and state.seq < self.state.seq:
            return False  # a stale or replayed state never rolls the seq back
        self.state = state
        self._heard_mono_ns = self._clock.monotonic_ns()
        TRADING_STATE.set(state.seq)
        return is_new

    def refusal(self) -> str:
        """Empty when trading is allowed, else the reason code for refusing."""
        if self.state is None:
            return "state_unknown"
        limit_ns = self._missed * self.state.heartbeat_interval_ms * 1_000_000
        if self._clock.monotonic_ns() - self._heard_mono_ns > limit_ns:
            return "state_stale"
        if self.state.state != "ACTIVE":
            return f"trading_{self.state.state.lower()}"
        return ""

    def allowed(self) -> bool:
        """True when an order may go out right now."""
        ok = not self.refusal()
        TRADING_ALLOWED.set(1 if ok else 0)
        return ok
