"""Drive deploy/docker-compose.yml from tests: one isolated compose project per fleet.

Works with Compose v2 (`docker compose`) or v1 (`docker-compose`), whichever the machine has.
Every wait is bounded; the state store is read with redis-cli inside the Redis container, so
no Redis port needs publishing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
SERVICES = ("kill-switch", "execution", "risk", "signal", "market-data")
T = TypeVar("T")


class ComposeError(Exception):
    """A compose or docker command failed; the message carries its output."""


def compose_command() -> list[str]:
    """`docker compose` when the v2 plugin is installed, else the v1 `docker-compose`."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeError("neither `docker compose` nor `docker-compose` is installed")


def free_port() -> int:
    """A loopback TCP port nobody is listening on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> str:
    """Run a command; return stdout, raise ComposeError with its output on failure."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"{' '.join(cmd)} timed out after {timeout_s} s") from exc
    if done.returncode != 0:
        raise ComposeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_for(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll check() until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class ComposeFleet:
    """One compose project (its own network, volumes, containers and host ports)."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.project = f"flt{secrets.token_hex(4)}"
        self.namespace = "compose"
        self.cmd_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "CMD_PORT": str(self.cmd_port),
                "MARKET_DATA_METRICS_PORT": str(free_port()),
                "RISK_METRICS_PORT": str(free_port()),
                "EXECUTION_METRICS_PORT": str(free_port()),
                "KILL_SWITCH_METRICS_PORT": str(free_port()),
                "PROMETHEUS_PORT": str(free_port()),
                "FLOTILLA_STORE_NAMESPACE": self.namespace,
            }
        )
        self.env.update(settings or {})
        self.extras: list[str] = []  # containers a test started by hand, removed at down()
        self._compose = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", self.project]

    # --- lifecycle ----------------------------------------------------------------------

    def compose(self, *args: str, timeout_s: float = 180) -> str:
        """Run a compose subcommand against this project."""
        return run([*self._compose, *args], timeout_s, self.env)

    def up(self, *args: str) -> None:
        """Start the fleet detached (waits for compose's health-ordered start)."""
        self.compose("up", "-d", *args)

    def up_with_profile(self, profile: str, *args: str) -> None:
        """Start the fleet plus a profile's services (e.g. monitoring)."""
        run([*self._compose, "--profile", profile, "up", "-d", *args], 180, self.env)

    def stop(self, timeout_s: int = 10) -> dict[str, int]:
        """`compose stop` with the given grace period; return each container's exit code."""
        self.compose("stop", "-t", str(timeout_s), timeout_s=timeout_s * 6 + 30)
        return self.exit_codes()

    def down(self) -> None:
        """Remove containers (also ones a test started by hand), network and volumes."""
        if self.extras:
            run(["docker", "rm", "-f", *self.extras], 60)
            self.extras.clear()
        # --profile '*' is not understood by v1; naming the profile takes its services down too.
        run(
            [
                *self._compose,
                "--profile",
                "monitoring",
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "10",
            ],
            120,
            self.env,
        )

    def logs(self, tail: int = 40) -> str:
        """The last lines of every container's log."""
        try:
            return self.compose("logs", "--no-color", "--tail", str(tail), timeout_s=60)
        except ComposeError as exc:
            return str(exc)

    # --- containers ---------------------------------------------------------------------

    def containers(self, service: str | None = None, running_only: bool = False) -> list[str]:
        """Container names of the project (or one service of it)."""
        cmd = ["docker", "ps", "--format", "{{.Names}}"]
        if not running_only:
            cmd.append("-a")
        cmd += ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        return sorted(run(cmd, 30).split())

    def exit_codes(self) -> dict[str, int]:
        """Exit code of every container of the project (running ones report -1)."""
        codes = {}
        for name in self.containers():
            state = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", name], 30))
            codes[name] = int(state["ExitCode"]) if not state["Running"] else -1
        return codes

    def hostname(self, container: str) -> str:
        """A container's hostname (part of the instance name services register under)."""
        return run(["docker", "inspect", "-f", "{{.Config.Hostname}}", container], 30).strip()

    # --- state store --------------------------------------------------------------------

    def redis(self, *args: str) -> str:
        """redis-cli inside the project's Redis container."""
        (container,) = self.containers("redis", running_only=True)
        return run(["docker", "exec", container, "redis-cli", "--raw", *args], 30)

    def keys(self, prefix: str) -> list[str]:
        """Store keys (without namespace) starting with prefix."""
        found = self.redis("--scan", "--pattern", f"{self.namespace}:{prefix}*").split()
        return sorted(key.split(":", 1)[1] for key in found)

    def get_json(self, key: str) -> Any:
        """A store value decoded as JSON (None when absent)."""
        text = self.redis("GET", f"{self.namespace}:{key}").strip()
        return json.loads(text) if text else None

    def stats(self, service: str) -> list[dict[str, Any]]:
        """Every instance's stats document for a service."""
        docs = (self.get_json(key) for key in self.keys(f"stats:{service}:"))
        return [doc for doc in docs if doc is not None]
