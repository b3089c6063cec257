"""The five trading modes in risk and execution: what each lets through, cancels and flattens.

Risk and execution run their real decision code here without sockets (a fake runtime that
records what they publish); the paper exchange and the journal are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.clock import FakeClock
from libs.common.config import DEFAULT_CONFIG, load_config
from libs.common.messages import (
    CancelRequest,
    Fill,
    HaltPrepare,
    OrderRequest,
    OrderUpdate,
    StateAck,
)
from libs.common.positions import shrinks_position
from libs.common.trading_gate import TradingGate
from services.execution.service import ExecutionService

from .builders import quote, signal, trading_state
from .test_risk_refusal import ready_service

D = Decimal
LOT = D("0.00001")  # BTCUSDT size increment
lots = st.integers(min_value=-300, max_value=300).map(lambda n: n * LOT)
sizes = st.integers(min_value=1, max_value=300).map(lambda n: n * LOT)
sides = st.sampled_from(["buy", "sell"])


class Recorder:
    """Stands in for a publisher: keeps what was published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, msg: Any) -> None:
        """Record one message."""
        self.sent.append((topic, msg))


@contextmanager
def execution(tmp_path: Path) -> Iterator[tuple[ExecutionService, FakeClock]]:
    """An execution service on the shipped config, journal in tmp_path, no sockets."""
    clock = FakeClock()
    cfg = load_config(DEFAULT_CONFIG, env={})
    rt = SimpleNamespace(
        cfg=cfg, clock=clock, run_dir=tmp_path, service="execution", instance="execution-1"
    )
    svc = ExecutionService(rt)  # type: ignore[arg-type]
    svc.journal.open()
    svc.pub = Recorder()  # type: ignore[assignment]
    svc.control = SimpleNamespace(gate=TradingGate(clock, cfg.missed_heartbeats_to_halt))  # type: ignore[assignment]
    try:
        yield svc, clock
    finally:
        svc.journal.close()


def set_state(svc: Any, mode: str, seq: int, **extra: Any) -> None:
    """Deliver a trading state to a service's gate."""
    svc.control.gate.on_state(msgspec.structs.replace(trading_state(mode, seq=seq), **extra))


def order_now(
    clock: FakeClock, coid: str, side: str, qty: Decimal, limit: str | None = None
) -> OrderRequest:
    """An order stamped with the fake clock's time (so it is not stale)."""
    now = clock.time_ns()
    return OrderRequest(
        ts_event=now,
        ts_init=now,
        client_order_id=coid,
        signal_id=coid,
        strategy="ofi",
        venue="binance",
        symbol="BTCUSDT",
        side=side,  # type: ignore[arg-type]
        order_type="market" if limit is None else "limit",
        qty=qty,
        limit_px=None if limit is None else D(limit),
    )


def build_position(svc: ExecutionService, clock: FakeClock, qty: Decimal) -> None:
    """Trade ACTIVE until execution holds `qty` BTCUSDT (signed)."""
    if qty == 0:
        return
    svc.on_market_data(quote(bid_qty="10", ask_qty="10"))
    reply = svc.on_order(order_now(clock, f"open-{qty}", "buy" if qty > 0 else "sell", abs(qty)))
    assert reply.accepted, reply


def positions_from_journal(svc: ExecutionService) -> dict[str, Decimal]:
    """Net quantity per symbol from every fill execution journaled."""
    net: dict[str, Decimal] = {}
    for fill in svc.fills:
        signed = fill.qty if fill.side == "buy" else -fill.qty
        net[fill.symbol] = net.get(fill.symbol, D(0)) + signed
    return net


# --- REDUCING -----------------------------------------------------------------------------


@given(position=lots, working=sizes, side=sides, qty=sizes)
def test_shrinks_position_never_lets_a_position_grow_or_flip(
    position: Decimal, working: Decimal, side: str, qty: Decimal
) -> None:
    if shrinks_position(position, working, side, qty):
        signed = qty if side == "buy" else -qty
        same_side = working if side == "buy" else -working
        worst = position + same_side + signed
        assert abs(worst) < abs(position)
        assert worst == 0 or (worst > 0) == (position > 0)


@settings(max_examples=200)
@given(position=lots, side=sides, qty=sizes)
def test_risk_in_reducing_refuses_every_order_that_grows_a_position(
    position: Decimal, side: str, qty: Decimal
) -> None:
    svc, _ = ready_service()
    set_state(svc, "REDUCING", seq=2)
    svc.book.symbols["BTCUSDT"].position.qty = position

    reason = svc.refusal(signal(side=side, qty=str(qty)))

    after = position + (qty if side == "buy" else -qty)
    grows = abs(after) >= abs(position) or (after != 0 and (after > 0) != (position > 0))
    if grows:
        assert reason == "trading_reducing"
    else:
        assert reason != "trading_reducing"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=lots, side=sides, qty=sizes)
