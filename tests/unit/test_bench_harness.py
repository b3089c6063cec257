"""`make bench`'s bookkeeping: a run that lost or refused anything is void, and figures are
the median of the runs with min and max."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.harness import BenchError, check_nothing_lost, percentiles_us, summarise


def fleet_stats(**changes: Any) -> dict[str, list[dict[str, Any]]]:
    """Stats of a clean 1,000-tick run with 100 orders, with some counters changed."""
    docs: dict[str, dict[str, Any]] = {
        "market-data": {"ticks_published": {"BTCUSDT": 600, "ETHUSDT": 400}, "sequence_gaps": 0},
        "signal": {
            "ticks_received": {"BTCUSDT": 600, "ETHUSDT": 400},
            "signals": {"BTCUSDT": 60, "ETHUSDT": 40},
            "sequence_gaps": 0,
        },
        "risk": {"signals_received": 100, "orders_rejected": {}, "sequence_gaps": 0},
        "execution": {"orders_received": 100, "orders_rejected": {}, "sequence_gaps": 0},
    }
    for path, value in changes.items():
        service, field = path.split("__")
        docs[service.replace("_", "-")][field] = value
    return {service: [doc] for service, doc in docs.items()}


def test_a_clean_run_passes_and_counts_its_orders() -> None:
    """Nothing lost: the number of orders (latency samples expected) comes back."""
    assert check_nothing_lost(fleet_stats(), 1_000) == 100


@pytest.mark.parametrize(
    "changes",
    [
        {"signal__ticks_received": {"BTCUSDT": 599, "ETHUSDT": 400}},
        {"market_data__ticks_published": {"BTCUSDT": 600, "ETHUSDT": 399}},
        {"signal__sequence_gaps": 3},
        {"risk__signals_received": 99},
        {"execution__orders_received": 98},
        {"risk__orders_rejected": {"max_position": 1}},
        {"execution__orders_rejected": {"state_stale": 2}},
    ],
)
def test_any_loss_or_refusal_voids_the_run(changes: dict[str, Any]) -> None:
    """A lost tick, a gap, a lost signal or order, or any rejection fails the benchmark."""
    with pytest.raises(BenchError):
        check_nothing_lost(fleet_stats(**changes), 1_000)


def test_percentiles_are_reported_in_microseconds() -> None:
    """Nanosecond samples come out as p50/p99/p99.9 in microseconds, with the sample count."""
    samples = np.arange(1, 100_001, dtype=np.int64) * 1_000  # 1 us .. 100 ms
    out = percentiles_us(samples)
    assert out["samples"] == 100_000
    assert out["p50"] == pytest.approx(50_000.5, rel=1e-6)
    assert out["p99"] == pytest.approx(99_000.01, rel=1e-4)


def test_each_figure_is_the_median_of_the_runs_with_min_and_max() -> None:
    """Three runs summarise to median, min and max per key."""
    runs = [{"p50": 300.0}, {"p50": 100.0}, {"p50": 200.0}]
    assert summarise(runs) == {"p50": {"median": 200.0, "min": 100.0, "max": 300.0}}


def test_the_counters_it_reads_are_the_ones_the_services_write() -> None:
    """The keys check_nothing_lost reads exist in risk's real stats (a renamed key would make
    the check silently pass)."""
    from services.risk.book import RiskBook

    assert "orders_rejected" in RiskBook(["BTCUSDT"]).summary()
