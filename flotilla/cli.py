"""The `flotilla` command: up, service, the kill-switch commands, audit, top, metrics, dashboard,
report."""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
import time
from pathlib import Path

from libs.common.config import (
    ConfigError,
    FleetConfig,
    load_config,
    service_config,
    with_port_offset,
)

from .fleet import MODULES


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its flags."""
    p = argparse.ArgumentParser(prog="flotilla", description="Run and operate a Flotilla fleet.")
    p.add_argument(
        "--config", help="fleet config TOML (default: config/flotilla.toml or $FLOTILLA_CONFIG)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole fleet locally")
    up.add_argument(
        "--feed",
        action="append",
        default=[],
        help="replay:PATH[,PATH...] (repeatable), or binance / alpaca (live; see --venue-url)",
    )
    up.add_argument(
        "--venue",
        choices=("paper", "binance", "alpaca"),
        default="",
        help="where orders go (default: config, the paper exchange); binance: testnet unless --live",
    )
    up.add_argument(
        "--live",
        action="store_true",
        help="allow a venue's production endpoint (real money); without it only test endpoints",
    )
    up.add_argument(
        "--venue-url",
        default="",
        help="live feed: the venue's base URL, e.g. a local fake http://127.0.0.1:8090",
    )
    up.add_argument("--speed", default="max", help="N times recorded pace, or 'max' (default)")
    up.add_argument(
        "--until-end", action="store_true", help="exit when the data is consumed and drained"
    )
    up.add_argument(
        "--run-dir", default="runs/latest", help="where summary, journal, logs and state go"
    )
    up.add_argument(
        "--port-offset", type=int, default=0, help="shift every port (run fleets side by side)"
    )
    up.add_argument(
        "--timeout", type=float, default=0, help="give up after this many seconds (0: never)"
    )
    up.add_argument("--quiet", action="store_true", help="no live status line")
    svc = sub.add_parser("service", help="run one service in this process (what a container runs)")
    svc.add_argument("name", choices=sorted(MODULES))
    _add_control_commands(sub)
    _add_audit_command(sub)
    top = sub.add_parser("top", help="live table of every service of a fleet (rich)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    top.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")
    top.add_argument(
        "--endpoint",
        action="append",
        default=[],
        help="SERVICE=URL of a metrics endpoint (repeatable; default: every service from config)",
    )
    top.add_argument("--port-offset", type=int, default=0)
    met = sub.add_parser("metrics", help="tail one service's metrics (rates for counters)")
    met.add_argument("service", choices=sorted(MODULES))
    met.add_argument("--follow", "-f", action="store_true", help="keep printing, like tail -f")
    met.add_argument("--grep", help="only samples whose name{labels} match this regex")
    met.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    met.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")
    met.add_argument("--endpoint", help="metrics URL (default: from config, on 127.0.0.1)")
    met.add_argument("--port-offset", type=int, default=0)
    _add_dashboard_command(sub)
    rep = sub.add_parser("report", help="recompute positions and PnL from a run's journal")
    rep.add_argument("run_dir", type=Path)
    return p


CONTROL_ACTIONS = {
    "halt": "halt trading: cancel working orders (latched until resume)",
    "pause": "pause: no new orders, working orders stay",
    "reduce": "reduce-only: only orders that shrink a position",
    "emergency": "halt and flatten every position with reduce-only orders",
    "resume": "resume trading (needs --operator; refused in the cooldown or while a trigger holds)",
    "status": "print the trading state and who has acknowledged it",
}


def _add_control_commands(sub: argparse._SubParsersAction) -> None:
    """halt | pause | reduce | emergency | resume | status: one command to the kill switch."""
    for action, text in CONTROL_ACTIONS.items():
        c = sub.add_parser(action, help=text)
        c.add_argument("--endpoint", help="kill-switch command socket (default: from config)")
        c.add_argument("--port-offset", type=int, default=0)
        c.add_argument("--timeout-ms", type=int, default=3000)
        if action == "status":
            continue
        if action in ("halt", "resume"):
            c.add_argument("--strategy", default="", help="only this strategy (default: fleet)")
        c.add_argument("--reason", required=action != "resume", default="")
        c.add_argument("--operator", required=action == "resume", default="")


def _add_audit_command(sub: argparse._SubParsersAction) -> None:
    """audit verify | show | export: the kill switch's hash-chained audit log."""
    aud = sub.add_parser("audit", help="verify, show or export the kill switch's audit log")
    aud.add_argument("audit_command", choices=("verify", "show", "export"))
    aud.add_argument("--run-dir", type=Path, help="a local fleet's run dir (its state.sqlite)")
    aud.add_argument("--redis-url", help="the fleet's Redis (default: $FLOTILLA_REDIS_URL)")
    aud.add_argument("--namespace", help="store namespace (default: the run dir's, or flotilla)")
    aud.add_argument("--file", type=Path, help="verify/show an exported JSON-lines file instead")
    aud.add_argument("--out", type=Path, help="export: write JSON lines here (default: stdout)")


