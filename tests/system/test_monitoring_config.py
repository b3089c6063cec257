"""Prometheus configuration checked by the real promtool (from the offline Prometheus image)."""

from __future__ import annotations

import subprocess

import pytest

from libs.common.testing.compose import ROOT

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
