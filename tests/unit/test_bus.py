"""Bus framing: what a subscriber decodes, drops, and counts; and exact topic matching."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common import topics
from libs.common.bus import HEADER, Publisher, Subscriber
from libs.common.clock import FakeClock
from libs.common.messages import MarketData, Quote

from .builders import quote, signal

TOPIC = topics.md_quote("binance", "BTCUSDT")


class CapturingSocket:
    """Stands in for a PUB socket: keeps the frames the Publisher would have sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes, copy: bool = True) -> None:
        self.frames.append(bytes(frame))

    def close(self) -> None:
        pass


@pytest.fixture
def subscriber() -> Iterator[Subscriber[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        yield Subscriber(sock, MarketData)
    finally:
        sock.close(linger=0)
        ctx.term()


def publisher() -> tuple[Publisher, CapturingSocket]:
    sock = CapturingSocket()
    return Publisher(sock, FakeClock()), sock  # type: ignore[arg-type]


def one_frame(msg: msgspec.Struct | None = None, topic: str = TOPIC) -> bytes:
    pub, sock = publisher()
    pub.publish(topic, quote() if msg is None else msg)
    return sock.frames[0]


def test_a_published_frame_decodes_to_the_same_message(subscriber: Subscriber[Any]) -> None:
    pub, sock = publisher()
    q = quote(bid="61837.63000000", ask="61837.64000000")
    pub.publish(TOPIC, q)

    env = subscriber.decode(sock.frames[0])

    assert env is not None
    assert env.msg == q
    assert isinstance(env.msg, Quote) and str(env.msg.bid_px) == "61837.63000000"
    assert (env.topic, env.publisher, env.seq) == (TOPIC, pub.publisher_id, 1)
    assert env.pub_mono_ns == FakeClock().monotonic_ns()
    assert (subscriber.decode_errors, subscriber.sequence_gaps) == (0, 0)


def test_frame_layout_is_topic_nul_header_payload() -> None:
    pub, sock = publisher()
    pub.publish(TOPIC, quote())
    frame = sock.frames[0]

    topic, nul, rest = frame.partition(b"\x00")
    publisher_id, seq, mono_ns = HEADER.unpack_from(rest)

    assert (topic.decode(), nul, seq) == (TOPIC, b"\x00", 1)
    assert msgspec.msgpack.decode(rest[HEADER.size :], type=MarketData) == quote()
    assert (publisher_id, mono_ns) == (pub.publisher_id, FakeClock().monotonic_ns())


def _cut_in_header() -> bytes:
    frame = one_frame()
    return frame[: len(TOPIC) + 1 + HEADER.size - 1]


def _cut_in_payload() -> bytes:
    return one_frame()[:-3]


def _garbage_payload() -> bytes:
    return one_frame()[: len(TOPIC) + 1 + HEADER.size] + b"\xc1\xc1\xc1"


def _unknown_tag() -> bytes:
    payload = msgspec.msgpack.encode({"type": "bogus", "ts_event": 1, "ts_init": 1})
    return one_frame()[: len(TOPIC) + 1 + HEADER.size] + payload


def _other_family() -> bytes:
    return one_frame(signal())  # a Signal is not market data


def _invalid_utf8() -> bytes:
    head = one_frame()[: len(TOPIC) + 1 + HEADER.size]
    return head + b"\x81\xa4type\xa2\xff\xfe"


def _deeply_nested() -> bytes:
    head = one_frame()[: len(TOPIC) + 1 + HEADER.size]
    payload = b"\x82" + msgspec.msgpack.encode("type") + msgspec.msgpack.encode("trade")
    return head + payload + msgspec.msgpack.encode("x") + b"\x91" * 200_000 + b"\x00"


@pytest.mark.parametrize(
    "make_frame",
    [
        lambda: b"",
        lambda: b"md.quote.binance.btcusdt without any terminator",
        _cut_in_header,
        _cut_in_payload,
        _garbage_payload,
        _unknown_tag,
        _other_family,
        _deeply_nested,
        _invalid_utf8,
    ],
    ids=[
        "empty",
        "no_nul",
        "truncated_header",
        "truncated_payload",
        "garbage_msgpack",
        "unknown_tag",
        "wrong_family",
        "deeply_nested",
        "invalid_utf8",
    ],
)
def test_malformed_frames_are_dropped_and_counted_without_raising(
    subscriber: Subscriber[Any], make_frame: Any
) -> None:
    result = subscriber.decode(make_frame())

    assert result is None
    assert subscriber.decode_errors == 1
    assert subscriber.decode(one_frame()) is not None  # and the next good frame still decodes


def test_a_sequence_jump_counts_the_missing_messages(subscriber: Subscriber[Any]) -> None:
    pub, sock = publisher()
    for _ in range(5):
        pub.publish(TOPIC, quote())
    delivered = [sock.frames[0], sock.frames[1], sock.frames[4]]  # seq 3 and 4 lost

    envs = [subscriber.decode(f) for f in delivered]

    assert [e.seq for e in envs if e is not None] == [1, 2, 5]
    assert subscriber.sequence_gaps == 2
    assert subscriber.decode_errors == 0


def test_publishers_are_sequence_checked_independently(subscriber: Subscriber[Any]) -> None:
    pub_a, sock_a = publisher()
    pub_b, sock_b = publisher()
    for _ in range(3):
        pub_a.publish(TOPIC, quote())
        pub_b.publish(TOPIC, quote())
    assert pub_a.publisher_id != pub_b.publisher_id

    for fa, fb in zip(sock_a.frames, sock_b.frames, strict=True):
        assert subscriber.decode(fa) is not None
        assert subscriber.decode(fb) is not None

    assert subscriber.sequence_gaps == 0


def test_topics_are_sequenced_independently(subscriber: Subscriber[Any]) -> None:
    pub, sock = publisher()
    eth = topics.md_quote("binance", "ETHUSDT")
    pub.publish(TOPIC, quote())
    pub.publish(eth, quote(symbol="ETHUSDT"))
    pub.publish(TOPIC, quote())

    envs = [subscriber.decode(f) for f in sock.frames]

    assert [(e.topic, e.seq) for e in envs if e is not None] == [(TOPIC, 1), (eth, 1), (TOPIC, 2)]
    assert subscriber.sequence_gaps == 0


def test_a_restarted_publisher_starting_again_at_seq_1_is_not_a_gap(
    subscriber: Subscriber[Any],
) -> None:
    before, sock_before = publisher()
    for _ in range(3):
        before.publish(TOPIC, quote())
    after, sock_after = publisher()
    after.publish(TOPIC, quote())

    for frame in [*sock_before.frames, *sock_after.frames]:
        subscriber.decode(frame)

    assert subscriber.sequence_gaps == 0


# --- topics -------------------------------------------------------------------------------


def _matches(subscription: bytes, topic: str) -> bool:
    """ZeroMQ SUB matching: the frame starts with the subscription bytes."""
    return (topic.encode() + topics.TERMINATOR).startswith(subscription)


def test_exact_subscription_matches_only_that_topic() -> None:
    sub = topics.exact("md.quote.bin")

    assert _matches(sub, "md.quote.bin")
    assert not _matches(sub, "md.quote.binance2")
    assert not _matches(sub, "md.quote.bin.btcusdt")


def test_family_subscription_does_not_match_a_longer_sibling_name() -> None:
    sub = topics.family("md", "quote", "bin")

    assert _matches(sub, "md.quote.bin.btcusdt")
    assert not _matches(sub, "md.quote.binance2")
    assert not _matches(sub, "md.quote.binance2.btcusdt")


def test_topics_are_lowercase_and_general_to_specific() -> None:
    assert topics.md_quote("Binance", "BTCUSDT") == "md.quote.binance.btcusdt"
    assert _matches(topics.family("md", "quote"), topics.md_quote("binance", "ETHUSDT"))
    assert not _matches(topics.family("md", "quote"), topics.md_trade("binance", "ETHUSDT"))
    assert topics.family_of(topics.exec_fill("binance", "BTCUSDT")) == "exec"


@settings(max_examples=300, deadline=None)
@given(
    junk=st.binary(max_size=64),
    cut=st.integers(min_value=0, max_value=200),
)
def test_decode_never_raises_on_arbitrary_bytes(junk: bytes, cut: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sub: Subscriber[Any] = Subscriber(sock, MarketData)
        head = one_frame()[: len(TOPIC) + 1 + HEADER.size]
        frames = [junk, head + junk, one_frame()[:cut] + junk]

        results = [sub.decode(f) for f in frames]

        assert sub.decode_errors == sum(1 for r in results if r is None)
    finally:
        sock.close(linger=0)
        ctx.term()


def test_metric_label_of_an_unknown_topic_family_is_bounded() -> None:
    assert topics.family_of("md.quote.binance.btcusdt") == "md"
    assert topics.family_of("zz-attacker-chosen-123.x") == "other"