def _add_dashboard_command(sub: argparse._SubParsersAction) -> None:
    """dashboard: the fleet's read-only web page (`flotilla up` starts one by itself)."""
    dash = sub.add_parser("dashboard", help="serve the read-only web page of a fleet")
    dash.add_argument(
        "--run-dir", type=Path, help="the fleet's run dir (default: $FLOTILLA_RUN_DIR)"
    )
    dash.add_argument("--namespace", help="store namespace (default: the run dir's, or from env)")
    dash.add_argument("--host", help="address to serve on (default: [dashboard] host)")
    dash.add_argument("--port", type=int, help="port (default: [dashboard] port + --port-offset)")
    dash.add_argument("--port-offset", type=int, default=0, help="the fleet's --port-offset")
    dash.add_argument(
        "--endpoint",
        action="append",
        default=[],
        help="SERVICE=URL of a metrics endpoint (repeatable; default: every service from config)",
    )
    dash.add_argument("--check", action="store_true", help="exit 0 if the page answers (health)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `flotilla` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "report":
        from .report import run_report

        return run_report(args.run_dir)
    if args.command == "service":
        return run_one_service(args.name, args.config)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"flotilla: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        return _up(cfg, args)
    if args.command == "metrics":
        return _metrics(cfg, args)
    if args.command == "audit":
        from .audit import run_audit

        return run_audit(args)
    if args.command == "top":
        from .top import run_top

        return run_top(cfg, args)
    if args.command == "dashboard":
        from .dashboard import run_dashboard

        return run_dashboard(cfg, args)
    from .control import run_control

    endpoint = args.endpoint or with_port_offset(cfg.bus, args.port_offset).ctl_cmd
    return run_control(args.command, endpoint, args)


def _up(cfg: FleetConfig, args: argparse.Namespace) -> int:
    """Validate up's arguments, then run the fleet."""
    from .up import parse_feed, parse_speed, run_up

    if not args.run_dir:
        args.run_dir = time.strftime("runs/%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        live = [f for f in args.feed if f in ("binance", "alpaca")]
        if live and len(args.feed) > 1:
            raise ValueError("a live feed (binance, alpaca) cannot be combined with other feeds")
        if args.venue_url and not (live or args.venue not in ("", "paper")):
            raise ValueError("--venue-url needs a live --feed or --venue")
        args.live_feed = live[0] if live else ""
        args.feed = [] if live else [p for spec in args.feed for p in parse_feed(spec)]
        args.speed = parse_speed(args.speed)
    except ValueError as exc:
        print(f"flotilla up: {exc}", file=sys.stderr)
        return 2
    return run_up(cfg, args)


def _metrics(cfg: FleetConfig, args: argparse.Namespace) -> int:
    """Resolve the service's metrics URL from config (or --endpoint) and tail it."""
    from .metrics_tail import run_metrics

    port = service_config(cfg, args.service).metrics_port + args.port_offset
    url = args.endpoint or f"http://127.0.0.1:{port}/metrics"
    return run_metrics(args.service, url, args.follow, args.grep, args.interval, args.count)


def run_one_service(name: str, config: str | None) -> int:
    """Run a service in-process, exactly as `python -m services.<name>` does."""
    if config:
        os.environ["FLOTILLA_CONFIG"] = config
    try:
        runpy.run_module(MODULES[name], run_name="__main__", alter_sys=True)
    except SystemExit as done:  # each service's __main__ exits with its code
        return int(done.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
