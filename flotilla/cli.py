"""The `flotilla` command: up, service, halt, resume, status, metrics, report."""

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
        "--feed", action="append", default=[], help="replay:PATH[,PATH...] (repeatable)"
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
    for action in ("halt", "resume", "status"):
        c = sub.add_parser(action, help=f"{action} trading (kill switch)")
        c.add_argument("--endpoint", help="kill-switch command socket (default: from config)")
        c.add_argument("--port-offset", type=int, default=0)
        c.add_argument("--timeout-ms", type=int, default=3000)
        if action == "halt":
            c.add_argument("--reason", required=True)
            c.add_argument("--operator", default="")
        if action == "resume":
            c.add_argument("--operator", required=True)
            c.add_argument("--reason", default="")
    met = sub.add_parser("metrics", help="tail one service's metrics (rates for counters)")
    met.add_argument("service", choices=sorted(MODULES))
    met.add_argument("--follow", "-f", action="store_true", help="keep printing, like tail -f")
    met.add_argument("--grep", help="only samples whose name{labels} match this regex")
    met.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    met.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")
    met.add_argument("--endpoint", help="metrics URL (default: from config, on 127.0.0.1)")
    met.add_argument("--port-offset", type=int, default=0)
    rep = sub.add_parser("report", help="recompute positions and PnL from a run's journal")
    rep.add_argument("run_dir", type=Path)
    return p


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
    from .control import run_control

    endpoint = args.endpoint or with_port_offset(cfg.bus, args.port_offset).ctl_cmd
    return run_control(args.command, endpoint, args)


def _up(cfg: FleetConfig, args: argparse.Namespace) -> int:
    """Validate up's arguments, then run the fleet."""
    from .up import parse_feed, parse_speed, run_up

    if not args.run_dir:
        args.run_dir = time.strftime("runs/%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        args.feed = [path for spec in args.feed for path in parse_feed(spec)]
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
