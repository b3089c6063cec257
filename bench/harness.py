"""`make bench`: the real services as separate processes on loopback, each figure beside the
raw-ZeroMQ floor measured in the same run. Prints a table, writes bench/results/<ts>.json.

Every figure is the median of RUNS runs, reported with min and max. Latencies are taken with
CLOCK_MONOTONIC (time.monotonic_ns, one clock for every process on the host) at market-data's
publish call and at execution's receipt of the order. A run that lost or refused anything on the
way fails the whole benchmark: a latency over fewer messages than were sent proves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

from flotilla.fleet import Fleet
from libs.common.bus import RequestClient
from libs.common.config import DEFAULT_CONFIG, load_config, with_port_offset
from libs.common.messages import Command, CommandReply, ControlMessage

from . import floor, halt_floor, micro

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RUNS = 3
BUNDLED_TICKS = 67_980
ORDER_QTY = {"BTCUSDT": "0.001", "ETHUSDT": "0.01"}


class BenchError(Exception):
    """A run lost, refused or mis-counted messages, or did not finish: its figures are void."""


@dataclass(frozen=True)
class LatencyCase:
    """One tick-to-order configuration: tick rate, an order every N ticks, how many ticks."""

    rate_per_s: int
    order_every: int
    ticks: int
    warmup_orders: int  # the first orders (about one second) are excluded from the figures


LATENCY_CASES = [LatencyCase(1_000, 1, 12_000, 1_000), LatencyCase(10_000, 10, 120_000, 1_000)]


# --- running the real fleet -------------------------------------------------------------------


def bench_overrides(**market_data: Any) -> dict[str, str]:
    """Environment for a benchmark fleet: preloaded feed, the pulse strategy, loose limits."""
    env = {
        "FLOTILLA__MARKET_DATA__PRELOAD": "true",
        "FLOTILLA__SIGNAL__STRATEGY": "pulse",
        "FLOTILLA__RISK__LIMITS__MAX_ORDERS_PER_WINDOW": "1000000000",
        # The pulse strategy trades every few ticks and pays the spread each time: the panic
        # rules stay on (their cost is part of the path) but must not stop the measurement.
        "FLOTILLA__RISK__PANIC__MAX_FILLS_PER_WINDOW": "1000000000",
        "FLOTILLA__RISK__PANIC__DAILY_LOSS_LIMIT": "1000000000",
        "FLOTILLA__RISK__PANIC__DRAWDOWN_SOFT": "1000000000",
        "FLOTILLA__RISK__PANIC__DRAWDOWN_HARD": "1000000000",
        # The feed repeats the recording: at each wrap the price jumps back to its start, which
        # a market order meets as slippage. A real jump, but an artefact of looping the data.
        "FLOTILLA__RISK__PANIC__SLIPPAGE_RATIO": "1000000000",
        "FLOTILLA__KILL_SWITCH__RESUME_COOLDOWN_MS": "0",  # the halt bench resumes at once
        "FLOTILLA__DASHBOARD__ENABLED": "false",  # measure the fleet, not the read-only page
        "FLOTILLA_LOG_LEVEL": "WARNING",
    }
    for symbol, qty in ORDER_QTY.items():
        env[f"FLOTILLA__SIGNAL__PULSE__ORDER_QTY__{symbol}"] = qty
        env[f"FLOTILLA__RISK__LIMITS__MAX_POSITION__{symbol}"] = "1000"
    for key, value in market_data.items():
        env[f"FLOTILLA__MARKET_DATA__{key.upper()}"] = str(value)
    return env


def free_port_offset() -> int:
    """A port offset whose whole block (bus and metrics ports) is free on loopback."""
    cfg = load_config()
    for _ in range(50):
        offset = 20_000 + int.from_bytes(os.urandom(2), "big") % 20_000
        if all(_port_free(p + offset) for p in _fleet_ports(cfg)):
            return offset
    raise BenchError("no free block of ports for a benchmark fleet")


def _fleet_ports(cfg: Any) -> list[int]:
    """Every TCP port a fleet binds."""
    ports = [
        int(str(v).rsplit(":", 1)[1])
        for v in msgspec.structs.asdict(cfg.bus).values()
        if str(v).startswith("tcp://")
    ]
    sections = (cfg.market_data, cfg.signal, cfg.risk, cfg.execution, cfg.kill_switch)
    return ports + [s.metrics_port for s in sections]


def _port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class BenchFleet:
    """A fleet in its own run directory and port block; stopped and released on exit."""

    def __init__(self, overrides: dict[str, str], signal_replicas: int = 1) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="flotilla-bench-")
        cfg = load_config()
        overrides = {
            **overrides,
            "FLOTILLA__MARKET_DATA__WAIT_FOR_CONSUMERS__SIGNAL": str(signal_replicas),
        }
        self.fleet = Fleet(cfg, Path(self.tmp.name), DEFAULT_CONFIG, overrides, free_port_offset())
        self.replicas = signal_replicas
        self.peak_rss_kb: dict[str, int] = {}

    def __enter__(self) -> BenchFleet:
        self.fleet.start_all()
        for _ in range(self.replicas - 1):
            self.fleet.start_replica("signal")
        return self

    def __exit__(self, *exc: object) -> None:
        self.fleet.stop_all(10.0)
        self.fleet.close()
        self.tmp.cleanup()

    @property
    def run_dir(self) -> Path:
        """Where the fleet writes its journal and latency samples."""
        return Path(self.tmp.name)

    def wait_drained(self, timeout_s: float) -> None:
        """Wait until every instance reports it has drained its input; fail on a death."""
        deadline = time.monotonic() + timeout_s
        while not self.fleet.all_drained():
            self.fail_if_dead()
            if time.monotonic() > deadline:
                raise BenchError(f"the fleet did not drain within {timeout_s} s")
            time.sleep(0.05)

    def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll check() until true; fail on a dead service or the timeout."""
        deadline = time.monotonic() + timeout_s
        while not check():
            self.fail_if_dead()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)

    def fail_if_dead(self) -> None:
        """Raise with the tail of its log if any instance exited during the run."""
        if dead := self.fleet.dead():
            proc = dead[0]
            log_path = self.run_dir / "logs" / f"{proc.instance}.log"
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise BenchError(f"{proc.instance} exited with {proc.popen.returncode}:\n{tail}")

    def record_peak_rss(self) -> None:
        """Peak resident set size (VmHWM) of every instance so far."""
        for proc in self.fleet.all_procs():
            status = Path(f"/proc/{proc.popen.pid}/status").read_text()
            hwm = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
            )
            self.peak_rss_kb[proc.instance] = hwm

    def stats(self) -> dict[str, list[dict[str, Any]]]:
        """Every instance's counters."""
        return self.fleet.stats()

    def ctl_cmd(self) -> str:
        """The kill switch's command endpoint for this fleet's port block."""
        return with_port_offset(self.fleet.cfg.bus, self.fleet.port_offset).ctl_cmd

    def stop(self) -> None:
        """Stop every service now (execution writes its latency samples on the way out)."""
        self.fleet.stop_all(10.0)


