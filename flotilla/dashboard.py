"""`flotilla dashboard` (`python -m flotilla.dashboard`): the fleet's read-only web page.

A process of its own, never part of a trading service, so a slow browser or a bug here cannot
touch the order path. It only reads:
- the state store (the same one the services use: `$FLOTILLA_REDIS_URL`, else
  `<run dir>/state.sqlite`, in the run's namespace): every instance's stats document, the drained
  marks and the latched trading state `ctl:state`;
- each service's metrics endpoint (up or down, and the trading state it obeys);
- two SUB sockets: execution's events (`exec.order.`, `exec.fill.`), keeping the last orders and
  fills in memory, and the kill switch's `ctl.state` heartbeat.
It opens no socket that can send anything to the fleet (no command, ack or order socket), and
the page offers no control.

HTTP (standard library): `GET /` the page, `/app.js`, `/app.css`, `GET /api/fleet` the JSON the
page polls every second. HEAD is GET without a body; every other method is 405, every other path
404. The counters, positions and PnL are `flotilla.summary.build_summary` over the store's stats
documents: the very function that writes summary.json, so the page and the summary cannot differ.
Nothing is collected while nobody is looking (no request for IDLE_AFTER_S).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import zmq

from libs.common import topics
from libs.common.bus import Subscriber, new_socket
from libs.common.config import (
    SERVICES,
    SINGLE_WRITERS,
    FleetConfig,
    with_port_offset,
)
from libs.common.messages import ControlMessage, ExecutionEvent, Fill, OrderUpdate, TradingState
from libs.common.runtime import setup_logging
from libs.common.store import NAMESPACE_ENV, REDIS_URL_ENV, StateStore, StoreError, open_store
from services.kill_switch.latch import STATE_KEY  # where the kill switch latches the state

from .audit import run_namespace
from .endpoints import (
    BadEndpoint,
    Endpoint,
    Scrape,
    default_endpoints,
    obeyed_mode,
    parse_endpoint,
    scrape_one,
)
from .fleet import page_url
from .metrics_tail import Sample, SampleKey
from .summary import build_summary

log = logging.getLogger("flotilla.dashboard")

REFRESH_S = 1.0  # the page polls every second; fresher data would only cost the fleet scrapes
IDLE_AFTER_S = 10.0  # no request for this long: stop reading the store and scraping
FRESH_WAIT_S = 2.0  # a request finding no recent snapshot waits this long for one (page: 5 s)
STALE_STATS_S = 5.0  # stats are written every 500 ms: older means the instance stopped turning
POLL_MS = 100  # how often the collector looks at its sockets and the clock
JOURNAL_TAIL_BYTES = 1 << 20  # backfill reads at most this much of each journal file
EXIT_CANNOT_SERVE = 3  # the port is busy or the address is wrong
ASSETS = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/app.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/app.css": ("dashboard.css", "text/css; charset=utf-8"),
}
API_PATH = "/api/fleet"
ALLOWED_METHODS = "GET, HEAD"
SECURITY_HEADERS = {
    # Everything from this origin, nothing inline, no framing: the page's only script is /app.js.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# --- metrics endpoints ----------------------------------------------------------------------

LEASE_HELD = "flotilla_lease_held"


def standby_note(service: str, samples: dict[SampleKey, Sample]) -> str:
    """'standby' for a single writer without its lease (it trades nothing, by design)."""
    lease = samples.get((LEASE_HELD, ()))
    return "standby" if service in SINGLE_WRITERS and lease is not None and lease.value == 0 else ""


# --- reading the fleet ------------------------------------------------------------------------


def utc(ts_ns: int | None) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC with milliseconds ('' for none)."""
    if not ts_ns:
        return ""
    moment = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_stats(store: StateStore) -> dict[str, list[dict[str, Any]]]:
    """Every instance's stats document, grouped by service (as flotilla.fleet.Fleet.stats)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for key in store.keys("stats:"):
        raw = store.get(key)
        if raw is None:  # expired or deleted between keys() and get()
            continue
        try:
            doc = json.loads(raw)
            grouped.setdefault(str(doc["service"]), []).append(doc)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable stats document %s skipped", key)
    return grouped


def read_drained(store: StateStore) -> set[str]:
    """Instances that reported their input finished (`drained:<service>:<instance>`)."""
    return {key.split(":", 2)[2] for key in store.keys("drained:") if key.count(":") >= 2}


def read_trading_state(store: StateStore) -> TradingState | None:
    """The latched trading state as the kill switch stored it, or None."""
    raw = store.get(STATE_KEY)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=TradingState)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("unreadable %s in the store", STATE_KEY)
        return None


def trading_view(
    stored: TradingState | None, heard: TradingState | None, heard_age_s: float | None
) -> dict[str, Any]:
    """The trading state to show: the newer of the store's latch and the last ctl.state heard."""
    state, origin = stored, "store"
    if heard is not None and (stored is None or heard.seq >= stored.seq):
        state, origin = heard, "ctl.state"
    if state is None:  # no kill switch has ever recorded a state in this store
        return {"state": None, "seq": None, "from": None, "heard_s_ago": heard_age_s}
    return {
        "state": state.state,
        "seq": state.seq,
        "reason": state.reason,
        "source": state.source,
        "operator": state.operator,
        "changed_utc": utc(state.changed_ns),
        "halted_strategies": dict(state.halted_strategies),
        "hard_triggers": list(state.hard_triggers),
        "from": origin,
        "heard_s_ago": heard_age_s,
    }


