"""The dashboard's API over a real EmbeddedStore filled the way services fill it, its HTTP surface
(read-only: 405, 404, 403, security headers), escaping, and the page's static assets."""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from flotilla import dashboard
from flotilla.audit import run_namespace
from flotilla.cli import main as cli_main
from flotilla.dashboard import (
    Collector,
    DashboardServer,
    Endpoint,
    RecentEvents,
    Scrape,
    Unusable,
    encode_json,
    fleet_view,
    host_allowed,
    read_stats,
    services_view,
    store_opener,
    tail_lines,
    trading_view,
)
from flotilla.fleet import Fleet, page_url
from flotilla.metrics_tail import Sample
from flotilla.summary import build_summary
from libs.common.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config
from libs.common.messages import Fill, OrderUpdate, TradingState
from libs.common.runtime import Runtime
from libs.common.store import EmbeddedStore
from services.execution.journal import Journal

NOBODY = "tcp://127.0.0.1:1"  # nothing listens: the SUB sockets just keep trying, harmlessly
HOSTILE = '<img src=x onerror="alert(1)">&<script>alert(2)</script>'

# Stats documents shaped as each service's stats() returns them (services/*/service.py).
MARKET_DATA = {
    "ticks_published": {"BTCUSDT": 120, "ETHUSDT": 80},
    "lines_read": 230,
    "bad_lines": 1,
    "parse_errors": 2,
    "unknown_symbol_drops": 3,
    "skipped_messages": 0,
    "first_publish_mono_ns": 1,
    "last_publish_mono_ns": 2,
}
SIGNAL_REPLICAS = {
    "signal-1": {"ticks_received": {"BTCUSDT": 120}, "signals": {"BTCUSDT": 4}},
    "signal-2": {"ticks_received": {"ETHUSDT": 80}, "signals": {"ETHUSDT": 3}},
}
RISK = {
    "positions": {"BTCUSDT": "0.00100000", "ETHUSDT": "-0.0200"},
    "avg_prices": {"BTCUSDT": "61836.52500000", "ETHUSDT": "2683.2"},
    "fees": "0.52384930",
    "marks": {"BTCUSDT": "61842.98500000", "ETHUSDT": "2683.60500000"},
    "realized_pnl": "-0.51947830",
    "unrealized_pnl": "0.07760000",
    "last_fill_seq": 6,
    "orders_sent": 9,
    "orders_rejected": {"rate_limit": 2, "strategy_halted": 4},
    "order_timeouts": 1,
    "working_orders": 0,
    "signals_received": 7,
    "signals_announced": 7,
    "sequence_gaps": 1,
    "decode_errors": 0,
}
EXECUTION = {
    "orders_received": 9,
    "orders_rejected": {"stale_order": 1},
    "fills": 6,
    "working_orders": 1,
    "tick_to_order_p50_ns": 450_000,
    "tick_to_order_p99_ns": 900_000,
    "tick_to_order_p999_ns": 950_000,
    "tick_to_order_samples": 9,
    "sequence_gaps": 0,
    "decode_errors": 2,
}
KILL_SWITCH = {
    "state": "ACTIVE",
    "state_seq": 2,
    "halted_strategies": {},
    "hard_triggers": [],
    "acks": {"risk-1": 2, "execution-1": 2},
    "ack_latency_ns": {},
}


def save_stats(path: Path, namespace: str, service: str, instance: str, doc: dict) -> None:
    """Write one instance's stats exactly as a service does: Runtime.save_stats on its own store."""
    rt = Runtime(
        service, load_config(DEFAULT_CONFIG), path.parent, store=EmbeddedStore(path, namespace)
    )
    rt.instance = instance
    try:
        rt.save_stats(lambda: dict(doc), force=True)
    finally:
        rt.close()


