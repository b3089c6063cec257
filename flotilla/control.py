"""`flotilla halt | pause | reduce | emergency | resume | status`: talk to the kill switch and
wait for its acknowledgement (exit non-zero without it)."""

from __future__ import annotations

import sys
import time
from typing import Any

import zmq

from libs.common.bus import RequestClient, RequestTimeout
from libs.common.messages import Command, CommandReply, ControlMessage


def send_command(
    endpoint: str, action: Any, reason: str, operator: str, timeout_ms: int, strategy: str = ""
) -> CommandReply:
    """One command, one acknowledged reply; raises RequestTimeout if the kill switch is silent."""
    ctx: zmq.Context[Any] = zmq.Context()
    client: RequestClient[Any] = RequestClient(ctx, endpoint, ControlMessage, timeout_ms)
    try:
        now = time.time_ns()
        cmd = Command(
            ts_event=now,
            ts_init=now,
            action=action,
            reason=reason,
            operator=operator,
            source="cli",
            strategy=strategy,
        )
        reply = client.request(cmd)
    finally:
        client.close()
        ctx.term()
    if not isinstance(reply, CommandReply):
        raise RequestTimeout(f"unexpected reply {type(reply).__name__}")
    return reply


def run_control(action: str, endpoint: str, args: Any) -> int:
    """Send the command, print the outcome; non-zero when not acknowledged or refused."""
    try:
        reply = send_command(
            endpoint,
            action,
            getattr(args, "reason", ""),
            getattr(args, "operator", ""),
            args.timeout_ms,
            getattr(args, "strategy", ""),
        )
    except RequestTimeout as exc:
        print(
            f"flotilla {action}: no acknowledgement from the kill switch at {endpoint}: {exc}",
            file=sys.stderr,
        )
        return 1
    s = reply.state
    if not reply.ok:
        print(
            f"flotilla {action}: refused: {reply.error} (state {s.state} seq {s.seq})",
            file=sys.stderr,
        )
        return 1
    print(
        f"state {s.state} seq {s.seq} source {s.source} operator {s.operator or '-'} reason {s.reason!r}"
    )
    for strategy, why in sorted(s.halted_strategies.items()):
        print(f"  strategy {strategy}: halted ({why})")
    if s.hard_triggers:
        print(f"  hard triggers active: {', '.join(s.hard_triggers)}")
    for instance, seq in sorted(reply.acks.items()):
        mark = "ok" if seq == s.seq else f"behind (seq {seq})"
        print(f"  {instance}: {mark}")
    return 0