def instance_view(doc: dict[str, Any], now_ns: int, drained: set[str]) -> dict[str, Any]:
    """One instance: name, age of its last stats write, whether it has drained."""
    updated = doc.get("updated_ns")
    age = round((now_ns - updated) / 1e9, 1) if isinstance(updated, int) else None
    instance = str(doc.get("instance", "?"))
    return {"instance": instance, "age_s": age, "drained": instance in drained}


def endpoint_view(result: Scrape) -> dict[str, Any]:
    """One metrics endpoint: up or down, the trading state it obeys, why it is down."""
    if result.samples is None:
        return {"url": result.endpoint.url, "up": False, "obeys": None, "error": result.error}
    return {
        "url": result.endpoint.url,
        "up": True,
        "obeys": obeyed_mode(result.samples),
        "note": standby_note(result.endpoint.service, result.samples),
    }


def health(instances: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> str:
    """up: metrics answer and stats are fresh (or the instance drained, which ends its updates);
    stale: metrics answer but stats stopped; down: no endpoint answers; unknown: no endpoint."""
    ages = [i["age_s"] for i in instances if i["age_s"] is not None]
    if endpoints and not any(e["up"] for e in endpoints):
        return "down"
    if not ages:
        return "no stats" if endpoints else "unknown"
    if min(ages) > STALE_STATS_S and not any(i["drained"] for i in instances):
        return "stale"
    return "up" if endpoints else "unknown"


def services_view(
    stats: dict[str, list[dict[str, Any]]], scrapes: list[Scrape], now_ns: int, drained: set[str]
) -> list[dict[str, Any]]:
    """Per service: its instances (stats age, drained), its metrics endpoints, a health word."""
    names = [*SERVICES, *sorted(set(stats) - set(SERVICES))]
    rows = []
    for service in names:
        docs = sorted(stats.get(service, []), key=lambda d: str(d.get("instance", "")))
        instances = [instance_view(doc, now_ns, drained) for doc in docs]
        endpoints = [endpoint_view(s) for s in scrapes if s.endpoint.service == service]
        if not instances and not endpoints:
            continue
        obeys = sorted({e["obeys"] for e in endpoints if e.get("obeys")})
        notes = sorted({e["note"] for e in endpoints if e.get("note")})
        rows.append(
            {
                "service": service,
                "health": health(instances, endpoints),
                "obeys": ", ".join(obeys),
                "note": ", ".join(notes),
                "instances": instances,
                "endpoints": endpoints,
            }
        )
    return rows


def fleet_view(
    stats: dict[str, list[dict[str, Any]]],
    trading: dict[str, Any],
    scrapes: list[Scrape],
    drained: set[str],
    recent: RecentEvents,
    now_ns: int,
) -> dict[str, Any]:
    """Everything /api/fleet returns; `summary` is exactly build_summary over the same stats."""
    kill_switch = max(
        stats.get("kill-switch", []), key=lambda d: d.get("updated_ns", 0), default={}
    )
    return {
        "generated_utc": utc(now_ns),
        "trading": trading,
        "acks": kill_switch.get("acks", {}),
        "services": services_view(stats, scrapes, now_ns, drained),
        "summary": build_summary(stats, {}),
        "recent_orders": recent.orders(),
        "recent_fills": recent.fills(),
    }


# --- recent orders and fills -------------------------------------------------------------------


def _plain(event: OrderUpdate | Fill) -> dict[str, Any]:
    """An event as JSON-ready data: decimals as strings, event time in UTC."""
    doc: dict[str, Any] = msgspec.to_builtins(event)
    doc.pop("type", None)
    doc["time_utc"] = utc(event.ts_event)
    return doc


class RecentEvents:
    """The last N orders (latest state of each) and the last N fills, deduplicated."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._orders: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._fills: dict[int, dict[str, Any]] = {}

    def add(self, event: Any) -> None:
        """Record an order update or a fill (anything else on the stream is ignored)."""
        if isinstance(event, OrderUpdate):
            self._orders.pop(event.client_order_id, None)  # re-inserted last: most recent
            self._orders[event.client_order_id] = _plain(event)
            while len(self._orders) > self.limit:
                self._orders.popitem(last=False)
        elif isinstance(event, Fill):
            self._fills[event.fill_seq] = _plain(event)
            while len(self._fills) > self.limit:
                del self._fills[min(self._fills)]

    def orders(self) -> list[dict[str, Any]]:
        """Most recently changed first."""
        return list(reversed(self._orders.values()))

    def fills(self) -> list[dict[str, Any]]:
        """Newest (highest fill_seq) first."""
        return [self._fills[seq] for seq in sorted(self._fills, reverse=True)]

    def backfill(self, journal_dir: Path) -> int:
        """Seed from the tail of a local journal (a dashboard started late, or after the run)."""
        added = 0
        for name, kind in (("orders.jsonl", OrderUpdate), ("fills.jsonl", Fill)):
            decoder = msgspec.json.Decoder(kind)
            for line in tail_lines(journal_dir / name, self.limit * 4):
                try:
                    self.add(decoder.decode(line))
                    added += 1
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a torn last line while execution writes: the SUB brings it
        return added


def tail_lines(path: Path, n: int, max_bytes: int = JOURNAL_TAIL_BYTES) -> list[bytes]:
    """The last n complete lines of a file (none when it is missing)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut
    return [line for line in lines if line.strip()][-n:]


# --- the collector thread -----------------------------------------------------------------------


class Collector(threading.Thread):
    """Owns the store connection and the SUB sockets (neither may be shared across threads);
    builds the page's data at most every REFRESH_S while someone is looking."""

    def __init__(
        self,
        open_fleet_store: Callable[[], StateStore],
        endpoints: list[Endpoint],
        exec_pub: str,
        ctl_pub: str,
        recent: RecentEvents,
        journal_dir: Path | None = None,
    ) -> None:
        super().__init__(name="dashboard-collector", daemon=True)
        self._open_store = open_fleet_store
        self._endpoints = endpoints
        self._urls = (exec_pub, ctl_pub)
        self._recent = recent
        self._journal_dir = journal_dir
        self._halt = threading.Event()  # not `_stop`: threading.Thread has a method of that name
        self._ready = threading.Condition()
        self._snapshot: bytes | None = None
        self._store: StateStore | None = None
        self._snapshot_at = 0.0  # time.monotonic() of the last good refresh
        self._tried_at = -math.inf  # time.monotonic() of the last refresh attempt
        self._failed_at = -math.inf  # time.monotonic() of the last failed one
        self._wanted_at = -math.inf  # time.monotonic() of the last request (none yet)
        self._heard: TradingState | None = None
        self._heard_at = 0.0
        self.error = ""

    # Called from request threads.

    def latest(self) -> tuple[bytes | None, float]:
        """The last snapshot (JSON) and its age in seconds; asks for fresh ones from now on.

        After an idle spell the snapshot is old: wait (briefly) for the refresh this asks for."""
        with self._ready:
            asked = self._wanted_at = time.monotonic()
            if self.is_alive():
                self._ready.wait_for(
                    lambda: self._fresh() or self._failed_at >= asked, FRESH_WAIT_S
                )
            snapshot, at = self._snapshot, self._snapshot_at
        return snapshot, time.monotonic() - at

    def _fresh(self) -> bool:
        """A snapshot exists and is recent enough to show."""
        return self._snapshot is not None and time.monotonic() - self._snapshot_at < 2 * REFRESH_S

    def stop(self) -> None:
        """Ask the thread to finish (it closes its sockets and store itself)."""
        self._halt.set()

    # The thread.

    def run(self) -> None:
        """Open the sockets here (they stay on this thread), then loop until stopped."""
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            subs = self.subscribe(ctx)
            if self._journal_dir is not None:
                self._recent.backfill(self._journal_dir)
            self._loop(subs)
        except Exception as exc:  # the page must say so, not hang: keep serving the error
            log.exception("dashboard collector stopped")
            self.error = f"collector stopped: {exc}"
        finally:
            if self._store is not None:
                self._store.close()
            ctx.destroy(linger=0)
            with self._ready:
                self._ready.notify_all()  # nobody waits for a snapshot that will not come

    def subscribe(self, ctx: zmq.Context[Any]) -> list[Subscriber[Any]]:
        """SUB to execution's events and the kill switch's state: receive-only sockets."""
        exec_pub, ctl_pub = self._urls
        events: Subscriber[Any] = Subscriber(new_socket(ctx, zmq.SUB), ExecutionEvent)
        events.sock.connect(exec_pub)
        events.subscribe(topics.family("exec", "order"))
        events.subscribe(topics.family("exec", "fill"))
        control: Subscriber[Any] = Subscriber(new_socket(ctx, zmq.SUB), ControlMessage)
        control.sock.connect(ctl_pub)
        control.subscribe(topics.exact(topics.CTL_STATE))
        return [events, control]

    def _loop(self, subs: list[Subscriber[Any]]) -> None:
        """Drain the sockets continually; refresh the snapshot when due and wanted."""
        poller = zmq.Poller()
        for sub in subs:
            poller.register(sub.sock, zmq.POLLIN)
        with ThreadPoolExecutor(max_workers=max(1, len(self._endpoints))) as pool:
            while not self._halt.is_set():
                poller.poll(POLL_MS)
                self.drain(subs)
                now = time.monotonic()
                wanted = now - self._wanted_at < IDLE_AFTER_S
                if wanted and now - self._tried_at >= REFRESH_S:
                    self.refresh(pool)

    def drain(self, subs: list[Subscriber[Any]]) -> None:
        """Keep every order update and fill; remember the newest trading state heard."""
        for sub in subs:
            for env in sub.recv_batch():
                if isinstance(env.msg, TradingState):
                    self._heard, self._heard_at = env.msg, time.monotonic()
                else:
                    self._recent.add(env.msg)

    def refresh(self, pool: ThreadPoolExecutor) -> None:
        """Read the store, scrape every endpoint, publish a new snapshot (or the error)."""
        self._tried_at = time.monotonic()
        try:
            if self._store is None:  # opened here, not at start: Redis may be down for a while
                self._store = self._open_store()
            scrapes = list(pool.map(scrape_one, self._endpoints))  # one slow host: one timeout
            view = self.build(self._store, scrapes)
            body = encode_json(view)
            self.error = ""
        except (StoreError, OSError) as exc:  # Redis down, file gone: say so, keep the last data
            self._failed(f"cannot read the state store: {exc}")
            return
        except Exception as exc:  # odd data must not end the page: say so, keep trying
            if not self.error:
                log.exception("cannot build the page's data")
            self._failed(f"cannot build the page's data: {exc!r}")
            return
        with self._ready:
            self._snapshot, self._snapshot_at = body, time.monotonic()
            self._ready.notify_all()

    def _failed(self, error: str) -> None:
        """Record a failed refresh (logged once per spell) and wake any waiting request."""
        if not self.error:
            log.warning("%s", error)
        with self._ready:
            self.error = error
            self._failed_at = time.monotonic()
            self._ready.notify_all()  # a waiting request answers with the error now

    def build(self, store: StateStore, scrapes: list[Scrape]) -> dict[str, Any]:
        """The snapshot from the store, the scrapes and what the sockets brought."""
        heard_age = round(time.monotonic() - self._heard_at, 1) if self._heard else None
        trading = trading_view(read_trading_state(store), self._heard, heard_age)
        stats = read_stats(store)
        return fleet_view(
            stats, trading, scrapes, read_drained(store), self._recent, time.time_ns()
        )


def encode_json(doc: Any) -> bytes:
    """JSON that stays inert even if something renders it as HTML: <, > and & escaped."""
    text = json.dumps(doc, default=_json_default, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _json_default(value: Any) -> Any:
    """Decimals as exact strings (never floats); anything else as its text."""
    return str(value) if isinstance(value, Decimal) else repr(value)


# --- HTTP ---------------------------------------------------------------------------------------


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page, its script and its style sheet (package data beside this module)."""
    root = resources.files("flotilla")
    return {path: ((root / name).read_bytes(), kind) for path, (name, kind) in ASSETS.items()}


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    """IP literals, localhost and configured names only: a rebinding attacker's name is refused."""
    if not host_header:
        return True  # HTTP/1.0 without Host: no browser, so no rebinding
    try:
        host = urlsplit("//" + host_header).hostname or ""
    except ValueError:  # e.g. an unclosed "[" IPv6 bracket
        return False
    if host == "localhost" or host in {h.lower() for h in allowed}:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server with what its handlers need."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        collector: Collector,
        allowed_hosts: list[str],
        assets: dict[str, tuple[bytes, str]] | None = None,
    ) -> None:
        # An IPv6 literal ("::", "::1") needs an IPv6 socket; read by TCPServer.__init__.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, DashboardHandler)
        self.collector = collector
        self.allowed_hosts = allowed_hosts
        self.assets = assets or load_assets()


class DashboardHandler(BaseHTTPRequestHandler):
    """GET and HEAD of four paths; nothing else."""

    server: DashboardServer
    server_version = "flotilla-dashboard"
    sys_version = ""

    def __getattr__(self, name: str) -> Any:
        """Every method but GET and HEAD is 405 (the base class would answer 501)."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def end_headers(self) -> None:
        """The security headers go on every response, errors included."""
        for header, value in SECURITY_HEADERS.items():
            self.send_header(header, value)
        super().end_headers()

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self.do_GET()

    def do_GET(self) -> None:
        """The page, its assets, or the API."""
        if not host_allowed(self.headers.get("Host"), self.server.allowed_hosts):
            self._reply(403, b"forbidden host\n", "text/plain; charset=utf-8")
            return
        path = urlsplit(self.path).path
        if path == API_PATH:
            self._api()
        elif path in self.server.assets:
            body, kind = self.server.assets[path]
            self._reply(200, body, kind)
        else:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")

    def _api(self) -> None:
        """The latest snapshot with its age; 503 before the first one exists."""
        collector = self.server.collector
        snapshot, age_s = collector.latest()
        if snapshot is None:
            error = collector.error or "no data yet"
            self._reply(503, encode_json({"error": error}), "application/json")
            return
        head = encode_json({"age_ms": int(age_s * 1000), "error": collector.error})
        self._reply(200, head[:-1] + b',"fleet":' + snapshot + b"}", "application/json")

    def _not_allowed(self) -> None:
        """405 with Allow; a small body is read first so the client sees the answer."""
        with contextlib.suppress(ValueError, OSError):
            length = int(self.headers.get("Content-Length") or 0)
            if 0 < length <= 65_536:
                self.rfile.read(length)
        self._reply(
            405, b"read-only: GET only\n", "text/plain; charset=utf-8", Allow=ALLOWED_METHODS
        )

    def _reply(self, status: int, body: bytes, kind: str, **headers: str) -> None:
        """One complete response."""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests at debug level: a page polling every second would flood the log."""
        log.debug("%s %s", self.address_string(), format % args)


# --- running it ---------------------------------------------------------------------------------


class Unusable(Exception):
    """The flags or the environment name no fleet to show; the message says why."""


def store_opener(args: argparse.Namespace) -> tuple[Callable[[], StateStore], Path | None]:
    """How to open the fleet's store (in the collector thread), and the run dir if any."""
    url = os.environ.get(REDIS_URL_ENV, "")
    env_dir = os.environ.get("FLOTILLA_RUN_DIR")
    run_dir: Path | None = args.run_dir or (Path(env_dir) if env_dir else None)
    namespace = (
        args.namespace
        or (run_namespace(args.run_dir) if args.run_dir is not None else None)
        or os.environ.get(NAMESPACE_ENV)
        or "flotilla"
    )
    path = Path(os.devnull)
    if not url:
        if run_dir is None:
            raise Unusable("which fleet? give --run-dir DIR (or set $FLOTILLA_REDIS_URL)")
        path = run_dir / "state.sqlite"
        if not path.is_file():  # opening would create an empty store: a fleet that never ran
            raise Unusable(f"no state store at {path}")
    return (lambda: open_store(path, redis_url=url or None, namespace=namespace)), run_dir


def endpoints_for(cfg: FleetConfig, args: argparse.Namespace) -> list[Endpoint]:
    """--endpoint SERVICE=URL (repeatable) or every service's configured metrics port."""
    return [parse_endpoint(spec) for spec in args.endpoint] or default_endpoints(
        cfg, args.port_offset
    )


def serving_address(cfg: FleetConfig, args: argparse.Namespace) -> tuple[str, int]:
    """Host and port to bind."""
    return args.host or cfg.dashboard.host, args.port or cfg.dashboard.port + args.port_offset


def run_dashboard(cfg: FleetConfig, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 then, 2 for bad flags, 3 when it cannot serve."""
    host, port = serving_address(cfg, args)
    if args.check:
        return check(page_url(host, port))
    setup_logging("dashboard")  # like a service: one line per event, JSON in containers
    try:
        opener, run_dir = store_opener(args)
        endpoints = endpoints_for(cfg, args)
    except (Unusable, BadEndpoint) as exc:
        print(f"flotilla dashboard: {exc}", file=sys.stderr)
        return 2
    bus = with_port_offset(cfg.bus, args.port_offset)
    recent = RecentEvents(cfg.dashboard.recent_events)
    journal = run_dir / "journal" if run_dir is not None else None
    collector = Collector(opener, endpoints, bus.exec_pub, bus.ctl_pub, recent, journal)
    try:
        server = DashboardServer((host, port), collector, cfg.dashboard.allowed_hosts)
    except OSError as exc:
        log.error("cannot serve the dashboard on %s:%d: %s", host, port, exc.strerror or exc)
        return EXIT_CANNOT_SERVE
    return serve(server, collector, page_url(host, port))


def serve(server: DashboardServer, collector: Collector, url: str) -> int:
    """Run the collector and the server until a signal; then stop both."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    collector.start()
    thread = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    thread.start()
    log.info("dashboard (read-only) at %s", url)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        collector.stop()
        collector.join(timeout=2)
    return 0


def check(url: str, timeout_s: float = 2.0) -> int:
    """Health check for containers: the page answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"dashboard: {url} does not answer: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m flotilla.dashboard [FLAGS]`: `flotilla dashboard` (config from $FLOTILLA_CONFIG)."""
    from .cli import main as cli_main

    return cli_main(["dashboard", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
