"""The contract between execution and a live venue adapter (Binance, Alpaca).

Execution journals an order as `unknown` before it calls `submit`, so a crash or a lost reply
leaves a record that is resolved only by asking the venue (`query` by client order id), never
by sending again. Adapters map the venue's statuses onto Flotilla's `OrderStatus`, keep money
exact (Decimal from the wire text), keep to the venue's rate limits, and retry only calls that
are idempotent (query, open orders, balances; never submit).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from libs.common.messages import OrderRequest, OrderStatus, OrderType, Side


@dataclass(frozen=True)
class VenueOrder:
    """An order as the venue reports it, mapped onto Flotilla's vocabulary."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    status: OrderStatus
    qty: Decimal
    filled_qty: Decimal
    avg_px: Decimal | None = None
    limit_px: Decimal | None = None
    reason: str = ""  # the venue's reason for a rejection or expiry, as a stable code
    update_ns: int = 0  # the venue's timestamp of this state (ns since the epoch)


@dataclass(frozen=True)
class VenueFill:
    """One execution reported by the venue; `trade_id` is unique per venue and symbol."""

    client_order_id: str
    trade_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    fee_asset: str
    liquidity: Literal["maker", "taker"]
    ts_ns: int


class VenueError(Exception):
    """Base of everything a venue call can raise."""


class VenueRejected(VenueError):
    """The venue refused the request; the order certainly does not exist (for submit)."""

    def __init__(self, reason: str, venue_code: str = "", message: str = "") -> None:
        super().__init__(f"{reason} ({venue_code}: {message})" if venue_code else reason)
        self.reason = reason  # a stable, bounded code, e.g. "venue_insufficient_balance"
        self.venue_code = venue_code
        self.message = message


class VenueUnavailable(VenueError):
    """No usable answer (timeout, connection, 5xx): the outcome of the request is unknown."""


class VenueRateLimited(VenueUnavailable):
    """The venue said slow down (429) or banned us for a while (418): wait retry_after_s."""

    def __init__(self, message: str, retry_after_s: float, banned: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.banned = banned


class Venue(Protocol):
    """What execution needs from a live venue. Every call is synchronous with a timeout."""

    name: str  # "binance", "alpaca": the venue label in messages and metrics

    def submit(self, req: OrderRequest) -> VenueOrder:
        """Send one order with req.client_order_id. Never retried inside: a VenueUnavailable
        leaves the outcome unknown and execution resolves it with query()."""
        ...

    def cancel(self, symbol: str, client_order_id: str) -> VenueOrder:
        """Cancel one order; an order that already filled comes back with status 'filled'
        (too late). Raises VenueRejected('venue_unknown_order') for an order the venue never had."""
        ...

    def query(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """The order's current state by client order id; None when the venue has no such order."""
        ...

    def open_orders(self) -> list[VenueOrder]:
        """Every order still working at the venue (all symbols this adapter trades)."""
        ...

    def cancel_all(self) -> list[VenueOrder]:
        """Cancel every working order; the final state of each."""
        ...

    def positions(self) -> dict[str, Decimal]:
        """Net position per symbol (base-asset balances for spot, positions for Alpaca)."""
        ...

    def fills_since(self, cursor: str) -> tuple[list[VenueFill], str]:
        """Fills after `cursor` ("" = from now on) and the new cursor; idempotent."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