def one(stats: dict[str, list[dict[str, Any]]], service: str) -> dict[str, Any]:
    """The single instance's stats of a service."""
    docs = stats.get(service, [])
    if len(docs) != 1:
        raise BenchError(f"expected one {service} instance's stats, found {len(docs)}")
    return docs[0]


def check_nothing_lost(stats: dict[str, list[dict[str, Any]]], ticks: int) -> int:
    """Every tick reached signal, every signal became an order at execution; returns orders."""
    md, risk, ex = one(stats, "market-data"), one(stats, "risk"), one(stats, "execution")
    published = sum(md["ticks_published"].values())
    received = sum(sum(d["ticks_received"].values()) for d in stats["signal"])
    signals = sum(sum(d["signals"].values()) for d in stats["signal"])
    gaps = {s: sum(d.get("sequence_gaps", 0) for d in docs) for s, docs in stats.items()}
    problems = []
    if published != ticks or received != ticks:
        problems.append(f"ticks: {ticks} asked, {published} published, {received} received")
    if any(gaps.values()):
        problems.append(f"sequence gaps {gaps}")
    if risk.get("signals_received") != signals or ex["orders_received"] != signals:
        problems.append(
            f"{signals} signals, risk saw {risk.get('signals_received')}, execution {ex['orders_received']}"
        )
    if sum(ex["orders_rejected"].values()) or sum(risk["orders_rejected"].values()):
        problems.append(
            f"rejections: risk {risk['orders_rejected']}, execution {ex['orders_rejected']}"
        )
    if problems:
        raise BenchError("messages lost or refused: " + "; ".join(problems))
    return signals


