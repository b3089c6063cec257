"""Whole-fleet replays through the real `flotilla up` CLI: counts, journal, report, risk limits."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from libs.common.config import load_config
from libs.common.testing.fleet import journal, log_tails, run_cli, run_up

from .conftest import Slices

MONEY_8DP = re.compile(r"^-?\d+\.\d{8}$")
REQUIRED_COUNTS = ("sequence_gaps", "decode_errors", "signals", "orders_submitted", "fills")


def dec(value: Any) -> Decimal:
    """A decimal string as Decimal; anything else fails the test."""
    assert isinstance(value, str), f"{value!r} is not a decimal string"
    return Decimal(value)


def decimal_table(table: dict[str, Any]) -> dict[str, Decimal]:
    """A per-symbol table of decimal strings, by value, zeros dropped (0.0010 == 0.001)."""
    return {k: d for k, v in table.items() if (d := dec(v)) != 0}


def report_json(stdout: str) -> dict[str, Any]:
    """The JSON document `flotilla report` prints before its verdict line."""
    return json.loads(stdout[: stdout.rindex("}") + 1])


def check_summary_schema(s: dict[str, Any]) -> None:
    """Every documented field is present with the documented type."""
    for key in ("ticks_published", "ticks_received"):
        assert isinstance(s[key], dict) and all(isinstance(v, int) for v in s[key].values()), key
    for key in REQUIRED_COUNTS:
        assert isinstance(s[key], int), key
    assert isinstance(s["orders_rejected"], dict)
    assert all(isinstance(v, int) for v in s["orders_rejected"].values())
    assert isinstance(s["positions"], dict) and s["positions"]
    for qty in s["positions"].values():
        dec(qty)
    for key in ("realized_pnl", "unrealized_pnl", "fees"):
        assert MONEY_8DP.match(s[key]), f"{key}={s[key]!r} is not a decimal string with 8 places"
    lat = s["tick_to_order_latency"]
    assert isinstance(lat["p50_ns"], int) and isinstance(lat["p99_ns"], int), lat
    assert 0 < lat["p50_ns"] <= lat["p99_ns"], lat


def check_fill_lines(fills: list[dict[str, Any]], symbols: set[str]) -> None:
    """Each journaled fill has the documented fields and types."""
    assert fills, "no fills journaled"
    for f in fills:
        assert isinstance(f["ts_event"], int) and f["ts_event"] > 0, f
        assert f["symbol"] in symbols, f
        assert f["side"] in ("buy", "sell"), f
        assert dec(f["qty"]) > 0 and dec(f["price"]) > 0 and dec(f["fee"]) >= 0, f
        assert isinstance(f["client_order_id"], str) and f["client_order_id"], f


@pytest.mark.slow
def test_slice_replay_counts_every_tick_trades_and_report_matches(
    slices: Slices, run_dir: Path, port_offset: int
) -> None:
    res = run_up(run_dir, port_offset, feed=slices.paths, timeout_s=90)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{log_tails(run_dir)}"
    assert res.leftovers == []
    s = res.summary
    assert s["outcome"] == "drained"
    assert set(s["exit_codes"].values()) == {0}, s["exit_codes"]

    assert s["ticks_published"] == slices.expected
    assert s["ticks_received"] == slices.expected
    assert s["sequence_gaps"] == 0
    assert s["decode_errors"] == 0
    assert s["orders_submitted"] > 0
    assert s["fills"] > 0
    check_summary_schema(s)

    orders, fills = journal(run_dir)
    check_fill_lines(fills, set(slices.expected))
    assert len(fills) == s["fills"]
    assert {o["client_order_id"] for o in orders} >= {f["client_order_id"] for f in fills}

    rep = run_cli(["report", str(run_dir)], timeout_s=60)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    recomputed = report_json(rep.stdout)
    assert decimal_table(recomputed["positions"]) == decimal_table(s["positions"])
    assert dec(recomputed["realized_pnl"]) == dec(s["realized_pnl"])
    assert dec(recomputed["unrealized_pnl"]) == dec(s["unrealized_pnl"])
    assert recomputed["fills"] == s["fills"]


@pytest.mark.slow
def test_full_data_trades_both_symbols_within_risk_limits(run_dir: Path, port_offset: int) -> None:
    # At --speed max the recording's 346 s pass in about 3 s, so the path's wall latency (p99
    # 125 ms in the failing run) becomes up to 14 s of market time between a signal's price and
    # its fill: the slippage panic then halts on an artefact of the speed (CI: 15.2 bps > 15 bps
    # after 13 orders). The risk limits, this test's subject, stay as shipped.
    loose_slippage = {"FLOTILLA__RISK__PANIC__SLIPPAGE_RATIO": "1000000000"}
    res = run_up(run_dir, port_offset, timeout_s=100, env=loose_slippage)  # data/binance/*.gz
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{log_tails(run_dir)}"
    assert res.leftovers == []
    s = res.summary
    assert s["trading_state"] == {"state": "ACTIVE", "seq": 1}, log_tails(run_dir)
    assert s["ticks_published"] == s["ticks_received"]
    assert s["sequence_gaps"] == 0 and s["decode_errors"] == 0
    assert s["orders_submitted"] >= 20, s

    orders, fills = journal(run_dir)
    ordered = {o["symbol"] for o in orders if o["status"] == "new"}
    assert ordered == {"BTCUSDT", "ETHUSDT"}, f"orders only for {ordered}"
    assert len({o["client_order_id"] for o in orders}) == s["orders_submitted"]

    limits = load_config().risk.limits
    position: dict[str, Decimal] = defaultdict(Decimal)
    worst: dict[str, Decimal] = defaultdict(Decimal)
    for f in sorted(fills, key=lambda f: f["fill_seq"]):
        sym, qty = f["symbol"], Decimal(f["qty"])
        assert qty <= limits.max_order_qty[sym], f"fill above max_order_qty: {f}"
        position[sym] += qty if f["side"] == "buy" else -qty
        worst[sym] = max(worst[sym], abs(position[sym]))
        assert abs(position[sym]) <= limits.max_position[sym], (
            f"{sym} position {position[sym]} exceeds {limits.max_position[sym]} after {f}"
        )
    assert set(worst) == {"BTCUSDT", "ETHUSDT"}
    assert decimal_table(s["positions"]) == {k: v for k, v in position.items() if v != 0}
