"""`flotilla up`: run the fleet on recorded data until the end (or Ctrl-C), then summarise."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from libs.common.config import DEFAULT_CONFIG, FleetConfig

from .fleet import Fleet
from .summary import build_summary, status_line

log = logging.getLogger(__name__)
STOP_BUDGET_S = 4.0  # Ctrl-C to last process gone stays under 5 s


class Interrupted(Exception):
    """The operator pressed Ctrl-C (or the fleet got SIGTERM)."""


def parse_feed(spec: str) -> list[str]:
    """`replay:a.gz,b.gz` -> absolute paths (`binance` is handled by the caller)."""
    kind, _, rest = spec.partition(":")
    if kind != "replay" or not rest:
        raise ValueError(f"unsupported feed {spec!r}: expected replay:PATH[,PATH...] or binance")
    paths = [Path(p).expanduser().resolve() for p in rest.split(",") if p]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"recording not found: {', '.join(missing)}")
    return [str(p) for p in paths]


def parse_speed(text: str) -> float:
    """`max` -> 0 (no pacing); otherwise a positive multiple of recorded pace."""
    if text == "max":
        return 0.0
    speed = float(text)
    if speed <= 0:
        raise ValueError("speed must be > 0 or 'max'")
    return speed


def run_up(cfg: FleetConfig, args: Any) -> int:
    """Start, watch, drain, stop, summarise; the exit code says whether it all went cleanly."""
    run_dir = Path(args.run_dir).resolve()
    if (run_dir / "journal").exists() or (run_dir / "state.sqlite").exists():
        print(
            f"flotilla up: {run_dir} already holds a run; choose a new --run-dir", file=sys.stderr
        )
        return 2
    overrides = {"FLOTILLA__MARKET_DATA__SPEED": str(args.speed)}
    if args.feed:
        overrides["FLOTILLA__MARKET_DATA__FEED"] = json.dumps(args.feed)
    if getattr(args, "live_feed", ""):
        overrides["FLOTILLA__MARKET_DATA__SOURCE"] = args.live_feed
        overrides["FLOTILLA__MARKET_DATA__VENUE_URL"] = args.venue_url
    if getattr(args, "venue", ""):
        overrides["FLOTILLA__EXECUTION__VENUE"] = args.venue
        if args.venue_url:  # one fake (or testnet) serving both data and orders
            overrides["FLOTILLA__EXECUTION__VENUE_URL"] = args.venue_url
    if getattr(args, "live", False):
        overrides["FLOTILLA__EXECUTION__LIVE"] = "true"
    fleet = Fleet(
        cfg, run_dir, Path(args.config or DEFAULT_CONFIG).resolve(), overrides, args.port_offset
    )
    _raise_on_signals()
    started = time.monotonic()
    outcome = "interrupted"
    try:
        fleet.start_all()
        if url := fleet.start_dashboard():
            print(f"dashboard (read-only): {url}", flush=True)
        outcome = watch(fleet, args, started)
    except Interrupted:
        print("\nstopping the fleet...", file=sys.stderr)
    finally:
        _ignore_signals()
        codes = fleet.stop_all(STOP_BUDGET_S)
    summary = build_summary(fleet.stats(), run_info(args, run_dir, started, outcome, codes))
    fleet.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, run_dir)
    clean = outcome == "drained" and all(c == 0 for c in codes.values())
    return 0 if clean or (outcome == "interrupted" and not args.until_end) else 1


def watch(fleet: Fleet, args: Any, started: float) -> str:
    """Print the status line until drained (with --until-end), a service dies, or Ctrl-C."""
    tty = sys.stdout.isatty()
    last_print = 0.0
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        if note := fleet.dashboard_exit():
            print(f"\n{note}", file=sys.stderr)
        if dead := fleet.dead():
            names = ", ".join(f"{p.instance} (exit {p.popen.returncode})" for p in dead)
            print(f"\nservice died: {names}; see {fleet.run_dir / 'logs'}", file=sys.stderr)
            return "service_died"
        if not args.quiet and (tty or now - last_print >= 5):
            line = status_line(fleet.stats(), now - started)
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            last_print = now
        if args.until_end and fleet.all_drained():
            print()
            return "drained"
        if args.timeout and now - started > args.timeout:
            print(f"\ntimed out after {args.timeout} s", file=sys.stderr)
            return "timeout"


def run_info(
    args: Any, run_dir: Path, started: float, outcome: str, codes: dict[str, int | None]
) -> dict[str, Any]:
    """The run's own facts for the top of summary.json."""
    return {
        "run_dir": str(run_dir),
        "feed": args.feed,
        "speed": "max" if args.speed == 0 else args.speed,
        "outcome": outcome,
        "wall_seconds": round(time.monotonic() - started, 3),
        "exit_codes": codes,
    }


def print_summary(s: dict[str, Any], run_dir: Path) -> None:
    """The end-of-run report for a person."""
    lat = s["tick_to_order_latency"]
    print(f"run: {s['outcome']} in {s['wall_seconds']} s, summary in {run_dir / 'summary.json'}")
    print(f"ticks published {s['ticks_published']} received {s['ticks_received']}")
    print(f"gaps {s['sequence_gaps']}  decode errors {s['decode_errors']}  signals {s['signals']}")
    print(f"orders {s['orders_submitted']}  fills {s['fills']}  rejected {s['orders_rejected']}")
    print(f"positions {s['positions']}  fees {s['fees']}")
    print(
        f"realized PnL {s['realized_pnl']}  unrealized PnL {s['unrealized_pnl']} (quote currency)"
    )
    if lat["samples"]:
        print(
            f"tick-to-order p50 {lat['p50_ns'] / 1000:.0f} us  p99 {lat['p99_ns'] / 1000:.0f} us  ({lat['samples']} orders)"
        )


def _raise_on_signals() -> None:
    """Ctrl-C / SIGTERM interrupt the watch loop (then the fleet is stopped in order)."""

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _ignore_signals() -> None:
    """While stopping, a second Ctrl-C must not abandon children half-stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
