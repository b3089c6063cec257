"""kill-switch: publishes the latched trading state every heartbeat, takes commands, records acks."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import zmq
from prometheus_client import Gauge

from libs.common import topics
from libs.common.bus import DECODE_ERRORS, new_socket
from libs.common.messages import Command, CommandReply, ControlMessage, StateAck, TradingState
from libs.common.metrics import BUS
from libs.common.runtime import Runtime

from .latch import CommandRefused, Latch

log = logging.getLogger(__name__)
ACK_TIMING_KEPT = 1000  # transitions whose ack latencies are kept for `make bench`

STATE_SEQ = Gauge("flotilla_killswitch_state_seq", "Sequence number of the current trading state")
HALTED = Gauge("flotilla_killswitch_halted", "1 when the latched state is not ACTIVE")
ACKED_SEQ = Gauge(
    "flotilla_killswitch_acked_seq", "Last state seq acknowledged, by service", ["service"]
)


class KillSwitchService:
    """The source of truth for whether the fleet may trade."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.kill_switch
        self.acks: dict[str, int] = {}
        self.recorded_mono_ns: dict[int, int] = {}
        self.ack_latency_ns: dict[int, dict[str, int]] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ControlMessage)

    def start(self) -> None:
        """Load the latched state, bind PUB, command REP and ack ROUTER."""
        self.latch = Latch(
            self.rt.store, self.rt.clock, self.cfg.heartbeat_interval_ms, self.cfg.initial_state
        )
        bus = self.rt.cfg.bus
        self.pub = self.rt.publisher(bus.ctl_pub, bind=True)
        self.commands = self.rt.own(new_socket(self.rt.ctx, zmq.REP))
        self.rt.bind(self.commands, bus.ctl_cmd)
        self.ack_sock = self.rt.own(new_socket(self.rt.ctx, zmq.ROUTER, hwm=10_000))
        self.rt.bind(self.ack_sock, bus.ctl_ack)
        self.poller = zmq.Poller()
        self.poller.register(self.commands, zmq.POLLIN)
        self.poller.register(self.ack_sock, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)
        self.publish(self.latch.state)

    def run(self) -> int:
        """Heartbeat on schedule; commands and acks in between."""
        interval_ns = self.cfg.heartbeat_interval_ms * 1_000_000
        next_beat = self.rt.clock.monotonic_ns() + interval_ns
        while not self.rt.stop_requested:
            wait_ms = max(0, (next_beat - self.rt.clock.monotonic_ns()) // 1_000_000)
            ready = dict(self.poller.poll(wait_ms))
            if self.commands in ready:
                self.serve_command()
            if self.ack_sock in ready:
                self.collect_acks()
            if self.rt.clock.monotonic_ns() >= next_beat:
                self.rt.maintain()  # renew the lease before speaking for the fleet
                self.publish(self.latch.heartbeat())
                next_beat += interval_ns
                self.rt.save_stats(self.stats, drained=True)
        return 0

    def publish(self, state: TradingState) -> None:
        """Send the state on ctl.state and update gauges."""
        self.pub.publish(topics.CTL_STATE, state)
        STATE_SEQ.set(state.seq)
        HALTED.set(0 if state.state == "ACTIVE" else 1)

    def serve_command(self) -> None:
        """One command in, one reply out; the new state is published before the reply."""
        reply = self.handle_command(self.commands.recv())
        self.commands.send(self._encoder.encode(reply))

    def handle_command(self, frame: bytes) -> CommandReply:
        """Decode, apply and answer a command; bad input gets an error reply."""
        try:
            cmd = self._decoder.decode(frame)
        except DECODE_ERRORS as exc:
            BUS.decode_errors.labels("ctl").inc()
            return self.reply(False, f"malformed command: {exc}")
        if not isinstance(cmd, Command):
            return self.reply(False, f"expected a command, got {type(cmd).__name__}")
        before = self.latch.state.seq
        try:
            state = self.latch.apply(cmd)
        except CommandRefused as exc:
            return self.reply(False, str(exc))
        if state.seq != before:
            self.remember_recorded(state.seq)
            self.publish(state)
        return self.reply(True)

    def remember_recorded(self, seq: int) -> None:
        """When a transition was recorded (stored and audited), to time the fleet's acks."""
        self.recorded_mono_ns[seq] = self.rt.clock.monotonic_ns()
        self.ack_latency_ns[seq] = {}
        for old in [s for s in self.recorded_mono_ns if s <= seq - ACK_TIMING_KEPT]:
            del self.recorded_mono_ns[old]
            self.ack_latency_ns.pop(old, None)

    def reply(self, ok: bool, error: str = "") -> CommandReply:
        """The current state and who has acknowledged what."""
        now = self.rt.clock.time_ns()
        return CommandReply(
            ts_event=now,
            ts_init=now,
            ok=ok,
            state=self.latch.state,
            error=error,
            acks=dict(self.acks),
        )

    def collect_acks(self) -> None:
        """Record the last seq each instance applied."""
        while True:
            try:
                _identity, frame = self.ack_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # wrong frame count: not one of ours
            self.record_ack(frame)

    def record_ack(self, frame: bytes) -> None:
        """Decode one ack; count junk as a decode error."""
        try:
            ack = self._decoder.decode(frame)
        except DECODE_ERRORS:
            BUS.decode_errors.labels("ctl").inc()
            return
        if isinstance(ack, StateAck):
            self.acks[ack.instance] = ack.seq
            recorded = self.recorded_mono_ns.get(ack.seq)
            if recorded is not None:
                latency = self.rt.clock.monotonic_ns() - recorded
                self.ack_latency_ns[ack.seq].setdefault(ack.instance, latency)
            ACKED_SEQ.labels(ack.service).set(ack.seq)

    def stats(self) -> dict[str, Any]:
        """State and acks for summary.json."""
        s = self.latch.state
        return {
            "state": s.state,
            "state_seq": s.seq,
            "acks": dict(self.acks),
            # seq -> instance -> ns from recording the transition to receiving the ack
            "ack_latency_ns": {str(seq): acks for seq, acks in self.ack_latency_ns.items()},
        }

    def close(self) -> None:
        """Final counters."""
        self.rt.save_stats(self.stats, drained=True, force=True)
