"""Prometheus configuration checked by the real promtool (from the offline Prometheus image)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from libs.common.testing.compose import ROOT, wait_for
from libs.common.testing.fleet import reserved_port_offset

from .conftest import PROMETHEUS_IMAGE

pytestmark = pytest.mark.system


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in the Prometheus image with deploy/monitoring mounted at /cfg."""
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "promtool",
            "-v",
            f"{ROOT / 'deploy' / 'monitoring'}:/cfg:ro",
            PROMETHEUS_IMAGE,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_scrape_config_passes_promtool(fleet_images):
    """The monitoring profile's scrape config is valid for the Prometheus it runs with."""
    checked = promtool("check", "config", "/cfg/prometheus-compose.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def scrape(port: int) -> str:
    """The /metrics text of a service on this host, or '' while it is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def test_every_service_endpoint_passes_promtool_check_metrics(fleet_images, tmp_path):
    """During a run, every service's /metrics passes `promtool check metrics` (names, suffixes,
    types, help), and promtool does reject a malformed exposition (the check has teeth)."""
    # A reserved, checked-free port block: other fleets (tests, benches) may be running too.
    with reserved_port_offset() as offset:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flotilla.cli",
                "up",
                "--speed",
                "5",
                "--quiet",
                "--run-dir",
                str(tmp_path / "run"),
                "--port-offset",
                str(offset),
                "--timeout",
                "60",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for port in range(9101 + offset, 9106 + offset):
                text = wait_for(lambda p=port: scrape(p), 30, f"metrics on port {port}")
                assert "flotilla_build_info" in text
                checked = promtool_stdin(text, "check", "metrics")
                assert checked.returncode == 0, f"port {port}: {checked.stdout}{checked.stderr}"
        finally:
            up.terminate()
            up.wait(timeout=30)
    malformed = "# TYPE foo_count counter\nfoo_count 1\n"
    assert promtool_stdin(malformed, "check", "metrics").returncode != 0


def promtool_stdin(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool in the Prometheus image, reading `text` on stdin."""
    return subprocess.run(
        ["docker", "run", "--rm", "-i", "--entrypoint", "promtool", PROMETHEUS_IMAGE, *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
