"""Every wire message, grouped in one tagged union per family."""

from .base import Message, Money, Side, opposite
from .control import (
    Command,
    CommandAction,
    CommandReply,
    ControlMessage,
    StateAck,
    TradingMode,
    TradingState,
)
from .market_data import FeedStatus, MarketData, Quote, Trade
from .orders import (
    TERMINAL_STATUSES,
    CancelRequest,
    ExecutionEvent,
    Fill,
    FillBatch,
    FillsSince,
    OrderChannel,
    OrderChannelReply,
    OrderReply,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    RiskDecision,
    RiskEvent,
)
from .signals import OrderType, Signal, SignalMessage, StreamEnd

# Every union that travels on a socket, by family name; proto/ is generated from this.
WIRE_FAMILIES = {
    "market_data": MarketData,
    "signals": SignalMessage,
    "orders": OrderChannel,
    "order_replies": OrderChannelReply,
    "execution_events": ExecutionEvent,
    "risk_events": RiskEvent,
    "control": ControlMessage,
}

__all__ = [
    "TERMINAL_STATUSES",
    "WIRE_FAMILIES",
    "CancelRequest",
    "Command",
    "CommandAction",
    "CommandReply",
    "ControlMessage",
    "ExecutionEvent",
    "FeedStatus",
    "Fill",
    "FillBatch",
    "FillsSince",
    "MarketData",
    "Message",
    "Money",
    "OrderChannel",
    "OrderChannelReply",
    "OrderReply",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Quote",
    "RiskDecision",
    "RiskEvent",
    "Side",
    "Signal",
    "SignalMessage",
    "StateAck",
    "StreamEnd",
    "Trade",
    "TradingMode",
    "TradingState",
    "opposite",
]
