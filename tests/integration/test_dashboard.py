"""The read-only web page in headless Chromium: during a real replay, after it, and against
hostile text and a dead API. Chromium is Debian's (scripts/install-system-deps.sh); without it
these tests fail, they never skip."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from flotilla.audit import run_namespace
from flotilla.dashboard import Collector, DashboardServer, RecentEvents, encode_json
from libs.common import topics
from libs.common.bus import Publisher, new_socket
from libs.common.config import DEFAULT_CONFIG, load_config
from libs.common.messages import Fill, OrderUpdate, TradingState
from libs.common.store import EmbeddedStore
from libs.common.testing.fleet import (
    count_lines,
    journal,
    log_tails,
    processes_of_run,
    read_summary,
    reap,
    spawn_cli,
    stop_cli,
    up_args,
    wait_listening,
    wait_until,
)

from .conftest import Slices

MODES = ("ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY")
SERVICES = ["market-data", "signal", "risk", "execution", "kill-switch"]
HOSTILE = '<img src=x onerror="document.title=1">&amp;<script>document.title=2</script>'


# --- Chromium --------------------------------------------------------------------------------


def chromium() -> str:
    """Debian's chromium; the test fails (never skips) without it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is missing: run `bash scripts/install-system-deps.sh`")
    return found


def dump_dom(url: str, budget_ms: int = 3500, timeout_s: float = 90) -> str:
    """The page's DOM after `budget_ms` of (virtual) time: several polls of the API."""
    with tempfile.TemporaryDirectory(prefix="flotilla-chromium-") as profile:
        proc = subprocess.Popen(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its helpers die with it (killpg below)
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0 and "</html>" in out, f"chromium exited {proc.returncode}: {out!r}"
    return out


@dataclass
class Page:
    """What the rendered DOM shows: text by element id, table rows, every start tag."""

    raw: str = ""
    status: str = ""
    text: dict[str, str] = field(default_factory=dict)
    rows: dict[str, list[list[str]]] = field(default_factory=dict)
    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)

    def number(self, element_id: str) -> int:
        """An integer cell."""
        return int(self.text[element_id])

    def table(self, body_id: str) -> list[list[str]]:
        """Rows of a tbody (its 'nothing yet' placeholder row counts as none)."""
        return [row for row in self.rows.get(body_id, []) if len(row) > 1]

    def by_service(self) -> dict[str, list[str]]:
        """The services table keyed by service name."""
        return {row[0]: row for row in self.table("services-body")}


class _DomParser(HTMLParser):
    """Collects Page from Chromium's --dump-dom output."""

    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of open elements
        self._body: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.page.tags.append((tag, a))
        if tag == "body":
            self.page.status = a.get("data-status") or ""
        if tag == "tbody" and a.get("id"):
            self._body = a["id"]
            self.page.rows[self._body] = []
        elif tag == "tr" and self._body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._body and self._row is not None:
            self.page.rows[self._body].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._body = None
        while self._open:
            open_tag, element_id = self._open.pop()
            if element_id:
                self.page.text.setdefault(element_id, "")
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, element_id in self._open:
            if element_id:
                self.page.text[element_id] = self.page.text.get(element_id, "") + data


def load(url: str) -> Page:
    """Load the page in headless Chromium and parse what it shows."""
    parser = _DomParser()
    raw = dump_dom(url)
    parser.feed(raw)
    page = parser.page
    page.raw = raw
    page.text = {k: v.strip() for k, v in page.text.items()}
    return page


def load_until_counters_grow(url: str, first: Page, run_dir: Path, tries: int = 10) -> Page:
    """Reload (during the replay) until the tick counters moved past the first load's: services
    write their counters every 500 ms, so two quick loads can show the same ones."""
    for _ in range(tries):
        time.sleep(0.5)
        page = load(url)
        assert not all_drained(run_dir), "the replay ended before the page was loaded again"
        if all(page.number(c) > first.number(c) for c in ("c-ticks-published", "c-ticks-received")):
            return page
    return page


# --- a real fleet ------------------------------------------------------------------------------


def store_of(run_dir: Path) -> EmbeddedStore:
    """The running fleet's store, in its run's namespace."""
    return EmbeddedStore(run_dir / "state.sqlite", run_namespace(run_dir))


def latched(run_dir: Path) -> TradingState:
    """The kill switch's latched state right now."""
    store = store_of(run_dir)
    try:
        raw = store.get("ctl:state")
    finally:
        store.close()
    assert raw is not None
    return msgspec.json.decode(raw, type=TradingState)


