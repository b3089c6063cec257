"""ZeroMQ sockets, framing and sequence numbers: the one place the wire format lives.

A PUB/SUB message is ONE frame: `topic NUL header payload`. One frame ran about 5x faster than
send_multipart on these machines (see ARCHITECTURE.md), and the NUL lets subscribers match a
topic exactly. The header is `!IQQ`: publisher id (random per process start), per-topic seq
(from 1), and CLOCK_MONOTONIC ns at the publish call (used for latency, one host only).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import Any, Generic, TypeVar

import msgspec
import zmq

from . import topics
from .clock import Clock, LiveClock
from .metrics import BUS, TRAFFIC

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IQQ")
# Everything msgspec can raise on hostile bytes: a decoder that catches less can be crashed.
DECODE_ERRORS = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    RecursionError,  # absurdly nested payload
    UnicodeDecodeError,  # invalid UTF-8 inside a string field
)
T = TypeVar("T")


class Envelope(Generic[T]):
    """A decoded message with its topic and bus header."""

    __slots__ = ("msg", "pub_mono_ns", "publisher", "seq", "topic")

    def __init__(self, topic: str, publisher: int, seq: int, pub_mono_ns: int, msg: T) -> None:
        self.topic = topic
        self.publisher = publisher
        self.seq = seq
        self.pub_mono_ns = pub_mono_ns
        self.msg = msg


def new_socket(
    ctx: zmq.Context[Any], kind: int, linger_ms: int = 0, hwm: int = 0
) -> zmq.Socket[Any]:
    """A socket with LINGER and high-water marks set (0 hwm = unbounded)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(
        zmq.RECONNECT_IVL, 10
    )  # loopback peers come up within ms; 100 ms default loses data
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


class Publisher:
    """Publishes msgspec structs with a per-topic sequence number."""

    def __init__(self, sock: zmq.Socket[Any], clock: Clock | None = None) -> None:
        self._sock = sock
        self._clock = clock or LiveClock()
        self._encoder = msgspec.msgpack.Encoder()
        self._publisher_id = int.from_bytes(os.urandom(4), "big")
        self._seqs: dict[str, int] = {}
        self._prefixes: dict[str, tuple[bytes, Any]] = {}

    @property
    def publisher_id(self) -> int:
        """This publisher's random id (distinguishes restarts and replicas)."""
        return self._publisher_id

    def publish(self, topic: str, msg: msgspec.Struct) -> int:
        """Send one message; returns the sequence number it carried."""
        seq = self._seqs.get(topic, 0) + 1
        self._seqs[topic] = seq
        cached = self._prefixes.get(topic)
        if cached is None:  # once per topic: wire prefix and the family's tally
            cached = self._prefixes[topic] = (
                topics.exact(topic),
                TRAFFIC.sent(topics.family_of(topic)),
            )
        prefix, tally = cached
        header = HEADER.pack(self._publisher_id, seq, self._clock.monotonic_ns())
        frame = prefix + header + self._encoder.encode(msg)
        self._sock.send(frame, copy=True)
        tally.messages += 1  # plain ints, read at scrape time (see metrics.BusTraffic)
        tally.nbytes += len(frame)
        return seq

    def close(self) -> None:
        """Close with the socket's own LINGER so queued messages still go out."""
        self._sock.close()


