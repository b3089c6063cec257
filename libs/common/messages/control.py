"""Control plane: the latched trading state, operator commands and acknowledgements."""

from __future__ import annotations

from typing import Literal

from .base import Message

TradingMode = Literal["ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY"]
CommandAction = Literal["halt", "pause", "reduce", "emergency", "resume", "status"]
# Modes in which no new order may open or grow a position, most restrictive last.
RESTRICTIVENESS: dict[str, int] = {
    "ACTIVE": 0,
    "REDUCING": 1,
    "PAUSED": 2,
    "HALTED": 3,
    "EMERGENCY": 4,
}


class TradingState(Message, frozen=True, kw_only=True, tag="trading_state"):
    """The fleet's trading state; `seq` grows by one per transition and never repeats."""

    state: TradingMode
    seq: int
    reason: str
    source: str
    operator: str = ""
    changed_ns: int = 0
    heartbeat_interval_ms: int = 100
    # Strategies halted on their own (strategy -> reason); their signals are refused by risk.
    halted_strategies: dict[str, str] = {}
    # Hard triggers still active (e.g. "gpio:estop", "gpio:tamper"); resume is refused while any is.
    hard_triggers: list[str] = []


class Command(Message, frozen=True, kw_only=True, tag="command"):
    """An operator's request to the kill switch."""

    action: CommandAction
    reason: str = ""
    operator: str = ""
    source: str = "cli"
    strategy: str = ""  # "" = the whole fleet; else only this strategy (halt / resume)


class StateAck(Message, frozen=True, kw_only=True, tag="state_ack"):
    """A service instance confirms it applied a trading-state seq."""

    service: str
    instance: str
    seq: int
    state: TradingMode


class CommandReply(Message, frozen=True, kw_only=True, tag="command_reply"):
    """The kill switch's answer: the state after the command, and who has acknowledged it."""

    ok: bool
    state: TradingState
    error: str = ""
    acks: dict[str, int] = {}


class StateRequest(Message, frozen=True, kw_only=True, tag="state_request"):
    """A starting service asks for the current state at once instead of waiting a heartbeat."""

    service: str
    instance: str


class DeadmanTrip(Message, frozen=True, kw_only=True, tag="deadman_trip"):
    """A service heard no ctl.state for `silent_ms` and halted itself; the kill switch latches it."""

    service: str
    instance: str
    last_seq: int
    silent_ms: int


class HaltPrepare(Message, frozen=True, kw_only=True, tag="halt_prepare"):
    """Sent to execution before a restricting transition is recorded: stop new orders now.

    Execution refuses new orders until it hears state seq >= `seq` (two-phase halt), so no order
    can reach the venue after the kill switch has recorded the transition.
    """

    seq: int
    state: TradingMode
    strategy: str = ""


ControlMessage = (
    TradingState | Command | StateAck | CommandReply | StateRequest | DeadmanTrip | HaltPrepare
)
