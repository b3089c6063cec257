"""`make bench` building blocks return the samples they promise (functional only: no timings)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench import floor
from bench.floor import FloorError, chain_floor, throughput_floor
from bench.micro import COLLAR_MISS_EVERY, paper_match_latency, risk_check_latency


def test_chain_floor_returns_one_sample_per_order_after_warmup() -> None:
    samples = chain_floor(rate_per_s=2000, order_every=2, ticks=400, warmup_ticks=50)

    # orders for ticks 2, 4, ..., 400 (200), minus those for ticks <= 50 (25)
    assert samples.dtype == np.int64
    assert len(samples) == 400 // 2 - 50 // 2
    assert (samples > 0).all()


def test_chain_floor_counting_rule_with_uneven_numbers() -> None:
    samples = chain_floor(rate_per_s=5000, order_every=3, ticks=100, warmup_ticks=10)

    assert len(samples) == 100 // 3 - 10 // 3


def test_throughput_floor_is_a_positive_finite_rate() -> None:
    rate = throughput_floor(2000)

    assert np.isfinite(rate) and rate > 0


def test_a_node_that_fails_is_reported_by_its_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floor, "CHAIN_ROLES", ("execution", "risk", "signal", "nosuch"))

    with pytest.raises(FloorError, match="nosuch"):
        chain_floor(rate_per_s=1000, order_every=1, ticks=10, warmup_ticks=0)


def test_a_lost_order_is_named_by_its_stage() -> None:
    reports = {
        "source": ({"sent": 10}, []),
        "signal": ({"received": 10, "gaps": 0, "signals": 5}, []),
        "risk": ({"received": 5, "orders": 5}, []),
        "execution": (
            {"orders": 4},
            [np.array([2, 4, 6, 10], np.int64).tobytes(), np.ones(4, np.int64).tobytes()],
        ),
    }

    with pytest.raises(FloorError, match="risk REQ -> execution REP"):
        floor._chain_samples(reports, ticks=10, order_every=2)


def test_risk_check_latency_times_the_real_check_including_refusals() -> None:
    outcomes: Counter[str] = Counter()

    samples = risk_check_latency(200, outcomes)

    assert len(samples) == 200 and (samples > 0).all()
    assert outcomes["price_collar"] == 200 // COLLAR_MISS_EVERY
    assert outcomes[""] == 200 - 200 // COLLAR_MISS_EVERY  # nothing else refused (rate, limits)


def test_paper_match_latency_fills_every_market_order() -> None:
    outcomes: Counter[str] = Counter()

    samples = paper_match_latency(200, outcomes)

    assert len(samples) == 200 and (samples > 0).all()
    assert outcomes == Counter({"fill": 200, "filled": 200})
