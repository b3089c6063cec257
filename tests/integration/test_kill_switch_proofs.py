"""The kill switch's proofs on a real fleet (issue 4): the halt race, the dead man's switch,
late joiners, latching across restarts, the GPIO button, and 1,000 audited halts.

Every fleet here is the five real services as processes on loopback; commands go through the
same REQ socket the CLI uses, so a hundred halts do not pay a hundred interpreter starts.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from bench.harness import bench_overrides
from flotilla.cli import main as flotilla_main
from flotilla.control import send_command
from libs.common.bus import Subscriber
from libs.common.config import DEFAULT_CONFIG, load_config, with_port_offset
from libs.common.messages import OrderChannelReply, OrderReply, OrderRequest
from libs.common.messages.market_data import FeedStatus, MarketData
from libs.common.store import open_store
from libs.common.testing.fleet import journal, run_up, running_fleet, wait_until
from services.kill_switch.audit import AUDIT_LOG
from services.kill_switch.gpio import write_pin_file

TRADING = ("ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY")
ACCEPTED = ("new", "partially_filled", "filled")
TRADING_SERVICES = ("market-data", "signal", "risk", "execution")


def fast_fleet_overrides(**extra: str) -> dict[str, str]:
    """The benchmark's fleet (pulse strategy at the full replay rate, loose limits), with the
    data repeated long enough for every test, no panic rules and no resume cooldown."""
    env = bench_overrides(repeat=200)
    env.update(
        {
            "FLOTILLA__SIGNAL__PULSE__EVERY_TICKS": "5",
            "FLOTILLA__RISK__PANIC__ENABLED": "false",
            "FLOTILLA__KILL_SWITCH__RESUME_COOLDOWN_MS": "0",
        }
    )
    env.update(extra)
    return env


class Operator:
    """Commands to one fleet's kill switch, as the CLI sends them."""

    def __init__(self, offset: int) -> None:
        self.endpoint = with_port_offset(load_config(DEFAULT_CONFIG).bus, offset).ctl_cmd

    def send(
        self, action: str, reason: str = "test", operator: str = "", strategy: str = ""
    ) -> Any:
        """One command; the reply (ok or refused)."""
        return send_command(self.endpoint, action, reason, operator, 3_000, strategy)

    def must(self, action: str, **kw: str) -> Any:
        """One command that must be acknowledged and accepted."""
        reply = self.send(action, **kw)
        assert reply.ok, reply.error
        return reply


def metrics_url(service: str, offset: int) -> str:
    """A local fleet service's /metrics."""
    cfg = load_config(DEFAULT_CONFIG)
    port = getattr(cfg, service.replace("-", "_")).metrics_port + offset
    return f"http://127.0.0.1:{port}/metrics"


