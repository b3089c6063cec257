"""The raw-ZeroMQ floor for halt propagation: one PUB + ROUTER (the kill switch's sockets) and
N processes that each decode the state with msgspec and acknowledge it over a DEALER, exactly
the sockets and messages of the fleet, and nothing else. Time: from just before the publish to
the receipt of the last acknowledgement, CLOCK_MONOTONIC in the parent.

Run as a node: python -m bench.halt_floor node PUB_URL ACK_URL NAME
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

from libs.common.messages import ControlMessage, StateAck, TradingState

ROOT = Path(__file__).resolve().parents[1]
TOPIC = b"ctl.state\0"
JOIN_TIMEOUT_S = 20.0
ACK_TIMEOUT_MS = 2_000


class HaltFloorError(RuntimeError):
    """A node did not join or an acknowledgement never came."""


def state(seq: int) -> TradingState:
    """A trading-state message like the kill switch's."""
    now = time.time_ns()
    return TradingState(
        ts_event=now,
        ts_init=now,
        state="HALTED" if seq % 2 else "ACTIVE",
        seq=seq,
        reason="bench",
        source="cli",
        operator="bench",
        changed_ns=now,
        heartbeat_interval_ms=100,
    )


def halt_floor(nodes: int, halts: int) -> np.ndarray:
    """Per halt, ns from publishing a state to the last of `nodes` acknowledgements."""
    ctx: zmq.Context[Any] = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    for sock in (pub, router):
        sock.setsockopt(zmq.LINGER, 0)
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    ack_port = router.bind_to_random_port("tcp://127.0.0.1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.halt_floor",
                "node",
                f"tcp://127.0.0.1:{pub_port}",
                f"tcp://127.0.0.1:{ack_port}",
                f"n{i}",
            ],
            cwd=ROOT,
        )
        for i in range(nodes)
    ]
    encoder = msgspec.msgpack.Encoder()
    try:
        seq = join(pub, router, encoder, nodes)
        samples = []
        for _ in range(halts):
            seq += 1
            frame = TOPIC + encoder.encode(state(seq))
            started = time.monotonic_ns()
            pub.send(frame)
            wait_acks(router, seq, nodes)
            samples.append(time.monotonic_ns() - started)
            time.sleep(0.02)
        return np.array(samples, dtype=np.int64)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        pub.close()
        router.close()
        ctx.term()


def join(pub: zmq.Socket[Any], router: zmq.Socket[Any], encoder: Any, nodes: int) -> int:
    """Publish probe states until every node has acknowledged one (slow joiners); last seq."""
    joined: set[bytes] = set()
    seq = 0
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while len(joined) < nodes:
        if time.monotonic() > deadline:
            raise HaltFloorError(f"only {len(joined)} of {nodes} nodes joined")
        seq += 1
        pub.send(TOPIC + encoder.encode(state(seq)))
        while router.poll(20):
            joined.add(router.recv_multipart()[0])
    time.sleep(0.2)
    while router.poll(0):  # late acks of probes
        router.recv_multipart()
    return seq + 1000


def wait_acks(router: zmq.Socket[Any], seq: int, nodes: int) -> None:
    """Block until `nodes` acknowledgements of seq have arrived."""
    decoder = msgspec.msgpack.Decoder(ControlMessage)
    acked = 0
    while acked < nodes:
        if not router.poll(ACK_TIMEOUT_MS):
            raise HaltFloorError(f"seq {seq}: {acked} of {nodes} acks")
        ack = decoder.decode(router.recv_multipart()[1])
        if isinstance(ack, StateAck) and ack.seq == seq:
            acked += 1


def node(pub_url: str, ack_url: str, name: str) -> None:
    """A subscriber that acknowledges every state it hears, as ControlLink does."""
    ctx: zmq.Context[Any] = zmq.Context()
    sub, dealer = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    dealer.setsockopt(zmq.LINGER, 0)
    sub.connect(pub_url)
    dealer.connect(ack_url)
    decoder = msgspec.msgpack.Decoder(ControlMessage)
    encoder = msgspec.msgpack.Encoder()
    while True:
        if not sub.poll(50):
            continue
        msg = decoder.decode(memoryview(sub.recv())[len(TOPIC) :])
        if isinstance(msg, TradingState):
            now = time.time_ns()
            ack = StateAck(
                ts_event=msg.ts_event,
                ts_init=now,
                service=name,
                instance=name,
                seq=msg.seq,
                state=msg.state,
            )
            dealer.send(encoder.encode(ack), zmq.NOBLOCK)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "node":
    node(*sys.argv[2:])
