"""RiskService.refusal: the trading gate and recovery come before any pre-trade check."""

from __future__ import annotations

from types import SimpleNamespace

from libs.common.clock import FakeClock
from libs.common.config import DEFAULT_CONFIG, load_config
from libs.common.trading_gate import TradingGate
from services.risk.service import RiskService, client_order_id

from .builders import quote, signal, trading_state


def risk_service() -> tuple[RiskService, FakeClock]:
    """A risk service on the shipped config, without sockets: only its decision logic."""
    clock = FakeClock()
    cfg = load_config(DEFAULT_CONFIG, env={})
    svc = RiskService(SimpleNamespace(cfg=cfg, clock=clock))  # type: ignore[arg-type]
    gate = TradingGate(clock, cfg.missed_heartbeats_to_halt)
    svc.control = SimpleNamespace(gate=gate, drain=lambda: None)  # type: ignore[assignment]
    svc.book.symbols["BTCUSDT"].quote = quote()
    return svc, clock


def ready_service() -> tuple[RiskService, FakeClock]:
    """Trading ACTIVE and fresh, fills recovered."""
    svc, clock = risk_service()
    svc.control.gate.on_state(trading_state("ACTIVE", seq=1))
    svc.needs_recovery = False
    return svc, clock


def test_risk_refuses_everything_until_it_has_heard_the_trading_state() -> None:
    svc, _ = risk_service()
    svc.needs_recovery = False

    assert svc.refusal(signal()) == "state_unknown"


def test_risk_refuses_everything_while_halted() -> None:
    svc, _ = ready_service()
    svc.control.gate.on_state(trading_state("HALTED", seq=2))

    assert svc.refusal(signal()) == "trading_halted"


def test_risk_refuses_everything_when_the_kill_switch_goes_silent() -> None:
    svc, clock = ready_service()
    clock.advance_ms(301)

    assert svc.refusal(signal()) == "state_stale"


def test_risk_refuses_orders_until_it_has_recovered_missed_fills() -> None:
    svc, _ = ready_service()
    svc.needs_recovery = True

    assert svc.refusal(signal()) == "recovering"


def test_risk_accepts_a_good_signal_when_active_and_recovered() -> None:
    svc, _ = ready_service()

    assert svc.refusal(signal()) == ""


def test_risk_refuses_the_same_signal_twice() -> None:
    svc, _ = ready_service()
    svc.seen_signals.add("sig-1")

    assert svc.refusal(signal(signal_id="sig-1")) == "duplicate_signal"
    assert svc.refusal(signal(signal_id="sig-2")) == ""


def test_risk_refuses_a_symbol_that_is_not_configured() -> None:
    svc, _ = ready_service()

    assert svc.refusal(signal(symbol="XRPUSDT")) == "unknown_instrument"


def test_risk_applies_the_configured_limits() -> None:
    svc, _ = ready_service()

    assert svc.refusal(signal(qty="0.003")) == "max_order_qty"  # shipped max is 0.002


def test_client_order_id_is_derived_from_the_signal_and_fits_binance() -> None:
    short = client_order_id("abc")
    long_a = client_order_id("x" * 100)
    long_b = client_order_id("x" * 99 + "y")

    assert short == "fl-abc" == client_order_id("abc")
    assert len(long_a) <= 36 and len(long_b) <= 36
    assert long_a != long_b
