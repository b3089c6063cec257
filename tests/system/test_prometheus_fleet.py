"""A real Prometheus (Debian's package, on the host) scrapes a running local fleet: what PromQL
says about fills, order updates and the trading state matches the run's journal and the kill
switch's reply.

Each target carries a `service` label, as in the compose profile. Metrics that have their own
`service` label (flotilla_build_info, the kill switch's acked seq) then show it as
`exported_service`: Prometheus renames a scraped label that clashes with a target label.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.control import send_command
from libs.common.config import DEFAULT_CONFIG, FleetConfig, load_config, with_port_offset
from libs.common.testing.fleet import (
    BTC_0808,
    BUNDLED_DATA,
    ETH_0808,
    SHARED_DATA,
    count_lines,
    journal,
    log_tails,
    reserved_port_offset,
    running_fleet,
    wait_until,
    write_slice,
)

pytestmark = pytest.mark.system

SLICE_LINES = 15_000  # per recording: a few seconds flat out, with fills
SERVICES = {  # target label -> config section with its metrics port
    "market-data": "market_data",
    "signal": "signal",
    "risk": "risk",
    "execution": "execution",
    "kill-switch": "kill_switch",
}


def prometheus_exe() -> str:
    """The host's Prometheus; fail (never skip) when it is missing."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found: bash scripts/install-system-deps.sh (Debian package)")
    return exe


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(cfg: FleetConfig, offset: int) -> dict[str, Any]:
    """Every service of the fleet as a static target, scraped every second."""
    targets = [
        {
            "targets": [f"127.0.0.1:{getattr(cfg, section).metrics_port + offset}"],
            "labels": {"service": service},
        }
        for service, section in SERVICES.items()
    ]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "flotilla", "static_configs": targets}],
    }


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Prometheus on a free loopback port with its TSDB in workdir; killed on the way out."""
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus_exe(),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: ready(url) or proc.poll() is not None, 30, 0.2, "prometheus ready")
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def ready(url: str) -> bool:
    """True once Prometheus answers /-/ready."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
    qs = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def by_label(url: str, promql: str, label: str) -> dict[str, float]:
    """A query's values keyed by one label."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in query(url, promql)}


def scalar(url: str, promql: str) -> float | None:
    """The single value of an aggregating query (None while it has no data)."""
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else None


def recording(name: str) -> Path:
    """A recording from ../shared/data/binance, else the bundled copy."""
    shared = SHARED_DATA / name
    return shared if shared.is_file() else BUNDLED_DATA / name


def feed_slices(out: Path) -> list[Path]:
    """The first SLICE_LINES lines of the BTCUSDT and ETHUSDT recordings."""
    paths = []
    for name in (BTC_0808, ETH_0808):
        dst = out / name.replace(".gz", f".head{SLICE_LINES}.gz")
        write_slice(recording(name), dst, SLICE_LINES)
        paths.append(dst)
    return paths


@pytest.mark.timeout(300)
def test_promql_matches_the_journal_and_the_halted_state(tmp_path: Path) -> None:
    """Replay a slice to the end, halt, then ask Prometheus: fills and order updates equal the
    journal's, every service obeys HALTED at the halt's seq, and the new metrics are scraped."""
    cfg = load_config(DEFAULT_CONFIG)
    run_dir = tmp_path / "run"
    feed = json.dumps([str(p) for p in feed_slices(tmp_path / "data")])
    with (
        reserved_port_offset() as offset,
        running_prometheus(scrape_config(cfg, offset), tmp_path) as prom,
        running_fleet(run_dir, offset, {"FLOTILLA__MARKET_DATA__FEED": feed}) as fleet,
    ):
        try:
            wait_until(fleet.all_drained, 120, 0.5, "fleet drained")
        except TimeoutError:
            pytest.fail("fleet never drained:\n" + log_tails(run_dir))
        ctl_cmd = with_port_offset(cfg.bus, offset).ctl_cmd
        reply = send_command(ctl_cmd, "halt", "prometheus system test", "pytest", 5000)
        assert reply.ok and reply.state.state == "HALTED", reply.error
        fills_path = run_dir / "journal" / "fills.jsonl"

        def settled() -> bool:
            """Prometheus has scraped every service since each applied the halt."""
            halted = by_label(prom, 'flotilla_trading_state{state="HALTED"}', "service")
            seqs = by_label(prom, "flotilla_trading_state_seq", "service")
            return (
                scalar(prom, "sum(flotilla_execution_fills_total)") == count_lines(fills_path)
                and halted == dict.fromkeys(SERVICES, 1.0)
                and all(seqs.get(s) == reply.state.seq for s in SERVICES if s != "kill-switch")
                and scalar(prom, "max(flotilla_killswitch_state_seq)") == reply.state.seq
            )

        with contextlib.suppress(TimeoutError):  # the assertions below say what differs
            wait_until(settled, 30, 0.5, "Prometheus agreeing with the journal")
        orders, fills = journal(run_dir)
        assert fills, "the slice produced no fills: the comparison would prove nothing"
        up = by_label(prom, "up", "service")
        assert up == dict.fromkeys(SERVICES, 1.0), up
        assert scalar(prom, "sum(flotilla_execution_fills_total)") == len(fills)
        assert by_label(prom, 'flotilla_trading_state{state="HALTED"}', "service") == dict.fromkeys(
            SERVICES, 1.0
        )
        assert scalar(prom, "max(flotilla_killswitch_state_seq)") == reply.state.seq
        seqs = by_label(prom, 'flotilla_trading_state_seq{service!="kill-switch"}', "service")
        assert seqs == dict.fromkeys(set(SERVICES) - {"kill-switch"}, float(reply.state.seq))

        updates = by_label(
            prom, "sum by (status) (flotilla_execution_order_updates_total) > 0", "status"
        )
        assert updates == {s: float(n) for s, n in Counter(o["status"] for o in orders).items()}
        submits = scalar(prom, 'sum(flotilla_execution_venue_request_seconds_count{op="submit"})')
        accepted = scalar(prom, 'sum(flotilla_execution_orders_total{outcome="accepted"})')
        assert submits == accepted and submits, (submits, accepted)

        # The target's `service` label wins; the metric's own moves to exported_service.
        builds = query(prom, "flotilla_build_info")
        assert {b["metric"]["service"] for b in builds} == set(SERVICES)
        assert all(b["metric"]["exported_service"] == b["metric"]["service"] for b in builds)

        # The bus and processing metrics added in issue 5 reach Prometheus with real values.
        md_bytes = by_label(prom, 'flotilla_bus_received_bytes_total{family="md"}', "service")
        assert md_bytes.get("signal", 0) > 0 and md_bytes.get("risk", 0) > 0, md_bytes
        ages = by_label(prom, 'flotilla_bus_last_message_age_seconds{family="ctl"}', "service")
        assert set(ages) >= {"market-data", "signal", "risk", "execution"}, ages
        assert all(age < 5 for age in ages.values()), ages  # heartbeats every 100 ms
        ticks = scalar(prom, 'sum(flotilla_processing_seconds_count{stage="signal_tick"})')
        assert ticks is not None and ticks > 0
        snapshots = by_label(prom, "sum by (kind) (flotilla_bus_snapshot_requests_total)", "kind")
        assert snapshots["trading_state"] >= 4 and snapshots["fills"] >= 1, snapshots