def fill_fleet_store(path: Path, namespace: str) -> None:
    """Every service's stats, two signal replicas, and the kill switch's latched state."""
    save_stats(path, namespace, "market-data", "market-data-1", MARKET_DATA)
    for instance, doc in SIGNAL_REPLICAS.items():
        save_stats(
            path, namespace, "signal", instance, {**doc, "sequence_gaps": 0, "decode_errors": 0}
        )
    save_stats(path, namespace, "risk", "risk-1", RISK)
    save_stats(path, namespace, "execution", "execution-1", EXECUTION)
    save_stats(path, namespace, "kill-switch", "kill-switch-1", KILL_SWITCH)
    store = EmbeddedStore(path, namespace)
    try:
        store.set("ctl:state", msgspec.json.encode(state(2, "ACTIVE", "resumed", operator="alice")))
        store.set("drained:execution:execution-1", b"1")
    finally:
        store.close()


def state(seq: int, mode: str, reason: str, **fields: Any) -> TradingState:
    """A trading state as the kill switch records and publishes it."""
    return TradingState(
        ts_event=1, ts_init=1, state=mode, seq=seq, reason=reason, source="cli", **fields
    )


@pytest.fixture
def fleet_store(tmp_path: Path) -> tuple[Path, str]:
    """A run's state.sqlite filled by 'services', and its namespace."""
    path = tmp_path / "run" / "state.sqlite"
    namespace = run_namespace(path.parent)
    fill_fleet_store(path, namespace)
    return path, namespace


@contextmanager
def served(
    path: Path, namespace: str, endpoints: list[Endpoint] | None = None, **kwargs: Any
) -> Iterator[str]:
    """A dashboard (collector thread + HTTP server) on a free port; yields its base URL."""
    collector = Collector(
        lambda: EmbeddedStore(path, namespace), endpoints or [], NOBODY, NOBODY, RecentEvents(50)
    )
    server = DashboardServer(("127.0.0.1", 0), collector, kwargs.get("allowed_hosts", []))
    collector.start()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        collector.stop()
        collector.join(5)


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, for error statuses too."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def fleet_stats(path: Path, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """The stats as `flotilla up` reads them for summary.json (Fleet.stats)."""
    fleet = Fleet.__new__(Fleet)  # only its store: no run dir, no processes
    fleet.store = EmbeddedStore(path, namespace)
    try:
        return fleet.stats()
    finally:
        fleet.close()


# --- the API -----------------------------------------------------------------------------------


def test_api_numbers_are_summary_json_numbers(fleet_store: tuple[Path, str]) -> None:
    """The page's counters, positions and PnL are build_summary over the same stats documents:
    exactly what `flotilla up` writes to summary.json."""
    path, namespace = fleet_store
    with served(path, namespace) as base:
        status, headers, body = request(base + "/api/fleet")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["error"] == ""
    assert 0 <= doc["age_ms"] < 2000
    fleet = doc["fleet"]
    expected = build_summary(fleet_stats(path, namespace), {})
    assert fleet["summary"] == json.loads(json.dumps(expected))
    s = fleet["summary"]
    assert (s["fills"], s["orders_submitted"], s["working_orders"]) == (6, 9, 1)
    assert s["orders_rejected"] == {"rate_limit": 2, "stale_order": 1, "strategy_halted": 4}
    assert s["signals"] == 7 and s["ticks_received"] == {"BTCUSDT": 120, "ETHUSDT": 80}
    assert s["positions"] == RISK["positions"] and s["realized_pnl"] == "-0.51947830"
    assert s["sequence_gaps"] == 1 and s["decode_errors"] == 2


def test_api_trading_state_services_and_acks(fleet_store: tuple[Path, str]) -> None:
    """The latched state from the store, one row per service with its instances' stats age."""
    path, namespace = fleet_store
    with served(path, namespace) as base:
        fleet = json.loads(request(base + "/api/fleet")[2])["fleet"]
    trading = fleet["trading"]
    assert (trading["state"], trading["seq"], trading["reason"]) == ("ACTIVE", 2, "resumed")
    assert (trading["operator"], trading["from"], trading["heard_s_ago"]) == (
        "alice",
        "store",
        None,
    )
    assert fleet["acks"] == {"risk-1": 2, "execution-1": 2}
    rows = {row["service"]: row for row in fleet["services"]}
    assert list(rows) == ["market-data", "signal", "risk", "execution", "kill-switch"]
    signal = rows["signal"]
    assert [i["instance"] for i in signal["instances"]] == ["signal-1", "signal-2"]
    assert all(0 <= i["age_s"] < 5 for i in signal["instances"])
    assert signal["health"] == "unknown"  # stats but no metrics endpoint given
    assert rows["execution"]["instances"][0]["drained"] is True
    assert fleet["recent_orders"] == [] and fleet["recent_fills"] == []


