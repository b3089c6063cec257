"""The one entry point every service shares: config, logging, build, run, exit code."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Protocol

from libs.common.cluster import LeaseLost
from libs.common.config import ConfigError, load_config
from libs.common.runtime import Runtime, run_dir_from_env, setup_logging
from libs.common.store import StoreError

log = logging.getLogger(__name__)
EXIT_CONFIG = 2
EXIT_LEASE_LOST = 4


class Service(Protocol):
    """What run_service needs from a service class."""

    def start(self) -> None: ...
    def run(self) -> int: ...
    def close(self) -> None: ...


class ServiceFactory(Protocol):
    """A service class: built from a Runtime."""

    def __call__(self, rt: Runtime) -> Service: ...


def run_service(name: str, factory: ServiceFactory) -> int:
    """Load config, build the service, run it until done or signalled; returns the exit code."""
    setup_logging(name)
    try:
        cfg = load_config()
        rt = Runtime(name, cfg, run_dir_from_env())
    except (ConfigError, StoreError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    rt.install_signal_handlers()
    service = factory(rt)
    started = False
    try:
        if not rt.wait_for_lease():
            log.info("%s stopped while standing by", name)
            return 0
        service.start()
        started = True
        # Everything built so far lives as long as the process: keep it out of the collector's
        # way, so collections during trading only look at what trading allocates.
        gc.collect()
        gc.freeze()
        code = service.run()
    except LeaseLost as exc:
        # Another instance may be the writer now: stop at once; a restart comes back as standby.
        log.error("%s lost its single-writer lease, stopping: %s", name, exc)
        code = EXIT_LEASE_LOST
    except Exception:
        log.exception("%s failed", name)
        code = 1
    finally:
        if started:
            service.close()
        rt.close()
    log.info("%s exiting with %d", name, code)
    return code