def all_drained(run_dir: Path) -> bool:
    """Every one of the five instances has marked its input finished."""
    store = store_of(run_dir)
    try:
        return len(store.keys("drained:")) == len(SERVICES)
    finally:
        store.close()


def check_live_page(page: Page, run_dir: Path, before: TradingState) -> None:
    """During the replay: trading state, every service up, live counters, real fills."""
    assert page.status == "live", page.text.get("conn")
    after = latched(run_dir)
    seq = page.number("seq")
    assert page.text["state"] in MODES
    assert before.seq <= seq <= after.seq
    if seq == after.seq:
        assert (page.text["state"], page.text["reason"]) == (after.state, after.reason)
    services = page.by_service()
    assert list(services) == SERVICES
    for name, row in services.items():
        assert row[1] == "up" and row[3] == "1/1 up", row
        assert row[2] in MODES, row
        assert row[4].startswith(f"{name}-1 ("), row
    assert page.number("c-ticks-published") > 0 and page.number("c-fills") >= 1
    _, fills = journal(run_dir)  # read after the page: holds every fill it could show
    journaled = {(f["fill_seq"], f["client_order_id"], f["qty"], f["price"]) for f in fills}
    shown = page.table("fills-body")
    assert shown
    for row in shown:
        assert (int(row[0]), row[2], row[5], row[6]) in journaled, row


