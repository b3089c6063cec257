"""The fleet with a real Redis as its state store (FLOTILLA_REDIS_URL), as in containers."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import redis

from flotilla.report import recompute
from libs.common.testing.fleet import run_up
from libs.common.testing.redis_server import running_redis_server

from .conftest import Slices


def by_value(table: dict[str, str]) -> dict[str, Decimal]:
    """Non-zero quantities by value (0.0010 == 0.001)."""
    return {k: Decimal(v) for k, v in table.items() if Decimal(v) != 0}


def test_fleet_on_redis_counts_every_tick_and_keeps_runs_apart(
    slices: Slices, port_offset: int, tmp_path: Path
) -> None:
    with running_redis_server(tmp_path / "redis") as url:
        env = {**os.environ, "FLOTILLA_REDIS_URL": url}
        first = run_up(tmp_path / "run-a", port_offset, slices.paths, env=env)
        second = run_up(tmp_path / "run-b", port_offset, slices.paths, env=env)
        client = redis.Redis.from_url(url)
        try:
            keys = {k.decode() for k in client.keys("*")}
        finally:
            client.close()

    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert result.summary["ticks_received"] == slices.expected
        assert result.summary["sequence_gaps"] == 0
    # Each run's risk book equals its own journal alone: run b did not inherit run a's fills.
    for name, result in (("run-a", first), ("run-b", second)):
        recomputed = recompute(tmp_path / name)
        assert result.summary["fills"] == recomputed["fills"] > 0
        assert by_value(result.summary["positions"]) == by_value(recomputed["positions"])
        assert Decimal(result.summary["realized_pnl"]) == Decimal(recomputed["realized_pnl"])
    assert not (tmp_path / "run-a" / "state.sqlite").exists()
    assert any(k.startswith("run-run-a:ctl:state") for k in keys)
    assert any(k.startswith("run-run-b:risk:book") for k in keys)
