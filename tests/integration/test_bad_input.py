"""Bad input never crashes a service: garbage recordings, hostile frames, a bad config value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from libs.common.bus import HEADER
from libs.common.config import load_config, with_port_offset
from libs.common.messages import (
    Command,
    CommandReply,
    ControlMessage,
    OrderChannelReply,
    OrderReply,
    StateAck,
)
from libs.common.testing.fleet import (
    REPO_ROOT,
    expected_ticks,
    log_tails,
    reap,
    run_cli,
    run_up,
    spawn_cli,
    up_args,
    wait_listening,
    write_lines,
)

from .conftest import Slices

REPLY_TIMEOUT_MS = 5_000


def garbage_lines(ts: bytes) -> dict[str, list[bytes]]:
    """Bad recording lines by the summary counter that must count them."""
    trade = {"e": "trade", "E": 1, "t": 7, "p": "0.5", "q": "10", "T": 1, "m": True}
    quote = {"u": 1, "b": "0.5", "B": "1", "a": "0.6", "A": "1"}
    return {
        "feed_bad_lines": [
            b"not-a-timestamp " + json.dumps({"stream": "btcusdt@trade", "data": {}}).encode(),
            b"12x45 {}",
            b"line-without-any-space",
            ts,  # a timestamp and nothing else
            ts + b"    ",  # a timestamp and blanks
        ],
        "feed_parse_errors": [
            ts + b' {"stream":"btcusdt@trade","data":{"e":"trade","E":17231',  # truncated JSON
            ts + b' {"stream":"ethusdt@bookTicker","data":{"u":1,"s":"ETHUSDT"}}',  # fields missing
            ts + b' {"stream":"btcusdt@trade","data":{"e":"trade","E":"soon","s":"BTCUSDT"}}',
            ts + b" \xff\xfe binary",
            ts + b" [1, 2, 3]",
        ],
        "feed_unknown_symbol_drops": [
            ts
            + b" "
            + json.dumps({"stream": "xrpusdt@trade", "data": {**trade, "s": "XRPUSDT"}}).encode(),
            ts
            + b" "
            + json.dumps(
                {"stream": "xrpusdt@bookTicker", "data": {**quote, "s": "XRPUSDT"}}
            ).encode(),
        ],
    }


def with_garbage(lines: list[bytes], every: int) -> tuple[list[bytes], dict[str, int]]:
    """The lines with a batch of garbage after every `every`-th one; counts by summary key."""
    out: list[bytes] = []
    counts = dict.fromkeys(garbage_lines(b"0"), 0)
    for i, line in enumerate(lines, 1):
        out.append(line)
        if i % every == 0:
            ts = line.partition(b" ")[0]  # the neighbour's time keeps the file in order
            for key, bad in garbage_lines(ts).items():
                out += [b + b"\n" for b in bad]
                counts[key] += len(bad)
    return out, counts


@pytest.mark.slow
def test_garbage_recording_lines_are_counted_and_dropped(
    slices: Slices, tmp_path: Path, run_dir: Path, port_offset: int
) -> None:
    paths: list[Path] = []
    expected = {"feed_bad_lines": 0, "feed_parse_errors": 0, "feed_unknown_symbol_drops": 0}
    for path, lines in zip(slices.paths, slices.lines, strict=True):
        dirty, counts = with_garbage(lines, every=3_000)
        paths.append(write_lines(tmp_path / f"dirty-{path.name}", dirty))
        for key, n in counts.items():
            expected[key] += n
    assert expected_ticks(line for part in slices.lines for line in part) == slices.expected

    res = run_up(run_dir, port_offset, feed=paths, timeout_s=90)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{log_tails(run_dir)}"
    assert res.leftovers == []
    s = res.summary
    assert {key: s[key] for key in expected} == expected
    assert s["ticks_published"] == slices.expected
    assert s["ticks_received"] == slices.expected
    assert s["sequence_gaps"] == 0 and s["decode_errors"] == 0


def request(ctx: zmq.Context[Any], endpoint: str, frame: bytes) -> bytes:
    """One REQ round trip with a bounded wait; fails the test if the peer hangs."""
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(frame)
        assert sock.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), (
            f"no reply from {endpoint} to {frame[:20]!r}"
        )
        return sock.recv()


def hostile_signal_frames() -> list[bytes]:
    """Frames that match risk's `sig.` subscription but cannot be decoded."""
    header = HEADER.pack(0xBAD, 1, time.monotonic_ns())
    bogus = msgspec.msgpack.encode({"type": "bogus"})
    no_fields = msgspec.msgpack.encode({"type": "signal", "signal_id": "x"})
    return [
        b"sig." + os.urandom(64).replace(b"\x00", b"\x01"),  # no NUL: truncated frame
        b"sig.x.y\x00" + os.urandom(8),  # header cut short
        b"sig.x.y\x00" + header + b"\xc1\xc1 garbage msgpack",
        b"sig.x.y\x00" + header + bogus,  # unknown tag
        b"sig.ofi.btcusdt\x00" + header + no_fields,  # a signal without its fields
    ]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_hostile_frames_and_requests_never_crash_the_fleet(
    tmp_path: Path, run_dir: Path, port_offset: int
) -> None:
    bus = with_port_offset(load_config().bus, port_offset)
    port = {
        name: int(getattr(bus, name).rsplit(":", 1)[1]) for name in ("sig_in", "orders", "ctl_cmd")
    }
    out, err = (tmp_path / "up.out").open("w"), (tmp_path / "up.err").open("w")
    up = spawn_cli(up_args(run_dir, port_offset, speed="40"), stdout=out, stderr=err)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for p in port.values():
            wait_listening(p, 30)
        with ctx.socket(zmq.XPUB) as pub:
            pub.setsockopt(zmq.LINGER, 2_000)
            pub.connect(bus.sig_in)
            assert pub.poll(10_000, zmq.POLLIN), "risk never subscribed to our PUB"
            assert pub.recv().startswith(b"\x01sig")  # risk's subscription reached us
            pub.send(os.urandom(48))  # matches no subscription: filtered, never reaches risk
            bad_frames = hostile_signal_frames()
            for frame in bad_frames:
                pub.send(frame)

        order_reply = msgspec.msgpack.Decoder(OrderChannelReply)
        for junk in (b"\xc1 not msgpack", msgspec.msgpack.encode({"type": "bogus"}), b""):
            reply = order_reply.decode(request(ctx, bus.orders, junk))
            assert isinstance(reply, OrderReply) and not reply.accepted, reply
            assert reply.status == "rejected" and reply.reason == "malformed_request", reply

        control_reply = msgspec.msgpack.Decoder(ControlMessage)
        now = time.time_ns()
        ack = StateAck(ts_event=now, ts_init=now, service="x", instance="x", seq=1, state="ACTIVE")
        for junk in (b"\xc1 not msgpack", msgspec.msgpack.encode(ack)):
            reply = control_reply.decode(request(ctx, bus.ctl_cmd, junk))
            assert isinstance(reply, CommandReply) and not reply.ok and reply.error, reply
        status = Command(ts_event=now, ts_init=now, action="status")
        reply = control_reply.decode(request(ctx, bus.ctl_cmd, msgspec.msgpack.encode(status)))
        assert isinstance(reply, CommandReply) and reply.ok and reply.state.state == "ACTIVE"

        code = up.wait(timeout=90)
    finally:
        ctx.destroy(linger=0)
        leftovers = reap(up)
        out.close()
        err.close()
    logs = (tmp_path / "up.err").read_text() + log_tails(run_dir)
    assert code == 0, logs
    assert leftovers == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["outcome"] == "drained"
    assert summary["decode_errors"] >= len(bad_frames), summary
    assert summary["ticks_published"] == summary["ticks_received"]
    assert "dropped undecodable message" in (run_dir / "logs" / "risk-1.log").read_text()


BAD_ENV = {"FLOTILLA__RISK__LIMITS__RATE_WINDOW_MS": "abc"}


def assert_one_clear_line(proc: subprocess.CompletedProcess[str]) -> None:
    """Exit code 2, one stderr line naming the field, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "rate_window_ms" in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_bad_config_value_stops_with_one_clear_line(
    tmp_path: Path, run_dir: Path, port_offset: int
) -> None:
    up = run_cli(up_args(run_dir, port_offset), timeout_s=30, env=BAD_ENV)
    assert_one_clear_line(up)
    assert not (run_dir / "journal").exists()

    service = run_cli(
        ["service", "risk"],
        timeout_s=30,
        env={**BAD_ENV, "FLOTILLA_RUN_DIR": str(tmp_path / "svc")},
    )
    assert_one_clear_line(service)

    module = subprocess.run(
        [sys.executable, "-m", "services.risk"],
        cwd=REPO_ROOT,
        env={**os.environ, **BAD_ENV, "FLOTILLA_RUN_DIR": str(tmp_path / "mod")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert_one_clear_line(module)
