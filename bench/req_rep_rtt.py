"""A bare pyzmq REQ/REP round trip between two processes on loopback TCP: the per-hop cost of
this machine, quoted in the README. Run: .venv/bin/python -m bench.req_rep_rtt"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zmq

ROUNDS = 21_000
WARMUP = 1_000


def serve(url: str) -> None:
    """Echo ROUNDS requests."""
    rep = zmq.Context().socket(zmq.REP)
    rep.bind(url)
    for _ in range(ROUNDS):
        rep.send(rep.recv())


def measure(port: int = 45_123) -> np.ndarray:
    """Round-trip ns of ROUNDS 200-byte requests, warm-up excluded."""
    req = zmq.Context().socket(zmq.REQ)
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "bench.req_rep_rtt", url])
    req.connect(url)
    samples = []
    for _ in range(ROUNDS):
        started = time.monotonic_ns()
        req.send(b"x" * 200)
        req.recv()
        samples.append(time.monotonic_ns() - started)
    server.wait(timeout=30)
    return np.array(samples[WARMUP:])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        serve(sys.argv[1])
    else:
        rtt = measure()
        p50, p99 = (np.percentile(rtt, q) / 1000 for q in (50, 99))
        print(f"REQ/REP round trip over {rtt.size} requests: p50 {p50:.1f} us, p99 {p99:.1f} us")
