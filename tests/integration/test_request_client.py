"""The order/command REQ client never wedges: a dead or silent peer costs one timeout, no more."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

from libs.common.bus import RequestClient, RequestTimeout
from libs.common.messages import CancelRequest, OrderChannel, OrderChannelReply, OrderReply


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A context that must terminate promptly (a leaked socket would hang here)."""
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def cancel(coid: str) -> CancelRequest:
    """A small request to send."""
    return CancelRequest(ts_event=1, ts_init=1, client_order_id=coid)


def serve_replies(ctx: zmq.Context[Any], url: str, count: int, stop: threading.Event) -> None:
    """A REP peer that answers `count` requests, echoing the client order id."""
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(url)
    decoder = msgspec.msgpack.Decoder(OrderChannel)
    try:
        answered = 0
        while answered < count and not stop.is_set():
            if rep.poll(50):
                req = decoder.decode(rep.recv())
                reply = OrderReply(
                    ts_event=1,
                    ts_init=1,
                    client_order_id=req.client_order_id,
                    accepted=True,
                    status="canceled",
                )
                rep.send(msgspec.msgpack.encode(reply))
                answered += 1
    finally:
        rep.close()


def test_request_to_a_dead_peer_times_out_and_the_client_recovers(ctx: zmq.Context[Any]) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    client: RequestClient[Any] = RequestClient(ctx, url, OrderChannelReply, timeout_ms=200)
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            client.request(cancel("nobody-home"))
        waited = time.monotonic() - started

        stop = threading.Event()
        peer = threading.Thread(target=serve_replies, args=(ctx, url, 1, stop))
        peer.start()
        try:
            reply = client.request(cancel("after-reset"))
        finally:
            stop.set()
            peer.join(timeout=5)
    finally:
        client.close()

    assert waited < 5  # bounded by the timeout, not stuck in REQ's send/recv lockstep
    assert client.resets == 1
    # The request lost to the dead peer was dropped with the old socket, never sent late.
    assert isinstance(reply, OrderReply) and reply.client_order_id == "after-reset"
