"""The kill switch over real sockets: halt stops all trading, resume needs an operator."""

from __future__ import annotations

import contextlib
import signal
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flotilla.summary import build_summary
from libs.common.testing.fleet import (
    count_lines,
    journal,
    log_tails,
    read_stats,
    read_summary,
    reap,
    reserved_port_offset,
    run_cli,
    spawn_cli,
    stop_cli,
    up_args,
    wait_until,
)

TRADING_STATUSES = ("new", "partially_filled", "filled")
AUDITED_INSTANCES = ("market-data-1", "signal-1", "risk-1", "execution-1")


def signals_so_far(run_dir: Path) -> int:
    """Signals emitted so far, from the running fleet's stats (at most 500 ms old)."""
    return int(build_summary(read_stats(run_dir), {})["signals"])


def update_for_fill(
    fill: dict[str, Any], updates: list[dict[str, Any]], filled: Decimal
) -> dict[str, Any]:
    """The order update execution journaled together with a fill (same order, filled qty)."""
    matches = [
        u
        for u in updates
        if u["client_order_id"] == fill["client_order_id"]
        and u["status"] in ("partially_filled", "filled")
        and Decimal(u["filled_qty"]) == filled
    ]
    assert matches, f"no order update for fill {fill}"
    return matches[0]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_no_order_after_halt_and_resume_needs_operator(
    run_dir: Path, port_offset: int, tmp_path: Path
) -> None:
    ctl = ["--port-offset", str(port_offset)]
    out, err = (tmp_path / "up.out").open("w"), (tmp_path / "up.err").open("w")
    started_ns = time.time_ns()
    up = spawn_cli(
        up_args(run_dir, port_offset, speed="20", until_end=False), stdout=out, stderr=err
    )
    try:
        fills_path = run_dir / "journal" / "fills.jsonl"
        wait_until(lambda: count_lines(fills_path) >= 1, 60, what="a first fill")

        halt = run_cli(["halt", "--reason", "test", *ctl])
        halt_ns = time.time_ns()
        assert halt.returncode == 0, halt.stdout + halt.stderr
        assert "HALTED" in halt.stdout

        time.sleep(1.0)  # stats are at most 500 ms old: this count includes pre-halt signals
        signals_at_halt = signals_so_far(run_dir)
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):  # at 20x the data has a signal every second or so
            wait_until(
                lambda: (
                    time.monotonic() - started > 2.5 and signals_so_far(run_dir) > signals_at_halt
                ),
                10,
                0.2,
                "signals while halted",
            )
        signals_while_halted = signals_so_far(run_dir) - signals_at_halt

        status = run_cli(["status", *ctl])
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("state HALTED"), status.stdout
        for instance in AUDITED_INSTANCES:
            assert f"  {instance}: ok" in status.stdout, status.stdout

        resume_ns = time.time_ns()
        resume = run_cli(["resume", "--operator", "alice", *ctl])
        assert resume.returncode == 0, resume.stdout + resume.stderr
        assert resume.stdout.startswith("state ACTIVE"), resume.stdout
        assert "operator alice" in resume.stdout

        anonymous = run_cli(["resume", *ctl])
        assert anonymous.returncode == 2, anonymous.stdout + anonymous.stderr
        assert "--operator" in anonymous.stderr

        with reserved_port_offset() as nobody:
            started = time.monotonic()
            silent = run_cli(
                ["halt", "--reason", "x", "--port-offset", str(nobody), "--timeout-ms", "300"],
                timeout_s=20,
            )
            assert silent.returncode != 0, silent.stdout
            assert "no acknowledgement" in silent.stderr
            assert time.monotonic() - started < 10
        code = stop_cli(up, signal.SIGINT, timeout_s=10)
    finally:
        leftovers = reap(up)
        out.close()
        err.close()
    assert code == 0, (tmp_path / "up.err").read_text() + log_tails(run_dir)
    assert leftovers == []

    updates, fills = journal(run_dir)
    stamps = [e["ts_init"] for e in updates + fills]
    assert min(stamps) > started_ns, "journal ts_init is not execution's wall clock"
    halted = [
        u for u in updates if u["status"] in TRADING_STATUSES and halt_ns < u["ts_init"] < resume_ns
    ]
    assert halted == [], "orders went on while HALTED"
    cumulative: dict[str, Decimal] = defaultdict(Decimal)
    for fill in sorted(fills, key=lambda f: f["fill_seq"]):
        cumulative[fill["client_order_id"]] += Decimal(fill["qty"])
        upd = update_for_fill(fill, updates, cumulative[fill["client_order_id"]])
        assert not halt_ns < upd["ts_init"] < resume_ns, f"fill while HALTED: {fill}"
        assert not halt_ns < fill["ts_init"] < resume_ns, f"fill while HALTED: {fill}"
    assert any(f["ts_init"] < halt_ns for f in fills), "no fill before the halt"

    summary = read_summary(run_dir)
    if signals_while_halted:
        assert summary["orders_rejected"].get("trading_halted", 0) >= signals_while_halted, (
            summary["orders_rejected"],
            signals_while_halted,
        )