class Subscriber(Generic[T]):
    """Receives, decodes and sequence-checks one family of messages; bad frames are dropped.

    `role` labels the stream's age metric (flotilla_bus_last_message_age_seconds).
    """

    def __init__(self, sock: zmq.Socket[Any], message_type: Any, role: str = "sub") -> None:
        self.sock = sock
        self.role = role
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(message_type)
        self._last_seq: dict[tuple[int, str], int] = {}
        self._topics: dict[bytes, tuple[str, Any]] = {}
        self.decode_errors = 0
        self.sequence_gaps = 0

    def subscribe(self, prefix: bytes) -> None:
        """Receive topics starting with these bytes (see topics.exact / topics.family)."""
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        # The stream's age is exported from now on, so one that never speaks shows up too.
        TRAFFIC.received(self.role, topics.family_of(prefix.decode(errors="replace")))

    def unsubscribe(self, prefix: bytes) -> None:
        """Stop receiving a prefix, and forget its sequence numbers: what is published while we
        are not subscribed is not a gap if we subscribe again."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
        exact = prefix.endswith(topics.TERMINATOR)
        text = prefix.removesuffix(topics.TERMINATOR).decode(errors="replace")
        for key in [
            k for k in self._last_seq if (k[1] == text or (not exact and k[1].startswith(text)))
        ]:
            del self._last_seq[key]

    def recv_batch(self, limit: int = 1000) -> list[Envelope[T]]:
        """Up to `limit` decoded messages that are already waiting; bad frames are dropped."""
        batch: list[Envelope[T]] = []
        now = time.monotonic_ns()  # one clock read per batch: the frames were all waiting
        for _ in range(limit):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            env = self._decode(frame, now)
            if env is not None:
                batch.append(env)
        return batch

    def recv_latest(self, limit: int = 1000) -> list[Envelope[T]]:
        """Like recv_batch, but when several messages of one topic are waiting only the newest
        is decoded (last-value semantics, for consumers that need just the current quote).
        Every frame is still sequence-checked and counted; superseded ones are not decoded."""
        latest: dict[bytes, bytes] = {}
        now = time.monotonic_ns()
        for _ in range(limit):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            end = frame.find(topics.TERMINATOR)
            key = frame[:end] if end > 0 else frame  # malformed: its own key, decode() drops it
            older = latest.pop(key, None)
            if older is not None:
                self.skip(older, now)
            latest[key] = frame
        return [env for frame in latest.values() if (env := self._decode(frame, now)) is not None]

    def skip(self, frame: bytes, now_ns: int = 0) -> None:
        """Account for a frame that a newer one on its topic made redundant: seq and count only."""
        header = self._header(frame)
        if header is not None:
            topic, tally, publisher, seq, _pub_ns, _start = header
            self._check_seq(publisher, topic, seq)
            tally.messages += 1
            tally.nbytes += len(frame)
            tally.conflated += 1
            tally.last_mono_ns = now_ns or time.monotonic_ns()

    def decode(self, frame: bytes) -> Envelope[T] | None:
        """Parse a raw frame; count and log anything malformed instead of raising."""
        return self._decode(frame, time.monotonic_ns())

    def _decode(self, frame: bytes, now_ns: int) -> Envelope[T] | None:
        """decode() with the receive time of the batch the frame came in."""
        header = self._header(frame)
        if header is None:
            return None
        topic, tally, publisher, seq, pub_ns, start = header
        try:
            msg = self._decoder.decode(memoryview(frame)[start:])
        except DECODE_ERRORS as exc:
            self._drop(topic, str(exc), frame)
            return None
        self._check_seq(publisher, topic, seq)
        # Three int stores instead of prometheus_client calls: measured in bench/micro.py.
        tally.messages += 1
        tally.nbytes += len(frame)
        tally.last_mono_ns = now_ns
        return Envelope(topic, publisher, seq, pub_ns, msg)

    def _header(self, frame: bytes) -> tuple[str, Any, int, int, int, int] | None:
        """Topic, its stream's tally, publisher, seq, publish time and payload offset."""
        end = frame.find(topics.TERMINATOR)
        if end < 0 or len(frame) < end + 1 + HEADER.size:
            self._drop("?", "truncated frame", frame)
            return None
        raw_topic = frame[:end]
        known = self._topics.get(raw_topic)
        if known is None:
            topic = raw_topic.decode("utf-8", "replace")
            known = (topic, TRAFFIC.received(self.role, topics.family_of(topic)))
            if len(self._topics) < 10_000:  # bounded: a hostile peer cannot grow it forever
                self._topics[raw_topic] = known
        topic, tally = known
        publisher, seq, pub_ns = HEADER.unpack_from(frame, end + 1)
        return topic, tally, publisher, seq, pub_ns, end + 1 + HEADER.size

    def _check_seq(self, publisher: int, topic: str, seq: int) -> None:
        """Count messages missing between the last seq seen and this one."""
        key = (publisher, topic)
        last = self._last_seq.get(key)
        self._last_seq[key] = seq
        if last is not None and seq > last + 1:
            missing = seq - last - 1
            self.sequence_gaps += missing
            BUS.sequence_gaps.labels(topics.family_of(topic)).inc(missing)
            log.warning(
                "sequence gap on %s: %d missing (last %d, got %d)", topic, missing, last, seq
            )

    def _drop(self, topic: str, why: str, frame: bytes) -> None:
        """Count and log a frame we could not use."""
        self.decode_errors += 1
        BUS.decode_errors.labels(topics.family_of(topic)).inc()
        log.warning("dropped undecodable message on %r (%d bytes): %s", topic, len(frame), why)


def send_nowait(sock: zmq.Socket[Any], frames: list[bytes], family: str) -> bool:
    """Send one message without blocking; True if queued. At the high-water mark (zmq.Again)
    the message is dropped and counted in flotilla_bus_hwm_dropped_messages_total{family}."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        BUS.hwm_drops.labels(topics.family_of(family)).inc()
        return False
    return True


class RequestTimeout(Exception):
    """The peer did not answer in time; the socket was reset (Lazy Pirate)."""


class RequestClient(Generic[T]):
    """A REQ client that never wedges: on timeout it closes and reopens its socket (zguide Lazy Pirate)."""

    def __init__(
        self, ctx: zmq.Context[Any], endpoint: str, reply_type: Any, timeout_ms: int
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._timeout_ms = timeout_ms
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(reply_type)
        self._sock = self._open()
        self._replies = TRAFFIC.received("req", "reply")
        self.resets = 0

    def _open(self) -> zmq.Socket[Any]:
        """A fresh REQ socket; LINGER 0 so a reset drops any unsent request."""
        sock = new_socket(self._ctx, zmq.REQ, linger_ms=0)
        sock.connect(self._endpoint)
        return sock

    def request(self, msg: msgspec.Struct) -> T:
        """Send one request and wait for its reply, or raise RequestTimeout."""
        self._sock.send(self._encoder.encode(msg))
        if self._sock.poll(self._timeout_ms, zmq.POLLIN):
            frame = self._sock.recv()
            reply = self._decode(frame)
            self._replies.messages += 1  # a reply: the peer's stream is alive
            self._replies.nbytes += len(frame)
            self._replies.last_mono_ns = time.monotonic_ns()
            return reply
        self._reset()
        raise RequestTimeout(f"no reply from {self._endpoint} within {self._timeout_ms} ms")

    def _decode(self, frame: bytes) -> T:
        """Decode a reply; a malformed reply is treated like no reply (the outcome is unknown)."""
        try:
            return self._decoder.decode(frame)
        except DECODE_ERRORS as exc:
            BUS.decode_errors.labels("reply").inc()
            raise RequestTimeout(f"malformed reply from {self._endpoint}: {exc}") from exc

    def _reset(self) -> None:
        """Throw the stuck socket away and open a new one."""
        self.resets += 1
        self._sock.close(linger=0)
        self._sock = self._open()

    def close(self) -> None:
        """Close the socket without waiting."""
        self._sock.close(linger=0)
