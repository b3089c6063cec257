"""The raw-ZeroMQ floor: Flotilla's sockets, options and wire format, with no work in between.

`chain_floor` runs the tick-to-order path (market-data PUB binds -> signal SUB connects, PUB
connects -> risk SUB binds, REQ connects -> execution REP binds) as four OS processes that only
forward pre-encoded frames, so the fleet's own latency can be read against it. `throughput_floor`
is one PUB -> SUB pair sending flat out. Each process is `python -m bench.floor_node ROLE ...`;
see that module for the start-up handshake (no tick is sent before every subscriber hears).

Counting rule: ticks carry seq 1..ticks; the signal node forwards tick seq when seq % order_every
== 0, so a run makes ticks // order_every orders, and the samples returned are those whose tick
seq > warmup_ticks: ticks // order_every - warmup_ticks // order_every of them. Any lost or
extra tick, signal or order raises FloorError naming the stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 20.0  # four interpreters starting on two shared cores, then the handshake
STOP_S = 5.0  # per child, to exit on its own before it is terminated, then killed
CHAIN_ROLES = ("execution", "risk", "signal", "source")
THROUGHPUT_ROLES = ("counter", "source")

Reports = dict[str, tuple[dict[str, Any], list[bytes]]]


class FloorError(RuntimeError):
    """A floor run lost data or a node failed; the message names the stage."""


class _Fleet:
    """Child processes running bench.floor_node roles, and the ROUTER they report to."""

    def __init__(self, roles: tuple[str, ...], params: dict[str, Any]) -> None:
        self.roles = roles
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a missing node raises
        self.router.bind("tcp://127.0.0.1:*")
        endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.files = contextlib.ExitStack()
        try:
            for role in roles:
                self._spawn(role, str(endpoint), params)
        except BaseException:
            self.close(failed=True)
            raise

    def _spawn(self, role: str, endpoint: str, params: dict[str, Any]) -> None:
        """Start one node; its stderr goes to a temp file quoted on failure."""
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by self.files in close()
        self.logs[role] = self.files.enter_context(log)
        self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_node", role, endpoint, json.dumps(params)],
            cwd=ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.logs[role],
        )

    def __enter__(self) -> _Fleet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=kind is not None)

    def send(self, role: str, kind: str, doc: dict[str, Any]) -> None:
        """One message to one node."""
        self.router.send_multipart([role.encode(), kind.encode(), json.dumps(doc).encode()])

    def connect(self) -> None:
        """Wait for every node's bound endpoints, then tell every node all of them."""
        hellos = self.gather("hello", self.roles, STARTUP_S)
        peers = {k: v for doc, _ in hellos.values() for k, v in doc.items()}
        for role in self.roles:
            self.send(role, "peers", peers)

    def gather(self, kind: str, roles: tuple[str, ...], timeout_s: float) -> Reports:
        """One `kind` message from each role, within the timeout."""
        deadline = time.monotonic() + timeout_s
        got: Reports = {}
        while len(got) < len(roles):
            if time.monotonic() > deadline:
                missing = sorted(set(roles) - set(got))
                raise FloorError(f"no {kind!r} from {missing} within {timeout_s:.0f} s")
            if not self.router.poll(100):
                self._check_alive(set(roles) - set(got))
                continue
            role, got_kind, doc, extra = self._recv()
            if got_kind != kind or role not in roles or role in got:
                raise FloorError(f"unexpected {got_kind!r} from {role} while waiting for {kind!r}")
            got[role] = (doc, extra)
        return got

    def _recv(self) -> tuple[str, str, dict[str, Any], list[bytes]]:
        """One node message; a node's error report becomes a FloorError."""
        identity, kind, body, *extra = self.router.recv_multipart()
        role, doc = identity.decode(), json.loads(body)
        if kind == b"error":
            raise FloorError(f"{role} node failed:\n{doc['traceback']}")
        return role, kind.decode(), doc, extra

    def _check_alive(self, waiting: set[str]) -> None:
        """A node we still wait for that has exited (after a grace for its last message) fails."""
        for role in sorted(waiting):
            code = self.procs[role].poll()
            if code is not None and not self.router.poll(1000):
                raise FloorError(f"{role} node exited ({code}) early:\n{self._stderr(role)}")

    def _stderr(self, role: str) -> str:
        """The tail of a node's stderr."""
        log = self.logs[role]
        log.seek(0)
        return log.read()[-3000:].decode(errors="replace")

    def close(self, failed: bool) -> None:
        """Stop every child (terminate at once on failure), then kill any that will not exit."""
        for proc in self.procs.values():
            if failed and proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_S)
        self.files.close()
        self.ctx.destroy(linger=0)


