"""`flotilla report DIR`: recompute positions and PnL from the journal, independently of the fleet."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from libs.common.positions import Position, quantize_money


def load_fills(run_dir: Path) -> pl.DataFrame:
    """fills.jsonl as a frame, money kept as strings so nothing passes through a float."""
    path = run_dir / "journal" / "fills.jsonl"
    schema = {
        "fill_seq": pl.Int64,
        "ts_event": pl.Int64,
        "symbol": pl.String,
        "side": pl.String,
        "qty": pl.String,
        "price": pl.String,
        "fee": pl.String,
        "client_order_id": pl.String,
    }
    if not path.exists() or path.stat().st_size == 0:
        return pl.DataFrame(schema=schema)
    frame = pl.read_ndjson(path, schema_overrides=schema)
    return frame.select(list(schema)).sort("fill_seq")


def recompute(run_dir: Path) -> dict[str, Any]:
    """Positions, fees and PnL per symbol and in total, from the journal alone."""
    fills = load_fills(run_dir)
    marks = _marks(run_dir)
    positions: dict[str, Position] = {}
    for symbol, group in fills.group_by("symbol", maintain_order=True):
        pos = positions.setdefault(str(symbol[0]), Position())
        for row in group.iter_rows(named=True):
            pos.apply_fill(
                row["side"], Decimal(row["qty"]), Decimal(row["price"]), Decimal(row["fee"])
            )
    realized = sum((p.realized_pnl for p in positions.values()), Decimal(0))
    unrealized = sum((p.unrealized(marks.get(s)) for s, p in positions.items()), Decimal(0))
    return {
        "fills": fills.height,
        "positions": {s: str(p.qty) for s, p in sorted(positions.items())},
        "fees": quantize_money(sum((p.fees for p in positions.values()), Decimal(0))),
        "realized_pnl": quantize_money(realized),
        "unrealized_pnl": quantize_money(unrealized),
        "by_symbol": _per_symbol(fills),
    }


def _marks(run_dir: Path) -> dict[str, Decimal]:
    """Mark prices (last mid per symbol) recorded in summary.json at the end of the run."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    return {s: Decimal(v) for s, v in json.loads(path.read_text()).get("marks", {}).items()}


def _per_symbol(fills: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Fill counts and traded quantity per symbol and side (quantities summed exactly)."""
    out: dict[str, dict[str, Any]] = {}
    for row in (
        fills.group_by(["symbol", "side"])
        .agg(pl.col("qty"), pl.len().alias("n"))
        .iter_rows(named=True)
    ):
        entry = out.setdefault(row["symbol"], {})
        entry[f"{row['side']}_fills"] = row["n"]
        entry[f"{row['side']}_qty"] = str(sum((Decimal(q) for q in row["qty"]), Decimal(0)))
    return out


def run_report(run_dir: Path) -> int:
    """Print the recomputation and whether it matches summary.json."""
    result = recompute(run_dir)
    print(json.dumps(result, indent=2))
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return 0
    summary = json.loads(summary_path.read_text())
    keys = ("fills", "positions", "realized_pnl", "unrealized_pnl", "fees")
    diffs = [k for k in keys if _norm(summary.get(k)) != _norm(result[k])]
    if diffs:
        print(f"MISMATCH with summary.json: {', '.join(diffs)}")
        return 1
    print("matches summary.json")
    return 0


def _norm(value: Any) -> Any:
    """Compare decimal strings by value (0.0010 == 0.001), tables key by key."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if _norm(v) != Decimal(0)}
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value
