"""Merge every instance's counters into summary.json, and the one-line live status."""

from __future__ import annotations

from collections import Counter
from typing import Any

SCALED_SERVICES = ("signal",)  # replicas each count distinct messages, so their counters add up


def latest(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """A single-writer service's most recent instance (its counters survive restarts)."""
    return max(docs, key=lambda d: d["updated_ns"]) if docs else {}


def add_counts(docs: list[dict[str, Any]], key: str) -> dict[str, int]:
    """Sum per-symbol (or per-reason) count tables across instances."""
    total: Counter[str] = Counter()
    for doc in docs:
        total.update(doc.get(key) or {})
    return dict(sorted(total.items()))


def build_summary(stats: dict[str, list[dict[str, Any]]], extra: dict[str, Any]) -> dict[str, Any]:
    """The documented summary.json: counts, positions, PnL, latency."""
    md = latest(stats.get("market-data", []))
    sig_docs = stats.get("signal", [])
    risk = latest(stats.get("risk", []))
    exe = latest(stats.get("execution", []))
    ks = latest(stats.get("kill-switch", []))
    singles = [md, risk, exe]
    rejected = Counter(risk.get("orders_rejected") or {})
    rejected.update(exe.get("orders_rejected") or {})
    return {
        **extra,
        "ticks_published": md.get("ticks_published", {}),
        "ticks_received": add_counts(sig_docs, "ticks_received"),
        "sequence_gaps": sum(d.get("sequence_gaps", 0) for d in [*singles, *sig_docs]),
        "decode_errors": sum(d.get("decode_errors", 0) for d in [*singles, *sig_docs]),
        "feed_parse_errors": md.get("parse_errors", 0),
        "feed_bad_lines": md.get("bad_lines", 0),
        "feed_unknown_symbol_drops": md.get("unknown_symbol_drops", 0),
        "signals": sum(add_counts(sig_docs, "signals").values()),
        "signals_by_symbol": add_counts(sig_docs, "signals"),
        "orders_submitted": exe.get("orders_received", 0),
        "orders_rejected": dict(sorted(rejected.items())),
        "order_timeouts": risk.get("order_timeouts", 0),
        "fills": exe.get("fills", 0),
        "working_orders": exe.get("working_orders", 0),
        "positions": risk.get("positions", {}),
        "avg_prices": risk.get("avg_prices", {}),
        "marks": risk.get("marks", {}),
        "fees": risk.get("fees", "0"),
        "realized_pnl": risk.get("realized_pnl", "0"),
        "unrealized_pnl": risk.get("unrealized_pnl", "0"),
        "tick_to_order_latency": {
            "p50_ns": exe.get("tick_to_order_p50_ns"),
            "p99_ns": exe.get("tick_to_order_p99_ns"),
            "samples": exe.get("tick_to_order_samples", 0),
            "from": "market-data publish call to execution receipt (CLOCK_MONOTONIC)",
        },
        "trading_state": {"state": ks.get("state"), "seq": ks.get("state_seq")},
    }


def status_line(stats: dict[str, list[dict[str, Any]]], elapsed_s: float) -> str:
    """One line: progress through the feed and what the fleet has done so far."""
    s = build_summary(stats, {})
    published = sum(s["ticks_published"].values())
    received = sum(s["ticks_received"].values())
    rejected = sum(s["orders_rejected"].values())
    state = s["trading_state"]["state"] or "?"
    return (
        f"[{elapsed_s:6.1f}s] ticks published {published} received {received} | signals {s['signals']} | "
        f"orders {s['orders_submitted']} | fills {s['fills']} | rejected {rejected} | "
        f"gaps {s['sequence_gaps']} | state {state} | realized {s['realized_pnl']}"
    )
