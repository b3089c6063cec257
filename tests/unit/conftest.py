"""Fixtures shared by unit tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from libs.common.testing.redis_server import MISSING_REDIS_MESSAGE, running_redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server per test module; tests isolate by namespace."""
    if shutil.which("redis-server") is None:
        pytest.fail(MISSING_REDIS_MESSAGE)  # fail, never skip: CI must keep Redis coverage
    with running_redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
