"""Ctrl-C stops `flotilla up` and all five services within 5 s, with a summary written."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from libs.common.testing.fleet import (
    alive,
    log_tails,
    read_summary,
    reap,
    service_children,
    spawn_cli,
    up_args,
    wait_until,
)

MODULES = {
    "services.kill_switch",
    "services.execution",
    "services.risk",
    "services.signal",
    "services.market_data",
}


def all_five(pid: int) -> dict[str, int]:
    """The five service children of pid by module, or {} until all five run."""
    found = service_children(pid)
    return found if set(found) == MODULES else {}


def error_lines(run_dir: Path) -> list[str]:
    """Every ERROR (or worse) line in the run's service logs."""
    return [
        line
        for path in sorted((run_dir / "logs").glob("*.log"))
        for line in path.read_text().splitlines()
        if " ERROR " in line or " CRITICAL " in line
    ]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process-group", "cli-only"])
def test_ctrl_c_stops_every_service_within_5_s(
    target: str, tmp_path: Path, run_dir: Path, port_offset: int
) -> None:
    """A terminal's Ctrl-C signals the whole group; `kill -INT` signals only the CLI."""
    out, err = (tmp_path / "up.out").open("w"), (tmp_path / "up.err").open("w")
    started = time.monotonic()
    up = spawn_cli(
        up_args(run_dir, port_offset, speed="5", until_end=False), stdout=out, stderr=err
    )
    try:
        services = wait_until(lambda: all_five(up.pid), 20, 0.05, "all five services running")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        assert up.poll() is None, (tmp_path / "up.err").read_text()
        interrupted = time.monotonic()
        if target == "process-group":
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGINT)
        try:
            code = up.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flotilla up still running 5 s after SIGINT\n{log_tails(run_dir)}")
        took = time.monotonic() - interrupted
        survivors = {name: pid for name, pid in services.items() if alive(pid)}
    finally:
        leftovers = reap(up)
        out.close()
        err.close()
    assert survivors == {}, f"services outlived flotilla up: {survivors}"
    assert leftovers == []
    assert took < 5
    assert code == 0, (tmp_path / "up.err").read_text()  # interrupted without --until-end
    summary = read_summary(run_dir)
    assert summary["outcome"] == "interrupted"
    assert error_lines(run_dir) == [], "a clean Ctrl-C is not an alarm"
    assert sum(summary["ticks_published"].values()) > 0


@pytest.mark.slow
def test_ctrl_c_while_market_data_still_waits_for_consumers_is_a_clean_stop(
    tmp_path: Path, run_dir: Path, port_offset: int
) -> None:
    """A fleet interrupted before every consumer was ready (a slow start) exits 0, not 3."""
    never_ready = {"FLOTILLA__MARKET_DATA__WAIT_FOR_CONSUMERS": '{"nobody": 1}'}
    out, err = (tmp_path / "up.out").open("w"), (tmp_path / "up.err").open("w")
    up = spawn_cli(
        up_args(run_dir, port_offset, speed="5", until_end=False),
        env=never_ready,
        stdout=out,
        stderr=err,
    )
    try:
        wait_until(lambda: all_five(up.pid), 20, 0.05, "all five services running")
        # It applies the trading state from its first control drain, inside the waiting loop.
        md_log = run_dir / "logs" / "market-data-1.log"
        wait_until(lambda: "trading state ACTIVE" in md_log.read_text(), 20, 0.05, "waiting")
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(timeout=10)
    finally:
        leftovers = reap(up)
        out.close()
        err.close()
    assert leftovers == []
    assert code == 0, (tmp_path / "up.err").read_text()
    summary = read_summary(run_dir)
    assert summary["exit_codes"]["market-data"] == 0, summary["exit_codes"]
    assert sum(summary["ticks_published"].values()) == 0
