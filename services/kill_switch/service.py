"""kill-switch: publishes the latched trading state every heartbeat, takes commands, panics,
dead man's trips and GPIO triggers, and records every instance's acknowledgement."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import zmq
from prometheus_client import Counter, Gauge, Histogram

from libs.common import topics
from libs.common.bus import DECODE_ERRORS, RequestClient, RequestTimeout, new_socket, send_nowait
from libs.common.messages import (
    Command,
    CommandReply,
    ControlMessage,
    DeadmanTrip,
    HaltPrepare,
    OrderChannelReply,
    Panic,
    RiskEvent,
    StateAck,
    StateRequest,
    TradingState,
)
from libs.common.metrics import BUS, EVERY_CALL, TRADING_MODE, TRADING_MODES, SampledTimer
from libs.common.runtime import Runtime

from .latch import CommandRefused, Latch
from .panel import PanelLink

log = logging.getLogger(__name__)
ACK_TIMING_KEPT = 1000  # transitions whose ack latencies are kept for `make bench`

STATE_SEQ = Gauge("flotilla_killswitch_state_seq", "Sequence number of the current trading state")
HALTED = Gauge("flotilla_killswitch_halted", "1 when the latched state is not ACTIVE")
ACKED_SEQ = Gauge(
    "flotilla_killswitch_acked_seq", "Last state seq acknowledged, by service", ["service"]
)
ACK_LATENCY = Histogram(
    "flotilla_killswitch_ack_latency_seconds",
    "From recording a transition to an instance's acknowledgement of it, by service and instance",
    ["service", "instance"],
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0),
)
TRANSITIONS = Counter(
    "flotilla_killswitch_transitions", "Recorded transitions, by source kind", ["source"]
)
PREPARE_FAILURES = Counter(
    "flotilla_killswitch_prepare_failures",
    "Restricting transitions recorded without execution's confirmation of the halt-prepare",
)
HARD_TRIGGERS = Gauge(
    "flotilla_killswitch_hard_triggers", "Hard triggers (button, wire, tamper) active now"
)
COMMAND_TIMER = SampledTimer("killswitch_command", EVERY_CALL)  # decode, latch, audit, publish


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
        self.stall_limit_ns = (
            rt.cfg.missed_heartbeats_to_halt * self.cfg.heartbeat_interval_ms * 1_000_000
        )

    def start(self) -> None:
        """Load the latched state, bind PUB, command REP and ack ROUTER, connect risk and GPIO."""
        self.latch = Latch(
            self.rt.store,
            self.rt.clock,
            self.cfg.heartbeat_interval_ms,
            self.cfg.initial_state,
            self.cfg.resume_cooldown_ms,
        )
        self.latch.prepare = self.prepare_execution
        bus = self.rt.cfg.bus
        self.pub = self.rt.publisher(bus.ctl_pub, bind=True)
        self.commands = self.rt.own(new_socket(self.rt.ctx, zmq.REP))
        self.rt.bind(self.commands, bus.ctl_cmd)
        self.ack_sock = self.rt.own(new_socket(self.rt.ctx, zmq.ROUTER, hwm=10_000))
        self.rt.bind(self.ack_sock, bus.ctl_ack)
        self.panics = self.rt.subscriber(bus.risk_pub, RiskEvent)
        self.panics.subscribe(topics.exact(topics.RISK_PANIC))
        self.execution: RequestClient[Any] = self.rt.own(
            RequestClient(self.rt.ctx, bus.orders, OrderChannelReply, self.cfg.prepare_timeout_ms)
        )
        self.panel = PanelLink(self.cfg.gpio, self.rt.clock)
        self.poller = zmq.Poller()
        for sock in (self.commands, self.ack_sock, self.panics.sock, *self.panel.sockets):
            self.poller.register(sock, zmq.POLLIN)
        self.rt.serve_metrics(self.cfg.metrics_port)
        self.panel.start()
        self.publish(self.latch.state)

    def run(self) -> int:
        """Heartbeat on schedule; commands, acks, panics and GPIO events in between."""
        interval_ns = self.cfg.heartbeat_interval_ms * 1_000_000
        next_beat = self.rt.clock.monotonic_ns() + interval_ns
        last_turn = self.rt.clock.monotonic_ns()
        while not self.rt.stop_requested:
            wait_ms = max(0, (next_beat - self.rt.clock.monotonic_ns()) // 1_000_000)
            ready = dict(self.poller.poll(min(wait_ms, self.panel.poll_ms)))
            now = self.rt.clock.monotonic_ns()
            self.check_stall(now - last_turn)
            last_turn = now
            self.serve(ready)
            if self.rt.clock.monotonic_ns() >= next_beat:
                self.rt.maintain()  # renew the lease before speaking for the fleet
                self.publish(self.latch.heartbeat())
                next_beat = max(next_beat + interval_ns, self.rt.clock.monotonic_ns())
                self.rt.save_stats(self.stats, drained=True)
        return 0

    def serve(self, ready: dict[Any, Any]) -> None:
        """Everything waiting: GPIO first (the button outranks everything), then the rest."""
        self.serve_panel()
        if self.commands in ready:
            self.serve_command()
        if self.ack_sock in ready:
            self.collect_acks()
        if self.panics.sock in ready:
            for env in self.panics.recv_batch():
                if isinstance(env.msg, Panic):
                    self.changed(self.latch.on_panic(env.msg))

    def check_stall(self, gap_ns: int) -> None:
        """A kill switch frozen longer than the dead man's window halts when it thaws: the
        fleet has already halted itself, and a thaw must not resume it (SIGSTOP/SIGCONT)."""
        if self.cfg.stall_halt and gap_ns > self.stall_limit_ns:
            reason = f"kill switch was frozen for {gap_ns // 1_000_000} ms"
            log.error("%s: latching HALTED", reason)
            self.changed(self.latch.relatch(reason, "deadman"))

    # --- the GPIO panel -------------------------------------------------------------------

    def serve_panel(self) -> None:
        """Apply button/tamper events and the watchdog; show the state on the LEDs."""
        for trigger, active, detail in self.panel.events():
            self.changed(self.latch.set_trigger(trigger, active, detail))
        HARD_TRIGGERS.set(len(self.latch.hard_triggers))
        state = self.latch.state
        self.panel.show(state.state, self.acknowledged(state.seq))

    def acknowledged(self, seq: int) -> bool:
        """True when every instance that ever acknowledged has acknowledged `seq`."""
        return bool(self.acks) and all(s >= seq for s in self.acks.values())

    # --- transitions ----------------------------------------------------------------------

    def prepare_execution(self, state: TradingState) -> None:
        """Phase one of a restricting transition: execution stops new orders before it is
        recorded, so no order can reach the venue after the record (issue 4, proof 1)."""
        now = self.rt.clock.time_ns()
        prep = HaltPrepare(ts_event=now, ts_init=now, seq=state.seq, state=state.state)
        try:
            reply = self.execution.request(prep)
        except RequestTimeout as exc:
            PREPARE_FAILURES.inc()
            log.warning("execution did not confirm halt-prepare seq %d: %s", state.seq, exc)
            return
        if not isinstance(reply, StateAck):
            PREPARE_FAILURES.inc()
            log.warning("unexpected reply to halt-prepare: %s", type(reply).__name__)

    def changed(self, state: TradingState | None) -> None:
        """Publish a recorded transition (None: nothing changed)."""
        if state is None:
            return
        TRANSITIONS.labels(state.source.split(":", 1)[0]).inc()
        self.remember_recorded(state.seq)
        self.publish(state)

    def publish(self, state: TradingState) -> None:
        """Send the state on ctl.state and update gauges."""
        self.pub.publish(topics.CTL_STATE, state)
        STATE_SEQ.set(state.seq)
        HALTED.set(0 if state.state == "ACTIVE" else 1)
        for name in TRADING_MODES:
            TRADING_MODE.labels(name).set(1 if name == state.state else 0)

    # --- commands -------------------------------------------------------------------------

    def serve_command(self) -> None:
        """One command in, one reply out; the new state is published before the reply."""
        t0 = COMMAND_TIMER.start()
        reply = self.handle_command(self.commands.recv())
        COMMAND_TIMER.stop(t0)
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
            self.changed(state)
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

    # --- the ROUTER: acks, snapshot requests, dead man's trips -----------------------------

    def collect_acks(self) -> None:
        """Everything services sent on the ack socket."""
        while True:
            try:
                identity, frame = self.ack_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # wrong frame count: not one of ours
            self.on_router_message(identity, frame)

    def on_router_message(self, identity: bytes, frame: bytes) -> None:
        """Decode one message; count junk as a decode error."""
        try:
            msg = self._decoder.decode(frame)
        except DECODE_ERRORS:
            BUS.decode_errors.labels("ctl").inc()
            return
        match msg:
            case StateAck():
                self.record_ack(msg)
            case StateRequest():
                BUS.snapshots["trading_state"].inc()
                state = self.latch.heartbeat()
                send_nowait(self.ack_sock, [identity, self._encoder.encode(state)], "ctl")
            case DeadmanTrip():
                log.error("%s reports no ctl.state for %d ms", msg.instance, msg.silent_ms)
                self.changed(self.latch.on_deadman(msg))

    def record_ack(self, ack: StateAck) -> None:
        """Record the last seq an instance applied, and how long it took."""
        self.acks[ack.instance] = ack.seq
        recorded = self.recorded_mono_ns.get(ack.seq)
        if recorded is not None and ack.instance not in self.ack_latency_ns[ack.seq]:
            latency = self.rt.clock.monotonic_ns() - recorded
            self.ack_latency_ns[ack.seq][ack.instance] = latency
            ACK_LATENCY.labels(ack.service, ack.instance).observe(latency / 1e9)
        ACKED_SEQ.labels(ack.service).set(ack.seq)

    def stats(self) -> dict[str, Any]:
        """State and acks for summary.json."""
        s = self.latch.state
        return {
            "state": s.state,
            "state_seq": s.seq,
            "halted_strategies": dict(s.halted_strategies),
            "hard_triggers": sorted(self.latch.hard_triggers),
            "acks": dict(self.acks),
            # seq -> instance -> ns from recording the transition to receiving the ack
            "ack_latency_ns": {str(seq): acks for seq, acks in self.ack_latency_ns.items()},
        }

    def close(self) -> None:
        """Final counters; the panel's LEDs off."""
        self.panel.stop()
        self.rt.save_stats(self.stats, drained=True, force=True)
