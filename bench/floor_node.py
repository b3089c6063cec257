"""One process of the raw-ZeroMQ floor: `python -m bench.floor_node ROLE CTL_ENDPOINT PARAMS_JSON`.

Roles mirror the fleet's tick-to-order path with Flotilla's sockets, options and wire format,
but no decoding and no logic: `source` (market-data: PUB binds), `signal` (SUB connects to
the source, PUB connects to risk), `risk` (SUB binds, REQ connects to execution), `execution`
(REP binds, records latency) and `counter` (a bare SUB for the throughput floor).

Each node talks to the parent (bench.floor) over a DEALER with its role as identity:
`hello {endpoints it bound}` -> parent sends `peers {every endpoint}` -> the source sends probe
frames until the path reports `ready` -> parent sends `go` -> ticks, then an end frame travels
the path -> every node sends `done {counts}` (the execution node adds its samples) -> once all
are done the parent sends `bye` and they exit (so no process tears down while another is still
measuring). A node that raises sends `error {traceback}` first.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import zmq

from libs.common import topics
from libs.common.bus import HEADER, new_socket
from libs.common.messages import OrderReply, OrderRequest, Signal, Trade

ORIGIN = struct.Struct("!QQ")  # after a signal's header: tick seq, tick pub_mono_ns
ORDER = struct.Struct("!cQQ")  # start of an order request: kind, tick seq, tick pub_mono_ns
ORDER_KIND, PROBE, END = b"O", b"P", b"E"
TICK_TOPIC = topics.exact(topics.md_trade("binance", "BTCUSDT"))
STATUS_TOPIC = topics.exact(topics.md_status("binance"))
SIG_TOPIC = topics.exact(topics.signal("ofi", "BTCUSDT"))
SIG_CTL_TOPIC = topics.exact(topics.signal_end("bench"))
PUB_LINGER_MS = 2000  # config [bus] pub_linger_ms
REPLY_TIMEOUT_MS = 1000  # config [risk] order_timeout_ms
POLL_MS = 50
BYE_WAIT_MS = 10_000  # after `done`: stay idle until every node is done, at most this long
BATCH = 1000  # frames drained per wake-up, like Subscriber.recv_batch
SLEEP_ABOVE_NS = 200_000  # pacing exactly as market-data's RatePacer: sleep only when this early
T0 = 1_723_161_254_000_000_000  # an event time inside the bundled recording


class Node:
    """The control link to the parent, the ZMQ context and this node's time budget."""

    def __init__(self, role: str, ctl_endpoint: str, timeout_s: float) -> None:
        self.role = role
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctl = new_socket(self.ctx, zmq.DEALER, linger_ms=PUB_LINGER_MS)
        self.ctl.setsockopt(zmq.IDENTITY, role.encode())
        self.ctl.connect(ctl_endpoint)
        self.deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)

    def socket(self, kind: int, linger_ms: int = 0) -> zmq.Socket[Any]:
        """A socket made exactly like the fleet's (unbounded HWM, as config data_hwm = 0)."""
        return new_socket(self.ctx, kind, linger_ms=linger_ms, hwm=0)

    def bind(self, sock: zmq.Socket[Any]) -> str:
        """Bind a free loopback port chosen by the kernel; returns the endpoint."""
        sock.bind("tcp://127.0.0.1:*")
        return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def send(self, kind: str, doc: dict[str, Any], *extra: bytes) -> None:
        """One message to the parent: kind, JSON document, optional binary frames."""
        self.ctl.send_multipart([kind.encode(), json.dumps(doc).encode(), *extra])

    def wait(self, kind: str, timeout_ms: int | None = None) -> dict[str, Any] | None:
        """The parent's next message if it is `kind` within the timeout (default: budget)."""
        left_ms = (self.deadline_ns - time.monotonic_ns()) // 1_000_000
        wait_ms = left_ms if timeout_ms is None else min(timeout_ms, left_ms)
        if wait_ms <= 0 or not self.ctl.poll(wait_ms):
            if timeout_ms is None:
                raise TimeoutError(f"{self.role}: no {kind!r} from the parent in time")
            return None
        got, body = self.ctl.recv_multipart()
        if got.decode() != kind:
            raise RuntimeError(f"{self.role}: expected {kind!r} from the parent, got {got!r}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    def expired(self) -> bool:
        """True once the time budget is spent."""
        return time.monotonic_ns() > self.deadline_ns

    def close(self) -> None:
        """Close everything, letting queued frames (the last reply, `done`) go out first."""
        self.ctx.destroy(linger=PUB_LINGER_MS)


class Frames:
    """Pre-encoded frames `topic NUL header body` whose header is patched in place per send."""

    def __init__(self) -> None:
        self.publisher_id = int.from_bytes(os.urandom(4), "big")
        self.seqs: dict[bytes, int] = {}

    def frame(self, topic: bytes, body: bytes) -> bytearray:
        """A frame template for one topic (header zeroed until stamped)."""
        return bytearray(topic + bytes(HEADER.size) + body)

    def stamp(self, frame: bytearray, topic: bytes) -> bytearray:
        """Next per-topic seq and the current CLOCK_MONOTONIC into the frame's header."""
        seq = self.seqs[topic] = self.seqs.get(topic, 0) + 1
        HEADER.pack_into(frame, len(topic), self.publisher_id, seq, time.monotonic_ns())
        return frame


def encoded_trade() -> bytes:
    """A realistic md.trade payload: one real Trade, msgpack-encoded once."""
    trade = Trade(
        ts_event=T0,
        ts_init=T0 + 1_234_567,
        venue="binance",
        symbol="BTCUSDT",
        price=Decimal("61234.56"),
        qty=Decimal("0.00123"),
        aggressor="buy",
        trade_id=3_712_345_678,
    )
    return msgspec.msgpack.encode(trade)


def encoded_signal() -> bytes:
    """A realistic signal payload (real Signal, encoded once)."""
    sig = Signal(
        ts_event=T0,
        ts_init=T0 + 2_345_678,
        signal_id="ofi-BTCUSDT-000123456",
        strategy="ofi",
        venue="binance",
        symbol="BTCUSDT",
        side="buy",
        qty=Decimal("0.001"),
        order_type="market",
        ref_px=Decimal("61234.57"),
        score=0.734,
        origin_mono_ns=123_456_789_012_345,
    )
    return msgspec.msgpack.encode(sig)


def encoded_order() -> bytes:
    """A realistic order request payload (real OrderRequest, encoded once)."""
    order = OrderRequest(
        ts_event=T0,
        ts_init=T0 + 3_456_789,
        client_order_id="fl-ofi-BTCUSDT-000123456",
        signal_id="ofi-BTCUSDT-000123456",
        strategy="ofi",
        venue="binance",
        symbol="BTCUSDT",
        side="buy",
        order_type="market",
        qty=Decimal("0.001"),
        origin_mono_ns=123_456_789_012_345,
    )
    return msgspec.msgpack.encode(order)


def encoded_reply() -> bytes:
    """A realistic order reply (real OrderReply, encoded once)."""
    reply = OrderReply(
        ts_event=T0,
        ts_init=T0 + 4_567_890,
        client_order_id="fl-ofi-BTCUSDT-000123456",
        accepted=True,
        status="filled",
    )
    return msgspec.msgpack.encode(reply)


def wait_until(due_ns: int) -> None:
    """Sleep when more than 0.2 ms early, else send at once (never spin: on two cores a spin
    would take a core from the other nodes), exactly like market-data's RatePacer."""
    delay = due_ns - time.monotonic_ns()
    if delay > SLEEP_ABOVE_NS:
        time.sleep(delay / 1e9)


def drain(sock: zmq.Socket[Any]) -> list[bytes]:
    """Up to BATCH frames already waiting (after a poll said there is one)."""
    frames: list[bytes] = []
    for _ in range(BATCH):
        try:
            frames.append(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            break
    return frames


def round_trip(req: zmq.Socket[Any], request: bytes | bytearray) -> bytes:
    """One REQ/REP exchange; no reply in time is a lost order."""
    req.send(request)
    if not req.poll(REPLY_TIMEOUT_MS):
        raise TimeoutError(f"risk REQ -> execution REP: no reply within {REPLY_TIMEOUT_MS} ms")
    return bytes(req.recv())


# --- source (market-data) ---------------------------------------------------------------


def run_source(node: Node, params: dict[str, Any]) -> None:
    """Bind the PUB, probe until the path is ready, publish the ticks, then the end frame."""
    pub = node.socket(zmq.PUB, linger_ms=PUB_LINGER_MS)
    node.send("hello", {"md_pub": node.bind(pub)})
    node.wait("peers")
    frames = Frames()
    status = {kind: frames.frame(STATUS_TOPIC, kind) for kind in (PROBE, END)}
    while node.wait("go", timeout_ms=10) is None:  # bounded by the node's budget
        pub.send(frames.stamp(status[PROBE], STATUS_TOPIC))
    sent = publish_ticks(node, pub, frames, params["ticks"], params["rate_per_s"])
    pub.send(frames.stamp(status[END], STATUS_TOPIC))
    node.send("done", {"sent": sent})


def publish_ticks(
    node: Node, pub: zmq.Socket[Any], frames: Frames, ticks: int, rate_per_s: float
) -> int:
    """Publish `ticks` pre-encoded trades, paced on monotonic deadlines (rate 0: flat out)."""
    frame = frames.frame(TICK_TOPIC, encoded_trade())
    offset, pid, pack = len(TICK_TOPIC), frames.publisher_id, HEADER.pack_into
    period_ns = 1e9 / rate_per_s if rate_per_s > 0 else 0.0
    now, send = time.monotonic_ns, pub.send
    start = now()
    for seq in range(1, ticks + 1):
        if period_ns:
            wait_until(start + int((seq - 1) * period_ns))
        pack(frame, offset, pid, seq, now())
        send(frame)
        if seq & 0xFFF == 0 and node.expired():
            return seq
    return ticks


# --- signal -----------------------------------------------------------------------------


def run_signal(node: Node, params: dict[str, Any]) -> None:
    """Connect to the source and to risk; forward one signal per `order_every` ticks."""
    sub = node.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TICK_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
    pub = node.socket(zmq.PUB, linger_ms=PUB_LINGER_MS)
    node.send("hello", {})
    peers = node.wait("peers") or {}
    sub.connect(peers["md_pub"])
    pub.connect(peers["sig_in"])
    node.send("done", forward_ticks(node, sub, pub, params["order_every"]))


def forward_ticks(
    node: Node, sub: zmq.Socket[Any], pub: zmq.Socket[Any], order_every: int
) -> dict[str, Any]:
    """Check tick seqs for gaps; every order_every-th tick becomes a signal carrying its origin."""
    frames = Frames()
    sig = frames.frame(SIG_TOPIC, bytes(ORIGIN.size) + encoded_signal())
    ctl = {kind: frames.frame(SIG_CTL_TOPIC, kind) for kind in (PROBE, END)}
    tick_at, origin_at = len(TICK_TOPIC), len(SIG_TOPIC) + HEADER.size
    received = gaps = signals = 0
    expected = 1
    while not node.expired():
        if not sub.poll(POLL_MS):
            continue
        for frame in drain(sub):
            if frame.startswith(TICK_TOPIC):
                _, seq, pub_ns = HEADER.unpack_from(frame, tick_at)
                received += 1
                if seq != expected:  # a gap, repeat or reorder: any of them fails the run
                    gaps += 1
                expected = seq + 1
                if seq % order_every == 0:
                    ORIGIN.pack_into(sig, origin_at, seq, pub_ns)
                    pub.send(frames.stamp(sig, SIG_TOPIC))
                    signals += 1
            elif frame.endswith(PROBE):
                pub.send(frames.stamp(ctl[PROBE], SIG_CTL_TOPIC))
            elif frame.endswith(END):
                pub.send(frames.stamp(ctl[END], SIG_CTL_TOPIC))
                return {"received": received, "gaps": gaps, "signals": signals}
    return {"received": received, "gaps": gaps, "signals": signals, "timed_out": True}


# --- risk -------------------------------------------------------------------------------


def run_risk(node: Node, params: dict[str, Any]) -> None:
    """Bind the signal inlet, connect the REQ; one order round trip per signal."""
    sub = node.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, SIG_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, SIG_CTL_TOPIC)
    endpoint = node.bind(sub)
    req = node.socket(zmq.REQ)  # as RequestClient: LINGER 0
    node.send("hello", {"sig_in": endpoint})
    peers = node.wait("peers") or {}
    req.connect(peers["orders"])
    node.send("done", send_orders(node, sub, req))


def send_orders(node: Node, sub: zmq.Socket[Any], req: zmq.Socket[Any]) -> dict[str, Any]:
    """Turn each signal into an order carrying the tick's seq and origin; wait for each reply."""
    body = encoded_order()
    order = bytearray(ORDER.pack(ORDER_KIND, 0, 0) + body)
    probe, end = ORDER.pack(PROBE, 0, 0) + body, ORDER.pack(END, 0, 0) + body
    origin_at = len(SIG_TOPIC) + HEADER.size
    received = orders = 0
    ready = False
    while not node.expired():
        if not sub.poll(POLL_MS):
            continue
        for frame in drain(sub):
            if frame.startswith(SIG_TOPIC):
                received += 1
                seq, origin_ns = ORIGIN.unpack_from(frame, origin_at)
                ORDER.pack_into(order, 0, ORDER_KIND, seq, origin_ns)
                round_trip(req, order)
                orders += 1
            elif frame.endswith(PROBE) and not ready:
                round_trip(req, probe)  # the whole path answers: tell the parent
                node.send("ready", {})
                ready = True
            elif frame.endswith(END):
                round_trip(req, end)
                return {"received": received, "orders": orders}
    return {"received": received, "orders": orders, "timed_out": True}


# --- execution --------------------------------------------------------------------------


def run_execution(node: Node, params: dict[str, Any]) -> None:
    """Bind the REP (like execution: default HWM, LINGER 0); record now - origin per order."""
    rep = node.ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    node.send("hello", {"orders": node.bind(rep)})
    node.wait("peers")
    seqs, lats, timed_out = answer_orders(node, rep)
    rep.setsockopt(zmq.LINGER, PUB_LINGER_MS)  # let the reply to the end frame go out
    doc = {"orders": len(seqs), "timed_out": timed_out}
    node.send("done", doc, seqs.tobytes(), lats.tobytes())


def answer_orders(node: Node, rep: zmq.Socket[Any]) -> tuple[array[int], array[int], bool]:
    """Reply to every request until the end frame; keep (tick seq, latency ns) per order."""
    reply = encoded_reply()
    seqs, lats = array("q"), array("q")
    now, unpack = time.monotonic_ns, ORDER.unpack_from
    while not node.expired():
        if not rep.poll(POLL_MS):
            continue
        frame = rep.recv()
        received_ns = now()
        kind, seq, origin_ns = unpack(frame)
        if kind == ORDER_KIND:
            seqs.append(seq)
            lats.append(received_ns - origin_ns)
        rep.send(reply)
        if kind == END:
            return seqs, lats, False
    return seqs, lats, True


# --- counter (throughput floor) ---------------------------------------------------------


def run_counter(node: Node, params: dict[str, Any]) -> None:
    """Connect a SUB to the source and receive every tick as fast as they come."""
    sub = node.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TICK_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
    node.send("hello", {})
    peers = node.wait("peers") or {}
    sub.connect(peers["md_pub"])
    node.send("done", count_ticks(node, sub, params["ticks"]))


def count_ticks(node: Node, sub: zmq.Socket[Any], ticks: int) -> dict[str, Any]:
    """Receive ticks until the last one (or the end frame); stamp the first send, last receive."""
    at = len(TICK_TOPIC)
    received = gaps = first_send_ns = last_recv_ns = 0
    expected = 1
    ready = False
    while not node.expired():
        if not sub.poll(POLL_MS):
            continue
        for frame in drain(sub):
            if frame.startswith(TICK_TOPIC):
                _, seq, pub_ns = HEADER.unpack_from(frame, at)
                received += 1
                if seq != expected:  # a gap, repeat or reorder: any of them fails the run
                    gaps += 1
                expected = seq + 1
                if seq == 1:
                    first_send_ns = pub_ns
                if seq == ticks:
                    last_recv_ns = time.monotonic_ns()
            elif frame.endswith(PROBE) and not ready:
                node.send("ready", {})
                ready = True
            elif frame.endswith(END):
                return _counts(received, gaps, first_send_ns, last_recv_ns, False)
    return _counts(received, gaps, first_send_ns, last_recv_ns, True)


def _counts(received: int, gaps: int, first: int, last: int, timed_out: bool) -> dict[str, Any]:
    """The counter's report."""
    return {
        "received": received,
        "gaps": gaps,
        "first_send_ns": first,
        "last_recv_ns": last,
        "timed_out": timed_out,
    }


ROLES: dict[str, Callable[[Node, dict[str, Any]], None]] = {
    "source": run_source,
    "signal": run_signal,
    "risk": run_risk,
    "execution": run_execution,
    "counter": run_counter,
}


def main(argv: list[str]) -> int:
    """Run one role; any exception is reported to the parent before the process fails."""
    role, ctl_endpoint, params = argv[0], argv[1], json.loads(argv[2])
    node = Node(role, ctl_endpoint, params["timeout_s"])
    try:
        ROLES[role](node, params)
        node.wait("bye", timeout_ms=BYE_WAIT_MS)
    except BaseException:
        node.send("error", {"traceback": traceback.format_exc()})
        raise
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