# --- the figures ------------------------------------------------------------------------------


def tick_to_order_run(case: LatencyCase) -> tuple[np.ndarray, dict[str, int]]:
    """One run of the real fleet at case.rate_per_s; post-warm-up samples and peak RSS (kB)."""
    overrides = bench_overrides(rate_per_s=case.rate_per_s, limit_ticks=case.ticks, repeat=3)
    overrides["FLOTILLA__SIGNAL__PULSE__EVERY_TICKS"] = str(case.order_every)
    with BenchFleet(overrides) as bf:
        bf.wait_drained(case.ticks / case.rate_per_s + 60)
        bf.record_peak_rss()
        orders = check_nothing_lost(bf.stats(), case.ticks)
        bf.stop()
        samples = np.load(bf.run_dir / "tick_to_order_ns.npy")
        rss = dict(bf.peak_rss_kb)
    if samples.size != orders:
        raise BenchError(f"{orders} orders but {samples.size} latency samples")
    return samples[case.warmup_orders :], rss


def floor_run(case: LatencyCase) -> np.ndarray:
    """The same topology forwarding pre-encoded bytes (bench/floor.py), warm-up excluded."""
    return floor.chain_floor(
        case.rate_per_s, case.order_every, case.ticks, case.warmup_orders * case.order_every
    )


def throughput_run() -> float:
    """market-data -> signal, flat out over two passes of the bundled data, zero gaps."""
    ticks = 2 * BUNDLED_TICKS
    overrides = bench_overrides(rate_per_s=0, speed=0, repeat=2)
    overrides["FLOTILLA__SIGNAL__PULSE__EVERY_TICKS"] = str(10**9)  # market data only
    with BenchFleet(overrides) as bf:
        bf.wait_drained(120)
        stats = bf.stats()
    md, sig = one(stats, "market-data"), one(stats, "signal")
    received = sum(sig["ticks_received"].values())
    if received != ticks or sig["sequence_gaps"] or sum(md["ticks_published"].values()) != ticks:
        raise BenchError(
            f"throughput run: {ticks} ticks, signal received {received}, gaps {sig['sequence_gaps']}"
        )
    return ticks / ((sig["last_tick_mono_ns"] - md["first_publish_mono_ns"]) / 1e9)