def test_api_health_from_metrics_endpoints(fleet_store: tuple[Path, str]) -> None:
    """Endpoints that do not answer make a service down; stale stats show as stale."""
    path, namespace = fleet_store
    closed = Endpoint("risk", "http://127.0.0.1:1/metrics")
    with served(path, namespace, [closed]) as base:
        fleet = json.loads(request(base + "/api/fleet")[2])["fleet"]
    risk = next(row for row in fleet["services"] if row["service"] == "risk")
    assert risk["health"] == "down"
    assert risk["endpoints"][0]["up"] is False and risk["endpoints"][0]["error"]


def scrape(service: str, mode: str | None, lease: float | None = None) -> Scrape:
    """A successful scrape exporting flotilla_trading_state (and the lease gauge)."""
    samples = {}
    if mode is not None:
        for name in ("ACTIVE", "HALTED"):
            samples[("flotilla_trading_state", (("state", name),))] = Sample(
                "gauge", 1.0 if name == mode else 0.0
            )
    if lease is not None:
        samples[("flotilla_lease_held", ())] = Sample("gauge", lease)
    return Scrape(Endpoint(service, f"http://{service}:1/metrics"), samples)


def test_services_view_health_words() -> None:
    """up, stale, down, no stats: from stats age and the scrapes; obeys and standby from metrics."""
    now = time.time_ns()

    def doc(service: str, age_s: float) -> dict[str, Any]:
        return {
            "service": service,
            "instance": f"{service}-1",
            "updated_ns": now - int(age_s * 1e9),
        }

    stats = {
        "risk": [doc("risk", 0.4)],
        "signal": [doc("signal", 30)],
        "market-data": [doc("market-data", 1)],
    }
    scrapes = [
        scrape("risk", "HALTED"),
        scrape("signal", "ACTIVE"),
        Scrape(Endpoint("market-data", "http://md:1/metrics"), None, "Connection refused"),
        scrape("execution", None, lease=0.0),
    ]
    rows = {r["service"]: r for r in services_view(stats, scrapes, now, set())}
    assert (rows["risk"]["health"], rows["risk"]["obeys"]) == ("up", "HALTED")
    assert rows["signal"]["health"] == "stale"
    assert rows["market-data"]["health"] == "down"
    assert (rows["execution"]["health"], rows["execution"]["note"]) == ("no stats", "standby")
    assert "kill-switch" not in rows  # neither stats nor an endpoint: nothing to show
    # A drained instance stops updating its stats: old stats are then no sign of trouble.
    drained = {r["service"]: r for r in services_view(stats, scrapes, now, {"signal-1"})}
    assert drained["signal"]["health"] == "up"
    assert drained["signal"]["instances"][0]["drained"] is True


def test_trading_view_prefers_the_newer_of_store_and_heartbeat() -> None:
    """A ctl.state heard with a newer seq wins; an older heartbeat never hides a newer latch."""
    stored = state(
        5, "HALTED", "lunch", halted_strategies={"ofi": "x"}, hard_triggers=["gpio:estop"]
    )
    heard = state(6, "ACTIVE", "resume", operator="bob")
    assert trading_view(stored, heard, 0.1)["state"] == "ACTIVE"
    older = trading_view(stored, state(4, "ACTIVE", "old"), 0.1)
    assert (older["state"], older["from"], older["hard_triggers"]) == (
        "HALTED",
        "store",
        ["gpio:estop"],
    )
    assert older["halted_strategies"] == {"ofi": "x"}
    assert trading_view(None, None, None)["state"] is None