def _child_env() -> dict[str, str]:
    """This environment, with the project root first on PYTHONPATH (bench is not installed)."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def _run(roles: tuple[str, ...], ready_role: str, params: dict[str, Any]) -> Reports:
    """Start the nodes, wait until `ready_role` hears the source, run, collect every report."""
    with _Fleet(roles, params) as fleet:
        fleet.connect()
        fleet.gather("ready", (ready_role,), STARTUP_S)
        fleet.send("source", "go", {})
        reports = fleet.gather("done", roles, params["timeout_s"] + STOP_S)
        for role in roles:
            fleet.send(role, "bye", {})
        return reports


def _require(ok: bool, stage: str, detail: str, doc: dict[str, Any]) -> None:
    """Raise FloorError naming the stage unless ok."""
    if not ok:
        late = " (node timed out)" if doc.get("timed_out") else ""
        raise FloorError(f"{stage}: {detail}{late}")


def chain_floor(rate_per_s: float, order_every: int, ticks: int, warmup_ticks: int) -> np.ndarray:
    """Tick-to-order latencies (ns, int64) through four raw-ZeroMQ processes, after warm-up."""
    if rate_per_s <= 0 or order_every < 1 or not 0 <= warmup_ticks < ticks:
        raise ValueError("need rate_per_s > 0, order_every >= 1, 0 <= warmup_ticks < ticks")
    timeout_s = STARTUP_S + 10 + 2 * ticks / rate_per_s
    params = {"ticks": ticks, "rate_per_s": rate_per_s, "order_every": order_every}
    reports = _run(CHAIN_ROLES, "risk", params | {"timeout_s": timeout_s})
    seqs, lats = _chain_samples(reports, ticks, order_every)
    return lats[seqs > warmup_ticks]


def _chain_samples(reports: Reports, ticks: int, order_every: int) -> tuple[np.ndarray, np.ndarray]:
    """Check every stage's counts; the execution node's (tick seq, latency ns) arrays."""
    orders = ticks // order_every
    src, sig, risk = (reports[r][0] for r in ("source", "signal", "risk"))
    ex, (seq_bytes, lat_bytes) = reports["execution"]
    _require(src["sent"] == ticks, "source", f"sent {src['sent']} of {ticks} ticks", src)
    got = f"received {sig['received']} of {ticks} ticks, {sig['gaps']} out of sequence"
    _require(sig["received"] == ticks and sig["gaps"] == 0, "md PUB -> signal SUB", got, sig)
    _require(sig["signals"] == orders, "signal", f"sent {sig['signals']} of {orders}", sig)
    got = f"received {risk['received']} of {orders} signals"
    _require(risk["received"] == orders, "signal PUB -> risk SUB", got, risk)
    seqs = np.frombuffer(seq_bytes, dtype=np.int64)
    want = np.arange(order_every, orders * order_every + 1, order_every, dtype=np.int64)
    got = f"received {len(seqs)} of {orders} orders (or out of order)"
    _require(np.array_equal(seqs, want), "risk REQ -> execution REP", got, ex)
    return seqs, np.frombuffer(lat_bytes, dtype=np.int64).copy()


def throughput_floor(ticks: int) -> float:
    """Ticks/s from one PUB to one SUB process flat out: ticks / (last receive - first send)."""
    if ticks < 2:
        raise ValueError("need ticks >= 2")
    params = {"ticks": ticks, "rate_per_s": 0, "timeout_s": STARTUP_S + 10 + ticks / 20_000}
    reports = _run(THROUGHPUT_ROLES, "counter", params)
    src, sink = reports["source"][0], reports["counter"][0]
    _require(src["sent"] == ticks, "source", f"sent {src['sent']} of {ticks} ticks", src)
    got = f"received {sink['received']} of {ticks} ticks, {sink['gaps']} out of sequence"
    ok = sink["received"] == ticks and sink["gaps"] == 0 and sink["last_recv_ns"] > 0
    _require(ok, "md PUB -> SUB", got, sink)
    return ticks / ((sink["last_recv_ns"] - sink["first_send_ns"]) / 1e9)