def halt_propagation_run(signal_replicas: int, halts: int, loaded: bool) -> np.ndarray:
    """Halt/resume `halts` times, on an idle fleet (replay over) or while it trades at 1,000
    ticks/s; per halt, from the kill switch recording it to the last instance's ack."""
    limit = 600_000 if loaded else 500
    overrides = bench_overrides(rate_per_s=1_000, repeat=10, limit_ticks=limit)
    overrides["FLOTILLA__SIGNAL__PULSE__EVERY_TICKS"] = "50"
    with BenchFleet(overrides, signal_replicas) as bf:
        if loaded:
            bf.wait_for(lambda: bool(bf.stats().get("market-data")), 60, "the replay to start")
        else:
            bf.wait_drained(60)
        instances = {p.instance for p in bf.fleet.all_procs() if p.service != "kill-switch"}
        halt_seqs = issue_halts(bf.ctl_cmd(), halts)
        time.sleep(1.0)  # acks are recorded at once; give the stats writer a beat
        ks = one(bf.stats(), "kill-switch")
    latencies = []
    for seq in halt_seqs:
        acks = ks["ack_latency_ns"].get(str(seq), {})
        if set(acks) != instances:
            raise BenchError(
                f"halt seq {seq}: acks from {sorted(acks)}, expected {sorted(instances)}"
            )
        latencies.append(max(acks.values()))
    return np.array(latencies, dtype=np.int64)


def issue_halts(endpoint: str, halts: int) -> list[int]:
    """Alternate halt and resume through one command connection (a fresh context per command
    would start threads on the busy cores just as the fleet reacts); the halts' seqs."""
    ctx: zmq.Context[Any] = zmq.Context()
    client: RequestClient[Any] = RequestClient(ctx, endpoint, ControlMessage, 3000)
    try:
        seqs = []
        for _ in range(halts):
            halted = command(client, "halt")
            if not halted.ok or halted.state.state != "HALTED":
                raise BenchError(f"halt refused: {halted.error}")
            seqs.append(halted.state.seq)
            time.sleep(0.01)
            if not command(client, "resume").ok:
                raise BenchError("resume refused")
            time.sleep(0.01)
        return seqs
    finally:
        client.close()
        ctx.term()


def command(client: RequestClient[Any], action: Any) -> CommandReply:
    """One kill-switch command from the benchmark operator; its reply."""
    now = time.time_ns()
    cmd = Command(
        ts_event=now, ts_init=now, action=action, reason="bench", operator="bench", source="cli"
    )
    reply = client.request(cmd)
    if not isinstance(reply, CommandReply):
        raise BenchError(f"unexpected kill-switch reply {type(reply).__name__}")
    return reply


def replay_speed_run() -> dict[str, float]:
    """`flotilla up --speed max --until-end` on the bundled data: ticks/s of the replay phase
    and of the whole command (start-up and drain included)."""
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "flotilla.cli",
            "up",
            "--speed",
            "max",
            "--until-end",
            "--quiet",
            "--run-dir",
            str(run_dir),
            "--port-offset",
            str(free_port_offset()),
        ]
        started = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=ROOT)
        wall = time.monotonic() - started
        store = json.loads((run_dir / "summary.json").read_text())
    ticks = sum(store["ticks_published"].values())
    return {"whole_command_ticks_per_s": ticks / wall, "wall_s": wall}


# --- statistics and output --------------------------------------------------------------------


