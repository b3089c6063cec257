"""Helpers for integration tests that run a real fleet: free ports, data slices, runs, processes.

Everything here bounds its waits in time and never leaves a process behind on its own.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from libs.common.config import DEFAULT_CONFIG, FleetConfig, load_config, with_port_offset
from libs.common.store import EmbeddedStore

REPO_ROOT = DEFAULT_CONFIG.parents[1]
BUNDLED_DATA = REPO_ROOT / "data" / "binance"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "binance"
BTC_0808 = "spot_btcusdt_20240808.gz"
ETH_0808 = "spot_ethusdt_20240808.gz"
TICK_STREAMS = ("trade", "bookTicker")
_HOST = "127.0.0.1"
_MAX_OFFSET = 23_000  # keeps 9105 + offset below Linux's ephemeral range (32768+)
_LOCKS: dict[int, socket.socket] = {}
T = TypeVar("T")


# --- ports ---------------------------------------------------------------------------------


def fleet_ports(cfg: FleetConfig | None = None, offset: int = 0) -> list[int]:
    """Every TCP port a fleet binds (bus endpoints and metrics), shifted by offset."""
    cfg = cfg or load_config(DEFAULT_CONFIG)
    bus = with_port_offset(cfg.bus, offset)
    ports = [
        int(value.rsplit(":", 1)[1])
        for name in bus.__struct_fields__
        if isinstance(value := getattr(bus, name), str) and value.startswith("tcp://")
    ]
    sections = (cfg.market_data, cfg.signal, cfg.risk, cfg.execution, cfg.kill_switch)
    ports += [s.metrics_port + offset for s in sections if s.metrics_port]
    return ports


def port_is_free(port: int) -> bool:
    """True when nothing holds `port` on loopback (checked by binding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _lock_offset(offset: int) -> bool:
    """Hold a machine-wide lock on an offset (an abstract Unix socket: no file, dies with us)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0flotilla-port-offset-{offset}")
    except OSError:
        sock.close()
        return False
    _LOCKS[offset] = sock
    return True


def release_port_offset(offset: int) -> None:
    """Give back an offset taken by pick_port_offset."""
    sock = _LOCKS.pop(offset, None)
    if sock is not None:
        sock.close()


def pick_port_offset(step: int = 20, cfg: FleetConfig | None = None, tries: int = 500) -> int:
    """An offset (multiple of step, random start) whose every fleet port is free; it stays locked."""
    base = fleet_ports(cfg)
    candidates = range(step, _MAX_OFFSET, step)
    start = random.randrange(len(candidates))
    for i in range(min(tries, len(candidates))):
        offset = candidates[(start + i) % len(candidates)]
        if offset in _LOCKS or not all(port_is_free(p + offset) for p in base):
            continue
        if _lock_offset(offset):
            if all(port_is_free(p + offset) for p in base):
                return offset
            release_port_offset(offset)
    raise RuntimeError(f"no free port offset found in {tries} tries")


@contextmanager
def reserved_port_offset(step: int = 20) -> Iterator[int]:
    """A free port offset for the duration of the block (a pytest fixture body)."""
    offset = pick_port_offset(step)
    try:
        yield offset
    finally:
        release_port_offset(offset)


def wait_listening(port: int, timeout_s: float) -> None:
    """Wait until something accepts TCP connections on loopback `port`."""

    def accepts() -> bool:
        """One connection attempt."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((_HOST, port)) == 0

    wait_until(accepts, timeout_s, what=f"port {port} listening")


# --- data ----------------------------------------------------------------------------------


def head_lines(src: Path, n: int) -> list[bytes]:
    """The first n lines (with their newlines) of a gzip or plain recording."""
    with src.open("rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    lines: list[bytes] = []
    with gzip.open(src, "rb") if gz else src.open("rb") as fh:
        for line in fh:
            if len(lines) >= n:
                break
            lines.append(line)
    return lines


def write_lines(dst: Path, lines: Iterable[bytes]) -> Path:
    """Write lines to dst, gzip-compressed when dst ends in .gz."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    if dst.suffix == ".gz":
        with gzip.open(dst, "wb") as fh:
            fh.write(data)
    else:
        dst.write_bytes(data)
    return dst


def write_slice(src: Path, dst: Path, n: int) -> list[bytes]:
    """Copy the first n lines of a recording to dst; returns those lines."""
    lines = head_lines(src, n)
    write_lines(dst, lines)
    return lines


def tick_symbol(line: bytes) -> str | None:
    """The symbol of a `<ns> <json>` trade or bookTicker line, else None (depth, snapshot, junk)."""
    ts, _, payload = line.partition(b" ")
    if not ts.isdigit():
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    stream = doc.get("stream", "") if isinstance(doc, dict) else ""
    if stream.partition("@")[2] not in TICK_STREAMS:
        return None
    return str(doc["data"]["s"])


def expected_ticks(lines: Iterable[bytes]) -> dict[str, int]:
    """Per-symbol count of trade + bookTicker lines: what market-data should publish."""
    return dict(Counter(s for line in lines if (s := tick_symbol(line)) is not None))


# --- runs ----------------------------------------------------------------------------------


def flotilla_cmd() -> list[str]:
    """The `flotilla` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "flotilla"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flotilla.cli"]


def run_cli(
    args: Sequence[str], timeout_s: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `flotilla ARGS` to completion (own process group, killed on timeout)."""
    proc = spawn_cli(args, env=env)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        reap(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def spawn_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start `flotilla ARGS` in its own session (its pgid is its pid); the caller must reap it."""
    return subprocess.Popen(
        [*flotilla_cmd(), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def up_args(
    run_dir: Path,
    offset: int,
    feed: Sequence[Path] = (),
    speed: str = "max",
    until_end: bool = True,
) -> list[str]:
    """Arguments for `flotilla up` on free ports, quiet."""
    args = ["up", "--speed", speed, "--run-dir", str(run_dir), "--port-offset", str(offset)]
    if feed:
        args += ["--feed", "replay:" + ",".join(str(p) for p in feed)]
    if until_end:
        args.append("--until-end")
    return [*args, "--quiet"]


@dataclass
class UpResult:
    """What a finished `flotilla up` left: exit code, output, summary, leftover processes."""

    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    leftovers: list[int]


def run_up(
    run_dir: Path,
    offset: int,
    feed: Sequence[Path] = (),
    speed: str = "max",
    timeout_s: float = 90,
    env: dict[str, str] | None = None,
) -> UpResult:
    """`flotilla up --until-end` to completion; leftovers lists processes that outlived it."""
    proc = spawn_cli(up_args(run_dir, offset, feed, speed), env=env)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        leftovers = reap(proc)
    return UpResult(proc.returncode, out, err, read_summary(run_dir), leftovers)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of a run, or {} when there is none."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file (missing file: none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def journal(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(order updates, fills) journaled by execution."""
    return read_jsonl(run_dir / "journal" / "orders.jsonl"), read_jsonl(
        run_dir / "journal" / "fills.jsonl"
    )


def count_lines(path: Path) -> int:
    """Complete lines in a file written concurrently (0 when absent)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_stats(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every instance's latest counters from a (possibly running) fleet's embedded store."""
    store = EmbeddedStore(run_dir / "state.sqlite")
    try:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for key in store.keys("stats:"):
            raw = store.get(key)
            if raw is not None:
                doc = json.loads(raw)
                grouped.setdefault(doc["service"], []).append(doc)
        return grouped
    finally:
        store.close()


# --- processes -----------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1, what: str = "condition"
) -> T:
    """Poll until predicate() is truthy and return it; TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0]), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    """Every pid in /proc."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is pgid."""
    return [
        pid
        for pid in _all_pids()
        if (stat := _proc_stat(pid)) is not None
        and stat[0] not in ("Z", "X")
        and int(stat[2]) == pgid
    ]


def children(pid: int) -> list[int]:
    """Live direct children of pid."""
    return [
        p
        for p in _all_pids()
        if (stat := _proc_stat(p)) is not None and stat[0] not in ("Z", "X") and int(stat[1]) == pid
    ]


def cmdline(pid: int) -> str:
    """A process's command line joined by spaces ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def service_children(pid: int) -> dict[str, int]:
    """The `python -m services.<module>` children of pid, by module name."""
    found = {}
    for child in children(pid):
        words = cmdline(child).split()
        i = words.index("-m") + 1 if "-m" in words else len(words)
        if i < len(words) and words[i].startswith("services."):
            found[words[i]] = child
    return found


def kill_group(pgid: int) -> list[int]:
    """SIGKILL whatever is left of process group pgid; returns the pids that were still alive."""
    left = [p for p in group_members(pgid) if p != os.getpid()]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def reap(proc: subprocess.Popen[str]) -> list[int]:
    """Kill what is left of a spawn_cli process group, reap its leader; returns who was left."""
    left = kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return left


def processes_of_run(run_dir: Path) -> list[int]:
    """Live processes (ours) whose environment points FLOTILLA_RUN_DIR at or under run_dir."""
    root = str(run_dir.resolve())
    found = []
    for pid in _all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for item in env:
            if item.startswith(b"FLOTILLA_RUN_DIR="):
                value = item.split(b"=", 1)[1].decode(errors="replace")
                if (value == root or value.startswith(root + "/")) and alive(pid):
                    found.append(pid)
    return found


def log_tails(run_dir: Path, lines: int = 15) -> str:
    """The last lines of every service log of a run, for assertion messages."""
    parts = []
    for path in sorted((run_dir / "logs").glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def stop_cli(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout_s: float = 10) -> int:
    """Signal a running `flotilla` (leader only) and wait for it; kill on timeout."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


# --- the Fleet class, driven directly ---------------------------------------------------------


def service_pids_of(parent: int) -> list[int]:
    """Live `python -m services.*` children of parent (default use: this test process)."""
    return list(service_children(parent).values())


@contextmanager
def running_fleet(
    run_dir: Path, offset: int, overrides: dict[str, str] | None = None, stop_budget_s: float = 8.0
) -> Iterator[Any]:
    """A started flotilla.fleet.Fleet on free ports; always stopped and closed on exit."""
    from flotilla.fleet import Fleet  # the orchestrator under test, not a dependency of libs

    fleet = Fleet(
        load_config(DEFAULT_CONFIG), run_dir, DEFAULT_CONFIG, dict(overrides or {}), offset
    )
    try:
        fleet.start_all()
        yield fleet
    finally:
        fleet.stop_all(stop_budget_s)
        for pid in service_pids_of(os.getpid()):  # anything stop_all missed must not survive
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in fleet.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        fleet.close()


def fleet_counter(fleet: Any, service: str, key: str) -> Any:
    """One counter from a running fleet's latest stats of a service (None if not yet reported)."""
    docs = fleet.stats().get(service, [])
    if not docs:
        return None
    return max(docs, key=lambda d: d["updated_ns"]).get(key)


def finish_fleet(
    fleet: Any, drain_timeout_s: float = 60
) -> tuple[dict[str, int | None], dict[str, Any]]:
    """Wait for the drain, stop every service, write and return summary.json (and exit codes)."""
    from flotilla.summary import build_summary

    wait_until(fleet.all_drained, drain_timeout_s, 0.2, "fleet drained")
    codes = fleet.stop_all(8.0)
    summary = build_summary(fleet.stats(), {"exit_codes": codes})
    (fleet.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return codes, summary