def test_execution_in_reducing_refuses_every_order_that_grows_a_position(
    tmp_path_factory: Any, position: Decimal, side: str, qty: Decimal
) -> None:
    with execution(tmp_path_factory.mktemp("exec")) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        build_position(svc, clock, position)
        set_state(svc, "REDUCING", seq=2)

        reply = svc.on_order(order_now(clock, "probe", side, qty))

        after = position + (qty if side == "buy" else -qty)
        if abs(after) >= abs(position) or (after != 0 and (after > 0) != (position > 0)):
            assert (reply.accepted, reply.reason) == (False, "trading_reducing")
        else:
            assert reply.accepted, reply


# --- HALTED, PAUSED, EMERGENCY ------------------------------------------------------------


def rest_limit_orders(svc: ExecutionService, clock: FakeClock, n: int) -> None:
    """n resting buy limits far below the touch (they stay working)."""
    svc.on_market_data(quote())
    for i in range(n):
        assert svc.on_order(
            order_now(clock, f"rest-{i}", "buy", D("0.001"), limit="50000")
        ).accepted


def test_halted_cancels_every_working_order_and_reports_each(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        rest_limit_orders(svc, clock, 5)

        set_state(svc, "HALTED", seq=2)
        svc.enforce_state()

        assert svc.paper.working() == []
        cancels = [
            m for _, m in svc.pub.sent if isinstance(m, OrderUpdate) and m.status == "canceled"
        ]  # type: ignore[attr-defined]
        assert sorted(c.client_order_id for c in cancels) == [f"rest-{i}" for i in range(5)]
        assert all(c.reason == "trading_halted" for c in cancels)


def test_paused_keeps_working_orders_but_takes_no_new_ones(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        rest_limit_orders(svc, clock, 3)

        set_state(svc, "PAUSED", seq=2)
        svc.enforce_state()

        assert len(svc.paper.working()) == 3
        reply = svc.on_order(order_now(clock, "new", "buy", D("0.001")))
        assert (reply.accepted, reply.reason) == (False, "trading_paused")


def test_a_cancel_of_a_filled_order_is_reported_too_late(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        build_position(svc, clock, D("0.001"))

        reply = svc.on_cancel(CancelRequest(ts_event=1, ts_init=1, client_order_id="open-0.001"))

        assert (reply.accepted, reply.status, reply.reason) == (
            False,
            "filled",
            "too_late_already_filled",
        )


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=lots, resting=st.integers(min_value=0, max_value=4))
def test_emergency_cancels_everything_and_leaves_every_position_flat(
    tmp_path_factory: Any, position: Decimal, resting: int
) -> None:
    with execution(tmp_path_factory.mktemp("exec")) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        build_position(svc, clock, position)
        rest_limit_orders(svc, clock, resting)

        set_state(svc, "EMERGENCY", seq=2)
        svc.enforce_state()
        svc.on_market_data(quote(bid_qty="10", ask_qty="10"))  # liquidity for the flattening order
        svc.enforce_state()

        assert positions_from_journal(svc).get("BTCUSDT", D(0)) == 0
        assert all(o.req.strategy == "emergency" for o in svc.paper.working())
        flatteners = [f for f in svc.fills if f.strategy == "emergency"]
        assert sum((f.qty for f in flatteners), D(0)) == abs(position)
        # and nothing new gets in while EMERGENCY holds
        reply = svc.on_order(order_now(clock, "late", "buy", D("0.001")))
        assert (reply.accepted, reply.reason) == (False, "trading_emergency")


def test_emergency_flattening_waits_for_liquidity_and_is_sent_once(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        build_position(svc, clock, D("0.002"))
        svc.on_market_data(quote(bid_qty="0.001"))  # only half the position is bid

        set_state(svc, "EMERGENCY", seq=2)
        for _ in range(3):
            svc.enforce_state()
        svc.on_market_data(quote(bid_qty="0.001"))
        svc.enforce_state()

        flatten_orders = [c for c in svc.paper.orders if c.startswith("fl-emg-")]
        assert flatten_orders == ["fl-emg-2-BTCUSDT"]
        assert positions_from_journal(svc)["BTCUSDT"] == 0


def test_a_halted_strategy_loses_its_working_orders_and_others_keep_theirs(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        rest_limit_orders(svc, clock, 2)
        other = msgspec.structs.replace(
            order_now(clock, "other", "buy", D("0.001"), "50000"), strategy="mm"
        )
        assert svc.on_order(other).accepted

        set_state(svc, "ACTIVE", seq=2, halted_strategies={"ofi": "fill throttle"})
        svc.enforce_state()

        assert [o.req.client_order_id for o in svc.paper.working()] == ["other"]
        assert (
            svc.on_order(order_now(clock, "again", "buy", D("0.001"))).reason == "strategy_halted"
        )


def test_halt_prepare_blocks_new_orders_before_the_halt_is_heard(tmp_path: Path) -> None:
    with execution(tmp_path) as (svc, clock):
        set_state(svc, "ACTIVE", seq=1)
        svc.on_market_data(quote())

        ack = svc.on_prepare(HaltPrepare(ts_event=1, ts_init=1, seq=2, state="HALTED"))
        reply = svc.on_order(order_now(clock, "racing", "buy", D("0.001")))

        assert isinstance(ack, StateAck) and ack.seq == 2
        assert (reply.accepted, reply.reason) == (False, "halt_pending")
        assert not any(isinstance(m, Fill) for _, m in svc.pub.sent)  # type: ignore[attr-defined]
