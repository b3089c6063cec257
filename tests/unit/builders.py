"""Small builders for wire messages and config used across the unit tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from libs.common.config import Instrument, RiskLimits
from libs.common.messages import Fill, OrderRequest, Quote, Signal, TradingState

D = Decimal
T0 = 1_723_161_254_000_000_000  # an event time inside the bundled recording (ns)
MS = 1_000_000

BTC = Instrument(base="BTC", quote="USDT", price_increment=D("0.01"), size_increment=D("0.00001"))


def limits(**overrides: Any) -> RiskLimits:
    """Limits like the shipped config, for BTCUSDT only."""
    base: dict[str, Any] = {
        "max_order_qty": {"BTCUSDT": D("0.002")},
        "max_position": {"BTCUSDT": D("0.003")},
        "max_order_notional": D("500"),
        "collar_bps": D("50"),
        "max_orders_per_window": 3,
        "rate_window_ms": 10_000,
    }
    base.update(overrides)
    return RiskLimits(**base)


def quote(
    bid: str = "60000.00",
    ask: str = "60000.10",
    bid_qty: str = "1",
    ask_qty: str = "1",
    symbol: str = "BTCUSDT",
    ts: int = T0,
    update_id: int = 1,
) -> Quote:
    """A top-of-book quote."""
    return Quote(
        ts_event=ts,
        ts_init=ts,
        venue="binance",
        symbol=symbol,
        bid_px=D(bid),
        bid_qty=D(bid_qty),
        ask_px=D(ask),
        ask_qty=D(ask_qty),
        update_id=update_id,
    )


def signal(
    side: str = "buy",
    qty: str = "0.001",
    ref_px: str = "60000.10",
    limit_px: str | None = None,
    symbol: str = "BTCUSDT",
    ts: int = T0,
    signal_id: str = "sig-1",
) -> Signal:
    """A strategy signal; a limit order when limit_px is given."""
    return Signal(
        ts_event=ts,
        ts_init=ts,
        signal_id=signal_id,
        strategy="ofi",
        venue="binance",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=D(qty),
        order_type="market" if limit_px is None else "limit",
        limit_px=None if limit_px is None else D(limit_px),
        ref_px=D(ref_px),
    )


def order(
    coid: str,
    side: str = "buy",
    qty: str = "0.5",
    limit_px: str | None = None,
    symbol: str = "BTCUSDT",
    ts: int = T0,
) -> OrderRequest:
    """A risk-approved order; a limit order when limit_px is given."""
    return OrderRequest(
        ts_event=ts,
        ts_init=ts,
        client_order_id=coid,
        signal_id=coid,
        strategy="ofi",
        venue="binance",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type="market" if limit_px is None else "limit",
        qty=D(qty),
        limit_px=None if limit_px is None else D(limit_px),
    )


def fill(
    seq: int,
    side: str = "buy",
    qty: str = "0.001",
    price: str = "60000",
    fee: str = "0",
    symbol: str = "BTCUSDT",
) -> Fill:
    """An execution with its gap-free fill_seq."""
    return Fill(
        ts_event=T0 + seq,
        ts_init=T0 + seq,
        fill_seq=seq,
        fill_id=f"o-{seq}",
        client_order_id=f"o-{seq}",
        strategy="ofi",
        venue="binance",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=D(qty),
        price=D(price),
        fee=D(fee),
        fee_asset="USDT",
        liquidity="taker",
    )


def trading_state(
    state: str = "ACTIVE", seq: int = 1, heartbeat_interval_ms: int = 100
) -> TradingState:
    """A trading-state message as the kill switch publishes it."""
    return TradingState(
        ts_event=T0,
        ts_init=T0,
        state=state,  # type: ignore[arg-type]
        seq=seq,
        reason="test",
        source="test",
        heartbeat_interval_ms=heartbeat_interval_ms,
    )