def obeyed_mode(service: str, offset: int) -> str:
    """The trading state a service says it obeys now (flotilla_trading_state{state} == 1)."""
    try:
        with urllib.request.urlopen(metrics_url(service, offset), timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return "DOWN"
    for mode in (*TRADING, "UNKNOWN"):
        if re.search(rf'^flotilla_trading_state{{state="{mode}"}} 1\.0$', text, re.M):
            return mode
    return "NONE"


def wait_all_obey(offset: int, mode: str, timeout_s: float) -> float:
    """Seconds until every trading service obeys `mode` (scraped)."""
    started = time.monotonic()
    wait_until(
        lambda: all(obeyed_mode(s, offset) == mode for s in TRADING_SERVICES),
        timeout_s,
        0.02,
        f"every trading service obeys {mode}",
    )
    return time.monotonic() - started


def audit_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The fleet's audit log, decoded."""
    store = open_store(run_dir / "state.sqlite", namespace="run-" + run_dir.name)
    try:
        return [msgspec.json.decode(raw) for raw in store.read_log(AUDIT_LOG)]
    finally:
        store.close()


def transitions(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded transition, in order."""
    return [e["record"] for e in audit_entries(run_dir) if e["kind"] == "transition"]


# --- 1. the race ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_order_reaches_the_exchange_after_a_recorded_halt_100_times(
    run_dir: Path, port_offset: int
) -> None:
    rng = random.Random(4)
    ops = Operator(port_offset)
    with running_fleet(run_dir, port_offset, fast_fleet_overrides()) as fleet:
        wait_until(lambda: len(journal(run_dir)[1]) >= 50, 60, 0.1, "orders flowing")
        for _ in range(100):
            time.sleep(rng.uniform(0.005, 0.08))  # a random moment in the order flow
            ops.must("halt", reason="race")
            time.sleep(rng.uniform(0.0, 0.02))
            ops.must("resume", operator="race-test")
        assert not fleet.dead(), [p.instance for p in fleet.dead()]
    updates, _fills = journal(run_dir)
    halts = windows_of(transitions(run_dir))
    assert len(halts) == 100
    violations, busy = [], 0
    for halted_ns, resumed_ns in halts:
        inside = [
            u for u in updates if u["status"] in ACCEPTED and halted_ns < u["ts_init"] < resumed_ns
        ]
        violations += inside
        busy += any(halted_ns - 50_000_000 < u["ts_init"] <= halted_ns for u in updates)
    assert violations == [], f"{len(violations)} orders reached the exchange while HALTED"
    assert busy >= 90, f"only {busy} of 100 halts landed while orders were flowing"


def windows_of(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(recorded HALTED, recorded ACTIVE again) wall-clock windows of the cli halts."""
    windows, halted = [], None
    for rec in records:
        if rec["state"] == "HALTED" and rec["source"] == "cli":
            halted = rec["changed_ns"]
        elif rec["state"] == "ACTIVE" and halted is not None:
            windows.append((halted, rec["changed_ns"]))
            halted = None
    return windows


# --- 4. the dead man's switch -----------------------------------------------------------------

DEADMAN_MARGIN_MS = 500
SCRAPE_MARGIN_MS = 1_000
DEADMAN_LOG = re.compile(r"no ctl\.state for (\d+) ms: dead man's switch tripped")


def deadman_silences_ms(run_dir: Path) -> dict[str, int]:
    """Per service, the silence (ms, its own clock) after which it logged its dead man's trip."""
    silences = {}
    for service in TRADING_SERVICES:
        for log_path in (run_dir / "logs").glob(f"{service}-*.log"):
            found = DEADMAN_LOG.search(log_path.read_text())
            if found:
                silences[service] = int(found.group(1))
    return silences


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_frozen_kill_switch_halts_every_service_and_a_thaw_resumes_nothing(
    run_dir: Path, port_offset: int
) -> None:
    ops = Operator(port_offset)
    overrides = fast_fleet_overrides(FLOTILLA__SIGNAL__PULSE__EVERY_TICKS="50")
    with running_fleet(run_dir, port_offset, overrides) as fleet:
        wait_all_obey(port_offset, "ACTIVE", 60)
        ks = fleet.procs["kill-switch"].popen
        os.kill(ks.pid, signal.SIGSTOP)
        try:
            took_s = wait_all_obey(port_offset, "HALTED", 5)
            time.sleep(1.0)
        finally:
            os.kill(ks.pid, signal.SIGCONT)
        time.sleep(1.5)  # long enough for any resume-by-itself to show
        modes = {s: obeyed_mode(s, port_offset) for s in TRADING_SERVICES}
        status = ops.must("status")
        orders_before = len(journal(run_dir)[0])
        time.sleep(0.5)
        orders_after = len(journal(run_dir)[0])
        ops.must("resume", operator="ops")
        wait_all_obey(port_offset, "ACTIVE", 5)
        assert not fleet.dead()
    silences = deadman_silences_ms(run_dir)
    print(
        f"dead man's switch: each service tripped after {silences} ms of silence; "
        f"the test's scrape saw every service HALTED {took_s * 1000:.0f} ms after SIGSTOP"
    )
    # Every trading service tripped by itself, within 3 heartbeats (300 ms) plus a margin for a
    # 2-core machine running the whole fleet flat out (measured: 301-339 ms). This caught
    # market-data tripping after 469-788 ms because it read no control message while preloading
    # its feed (CI saw 1,068 ms from the scrape). The scraped figure gets more margin: it also
    # pays for four HTTP scrapes of busy services.
    assert set(silences) == set(TRADING_SERVICES), silences
    assert max(silences.values()) < 300 + DEADMAN_MARGIN_MS, silences
    assert took_s < (300 + DEADMAN_MARGIN_MS + SCRAPE_MARGIN_MS) / 1000
    assert set(modes.values()) == {"HALTED"}, modes
    assert (status.state.state, status.state.source) == ("HALTED", "deadman")
    assert orders_after == orders_before, "orders went on after the thaw"


class FeedWatcher:
    """A SUB on market-data's feed: its lifecycle status and whether any tick has gone out."""

    def __init__(self, offset: int) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        sock = self.ctx.socket(zmq.SUB)
        sock.connect(with_port_offset(load_config(DEFAULT_CONFIG).bus, offset).md_pub)
        self.sub: Subscriber[Any] = Subscriber(sock, MarketData)
        self.sub.subscribe(b"md.")
        self.states: list[str] = []
        self.last_status_mono = 0.0
        self.ticks = 0

    def poll(self) -> None:
        """Read everything waiting."""
        for env in self.sub.recv_batch():
            if isinstance(env.msg, FeedStatus):
                self.states.append(env.msg.state)
                self.last_status_mono = time.monotonic()
            else:
                self.ticks += 1

    def preloading(self) -> bool:
        """It said `waiting` (for consumers), then went quiet without going `live`: it stopped
        waiting and is parsing its feed (while it waits it says so every 20 ms)."""
        self.poll()
        quiet_s = time.monotonic() - self.last_status_mono
        return self.states[-1:] == ["waiting"] and quiet_s > 0.2 and self.ticks == 0

    def close(self) -> None:
        """Close the socket and context."""
        self.sub.sock.close(linger=0)
        self.ctx.term()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_market_data_obeys_a_halt_while_it_preloads_its_feed(
    run_dir: Path, port_offset: int
) -> None:
    """Preloading a long feed takes seconds between market-data's last `waiting` and `live`: a
    halt sent then is obeyed at once, not when publishing starts (as it used to be)."""
    cfg = load_config(DEFAULT_CONFIG)
    copies = [str(Path(p).resolve()) for p in cfg.market_data.feed] * 8  # seconds of parsing
    # The test is one more consumer market-data waits for, so it decides when preloading starts.
    consumers = {**cfg.market_data.wait_for_consumers, "preload-test": 1}
    overrides = fast_fleet_overrides(
        FLOTILLA__MARKET_DATA__FEED=json.dumps(copies),
        FLOTILLA__MARKET_DATA__WAIT_FOR_CONSUMERS=json.dumps(consumers),
    )
    ops = Operator(port_offset)
    feed = FeedWatcher(port_offset)
    try:
        with running_fleet(run_dir, port_offset, overrides) as fleet:
            wait_until(lambda: feed.poll() or "waiting" in feed.states, 60, 0.01, "`waiting`")
            fleet.store.set("ready:preload-test:1", b"1")
            wait_until(feed.preloading, 30, 0.01, "market-data to start preloading")
            ops.must("halt")
            wait_until(
                lambda: obeyed_mode("market-data", port_offset) == "HALTED", 30, 0.02, "HALTED"
            )
            feed.poll()
            obeyed_while_preloading = "live" not in feed.states and feed.ticks == 0
            wait_until(lambda: feed.poll() or feed.ticks > 0, 60, 0.05, "the first tick")
    finally:
        feed.close()
    assert obeyed_while_preloading, "market-data obeyed the halt only once it was publishing"


# --- 5. a late joiner -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_service_started_after_a_halt_refuses_orders_before_any_heartbeat(
    run_dir: Path, port_offset: int
) -> None:
    ops = Operator(port_offset)
    # Heartbeats 5 s apart: a restarted execution can only learn the state from its snapshot.
    overrides = fast_fleet_overrides(
        FLOTILLA__KILL_SWITCH__HEARTBEAT_INTERVAL_MS="5000",
        FLOTILLA__SIGNAL__PULSE__EVERY_TICKS="1000000000",
    )
    orders_url = with_port_offset(load_config(DEFAULT_CONFIG).bus, port_offset).orders
    with running_fleet(run_dir, port_offset, overrides) as fleet:
        wait_all_obey(port_offset, "ACTIVE", 60)
        ops.must("halt", reason="before the restart")
        fleet.stop("execution")
        fleet.start("execution")
        replies = hammer_orders(orders_url, seconds=2.0)
        learned = wait_until(
            lambda: obeyed_mode("execution", port_offset) == "HALTED", 3, 0.02, "snapshot"
        )
    assert learned
    reasons = {r.reason for r in replies}
    assert replies and not any(r.accepted for r in replies), reasons
    assert reasons <= {"state_unknown", "trading_halted"}, reasons
    assert "trading_halted" in reasons  # it learned HALTED long before the next heartbeat


def hammer_orders(endpoint: str, seconds: float) -> list[OrderReply]:
    """Send orders straight to execution's order socket for `seconds`, from its first moment."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(OrderChannelReply)
    replies: list[OrderReply] = []
    deadline = time.monotonic() + seconds
    try:
        for n in range(100_000):
            if time.monotonic() > deadline:
                break
            now = time.time_ns()
            sock.send(
                enc.encode(
                    OrderRequest(
                        ts_event=now,
                        ts_init=now,
                        client_order_id=f"late-{n}",
                        signal_id=f"late-{n}",
                        strategy="pulse",
                        venue="binance",
                        symbol="BTCUSDT",
                        side="buy",
                        order_type="market",
                        qty=Decimal("0.001"),
                    )
                )
            )
            if not sock.poll(2_000):
                sock.close(linger=0)
                sock = ctx.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
                continue
            reply = dec.decode(sock.recv())
            if isinstance(reply, OrderReply):
                replies.append(reply)
    finally:
        sock.close(linger=0)
        ctx.term()
    return replies


# --- 3. latching across restarts, and the button ----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_button_latches_halted_through_restarts_and_release_resumes_nothing(
    run_dir: Path, port_offset: int
) -> None:
    pins = run_dir / "pins"
    pins.mkdir(parents=True)
    ops = Operator(port_offset)
    overrides = fast_fleet_overrides(
        FLOTILLA__SIGNAL__PULSE__EVERY_TICKS="50",
        FLOTILLA__KILL_SWITCH__RESUME_COOLDOWN_MS="3000",
        FLOTILLA__KILL_SWITCH__GPIO__ENABLED="true",
        FLOTILLA__KILL_SWITCH__GPIO__BACKEND="simulated",
        FLOTILLA__KILL_SWITCH__GPIO__SIMULATED_DIR=str(pins),
    )
    estop = load_config(DEFAULT_CONFIG).kill_switch.gpio.estop_pin
    with running_fleet(run_dir, port_offset, overrides) as fleet:
        wait_all_obey(port_offset, "ACTIVE", 60)
        write_pin_file(pins, estop, True)  # the button is pressed
        wait_all_obey(port_offset, "HALTED", 5)
        pressed = ops.must("status").state
        for service in ("kill-switch", *TRADING_SERVICES):
            fleet.restart(service)
        wait_until(lambda: ops.send("status").ok, 30, 0.1, "kill switch back")
        wait_all_obey(port_offset, "HALTED", 30)
        held = ops.send("resume", operator="ops")
        write_pin_file(pins, estop, False)  # released
        time.sleep(1.0)
        after_release = ops.must("status").state
        # The restarts above may already have outlasted the cooldown: start it afresh.
        ops.must("halt", reason="cooldown drill")
        early = ops.send("resume", operator="ops")
        time.sleep(3.2)
        late = ops.send("resume", operator="ops")
        wait_all_obey(port_offset, "ACTIVE", 5)
        assert not fleet.dead()
    assert (pressed.state, pressed.source) == ("HALTED", "gpio")
    assert not held.ok and "hard trigger" in held.error
    assert after_release.state == "HALTED"
    assert not early.ok and "cooldown" in early.error, early.error
    assert late.ok, late.error


# --- 6. a thousand halts, audited ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_1000_halts_are_1000_sequenced_transitions_and_the_audit_log_verifies(
    run_dir: Path, port_offset: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = Operator(port_offset)
    overrides = fast_fleet_overrides(FLOTILLA__SIGNAL__PULSE__EVERY_TICKS="1000000000")
    with running_fleet(run_dir, port_offset, overrides):
        wait_all_obey(port_offset, "ACTIVE", 60)
        first = ops.must("status").state.seq
        replies = [ops.send("halt", reason=f"drill {i}", operator="ops") for i in range(1000)]
    assert all(r.ok for r in replies)
    seqs = [r.state.seq for r in replies]
    assert seqs == list(range(first + 1, first + 1001))
    halts = [t for t in transitions(run_dir) if t["reason"].startswith("drill ")]
    assert [t["seq"] for t in halts] == seqs

    assert flotilla_main(["audit", "verify", "--run-dir", str(run_dir)]) == 0
    assert "audit log OK" in capsys.readouterr().out
    tamper_with_one_entry(run_dir / "state.sqlite", index=500)
    assert flotilla_main(["audit", "verify", "--run-dir", str(run_dir)]) == 1
    assert "entry 500" in capsys.readouterr().err


def tamper_with_one_entry(db: Path, index: int) -> None:
    """Change one character of one audit entry, as someone editing the database would."""
    conn = sqlite3.connect(db)
    try:
        where = "name = ? AND idx = ?"
        (raw,) = conn.execute(f"SELECT value FROM log WHERE {where}", (AUDIT_LOG, index)).fetchone()
        edited = bytes(raw).replace(b"drill", b"dRill", 1)
        assert edited != bytes(raw)
        conn.execute(f"UPDATE log SET value = ? WHERE {where}", (edited, AUDIT_LOG, index))
        conn.commit()
    finally:
        conn.close()


# --- 7. panic rules end to end ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"FLOTILLA__RISK__PANIC__DAILY_LOSS_LIMIT": "0.2"}, ("HALTED", "panic:daily_loss", {})),
        (
            {"FLOTILLA__RISK__PANIC__MAX_FILLS_PER_WINDOW": "3"},
            ("ACTIVE", "panic:fill_throttle", {"ofi"}),
        ),
    ],
    ids=["daily_loss_halts_the_fleet", "fill_throttle_disables_the_strategy"],
)
def test_a_panic_in_risk_becomes_a_kill_switch_transition(
    run_dir: Path, port_offset: int, override: dict[str, str], expected: tuple[str, str, Any]
) -> None:
    res = run_up(run_dir, port_offset, env={**override, "FLOTILLA_LOG_LEVEL": "WARNING"})
    assert res.returncode == 0, res.stderr
    panics = [t for t in transitions(run_dir) if t["source"].startswith("panic:")]
    assert panics, "no panic transition"
    first = panics[0]
    assert (first["state"], first["source"], set(first["halted_strategies"])) == (
        expected[0],
        expected[1],
        set(expected[2]),
    )
    # what risk did after it: every later signal refused for the new state
    rejected = res.summary["orders_rejected"]
    assert rejected.get("trading_halted", 0) + rejected.get("strategy_halted", 0) > 0, rejected