def check_page_equals_summary(page: Page, summary: dict[str, Any]) -> None:
    """The page's numbers after the replay are summary.json's, digit for digit."""
    assert page.number("c-fills") == summary["fills"]
    assert page.number("c-orders") == summary["orders_submitted"]
    assert page.number("c-signals") == summary["signals"]
    assert page.number("c-rejected") == sum(summary["orders_rejected"].values())
    assert page.number("c-ticks-published") == sum(summary["ticks_published"].values())
    assert page.number("c-ticks-received") == sum(summary["ticks_received"].values())
    assert page.number("c-working") == summary["working_orders"]
    assert page.text["pnl-realized"] == summary["realized_pnl"]
    assert page.text["pnl-unrealized"] == summary["unrealized_pnl"]
    assert page.text["pnl-fees"] == summary["fees"]
    positions = {row[0]: row[1:] for row in page.table("positions-body")}
    assert positions == {
        sym: [qty, summary["avg_prices"].get(sym, "-"), summary["marks"].get(sym, "-")]
        for sym, qty in summary["positions"].items()
    }
    reasons = {row[0]: int(row[1]) for row in page.table("rejections-body")}
    assert reasons == summary["orders_rejected"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_page_shows_the_live_fleet_and_ends_equal_to_summary(
    slices: Slices, run_dir: Path, port_offset: int, tmp_path: Path
) -> None:
    """`flotilla up` serves the page; loaded twice during the replay it shows the trading state,
    every service up and growing counters; once drained, its numbers are summary.json's; and
    `flotilla dashboard` on the finished run shows the same, with every service down."""
    port = load_config(DEFAULT_CONFIG).dashboard.port + port_offset
    url = f"http://127.0.0.1:{port}/"
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    out, err = out_path.open("w"), err_path.open("w")
    up = spawn_cli(
        up_args(run_dir, port_offset, feed=slices.paths, speed="5", until_end=False),
        stdout=out,
        stderr=err,
    )
    try:
        wait_listening(port, 30)
        wait_until(lambda: count_lines(run_dir / "journal" / "fills.jsonl") >= 1, 60, what="a fill")
        before = latched(run_dir)
        first = load(url)
        assert not all_drained(run_dir), "the replay ended before the page was loaded"
        check_live_page(first, run_dir, before)
        second = load_until_counters_grow(url, first, run_dir)
        assert second.number("c-ticks-published") > first.number("c-ticks-published")
        assert second.number("c-ticks-received") > first.number("c-ticks-received")

        wait_until(lambda: all_drained(run_dir), 90, 0.5, "the replay to drain")
        time.sleep(2.5)  # the dashboard refreshes every second: its data is now post-drain
        drained = load(url)
        assert up.poll() is None, "the fleet (and its dashboard) must still be running"
        code = stop_cli(up, signal.SIGINT, timeout_s=15)
    finally:
        leftovers = reap(up)
        out.close()
        err.close()
    assert code == 0, err_path.read_text() + log_tails(run_dir)
    assert leftovers == [] and processes_of_run(run_dir) == []
    assert f"dashboard (read-only): {url}" in out_path.read_text()
    summary = read_summary(run_dir)
    assert summary["fills"] >= 1
    check_page_equals_summary(drained, summary)
    _, fills = journal(run_dir)
    expected_fills = [[str(f["fill_seq"]), f["client_order_id"]] for f in reversed(fills)][:50]
    assert [row[:1] + row[2:3] for row in drained.table("fills-body")] == expected_fills

    # The finished run, read by `flotilla dashboard`: same numbers; every service is down now.
    after = spawn_cli(["dashboard", "--run-dir", str(run_dir), "--port-offset", str(port_offset)])
    try:
        wait_listening(port, 30)
        finished = load(url)
        assert stop_cli(after, signal.SIGTERM, timeout_s=10) == 0
    finally:
        assert reap(after) == []
    check_page_equals_summary(finished, summary)
    assert finished.text["state"] == summary["trading_state"]["state"]
    assert finished.number("seq") == summary["trading_state"]["seq"]
    assert [row[1] for row in finished.by_service().values()] == ["down"] * len(SERVICES)
    assert [row[:1] + row[2:3] for row in finished.table("fills-body")] == expected_fills


# --- the page against hostile text and a dead API (no fleet) ----------------------------------


class StubCollector:
    """Stands in for Collector: hands the server a fixed snapshot, or none with an error."""

    def __init__(self, view: dict[str, Any] | None, age_s: float = 0.0, error: str = "") -> None:
        self.body = None if view is None else encode_json(view)
        self.age_s = age_s
        self.error = error

    def latest(self) -> tuple[bytes | None, float]:
        """The snapshot and its age."""
        return self.body, self.age_s


@contextmanager
def serving(collector: Any) -> Iterator[str]:
    """The real DashboardServer (real page, real headers) around a stub collector."""
    server = DashboardServer(("127.0.0.1", 0), collector, [])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def hostile_view() -> dict[str, Any]:
    """A snapshot with markup in every kind of string the page shows."""
    order = {
        "time_utc": HOSTILE, "client_order_id": HOSTILE, "strategy": "ofi", "symbol": "BTCUSDT",
        "side": "buy", "order_type": "market", "status": "rejected", "qty": "0.001",
        "filled_qty": "0", "avg_px": None, "reason": HOSTILE,
    }  # fmt: skip
    return {
        "generated_utc": "2024-08-08T23:54:56.929Z",
        "trading": {
            "state": HOSTILE,
            "seq": 7,
            "reason": HOSTILE,
            "source": HOSTILE,
            "operator": HOSTILE,
            "changed_utc": "",
            "halted_strategies": {HOSTILE: HOSTILE},
            "hard_triggers": [HOSTILE],
            "from": "store",
            "heard_s_ago": None,
        },
        "acks": {HOSTILE: 7},
        "services": [
            {
                "service": HOSTILE,
                "health": HOSTILE,
                "obeys": HOSTILE,
                "note": HOSTILE,
                "instances": [{"instance": HOSTILE, "age_s": 0.5, "drained": False}],
                "endpoints": [{"url": HOSTILE, "up": True, "obeys": HOSTILE, "note": ""}],
            }
        ],
        "summary": {
            "ticks_published": {"BTCUSDT": 3},
            "ticks_received": {"BTCUSDT": 3},
            "signals": 1,
            "orders_submitted": 1,
            "orders_rejected": {HOSTILE: 1},
            "order_timeouts": 0,
            "fills": 0,
            "working_orders": 0,
            "sequence_gaps": 0,
            "decode_errors": 0,
            "positions": {HOSTILE: HOSTILE},
            "avg_prices": {},
            "marks": {},
            "fees": HOSTILE,
            "realized_pnl": HOSTILE,
            "unrealized_pnl": "0",
            "tick_to_order_latency": {"p50_ns": None, "p99_ns": None, "samples": 0},
        },
        "recent_orders": [order],
        "recent_fills": [],
    }


@pytest.mark.timeout(120)
def test_hostile_text_is_shown_as_text_never_run() -> None:
    """Markup anywhere in the data shows as literal text: no element, no handler, no script."""
    with serving(StubCollector(hostile_view())) as url:
        page = load(url)
    assert page.status == "live"
    assert [t for t, _ in page.tags if t in ("img", "iframe", "object", "embed")] == []
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{"src": "/app.js", "defer": ""}]
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    for element_id in ("state", "reason", "source", "operator", "pnl-realized", "pnl-fees"):
        assert page.text[element_id] == HOSTILE, element_id
    assert page.text["halted"] == f"{HOSTILE}: {HOSTILE}"
    assert page.table("services-body")[0][0] == HOSTILE
    assert page.table("orders-body")[0][-1] == HOSTILE
    assert page.table("positions-body")[0][:2] == [HOSTILE, HOSTILE]
    assert "<title>Flotilla</title>" in page.raw  # no injected script ever ran


