"""Fixtures for system tests: real images, real containers, a real Redis (compose)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from libs.common.testing.compose import ROOT, SERVICES, ComposeFleet

# testcontainers reads this at import: its Ryuk reaper image cannot be pulled without a registry,
# and every container a test starts is removed by the test's own context manager instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "flotilla/redis:bookworm")
PROMETHEUS_IMAGE = os.environ.get("PROMETHEUS_IMAGE", "flotilla/prometheus:bookworm")
IMAGES = [f"flotilla/{service}:latest" for service in SERVICES] + [REDIS_IMAGE, PROMETHEUS_IMAGE]


def image_exists(image: str) -> bool:
    """True if the local engine has the image (nothing is ever pulled)."""
    probe = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def fleet_images() -> list[str]:
    """The service and Redis images, current with the source (the script rebuilds only what
    changed, offline), so a system test never runs yesterday's code."""
    env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")], check=True, timeout=1800, env=env
    )
    missing = [image for image in IMAGES if not image_exists(image)]
    assert not missing, f"images still missing after build: {missing}"
    return IMAGES


@pytest.fixture
def compose_fleet(fleet_images: list[str]) -> Iterator[Callable[..., ComposeFleet]]:
    """A factory of isolated compose fleets; every one is torn down (volumes too) afterwards."""
    fleets: list[ComposeFleet] = []

    def make(**settings: str) -> ComposeFleet:
        fleet = ComposeFleet(settings)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        print(f"--- logs of {fleet.project} ---\n{fleet.logs()}")  # shown only on failure
        fleet.down()
