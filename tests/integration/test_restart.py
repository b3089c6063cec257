"""Restarting a service mid-run (flotilla.fleet.Fleet driven directly) loses and repeats nothing."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flotilla.report import recompute
from libs.common.testing.fleet import (
    count_lines,
    finish_fleet,
    fleet_counter,
    journal,
    log_tails,
    running_fleet,
    service_pids_of,
    wait_until,
)

SPEED = {"FLOTILLA__MARKET_DATA__SPEED": "30"}  # the bundled data replays in about 12 s


def nonzero(table: dict[str, str]) -> dict[str, Decimal]:
    """Decimal values by key, zeros dropped (0E-8 == 0 == 0.000)."""
    return {k: Decimal(v) for k, v in table.items() if Decimal(v) != 0}


def fills_so_far(fleet: Any) -> int:
    """Fills execution has reported so far."""
    return int(fleet_counter(fleet, "execution", "fills") or 0)


def check_books_agree(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Risk's positions and PnL equal the journal's; fill_seq runs 1..N in file order, once each."""
    assert summary["sequence_gaps"] == 0 and summary["decode_errors"] == 0
    _, fills = journal(run_dir)
    assert summary["fills"] == count_lines(run_dir / "journal" / "fills.jsonl") == len(fills)
    seqs = [f["fill_seq"] for f in fills]
    assert seqs == list(range(1, len(fills) + 1)), f"fill_seq not gap-free and increasing: {seqs}"
    ids = [(f["client_order_id"], f["fill_id"]) for f in fills]
    assert len(ids) == len(set(ids)), "a fill was journaled twice"
    recomputed = recompute(run_dir)
    assert nonzero(recomputed["positions"]) == nonzero(summary["positions"])
    assert Decimal(recomputed["realized_pnl"]) == Decimal(summary["realized_pnl"])
    assert Decimal(recomputed["fees"]) == Decimal(summary["fees"])
    return fills


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_risk_restart_mid_run_does_not_double_count(run_dir: Path, port_offset: int) -> None:
    with running_fleet(run_dir, port_offset, SPEED) as fleet:
        wait_until(lambda: fills_so_far(fleet) >= 2, 60, 0.2, "fills before the restart")
        fleet.restart("risk")
        assert fleet.procs["risk"].instance == "risk-2"
        codes, summary = finish_fleet(fleet, drain_timeout_s=90)
        risk_doc = max(fleet.stats()["risk"], key=lambda d: d["updated_ns"])
    assert service_pids_of(os.getpid()) == []
    assert set(codes.values()) == {0}, f"{codes}\n{log_tails(run_dir)}"
    risk_1 = (run_dir / "logs" / "risk-1.log").read_text()
    risk_2 = (run_dir / "logs" / "risk-2.log").read_text()
    assert "risk exiting with 0" in risk_1
    assert "restored book: last fill seq" in risk_2, risk_2

    fills = check_books_agree(run_dir, summary)
    assert len(fills) > 2, "no fills after the restart: the test proved little"
    assert risk_doc["instance"] == "risk-2"
    assert risk_doc["last_fill_seq"] == len(fills)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_execution_restart_mid_run_keeps_fill_seq_gap_free(run_dir: Path, port_offset: int) -> None:
    with running_fleet(run_dir, port_offset, SPEED) as fleet:
        wait_until(lambda: fills_so_far(fleet) >= 2, 60, 0.2, "fills before the restart")
        before = fills_so_far(fleet)
        fleet.restart("execution")
        assert fleet.procs["execution"].instance == "execution-2"
        codes, summary = finish_fleet(fleet, drain_timeout_s=90)
    assert service_pids_of(os.getpid()) == []
    assert set(codes.values()) == {0}, f"{codes}\n{log_tails(run_dir)}"
    exec_2 = (run_dir / "logs" / "execution-2.log").read_text()
    assert "journal restored" in exec_2, exec_2

    fills = check_books_agree(run_dir, summary)
    assert len(fills) > before, "no fills after the restart: the test proved little"
    orders, _ = journal(run_dir)
    new_ids = [o["client_order_id"] for o in orders if o["status"] == "new"]
    assert len(new_ids) == len(set(new_ids)), "an order was accepted twice"