@pytest.mark.timeout(120)
def test_page_says_stale_when_the_api_fails_or_the_data_is_old() -> None:
    """No data (503 with the reason) or old data: the page says STALE and why."""
    with serving(StubCollector(None, error="cannot read the state store: gone")) as url:
        failing = load(url)
    assert failing.status == "stale"
    assert failing.text["conn"].startswith("STALE: cannot read the state store: gone")
    with serving(StubCollector(hostile_view(), age_s=42.0)) as url:
        old = load(url)
    assert old.status == "stale" and old.text["conn"].startswith("STALE: data is 42 s old")
    assert old.number("seq") == 7  # the last data stays visible, marked stale


# --- the SUB side (no fleet) -------------------------------------------------------------------


def test_collector_keeps_what_execution_and_the_kill_switch_publish(tmp_path: Path) -> None:
    """Order updates and fills from execution's PUB, the state from ctl.state: over real sockets."""
    ctx: zmq.Context[Any] = zmq.Context()
    exec_sock = new_socket(ctx, zmq.PUB)
    exec_port = exec_sock.bind_to_random_port("tcp://127.0.0.1")
    ctl_sock = new_socket(ctx, zmq.PUB)
    ctl_port = ctl_sock.bind_to_random_port("tcp://127.0.0.1")
    exec_pub, ctl_pub = Publisher(exec_sock), Publisher(ctl_sock)
    path = tmp_path / "state.sqlite"
    EmbeddedStore(path, "sub").close()
    recent = RecentEvents(10)
    collector = Collector(
        lambda: EmbeddedStore(path, "sub"),
        [],
        f"tcp://127.0.0.1:{exec_port}",
        f"tcp://127.0.0.1:{ctl_port}",
        recent,
    )
    collector.start()
    try:
        update = OrderUpdate(
            ts_event=1, ts_init=1, client_order_id="fl-1", strategy="ofi", venue="binance",
            symbol="BTCUSDT", side="sell", order_type="market", status="filled",
            qty=Decimal("0.001"), filled_qty=Decimal("0.001"), avg_px=Decimal("61836.52"),
        )  # fmt: skip
        fill = Fill(
            ts_event=1, ts_init=1, fill_seq=1, fill_id="f-1", client_order_id="fl-1",
            strategy="ofi", venue="binance", symbol="BTCUSDT", side="sell", qty=Decimal("0.001"),
            price=Decimal("61836.52"), fee=Decimal("0.06183652"), fee_asset="USDT",
            liquidity="taker",
        )  # fmt: skip
        state = TradingState(
            ts_event=1, ts_init=1, state="PAUSED", seq=4, reason="lunch", source="cli"
        )

        def published_and_seen() -> bool:
            """Publish (again: a SUB joins late) until the collector has all three."""
            exec_pub.publish(topics.exec_order("binance", "BTCUSDT"), update)
            exec_pub.publish(topics.exec_fill("binance", "BTCUSDT"), fill)
            ctl_pub.publish(topics.CTL_STATE, state)
            snapshot, _ = collector.latest()
            fleet = json.loads(snapshot or b"{}")
            return bool(
                fleet.get("recent_fills")
                and fleet.get("recent_orders")
                and fleet["trading"]["from"] == "ctl.state"
            )

        wait_until(published_and_seen, 20, 0.3, "the collector to see the published events")
        fleet = json.loads(collector.latest()[0] or b"{}")
    finally:
        collector.stop()
        collector.join(5)
        exec_pub.close()
        ctl_pub.close()
        ctx.destroy(linger=0)
    assert [(o["client_order_id"], o["status"]) for o in fleet["recent_orders"]] == [
        ("fl-1", "filled")
    ]
    assert [(f["fill_seq"], f["price"], f["fee"]) for f in fleet["recent_fills"]] == [
        (1, "61836.52", "0.06183652")
    ]
    trading = fleet["trading"]
    assert (trading["state"], trading["seq"], trading["reason"]) == ("PAUSED", 4, "lunch")
    assert trading["heard_s_ago"] is not None and trading["heard_s_ago"] < 5