def test_nothing_is_read_while_nobody_looks(tmp_path: Path) -> None:
    """The collector touches neither the store nor the endpoints until a request comes."""
    path = tmp_path / "state.sqlite"
    opened: list[float] = []

    def opener() -> EmbeddedStore:
        opened.append(time.monotonic())
        return EmbeddedStore(path, "idle")

    collector = Collector(opener, [], NOBODY, NOBODY, RecentEvents(5))
    collector.start()
    try:
        time.sleep(1.5)
        assert opened == []
        snapshot, age = collector.latest()
        assert snapshot is not None and age < 2 and len(opened) == 1
    finally:
        collector.stop()
        collector.join(5)


# --- read-only HTTP surface --------------------------------------------------------------------


def test_every_method_but_get_and_head_is_405(fleet_store: tuple[Path, str]) -> None:
    """No method can act: each one is refused with 405 and `Allow: GET, HEAD`."""
    path, namespace = fleet_store
    with served(path, namespace) as base:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "HALT"):
            for target in ("/", "/api/fleet", "/nope"):
                status, headers, _ = request(base + target, method, data=b'{"action": "halt"}')
                assert status == 405, (method, target)
                assert headers["Allow"] == "GET, HEAD"
                assert headers["X-Content-Type-Options"] == "nosniff"


def test_paths_heads_hosts_and_security_headers(fleet_store: tuple[Path, str]) -> None:
    """Four paths; anything else 404; HEAD has no body; a foreign Host name is refused."""
    path, namespace = fleet_store
    with served(path, namespace, allowed_hosts=["flotilla.internal"]) as base:
        kinds = {p: request(base + p)[1]["Content-Type"] for p in ("/", "/app.js", "/app.css")}
        assert kinds == {
            "/": "text/html; charset=utf-8",
            "/app.js": "text/javascript; charset=utf-8",
            "/app.css": "text/css; charset=utf-8",
        }
        for missing in (
            "/index.html",
            "/api",
            "/api/fleet/x",
            "/../config/flotilla.toml",
            "/favicon.ico",
        ):
            assert request(base + missing)[0] == 404, missing
        status, headers, body = request(base + "/?x=<script>")
        assert status == 200 and b"<title>Flotilla</title>" in body
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        status, headers, body = request(base + "/api/fleet", "HEAD")
        assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
        assert request(base + "/", headers={"Host": "evil.example:9100"})[0] == 403
        assert request(base + "/", headers={"Host": "flotilla.internal:9100"})[0] == 200
        assert request(base + "/", headers={"Host": "localhost:9100"})[0] == 200


def test_host_allowed() -> None:
    """IP literals, localhost and configured names; every other name is refused."""
    assert host_allowed(None, [])
    assert host_allowed("127.0.0.1:9100", []) and host_allowed("[::1]:9100", [])
    assert host_allowed("10.1.2.3", []) and host_allowed("LOCALHOST:1", [])
    assert host_allowed("ops.example", ["OPS.example"])
    assert not host_allowed("attacker.example:9100", [])
    assert not host_allowed("127.0.0.1.attacker.example", [])
    assert not host_allowed("[::1", [])


def test_hostile_text_never_leaves_as_markup(tmp_path: Path) -> None:
    """Markup in any reported string is escaped in the JSON (and the page writes text only)."""
    path, namespace = tmp_path / "state.sqlite", "hostile"
    save_stats(path, namespace, "risk", HOSTILE, {**RISK, "positions": {HOSTILE: "1"}})
    store = EmbeddedStore(path, namespace)
    store.set("ctl:state", msgspec.json.encode(state(3, "HALTED", HOSTILE)))
    store.close()
    with served(path, namespace) as base:
        body = request(base + "/api/fleet")[2]
    assert b"<" not in body and b">" not in body and b"&" not in body
    fleet = json.loads(body)["fleet"]
    assert fleet["trading"]["reason"] == HOSTILE
    assert fleet["summary"]["positions"] == {HOSTILE: "1"}
    assert fleet["services"][0]["instances"][0]["instance"] == HOSTILE


