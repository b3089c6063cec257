"""Control plane: the latched trading state, operator commands and acknowledgements."""

from __future__ import annotations

from typing import Literal

from .base import Message

TradingMode = Literal["ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY"]
CommandAction = Literal["halt", "resume", "status"]


class TradingState(Message, frozen=True, kw_only=True, tag="trading_state"):
    """The fleet's trading state; `seq` grows by one per transition and never repeats."""

    state: TradingMode
    seq: int
    reason: str
    source: str
    operator: str = ""
    changed_ns: int = 0
    heartbeat_interval_ms: int = 100


class Command(Message, frozen=True, kw_only=True, tag="command"):
    """An operator's request to the kill switch."""

    action: CommandAction
    reason: str = ""
    operator: str = ""
    source: str = "cli"


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


ControlMessage = TradingState | Command | StateAck | CommandReply
