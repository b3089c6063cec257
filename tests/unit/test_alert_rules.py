"""Alert rules, their promtool unit tests, and the Grafana dashboard, checked against the code.

promtool runs on the host (Debian's `prometheus` package; `make system-deps` installs it) so
this stays a fast unit test; a missing promtool fails, never skips. Every `flotilla_*` metric
named in a rule, a rule test, a dashboard panel or `flotilla top` must be one the code exports:
a typo fails here instead of alerting on nothing or drawing "No data".
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import libs
import services
from flotilla import top
from services.risk.book import RiskBook
from services.risk.book_metrics import BookCollector

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "flotilla.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "flotilla.yml"
GRAFANA_COMPOSE = GRAFANA / "docker-compose.grafana.yml"

SEVERITIES = {"critical", "warning"}
METRIC = re.compile(r"\bflotilla_[a-zA-Z0-9_]+")

# Being added in issue 4 (the kill switch's ack latency histogram, risk's panic-rule counter):
# the alerts and the dashboard use them before every branch exports them. Tolerated here by
# name only; drop an entry once the metric is exported everywhere.
BEING_ADDED_IN_ISSUE_4 = frozenset(
    {
        "flotilla_killswitch_ack_latency_seconds_bucket",
        "flotilla_risk_panics_total",
    }
)

# The sample names prometheus_client exposes for each metric family type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    """Run the host's promtool; fail (not skip) when it is missing."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(bash scripts/install-system-deps.sh, or apt-get install prometheus)"
        )
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def exported_metric_names() -> set[str]:
    """Every flotilla_* sample name the code can expose: import every module, read the registry."""
    for package in (libs, services):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith(".__main__"):  # __main__ would run a service
                importlib.import_module(module.name)
    families = list(REGISTRY.collect())
    # risk registers its book collector only once running; its families are built on demand.
    families += list(BookCollector(RiskBook(["BTCUSDT"])).collect())
    return {
        family.name + suffix
        for family in families
        if family.name.startswith("flotilla_")
        for suffix in SUFFIXES[family.type]
    }


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """Every panel that draws something (rows only group them)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of every panel."""
    return [t["expr"] for p in panels() for t in p["targets"]]


def metric_names(texts: list[str]) -> set[str]:
    """The flotilla_* names mentioned in some PromQL or series selectors."""
    return {name for text in texts for name in METRIC.findall(text)}


# --- alert rules ---------------------------------------------------------------------------


def test_promtool_check_rules_passes() -> None:
    """The rules parse and are valid for the Prometheus we ship (2.42, Debian bookworm)."""
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    """alerts_test.yml: each alert fires where it should and stays quiet where it should not."""
    tested = promtool("test", "rules", ALERTS_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_rule_unit_tests_have_teeth(tmp_path: Path) -> None:
    """A wrong threshold in a copy of the rules makes the same tests fail."""
    broken = ALERTS.read_text().replace("> 250", "> 350")
    assert broken != ALERTS.read_text()
    (tmp_path / ALERTS.name).write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    tested = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "FlotillaDrawdown" in tested.stdout + tested.stderr


def test_compose_prometheus_config_loads_the_rules() -> None:
    """rule_files resolves beside the config, as it is mounted in the compose profile."""
    checked = promtool("check", "config", "prometheus-compose.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    for config in ("prometheus-compose.yml", "prometheus-k8s.yml"):
        assert yaml.safe_load((MONITORING / config).read_text())["rule_files"] == [ALERTS.name]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_severity_summary_and_description(rule: dict[str, Any]) -> None:
    """Routing needs the severity; whoever is paged needs to know what and why."""
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"].split()) >= 10


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """At least one case where each alert fires and one where it must not."""
    cases = [
        case
        for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no quiet case"


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_loads_and_every_panel_has_the_datasource_and_targets() -> None:
    """Valid JSON; each panel queries the provisioned Prometheus and has at least one query."""
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert len(panels()) >= 10
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_covers_the_fleet() -> None:
    """Health, trading state and acks, md rates and gaps, PnL, rejections, latency quantiles."""
    exprs = "\n".join(dashboard_exprs())
    for needed in (
        "up{",
        "flotilla_trading_state{",
        "flotilla_killswitch_acked_seq",
        "flotilla_bus_messages_received_total",
        "flotilla_bus_sequence_gap_messages_total",
        "flotilla_risk_position",
        "flotilla_risk_realized_pnl",
        "flotilla_risk_unrealized_pnl",
        "sum by (reason) (rate(flotilla_risk_rejections_total",
        "histogram_quantile(0.5, sum by (le) (rate(flotilla_execution_tick_to_order_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(flotilla_execution_tick_to_order_seconds_bucket",
    ):
        assert needed in exprs, needed


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule: promtool has no expression check)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_provisioning_points_at_the_mounted_dashboards() -> None:
    """The provider's path is where the Grafana override mounts dashboards/."""
    path = yaml.safe_load(PROVIDERS.read_text())["providers"][0]["options"]["path"]
    grafana = yaml.safe_load(GRAFANA_COMPOSE.read_text())["services"]["grafana"]
    assert f"./monitoring/grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


# --- metric names --------------------------------------------------------------------------


def test_every_metric_used_is_exported_by_the_code() -> None:
    """Rules, rule tests, dashboard and `flotilla top` name only metrics that exist."""
    exported = exported_metric_names() | BEING_ADDED_IN_ISSUE_4
    series = [
        s["series"]
        for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for s in group.get("input_series", [])
    ]
    used = {
        "alerts.yml": metric_names([rule["expr"] for rule in alert_rules()]),
        "alerts_test.yml": metric_names(series),
        "flotilla.json": metric_names(dashboard_exprs()),
        "flotilla top": set(top.METRICS),
    }
    for where, names in used.items():
        assert names, where
        assert names <= exported, f"{where}: not exported: {sorted(names - exported)}"


def test_the_name_check_has_teeth() -> None:
    """The exported set knows suffixes per type, and a typo is not in it."""
    exported = exported_metric_names()
    assert "flotilla_execution_tick_to_order_seconds_bucket" in exported
    assert "flotilla_bus_messages_received_total" in exported
    assert "flotilla_build_info" in exported
    assert "flotilla_risk_unrealized_pnl" in exported
    assert "flotilla_bus_messages_received" not in exported  # a counter is only _total
    assert "flotilla_risk_realised_pnl" not in exported