def test_encode_json_keeps_decimals_exact() -> None:
    """Money never turns into a binary float on its way to the page."""
    assert encode_json({"pnl": Decimal("0.10000000")}) == b'{"pnl":"0.10000000"}'


def test_api_before_any_data_is_503_with_the_reason(tmp_path: Path) -> None:
    """A store that cannot be opened: the API says why (the page then shows STALE)."""
    bad = tmp_path / "not-a-dir"
    bad.write_text("a file where a directory should be")
    with served(bad / "state.sqlite", "x") as base:
        status, _, body = request(base + "/api/fleet")
    assert status == 503
    assert "cannot read the state store" in json.loads(body)["error"]


# --- the page itself ---------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def asset(name: str) -> str:
    """A packaged asset's text."""
    return (Path(dashboard.__file__).parent / name).read_text()


def test_page_has_no_inline_code_no_external_resources_and_no_controls() -> None:
    """CSP-clean (no inline script or style, no handlers), offline, and read-only (no forms)."""
    parsed = _Tags()
    parsed.feed(asset("dashboard.html"))
    assert parsed.script_text == ""
    assert [a.get("src") for t, a in parsed.tags if t == "script"] == ["/app.js"]
    for tag, attrs in parsed.tags:
        assert tag not in ("style", "form", "input", "button", "select", "textarea", "iframe")
        assert "style" not in attrs and not any(name.startswith("on") for name in attrs)
        for value in attrs.values():
            assert not re.match(r"(https?:)?//", value or ""), (tag, attrs)
    css = asset("dashboard.css")
    assert "url(" not in css and "@import" not in css


def test_script_writes_text_only_and_polls_the_api() -> None:
    """No HTML sinks, no eval, no other host: values go through textContent."""
    js = asset("dashboard.js")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert sink not in js, sink
    assert "textContent" in js and '"/api/fleet"' in js
    assert not re.search(r"https?://", js)
    assert "method" not in js  # fetch defaults to GET; the page never sends anything else


def test_element_ids_the_script_fills_exist_in_the_page() -> None:
    """Every id the script writes to is in the page (a renamed cell would silently stay '-')."""
    js, html = asset("dashboard.js"), asset("dashboard.html")
    used = set(re.findall(r'(?:setText|fillRows|byId)\(\s*"([a-z0-9-]+)"', js))
    assert len(used) > 20
    missing = {i for i in used if f'id="{i}"' not in html}
    assert not missing


# --- collector parts ---------------------------------------------------------------------------


def order(coid: str, status: str, ts: int = 1) -> OrderUpdate:
    """An order update as execution publishes it."""
    return OrderUpdate(
        ts_event=ts, ts_init=ts, client_order_id=coid, strategy="ofi", venue="binance",
        symbol="BTCUSDT", side="buy", order_type="market", status=status, qty=Decimal("0.001"),
        filled_qty=Decimal("0.001" if status == "filled" else "0"),
    )  # fmt: skip


def fill(seq: int) -> Fill:
    """A fill as execution publishes it."""
    return Fill(
        ts_event=seq, ts_init=seq, fill_seq=seq, fill_id=f"f-{seq}", client_order_id=f"o-{seq}",
        strategy="ofi", venue="binance", symbol="BTCUSDT", side="buy", qty=Decimal("0.001"),
        price=Decimal("61836.52"), fee=Decimal("0.0618"), fee_asset="USDT",
        liquidity="taker",
    )  # fmt: skip


