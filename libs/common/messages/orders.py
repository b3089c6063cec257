"""Orders, their lifecycle, fills and risk decisions."""

from __future__ import annotations

from typing import Literal

from .base import Message, Money, Side
from .control import HaltPrepare, StateAck
from .signals import OrderType, StreamEnd

OrderStatus = Literal[
    "new", "partially_filled", "filled", "canceled", "rejected", "expired", "unknown"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"filled", "canceled", "rejected", "expired"})


class OrderRequest(Message, frozen=True, kw_only=True, tag="order"):
    """Risk-approved order sent to execution; `client_order_id` makes it idempotent."""

    client_order_id: str
    signal_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: Money
    limit_px: Money | None = None
    origin_mono_ns: int = 0
    reduce_only: bool = False  # execution refuses it unless it shrinks |position|


class CancelRequest(Message, frozen=True, kw_only=True, tag="cancel"):
    """Cancel one working order."""

    client_order_id: str


class FillsSince(Message, frozen=True, kw_only=True, tag="fills_since"):
    """Ask execution for every fill with fill_seq greater than `after_seq` (recovery after restart)."""

    after_seq: int


class OrderReply(Message, frozen=True, kw_only=True, tag="order_reply"):
    """Execution's synchronous answer to an OrderRequest or CancelRequest."""

    client_order_id: str
    accepted: bool
    status: OrderStatus
    reason: str = ""


class OrderUpdate(Message, frozen=True, kw_only=True, tag="order_update"):
    """An order's state after a change; published on exec.order.* and journaled."""

    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    order_type: OrderType
    status: OrderStatus
    qty: Money
    filled_qty: Money
    avg_px: Money | None = None
    limit_px: Money | None = None
    reason: str = ""


class Fill(Message, frozen=True, kw_only=True, tag="fill"):
    """One execution; `fill_seq` is execution's gap-free counter across all symbols."""

    fill_seq: int
    fill_id: str
    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    qty: Money
    price: Money
    fee: Money
    fee_asset: str
    liquidity: Literal["maker", "taker"]


class FillBatch(Message, frozen=True, kw_only=True, tag="fill_batch"):
    """Reply to FillsSince: the missed fills and every order still working."""

    fills: list[Fill]
    last_fill_seq: int
    open_orders: list[OrderUpdate] = []


class RiskDecision(Message, frozen=True, kw_only=True, tag="risk_decision"):
    """Risk's verdict on a signal; a refusal carries a reason code."""

    signal_id: str
    strategy: str
    symbol: str
    accepted: bool
    reason: str = ""
    client_order_id: str = ""


# The kill switch uses the order socket too: HaltPrepare reaches execution on the same path as
# orders, so it is ordered with them (two-phase halt), and execution answers with a StateAck.
OrderChannel = OrderRequest | CancelRequest | FillsSince | HaltPrepare
OrderChannelReply = OrderReply | FillBatch | StateAck
ExecutionEvent = OrderUpdate | Fill | StreamEnd


class Panic(Message, frozen=True, kw_only=True, tag="panic"):
    """A panic rule in risk fired; the kill switch turns it into a transition.

    action: "reduce" -> REDUCING, "halt" -> HALTED, "disable_strategy" -> that strategy halted
    until an operator resumes it. `value` and `threshold` are decimal strings for the audit log.
    """

    rule: str
    action: Literal["reduce", "halt", "disable_strategy"]
    detail: str
    symbol: str = ""
    strategy: str = ""
    value: str = ""
    threshold: str = ""


RiskEvent = RiskDecision | StreamEnd | Panic
