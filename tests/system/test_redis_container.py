"""The Redis image compose runs, started by testcontainers: what the fleet keeps there survives
a restart of Redis itself (append-only file on the data volume)."""

from __future__ import annotations

import subprocess
import time

import pytest
from testcontainers.core.container import DockerContainer

from libs.common.clock import LiveClock
from libs.common.cluster import Lease
from libs.common.messages import Command
from libs.common.store import RedisStore, StoreError
from libs.common.testing.compose import wait_for
from services.kill_switch.latch import Latch

from .conftest import REDIS_IMAGE

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

# The same persistence settings as deploy/docker-compose.yml's redis service.
REDIS_COMMAND = (
    "redis-server --protected-mode no --dir /data --appendonly yes --appendfsync everysec"
)


def connect(container: DockerContainer) -> RedisStore:
    """A store on the container's published port, retried while Redis is still starting."""
    url = f"redis://127.0.0.1:{container.get_exposed_port(6379)}/0"

    def attempt() -> RedisStore | None:
        try:
            return RedisStore(url, namespace="compose")
        except StoreError:
            return None

    return wait_for(attempt, 30, f"Redis at {url}")


def halt(latch: Latch) -> None:
    """Halt through the latch, as the kill switch does on `flotilla halt`."""
    now = time.time_ns()
    latch.apply(
        Command(
            ts_event=now, ts_init=now, action="halt", reason="test", operator="ci", source="cli"
        )
    )


def test_latched_halt_and_lease_survive_a_redis_restart(fleet_images):
    """A HALTED state latched in Redis is still HALTED after Redis restarts; so is the lease."""
    container = DockerContainer(REDIS_IMAGE).with_command(REDIS_COMMAND).with_exposed_ports(6379)
    with container:
        store = connect(container)
        halt(Latch(store, LiveClock(), 100, "ACTIVE"))
        assert Lease(store, "execution", "execution-a", ttl_ms=60_000).try_acquire()
        store.close()

        docker_id = container.get_wrapped_container().id
        subprocess.run(
            ["docker", "restart", "-t", "10", docker_id], check=True, capture_output=True
        )
        container.get_wrapped_container().reload()

        store = connect(container)
        restored = Latch(store, LiveClock(), 100, "ACTIVE")
        assert restored.state.state == "HALTED"
        assert not Lease(store, "execution", "execution-b", ttl_ms=60_000).try_acquire()
        store.close()