def test_recent_events_keep_latest_order_state_and_last_fills() -> None:
    """One row per order (its latest state, most recent first); fills deduplicated by seq."""
    recent = RecentEvents(3)
    for coid, status in [("a", "new"), ("b", "new"), ("a", "filled"), ("c", "new"), ("d", "new")]:
        recent.add(order(coid, status))
    assert [(o["client_order_id"], o["status"]) for o in recent.orders()] == [
        ("d", "new"),
        ("c", "new"),
        ("a", "filled"),
    ]
    for seq in (1, 2, 3, 3, 4, 5):
        recent.add(fill(seq))
    fills = recent.fills()
    assert [f["fill_seq"] for f in fills] == [5, 4, 3]
    assert fills[0]["price"] == "61836.52" and fills[0]["time_utc"].startswith("1970-01-01T")
    assert "type" not in fills[0]


def test_backfill_from_the_journal_skips_a_torn_line(tmp_path: Path) -> None:
    """A dashboard started late shows the journal's last orders and fills."""
    journal = Journal(tmp_path / "journal")
    journal.open()
    for seq in range(1, 8):
        journal.record(order(f"o-{seq}", "filled", seq))
        journal.record(fill(seq))
    journal.close()
    with (tmp_path / "journal" / "fills.jsonl").open("ab") as fh:
        fh.write(b'{"type":"fill","fill_seq":8,"qty')  # execution mid-write
    recent = RecentEvents(5)
    assert recent.backfill(tmp_path / "journal") == 14
    assert [f["fill_seq"] for f in recent.fills()] == [7, 6, 5, 4, 3]
    assert recent.orders()[0]["client_order_id"] == "o-7"
    assert RecentEvents(5).backfill(tmp_path / "nowhere") == 0


def test_tail_lines_reads_only_the_end(tmp_path: Path) -> None:
    """The last n complete lines, without reading a whole large file."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(10_000)))
    assert tail_lines(path, 2, max_bytes=100) == [b"line 9998", b"line 9999"]
    assert tail_lines(path, 3)[-1] == b"line 9999"
    assert tail_lines(tmp_path / "missing", 3) == []


class RecordingContext(zmq.Context):  # type: ignore[type-arg]
    """A real context that remembers the type of every socket made from it."""

    kinds: list[int]

    def socket(self, socket_type: int, **kwargs: Any) -> Any:  # type: ignore[override]
        self.kinds.append(socket_type)
        return super().socket(socket_type, **kwargs)


def test_collector_opens_only_sub_sockets() -> None:
    """Read-only by construction: no socket that could send a command or an order."""
    ctx = RecordingContext()
    ctx.kinds = []
    collector = Collector(lambda: None, [], NOBODY, NOBODY, RecentEvents(5))  # type: ignore[arg-type, return-value]
    try:
        subs = collector.subscribe(ctx)
        assert ctx.kinds == [zmq.SUB, zmq.SUB] and len(subs) == 2
    finally:
        ctx.destroy(linger=0)
    source = Path(dashboard.__file__).read_text()
    for writer in ("zmq.PUB", "zmq.REQ", "zmq.DEALER", "zmq.ROUTER", "zmq.PUSH", "zmq.PAIR"):
        assert writer not in source
    for endpoint in ("ctl_cmd", "ctl_ack", "bus.orders", "sig_in", "risk_pub", "md_pub"):
        assert endpoint not in source


class ReadOnlyStore:
    """A store that lets reads through and fails the test on any write."""

    def __init__(self, inner: EmbeddedStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in ("get", "keys", "read_log", "log_length", "close"):
            return getattr(self.inner, name)
        raise AssertionError(f"the dashboard called the store's {name}()")


def test_collector_only_reads_the_store(fleet_store: tuple[Path, str]) -> None:
    """Building the page's data is reads only: no write method of the store is touched."""
    path, namespace = fleet_store
    store = ReadOnlyStore(EmbeddedStore(path, namespace))
    collector = Collector(lambda: store, [], NOBODY, NOBODY, RecentEvents(5))  # type: ignore[arg-type, return-value]
    try:
        view = collector.build(store, [])  # type: ignore[arg-type]
    finally:
        store.close()
    assert view["summary"]["fills"] == EXECUTION["fills"]


# --- wiring: store selection, CLI, fleet, config -----------------------------------------------


