"""Start, watch, drain and stop the five services as separate local processes."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from libs.common.config import SERVICES, FleetConfig, with_port_offset
from libs.common.store import StateStore, open_store

log = logging.getLogger(__name__)

# Start order: the control plane first, then the sinks, the source last (it waits for consumers).
START_ORDER = ["kill-switch", "execution", "risk", "signal", "market-data"]
STOP_ORDER = ["market-data", "signal", "risk", "execution", "kill-switch"]
MODULES = {
    "kill-switch": "services.kill_switch",
    "execution": "services.execution",
    "risk": "services.risk",
    "signal": "services.signal",
    "market-data": "services.market_data",
}
# The read-only web page: started beside the services, but not one of them (nothing waits on it).
DASHBOARD_MODULE = "flotilla.dashboard"
# The env-override section of each service: FLOTILLA__<SECTION>__METRICS_PORT.
METRICS_SECTIONS = {service: service.replace("-", "_").upper() for service in SERVICES}
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the fleet process dies, so no service is left behind."""
    with contextlib.suppress(OSError):  # not Linux: the fleet's stop path still ends children
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def page_url(host: str, port: int) -> str:
    """The dashboard's URL for a person (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


@dataclass
class Proc:
    """One running service instance."""

    service: str
    instance: str
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes]
    terminated: bool = False

    def terminate(self) -> None:
        """Send SIGTERM once: a second one means 'skip the drain' to a service."""
        if not self.terminated and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            self.terminated = True


@dataclass
class Fleet:
    """The local fleet: processes, their environment, and the shared run directory."""

    cfg: FleetConfig
    run_dir: Path
    config_path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    port_offset: int = 0
    procs: dict[str, Proc] = field(default_factory=dict)
    replicas: list[Proc] = field(default_factory=list)  # extra instances (signal scales)
    generation: dict[str, int] = field(default_factory=dict)
    dashboard: Proc | None = None  # not in procs: drain, death and exit-code logic ignore it
    dashboard_reported: bool = False

    def __post_init__(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        # One namespace per run: with a shared Redis, one run never sees another's keys.
        self.namespace = "run-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.run_dir.name)
        self.store: StateStore = open_store(self.run_dir / "state.sqlite", namespace=self.namespace)

    def env_for(self, service: str, instance: str) -> dict[str, str]:
        """The child environment: run dir, config, instance name, ports and overrides."""
        env = dict(os.environ)
        env.update(
            FLOTILLA_RUN_DIR=str(self.run_dir),
            FLOTILLA_CONFIG=str(self.config_path),
            FLOTILLA_INSTANCE=instance,
            FLOTILLA_STORE_NAMESPACE=self.namespace,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.port_env())
        env.update(self.overrides)
        return env

    def port_env(self) -> dict[str, str]:
        """Endpoint and metrics-port overrides that shift every port by port_offset."""
        if not self.port_offset:
            return {}
        shifted = with_port_offset(self.cfg.bus, self.port_offset)
        env = {
            f"FLOTILLA__BUS__{name.upper()}": value
            for name in shifted.__struct_fields__
            if isinstance(value := getattr(shifted, name), str) and value.startswith("tcp://")
        }
        for section in METRICS_SECTIONS.values():
            port = getattr(self.cfg, section.lower()).metrics_port
            env[f"FLOTILLA__{section}__METRICS_PORT"] = str(port + self.port_offset if port else 0)
        env["FLOTILLA__DASHBOARD__PORT"] = str(self.cfg.dashboard.port + self.port_offset)
        return env

    def start_replica(self, service: str) -> Proc:
        """Launch one more instance of a service that scales (signal) beside the first; on one
        host replica k serves metrics on the service's port + 1000 * k."""
        first = self.procs.get(service)
        section = METRICS_SECTIONS[service]
        port = getattr(self.cfg, section.lower()).metrics_port + self.port_offset
        extra = {f"FLOTILLA__{section}__METRICS_PORT": str(port + 1000 * (len(self.replicas) + 1))}
        proc = self.start(service, extra)
        if first is not None:
            self.procs[service] = first
            self.replicas.append(proc)
        return proc

    def all_procs(self) -> list[Proc]:
        """Every instance this fleet started that it still tracks."""
        return [*self.procs.values(), *self.replicas]

    def start(self, service: str, extra_env: dict[str, str] | None = None) -> Proc:
        """Launch one service; its output goes to logs/<instance>.log."""
        gen = self.generation.get(service, 0) + 1
        self.generation[service] = gen
        proc = self._spawn(service, f"{service}-{gen}", MODULES[service], extra_env)
        self.procs[service] = proc
        return proc

    def _spawn(
        self, name: str, instance: str, module: str, extra_env: dict[str, str] | None = None
    ) -> Proc:
        """One `python -m module` child, its output in logs/<instance>.log."""
        log_file = (self.run_dir / "logs" / f"{instance}.log").open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**self.env_for(name, instance), **(extra_env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        return Proc(name, instance, popen, log_file)

    def start_dashboard(self) -> str | None:
        """Launch the read-only web page beside the fleet (if enabled); returns its URL."""
        if not self.cfg.dashboard.enabled:
            return None
        self.dashboard = self._spawn("dashboard", "dashboard-1", DASHBOARD_MODULE)
        return page_url(self.cfg.dashboard.host, self.cfg.dashboard.port + self.port_offset)

    def dashboard_exit(self) -> str | None:
        """Once, if the dashboard ended on its own (e.g. port busy): one line saying so."""
        dash = self.dashboard
        if dash is None or self.dashboard_reported or dash.popen.poll() is None:
            return None
        self.dashboard_reported = True
        lines = (self.run_dir / "logs" / f"{dash.instance}.log").read_bytes().splitlines()
        last = lines[-1].decode(errors="replace") if lines else ""
        return f"dashboard exited ({dash.popen.returncode}), the fleet runs on without it: {last}"

    def start_all(self) -> None:
        """Launch every service in dependency order."""
        for service in START_ORDER:
            self.start(service)

    def stop(self, service: str, timeout_s: float = 5.0) -> int | None:
        """SIGTERM one service and wait; SIGKILL if it does not exit in time."""
        proc = self.procs.get(service)
        if proc is None:
            return None
        proc.terminate()
        return self._wait(proc, timeout_s)

    @staticmethod
    def _wait(proc: Proc, timeout_s: float) -> int:
        """Wait for an instance to exit; SIGKILL it after timeout_s."""
        try:
            code = proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.1f s; killing it", proc.instance, timeout_s)
            proc.popen.kill()
            code = proc.popen.wait()
        proc.log_file.close()
        return code

    def restart(self, service: str) -> Proc:
        """Stop a service gracefully and start a new instance of it."""
        self.stop(service)
        return self.start(service)

    def stop_all(self, timeout_s: float = 4.0) -> dict[str, int | None]:
        """Signal every service at once, then wait in order; nothing outlives this call."""
        for service in STOP_ORDER:
            if service in self.procs:
                self.procs[service].terminate()
        for replica in self.replicas:
            replica.terminate()
        if self.dashboard is not None:
            self.dashboard.terminate()
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for replica in self.replicas:
            codes[replica.instance] = self._wait(replica, max(0.1, deadline - time.monotonic()))
        for service in STOP_ORDER:
            if service in self.procs:
                codes[service] = self.stop(service, max(0.1, deadline - time.monotonic()))
        if self.dashboard is not None and not self.dashboard.log_file.closed:
            self._wait(self.dashboard, max(0.1, deadline - time.monotonic()))  # not a service code
        return codes

    def dead(self) -> list[Proc]:
        """Services that exited on their own."""
        return [p for p in self.all_procs() if p.popen.poll() is not None]

    def all_drained(self) -> bool:
        """Every current instance has reported that it finished its input."""
        return all(self.store.get(f"drained:{p.service}:{p.instance}") for p in self.all_procs())

    def stats(self) -> dict[str, list[dict[str, Any]]]:
        """Every instance's latest counters from the store, grouped by service."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for key in self.store.keys("stats:"):
            raw = self.store.get(key)
            if raw is not None:
                doc = json.loads(raw)
                grouped.setdefault(doc["service"], []).append(doc)
        return grouped

    def close(self) -> None:
        """Release the store."""
        self.store.close()