def percentiles_us(samples: np.ndarray) -> dict[str, float]:
    """p50, p99, p99.9 of nanosecond samples, in microseconds."""
    return {f"p{q:g}": float(np.percentile(samples, q)) / 1000 for q in (50, 99, 99.9)} | {
        "samples": int(samples.size)
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """For every key: the median of the runs, with min and max."""
    keys = runs[0].keys()
    return {
        k: {
            "median": float(np.median([r[k] for r in runs])),
            "min": float(min(r[k] for r in runs)),
            "max": float(max(r[k] for r in runs)),
        }
        for k in keys
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "numpy": np.__version__,
        "kernel": platform.release(),
        "git_commit": commit,
        "clock": "CLOCK_MONOTONIC (time.monotonic_ns) in every process",
    }


def ratio(ours: dict[str, dict[str, float]], base: dict[str, dict[str, float]], key: str) -> float:
    """ours / floor for one summarised key (medians)."""
    return ours[key]["median"] / base[key]["median"]


def measure(runs: int, sections: set[str], halts: int) -> dict[str, Any]:
    """Run every selected figure `runs` times; the results document."""
    out: dict[str, Any] = {"machine": machine(), "runs": runs, "figures": {}}
    figs = out["figures"]
    rss_kb: dict[str, int] = {}
    if "latency" in sections:
        for case in LATENCY_CASES:
            ours, base = [], []
            for _ in range(runs):
                samples, rss = tick_to_order_run(case)
                ours.append(percentiles_us(samples))
                base.append(percentiles_us(floor_run(case)))
                for instance, kb in rss.items():
                    rss_kb[instance] = max(kb, rss_kb.get(instance, 0))
            ours_s, base_s = summarise(ours), summarise(base)
            figs[f"tick_to_order_{case.rate_per_s}_per_s"] = {
                "case": case.__dict__,
                "flotilla_us": ours_s,
                "floor_us": base_s,
                "ratio_p50": ratio(ours_s, base_s, "p50"),
                "ratio_p99": ratio(ours_s, base_s, "p99"),
            }
        figs["peak_rss_mb"] = {k: round(v / 1024, 1) for k, v in sorted(rss_kb.items())}
    if "throughput" in sections:
        ours_t = summarise([{"ticks_per_s": throughput_run()} for _ in range(runs)])
        base_t = summarise(
            [{"ticks_per_s": floor.throughput_floor(2 * BUNDLED_TICKS)} for _ in range(runs)]
        )
        figs["md_to_signal_throughput"] = {
            "flotilla": ours_t,
            "floor": base_t,
            "ratio": ratio(ours_t, base_t, "ticks_per_s"),
        }
    if "halt" in sections:
        for replicas in (1, 3):
            instances = 3 + replicas  # market-data, risk, execution and the signal replicas
            idle = [
                percentiles_us(halt_propagation_run(replicas, halts, False)) for _ in range(runs)
            ]
            loaded = [
                percentiles_us(halt_propagation_run(replicas, halts, True)) for _ in range(runs)
            ]
            base = [percentiles_us(halt_floor.halt_floor(instances, halts)) for _ in range(runs)]
            idle_s, base_s = summarise(idle), summarise(base)
            figs[f"halt_ack_all_signal_x{replicas}"] = {
                "instances": instances,
                "halts_per_run": halts,
                "idle_us": idle_s,
                "trading_1000_ticks_per_s_us": summarise(loaded),
                "floor_us": base_s,
                "ratio_p50_idle": ratio(idle_s, base_s, "p50"),
            }
    if "micro" in sections:
        figs["risk_check_us"] = summarise(
            [percentiles_us(micro.risk_check_latency(20_000)) for _ in range(runs)]
        )
        figs["paper_match_us"] = summarise(
            [percentiles_us(micro.paper_match_latency(20_000)) for _ in range(runs)]
        )
        # With and without metrics alternate, so load from other processes hits both alike.
        on_off = [
            (
                percentiles_us(micro.bus_message_cost(50_000, True)),
                percentiles_us(micro.bus_message_cost(50_000, False)),
            )
            for _ in range(runs)
        ]
        figs["bus_message_us"] = summarise([on for on, _ in on_off])
        figs["bus_message_no_metrics_us"] = summarise([off for _, off in on_off])
        # The median's difference only: a p99 difference is noise from other processes.
        figs["bus_metrics_cost_us"] = summarise(
            [{"p50": on["p50"] - off["p50"]} for on, off in on_off]
        )
    if "replay" in sections:
        figs["replay_speed"] = summarise([replay_speed_run() for _ in range(runs)])
    return out


def table_rows(figs: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, flotilla, floor, ratio) rows of the medians with [min-max]."""
    rows = []
    for rate in (1_000, 10_000):
        fig = figs.get(f"tick_to_order_{rate}_per_s", {})
        for q in ("p50", "p99", "p99.9") if fig else ():
            ours, base = fig["flotilla_us"][q], fig["floor_us"][q]
            rows.append(
                (
                    f"tick-to-order {rate:,}/s {q} (us)",
                    format_range(ours),
                    format_range(base),
                    f"{ours['median'] / base['median']:.2f}",
                )
            )
    if fig := figs.get("md_to_signal_throughput"):
        ours, base = fig["flotilla"]["ticks_per_s"], fig["floor"]["ticks_per_s"]
        rows.append(
            (
                "market-data -> signal (ticks/s)",
                format_range(ours, 0),
                format_range(base, 0),
                f"{fig['ratio']:.2f}",
            )
        )
    for replicas in (1, 3):
        fig = figs.get(f"halt_ack_all_signal_x{replicas}", {})
        for q in ("p50", "p99") if fig else ():
            label = f"halt acked by all {fig['instances']} ({q}, us)"
            ours, base = fig["idle_us"][q], fig["floor_us"][q]
            rows.append(
                (
                    label + " idle",
                    format_range(ours),
                    format_range(base),
                    f"{ours['median'] / base['median']:.2f}",
                )
            )
            rows.append(
                (label + " trading", format_range(fig["trading_1000_ticks_per_s_us"][q]), "", "")
            )
    for name, label in (
        ("risk_check_us", "risk pre-trade check"),
        ("paper_match_us", "paper exchange match"),
        ("bus_message_us", "bus publish+receive per message, metrics on"),
        ("bus_message_no_metrics_us", "bus publish+receive per message, metrics off"),
        ("bus_metrics_cost_us", "bus + sampled timer metrics cost per message"),
    ):
        for q in [q for q in ("p50", "p99") if q in figs.get(name, {})]:
            rows.append((f"{label} {q} (us)", format_range(figs[name][q], 2), "", ""))
    if rss := figs.get("peak_rss_mb"):
        rows.append(("peak RSS (MB)", ", ".join(f"{k} {v}" for k, v in rss.items()), "", ""))
    if fig := figs.get("replay_speed"):
        rows.append(
            (
                "flotilla up --speed max, whole command (ticks/s)",
                format_range(fig["whole_command_ticks_per_s"], 0),
                "",
                "",
            )
        )
    return rows


def print_table(doc: dict[str, Any]) -> None:
    """The figures as an aligned table, with the machine they were measured on."""
    m = doc["machine"]
    print(
        f"machine: {m['cores']} cores, {m['cpu_model']}; Python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), msgspec {m['msgspec']}; commit {m['git_commit']}"
    )
    print(f"each figure: median [min-max] of {doc['runs']} runs; {m['clock']}\n")
    rows = [("figure", "flotilla", "raw ZeroMQ floor", "ratio"), *table_rows(doc["figures"])]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _short(value: Any) -> Any:
    """JSON fallback for numpy scalars."""
    return float(value)


def format_range(s: dict[str, float], digits: int = 1) -> str:
    """'median [min-max]'."""
    return f"{s['median']:,.{digits}f} [{s['min']:,.{digits}f}-{s['max']:,.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    """Measure, print, save; exit 1 if any run lost messages."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=RUNS, help="runs per figure (default 3)")
    p.add_argument("--halts", type=int, default=200, help="halts per propagation run")
    p.add_argument(
        "--only",
        action="append",
        choices=["latency", "throughput", "halt", "micro", "replay"],
        help="run only these figures (repeatable)",
    )
    args = p.parse_args(argv)
    sections = set(args.only or ["latency", "throughput", "halt", "micro", "replay"])
    started = time.time()
    try:
        doc = measure(args.runs, sections, args.halts)
    except (BenchError, floor.FloorError, halt_floor.HaltFloorError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    doc["command"] = "make bench  (python -m bench " + " ".join(argv or sys.argv[1:]) + ")"
    doc["wall_s"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(doc, indent=2, default=_short) + "\n")
    print_table(doc)
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0