def args(**kwargs: Any) -> argparse.Namespace:
    """`flotilla dashboard` flags with their defaults."""
    defaults = {"run_dir": None, "namespace": None, "host": None, "port": None, "port_offset": 0}
    return argparse.Namespace(**{**defaults, "endpoint": [], "check": False, **kwargs})


def test_store_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--run-dir's namespace as the fleet names it; env as the fleet sets it; no empty store."""
    for name in ("FLOTILLA_REDIS_URL", "FLOTILLA_RUN_DIR", "FLOTILLA_STORE_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Unusable, match="which fleet"):
        store_opener(args())
    with pytest.raises(Unusable, match="no state store"):
        store_opener(args(run_dir=tmp_path / "run 1"))
    assert not (tmp_path / "run 1" / "state.sqlite").exists()
    run_dir = tmp_path / "run 1"
    fill_fleet_store(run_dir / "state.sqlite", "run-run_1")
    opener, found = store_opener(args(run_dir=run_dir))
    store = opener()
    try:
        assert found == run_dir and read_stats(store)["risk"][0]["fees"] == RISK["fees"]
    finally:
        store.close()
    monkeypatch.setenv("FLOTILLA_RUN_DIR", str(run_dir))
    monkeypatch.setenv("FLOTILLA_STORE_NAMESPACE", "run-run_1")  # what Fleet.env_for sets
    opener, found = store_opener(args())
    store = opener()
    try:
        assert found == run_dir and "kill-switch" in read_stats(store)
    finally:
        store.close()


def test_cli_refuses_a_run_dir_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One clear line and exit 2, never a traceback or a new empty store."""
    assert cli_main(["dashboard", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "no state store at" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_port_busy_is_exit_3(fleet_store: tuple[Path, str]) -> None:
    """A busy port: the dashboard says so and exits 3 (`flotilla up` goes on without it)."""
    path, _ = fleet_store
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = cli_main(["dashboard", "--run-dir", str(path.parent), "--port", str(port)])
    assert code == dashboard.EXIT_CANNOT_SERVE


def test_fleet_shifts_the_dashboard_port_and_names_its_url(tmp_path: Path) -> None:
    """With --port-offset the dashboard moves with the fleet; its URL is on loopback."""
    cfg = load_config(DEFAULT_CONFIG)
    fleet = Fleet(cfg, tmp_path / "run", DEFAULT_CONFIG, {}, 40)
    try:
        assert fleet.port_env()["FLOTILLA__DASHBOARD__PORT"] == str(cfg.dashboard.port + 40)
        env = fleet.env_for("dashboard", "dashboard-1")
        assert env["FLOTILLA_STORE_NAMESPACE"] == "run-run"
    finally:
        fleet.close()
    assert page_url("0.0.0.0", 9100) == "http://127.0.0.1:9100/"
    assert page_url("::1", 9100) == "http://[::1]:9100/"
    assert page_url("127.0.0.1", 9140) == "http://127.0.0.1:9140/"


def test_dashboard_config_section() -> None:
    """[dashboard] defaults, and a bad port stops the config load with the field named."""
    cfg = load_config(DEFAULT_CONFIG)
    assert (cfg.dashboard.enabled, cfg.dashboard.host, cfg.dashboard.port) == (
        True,
        "127.0.0.1",
        9100,
    )
    with pytest.raises(ConfigError, match=r"\[dashboard\] port"):
        parse_config({"dashboard": {"port": 0}})
    with pytest.raises(ConfigError, match="dashboard"):
        parse_config({"dashboard": {"prot": 9100}})


def test_fleet_view_shape() -> None:
    """The keys the page reads are always there, even for an empty store."""
    view = fleet_view(
        {}, trading_view(None, None, None), [], set(), RecentEvents(1), time.time_ns()
    )
    assert set(view) == {
        "generated_utc",
        "trading",
        "acks",
        "services",
        "summary",
        "recent_orders",
        "recent_fills",
    }
    assert view["summary"] == build_summary({}, {})
